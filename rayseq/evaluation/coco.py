"""Captioning metrics as the COCO caption evaluation computes them: BLEU-1..4 and CIDEr-D.

Re-implementations of ``pycocoevalcap`` (tylin/coco-caption) ``BleuScorer`` (``option="closest"``)
and ``CiderScorer`` (which is CIDEr-D: clipped n-gram tf-idf, Gaussian length penalty σ = 6, × 10),
on already tokenized captions (lists of tokens; coco-caption tokenizes with the Stanford PTB
tokenizer in Java, here the Karpathy tokenization of :mod:`rayseq.data.coco` is used for both sides).
The tests check both against ``pycocoevalcap`` on fixed examples.

Scores are returned in percent (× 100) for BLEU, as the rest of rayseq reports BLEU; CIDEr-D is
returned on coco-caption's own scale (× 10 built in, so ``1.0`` is what papers print as 100).

Plain Python + numpy (``rayseq.evaluation.score.evaluate_captions`` decodes and calls these). No ray.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence

import numpy as np

MAX_ORDER = 4
CIDER_SIGMA = 6.0
"""σ of CIDEr-D's Gaussian length penalty ``exp(-(l_hyp - l_ref)² / 2σ²)``."""
_TINY, _SMALL = 1e-15, 1e-9  # coco-caption's guards against 0/0 in BLEU

Tokens = Sequence[str]


def _ngrams(tokens: Tokens, max_order: int = MAX_ORDER) -> Counter:
    """Counts of every n-gram of orders 1..max_order (coco-caption's ``precook``)."""
    counts: Counter = Counter()
    for n in range(1, max_order + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def _check(hyps: Sequence[Tokens], refs: Sequence[Sequence[Tokens]], who: str) -> None:
    if len(hyps) != len(refs):
        raise ValueError(f"{who}: {len(hyps)} hypotheses but {len(refs)} reference lists; pass one list per caption.")
    if not hyps:
        raise ValueError(f"{who}: no captions to score.")
    for i, r in enumerate(refs):
        if len(r) == 0:
            raise ValueError(f"{who}: caption {i} has no reference.")
    for i, h in enumerate(hyps):
        if isinstance(h, str):
            raise ValueError(f"{who}: hypothesis {i} is a string; pass token lists (str.split() it).")


def coco_bleu(hyps: Sequence[Tokens], refs: Sequence[Sequence[Tokens]]) -> dict[str, float]:
    """Multi-reference corpus BLEU-1..4 as coco-caption's ``Bleu(4)`` (``option="closest"``).

    Papineni et al. (2002) with coco-caption's details: clipped counts against the max count over
    an image's references; the reference length per caption is the one closest to the hypothesis
    (ties → the shorter); ``p_n = (correct_n + 1e-15) / (guess_n + 1e-9)`` (so a zero precision gives
    a tiny, not exactly zero, score); BLEU-n = BP · (Π_{k≤n} p_k)^{1/n}, BP = exp(1 − r/c) when c < r.

    Returns ``{"bleu_1": .., "bleu_2": .., "bleu_3": .., "bleu_4": ..}`` in percent.
    """
    _check(hyps, refs, "coco_bleu")
    correct = [0] * MAX_ORDER
    guess = [0] * MAX_ORDER
    test_len = ref_len = 0
    for hyp, sent_refs in zip(hyps, refs):
        max_counts: dict[tuple[str, ...], int] = {}
        for ref in sent_refs:
            for ngram, c in _ngrams(list(ref)).items():
                if c > max_counts.get(ngram, 0):
                    max_counts[ngram] = c
        n_hyp = len(hyp)
        test_len += n_hyp
        ref_len += min((abs(len(r) - n_hyp), len(r)) for r in sent_refs)[1]
        for k in range(MAX_ORDER):
            guess[k] += max(0, n_hyp - k)
        for ngram, c in _ngrams(list(hyp)).items():
            correct[len(ngram) - 1] += min(max_counts.get(ngram, 0), c)
    out: dict[str, float] = {}
    prod = 1.0
    ratio = (test_len + _TINY) / (ref_len + _SMALL)
    bp = math.exp(1 - 1 / ratio) if ratio < 1 else 1.0
    for k in range(MAX_ORDER):
        prod *= (correct[k] + _TINY) / (guess[k] + _SMALL)
        out[f"bleu_{k + 1}"] = 100.0 * prod ** (1.0 / (k + 1)) * bp
    return out


def _tfidf(counts: Counter, df: dict, log_num_images: float) -> tuple[list[dict], list[float], int]:
    """CIDEr's tf-idf vectors per order, their norms and the caption's "length".

    The length is the caption's number of bigrams, as coco-caption computes it (its ``n == 1`` test
    is on the 0-based order); it only enters the Gaussian length penalty.
    """
    vec: list[dict] = [{} for _ in range(MAX_ORDER)]
    norm = [0.0] * MAX_ORDER
    length = 0
    for ngram, tf in counts.items():
        n = len(ngram) - 1
        w = float(tf) * (log_num_images - math.log(max(1.0, df.get(ngram, 0.0))))
        vec[n][ngram] = w
        norm[n] += w * w
        if n == 1:
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def cider_d(hyps: Sequence[Tokens], refs: Sequence[Sequence[Tokens]], sigma: float = CIDER_SIGMA) -> dict:
    """CIDEr-D (Vedantam et al. 2015) as coco-caption's ``Cider`` computes it.

    Document frequencies come from the references of the scored set (one document per image);
    per caption and order n, the clipped cosine ``Σ min(g_hyp, g_ref)·g_ref / (‖g_hyp‖‖g_ref‖)`` times
    ``exp(-(l_hyp − l_ref)² / 2σ²)`` is averaged over the references, the orders 1..4 are averaged,
    and the result is multiplied by 10.

    Returns ``{"cider_d": corpus mean, "per_caption": [score per caption]}``.
    """
    _check(hyps, refs, "cider_d")
    ref_counts = [[_ngrams(list(r)) for r in sent_refs] for sent_refs in refs]
    df: dict = defaultdict(float)
    for sent in ref_counts:
        for ngram in {g for c in sent for g in c}:
            df[ngram] += 1.0
    log_n = math.log(float(len(refs)))
    scores = []
    for hyp, sent in zip(hyps, ref_counts):
        vec, norm, length = _tfidf(_ngrams(list(hyp)), df, log_n)
        total = np.zeros(MAX_ORDER)
        for rc in sent:
            vec_r, norm_r, length_r = _tfidf(rc, df, log_n)
            penalty = math.exp(-((length - length_r) ** 2) / (2 * sigma**2))
            for n in range(MAX_ORDER):
                val = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec[n].items())
                if norm[n] != 0 and norm_r[n] != 0:
                    val /= norm[n] * norm_r[n]
                total[n] += val * penalty
        scores.append(float(np.mean(total)) / len(sent) * 10.0)
    return {"cider_d": float(np.mean(scores)), "per_caption": scores}


def caption_scores(hyps: Sequence[Tokens], refs: Sequence[Sequence[Tokens]]) -> dict[str, float]:
    """BLEU-1..4 (percent) and CIDEr-D of tokenized captions against their references."""
    return {**coco_bleu(hyps, refs), "cider_d": cider_d(hyps, refs)["cider_d"]}
