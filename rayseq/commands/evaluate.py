"""``rayseq eval RUN_DIR``: decode a test set with a trained actor and score it with BLEU.

Run directory convention (every algorithm's trainer writes it; plain files, no ray needed to
read them)::

    RUN_DIR/
      run.json         {"task": "multi30k", "data_dir": null or "PATH", "algo": "erac", ...}
      actor_best.pt    actor with the best validation BLEU so far   (rayseq.actor_io.save_actor)
      actor_latest.pt  actor at the latest checkpoint               (rayseq.actor_io.save_actor)

``run.json`` needs at least ``task`` (a name in ``rayseq.data.tasks.TASKS``); ``data_dir`` is the
data directory the run used (null: the shipped copy or ``$RAYSEQ_DATA_DIR``) and ``algo`` the
algorithm; other keys are kept as they are. The actor files are atomic single-file checkpoints
(weights, model config and both vocabularies, see ``rayseq.actor_io``), so evaluating never
depends on rebuilding a vocabulary the same way. ``--which best|latest`` picks the file.

What is measured, for a task split (``--split``) or for ``--src FILE --ref FILE [--ref FILE ...]``
(line-aligned, tokenized; several ``--ref`` = several references per sentence):

- ``bleu``: corpus BLEU-4 on target token ids as the paper reported it
  (``rayseq.evaluation.corpus_bleu_ids``: no smoothing, a reference ``<unk>`` never matches;
  ``--ref`` files are encoded with the run's target vocabulary);
- ``sacrebleu``: standard sacrebleu corpus BLEU (``tokenize="none"``) of the hypotheses as text
  (target tokens, ``<unk>`` spelled out) against the references' raw tokenized text, with its
  ``sacrebleu_signature``;
- ``decode_tokens_per_s``: generated tokens (``<eos>`` included) per second of decoding, and
  ``seconds``: decoding wall time.

Decoding is beam search (``--beam 1``: greedy), batched over sources sorted by length; the
hypotheses (``--hyp-out``) are written in the original order, one per line, atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from rayseq.actor_io import (
    ACTOR_FILES,
    RUN_JSON,
    load_actor,
    read_run_info,
    resolve_actor,
)
from rayseq.commands.translate import check_decode_args, translate_ids
from rayseq.data.atomic import atomic_write_lines
from rayseq.data.coco import CaptionTaskSpec
from rayseq.data.corpus import read_lines
from rayseq.data.errors import DataError
from rayseq.data.tasks import TASKS, load_task
from rayseq.evaluation import corpus_bleu_ids, ids_to_text, sacrebleu_corpus
from rayseq.models.base import UNK

PathLike = str | os.PathLike[str]


def _read_src_refs(src_file: PathLike, ref_files: list[PathLike]) -> tuple[list[list[str]], list[list[list[str]]]]:
    """Tokenized sources and, per sentence, its tokenized references; checks line counts."""
    src = [line.split() for line in read_lines(src_file)]
    refs: list[list[list[str]]] = [[] for _ in src]
    for ref_file in ref_files:
        lines = read_lines(ref_file)
        if len(lines) != len(src):
            raise DataError(
                f"reference file {os.fspath(ref_file)} has {len(lines)} lines but source file "
                f"{os.fspath(src_file)} has {len(src)}; line i of each reference must translate "
                f"line i of the source."
            )
        for sent_refs, line in zip(refs, lines):
            sent_refs.append(line.split())
    return src, refs


def _read_split(run_dir: PathLike, split: str, data_dir: PathLike | None) -> tuple[str, list[list[str]], list[list[list[str]]]]:
    """``(label, sources, references)`` of the run's task split, as tokenized text."""
    info = read_run_info(run_dir)
    spec = TASKS.get(info.task)
    if spec is None:
        raise DataError(
            f"{Path(run_dir) / RUN_JSON}: task {info.task!r} is not registered; known tasks: "
            f"{', '.join(sorted(TASKS))}."
        )
    if split not in spec.split_names:
        raise DataError(f"--split {split!r}: task {spec.name!r} has splits {', '.join(spec.split_names)}.")
    corpus = load_task(info.task, data_dir if data_dir is not None else info.data_dir).split(split)
    return f"{spec.name}/{split}", list(corpus.src_text), [[t] for t in corpus.tgt_text]


