"""Reading tokenized parallel corpora (one sentence per line, plain or ``.gz``).

Files are expected to be tokenized already (Moses-style, tokens separated by
spaces), so tokenization here is ``str.split()``. Lines are split on ``\\n`` only
(a trailing ``\\r`` is dropped), so reported line numbers match ``wc -l``/editors.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rayseq.data.errors import DataError, where

if TYPE_CHECKING:
    from rayseq.data.vocab import Vocab

PathLike = str | os.PathLike[str]


def _read_bytes(path: PathLike) -> bytes:
    """Raw (decompressed when the name ends in ``.gz``) bytes of ``path``."""
    p = Path(path)
    try:
        if p.suffix == ".gz":
            with gzip.open(p, "rb") as f:
                return f.read()
        return p.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"{p}: file not found. Check the path, or pass the directory that holds "
            f"the corpus with --data-dir (data_dir=...)."
        ) from None
    except IsADirectoryError:
        raise DataError(f"{p}: is a directory, expected a text file (plain or .gz).") from None
    except PermissionError:
        raise DataError(f"{p}: permission denied; make the file readable.") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(
            f"{p}: could not be read as gzip ({e}). The file is damaged or not gzip: "
            f"re-download or recreate it (or drop the .gz suffix if it is plain text)."
        ) from None


def decode_utf8(data: bytes, location: PathLike | str, hint: str) -> str:
    """``data`` as UTF-8 text; DataError naming ``location:line``, the bad byte, and ``hint``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{where(location, line)}: not valid UTF-8 (byte {data[e.start:e.start + 1]!r} at offset {e.start}). {hint}"
        ) from None


def read_lines(path: PathLike) -> list[str]:
    """The lines of a UTF-8 text file (plain or ``.gz``), without line terminators.

    Raises DataError for a missing/unreadable file, bytes that are not UTF-8
    (naming the line), and empty or whitespace-only lines (naming the line).
    A UTF-8 byte-order mark at the start of the file is ignored.
    """
    data = _read_bytes(path)
    text = decode_utf8(data, path, "Re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`.")
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the terminator of the last line, not an extra line
    lines = [ln.removesuffix("\r") for ln in lines]
    for i, ln in enumerate(lines):
        if not ln or ln.isspace():
            raise DataError(
                f"{where(path, i + 1)}: empty line. Every line must hold one sentence; "
                f"remove it (from both sides of a parallel corpus, to keep them aligned)."
            )
    return lines


def read_parallel_text(
    src_path: PathLike, tgt_path: PathLike
) -> tuple[list[list[str]], list[list[str]]]:
    """Whitespace-tokenized, line-aligned (source, target) sentences of two files."""
    src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"parallel files differ in length: {os.fspath(src_path)} has {len(src_lines)} "
            f"lines but {os.fspath(tgt_path)} has {len(tgt_lines)}. Line i of one must "
            f"translate line i of the other; rebuild the pair from the same source."
        )
    if not src_lines:
        raise DataError(f"{os.fspath(src_path)} and {os.fspath(tgt_path)} are empty (no sentences).")
    return [ln.split() for ln in src_lines], [ln.split() for ln in tgt_lines]


@dataclass
class ParallelCorpus:
    """Sentence pairs as int64 token ids (no bos/eos) plus their tokenized text."""

    src: list[np.ndarray]
    """Source token ids, one [S_i] int64 array per pair."""
    tgt: list[np.ndarray]
    """Target token ids, one [T_i] int64 array per pair (no bos/eos)."""
    src_text: list[list[str]]
    """Source tokens as read (before <unk> mapping)."""
    tgt_text: list[list[str]]
    """Target tokens as read; references for evaluation on raw text."""
    name: str = ""
    """A label for logs, e.g. ``multi30k/valid``."""

    def __post_init__(self) -> None:
        n = {len(self.src), len(self.tgt), len(self.src_text), len(self.tgt_text)}
        if len(n) != 1:
            raise DataError(f"ParallelCorpus {self.name!r}: src/tgt/src_text/tgt_text differ in length.")

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``(src_ids, tgt_ids)`` of pair ``i``."""
        return self.src[i], self.tgt[i]


def encode_parallel(
    src_text: Sequence[list[str]],
    tgt_text: Sequence[list[str]],
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    max_len: int | None = None,
    name: str = "",
) -> ParallelCorpus:
    """Encode tokenized pairs; with ``max_len``, drop pairs with a side longer than it."""
    if max_len is not None and max_len < 1:
        raise DataError(f"max_len={max_len} for {name or 'corpus'}: must be >= 1 or None.")
    keep = [
        i
        for i, (s, t) in enumerate(zip(src_text, tgt_text, strict=True))
        if max_len is None or (len(s) <= max_len and len(t) <= max_len)
    ]
    src = [src_text[i] for i in keep]
    tgt = [tgt_text[i] for i in keep]
    return ParallelCorpus(
        src=[src_vocab.encode(s) for s in src],
        tgt=[tgt_vocab.encode(t) for t in tgt],
        src_text=src,
        tgt_text=tgt,
        name=name,
    )


def load_parallel(
    src_path: PathLike,
    tgt_path: PathLike,
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    max_len: int | None = None,
    name: str = "",
) -> ParallelCorpus:
    """Read, tokenize and encode a line-aligned pair of files.

    ``max_len`` drops pairs where either side has more than ``max_len`` tokens.
    """
    src_text, tgt_text = read_parallel_text(src_path, tgt_path)
    return encode_parallel(src_text, tgt_text, src_vocab, tgt_vocab, max_len, name)
