"""Scoring actors: a run directory's actor on a split or on files (``rayseq eval``), and the
validation BLEU the training drivers select actors by.

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

import os
import time
from pathlib import Path
from collections.abc import Sequence
from typing import Any, NamedTuple

from rayseq.actor_io import RUN_JSON, load_actor, read_run_info, resolve_actor
from rayseq.data.atomic import atomic_write_lines
from rayseq.data.coco import CaptionTaskSpec
from rayseq.data.corpus import read_lines
from rayseq.data.errors import DataError
from rayseq.data.tasks import TASKS, Task, load_task
from rayseq.evaluation.bleu import corpus_bleu_ids, ids_to_text, sacrebleu_corpus
from rayseq.evaluation.coco import caption_scores, coco_bleu
from rayseq.evaluation.decode import check_decode_args, translate_ids
from rayseq.metrics import DECODE_AT_CAP_SHARE, DECODE_LEN_RATIO, DECODE_LOOP_SHARE
from rayseq.models.base import UNK
from rayseq.models.seq2seq import Seq2Seq

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


def evaluate_captions(
    run_dir: PathLike,
    split: str = "test",
    beam: int = 5,
    max_len: int = 100,
    batch_size: int = 50,
    hyp_out: PathLike | None = None,
    which: str = "best",
    length_penalty: float = 0.0,
    progress: bool = True,
    data_dir: PathLike | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """``rayseq eval`` for a captioning run: caption every image of ``split`` and score it.

    Returns the keys of :func:`evaluate` (``bleu`` is coco-caption's
    BLEU-4 in percent, ``sacrebleu`` the multi-reference sacreBLEU of the same text) plus
    ``bleu_1``..``bleu_4``, ``cider_d`` and ``features`` (``surrogate`` or ``resnet101``: what the
    image features were).
    """
    check_decode_args(beam, batch_size, max_len, length_penalty)
    if hyp_out is not None and not Path(hyp_out).parent.is_dir():
        raise DataError(f"--hyp-out {os.fspath(hyp_out)}: folder {Path(hyp_out).parent} does not exist; create it first.")
    info = read_run_info(run_dir)
    spec = TASKS[info.task]
    if split not in spec.split_names:
        raise DataError(f"--split {split!r}: task {spec.name!r} has splits {', '.join(spec.split_names)}.")
    actor_path = resolve_actor(run_dir, which)
    task = load_task(info.task, data_dir if data_dir is not None else info.data_dir)
    corpus = task.split(split)
    actor = load_actor(actor_path, device=device)
    if actor.model.cfg.src_feature_dim != task.features.dim:
        raise DataError(
            f"{task.features.path}: {task.features.dim}-d features but {actor_path} reads "
            f"{actor.model.cfg.src_feature_dim}-d ones; evaluate with the features it was trained on."
        )
    start = time.perf_counter()
    hyps = translate_ids(actor.model, corpus.src, beam, batch_size, max_len, length_penalty, progress=progress,
                         desc=f"eval {spec.name}/{split}")
    seconds = time.perf_counter() - start
    itos = actor.tgt_vocab.itos
    hyp_tokens = [[itos[t] for t in h] for h in hyps]
    scores = caption_scores(hyp_tokens, corpus.refs)
    sacre = sacrebleu_corpus([" ".join(h) for h in hyp_tokens], [[" ".join(r) for r in refs] for refs in corpus.refs])
    if hyp_out is not None:
        atomic_write_lines(hyp_out, [" ".join(h) for h in hyp_tokens])
    generated = sum(len(h) + 1 for h in hyps)
    return {
        "split": f"{spec.name}/{split}",
        "sentences": len(hyps),
        "bleu": scores["bleu_4"],
        **scores,
        "features": corpus.features_kind,
        "sacrebleu": sacre["bleu"],
        "sacrebleu_signature": sacre["signature"],
        "decode_tokens_per_s": generated / seconds if seconds > 0 else 0.0,
        "beam": beam,
        "seconds": seconds,
        "references": max(len(r) for r in corpus.refs),
        "max_len": max_len,
        "length_penalty": length_penalty,
        "actor": os.fspath(actor_path),
        "src_file": None,
        "ref_files": [],
        "hyp_out": None if hyp_out is None else os.fspath(hyp_out),
    }


class Validation(NamedTuple):
    """One validation of an actor: BLEU and how its decoded outputs look."""

    bleu: float
    stats: dict[str, float]
    """``decode/len_ratio``, ``decode/loop_share``, ``decode/at_cap_share`` (:func:`decode_stats`)."""


def repeats_ngram(tokens: Sequence[int], n: int = 3) -> bool:
    """Whether some n-gram occurs more than once in ``tokens`` (a decoding loop's signature)."""
    seen: set[tuple[int, ...]] = set()
    for i in range(len(tokens) - n + 1):
        gram = tuple(tokens[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def decode_stats(hyps: Sequence[Sequence[int]], ref_lens: Sequence[int], max_len: int) -> dict[str, float]:
    """How decoded outputs look against their references: total length ratio (hypothesis tokens /
    reference tokens), the share with a repeated 3-gram (loops) and the share that ran to the
    decoding cap (``max_len`` steps with ``<eos>``, i.e. ``max_len − 1`` tokens) without stopping."""
    n = max(len(hyps), 1)
    return {
        DECODE_LEN_RATIO: sum(len(h) for h in hyps) / max(sum(ref_lens), 1),
        DECODE_LOOP_SHARE: sum(repeats_ngram(h) for h in hyps) / n,
        DECODE_AT_CAP_SHARE: sum(len(h) >= max_len - 1 for h in hyps) / n,
    }


def validate_actor(model: Seq2Seq, task: Task, split: str = "valid", max_sentences: int | None = None,
                   beam: int = 1, max_len: int = 100, progress: bool = False) -> Validation:
    """Corpus BLEU (paper style, token ids) of ``model`` on ``split`` (its first ``max_sentences``
    if set; for captioning, coco-caption's multi-reference BLEU-4) and :func:`decode_stats`."""
    corpus = task.split(split)
    n = len(corpus) if max_sentences is None else min(max_sentences, len(corpus))
    model.eval()
    hyps = translate_ids(model, corpus.src[:n], beam=beam, max_len=max_len, progress=progress, desc=f"{split} BLEU")
    if hasattr(corpus, "refs"):  # captioning: multi-reference BLEU-4 as coco-caption computes it
        itos = task.tgt_vocab.itos
        bleu = float(coco_bleu([[itos[t] for t in h] for h in hyps], corpus.refs[:n])["bleu_4"])
        ref_lens = [min(len(r) for r in refs) for refs in corpus.refs[:n]]
    else:
        bleu = float(corpus_bleu_ids(hyps, [[r] for r in corpus.tgt[:n]])["bleu"])
        ref_lens = [len(r) for r in corpus.tgt[:n]]
    return Validation(bleu, decode_stats(hyps, ref_lens, max_len))


def validation_bleu(model: Seq2Seq, task: Task, split: str = "valid", max_sentences: int | None = None,
                    beam: int = 1, max_len: int = 100, progress: bool = False) -> float:
    """The BLEU of :func:`validate_actor`."""
    return validate_actor(model, task, split, max_sentences, beam, max_len, progress).bleu
