"""The numba backend of ``envs.rewards.prefix_bleu_batch``: BLEU of every prefix in one compiled loop.

Clipped n-gram matches come from dynamic programming on common-suffix lengths, with no n-gram
hashing or sorting. For hypothesis position t and reference position j,

    M[t, j] = min(4, M[t-1, j-1] + 1)  if h[t] == r[j]  else 0,

so the n-gram of the hypothesis ending at t occurs #{j : M[t, j] >= n} times in that reference
(the count used for clipping is the largest over the item's references). The same recursion of
the hypothesis against itself, S[t, u], gives its occurrences so far, #{u <= t : S[t, u] >= n};
the n-gram ending at t is a clipped match iff that number is <= the reference count. Summing over
t gives the statistics of every prefix. A row of M is kept as four bit sets {j : M[t, j] >= n}
(64 positions a word, see the kernel's docstring), and the positions of each token in the
references come from a small per-item table of the item's distinct tokens, so each hypothesis
token costs O((|h| + sum |r|) / 64) word operations.

BLEU is then computed in the same loop, step by step as ``envs.rewards.bleu_from_stats`` (the
"plus1" formula) and ``envs.rewards._sacrebleu_from_stats`` (sacrebleu's effective order, its
``break`` at the first empty order, exp smoothing's doublings, floor, add-k, the early zero when
nothing matches). Logs of precisions are differences of logs of small integers from a table:
``log(100 c / t) - log(100) = log c - log t``, and the brevity penalty joins the final exponential,
which differs from sacrebleu's rounding by ~1e-16 (the tests hold both to 1e-12).

The kernel is compiled on first use (``get_kernel``), with numba's on-disk cache when the package
directory (or numba's user-wide cache directory) is writable, without it otherwise. It is
single-threaded on purpose: every Ray worker computes its own rewards.
"""
from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

SMOOTH_CODES = {"plus1": 0, "none": 1, "floor": 2, "add-k": 3, "exp": 4}
_FLOOR_VALUE = 0.1  # sacrebleu's default for "floor" (as envs.rewards)
# log(100 * floor / t) - log(100) = LOG_FLOOR - log(t), the floored precision without the factor 100.
LOG_FLOOR = math.log(100.0 * _FLOOR_VALUE) - math.log(100.0)
LOG_2 = math.log(2.0)


@intrinsic
def _popcount(typingctx, x):
    """Number of set bits of a uint64 (LLVM's ctpop), as an int64."""
    if x != types.uint64:
        return None

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.int64(types.uint64), codegen


@njit(inline="always", nogil=True)
def _next_row(e_bits: np.ndarray, g1: np.ndarray, g2: np.ndarray, g3: np.ndarray, lo: int, hi: int) -> tuple:
    """Advance the bit sets G_1..G_3 of words [lo, hi) from row t - 1 to row t; return the popcounts
    of G_1..G_4 of row t, i.e. #{j : M[t, j] >= n} for n = 1..4.

    ``e_bits`` is E = {j : r[j] = h[t]}; G_n(t) = E & (G_{n-1}(t-1) shifted up by one position), the
    bit crossing a word boundary carried from word w - 1 (none into word ``lo``: a new sequence).
    Words go in descending order, so word w - 1 still holds row t - 1 when word w reads it.
    """
    one = np.uint64(1)
    top = np.uint64(63)
    zero = np.uint64(0)
    n1 = 0
    n2 = 0
    n3 = 0
    n4 = 0
    for w in range(hi - 1, lo - 1, -1):
        e = e_bits[w]
        c1 = g1[w - 1] >> top if w > lo else zero
        c2 = g2[w - 1] >> top if w > lo else zero
        c3 = g3[w - 1] >> top if w > lo else zero
        h2 = e & ((g1[w] << one) | c1)
        h3 = e & ((g2[w] << one) | c2)
        h4 = e & ((g3[w] << one) | c3)
        g1[w] = e
        g2[w] = h2
        g3[w] = h3
        n1 += _popcount(e)
        n2 += _popcount(h2)
        n3 += _popcount(h3)
        n4 += _popcount(h4)
    return n1, n2, n3, n4


