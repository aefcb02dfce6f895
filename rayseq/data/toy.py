"""The ``toy`` translation task: reverse a string of symbols (ships with the package).

Small enough that every algorithm learns it in seconds, so smoke tests exercise the full
training pipeline. ``python -m rayseq.data.toy`` regenerates the shipped files; a test checks
that they equal what ``toy_corpus`` generates.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

SYMBOLS = tuple(f"s{i}" for i in range(8))
SPLIT_SIZES = {"train": 3000, "valid": 200, "test": 200}


def toy_corpus(split: str, seed: int = 0, min_len: int = 2, max_len: int = 8) -> tuple[list[str], list[str]]:
    """(source lines, target lines) of ``split``: targets are the sources reversed."""
    rng = np.random.default_rng((seed, list(SPLIT_SIZES).index(split)))
    src, tgt = [], []
    for _ in range(SPLIT_SIZES[split]):
        words = [SYMBOLS[i] for i in rng.integers(0, len(SYMBOLS), size=int(rng.integers(min_len, max_len + 1)))]
        src.append(" ".join(words))
        tgt.append(" ".join(reversed(words)))
    return src, tgt


def write_toy_corpus(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_SIZES:
        src, tgt = toy_corpus(split)
        (out / f"{split}.src").write_text("\n".join(src) + "\n", encoding="utf-8")
        (out / f"{split}.tgt").write_text("\n".join(tgt) + "\n", encoding="utf-8")


if __name__ == "__main__":
    write_toy_corpus(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "corpora" / "toy")
