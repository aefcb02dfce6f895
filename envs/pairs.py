"""The (source, reference) pairs an environment draws its episodes from.

The environment is task-agnostic: a source is a 1-D array of token ids (translation, the toy
task) or of floats (an image feature for captioning); a reference is token ids without bos/eos.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from rayseq.data.errors import DataError


@dataclass(frozen=True)
class PairData:
    """Episodes' data: sources, references and the vocabulary sizes they live in."""

    src: Sequence[np.ndarray]
    """Sources: int64 token ids ([S_i]) or float32 features ([D], the same D for all)."""
    ref: Sequence[np.ndarray]
    """References: int64 target token ids ([T_i], T_i >= 1, no bos/eos)."""
    src_vocab_size: int
    """Source vocabulary size (0 when sources are features)."""
    tgt_vocab_size: int
    """Target vocabulary size V: the action space is Discrete(V)."""
    name: str = ""
    """A label for logs, e.g. ``multi30k/train``."""

    def __post_init__(self) -> None:
        if len(self.src) != len(self.ref):
            raise DataError(f"{self.name or 'pairs'}: {len(self.src)} sources but {len(self.ref)} references")
        if len(self.src) == 0:
            raise DataError(f"{self.name or 'pairs'}: no pairs to draw episodes from")
        empty = [i for i, r in enumerate(self.ref) if len(r) == 0]
        if empty:
            raise DataError(f"{self.name or 'pairs'}: pair {empty[0]} has an empty reference")

    def __len__(self) -> int:
        return len(self.src)

    @property
    def features(self) -> bool:
        """Whether sources are float feature vectors rather than token ids."""
        return self.src_vocab_size == 0

    @property
    def max_src_len(self) -> int:
        return max(len(s) for s in self.src)

    @property
    def max_ref_len(self) -> int:
        return max(len(r) for r in self.ref)


def translation_pairs(
    task: str = "multi30k",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    src_file: str | os.PathLike | None = None,
    tgt_file: str | os.PathLike | None = None,
    max_pairs: int | None = None,
) -> PairData:
    """A registered task's split, or explicit tokenized files encoded with that task's vocabularies."""
    from rayseq.data.corpus import load_parallel
    from rayseq.data.tasks import load_task

    t = load_task(task, data_dir)
    if (src_file is None) != (tgt_file is None):
        raise DataError("give both src_file and tgt_file (tokenized, line-aligned), or neither")
    if src_file is not None:
        corpus = load_parallel(src_file, tgt_file, t.src_vocab, t.tgt_vocab, name=f"{src_file}|{tgt_file}")
    else:
        corpus = t.split(split)
    n = len(corpus) if max_pairs is None else min(max_pairs, len(corpus))
    return PairData(
        src=corpus.src[:n],
        ref=corpus.tgt[:n],
        src_vocab_size=len(t.src_vocab),
        tgt_vocab_size=len(t.tgt_vocab),
        name=corpus.name,
    )


def caption_pairs(
    task: str = "coco",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    max_pairs: int | None = None,
) -> PairData:
    """A captioning task's split: image features (float32 ``[D]``) as sources, captions as references."""
    from rayseq.data.tasks import load_task

    t = load_task(task, data_dir)
    if len(t.src_vocab) != 0:
        raise DataError(f"task {task!r} is not a captioning task (its sources are tokens); use rayseq/Translation-v0.")
    corpus = t.split(split)
    n = len(corpus) if max_pairs is None else min(max_pairs, len(corpus))
    return PairData(src=corpus.src[:n], ref=corpus.tgt[:n], src_vocab_size=0, tgt_vocab_size=len(t.tgt_vocab), name=corpus.name)


def toy_pairs(
    num_pairs: int = 512, num_symbols: int = 6, min_len: int = 2, max_len: int = 5, seed: int = 0
) -> PairData:
    """A synthetic task needing no data: reverse a random string of ``num_symbols`` symbols.

    Token ids 0-3 are the specials; symbols are 4 .. 3 + num_symbols in source and target alike.
    """
    if not 1 <= min_len <= max_len:
        raise ValueError(f"toy task needs 1 <= min_len <= max_len; got {min_len}, {max_len}")
    rng = np.random.default_rng(seed)
    lens = rng.integers(min_len, max_len + 1, size=num_pairs)
    src = [rng.integers(4, 4 + num_symbols, size=int(n)).astype(np.int64) for n in lens]
    ref = [s[::-1].copy() for s in src]
    vocab = 4 + num_symbols
    return PairData(src=src, ref=ref, src_vocab_size=vocab, tgt_vocab_size=vocab, name=f"toy-reverse/{seed}")