def _prefix_bleu_kernel(
    h_flat: np.ndarray,
    h_lens: np.ndarray,
    r_flat: np.ndarray,
    r_lens: np.ndarray,
    n_refs: np.ndarray,
    smooth: int,
    log_floor: float,
    log_2: float,
    out: np.ndarray,
) -> int:
    """Write BLEU(h_b[:t]) of every prefix of every item into ``out`` (flat, hypotheses concatenated).

    Packed input as ``envs.rewards._pack``: item b owns hypothesis tokens ``h_flat`` from
    sum(h_lens[:b]) and references ``sum(n_refs[:b]) ..`` of ``r_lens`` (their tokens in ``r_flat``).
    ``smooth`` is a ``SMOOTH_CODES`` value. Returns 0, or -1 when a token id is negative (``out``
    is then left unwritten).

    Row t of M (one reference) is held as bit sets G_n = {j : M[t, j] >= n}, 64 positions a word:
    G_1 = {j : r[j] = h[t]} =: E and G_n = E & (G_{n-1} of row t-1, shifted by one position), so
    #{j : M[t, j] >= n} = popcount(G_n). The same for S over positions u <= t of the hypothesis.
    """
    one = np.uint64(1)
    n_items = h_lens.shape[0]
    for i in range(h_flat.shape[0]):
        if h_flat[i] < 0:
            return -1
    for i in range(r_flat.shape[0]):
        if r_flat[i] < 0:
            return -1
    # Sizes of the bit-set rows, of the token table and of the log table.
    max_h = 0
    max_words = 0
    max_tokens = 0
    k = 0
    for b in range(n_items):
        max_h = max(max_h, h_lens[b])
        words = 0
        tokens = h_lens[b]
        for _ in range(n_refs[b]):
            words += (r_lens[k] + 63) >> 6
            tokens += r_lens[k]
            k += 1
        max_words = max(max_words, words)
        max_tokens = max(max_tokens, tokens)
    log_int = np.empty(max_h + 3, dtype=np.float64)  # log(i); plus1 and add-k reach max_h + 1
    log_int[0] = 0.0
    for i in range(1, max_h + 3):
        log_int[i] = math.log(i)
    h_words = (max_h + 63) >> 6
    hg1 = np.zeros(h_words, dtype=np.uint64)  # G_1, G_2, G_3 of the previous row of S
    hg2 = np.zeros(h_words, dtype=np.uint64)
    hg3 = np.zeros(h_words, dtype=np.uint64)
    rg1 = np.zeros(max(max_words, 1), dtype=np.uint64)  # the same for M, each reference on its own words
    rg2 = np.zeros(max(max_words, 1), dtype=np.uint64)
    rg3 = np.zeros(max(max_words, 1), dtype=np.uint64)
    # Open-addressing table of the item's distinct tokens (slots valid for item b have stamp b + 1),
    # with each token's positions in the references (ref_bits) and in the hypothesis so far (hyp_bits).
    bits = 3
    while (1 << bits) < 2 * max_tokens:
        bits += 1
    n_slots = 1 << bits
    shift = np.uint64(64 - bits)
    keys = np.zeros(n_slots, dtype=np.int64)
    stamp = np.zeros(n_slots, dtype=np.int64)
    ref_bits = np.zeros((n_slots, max(max_words, 1)), dtype=np.uint64)
    hyp_bits = np.zeros((n_slots, max(h_words, 1)), dtype=np.uint64)
    slot_h = np.zeros(max(max_h, 1), dtype=np.int64)

    h0 = 0
    r0 = 0
    k0 = 0
    for b in range(n_items):
        n_h = h_lens[b]
        n_r = n_refs[b]
        words = 0
        for q in range(n_r):
            words += (r_lens[k0 + q] + 63) >> 6
        hw = (n_h + 63) >> 6
        for w in range(hw):
            hg1[w] = 0
            hg2[w] = 0
            hg3[w] = 0
        for w in range(words):
            rg1[w] = 0
            rg2[w] = 0
            rg3[w] = 0
        # Token table: reference tokens first (their position bits), then the hypothesis' slots.
        mark = b + 1
        rj = r0
        wq = 0
        for q in range(n_r + 1):
            n_tok = r_lens[k0 + q] if q < n_r else n_h
            for j in range(n_tok):
                tok = r_flat[rj + j] if q < n_r else h_flat[h0 + j]
                s = np.int64((np.uint64(tok) * np.uint64(0x9E3779B97F4A7C15)) >> shift)
                while stamp[s] == mark and keys[s] != tok:
                    s = (s + 1) & (n_slots - 1)
                if stamp[s] != mark:
                    stamp[s] = mark
                    keys[s] = tok
                    for w in range(words):
                        ref_bits[s, w] = 0
                    for w in range(hw):
                        hyp_bits[s, w] = 0
                if q < n_r:
                    ref_bits[s, wq + (j >> 6)] |= one << np.uint64(j & 63)
                else:
                    slot_h[j] = s
            if q < n_r:
                rj += n_tok
                wq += (n_tok + 63) >> 6
        m1 = 0
        m2 = 0
        m3 = 0
        m4 = 0
        for t in range(n_h):
            s = slot_h[t]
            hyp_bits[s, t >> 6] |= one << np.uint64(t & 63)
            # Occurrences so far of the n-grams ending at t, in the hypothesis itself (u <= t).
            s1, s2, s3, s4 = _next_row(hyp_bits[s], hg1, hg2, hg3, 0, (t >> 6) + 1)
            # Their largest count in one reference.
            x1 = 0
            x2 = 0
            x3 = 0
            x4 = 0
            wq = 0
            for q in range(n_r):
                nw = (r_lens[k0 + q] + 63) >> 6
                a1, a2, a3, a4 = _next_row(ref_bits[s], rg1, rg2, rg3, wq, wq + nw)
                x1 = max(x1, a1)
                x2 = max(x2, a2)
                x3 = max(x3, a3)
                x4 = max(x4, a4)
                wq += nw
            # The k-th occurrence (k from 1) is a clipped match iff k <= the reference count.
            if s1 <= x1 and x1 > 0:
                m1 += 1
            if s2 <= x2 and x2 > 0:
                m2 += 1
            if s3 <= x3 and x3 > 0:
                m3 += 1
            if s4 <= x4 and x4 > 0:
                m4 += 1

            # BLEU of the prefix of length hl = t + 1 against the closest reference length.
            hl = t + 1
            ref_len = r_lens[k0]
            best = abs(hl - ref_len)
            for q in range(1, n_r):
                n_rq = r_lens[k0 + q]
                d = abs(hl - n_rq)
                if d < best or (d == best and n_rq < ref_len):
                    best = d
                    ref_len = n_rq
            log_bp = 1.0 - ref_len / hl if hl < ref_len else 0.0
            if smooth == 0:  # plus1: log((m + 1) / (total + 1)) for each order, averaged
                lp = (log_int[m1 + 1] - log_int[hl + 1]) + (log_int[m2 + 1] - log_int[max(hl - 1, 0) + 1])
                lp += log_int[m3 + 1] - log_int[max(hl - 2, 0) + 1]
                lp += log_int[m4 + 1] - log_int[max(hl - 3, 0) + 1]
                out[h0 + t] = math.exp(log_bp + lp / 4.0)
                continue
            if m1 == 0:  # sacrebleu's early exit: no match at all
                out[h0 + t] = 0.0
                continue
            total = 0.0  # sum of log(precision / 100) over the effective orders
            eff = 0
            doublings = 0
            zero_score = False
            for n in range(4):
                c = m1 if n == 0 else (m2 if n == 1 else (m3 if n == 2 else m4))
                tot = hl - n if hl > n else 0
                if smooth == 3 and n > 0:  # add-k
                    c += 1
                    tot += 1
                if tot == 0:  # sacrebleu's break
                    break
                eff = n + 1
                if c == 0:
                    if smooth == 4:  # exp: 100 / (2^doublings * total)
                        doublings += 1
                        total += -doublings * log_2 - log_int[tot]
                    elif smooth == 2:  # floor: 100 * 0.1 / total
                        total += log_floor - log_int[tot]
                    else:  # none: log(0) floored to -1e10, the score is exactly 0
                        zero_score = True
                else:
                    total += log_int[c] - log_int[tot]
            out[h0 + t] = 0.0 if zero_score else math.exp(log_bp + total / eff)
        h0 += n_h
        for q in range(n_r):
            r0 += r_lens[k0 + q]
        k0 += n_r
    return 0


