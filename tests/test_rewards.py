"""The reward is checked against sacrebleu and against a plain, obviously-correct implementation."""
from __future__ import annotations

import gzip
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from sacrebleu.metrics import BLEU

from envs.rewards import (
    BleuTracker,
    bleu_increments,
    prefix_bleu,
    prefix_bleu_batch,
    reward_scale,
    sentence_bleu,
)

SACRE_MODES = ["none", "floor", "add-k", "exp"]
_SACRE = {m: BLEU(tokenize="none", smooth_method=m, effective_order=True) for m in SACRE_MODES}
CORPUS = Path(__file__).resolve().parents[1] / "rayseq/data/corpora/multi30k/val.lc.norm.tok.en.gz"


def sacre_sentence(hyp, refs, mode):
    return _SACRE[mode].sentence_score(" ".join(map(str, hyp)), [" ".join(map(str, r)) for r in refs]).score / 100


def plain_plus1(hyp, refs):
    """The official smoothed BLEU written the obvious way (Counter per n-gram order)."""
    log_sum = 0.0
    for n in range(1, 5):
        hyp_counts = Counter(tuple(hyp[i : i + n]) for i in range(len(hyp) - n + 1))
        max_ref = Counter()
        for r in refs:
            for g, c in Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1)).items():
                max_ref[g] = max(max_ref[g], c)
        matches = sum(min(c, max_ref[g]) for g, c in hyp_counts.items())
        total = max(0, len(hyp) - n + 1)
        log_sum += math.log((matches + 1) / (total + 1))
    r = min((len(x) for x in refs), key=lambda L: (abs(L - len(hyp)), L))
    return math.exp(min(0.0, 1 - r / len(hyp))) * math.exp(log_sum / 4)


def reference(hyp, refs, mode):
    f = plain_plus1 if mode == "plus1" else (lambda h, r: sacre_sentence(h, r, mode))
    return np.array([f(hyp[:t], refs) for t in range(1, len(hyp) + 1)])


def random_case(rng, max_refs=4, vocab=None):
    v = vocab or int(rng.integers(2, 9))
    hyp = rng.integers(0, v, size=int(rng.integers(1, 16))).tolist()
    refs = [rng.integers(0, v, size=int(rng.integers(1, 16))).tolist() for _ in range(int(rng.integers(1, max_refs + 1)))]
    return hyp, refs


@pytest.mark.parametrize("mode", ["plus1", *SACRE_MODES])
def test_prefix_bleu_random_single_and_multi_reference(mode):
    rng = np.random.default_rng(7)
    for _ in range(150):
        hyp, refs = random_case(rng)
        np.testing.assert_allclose(prefix_bleu(hyp, refs, mode), reference(hyp, refs, mode), rtol=0, atol=1e-12)


def _multi30k_ids(n):
    with gzip.open(CORPUS, "rt", encoding="utf-8") as f:
        lines = [ln.split() for _, ln in zip(range(n), f)]
    vocab: dict[str, int] = {}
    return [[vocab.setdefault(w, len(vocab) + 4) for w in ln] for ln in lines]


