"""``rayseq train --algo ac|erac|erac-nofutent|scst|mixer``: the paper's three-stage pipeline.

1. **MLE stage** (``rayseq.drivers.pretrained``) — the start actor: ``algo.actor_init``, or an MLE
   run trained in ``RUN_DIR/mle``.
2. **Critic pretraining** — ``algo.critic_pretrain_epochs`` × (training pairs / batch) updates of
   the critic against the frozen actor (TD error logged).
3. **Joint training** — actor and critic together for up to ``algo.joint_epochs``; every
   ``algo.valid_every`` updates (default: an epoch) the actor's validation BLEU decides the best
   checkpoint and the actor lr (× ``actor_lr_decay`` on no improvement, stop after
   ``max_lr_decays``). A **collapse** (validation BLEU ``collapse_margin`` points below the start
   of joint training) stops the stage and is reported; the best actor is kept.

Each stage checkpoints (``RUN_DIR/checkpoint``: RLlib state of learner, critic, target critic,
optimisers; ``RUN_DIR/stages.json``: what is done), so ``--resume`` skips finished stages and
continues the current one. The test BLEU of the best actor is printed next to the MLE stage's.
"""
from __future__ import annotations

import math
import time
from typing import Any

from rayseq.actor_io import load_actor
from rayseq.algorithms.mle import PlateauSchedule
from rayseq.config import RunConfig
from rayseq.data.tasks import Task
from rayseq.drivers.pretrained import MLE_STAGE, mle_stage
from rayseq.drivers.stage import Run, collapsed, open_run, say
from rayseq.metrics import BLEU_VALID, EPOCH_TIME_S, LR, TOKENS_TOTAL
from rayseq.runtime.builders import build_actor_critic_algorithm

HINT = "a smaller learning rate (algo.actor_lr / algo.critic_lr)"


def stage_updates(epochs: float, num_pairs: int, batch_size: int) -> int:
    """Updates in ``epochs`` passes over ``num_pairs`` sources at ``batch_size`` sources per update."""
    return math.ceil(epochs * num_pairs / batch_size)


def train_chunk(run: Run, n: int, stage: str, per_epoch: float) -> int:
    """``n`` learner updates (one ``algo.train()``); their records checked for NaN/inf and logged."""
    run.algo.updates_per_iteration = n
    run.algo.train()
    run.log_records(run.algo.pop_train_log(), f"{stage} stage", HINT, epoch_of=lambda step: step / per_epoch)
    return n


def critic_stage(run: Run, step: int, per_epoch: float, chunk: int) -> tuple[int, int]:
    """Critic pretraining against the frozen actor; returns ``(step, critic updates done)``."""
    ac, algo = run.cfg.algo_config, run.algo
    n_critic = stage_updates(ac.critic_pretrain_epochs, len(run.task.split("train")), ac.batch_size)
    done = int(run.state.get("critic_updates", 0))
    if done < n_critic:
        algo.set_stage("critic")
        say(f"[critic stage] {n_critic - done} updates of critic pretraining (actor frozen)")
    while done < n_critic:
        t0 = time.perf_counter()
        n = train_chunk(run, min(chunk, n_critic - done), "critic", per_epoch)
        done += n
        step += n
        run.writer.log(step, step / per_epoch, {EPOCH_TIME_S: time.perf_counter() - t0})
        run.checkpoint({"step": step, "critic_updates": done, "joint_updates": 0})
    return step, done


def joint_stage(run: Run, step: int, done_c: int, per_epoch: float, chunk: int) -> dict[str, Any]:
    """Joint actor-critic training, validated every ``chunk`` updates; returns its results."""
    ac, algo, state = run.cfg.algo_config, run.algo, run.state
    n_joint = stage_updates(ac.joint_epochs, len(run.task.split("train")), ac.batch_size)
    done = int(state.get("joint_updates", 0))
    schedule = PlateauSchedule(lr=ac.actor_lr, decay=ac.actor_lr_decay, max_decays=ac.max_lr_decays)
    if "schedule" in state:
        schedule.load_state_dict(state["schedule"])
    has_collapsed = bool(state.get("collapsed", False))
    start_bleu, best_step = state.get("start_bleu"), state.get("best_step")
    algo.set_stage("joint")
    algo.set_lr(schedule.lr)
    if start_bleu is None:
        model = run.actor()
        start_bleu = run.validate(model)
        schedule.step(start_bleu)
        best_step = step
        run.save_actor("best", model, {"step": step}, start_bleu)
        run.writer.log(step, step / per_epoch, {BLEU_VALID: start_bleu, LR: schedule.lr, TOKENS_TOTAL: float(algo.tokens_total)})
        say(f"[joint stage] start: valid BLEU {start_bleu:.2f} (the MLE actor); {n_joint} updates at most")
    while done < n_joint and not schedule.should_stop and not has_collapsed:
        t0 = time.perf_counter()
        n = train_chunk(run, min(chunk, n_joint - done), "joint", per_epoch)
        done += n
        step += n
        model = run.actor()
        bleu = run.validate(model)
        improved = schedule.step(bleu)
        if improved:
            best_step = step
        algo.set_lr(schedule.lr)
        msg = (f"[joint stage] update {done}/{n_joint}: valid BLEU {bleu:.2f} (start {start_bleu:.2f}, "
               f"best {schedule.best:.2f}), actor lr {schedule.lr:g}")
        if collapsed(start_bleu, bleu, ac.collapse_margin):
            has_collapsed = True
            msg += (f"\n[joint stage] COLLAPSE: validation BLEU fell {start_bleu - bleu:.1f} points below the start "
                    f"(collapse_margin {ac.collapse_margin}); joint training stopped, the best actor (step {best_step}) is kept.")
        run.keep(
            model, bleu, improved, step=step, epoch=step / per_epoch, position={"step": step},
            metrics={LR: schedule.lr, EPOCH_TIME_S: time.perf_counter() - t0, TOKENS_TOTAL: float(algo.tokens_total)},
            trainer_state={"step": step, "critic_updates": done_c, "joint_updates": done, "schedule": schedule.state_dict(),
                           "start_bleu": start_bleu, "best_step": best_step, "collapsed": has_collapsed},
        )
        say(msg)
    return {"updates": step, "critic_updates": done_c, "joint_updates": done, "best_step": best_step,
            "collapsed": has_collapsed, "start_bleu_valid": start_bleu, BLEU_VALID: schedule.best}


def build(cfg: RunConfig, task: Task, start: Any) -> Any:
    return build_actor_critic_algorithm(cfg, task)


def train_actor_critic(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) the MLE → critic → joint pipeline; returns the contents of ``results.json``."""
    with open_run(cfg, resume, address, build, start_stage=(MLE_STAGE, mle_stage)) as run:
        if not run.state:
            run.algo.load_actor(load_actor(run.start["actor"]).model.state_dict())
        ac = run.cfg.algo_config
        per_epoch = len(run.task.split("train")) / ac.batch_size
        chunk = ac.valid_every or max(1, round(per_epoch))
        step = int(run.state.get("step", 0))
        step, done_c = critic_stage(run, step, per_epoch, chunk)
        results = joint_stage(run, step, done_c, per_epoch, chunk)
        return run.finish(results["updates"], results["updates"] / per_epoch, results)