_KERNEL: Callable | None = None
_LOCK = threading.Lock()


def _compile(cache: bool) -> Callable:
    import numba

    return numba.njit(cache=cache, nogil=True)(_prefix_bleu_kernel)


def get_kernel() -> Callable:
    """The compiled kernel (compiled on the first call; numba's disk cache when it can be written)."""
    global _KERNEL
    if _KERNEL is None:
        with _LOCK:
            if _KERNEL is None:
                try:
                    kernel = _compile(cache=True)
                except (RuntimeError, OSError):  # numba: "cannot cache function ...: no locator available"
                    kernel = _compile(cache=False)
                _KERNEL = kernel
    return _KERNEL


def prefix_bleu_flat(
    h_flat: np.ndarray, h_lens: np.ndarray, r_flat: np.ndarray, r_lens: np.ndarray, n_refs: np.ndarray, smooth: str
) -> np.ndarray:
    """BLEU of every prefix of a packed batch (see ``envs.rewards._pack``), flat float64 [sum(h_lens)]."""
    out = np.empty(h_flat.shape[0], dtype=np.float64)
    args = (h_flat, h_lens, r_flat, r_lens, n_refs, SMOOTH_CODES[smooth], LOG_FLOOR, LOG_2, out)
    kernel = get_kernel()
    try:
        status = kernel(*args)
    except OSError:  # the disk cache failed while saving: compile in memory instead
        global _KERNEL
        _KERNEL = kernel = _compile(cache=False)
        status = kernel(*args)
    if status != 0:
        raise ValueError(
            f"token ids must be >= 0; found {int(min(h_flat.min(initial=0), r_flat.min(initial=0)))}"
        )
    return out
