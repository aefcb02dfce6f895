"""``rayseq train --algo ppo|appo|sac``: RLlib's own algorithms on the sequence MDP (swap-ins).

1. **MLE stage** — the same as ERAC's (``rayseq.train_ac._mle_stage``): ``algo.actor_init`` names
   an MLE run or actor file, or the run trains one in ``RUN_DIR/mle``.
2. **RL stage** — RLlib's PPO / APPO / SAC (``rayseq.runtime.swapin_algorithm``), its policy the
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
import sys
import time
from pathlib import Path
from typing import Any

import torch

from rayseq.actor_io import ACTOR_FILES, save_actor
from rayseq.config import RunConfig
from rayseq.data.tasks import Task
from rayseq.errors import TrainingError
from rayseq.metrics import (
    BLEU_VALID,
    ENTROPY,
    EPOCH_TIME_S,
    LOSS_ACTOR,
    LOSS_CRITIC_TD,
    LOSS_VALUE,
    TOKENS_PER_S,
    TOKENS_TOTAL,
    MetricsWriter,
    plot_learning_curve,
)
from rayseq.models.seq2seq import Seq2Seq
from rayseq.run_dir import atomic_write_json, write_results
from rayseq.train import (
    CHECKPOINT_DIR,
    _restore_checkpoint,
    _save_checkpoint,
    evaluate_test,
    validate,
)
from rayseq.train_ac import STAGES_JSON, start_from_mle

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


def _actor(algo: Any, cfg: RunConfig, task: Task) -> Seq2Seq:
    from rayseq.runtime.swapin_algorithm import actor_state

    model = Seq2Seq(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab)))
    model.load_state_dict({k: torch.tensor(v) for k, v in actor_state(algo).items()})
    return model.eval()


def _check_finite(rec: dict[str, float], it: int, run_dir: Path) -> None:
    for key, value in rec.items():
        if not math.isfinite(value):
            raise TrainingError(
                f"{key} is {value} at iteration {it}; training stopped. Last good checkpoint: "
                f"{run_dir / CHECKPOINT_DIR}; resume with --resume {run_dir} and a smaller learning rate "
                f"(algo.lr, or algo.actor_lr / algo.critic_lr for sac)."
            )


def train_swapin(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) MLE stage → RLlib PPO/APPO/SAC; returns the contents of ``results.json``."""
    from rayseq.runtime.swapin_algorithm import build_swapin_algorithm

    t_start = time.monotonic()
    run_dir, task, progress, mle, started_ray = start_from_mle(cfg, resume, address)
    sw = cfg.algo_config
    num_pairs = len(task.split("train"))
    algo = build_swapin_algorithm(cfg, task, mle["actor"])
    meta = {"algo": cfg.algo, "task": cfg.task, "run_dir": str(run_dir)}
    try:
        state = _restore_checkpoint(algo, run_dir) if resume else {}
        it = int(state.get("iteration", 0))
        episodes = float(state.get("episodes", 0.0))
        writer = MetricsWriter(run_dir, resume_from_step=it if resume else None)
        try:
            start_bleu, best, best_it = state.get("start_bleu"), state.get("best_bleu"), state.get("best_iteration")
            if start_bleu is None:
                model = _actor(algo, cfg, task)
                start_bleu = best = validate(model, task, cfg)
                best_it = 0
                save_actor(run_dir / ACTOR_FILES["best"], model, task.src_vocab, task.tgt_vocab, {**meta, "step": 0, BLEU_VALID: best})
                writer.log(0, 0.0, {BLEU_VALID: start_bleu, SAMPLED_TOKENS: 0.0})
                print(f"[{cfg.algo}] start: valid BLEU {start_bleu:.2f} (the MLE actor); {sw.iterations} iterations",
                      file=sys.stderr, flush=True)
            t_chunk = time.perf_counter()
            while it < sw.iterations:
                t0 = time.perf_counter()
                result = algo.train()
                it += 1
                rec = iteration_record(result, time.perf_counter() - t0)
                _check_finite(rec, it, run_dir)
                episodes += float(result.get("env_runners", {}).get("num_episodes", 0) or 0)
                writer.log(it, episodes / num_pairs, rec)
                if it % sw.valid_every_iters and it < sw.iterations:
                    continue
                model = _actor(algo, cfg, task)
                bleu = validate(model, task, cfg)
                if bleu > best:
                    best, best_it = bleu, it
                    save_actor(run_dir / ACTOR_FILES["best"], model, task.src_vocab, task.tgt_vocab, {**meta, "step": it, BLEU_VALID: bleu})
                save_actor(run_dir / ACTOR_FILES["latest"], model, task.src_vocab, task.tgt_vocab, {**meta, "step": it, BLEU_VALID: bleu})
                writer.log(it, episodes / num_pairs, {BLEU_VALID: bleu, EPOCH_TIME_S: time.perf_counter() - t_chunk,
                                                      SAMPLED_TOKENS: rec.get(SAMPLED_TOKENS, 0.0)})
                print(f"[{cfg.algo}] iteration {it}/{sw.iterations}: valid BLEU {bleu:.2f} (start {start_bleu:.2f}, "
                      f"best {best:.2f} at {best_it}); {', '.join(f'{k} {v:.3g}' for k, v in rec.items())}",
                      file=sys.stderr, flush=True)
                _save_checkpoint(algo, run_dir, {"iteration": it, "episodes": episodes, "start_bleu": start_bleu,
                                                 "best_bleu": best, "best_iteration": best_it})
                plot_learning_curve(run_dir / "metrics.jsonl", run_dir / "curve.png", title=f"{cfg.algo} on {cfg.task}")
                t_chunk = time.perf_counter()
            test = evaluate_test(run_dir, cfg, writer, it, episodes / num_pairs)
        finally:
            writer.close()
        results = {
            "algo": cfg.algo,
            "task": cfg.task,
            "preset": cfg.preset,
            "iterations": it,
            "episodes": episodes,
            "best_step": best_it,
            "start_bleu_valid": start_bleu,
            BLEU_VALID: best,
            "test": test,
            "mle": mle,
            "wall_time_s": time.monotonic() - t_start,
        }
        write_results(run_dir, results)
        progress["rl"] = {"iterations": it}
        atomic_write_json(run_dir / STAGES_JSON, progress)
        return results
    finally:
        algo.stop()
        if started_ray:
            import ray

            ray.shutdown()
