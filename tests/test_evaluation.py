"""Tests for rayseq.evaluation: id-level corpus BLEU against sacrebleu, multi-reference, <unk> rule."""

from __future__ import annotations

import gzip
import math

import numpy as np
import pytest
import sacrebleu

from rayseq.data.tasks import SHIPPED_ROOT
from rayseq.evaluation import corpus_bleu_ids, sacrebleu_corpus

VAL_EN = SHIPPED_ROOT / "multi30k" / "val.lc.norm.tok.en.gz"
UNK = 1
N_SPECIALS = 4


def _sacre_none(hyp_texts: list[str], streams: list[list[str | None]]) -> sacrebleu.BLEUScore:
    """sacrebleu corpus BLEU, tokenize none, no smoothing."""
    metric = sacrebleu.metrics.BLEU(tokenize="none", smooth_method="none")
    return metric.corpus_score(hyp_texts, streams)


def _txt(ids) -> str:
    return " ".join(str(int(t)) for t in ids)


def _perturb(seq: list[int], rng: np.random.Generator, vocab: int, p: float = 0.15) -> list[int]:
    """Small random edits: substitutions, deletions, insertions, occasional truncation."""
    out: list[int] = []
    for tok in seq:
        u = rng.random()
        if u < p / 3:
            continue  # delete
        if u < 2 * p / 3:
            out.append(int(rng.integers(N_SPECIALS, vocab)))  # substitute
            continue
        out.append(int(tok))
        if u > 1 - p / 3:
            out.append(int(rng.integers(N_SPECIALS, vocab)))  # insert
    if rng.random() < 0.1 and len(out) > 2:
        out = out[: len(out) // 2]
    return out


def _assert_matches(ours: dict, ref: sacrebleu.BLEUScore) -> None:
    assert ours["sys_len"] == ref.sys_len
    assert ours["ref_len"] == ref.ref_len
    assert ours["bp"] == pytest.approx(ref.bp, abs=1e-12)
    np.testing.assert_allclose(ours["precisions"], ref.precisions, atol=1e-9, rtol=0)
    assert ours["bleu"] == pytest.approx(ref.score, abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_ids_match_sacrebleu(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vocab = 30
    refs = [
        [int(t) for t in rng.integers(N_SPECIALS, vocab, size=rng.integers(1, 25))]
        for _ in range(200)
    ]
    hyps = [_perturb(r, rng, vocab) for r in refs]
    hyps[0] = []  # empty hypothesis contributes ref length only
    ours = corpus_bleu_ids(hyps, [[r] for r in refs], unk=UNK)
    ref = _sacre_none([_txt(h) for h in hyps], [[_txt(r) for r in refs]])
    assert ref.score > 0
    _assert_matches(ours, ref)


def test_zero_matches_and_short_corpus_give_zero() -> None:
    # No 4-gram in the corpus -> unsmoothed BLEU is 0, as in sacrebleu.
    hyps = [[4, 5, 6]]
    refs = [[[4, 5, 6]]]
    ours = corpus_bleu_ids(hyps, refs)
    ref = _sacre_none([_txt(h) for h in hyps], [[_txt(r[0]) for r in refs]])
    assert ours["bleu"] == ref.score == 0.0
    # Nothing matches at all.
    ours = corpus_bleu_ids([[7, 8, 9, 10, 11]], [[[4, 5, 6, 12, 13]]])
    assert ours["bleu"] == 0.0
    # Identical corpus -> 100.
    ours = corpus_bleu_ids([[4, 5, 6, 7, 8]], [[[4, 5, 6, 7, 8]]])
    assert ours["bleu"] == pytest.approx(100.0, abs=1e-12)


def _load_val_sentences(n: int) -> list[list[str]]:
    with gzip.open(VAL_EN, "rt", encoding="utf-8") as f:
        lines = [line.split() for line in f]
    return [toks for toks in lines if toks][:n]


@pytest.mark.parametrize("seed", [0, 1])
def test_real_sentences_match_sacrebleu(seed: int) -> None:
    sents = _load_val_sentences(1014)
    stoi: dict[str, int] = {}
    for toks in sents:
        for w in toks:
            stoi.setdefault(w, len(stoi) + N_SPECIALS)  # no <unk> anywhere
    itos = {i: w for w, i in stoi.items()}
    vocab = len(stoi) + N_SPECIALS
    rng = np.random.default_rng(seed)
    ref_ids = [[stoi[w] for w in toks] for toks in sents]
    hyp_ids = [_perturb(r, rng, vocab, p=0.1) for r in ref_ids]
    ours = corpus_bleu_ids(hyp_ids, [[r] for r in ref_ids], unk=UNK)
    hyp_txt = [" ".join(itos[t] for t in h) for h in hyp_ids]
    ref_txt = [" ".join(toks) for toks in sents]
    ref = _sacre_none(hyp_txt, [ref_txt])
    assert 20.0 < ref.score < 100.0
    _assert_matches(ours, ref)
    # The signed wrapper agrees too (exp smoothing changes nothing when all precisions > 0).
    wrapped = sacrebleu_corpus(hyp_txt, [[r] for r in ref_txt])
    assert wrapped["bleu"] == pytest.approx(ref.score, abs=1e-9)
    assert "tok:none" in wrapped["signature"] and "nrefs:1" in wrapped["signature"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_multi_reference_matches_sacrebleu(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vocab = 25
    n_sent, n_refs = 150, 3
    base = [
        [int(t) for t in rng.integers(N_SPECIALS, vocab, size=rng.integers(2, 20))]
        for _ in range(n_sent)
    ]
    refs = [[_perturb(b, rng, vocab, p=0.3) or [5] for _ in range(n_refs)] for b in base]
    hyps = [_perturb(b, rng, vocab, p=0.2) for b in base]
    ours = corpus_bleu_ids(hyps, refs, unk=UNK)
    streams = [[_txt(refs[i][j]) for i in range(n_sent)] for j in range(n_refs)]
    ref = _sacre_none([_txt(h) for h in hyps], streams)
    assert ref.score > 0
    _assert_matches(ours, ref)
    # Variable number of references per sentence (sacrebleu: None in a stream).
    var_refs = [r[: 1 + i % n_refs] for i, r in enumerate(refs)]
    ours = corpus_bleu_ids(hyps, var_refs, unk=UNK)
    streams = [
        [_txt(r[j]) if j < len(r) else None for r in var_refs] for j in range(n_refs)
    ]
    _assert_matches(ours, _sacre_none([_txt(h) for h in hyps], streams))
    wrapped = sacrebleu_corpus([_txt(h) for h in hyps], [[_txt(x) for x in r] for r in var_refs])
    assert "nrefs:var" in wrapped["signature"]


def test_closest_ref_len_ties_go_to_shorter() -> None:
    # hyp len 4, refs of len 3 and 5 -> tie -> ref_len 3 (no brevity penalty).
    out = corpus_bleu_ids([[4, 5, 6, 7]], [[[4, 5, 6], [4, 5, 6, 7, 8]]])
    assert out["ref_len"] == 3 and out["bp"] == 1.0
    # hyp len 2, refs of len 3 and 6 -> 3.
    out = corpus_bleu_ids([[4, 5]], [[[4, 5, 6, 7, 8, 9], [4, 5, 6]]])
    assert out["ref_len"] == 3
    assert out["bp"] == pytest.approx(math.exp(1 - 3 / 2))


def test_unk_in_reference_never_matches_hand_computed() -> None:
    # Reference position 5 is <unk>; the hypothesis copies it exactly.
    seq = [4, 5, 6, 7, 8, UNK, 9]
    # Without the rule (treat nothing as unk) the copy scores 100.
    assert corpus_bleu_ids([seq], [[seq]], unk=-12345)["bleu"] == pytest.approx(100.0)
    out = corpus_bleu_ids([seq], [[seq]], unk=UNK)
    # Every n-gram covering position 5 misses:
    #   1-grams 6/7, 2-grams 4/6, 3-grams 3/5, 4-grams 2/4, BP = 1
    #   BLEU = 100 * (6/7 * 4/6 * 3/5 * 2/4) ** (1/4) = 100 * (6/35) ** 0.25
    np.testing.assert_allclose(
        out["precisions"], [100 * 6 / 7, 100 * 4 / 6, 100 * 3 / 5, 100 * 2 / 4], atol=1e-12
    )
    assert out["bp"] == 1.0
    assert out["sys_len"] == 7 and out["ref_len"] == 7
    assert out["bleu"] == pytest.approx(100 * (6 / 35) ** 0.25, abs=1e-9)


def test_two_unks_in_reference_do_not_match_each_other_or_across_refs() -> None:
    hyp = [4, UNK, 5, 6, UNK, 7]
    refs = [[4, UNK, 5, 6, UNK, 7], [4, UNK, 5, 6, UNK, 7]]
    out = corpus_bleu_ids([hyp], [refs], unk=UNK)
    # Matching unigrams: 4,5,6,7 -> 4/6; bigrams: (5,6) -> 1/5; trigrams: 0/4 -> BLEU 0.
    np.testing.assert_allclose(out["precisions"][:2], [100 * 4 / 6, 100 * 1 / 5], atol=1e-12)
    assert out["precisions"][2] == 0.0
    assert out["bleu"] == 0.0


def test_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="one list of references per hypothesis"):
        corpus_bleu_ids([[4]], [])
