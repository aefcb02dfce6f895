"""``rayseq translate RUN_DIR``: translate tokenized sentences from stdin with a trained actor.

Reads one tokenized source sentence per line from stdin, decodes ``--batch-size`` lines at a
time with beam search (``--beam 1``: greedy) and writes one tokenized translation per input line
to stdout, flushing after every batch so it works inside a pipe. An empty input line gives an
empty output line. For interactive use pass ``--batch-size 1`` (a batch is decoded once full or
at end of input).

:func:`translate_ids` (length-sorted batched decoding of id sequences, original order restored)
is shared with ``rayseq eval``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from typing import TextIO

import numpy as np
import torch
from tqdm import tqdm

from rayseq.actor_io import ACTOR_FILES, LoadedActor, load_actor, resolve_actor
from rayseq.data.batching import pad_batch
from rayseq.data.errors import DataError
from rayseq.decoding import beam_search, greedy
from rayseq.models.seq2seq import Seq2Seq


def check_decode_args(beam: int, batch_size: int, max_len: int, length_penalty: float = 0.0) -> None:
    """DataError naming the option when a decoding setting is out of range."""
    for flag, value in (("--beam", beam), ("--batch-size", batch_size), ("--max-len", max_len)):
        if not isinstance(value, int) or value < 1:
            raise DataError(f"{flag} {value!r}: must be an integer >= 1.")
    if length_penalty < 0:
        raise DataError(f"--length-penalty {length_penalty}: must be >= 0 (0 = none, the paper's setting).")


def translate_ids(
    model: Seq2Seq,
    src_ids: Sequence[np.ndarray],
    beam: int = 5,
    batch_size: int = 50,
    max_len: int = 100,
    length_penalty: float = 0.0,
    progress: bool = False,
    desc: str = "decode",
) -> list[list[int]]:
    """Decode every source id sequence; returns one list of target ids per source, in input order.

    Sources are sorted by length (longest first) and decoded ``batch_size`` at a time with
    :func:`rayseq.decoding.beam_search` (``beam == 1``: :func:`rayseq.decoding.greedy`), so
    padding is minimal. Hypotheses exclude ``<bos>``/``<eos>``. An empty source gets an empty
    hypothesis without being decoded. The model is used in whatever mode it is in (call
    ``model.eval()`` first); tensors go to the model's device.
    """
    check_decode_args(beam, batch_size, max_len, length_penalty)
    device = next(model.parameters()).device
    lengths = np.array([len(s) for s in src_ids], dtype=np.int64)
    order = [int(i) for i in np.argsort(-lengths, kind="stable") if lengths[i] > 0]
    hyps: list[list[int]] = [[] for _ in src_ids]
    bar = tqdm(total=len(src_ids), desc=desc, unit="sent", file=sys.stderr, disable=not progress)
    bar.update(len(src_ids) - len(order))  # empty sources: nothing to decode
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        tokens, lens = pad_batch([src_ids[i] for i in idx])  # [B, S], [B]
        src = torch.from_numpy(tokens).to(device)
        src_len = torch.from_numpy(lens).to(device)
        if beam == 1:
            out, out_len = greedy(model, src, src_len, max_len)
        else:
            out, out_len = beam_search(model, src, src_len, beam, max_len, length_penalty)[:2]
        out, out_len = out.cpu().tolist(), out_len.cpu().tolist()  # [B, L], [B]
        for row, i in enumerate(idx):
            hyps[i] = out[row][: out_len[row]]
        bar.update(len(idx))
    bar.close()
    return hyps


def translate_lines(
    loaded_actor: LoadedActor,
    lines: Sequence[str],
    beam: int = 5,
    batch_size: int = 50,
    max_len: int = 100,
    length_penalty: float = 0.0,
) -> list[str]:
    """Translate tokenized source lines; one output line (tokens joined by spaces) per input line.

    Tokens are split on whitespace and mapped with the actor's source vocabulary (unknown ->
    ``<unk>``); an empty or blank line gives ``""``.
    """
    src_ids = [loaded_actor.src_vocab.encode(line.split()) for line in lines]
    hyps = translate_ids(loaded_actor.model, src_ids, beam, batch_size, max_len, length_penalty)
    itos = loaded_actor.tgt_vocab.itos
    return [" ".join(itos[t] for t in hyp) for hyp in hyps]


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
