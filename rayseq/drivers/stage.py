"""The one small API every training driver is written with.

A driver (``rayseq.drivers.supervised``, ``vaml``, ``actor_critic``, ``swapin``) is a loop of
stages; everything around the loop is here, written once:

* :func:`open_run` — the run directory and ``run.json``, the task, the finished stages
  (``stages.json``), an optional start stage (the MLE actor RL starts from), seeds, Ray, the
  RLlib algorithm, the state restored from the checkpoint, the metrics writer; and the teardown.
* :class:`Run` — what an open run offers the loop: the actor on the driver, its validation BLEU,
  :meth:`Run.keep` (best/latest actor files + the validation log line + checkpoint + curve),
  :meth:`Run.log_records` (finiteness check + logging of the learner's records),
  :meth:`Run.checkpoint`, and :meth:`Run.finish` (the best actor on the test split, results.json).
* :func:`collapsed` and :func:`check_finite` — the two stopping rules, pure.

No ``rayseq.commands`` import: the CLI sits on top of this, not beside it.
"""
from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayseq.actor_io import save_actor
from rayseq.config import RunConfig, field_defaults, to_dict
from rayseq.data.tasks import Task, load_task
from rayseq.errors import TrainingError
from rayseq.evaluation.score import Validation, evaluate, validate_actor
from rayseq.metrics import BLEU_TEST, BLEU_VALID, MetricsWriter, plot_learning_curve
from rayseq.models.seq2seq import Seq2Seq
from rayseq.run_dir import (
    ACTOR_FILES,
    CHECKPOINT_DIR,
    prepare_run_dir,
    read_stages,
    restore_checkpoint,
    save_checkpoint,
    write_results,
    write_stages,
)

StartStage = Callable[[RunConfig, Path, Task, dict[str, Any], bool, "str | None"], dict[str, Any]]
"""``(cfg, run_dir, task, stages, resume, address) -> summary``: a stage that runs before Ray and
the algorithm exist (the MLE stage); its summary is kept in ``stages.json`` under its name."""


# ----------------------------------------------------------------------------- stopping rules


def stage_updates(epochs: float, num_pairs: int, batch_size: int) -> int:
    """Updates in ``epochs`` passes over ``num_pairs`` sources at ``batch_size`` sources per update."""
    return math.ceil(epochs * num_pairs / batch_size)


def collapsed(start: float, now: float, margin: float) -> bool:
    """Whether validation BLEU ``now`` fell more than ``margin`` points below ``start``."""
    return now < start - margin


def check_finite(records: Sequence[Mapping[str, Any]], where: str, run_dir: Path, hint: str) -> None:
    """TrainingError at the first non-finite float of the learner's ``records``.

    The message names the metric, the update (``step``), ``where`` (the stage), the last good
    checkpoint and ``hint`` (what to change before resuming, e.g. a smaller learning rate).
    """
    for rec in records:
        for key, value in rec.items():
            if isinstance(value, (float, np.floating)) and not math.isfinite(value):
                raise TrainingError(
                    f"{key} is {value} at update {rec.get('step')} ({where}); training stopped. Last good "
                    f"checkpoint: {run_dir / CHECKPOINT_DIR}; resume it with --resume {run_dir} and {hint}."
                )


# ----------------------------------------------------------------------------- an open run


def learner_actor_weights(algo: Any) -> dict[str, Any]:
    """The actor's weights of rayseq's own Algorithms (``algo.actor_state_dict()``)."""
    return algo.actor_state_dict()


