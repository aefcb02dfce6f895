"""Batched decoding of id sequences with a trained actor (the library side of ``rayseq translate``
and ``rayseq eval``): sources sorted by length, beam search or greedy, original order restored."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from rayseq.actor_io import LoadedActor
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
