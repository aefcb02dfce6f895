"""Corpus-level evaluation: BLEU-4 on token ids (as the paper reported it) and sacrebleu.

The paper (Dai et al., 2018, §6; official code ``zihangdai/ERAC-VAML``) reports corpus BLEU-4
computed on target token ids, without smoothing, with ``<unk>`` in a reference never matching.
``corpus_bleu_ids`` reproduces that; with no ``<unk>`` in the references it is exactly
sacrebleu's corpus BLEU with ``tokenize="none", smooth_method="none"`` on the same tokens.
``sacrebleu_corpus`` is the standard, signed score on tokenized text for comparisons with
other work.

Plain numpy + sacrebleu; no torch, no ray.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Hashable, Sequence

import numpy as np
import sacrebleu

MAX_ORDER = 4  # BLEU-4


def _ngram_counts(tokens: Sequence[Hashable], max_order: int = MAX_ORDER) -> Counter:
    """All n-grams of orders 1..max_order of ``tokens`` with their counts."""
    counts: Counter = Counter()
    for n in range(1, max_order + 1):
        for i in range(len(tokens) - n + 1):
            counts[tuple(tokens[i : i + n])] += 1
    return counts


def _mask_unk(ref: Sequence[int], unk: int, first_sentinel: int) -> list[int]:
    """Replace each ``<unk>`` of a reference by its own negative sentinel id.

    Sentinels are ``first_sentinel, first_sentinel - 1, ...`` (all < 0); token ids are >= 0, so
    an n-gram containing a masked ``<unk>`` can never match the hypothesis, and two ``<unk>`` of
    different positions / references never match each other. Lengths are unchanged.
    """
    out: list[int] = []
    sentinel = first_sentinel
    for tok in ref:
        tok = int(tok)
        if tok == unk:
            out.append(sentinel)
            sentinel -= 1
        else:
            out.append(tok)
    return out


def _closest_ref_len(hyp_len: int, ref_lens: Sequence[int]) -> int:
    """Reference length closest to ``hyp_len``; ties go to the shorter reference (Papineni et al.)."""
    return min(ref_lens, key=lambda r: (abs(hyp_len - r), r))


def bleu_from_stats(
    correct: Sequence[int], total: Sequence[int], sys_len: int, ref_len: int
) -> dict:
    """Unsmoothed BLEU-4 from corpus sufficient statistics (Papineni et al., 2002).

    BLEU = BP · exp((1/4) Σ_n log p_n), p_n = correct_n / total_n, BP = exp(min(0, 1 − r/c)).
    Any zero precision (or an order with no hypothesis n-grams) gives BLEU = 0, as in sacrebleu
    with ``smooth_method="none"``. Precisions are returned in percent, like sacrebleu.
    """
    if sys_len < ref_len:
        bp = math.exp(1.0 - ref_len / sys_len) if sys_len > 0 else 0.0
    else:
        bp = 1.0
    precisions = [100.0 * c / t if t > 0 else 0.0 for c, t in zip(correct, total)]
    if all(p > 0.0 for p in precisions):
        # Same operation order as sacrebleu, so the two agree to rounding.
        bleu = bp * math.exp(sum(math.log(p) for p in precisions) / len(precisions))
    else:
        bleu = 0.0
    return {
        "bleu": bleu,
        "precisions": precisions,
        "bp": bp,
        "sys_len": int(sys_len),
        "ref_len": int(ref_len),
    }


def corpus_bleu_ids(
    hyps: Sequence[Sequence[int]],
    refs: Sequence[Sequence[Sequence[int]]],
    unk: int = 1,
) -> dict:
    """Corpus BLEU-4 on token ids, as the paper evaluated (§6; IMPLEMENTATION_NOTES "Eval").

    Args:
      hyps: N hypotheses, each a sequence of token ids without ``<bos>``/``<eos>``/``<pad>``.
      refs: N entries, each a non-empty list of references (token-id sequences, same convention)
        for the corresponding hypothesis.
      unk: id of ``<unk>``; a reference ``<unk>`` never matches any hypothesis token.

    Clipped n-gram matches (clip = max count over the sentence's references) and hypothesis n-gram
    counts are summed over the corpus; the brevity penalty uses, per sentence, the reference length
    closest to the hypothesis length (ties → shorter), summed over the corpus. No smoothing.

    Returns:
      {"bleu": float in [0, 100], "precisions": [p1..p4] in percent, "bp": float,
       "sys_len": int, "ref_len": int}
    """
    if len(hyps) != len(refs):
        raise ValueError(
            f"corpus_bleu_ids: got {len(hyps)} hypotheses but {len(refs)} reference entries; "
            "pass one list of references per hypothesis."
        )
    correct = [0] * MAX_ORDER
    total = [0] * MAX_ORDER
    sys_len = 0
    ref_len = 0
    for i, (hyp, sent_refs) in enumerate(zip(hyps, refs)):
        if len(sent_refs) == 0:
            raise ValueError(f"corpus_bleu_ids: sentence {i} has no reference.")
        hyp = [int(t) for t in hyp]
        # Max count of each n-gram over the references (multi-reference clipping).
        max_ref_counts: Counter = Counter()
        ref_lens: list[int] = []
        sentinel = -1
        for ref in sent_refs:
            masked = _mask_unk(ref, unk, sentinel)
            sentinel -= len(masked)
            ref_lens.append(len(masked))
            for ngram, c in _ngram_counts(masked).items():
                if c > max_ref_counts[ngram]:
                    max_ref_counts[ngram] = c
        for ngram, c in _ngram_counts(hyp).items():
            n = len(ngram) - 1
            total[n] += c
            correct[n] += min(c, max_ref_counts.get(ngram, 0))
        sys_len += len(hyp)
        ref_len += _closest_ref_len(len(hyp), ref_lens)
    return bleu_from_stats(correct, total, sys_len, ref_len)


def sacrebleu_corpus(
    hyp_texts: list[str], ref_texts: list[list[str]], smooth_method: str = "exp"
) -> dict:
    """Standard sacrebleu corpus BLEU on already tokenized text (``tokenize="none"``).

    Args:
      hyp_texts: N hypothesis strings (tokens separated by spaces).
      ref_texts: N entries, each the list of reference strings of that sentence; sentences may
        have different numbers of references (missing streams are passed to sacrebleu as None).
      smooth_method: sacrebleu's smoothing; its default "exp" gives the usual signature.

    Returns:
      {"bleu": float in [0, 100], "signature": str}
    """
    if len(hyp_texts) != len(ref_texts):
        raise ValueError(
            f"sacrebleu_corpus: got {len(hyp_texts)} hypotheses but {len(ref_texts)} reference "
            "entries; pass one list of references per hypothesis."
        )
    n_streams = max((len(r) for r in ref_texts), default=0)
    if n_streams == 0:
        raise ValueError("sacrebleu_corpus: no references given.")
    # Transpose per-sentence reference lists into sacrebleu's reference streams.
    streams = [
        [r[j] if j < len(r) else None for r in ref_texts] for j in range(n_streams)
    ]
    # force: the text is tokenized on purpose (the paper scores tokenized output); no "detokenize" warning
    metric = sacrebleu.metrics.BLEU(tokenize="none", smooth_method=smooth_method, force=True)
    score = metric.corpus_score(list(hyp_texts), streams)
    return {"bleu": float(score.score), "signature": str(metric.get_signature())}


def ids_to_text(ids: Sequence[int] | np.ndarray, itos: Sequence[str]) -> str:
    """Space-joined tokens of an id sequence (for ``sacrebleu_corpus``)."""
    return " ".join(itos[int(t)] for t in ids)
