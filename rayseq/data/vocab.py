"""Token <-> id vocabulary with fixed specials ``<pad>=0 <unk>=1 <bos>=2 <eos>=3``.

Saved as plain UTF-8 text, one token per line, specials first, so a vocabulary
file can be read, diffed and checked by eye.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from itertools import chain

import numpy as np

from rayseq.data.atomic import atomic_write_lines
from rayseq.data.corpus import read_lines
from rayseq.data.errors import DataError, where

PAD, UNK, BOS, EOS = 0, 1, 2, 3
SPECIALS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>")


class Vocab:
    """An ordered token list ``itos`` (index = id) and its inverse ``stoi``."""

    def __init__(self, itos: Sequence[str]) -> None:
        if tuple(itos[: len(SPECIALS)]) != SPECIALS:
            raise DataError(f"Vocab must start with the specials {SPECIALS}, got {tuple(itos[:4])}.")
        self.itos: list[str] = list(itos)
        self.stoi: dict[str, int] = {tok: i for i, tok in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            dup = next(t for t, c in Counter(self.itos).items() if c > 1)
            raise DataError(f"Vocab has the token {dup!r} more than once.")

    @classmethod
    def build(
        cls,
        token_lists: Iterable[Sequence[str]],
        min_freq: int = 1,
        max_size: int | None = None,
    ) -> Vocab:
        """Vocabulary of tokens seen at least ``min_freq`` times.

        Order is deterministic: frequency descending, ties by token ascending.
        ``max_size`` caps the total size, the 4 specials included. Tokens that
        spell a special (e.g. a literal ``<unk>`` in the text) map to it.
        """
        if min_freq < 1:
            raise DataError(f"min_freq={min_freq}: must be >= 1.")
        if max_size is not None and max_size < len(SPECIALS):
            raise DataError(f"max_size={max_size}: must be >= {len(SPECIALS)} (the specials) or None.")
        counts: Counter[str] = Counter(chain.from_iterable(_token_lists(token_lists)))
        for s in SPECIALS:
            counts.pop(s, None)
        kept = sorted((t for t, c in counts.items() if c >= min_freq), key=lambda t: (-counts[t], t))
        if max_size is not None:
            kept = kept[: max_size - len(SPECIALS)]
        return cls([*SPECIALS, *kept])

    def __len__(self) -> int:
        return len(self.itos)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and self.itos == other.itos

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)})"

    def encode(self, tokens: Sequence[str]) -> np.ndarray:
        """Token ids [len(tokens)] int64; unknown tokens -> UNK; no bos/eos added."""
        get = self.stoi.get
        return np.array([get(t, UNK) for t in tokens], dtype=np.int64)

    def decode(self, ids: Iterable[int] | np.ndarray, strip_specials: bool = True) -> list[str]:
        """Tokens of ``ids``. With ``strip_specials``: stop at the first EOS, drop PAD/BOS."""
        out: list[str] = []
        for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
            if not 0 <= i < len(self.itos):
                raise DataError(f"decode: id {i} is outside the vocabulary (size {len(self)}).")
            if strip_specials:
                if i == EOS:
                    break
                if i in (PAD, BOS):
                    continue
            out.append(self.itos[i])
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one token per line (UTF-8), atomically: a temp file then ``os.replace``."""
        atomic_write_lines(path, self.itos)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Vocab:
        """Read a file written by :meth:`save`; checks specials, duplicates, UTF-8."""
        itos = read_lines(path)
        for i, s in enumerate(SPECIALS):
            if i >= len(itos) or itos[i] != s:
                got = repr(itos[i]) if i < len(itos) else "end of file"
                raise DataError(
                    f"{where(path, i + 1)}: expected the special {s!r}, got {got}. A vocab "
                    f"file starts with {' '.join(SPECIALS)}, one per line; rebuild it."
                )
        first: dict[str, int] = {}
        for i, tok in enumerate(itos):
            if tok.split() != [tok]:
                raise DataError(
                    f"{where(path, i + 1)}: token {tok!r} contains whitespace; one token per line."
                )
            if tok in first:
                raise DataError(
                    f"{where(path, i + 1)}: token {tok!r} already on line {first[tok] + 1}; "
                    f"remove the duplicate or rebuild the vocab."
                )
            first[tok] = i
        return cls(itos)


def _token_lists(token_lists: Iterable[Sequence[str]]) -> Iterator[Sequence[str]]:
    """``token_lists``, rejecting a bare string (a line that was not split into tokens)."""
    for toks in token_lists:
        if isinstance(toks, str):
            raise DataError(f"Vocab.build expects token lists, got the string {toks[:40]!r}; split it.")
        yield toks
