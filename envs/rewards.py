"""Sentence BLEU of every prefix, and the BLEU-increment reward of the paper's MDP.

Everything here works on token ids (no ``<bos>``/``<eos>``) and is exact:

* ``smooth="plus1"`` is the official ERAC-VAML reward: +1 added to the clipped matches and to
  the totals of every order n = 1..4, brevity penalty ``exp(min(0, 1 - r/h))``.
* ``"none"``, ``"floor"``, ``"add-k"`` and ``"exp"`` equal
  ``sacrebleu.metrics.BLEU(tokenize="none", smooth_method=m, effective_order=True)
  .sentence_score(hyp, refs).score / 100`` (same arithmetic, same early exit when nothing matches).

The batched entry point ``prefix_bleu_batch`` scores every prefix at once, never re-scoring one,
with one of two independent implementations chosen by ``backend``:

* ``"numba"`` (``envs.bleu_kernel``): one compiled loop per batch; clipped matches by dynamic
  programming on common-suffix lengths held as bit sets, BLEU computed in the same loop. Compiled
  on first use (a few seconds; numba's disk cache keeps it across processes where writable).
* ``"numpy"``: every n-gram of every hypothesis and reference is given a dense id (one stable
  sort per order, with the batch item folded into the key), the clipped match that each new
  hypothesis token adds is ``rank < max reference count``, and a cumulative sum gives the
  statistics of every prefix.
* ``"auto"`` (the default): numba when it is installed and no hypothesis or reference of the batch
  is longer than ``NUMBA_MAX_LEN`` tokens (its work grows as |h| (|h| + sum |r|) / 64 words),
  numpy otherwise (``select_backend``).

``BleuTracker`` keeps the same statistics for a batch of episodes that grow one token at a time
(the environment's reward), in O(|y*|) numpy work per step.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Sequence

import numpy as np

MAX_ORDER = 4
SMOOTH_METHODS = ("plus1", "none", "floor", "add-k", "exp")
BACKENDS = ("auto", "numba", "numpy")
NUMBA_MAX_LEN = 512  # "auto" uses numpy for a batch with a longer hypothesis or reference
SCALES = ("ref_len", None)
_FLOOR_VALUE = 0.1  # sacrebleu's default for "floor"
_ADD_K_VALUE = 1.0  # sacrebleu's default for "add-k"
_LOG_ZERO = -9999999999.0  # sacrebleu.utils.my_log(0)

RefsLike = Sequence[Sequence[int]] | Sequence[int] | np.ndarray


def _check_smooth(smooth: str) -> None:
    if smooth not in SMOOTH_METHODS:
        raise ValueError(f"smooth={smooth!r} is not a BLEU smoothing method; use one of {SMOOTH_METHODS}")


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not a prefix-BLEU backend; use one of {BACKENDS}")


@functools.cache
def numba_available() -> bool:
    """Whether the numba backend can be used (the package is installed)."""
    return importlib.util.find_spec("numba") is not None


def select_backend(h_lens: np.ndarray, r_lens: np.ndarray, backend: str = "auto") -> str:
    """The implementation ("numba" or "numpy") that ``prefix_bleu_batch`` uses for a packed batch."""
    _check_backend(backend)
    if backend == "numpy":
        return "numpy"
    if backend == "numba":
        if not numba_available():
            raise ValueError("backend='numba' needs the numba package: pip install 'numba>=0.60' (or use backend='numpy')")
        return "numba"
    if not numba_available():
        return "numpy"
    longest = max(int(h_lens.max(initial=0)), int(r_lens.max(initial=0)))
    return "numba" if longest <= NUMBA_MAX_LEN else "numpy"


def _as_refs(refs: RefsLike) -> list[np.ndarray]:
    """One reference (a flat id sequence) or several, as a list of int64 arrays."""
    arr = refs if isinstance(refs, np.ndarray) else None
    if arr is not None and arr.ndim == 1 and arr.size:
        return [arr.astype(np.int64, copy=False)]
    if arr is not None and arr.ndim == 1:
        out = [arr.astype(np.int64, copy=False)]
    elif arr is None and len(refs) > 0 and np.ndim(refs[0]) == 0:
        out = [np.asarray(refs, dtype=np.int64)]
    else:
        out = [np.asarray(r, dtype=np.int64) for r in refs]
    if not out:
        raise ValueError("BLEU needs at least one reference; got an empty list of references")
    for r in out:
        if r.ndim != 1 or r.size == 0:
            raise ValueError(f"each reference must be a non-empty 1-D sequence of token ids; got shape {r.shape}")
    return out


def closest_ref_len(hyp_len: np.ndarray, ref_lens: np.ndarray) -> np.ndarray:
    """Reference length closest to each hypothesis length, ties to the shorter one (sacrebleu's rule).

    hyp_len: [N] ints; ref_lens: [N, R] ints, padded with values < 0 where an item has fewer refs.
    """
    hyp_len = np.asarray(hyp_len, dtype=np.int64)
    ref_lens = np.asarray(ref_lens, dtype=np.int64)
    diff = np.abs(hyp_len[:, None] - ref_lens)  # [N, R]
    key = np.where(ref_lens >= 0, diff * (1 << 31) + ref_lens, np.iinfo(np.int64).max)
    return np.take_along_axis(ref_lens, key.argmin(axis=1)[:, None], axis=1)[:, 0]


def bleu_from_stats(
    matches: np.ndarray, totals: np.ndarray, hyp_len: np.ndarray, ref_len: np.ndarray, smooth: str = "plus1"
) -> np.ndarray:
    """Sentence BLEU (in [0, 1]) from sufficient statistics, vectorised over N sentences.

    matches, totals: [N, 4] clipped n-gram matches and hypothesis n-gram counts; hyp_len, ref_len: [N].
    """
    _check_smooth(smooth)
    m = np.asarray(matches, dtype=np.float64)
    t = np.asarray(totals, dtype=np.float64)
    h = np.asarray(hyp_len, dtype=np.float64)
    r = np.asarray(ref_len, dtype=np.float64)
    if smooth == "plus1":
        logp = np.log((m + 1.0) / (t + 1.0))  # [N, 4]
        log_mean = (logp[:, 0] + logp[:, 1] + logp[:, 2] + logp[:, 3]) / MAX_ORDER
        with np.errstate(divide="ignore", invalid="ignore"):
            bp = np.exp(np.minimum(0.0, 1.0 - r / h))
        bp = np.where(h > 0, bp, 0.0)
        return bp * np.exp(log_mean)
    return _sacrebleu_from_stats(m, t, h, r, smooth)


def _sacrebleu_from_stats(m: np.ndarray, t: np.ndarray, h: np.ndarray, r: np.ndarray, smooth: str) -> np.ndarray:
    """``sacrebleu.BLEU.compute_bleu(..., effective_order=True)`` with the same floating-point steps.

    Loops over the 4 orders (columns) so that each step is one vectorised operation over sentences.
    """
    n_sent = len(h)
    safe_h = np.where(h > 0, h, 1.0)
    bp = np.where(h < r, np.where(h > 0, np.exp(1.0 - r / safe_h), 0.0), 1.0)
    any_match = (m > 0).any(axis=1)
    total = np.zeros(n_sent)
    eff_order = np.zeros(n_sent)
    in_order = np.ones(n_sent, dtype=bool)  # orders before the first empty one (sacrebleu's `break`)
    doublings = np.zeros(n_sent)  # sacrebleu's smooth_mteval = 2 ** doublings
    for n in range(MAX_ORDER):
        c, tot = m[:, n], t[:, n]
        if smooth == "add-k" and n > 0:
            c, tot = c + _ADD_K_VALUE, tot + _ADD_K_VALUE
        in_order &= tot > 0
        eff_order += in_order
        safe_t = np.where(tot > 0, tot, 1.0)
        zero = c == 0
        if smooth == "exp":
            doublings += zero & in_order
            p_zero = 100.0 / (np.exp2(doublings) * safe_t)
        elif smooth == "floor":
            p_zero = 100.0 * _FLOOR_VALUE / safe_t
        else:  # "none" (and "add-k", whose smoothed counts are never zero for n > 1)
            p_zero = np.zeros(n_sent)
        p = np.where(zero, p_zero, 100.0 * c / safe_t)
        logp = np.log(np.where(p > 0, p, 1.0))
        total += np.where(in_order, np.where(p > 0, logp, _LOG_ZERO), 0.0)
    score = bp * np.exp(total / np.maximum(eff_order, 1.0))
    return np.where(any_match & (eff_order > 0), score, 0.0) / 100.0


def _positions(lens: np.ndarray) -> np.ndarray:
    """0-based position of every element of a flattened ragged array."""
    starts = np.cumsum(lens) - lens
    return np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(starts, lens)


_U16 = 1 << 16


def _stable_lexsort(major: np.ndarray, minor: np.ndarray, bound: int) -> np.ndarray:
    """Stable order of (major, minor) pairs of non-negative ints, all below ``bound``.

    When they fit in 16 bits this is two passes of numpy's radix sort (stable argsort of uint16),
    several times faster than a comparison sort at the sizes of a training batch.
    """
    if bound <= _U16:
        o1 = np.argsort(minor.astype(np.uint16), kind="stable")
        return o1[np.argsort(major[o1].astype(np.uint16), kind="stable")]
    return np.lexsort((minor, major))


def _pack(
    hyps: Sequence[Sequence[int]], refs_list: Sequence[RefsLike]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Flatten a batch: (hyp tokens, hyp lengths [B], ref tokens, ref lengths, refs per item [B]).

    A batch whose references are all 1-D arrays (one reference each) skips the per-item checks.
    """
    if len(hyps) != len(refs_list):
        raise ValueError(f"got {len(hyps)} hypotheses but {len(refs_list)} reference sets")
    n_items = len(hyps)
    h_lens = np.fromiter(map(len, hyps), dtype=np.int64, count=n_items)
    h_flat = np.concatenate(hyps).astype(np.int64, copy=False) if h_lens.sum() else np.zeros(0, np.int64)
    if h_flat.dtype != np.int64:
        raise ValueError(f"token ids must be integers; got {h_flat.dtype}")
    r_flat = None
    if n_items:
        try:  # one reference per item (all 1-D) is the only way the concatenation is 1-D
            r_flat = np.concatenate(refs_list)
        except (ValueError, TypeError):
            pass
    if r_flat is not None and r_flat.ndim == 1:
        r_lens = np.fromiter(map(len, refs_list), dtype=np.int64, count=n_items)
        n_refs = np.ones(n_items, dtype=np.int64)
    else:
        nested = [_as_refs(r) for r in refs_list]
        flat_refs = [r for rs in nested for r in rs]
        n_refs = np.array(list(map(len, nested)), dtype=np.int64)
        r_lens = np.array(list(map(len, flat_refs)), dtype=np.int64)
        r_flat = np.concatenate(flat_refs) if r_lens.size else np.zeros(0, np.int64)
    if r_lens.size and r_lens.min() == 0:
        raise ValueError(f"reference {int(np.argmin(r_lens))} of the batch is empty; BLEU needs non-empty references")
    r_flat = r_flat.astype(np.int64, copy=False)
    if h_flat.ndim != 1 or r_flat.ndim != 1:
        raise ValueError("hypotheses and references must be 1-D sequences of token ids")
    return h_flat, h_lens, r_flat, r_lens, n_refs


def _prefix_stats(
    h_flat: np.ndarray, h_lens: np.ndarray, r_flat: np.ndarray, r_lens: np.ndarray, n_refs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Clipped n-gram matches of every prefix of every hypothesis of a packed batch (see ``_pack``).

    Returns (matches [Nh, 4] cumulative per hypothesis, ref_lens [B, R] padded with -1), where Nh
    is the total number of hypothesis tokens.

    Hypothesis tokens and reference tokens form one flat array (hypotheses first). For each order n
    the n-grams ending at each element are grouped by a stable sort of (id of the (n-1)-gram ending
    one element earlier, id of the unigram) — the batch item is part of the unigram id. Within a
    group the hypothesis occurrences come first, in position order, so the k-th one (k from 0)
    is a clipped match iff k < its largest count in any one reference. An n-gram group with no
    hypothesis or no reference occurrence can never contribute again, so only n-grams whose group
    holds both are extended to order n+1.
    """
    n_items = len(h_lens)
    max_r = int(n_refs.max()) if n_items else 1
    slot_of_ref = _positions(n_refs)  # reference index within its item
    item_of_ref = np.repeat(np.arange(n_items), n_refs)
    ref_lens = np.full((n_items, max_r), -1, dtype=np.int64)
    ref_lens[item_of_ref, slot_of_ref] = r_lens

    nh = len(h_flat)
    tok = np.concatenate([h_flat, r_flat])
    if tok.size and tok.min() < 0:
        raise ValueError(f"token ids must be >= 0; found {int(tok.min())}")
    pos = _positions(np.concatenate([h_lens, r_lens]))
    slot = np.repeat(slot_of_ref, r_lens)  # [Nr] reference index of each reference token
    n_all = len(tok)

    matches = np.zeros((nh, MAX_ORDER), dtype=np.int64)
    cand = np.arange(n_all)  # elements at which a candidate n-gram ends
    major = np.concatenate([np.repeat(np.arange(n_items), h_lens), np.repeat(item_of_ref, r_lens)])
    minor = tok
    bound = max(n_items, int(tok.max()) + 1 if n_all else 1)
    gid1 = gid_prev = extendable = None
    for n in range(MAX_ORDER):
        if n > 0:
            cand = np.flatnonzero((gid_prev[:-1] >= 0) & extendable) + 1
            major, minor = gid_prev[cand - 1], gid1[cand]
        if cand.size == 0:
            break
        order = _stable_lexsort(major, minor, bound)
        elem = cand[order]  # element index, in sorted order
        smaj, smin = major[order], minor[order]
        new = np.empty(len(order), dtype=bool)
        new[:1] = True
        np.not_equal(smaj[1:], smaj[:-1], out=new[1:])
        new[1:] |= smin[1:] != smin[:-1]
        gid = np.cumsum(new) - 1  # group id, in sorted order
        starts = np.flatnonzero(new)
        n_groups = len(starts)
        is_hyp = elem < nh
        hyp_k = np.flatnonzero(is_hyp)
        ref_k = np.flatnonzero(~is_hyp)
        if max_r == 1:
            max_ref_count = np.bincount(gid[ref_k], minlength=n_groups)
        else:
            per_ref = np.bincount(gid[ref_k] * max_r + slot[elem[ref_k] - nh], minlength=n_groups * max_r)
            max_ref_count = per_ref.reshape(n_groups, max_r).max(axis=1)
        hyp_gid = gid[hyp_k]
        hit = hyp_k - starts[hyp_gid] < max_ref_count[hyp_gid]
        matches[elem[hyp_k[hit]], n] = 1
        if n == MAX_ORDER - 1:
            break
        # Groups seen in both a hypothesis (first in the group) and a reference (last) are extended.
        live_group = is_hyp[starts] & ~is_hyp[np.append(starts[1:], len(elem)) - 1]
        live = live_group[gid]
        gid_prev = np.full(n_all, -1, dtype=np.int64)
        gid_prev[elem[live]] = gid[live]
        bound = max(n_groups, bound if n else n_groups)
        if n == 0:
            gid1 = gid_prev
            extendable = (gid1[1:] >= 0) & (pos[1:] > 0)
    cum = np.cumsum(matches, axis=0)
    ends = np.cumsum(h_lens)
    before = np.zeros((n_items, MAX_ORDER), dtype=np.int64)
    nonempty = ends - h_lens > 0
    before[nonempty] = cum[(ends - h_lens)[nonempty] - 1]
    cum -= np.repeat(before, h_lens, axis=0)
    return cum, ref_lens


def ngram_totals(hyp_len: np.ndarray) -> np.ndarray:
    """Number of n-grams (n = 1..4) in hypotheses of the given lengths: [N, 4]."""
    n = np.arange(1, MAX_ORDER + 1)
    return np.maximum(0, np.asarray(hyp_len, dtype=np.int64)[:, None] - n + 1)


def prefix_bleu_batch(
    hyps: Sequence[Sequence[int]], refs_list: Sequence[RefsLike], smooth: str = "plus1", backend: str = "auto"
) -> list[np.ndarray]:
    """BLEU of every prefix of every hypothesis (paper Eq. 4: a prefix is scored as if eos followed).

    hyps: B token-id sequences; refs_list: for each hypothesis one reference or a list of them.
    Returns B float64 arrays, item b of length len(hyps[b]) with entry t-1 = BLEU(hyps[b][:t]).
    backend: "auto", "numba" or "numpy" (see the module docstring); all give the same values.
    """
    _check_smooth(smooth)
    _check_backend(backend)
    packed = _pack(hyps, refs_list)
    h_lens = packed[1]
    if not len(h_lens):
        return []
    if select_backend(h_lens, packed[3], backend) == "numba":
        from envs.bleu_kernel import prefix_bleu_flat

        bleu = prefix_bleu_flat(*packed, smooth)
    else:
        bleu = _prefix_bleu_numpy(*packed, smooth)
    ends = np.cumsum(h_lens)
    return [bleu[a:b] for a, b in zip((ends - h_lens).tolist(), ends.tolist())]


def _prefix_bleu_numpy(
    h_flat: np.ndarray, h_lens: np.ndarray, r_flat: np.ndarray, r_lens: np.ndarray, n_refs: np.ndarray, smooth: str
) -> np.ndarray:
    """BLEU of every prefix of a packed batch (see ``_pack``), flat float64 [sum(h_lens)], in numpy."""
    matches, ref_lens = _prefix_stats(h_flat, h_lens, r_flat, r_lens, n_refs)
    prefix_len = _positions(h_lens) + 1
    if ref_lens.shape[1] == 1:  # one reference each: it is the closest
        r = np.repeat(ref_lens[:, 0], h_lens)
    else:
        r = closest_ref_len(prefix_len, np.repeat(ref_lens, h_lens, axis=0))
    return bleu_from_stats(matches, ngram_totals(prefix_len), prefix_len, r, smooth)


def prefix_bleu(hyp: Sequence[int], refs: RefsLike, smooth: str = "plus1") -> np.ndarray:
    """BLEU of every prefix ``hyp[:t]``, t = 1..len(hyp) (paper Eq. 4), as a float64 array."""
    return prefix_bleu_batch([hyp], [refs], smooth)[0]


def sentence_bleu(hyp: Sequence[int], refs: RefsLike, smooth: str = "plus1") -> float:
    """Sentence BLEU of a complete hypothesis (0 for an empty one)."""
    return float(prefix_bleu(hyp, refs, smooth)[-1]) if len(hyp) else 0.0


def reward_scale(hyp_len: int, refs: RefsLike, scale: str | None = "ref_len") -> float:
    """The official reward scale |y*| (with several references: the one closest to len(hyp))."""
    if scale is None:
        return 1.0
    if scale != "ref_len":
        raise ValueError(f"scale={scale!r} is not a reward scaling; use one of {SCALES}")
    lens = np.array([[len(r) for r in _as_refs(refs)]], dtype=np.int64)
    return float(closest_ref_len(np.array([hyp_len]), lens)[0])


def bleu_increments(
    hyp: Sequence[int], refs: RefsLike, smooth: str = "plus1", scale: str | None = "ref_len"
) -> np.ndarray:
    """Token rewards r_t = R(y_1..t) - R(y_1..t-1), R(empty) = 0 (paper Eq. 13), times the scale.

    With ``scale="ref_len"`` (the official code) the rewards sum to |y*| * BLEU(hyp).
    """
    bleu = prefix_bleu(hyp, refs, smooth)
    return np.diff(bleu, prepend=0.0) * reward_scale(len(bleu), refs, scale)


class BleuTracker:
    """Prefix BLEU of a batch of growing hypotheses, one reference each, updated token by token.

    Each slot holds one reference. ``reset(slots, refs)`` starts new episodes in those slots;
    ``append(slots, tokens)`` extends their hypotheses by one token and returns the BLEU of the
    new prefixes. Only n-grams that occur in the reference can match, so the state is the count
    of each reference n-gram in the hypothesis: O(|y*|) work per step, vectorised over slots.
    """

    def __init__(self, num_slots: int, max_ref_len: int, smooth: str = "plus1") -> None:
        _check_smooth(smooth)
        self.smooth = smooth
        self.max_ref_len = max_ref_len
        shape = (num_slots, MAX_ORDER, max_ref_len)
        self._ref = np.full((num_slots, max_ref_len + MAX_ORDER), -1, dtype=np.int64)
        self.ref_len = np.zeros(num_slots, dtype=np.int64)
        self._canon = np.zeros(shape, dtype=np.int64)  # first position of the same n-gram in the ref
        self._ref_count = np.zeros(shape, dtype=np.int64)  # count of that n-gram in the ref
        self._hyp_count = np.zeros(shape, dtype=np.int64)  # its count in the hypothesis so far
        self._last = np.full((num_slots, MAX_ORDER), -1, dtype=np.int64)  # last 4 tokens, newest last
        self.hyp_len = np.zeros(num_slots, dtype=np.int64)
        self.matches = np.zeros((num_slots, MAX_ORDER), dtype=np.int64)
        self.bleu = np.zeros(num_slots, dtype=np.float64)

    def reset(self, slots: np.ndarray, refs: Sequence[np.ndarray]) -> None:
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        for s, ref in zip(slots, refs):
            ref = np.asarray(ref, dtype=np.int64)
            if ref.size == 0 or ref.size > self.max_ref_len:
                raise ValueError(f"reference length {ref.size} outside [1, {self.max_ref_len}]")
            self._ref[s] = -1
            self._ref[s, : ref.size] = ref
            self.ref_len[s] = ref.size
            for n in range(1, MAX_ORDER + 1):
                k = ref.size - n + 1
                self._canon[s, n - 1] = 0
                self._ref_count[s, n - 1] = 0
                if k <= 0:
                    continue
                windows = np.lib.stride_tricks.sliding_window_view(ref, n)  # [k, n]
                if ref.max() < 1 << 16:  # pack each n-gram into one int64: a 1-D unique, ~10x faster
                    keys = (windows << (16 * np.arange(n, dtype=np.int64))).sum(axis=1)
                    _, first, inverse, counts = np.unique(
                        keys, return_index=True, return_inverse=True, return_counts=True
                    )
                else:
                    _, first, inverse, counts = np.unique(
                        windows, axis=0, return_index=True, return_inverse=True, return_counts=True
                    )
                inverse = inverse.reshape(-1)
                self._canon[s, n - 1, :k] = first[inverse]
                self._ref_count[s, n - 1, first] = counts
        self._hyp_count[slots] = 0
        self._last[slots] = -1
        self.hyp_len[slots] = 0
        self.matches[slots] = 0
        self.bleu[slots] = 0.0

    def append(self, slots: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        """Extend the hypotheses in ``slots`` by ``tokens`` and return the BLEU of the new prefixes."""
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        last = np.concatenate([self._last[slots, 1:], tokens[:, None]], axis=1)  # [S, 4]
        self._last[slots] = last
        self.hyp_len[slots] += 1
        h = self.hyp_len[slots]
        ref = self._ref[slots]  # [S, Lr + 4]
        lr = self.max_ref_len
        for n in range(1, MAX_ORDER + 1):
            # eq[s, k]: the reference n-gram starting at k equals the hypothesis' last n tokens.
            eq = np.ones((len(slots), lr), dtype=bool)
            for j in range(n):
                eq &= ref[:, j : j + lr] == last[:, MAX_ORDER - n + j][:, None]
            eq &= (np.arange(lr)[None, :] <= self.ref_len[slots, None] - n) & (h[:, None] >= n)
            found = eq.any(axis=1)
            canon = self._canon[slots, n - 1, eq.argmax(axis=1)]
            self._hyp_count[slots[found], n - 1, canon[found]] += 1
            clipped = self._hyp_count[slots, n - 1, canon] <= self._ref_count[slots, n - 1, canon]
            self.matches[slots, n - 1] += found & clipped
        bleu = bleu_from_stats(self.matches[slots], ngram_totals(h), h, self.ref_len[slots], self.smooth)
        self.bleu[slots] = bleu
        return bleu
