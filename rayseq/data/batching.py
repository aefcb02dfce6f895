"""Length-bucketed batching and padding, deterministic given (seed, epoch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rayseq.data.errors import DataError


def bucket_batches(
    lengths: Sequence[int] | np.ndarray,
    batch_size: int,
    *,
    seed: int,
    epoch: int = 0,
    shuffle: bool = True,
    max_tokens: int | None = None,
) -> list[np.ndarray]:
    """Split ``range(len(lengths))`` into batches of similar length.

    Indices are sorted by length (stable; with ``shuffle`` ties are broken by a
    permutation drawn from ``np.random.default_rng((seed, epoch))``), cut into
    consecutive batches of at most ``batch_size`` sentences and, when given, at
    most ``max_tokens`` padded tokens (``len(batch) * max length in batch``; a
    single sentence longer than ``max_tokens`` gets a batch of its own), and with
    ``shuffle`` the batch order is permuted by the same generator. Every index
    appears exactly once. Pass e.g. ``max(len(src), len(tgt))`` per pair as length.

    Returns a list of int64 index arrays, one per batch.
    """
    if batch_size < 1:
        raise DataError(f"batch_size={batch_size}: must be >= 1.")
    if max_tokens is not None and max_tokens < 1:
        raise DataError(f"max_tokens={max_tokens}: must be >= 1 or None.")
    if seed < 0 or epoch < 0:
        raise DataError(f"seed={seed}, epoch={epoch}: both must be >= 0.")
    lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
    n = len(lens)
    rng = np.random.default_rng((seed, epoch))
    order = rng.permutation(n) if shuffle else np.arange(n)
    order = order[np.argsort(lens[order], kind="stable")]

    if max_tokens is None:
        batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    else:
        sorted_lens = lens[order].tolist()  # ascending, so sorted_lens[pos] is the batch max
        batches, start = [], 0
        for pos in range(n):
            count = pos - start + 1
            if pos > start and (count > batch_size or count * sorted_lens[pos] > max_tokens):
                batches.append(order[start:pos])
                start = pos
        if start < n:
            batches.append(order[start:])

    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def pad_batch(
    seqs: Sequence[np.ndarray],
    pad: int = 0,
    bos: int | None = None,
    eos: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``seqs`` into one array, optionally wrapping each in bos/eos.

    Returns ``(tokens [B, T] int64, lengths [B] int64)``; lengths count bos/eos. Float
    sequences (image features) stay float32: ``[B, D]``.
    """
    if len(seqs) == 0:
        raise DataError("pad_batch got no sequences; a batch needs at least one.")
    extra = (bos is not None) + (eos is not None)
    lengths = np.array([len(s) + extra for s in seqs], dtype=np.int64)  # [B]
    dtype = np.float32 if np.issubdtype(np.asarray(seqs[0]).dtype, np.floating) else np.int64
    out = np.full((len(seqs), int(lengths.max())), pad, dtype=dtype)  # [B, T]
    off = 1 if bos is not None else 0
    if bos is not None:
        out[:, 0] = bos
    for b, s in enumerate(seqs):
        out[b, off : off + len(s)] = s
        if eos is not None:
            out[b, off + len(s)] = eos
    return out, lengths