def evaluate(
    run_dir: PathLike,
    split: str = "test",
    beam: int = 5,
    max_len: int = 100,
    batch_size: int = 50,
    src_file: PathLike | None = None,
    ref_files: list[PathLike] | None = None,
    hyp_out: PathLike | None = None,
    which: str = "best",
    length_penalty: float = 0.0,
    progress: bool = True,
    data_dir: PathLike | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Decode a split of the run's task (or ``src_file``) and score it; see the module docstring.

    Returns ``{"split", "sentences", "bleu", "sacrebleu", "sacrebleu_signature",
    "decode_tokens_per_s", "beam", "seconds", ...}`` (``split`` is None with ``src_file``;
    ``bleu_precisions``, ``bleu_bp``, ``references``, ``actor``, ``hyp_out`` are added).
    ``data_dir`` overrides the run's data directory (files moved since training).
    """
    ref_files = list(ref_files or [])
    if src_file is not None and not ref_files:
        raise DataError(f"--src {os.fspath(src_file)} needs at least one --ref FILE (the references to score against).")
    if ref_files and src_file is None:
        raise DataError("--ref needs --src FILE (the source sentences the references translate).")
    check_decode_args(beam, batch_size, max_len, length_penalty)
    if hyp_out is not None and not Path(hyp_out).parent.is_dir():
        raise DataError(f"--hyp-out {os.fspath(hyp_out)}: folder {Path(hyp_out).parent} does not exist; create it first.")
    if src_file is None and isinstance(TASKS.get(read_run_info(run_dir).task), CaptionTaskSpec):
        from rayseq.evaluation_coco import (
            evaluate_captions,  # BLEU-1..4 + CIDEr-D, multi-reference
        )

        return evaluate_captions(run_dir, split, beam, max_len, batch_size, hyp_out, which, length_penalty, progress, data_dir, device)
    actor_path = resolve_actor(run_dir, which)

    if src_file is not None:
        label, src_text, ref_text = None, *_read_src_refs(src_file, ref_files)
    else:
        label, src_text, ref_text = _read_split(run_dir, split, data_dir)

    actor = load_actor(actor_path, device=device)
    src_ids = [actor.src_vocab.encode(s) for s in src_text]
    start = time.perf_counter()
    hyps = translate_ids(
        actor.model, src_ids, beam, batch_size, max_len, length_penalty, progress=progress,
        desc=f"eval {label or os.path.basename(os.fspath(src_file))}",
    )
    seconds = time.perf_counter() - start

    itos = actor.tgt_vocab.itos
    hyp_text = [ids_to_text(h, itos) for h in hyps]
    ref_ids = [[actor.tgt_vocab.encode(r).tolist() for r in refs] for refs in ref_text]
    paper = corpus_bleu_ids(hyps, ref_ids, unk=UNK)
    sacre = sacrebleu_corpus(hyp_text, [[" ".join(r) for r in refs] for refs in ref_text])
    if hyp_out is not None:
        atomic_write_lines(hyp_out, hyp_text)

    generated = sum(len(h) + 1 for h in hyps)  # + <eos>
    return {
        "split": label,
        "sentences": len(hyps),
        "bleu": paper["bleu"],
        "sacrebleu": sacre["bleu"],
        "sacrebleu_signature": sacre["signature"],
        "decode_tokens_per_s": generated / seconds if seconds > 0 else 0.0,
        "beam": beam,
        "seconds": seconds,
        "bleu_precisions": paper["precisions"],
        "bleu_bp": paper["bp"],
        "references": max((len(r) for r in ref_text), default=0),
        "max_len": max_len,
        "length_penalty": length_penalty,
        "actor": os.fspath(actor_path),
        "src_file": None if src_file is None else os.fspath(src_file),
        "ref_files": [os.fspath(r) for r in ref_files],
        "hyp_out": None if hyp_out is None else os.fspath(hyp_out),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``rayseq eval``."""
    parser.add_argument("run_dir", metavar="RUN_DIR", help="run directory (run.json, actor_best.pt, actor_latest.pt)")
    parser.add_argument("--split", default="test", help="split of the run's task to decode (default test)")
    parser.add_argument("--beam", type=int, default=5, help="beam size; 1 = greedy (default 5)")
    parser.add_argument("--max-len", type=int, default=100, help="max decoder steps, <eos> included (default 100)")
    parser.add_argument("--batch-size", type=int, default=50, help="sentences decoded together (default 50)")
    parser.add_argument("--length-penalty", type=float, default=0.0, help="GNMT alpha; 0 = none, as in the paper")
    parser.add_argument("--src", metavar="FILE", help="tokenized source file to decode instead of --split")
    parser.add_argument(
        "--ref", metavar="FILE", action="append", default=[],
        help="tokenized reference file, line-aligned with --src; repeat for several references",
    )
    parser.add_argument("--hyp-out", metavar="FILE", help="write the hypotheses here, one per line")
    parser.add_argument("--which", choices=list(ACTOR_FILES), default="best", help="which actor file (default best)")
    parser.add_argument("--data-dir", help="data directory, overriding the one in run.json")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--json", action="store_true", help="print one JSON line")


def run(args: argparse.Namespace) -> int:
    """Run ``rayseq eval``; prints one JSON line with ``--json``, else a short summary."""
    result = evaluate(
        args.run_dir,
        split=args.split,
        beam=args.beam,
        max_len=args.max_len,
        batch_size=args.batch_size,
        src_file=args.src,
        ref_files=args.ref,
        hyp_out=args.hyp_out,
        which=args.which,
        length_penalty=args.length_penalty,
        progress=not args.no_progress,
        data_dir=args.data_dir,
        device=args.device,
    )
    if args.json:
        print(json.dumps(result))
        return 0
    what = result["split"] or f"{result['src_file']} ({result['references']} reference(s))"
    print(f"{what}: {result['sentences']} sentences, beam {result['beam']}, actor {result['actor']}")
    print(f"  BLEU (token ids, paper) {result['bleu']:.2f}")
    print(f"  sacreBLEU               {result['sacrebleu']:.2f}  {result['sacrebleu_signature']}")
    if "cider_d" in result:  # captioning
        print(f"  CIDEr-D                 {result['cider_d']:.3f}  (image features: {result['features']})")
    print(f"  decoding {result['seconds']:.1f} s, {result['decode_tokens_per_s']:.0f} tokens/s")
    if result["hyp_out"]:
        print(f"  hypotheses -> {result['hyp_out']}")
    return 0
