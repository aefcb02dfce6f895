"""``rayseq train --algo mle|raml``: epochs of dataset batches on the learner.

With ``algo.actor_init`` (MLE, RAML, VAML) the run starts from that actor ("MLE continued", the
baseline that gets the RL stage's extra updates; RAML / VAML fine-tuned from the same MLE actor): its
validation BLEU counts as epoch 0, and when the actor comes from an MLE run the lr starts where that
run's schedule left it. ``algo.budget_epochs`` caps the updates, ``algo.valid_every_updates`` splits
epochs between validations.

Per epoch: the algorithm's ``train()`` (RLlib learners do the updates), then validation BLEU of
the actor on the driver, the lr schedule (× ``lr_decay`` on no improvement, stop after
``max_decays``), checkpoints (RLlib state + the plain actor file, latest and best), metrics
(``metrics.jsonl``, TensorBoard) and the learning-curve PNG. At the end the best actor is
evaluated on the test split (``results.json``). ``--resume`` continues from the latest
checkpoint: same step counter, same schedule, same data order. VAML runs the same epochs after
its Q-net stage (``rayseq.drivers.vaml``).
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rayseq.actor_io import load_actor, resolve_actor
from rayseq.algorithms.mle import SupervisedConfig, PlateauSchedule
from rayseq.config import RunConfig
from rayseq.drivers.stage import Run, open_run, say, stage_updates
from rayseq.metrics import BLEU_VALID, EPOCH_TIME_S, LR, TOKENS_PER_S, TOKENS_TOTAL
from rayseq.run_dir import CHECKPOINT_DIR, TRAINER_STATE
from rayseq.runtime.builders import build_supervised_algorithm


def plateau_schedule(cfg: RunConfig, state: Mapping[str, Any]) -> PlateauSchedule:
    """The official validation-driven lr schedule of the actor epochs, restored from ``state``."""
    a = cfg.algo_config
    schedule = PlateauSchedule(lr=a.lr, decay=a.lr_decay, max_decays=a.max_decays)
    if "schedule" in state:
        schedule.load_state_dict(state["schedule"])
    return schedule


def continued_lr(actor_init: str) -> float | None:
    """The lr at which the MLE run that wrote ``actor_init`` stopped (its checkpoint's schedule), so
    that "MLE continued" goes on where that run left off; None when it is not such a run."""
    path = Path(actor_init)
    run_dir = path if path.is_dir() else path.parent
    state = run_dir / CHECKPOINT_DIR / TRAINER_STATE
    if not state.is_file():
        return None
    schedule = json.loads(state.read_text(encoding="utf-8")).get("schedule") or {}
    return float(schedule["lr"]) if "lr" in schedule else None


def iteration_updates(valid_every: int, left: int) -> int:
    """Updates of the next ``train()``: up to the next validation (``valid_every``) and no further
    than the budget's ``left`` updates; 0 (the rest of the epoch) when neither is set."""
    caps = [n for n in (valid_every, left) if n > 0]
    return min(caps) if caps else 0


def epoch_loop(run: Run, extra: Mapping[str, Any] | None = None, train_actor: bool = True) -> dict[str, Any]:
    """Actor epochs until ``cfg.epochs`` or the schedule stops; returns ``results.json``.

    ``extra`` (a stage summary, e.g. VAML's Q-net) is kept in every checkpoint and in the results.
    ``train_actor=False`` (VAML's ``algo.qnet_only``): no update; the start actor is validated, kept
    and tested.
    """
    cfg, algo, state = run.cfg, run.algo, run.state
    extra = dict(extra or {})
    schedule = plateau_schedule(cfg, state)
    algo.set_lr(schedule.lr)
    epoch, step = state.get("epoch", 0), int(algo.num_updates)
    best_epoch = state.get("best_epoch")
    a: SupervisedConfig = cfg.algo_config
    budget = stage_updates(a.budget_epochs, len(run.task.split("train")), cfg.batch_size) if a.budget_epochs else 0
    valid_every = int(a.valid_every_updates)
    step0 = int(state.get("actor_step0", step))  # updates made before the actor epochs (VAML: its Q-net's)
    hint = "a smaller lr (algo.lr=...)"
    if "schedule" not in state and (a.actor_init or not train_actor):  # fine-tuning: the start is epoch 0
        start_lr = continued_lr(a.actor_init) if a.actor_init and a.continue_lr else None
        if start_lr is not None:  # the lr the start actor's own MLE run had decayed to
            schedule.lr = start_lr
            algo.set_lr(start_lr)
        model = run.actor()
        valid = run.validate(model)
        schedule.step(valid.bleu)
        best_epoch = 0
        run.keep(model, valid, True, step=step, epoch=0, position={"epoch": 0}, metrics={LR: schedule.lr},
                 trainer_state={"epoch": 0, "step": step, "actor_step0": step0, "schedule": schedule.state_dict(),
                                "best_epoch": 0, **extra})
        limit = f"{budget} updates" if budget else f"{cfg.epochs} epochs"
        say(f"start: valid BLEU {valid.bleu:.2f} ({a.actor_init or 'initial weights'}); "
            + (f"{limit} at most" if train_actor else "no actor training"))
    while train_actor and epoch < cfg.epochs and not schedule.should_stop and not (budget and step - step0 >= budget):
        t0 = time.perf_counter()
        algo.updates_per_iteration = iteration_updates(valid_every, budget - (step - step0) if budget else 0)
        result = algo.train()
        run.log_records(algo.pop_train_log(), f"epoch {math.floor(epoch) + 1}", hint)
        done = round(float(algo.epochs_done), 6)
        epoch = int(done) if done == int(done) else done
        step = int(algo.num_updates)
        model = run.actor()
        valid = run.validate(model)
        improved = schedule.step(valid.bleu)
        if improved:
            best_epoch = epoch
        algo.set_lr(schedule.lr)
        run.keep(
            model, valid, improved, step=step, epoch=epoch, position={"epoch": epoch},
            metrics={LR: schedule.lr, TOKENS_PER_S: float(result.get(TOKENS_PER_S, 0.0)),
                     TOKENS_TOTAL: float(algo.tokens_total), EPOCH_TIME_S: time.perf_counter() - t0},
            trainer_state={"epoch": epoch, "step": step, "actor_step0": step0, "schedule": schedule.state_dict(),
                           "best_epoch": best_epoch, **extra},
        )
        say(f"{'epoch' if epoch == int(epoch) else f'update {step}, epoch'} {epoch:g}: valid BLEU {valid.bleu:.2f} (best {schedule.best:.2f}, epoch {best_epoch}), lr {schedule.lr:g}")
    return run.finish(step, epoch, {"epochs": epoch, "updates": step, "best_epoch": best_epoch,
                                    BLEU_VALID: schedule.best, **extra})


def build(cfg: RunConfig, task: Any, start: Any) -> Any:
    algo = build_supervised_algorithm(cfg, task)
    spec = cfg.algo_config.actor_init
    if spec:  # weights only; a resumed run restores its own from the checkpoint afterwards
        path = resolve_actor(spec, "best") if Path(spec).is_dir() else Path(spec)
        algo.load_actor(load_actor(path).model.state_dict())
    return algo


def train_supervised(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) MLE or RAML training; returns the contents of ``results.json``."""
    with open_run(cfg, resume, address, build) as run:
        return epoch_loop(run)