@dataclass
class Run:
    """An open training run (see :func:`open_run`)."""

    cfg: RunConfig
    run_dir: Path
    task: Task
    algo: Any
    """The RLlib Algorithm (rayseq's own, or RLlib's for the swap-ins)."""
    state: dict[str, Any]
    """The trainer state restored from the checkpoint; {} for a new run."""
    writer: MetricsWriter
    stages: dict[str, Any]
    """Finished stages (``stages.json``)."""
    start: dict[str, Any] | None
    """The start stage's summary (the MLE actor: ``{"actor", "test", "bleu/valid", ...}``), or None."""
    actor_weights: Callable[[Any], Mapping[str, Any]] = learner_actor_weights
    t_start: float = field(default_factory=time.monotonic)

    @property
    def meta(self) -> dict[str, Any]:
        """What every actor file of this run records about it."""
        return {"algo": self.cfg.algo, "task": self.cfg.task, "run_dir": str(self.run_dir)}

    def actor(self) -> Seq2Seq:
        """The learner's current actor as a plain model on the driver (eval mode)."""
        cfg, task = self.cfg, self.task
        model = Seq2Seq(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab)))
        model.load_state_dict({k: torch.tensor(v) for k, v in self.actor_weights(self.algo).items()})  # copies
        return model.eval()

    def validate(self, model: Seq2Seq) -> Validation:
        """Validation BLEU as the run's config says (split ``valid``, beam, first N sentences),
        with the decoded outputs' length ratio and loop share."""
        cfg = self.cfg
        return validate_actor(model, self.task, "valid", cfg.valid_max_sentences, cfg.valid_beam, cfg.max_decode_len)

    def save_actor(self, which: str, model: Seq2Seq, position: Mapping[str, Any], bleu: float) -> None:
        """``actor_{which}.pt`` with this run's vocabularies and ``position`` + ``bleu/valid`` in its meta."""
        save_actor(self.run_dir / ACTOR_FILES[which], model, self.task.src_vocab, self.task.tgt_vocab,
                   {**self.meta, **position, BLEU_VALID: bleu})

    def keep(
        self,
        model: Seq2Seq,
        valid: Validation,
        improved: bool,
        *,
        step: int,
        epoch: float,
        position: Mapping[str, Any],
        metrics: Mapping[str, float],
        trainer_state: Mapping[str, Any],
    ) -> None:
        """After a validation: the best actor (if ``improved``) and the latest, the validation log
        line (``bleu/valid``, the decoding stats, ``metrics``), the checkpoint and the learning curve."""
        if improved:
            self.save_actor("best", model, position, valid.bleu)
        self.save_actor("latest", model, position, valid.bleu)
        self.writer.log(step, epoch, {BLEU_VALID: valid.bleu, **valid.stats, **metrics})
        self.checkpoint(trainer_state)

    def checkpoint(self, trainer_state: Mapping[str, Any]) -> None:
        """Checkpoint the algorithm with ``trainer_state`` and redraw ``curve.png``."""
        save_checkpoint(self.algo, self.run_dir, trainer_state)
        self.plot()

    def plot(self) -> None:
        plot_learning_curve(self.run_dir / "metrics.jsonl", self.run_dir / "curve.png",
                            title=f"{self.cfg.algo} on {self.cfg.task}")

    def log_records(self, records: Sequence[Mapping[str, Any]], where: str, hint: str,
                    epoch_of: Callable[[int], float] | None = None) -> None:
        """The learner's training records, checked for NaN/inf (:func:`check_finite`) and logged;
        x = the record's ``step``, epoch = its ``epoch`` or ``epoch_of(step)``."""
        check_finite(records, where, self.run_dir, hint)
        for rec in records:
            rec = dict(rec)
            rec.pop("stage", None)
            step = int(rec.pop("step"))
            epoch = rec.pop("epoch", None)
            self.writer.log(step, float(epoch_of(step)) if epoch_of is not None else float(epoch or 0.0), rec)

    def save_stage(self, name: str, summary: Mapping[str, Any]) -> None:
        """Record a finished stage in ``stages.json``."""
        self.stages[name] = dict(summary)
        write_stages(self.run_dir, self.stages)

    def finish(self, step: int, epoch: float, results: Mapping[str, Any]) -> dict[str, Any]:
        """The end of every driver: the best actor on the test split (logged as ``bleu/test``, the
        curve redrawn), then ``results.json`` = algo, task, preset, ``results``, test, wall time."""
        cfg = self.cfg
        test = evaluate(self.run_dir, split="test", beam=cfg.valid_beam, max_len=cfg.max_decode_len,
                        data_dir=cfg.data_dir, progress=False)
        self.writer.log(step, epoch, {BLEU_TEST: test["bleu"]})
        self.plot()
        out = {"algo": cfg.algo, "task": cfg.task, "preset": cfg.preset, **results, "test": test}
        if self.start is not None:
            out["mle"] = self.start
        out["wall_time_s"] = self.writer.elapsed_s(since=self.t_start)  # this session's setup + the earlier sessions' time
        write_results(self.run_dir, out)
        return out


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(msg, file=sys.stderr, flush=True)


@contextmanager
def open_run(
    cfg: RunConfig,
    resume: bool,
    address: str | None,
    build: Callable[[RunConfig, Task, dict[str, Any] | None], Any],
    *,
    start_stage: tuple[str, StartStage] | None = None,
    step_key: str = "step",
    actor_weights: Callable[[Any], Mapping[str, Any]] = learner_actor_weights,
) -> Iterator[Run]:
    """Open (or resume) the run ``cfg`` describes; closes the writer, the algorithm and Ray after.

    ``build(cfg, task, start)`` builds the RLlib algorithm (``rayseq.runtime.builders``);
    ``start_stage = (name, fn)`` runs first (skipped once ``stages.json`` records it), before Ray is
    started here; ``step_key`` names the trainer-state counter the metrics log resumes from.
    """
    from rayseq.runtime.session import init_ray

    t_start = time.monotonic()
    run_dir = prepare_run_dir(cfg.out, to_dict(cfg), resume, defaults=field_defaults(cfg))
    task = load_task(cfg.task, cfg.data_dir)
    stages = read_stages(run_dir) if resume else {}
    start = None
    if start_stage is not None:
        name, stage_fn = start_stage
        if name not in stages:
            stages[name] = stage_fn(cfg, run_dir, task, stages, resume, address)
            write_stages(run_dir, stages)
        start = stages[name]
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    started_ray = init_ray(address)
    algo = None
    try:
        algo = build(cfg, task, start)
        state = restore_checkpoint(algo, run_dir) if resume else {}
        writer = MetricsWriter(run_dir, resume_from_step=int(state.get(step_key, 0)) if resume else None)
        try:
            yield Run(cfg, run_dir, task, algo, state, writer, stages, start, actor_weights, t_start)
        finally:
            writer.close()
    finally:
        if algo is not None:
            algo.stop()
        if started_ray:
            import ray

            ray.shutdown()
