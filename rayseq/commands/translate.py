"""``rayseq translate RUN_DIR``: translate tokenized sentences from stdin with a trained actor.

Reads one tokenized source sentence per line from stdin, decodes ``--batch-size`` lines at a
time with beam search (``--beam 1``: greedy) and writes one tokenized translation per input line
to stdout, flushing after every batch so it works inside a pipe. An empty input line gives an
empty output line. For interactive use pass ``--batch-size 1`` (a batch is decoded once full or
at end of input).

Decoding itself is ``rayseq.evaluation.decode`` (shared with ``rayseq eval`` and validation).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable
from typing import TextIO

from rayseq.actor_io import ACTOR_FILES, load_actor, resolve_actor
from rayseq.evaluation.decode import check_decode_args, translate_lines


def _batches(stream: Iterable[str], size: int) -> Iterable[list[str]]:
    """Lines of ``stream`` (terminators removed) in lists of at most ``size``."""
    batch: list[str] = []
    for line in stream:
        batch.append(line.rstrip("\r\n"))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _utf8(stream: TextIO) -> TextIO:
    """``stream`` switched to UTF-8 (tokenized corpora are UTF-8 whatever the locale)."""
    if hasattr(stream, "reconfigure"):
        stream.reconfigure(encoding="utf-8")
    return stream


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rayseq translate``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory holding actor_best.pt / actor_latest.pt")
    parser.add_argument("--beam", type=int, default=5, help="beam size; 1 = greedy (default 5)")
    parser.add_argument("--batch-size", type=int, default=50, help="lines decoded together (default 50)")
    parser.add_argument("--max-len", type=int, default=100, help="max decoder steps, <eos> included (default 100)")
    parser.add_argument("--length-penalty", type=float, default=0.0, help="GNMT alpha; 0 = none (default)")
    parser.add_argument("--which", choices=list(ACTOR_FILES), default="best", help="which actor file (default best)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")


def run(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Translate ``stdin`` line by line to ``stdout`` (defaults: the process's streams)."""
    check_decode_args(args.beam, args.batch_size, args.max_len, args.length_penalty)
    actor = load_actor(resolve_actor(args.run_dir, args.which), device=args.device)
    if stdin is None:
        stdin = _utf8(sys.stdin)
    if stdout is None:
        stdout = _utf8(sys.stdout)
    for batch in _batches(stdin, args.batch_size):
        out = translate_lines(actor, batch, args.beam, args.batch_size, args.max_len, args.length_penalty)
        stdout.write("".join(f"{line}\n" for line in out))
        stdout.flush()
    return 0
