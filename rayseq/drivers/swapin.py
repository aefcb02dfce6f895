"""``rayseq train --algo ppo|appo|sac``: RLlib's own algorithms on the sequence MDP (swap-ins).

1. **MLE stage** — the same as ERAC's (``rayseq.drivers.pretrained``): ``algo.actor_init`` names
   an MLE run or actor file, or the run trains one in ``RUN_DIR/mle``.
2. **RL stage** — RLlib's PPO / APPO / SAC (``rayseq.runtime.builders``), its policy the
   MLE actor (``rayseq.runtime.swapin_module``), for ``algo.iterations`` × ``Algorithm.train()``.
   Every ``algo.valid_every_iters`` iterations (and at the end) the actor's validation BLEU picks
   the best actor (the MLE actor counts as iteration 0, so the best is never worse than the
   start) and the run checkpoints (RLlib state + ``trainer_state.json``); ``--resume`` continues
   from there.
3. The best actor's test BLEU goes into ``results.json`` next to the MLE actor's.

Logged per iteration with the shared names: ``loss/actor`` (RLlib's policy loss), ``loss/value``
(PPO/APPO value head) or ``loss/critic_td`` (SAC's Q heads), ``entropy``, tokens sampled per
second; ``bleu/valid`` at each validation. ``step`` = iteration, ``epoch`` = episodes sampled /
training pairs.
"""
from __future__ import annotations

import math
import time
from typing import Any

from rayseq.config import RunConfig
from rayseq.data.tasks import Task
from rayseq.drivers.pretrained import MLE_STAGE, mle_stage
from rayseq.drivers.stage import open_run, say
from rayseq.metrics import (
    BLEU_VALID,
    ENTROPY,
    EPOCH_TIME_S,
    LOSS_ACTOR,
    LOSS_CRITIC_TD,
    LOSS_VALUE,
    TOKENS_PER_S,
    TOKENS_TOTAL,
)
from rayseq.runtime.builders import build_swapin_algorithm

SAMPLE_RETURN = "sample/return"
"""Mean return of the episodes sampled in the iteration (Σ BLEU increments, × |y*| by default)."""
SAMPLED_TOKENS = TOKENS_TOTAL  # the shared name (the compare plot reads it)
"""Env steps (tokens) sampled since the start of the RL stage."""


def iteration_record(result: dict[str, Any], seconds: float) -> dict[str, float]:
    """The shared-name metrics of one ``Algorithm.train()`` result (RLlib's key layout, Ray 2.60).

    SAC logs no entropy; it follows exactly from what it logs: its temperature loss is
    ``−log α · (−H + H_target)`` (batch mean), so ``H = H_target + alpha_loss / log α``.
    """
    learner = result.get("learners", {}).get("default_policy", {})
    runners = result.get("env_runners", {})
    rec: dict[str, float] = {}
    if "policy_loss" in learner:
        rec[LOSS_ACTOR] = float(learner["policy_loss"])
    if "vf_loss" in learner:
        rec[LOSS_VALUE] = float(learner["vf_loss"])
    if "qf_loss" in learner:
        rec[LOSS_CRITIC_TD] = float(learner["qf_loss"])
    if "entropy" in learner:
        rec[ENTROPY] = float(learner["entropy"])
    elif "alpha_loss" in learner and abs(float(learner.get("log_alpha_value", 0.0))) > 1e-6:
        rec[ENTROPY] = float(learner["target_entropy"]) + float(learner["alpha_loss"]) / float(learner["log_alpha_value"])
    sampled = float(runners.get("num_env_steps_sampled", 0.0) or 0.0)
    rec[TOKENS_PER_S] = sampled / max(seconds, 1e-9)
    if "episode_return_mean" in runners and math.isfinite(float(runners["episode_return_mean"])):
        rec[SAMPLE_RETURN] = float(runners["episode_return_mean"])
    rec[SAMPLED_TOKENS] = float(result.get("env_runners", {}).get("num_env_steps_sampled_lifetime", 0.0) or 0.0)
    return rec


def actor_weights(algo: Any) -> dict[str, Any]:
    """The actor's weights on RLlib's learner."""
    from rayseq.runtime.swapin_algorithm import actor_state

    return actor_state(algo)


def build(cfg: RunConfig, task: Task, start: Any) -> Any:
    return build_swapin_algorithm(cfg, task, start["actor"])


def train_swapin(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) MLE stage → RLlib PPO/APPO/SAC; returns the contents of ``results.json``."""
    with open_run(cfg, resume, address, build, start_stage=(MLE_STAGE, mle_stage), step_key="iteration",
                  actor_weights=actor_weights) as run:
        sw, state = cfg.algo_config, run.state
        num_pairs = len(run.task.split("train"))
        it = int(state.get("iteration", 0))
        episodes = float(state.get("episodes", 0.0))
        hint = "a smaller learning rate (algo.lr, or algo.actor_lr / algo.critic_lr for sac)"
        start_bleu, best, best_it = state.get("start_bleu"), state.get("best_bleu"), state.get("best_iteration")
        if start_bleu is None:
            model = run.actor()
            start_bleu = best = run.validate(model).bleu
            best_it = 0
            run.save_actor("best", model, {"step": 0}, best)
            run.writer.log(0, 0.0, {BLEU_VALID: start_bleu, SAMPLED_TOKENS: 0.0})
            run.checkpoint({"iteration": 0, "episodes": 0.0, "start_bleu": start_bleu, "best_bleu": best,
                            "best_iteration": best_it})  # a resume does not validate the start again
            say(f"[{cfg.algo}] start: valid BLEU {start_bleu:.2f} (the MLE actor); {sw.iterations} iterations")
        t_chunk = time.perf_counter()
        while it < sw.iterations:
            t0 = time.perf_counter()
            result = run.algo.train()
            it += 1
            rec = iteration_record(result, time.perf_counter() - t0)
            episodes += float(result.get("env_runners", {}).get("num_episodes", 0) or 0)
            run.log_records([{"step": it, **rec}], f"iteration {it}", hint, epoch_of=lambda _: episodes / num_pairs)
            if it % sw.valid_every_iters and it < sw.iterations:
                continue
            model = run.actor()
            valid = run.validate(model)
            bleu = valid.bleu
            improved = bleu > best
            if improved:
                best, best_it = bleu, it
            run.keep(
                model, valid, improved, step=it, epoch=episodes / num_pairs, position={"step": it},
                metrics={EPOCH_TIME_S: time.perf_counter() - t_chunk, SAMPLED_TOKENS: rec.get(SAMPLED_TOKENS, 0.0)},
                trainer_state={"iteration": it, "episodes": episodes, "start_bleu": start_bleu, "best_bleu": best,
                               "best_iteration": best_it},
            )
            say(f"[{cfg.algo}] iteration {it}/{sw.iterations}: valid BLEU {bleu:.2f} (start {start_bleu:.2f}, "
                f"best {best:.2f} at {best_it}); {', '.join(f'{k} {v:.3g}' for k, v in rec.items())}")
            t_chunk = time.perf_counter()
        results = run.finish(it, episodes / num_pairs, {
            "iterations": it, "episodes": episodes, "best_step": best_it, "start_bleu_valid": start_bleu, BLEU_VALID: best,
        })
        run.save_stage("rl", {"iterations": it})
        return results
