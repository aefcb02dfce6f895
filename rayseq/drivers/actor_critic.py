"""``rayseq train --algo ac|erac|erac-nofutent|scst|mixer``: the paper's three-stage pipeline.

1. **MLE stage** (``rayseq.drivers.pretrained``) — the start actor: ``algo.actor_init``, or an MLE
   run trained in ``RUN_DIR/mle``.
2. **Critic pretraining**, as the official ``train_critic.py`` — at most
   ``algo.critic_pretrain_epochs`` × (training pairs / batch) updates of the critic against the
   frozen actor; every ``algo.critic_valid_every`` updates (default: an epoch) the critic is scored
   on held-out samples of the actor on the validation split (``rayseq.evaluation.critic``: TD
   error, next-token accuracy, rank correlation with Monte-Carlo returns, target entropy, eos
   margin). The best critic by held-out TD error is kept (``RUN_DIR/critic_best.pt``); no
   improvement → critic lr × ``critic_lr_decay``, and after ``critic_max_decays`` decays the stage
   stops. Joint training starts from the best critic with fresh optimisers.
3. **Joint training** — actor and critic together for up to ``algo.joint_epochs``; every
   ``algo.valid_every`` updates (default: an epoch) the actor's validation BLEU decides the best
   checkpoint and the actor lr (× ``actor_lr_decay`` on no improvement, stop after
   ``max_lr_decays``). A **collapse** (validation BLEU ``collapse_margin`` points below the start
   of joint training) stops the stage and is reported; the best actor is kept. Each validation also
   logs how the decoded outputs look (length ratio, loops) and the critic's held-out metrics.

Each stage checkpoints (``RUN_DIR/checkpoint``: RLlib state of learner, critic, target critic,
optimisers; ``RUN_DIR/stages.json``: what is done), so ``--resume`` skips finished stages and
continues the current one. The test BLEU of the best actor is printed next to the MLE stage's.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from rayseq.actor_io import CRITIC_FILE, load_actor, find_q_file, load_critic_file, load_q_weights, save_critic_file
from rayseq.algorithms.erac import ERACConfig
from rayseq.algorithms.mle import PlateauSchedule
from rayseq.config import RunConfig
from rayseq.data.tasks import Task
from rayseq.drivers.pretrained import MLE_STAGE, mle_stage
from rayseq.drivers.stage import Run, collapsed, open_run, say, stage_updates
from rayseq.evaluation.critic import score_critic
from rayseq.metrics import (
    BLEU_VALID,
    CRITIC_BEST_TD,
    CRITIC_EOS_MARGIN,
    CRITIC_MC_RANK_CORR,
    CRITIC_TOP1_ACC,
    CRITIC_VALID_TD,
    DECODE_LEN_RATIO,
    DECODE_LOOP_SHARE,
    EPOCH_TIME_S,
    LR,
    LR_CRITIC,
    TOKENS_TOTAL,
)
from rayseq.models.critic import Critic, CriticConfig
from rayseq.models.seq2seq import Seq2Seq
from rayseq.runtime.builders import build_actor_critic_algorithm

HINT = "a smaller learning rate (algo.actor_lr / algo.critic_lr)"


def train_chunk(run: Run, n: int, stage: str, per_epoch: float) -> int:
    """``n`` learner updates (one ``algo.train()``); their records checked for NaN/inf and logged."""
    run.algo.updates_per_iteration = n
    run.algo.train()
    run.log_records(run.algo.pop_train_log(), f"{stage} stage", HINT, epoch_of=lambda step: step / per_epoch)
    return n


def critic_config(run: Run) -> CriticConfig:
    """The critic's shape: sized like this run's actor."""
    cfg, task = run.cfg, run.task
    return CriticConfig.like_actor(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab)))


def critic_model(run: Run, weights: Mapping[str, Any]) -> Critic:
    """The critic with ``weights`` as a plain model on the driver."""
    critic = Critic(critic_config(run))
    critic.load_state_dict({k: v.detach().clone() if isinstance(v, torch.Tensor) else torch.tensor(np.array(v))
                            for k, v in weights.items()})  # copies
    return critic.eval()


def score(run: Run, actor: Seq2Seq, weights: Mapping[str, Any], stage: str) -> dict[str, float]:
    """The critic's held-out metrics against ``actor`` on the validation split
    (``rayseq.evaluation.critic.score_critic``, samples capped as in ``stage``)."""
    ac = run.cfg.algo_config
    valid = run.task.split("valid")
    n = len(valid) if ac.critic_valid_sentences is None else min(ac.critic_valid_sentences, len(valid))
    slack = ac.pretrain_len_slack if stage == "critic" else ac.sample_len_slack
    tau = ac.tau if stage == "critic" or run.algo.tau is None else run.algo.tau  # annealed or automatic τ in force
    return score_critic(critic_model(run, weights), actor, valid, tau, n, critic_tau=ac.critic_tau,  # None: tau
                        target_temperature=ac.target_temperature, entropy_horizon=ac.entropy_horizon, len_slack=slack, max_len=ac.max_sample_len, seed=ac.seed, exclude=ac.exclude_tokens)


def critic_stage(run: Run, step: int, per_epoch: float) -> tuple[int, int]:
    """Critic pretraining against the frozen actor to a held-out plateau; returns ``(step, critic
    updates done)`` with the best critic loaded (critic and target critic)."""
    ac, algo, state = run.cfg.algo_config, run.algo, run.state
    n_critic = stage_updates(ac.critic_pretrain_epochs, len(run.task.split("train")), ac.batch_size)
    done = int(state.get("critic_updates", 0))
    if state.get("critic_done") or not has_critic(run):
        return step, done
    if ac.critic_init:
        path = find_q_file(ac.critic_init, "algo.critic_init")
        obj = load_critic_file(path)
        algo.load_critic(obj["state_dict"])
        run.save_stage("critic", {"updates": 0, "best": obj["meta"], "source": f"critic_init {path}"})
        run.checkpoint({"step": step, "critic_updates": done, "joint_updates": 0, "critic_done": True})
        say(f"[critic stage] the critic of {path} (held-out TD {obj['meta'].get(CRITIC_VALID_TD, float('nan')):.4f}); no pretraining")
        return step, done
    chunk = ac.critic_valid_every or max(1, round(per_epoch))
    schedule = PlateauSchedule(lr=ac.critic_pretrain_lr, decay=ac.critic_lr_decay, max_decays=ac.critic_max_decays,
                               higher_is_better=False)
    if "critic_schedule" in state:
        schedule.load_state_dict(state["critic_schedule"])
    algo.set_stage("critic")
    algo.set_critic_lr(schedule.lr)
    if done < n_critic:
        say(f"[critic stage] at most {n_critic - done} updates of critic pretraining (actor frozen), "
            f"held-out check every {chunk}")
    actor = run.actor()
    if ac.critic_warm_start and done == 0:  # a resumed run has its own weights
        obj = load_q_weights(ac.critic_warm_start, asdict(critic_config(run)), "algo.critic_warm_start")
        algo.load_critic(obj["state_dict"])
        metrics = score(run, actor, obj["state_dict"], "critic")
        run.writer.log(step, step / per_epoch, metrics)
        say(f"[critic stage] starts from {ac.critic_warm_start} ({obj['format']}): held-out TD "
            f"{metrics[CRITIC_VALID_TD]:.4f}, top-1 {metrics[CRITIC_TOP1_ACC]:.3f}, rank corr "
            f"{metrics[CRITIC_MC_RANK_CORR]:.2f}, eos margin {metrics[CRITIC_EOS_MARGIN]:.2f}")
    best_file = run.run_dir / CRITIC_FILE
    while done < n_critic and not schedule.should_stop:
        t0 = time.perf_counter()
        n = train_chunk(run, min(chunk, n_critic - done), "critic", per_epoch)
        done += n
        step += n
        weights = algo.critic_state_dict()
        metrics = score(run, actor, weights, "critic")
        improved = schedule.step(metrics[CRITIC_VALID_TD])
        if improved:
            save_critic_file(best_file, weights, asdict(critic_config(run)),
                             {"step": step, "critic_updates": done, **metrics})
        algo.set_critic_lr(schedule.lr)
        run.writer.log(step, step / per_epoch, {**metrics, CRITIC_BEST_TD: schedule.best, LR_CRITIC: schedule.lr,
                                                EPOCH_TIME_S: time.perf_counter() - t0})
        say(f"[critic stage] update {done}/{n_critic}: held-out TD {metrics[CRITIC_VALID_TD]:.4f} "
            f"(best {schedule.best:.4f}), top-1 {metrics[CRITIC_TOP1_ACC]:.3f}, rank corr "
            f"{metrics[CRITIC_MC_RANK_CORR]:.3f}, eos margin {metrics[CRITIC_EOS_MARGIN]:.2f}, critic lr {schedule.lr:g}")
        run.checkpoint({"step": step, "critic_updates": done, "joint_updates": 0, "critic_schedule": schedule.state_dict()})
    best = {}
    if best_file.is_file():
        saved = load_critic_file(best_file)
        algo.load_critic(saved["state_dict"])
        best = saved["meta"]
    run.save_stage("critic", {"updates": done, "best": best, "stopped_on_plateau": bool(schedule.should_stop)})
    run.checkpoint({"step": step, "critic_updates": done, "joint_updates": 0, "critic_schedule": schedule.state_dict(),
                    "critic_done": True})
    return step, done


def has_critic(run: Run) -> bool:
    """Whether the algorithm trains a critic (AC, ERAC and variants; not SCST / MIXER's baseline)."""
    return isinstance(run.cfg.algo_config, ERACConfig)


def pretrain_baseline(run: Run, step: int, per_epoch: float, chunk: int) -> tuple[int, int]:
    """MIXER's baseline pretraining (a fixed number of updates; no held-out check)."""
    ac, algo = run.cfg.algo_config, run.algo
    n_critic = stage_updates(ac.critic_pretrain_epochs, len(run.task.split("train")), ac.batch_size)
    done = int(run.state.get("critic_updates", 0))
    if done < n_critic:
        algo.set_stage("critic")
        say(f"[baseline stage] {n_critic - done} updates of baseline pretraining (actor frozen)")
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
    critic = has_critic(run)
    algo.set_stage("joint")
    algo.set_lr(schedule.lr)
    algo.joint_updates = done
    if state.get("tau") is not None:  # the automatic temperature where the run left it
        algo.set_tau(state["tau"])
    if start_bleu is None:
        if critic and ac.fresh_joint_optimizers:
            algo.reset_optimizers()  # the official fresh Adam of joint training
        model = run.actor()
        valid = run.validate(model)
        start_bleu = valid.bleu
        schedule.step(start_bleu)
        best_step = step
        run.save_actor("best", model, {"step": step}, start_bleu)
        extra = score(run, model, algo.critic_state_dict(), "joint") if critic else {}
        run.writer.log(step, step / per_epoch, {BLEU_VALID: start_bleu, **valid.stats, **extra, LR: schedule.lr,
                                                TOKENS_TOTAL: float(algo.tokens_total)})
        run.save_stage("joint_start", {BLEU_VALID: start_bleu, **valid.stats, **extra})
        run.checkpoint({"step": step, "critic_updates": done_c, "joint_updates": done, "critic_done": True,
                        "schedule": schedule.state_dict(), "start_bleu": start_bleu, "best_step": best_step,
                        "collapsed": has_collapsed})  # a resume does not validate the start again
        say(f"[joint stage] start: valid BLEU {start_bleu:.2f} (the MLE actor); {n_joint} updates at most")
    while done < n_joint and not schedule.should_stop and not has_collapsed:
        t0 = time.perf_counter()
        n = train_chunk(run, min(chunk, n_joint - done), "joint", per_epoch)
        done += n
        step += n
        model = run.actor()
        valid = run.validate(model)
        bleu = valid.bleu
        improved = schedule.step(bleu)
        if improved:
            best_step = step
        algo.set_lr(schedule.lr)
        extra = score(run, model, algo.critic_state_dict(), "joint") if critic else {}
        msg = (f"[joint stage] update {done}/{n_joint}: valid BLEU {bleu:.2f} (start {start_bleu:.2f}, "
               f"best {schedule.best:.2f}), length ratio {valid.stats[DECODE_LEN_RATIO]:.2f}, loops "
               f"{valid.stats[DECODE_LOOP_SHARE]:.1%}, actor lr {schedule.lr:g}")
        if collapsed(start_bleu, bleu, ac.collapse_margin):
            has_collapsed = True
            msg += (f"\n[joint stage] COLLAPSE: validation BLEU fell {start_bleu - bleu:.1f} points below the start "
                    f"(collapse_margin {ac.collapse_margin}); joint training stopped, the best actor (step {best_step}) is kept.")
        run.keep(
            model, valid, improved, step=step, epoch=step / per_epoch, position={"step": step},
            metrics={**extra, LR: schedule.lr, EPOCH_TIME_S: time.perf_counter() - t0, TOKENS_TOTAL: float(algo.tokens_total)},
            trainer_state={"step": step, "critic_updates": done_c, "joint_updates": done, "critic_done": True,
                           "schedule": schedule.state_dict(), "tau": algo.tau,
                           "start_bleu": start_bleu, "best_step": best_step, "collapsed": has_collapsed},
        )
        say(msg)
    return {"updates": step, "critic_updates": done_c, "joint_updates": done, "best_step": best_step,
            "collapsed": has_collapsed, "start_bleu_valid": start_bleu, BLEU_VALID: schedule.best,
            "critic": run.stages.get("critic"), "joint_start": run.stages.get("joint_start")}


def build(cfg: RunConfig, task: Task, start: Any) -> Any:
    return build_actor_critic_algorithm(cfg, task)


def train_actor_critic(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) the MLE → critic → joint pipeline; returns the contents of ``results.json``."""
    if getattr(cfg.algo_config, "critic_warm_start", None):
        find_q_file(cfg.algo_config.critic_warm_start, "algo.critic_warm_start")  # before a run dir exists
    with open_run(cfg, resume, address, build, start_stage=(MLE_STAGE, mle_stage)) as run:
        if not run.state:
            run.algo.load_actor(load_actor(run.start["actor"]).model.state_dict())
        ac = run.cfg.algo_config
        per_epoch = len(run.task.split("train")) / ac.batch_size
        chunk = ac.valid_every or max(1, round(per_epoch))
        step = int(run.state.get("step", 0))
        if has_critic(run):
            step, done_c = critic_stage(run, step, per_epoch)
        else:
            step, done_c = pretrain_baseline(run, step, per_epoch, chunk)
        results = joint_stage(run, step, done_c, per_epoch, chunk)
        return run.finish(results["updates"], results["updates"] / per_epoch, results)