@pytest.mark.parametrize("mode", ["plus1", *SACRE_MODES])
def test_batch_on_real_sentences_matches_references(mode):
    rng = np.random.default_rng(1)
    sents = _multi30k_ids(120)
    hyps, refs = [], []
    for i, s in enumerate(sents):
        h = [t if rng.random() > 0.25 else int(rng.integers(4, 60)) for t in s]
        if i % 3 == 0:
            h = h + h[: len(h) // 2]  # longer than the reference, repeated n-grams
        elif i % 3 == 1:
            h = h[: max(1, len(h) // 2)]  # shorter
        hyps.append(h)
        refs.append([s] if i % 4 else [s, sents[(i + 1) % len(sents)], s[::-1]])  # some multi-reference
    ours = prefix_bleu_batch(hyps, refs, mode)
    assert len(ours) == len(hyps)
    for h, r, o in zip(hyps, refs, ours):
        assert o.dtype == np.float64 and o.shape == (len(h),)
        np.testing.assert_allclose(o, reference(h, r, mode), rtol=0, atol=1e-12)


def test_batch_equals_single_calls_and_accepts_arrays():
    rng = np.random.default_rng(3)
    cases = [random_case(rng, vocab=5) for _ in range(40)]
    hyps = [np.array(h) for h, _ in cases]
    refs = [np.array(r[0]) for _, r in cases]  # the single-reference fast path
    for h, r, o in zip(hyps, refs, prefix_bleu_batch(hyps, refs)):
        np.testing.assert_array_equal(o, prefix_bleu(h.tolist(), [r.tolist()]))


def test_clipping_and_exact_values():
    # "the the the the" against "the cat": one unigram match is clipped to the reference count.
    assert prefix_bleu([5, 5, 5, 5], [5, 6], "none")[-1] == 0.0  # no bigram match, no smoothing
    got = prefix_bleu([5, 5, 5, 5], [[5, 6]], "plus1")[-1]
    want = math.exp((math.log(2 / 5) + math.log(1 / 4) + math.log(1 / 3) + math.log(1 / 2)) / 4)
    assert got == pytest.approx(want, abs=1e-15)
    # Clipping takes the max count over references, not the sum.
    two = prefix_bleu([5, 5], [[5, 6], [5, 7]], "plus1")[-1]
    assert two == pytest.approx(math.exp((math.log(2 / 3) + math.log(1 / 2) + 0 + 0) / 4), abs=1e-15)


def test_length_one_and_identity():
    assert prefix_bleu([9], [9], "plus1")[0] == pytest.approx(1.0)
    assert prefix_bleu([9], [[9]], "exp")[0] == pytest.approx(1.0)
    ref = [4, 5, 6, 7, 8, 9]
    assert sentence_bleu(ref, ref, "none") == pytest.approx(1.0)
    assert sentence_bleu([], ref) == 0.0


def test_brevity_penalty_closest_reference_ties_to_shorter():
    # hyp length 4; references of length 3 and 5 are equally close: the shorter (3) is used -> BP 1.
    hyp = [4, 5, 6, 7]
    got = prefix_bleu(hyp, [[4, 5, 6], [4, 5, 6, 7, 8]], "plus1")[-1]
    assert got == pytest.approx(plain_plus1(hyp, [[4, 5, 6], [4, 5, 6, 7, 8]]), abs=1e-15)
    assert reward_scale(4, [[4, 5, 6], [4, 5, 6, 7, 8]]) == 3.0


@pytest.mark.parametrize("scale", ["ref_len", None])
def test_increments_sum_to_scaled_bleu(scale):
    rng = np.random.default_rng(11)
    for _ in range(50):
        hyp, refs = random_case(rng, max_refs=1)
        inc = bleu_increments(hyp, refs, scale=scale)
        factor = len(refs[0]) if scale else 1.0
        assert inc.sum() == pytest.approx(factor * sentence_bleu(hyp, refs), abs=1e-12)
        assert inc[0] == pytest.approx(factor * prefix_bleu(hyp, refs)[0], abs=1e-15)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="smooth"):
        prefix_bleu([1], [1], smooth="plus2")
    with pytest.raises(ValueError, match="empty"):
        prefix_bleu([1], [[]])
    with pytest.raises(ValueError, match="hypotheses"):
        prefix_bleu_batch([[1], [2]], [[1]])
    with pytest.raises(ValueError, match=">= 0"):
        prefix_bleu([-1], [1])
    with pytest.raises(ValueError, match="scale"):
        bleu_increments([1], [1], scale="hyp_len")


@pytest.mark.parametrize("mode", ["plus1", "exp"])
def test_tracker_matches_prefix_bleu(mode):
    rng = np.random.default_rng(5)
    tracker = BleuTracker(num_slots=4, max_ref_len=20, smooth=mode)
    for _ in range(40):
        refs = [rng.integers(4, 8, size=int(rng.integers(1, 21))) for _ in range(4)]
        hyps = [rng.integers(4, 8, size=int(rng.integers(1, 25))) for _ in range(4)]
        tracker.reset(np.arange(4), refs)
        got: list[list[float]] = [[] for _ in range(4)]
        for t in range(max(map(len, hyps))):
            live = np.array([i for i in range(4) if t < len(hyps[i])])
            for i, b in zip(live, tracker.append(live, np.array([hyps[i][t] for i in live]))):
                got[i].append(b)
        for i in range(4):
            np.testing.assert_allclose(got[i], prefix_bleu(hyps[i], refs[i], mode), rtol=0, atol=1e-12)


# --- The numba and numpy backends of prefix_bleu_batch: each equal to the other and to the references.

BACKENDS = ["numba", "numpy"]


def _both_backends(hyps, refs, mode):
    """The two backends' results, checked equal to each other (1e-12), and the numba one returned."""
    got = {b: prefix_bleu_batch(hyps, refs, mode, backend=b) for b in BACKENDS}
    assert len(got["numba"]) == len(got["numpy"]) == len(hyps)
    for a, b, h in zip(got["numba"], got["numpy"], hyps):
        assert a.dtype == np.float64 and a.shape == (len(h),)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
    return got["numba"]


@pytest.mark.parametrize("mode", ["plus1", *SACRE_MODES])
def test_backends_agree_with_references_on_random_batches(mode):
    rng = np.random.default_rng(17)
    cases = [random_case(rng, max_refs=5) for _ in range(120)]
    cases += [([4], [[4]]), ([4], [[5]]), ([4], [[4, 5, 6]]), ([4, 5, 6], [[5]])]  # length 1
    cases += [([5] * 12 + [5, 6] * 5, [[5, 5, 6, 5, 6], [5] * 7, [6, 5, 6, 5]])]  # repeated n-grams: clipping
    hyps, refs = [h for h, _ in cases], [r for _, r in cases]
    for h, r, o in zip(hyps, refs, _both_backends(hyps, refs, mode)):
        np.testing.assert_allclose(o, reference(h, r, mode), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["plus1", *SACRE_MODES])
def test_backends_agree_on_real_sentences_with_five_references(mode):
    rng = np.random.default_rng(2)
    sents = _multi30k_ids(60)
    hyps, refs = [], []
    for i, s in enumerate(sents):
        h = [t if rng.random() > 0.3 else int(rng.integers(4, 40)) for t in s]
        h = h + h[: len(h) // 2] if i % 2 else h[: max(1, 2 * len(h) // 3)]  # longer / shorter than refs
        others = [sents[(i + k) % len(sents)] for k in (1, 2, 3)]
        hyps.append(h)
        refs.append([s, *others, s[: max(1, len(s) // 2)]])  # 5 references of different lengths
    for h, r, o in zip(hyps, refs, _both_backends(hyps, refs, mode)):
        np.testing.assert_allclose(o, reference(h, r, mode), rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["plus1", "exp"])
def test_long_items_use_the_numpy_fallback_and_multiword_bit_sets_agree(mode):
    from envs.rewards import NUMBA_MAX_LEN, select_backend

    rng = np.random.default_rng(4)
    ref = rng.integers(0, 6, size=NUMBA_MAX_LEN + 40)
    long_hyp = np.concatenate([ref[100:300], rng.integers(0, 6, size=NUMBA_MAX_LEN - 150), ref[:90]])
    hyps = [long_hyp, rng.integers(0, 6, size=130), rng.integers(0, 6, size=7)]
    refs = [ref, [ref[:70], ref[70:200], ref[5:6]], ref[:65]]  # several 64-bit words per row
    h_lens = np.array([len(h) for h in hyps])
    r_lens = np.array([len(ref), 70, 130, 1, 65])
    assert select_backend(h_lens, r_lens, "auto") == "numpy"  # longer than NUMBA_MAX_LEN
    assert select_backend(h_lens[1:], r_lens[1:], "auto") == "numba"
    assert select_backend(h_lens, r_lens, "numba") == "numba"
    auto = prefix_bleu_batch(hyps, refs, mode)
    got = _both_backends(hyps, refs, mode)  # numba forced on the long item too
    for h, r, a, o in zip(hyps, refs, auto, got):
        np.testing.assert_array_equal(a, prefix_bleu_batch([h], [r], mode, backend="numpy")[0])
        r = [r] if np.ndim(r[0]) == 0 else r
        ts = np.unique(np.linspace(1, len(h), 12).astype(int))  # a sample of prefixes (sacrebleu is slow here)
        rr = [list(x) for x in r]
        want = [plain_plus1(list(h[:t]), rr) if mode == "plus1" else sacre_sentence(h[:t], rr, mode) for t in ts]
        np.testing.assert_allclose(o[ts - 1], want, rtol=0, atol=1e-12)


def test_backend_edge_cases_and_errors():
    for b in [*BACKENDS, "auto"]:
        assert prefix_bleu_batch([], [], backend=b) == []
        assert [len(o) for o in prefix_bleu_batch([[], [3]], [[3], [3]], backend=b)] == [0, 1]
        with pytest.raises(ValueError, match=">= 0"):
            prefix_bleu_batch([[1, -2]], [[1]], backend=b)
    with pytest.raises(ValueError, match="backend='cuda'.*auto"):
        prefix_bleu_batch([[1]], [[1]], backend="cuda")
    # Items given as int32 arrays, Python lists, a 2-D array of equal-length references: same values.
    a = prefix_bleu_batch([np.array([4, 5, 6], np.int32)], [np.array([[4, 5, 6], [6, 5, 4]])], "exp", backend="numba")
    b = prefix_bleu_batch([[4, 5, 6]], [[[4, 5, 6], [6, 5, 4]]], "exp", backend="numpy")
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=1e-12)


def test_kernel_compiles_without_numba_cache(monkeypatch):
    """Where numba cannot cache (read-only package, no user cache dir) the kernel compiles in memory."""
    from envs import bleu_kernel

    compile_ = bleu_kernel._compile

    def no_cache(cache):
        if cache:
            raise RuntimeError("cannot cache function '_prefix_bleu_kernel': no locator available for file")
        return compile_(cache)

    monkeypatch.setattr(bleu_kernel, "_compile", no_cache)
    monkeypatch.setattr(bleu_kernel, "_KERNEL", None)
    got = prefix_bleu_batch([[4, 5, 4, 5]], [[4, 5, 6]], "plus1", backend="numba")[0]
    np.testing.assert_allclose(got, reference([4, 5, 4, 5], [[4, 5, 6]], "plus1"), rtol=0, atol=1e-12)
