"""The MLE stage: the actor every RL driver (actor-critic, swap-ins) starts from.

``algo.actor_init`` names an MLE run (or an actor file), checked against this run's task and
model; otherwise the run trains one itself in ``RUN_DIR/mle`` — a normal ``rayseq train --algo
mle`` run with the same task, preset, model and seed (run-level ``epochs`` are its epochs).
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from rayseq.actor_io import LoadedActor, load_actor, resolve_actor
from rayseq.algorithms.mle import MLEConfig
from rayseq.config import RunConfig, build_run_config
from rayseq.data.tasks import Task
from rayseq.drivers.stage import say
from rayseq.drivers.supervised import train_supervised
from rayseq.errors import TrainingError
from rayseq.evaluation.score import evaluate, validation_bleu
from rayseq.metrics import BLEU_VALID
from rayseq.run_dir import ACTOR_FILES, MLE_DIR, RUN_JSON, has_checkpoint, read_results

MLE_STAGE = "mle"
"""The MLE stage's name in ``stages.json`` and in ``results.json``."""


def mle_run_config(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """The MLE stage: an MLE run with this run's task, preset, model, seed and run-level settings."""
    keep = ("epochs", "valid_beam", "valid_max_sentences", "max_decode_len", "log_every", "seed")
    overrides = [f"{k}={getattr(cfg, k)}" for k in keep]
    overrides += [f"model.{k}={v}" for k, v in asdict(cfg.model).items()]
    return build_run_config(
        "mle", MLEConfig, cfg.preset, cfg.task, overrides, out=str(run_dir / MLE_DIR), data_dir=cfg.data_dir,
        num_learners=cfg.num_learners, num_gpus_per_learner=cfg.num_gpus_per_learner,
        learner_resource=cfg.learner_resource,
    )


def check_actor_fits(loaded: LoadedActor, cfg: RunConfig, task: Task, where: Path) -> None:
    """TrainingError unless the start actor has this run's vocabularies and shape."""
    want = asdict(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab)))
    have = asdict(loaded.model.cfg)
    diffs = [f"{k}: file {have.get(k)!r} vs run {v!r}" for k, v in want.items() if k != "dropout" and have.get(k) != v]
    if diffs:
        raise TrainingError(
            f"algo.actor_init={where}: the actor does not fit this run ({'; '.join(diffs)}); train the MLE "
            f"actor with the same task and model settings, or drop algo.actor_init to train it here."
        )
    if list(loaded.tgt_vocab.itos) != list(task.tgt_vocab.itos) or list(loaded.src_vocab.itos) != list(task.src_vocab.itos):
        raise TrainingError(
            f"algo.actor_init={where}: its vocabulary differs from task {cfg.task!r}'s (another task or data "
            f"dir?); use an MLE actor trained on the same task."
        )


def _which(path: Path) -> str:
    """``best`` or ``latest`` for a run's actor file (``best`` for any other name)."""
    return next((w for w, name in ACTOR_FILES.items() if path.name == name), "best")


def mle_stage(cfg: RunConfig, run_dir: Path, task: Task, stages: dict[str, Any], resume: bool,
              address: str | None) -> dict[str, Any]:
    """``{"actor": path, "test": {...}, "bleu/valid": float, "source": ...}`` of the start actor."""
    spec = cfg.algo_config.actor_init
    if spec:
        path = resolve_actor(spec, "best") if Path(spec).is_dir() else Path(spec)
        loaded = load_actor(path)
        check_actor_fits(loaded, cfg, task, path)
        prev = read_results(path.parent)
        if prev is not None:
            test, valid = prev.get("test", {}), prev.get(BLEU_VALID)
        elif (path.parent / RUN_JSON).is_file():  # a run that has not finished: score its actor
            test = evaluate(path.parent, split="test", beam=cfg.valid_beam, max_len=cfg.max_decode_len,
                            data_dir=cfg.data_dir, progress=False, which=_which(path))
            valid = loaded.meta.get(BLEU_VALID)
        else:  # an actor file on its own: score it on this run's task
            bleu = validation_bleu(loaded.model, task, "test", None, cfg.valid_beam, cfg.max_decode_len)
            test, valid = {"split": f"{cfg.task}/test", "bleu": bleu}, loaded.meta.get(BLEU_VALID)
        return {"actor": str(path), "test": test, BLEU_VALID: valid, "source": "actor_init"}
    mle_cfg = mle_run_config(cfg, run_dir)
    mle_dir = run_dir / MLE_DIR
    say(f"[mle stage] training the actor by MLE in {mle_dir} ({mle_cfg.epochs} epochs)")
    res = train_supervised(mle_cfg, resume=resume and has_checkpoint(mle_dir), address=address)
    return {"actor": str(resolve_actor(mle_dir, "best")), "test": res["test"], BLEU_VALID: res[BLEU_VALID],
            "source": "mle stage", "wall_time_s": res["wall_time_s"]}
