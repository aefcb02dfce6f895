"""``rayseq train --algo ac|erac|erac-nofutent``: the paper's three-stage actor-critic pipeline.

1. **MLE stage** — the actor is MLE-pretrained: ``algo.actor_init`` names an MLE run (or actor
   file), or the run trains one itself in ``RUN_DIR/mle`` (a normal ``rayseq train --algo mle`` run
   with the same task, preset, model and seed; run-level ``epochs`` are its epochs).
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

import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayseq.actor_io import ACTOR_FILES, load_actor, resolve_actor, save_actor
from rayseq.algorithms.mle import PlateauSchedule
from rayseq.commands.evaluate import evaluate
from rayseq.config import RunConfig, build_run_config, to_dict
from rayseq.data.tasks import Task, load_task
from rayseq.errors import TrainingError
from rayseq.metrics import (
    BLEU_VALID,
    EPOCH_TIME_S,
    LR,
    TOKENS_TOTAL,
    MetricsWriter,
    plot_learning_curve,
)
from rayseq.registry import get_algorithm
from rayseq.replay import run_replay_key
from rayseq.run_dir import (
    RESULTS_JSON,
    atomic_write_json,
    prepare_run_dir,
    write_results,
)
from rayseq.train import (
    CHECKPOINT_DIR,
    _local_actor,
    _restore_checkpoint,
    _save_checkpoint,
    evaluate_test,
    train,
    validate,
)

STAGES_JSON = "stages.json"
MLE_DIR = "mle"


def _stage_updates(epochs: float, num_pairs: int, batch_size: int) -> int:
    """Updates in ``epochs`` passes over ``num_pairs`` sources at ``batch_size`` sources per update."""
    return math.ceil(epochs * num_pairs / batch_size)


def _mle_run_config(cfg: RunConfig, run_dir: Path) -> RunConfig:
    """The MLE stage: an MLE run with this run's task, preset, model, seed and run-level settings."""
    from rayseq.algorithms.mle import MLEConfig

    keep = ("epochs", "valid_beam", "valid_max_sentences", "max_decode_len", "log_every", "seed")
    overrides = [f"{k}={getattr(cfg, k)}" for k in keep]
    overrides += [f"model.{k}={v}" for k, v in asdict(cfg.model).items()]
    return build_run_config(
        "mle", MLEConfig, cfg.preset, cfg.task, overrides, out=str(run_dir / MLE_DIR), data_dir=cfg.data_dir,
        num_learners=cfg.num_learners, num_gpus_per_learner=cfg.num_gpus_per_learner,
        learner_resource=cfg.learner_resource,
    )


def _init_actor_path(spec: str) -> Path:
    path = Path(spec)
    return resolve_actor(path, "best") if path.is_dir() else path


def _check_actor(loaded: Any, cfg: RunConfig, task: Task, where: Path) -> None:
    """The MLE actor must have this run's vocabularies and shape."""
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


def _build_ac_algorithm(cfg: RunConfig, task: Task):
    from gymnasium import spaces
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from envs.pairs import PairData
    from envs.seqpred import SeqPredConfig, observation_space
    from rayseq.runtime.ac_learner import (
        ActorCriticRLModule,
        module_heads,
        needs_greedy_decode,
    )

    entry = get_algorithm(cfg.algo)
    train_split = task.split("train")
    pairs = PairData(train_split.src, train_split.tgt, len(task.src_vocab), len(task.tgt_vocab), name=f"{cfg.task}/train")
    ac = cfg.algo_config
    model_config = {**asdict(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab))), "heads": module_heads(entry.objective)}
    env_config = {"task": cfg.task, "data_dir": cfg.data_dir, "len_slack": ac.sample_len_slack, "max_len": ac.max_sample_len,
                  "greedy_baseline": needs_greedy_decode(entry.objective)}
    workers = cfg.num_rollout_workers
    rl_cfg = (
        entry.algorithm_cls()
        .get_default_config()
        .environment(
            observation_space=observation_space(pairs, SeqPredConfig(max_len=ac.max_sample_len)),
            action_space=spaces.Discrete(len(task.tgt_vocab)),
            env_config=env_config,
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=ActorCriticRLModule, model_config=model_config))
        .env_runners(
            num_env_runners=workers,
            num_envs_per_env_runner=cfg.envs_per_worker,
            num_cpus_per_env_runner=1,
            create_local_env_runner=workers == 0,
        )
        # a lost rollout worker (crash, spot reclaim) is restarted by Ray and re-synced before the next
        # request; the sync schedule re-samples its share meanwhile (ActorCriticAlgorithm._sample_sync)
        .fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=1000,
                         env_runner_health_probe_timeout_s=30.0)
        .learners(num_learners=cfg.num_learners, num_gpus_per_learner=cfg.resolved_num_gpus_per_learner(),
                  custom_resources_per_learner=cfg.custom_resources_per_learner())
        # critic pretraining gives the actor no gradient: DDP (num_learners > 1) must allow that
        .framework(torch_ddp_kwargs={"find_unused_parameters": True})
        .debugging(seed=cfg.seed)
    )
    rl_cfg.objective_config, rl_cfg.algo_name = asdict(ac), cfg.algo
    rl_cfg.task, rl_cfg.data_dir, rl_cfg.seed, rl_cfg.log_every = cfg.task, cfg.data_dir, cfg.seed, cfg.log_every
    rl_cfg.schedule, rl_cfg.replay_capacity, rl_cfg.replay_ratio = ac.schedule, ac.replay_capacity, ac.replay_ratio
    rl_cfg.weights_sync_every = ac.weights_sync_every
    rl_cfg.replay_key = run_replay_key(cfg.out)
    rl_cfg.show_progress = sys.stderr.isatty()
    return rl_cfg.build_algo()


def _check_finite(records: list[dict[str, Any]], run_dir: Path, stage: str) -> None:
    for rec in records:
        for key, value in rec.items():
            if isinstance(value, float) and not math.isfinite(value):
                raise TrainingError(
                    f"{key} is {value} at update {rec['step']} ({stage} stage); training stopped. Last good "
                    f"checkpoint: {run_dir / CHECKPOINT_DIR}; resume it with --resume {run_dir} and a smaller "
                    f"learning rate (algo.actor_lr / algo.critic_lr)."
                )


def _mle_stage(cfg: RunConfig, run_dir: Path, task: Task, progress: dict[str, Any], resume: bool, address: str | None) -> dict[str, Any]:
    """Returns ``{"actor": path, "test": {...}, "bleu/valid": float}`` of the MLE actor."""
    if "mle" in progress:
        return progress["mle"]
    ac = cfg.algo_config
    if ac.actor_init:
        path = _init_actor_path(ac.actor_init)
        loaded = load_actor(path)
        _check_actor(loaded, cfg, task, path)
        results_file = path.parent / RESULTS_JSON
        if results_file.is_file():
            prev = json.loads(results_file.read_text(encoding="utf-8"))
            test, valid = prev.get("test", {}), prev.get(BLEU_VALID)
        else:
            test = evaluate(path.parent, split="test", beam=cfg.valid_beam, max_len=cfg.max_decode_len,
                            data_dir=cfg.data_dir, progress=False)
            valid = loaded.meta.get(BLEU_VALID)
        out = {"actor": str(path), "test": test, BLEU_VALID: valid, "source": "actor_init"}
    else:
        mle_cfg = _mle_run_config(cfg, run_dir)
        mle_dir = run_dir / MLE_DIR
        print(f"[mle stage] training the actor by MLE in {mle_dir} ({mle_cfg.epochs} epochs)", file=sys.stderr, flush=True)
        res = train(mle_cfg, resume=resume and (mle_dir / CHECKPOINT_DIR).is_dir(), address=address)
        out = {"actor": str(resolve_actor(mle_dir, "best")), "test": res["test"], BLEU_VALID: res[BLEU_VALID],
               "source": "mle stage", "wall_time_s": res["wall_time_s"]}
    progress["mle"] = out
    atomic_write_json(run_dir / STAGES_JSON, progress)
    return out


def start_from_mle(
    cfg: RunConfig, resume: bool, address: str | None
) -> tuple[Path, Task, dict[str, Any], dict[str, Any], bool]:
    """The common start of the drivers that begin from an MLE actor: the run dir, the task, the
    stages done (``stages.json``), the MLE stage (``{"actor", "test", …}``), seeds, and Ray (True
    when this call started it)."""
    from rayseq.runtime.session import init_ray

    run_dir = prepare_run_dir(cfg.out, to_dict(cfg), resume)
    task = load_task(cfg.task, cfg.data_dir)
    progress: dict[str, Any] = {}
    if resume and (run_dir / STAGES_JSON).is_file():
        progress = json.loads((run_dir / STAGES_JSON).read_text(encoding="utf-8"))
    mle = _mle_stage(cfg, run_dir, task, progress, resume, address)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    return run_dir, task, progress, mle, init_ray(address)


def train_actor_critic(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) the MLE → critic → joint pipeline; returns the contents of ``results.json``."""
    t_start = time.monotonic()
    run_dir, task, _, mle, started_ray = start_from_mle(cfg, resume, address)
    ac = cfg.algo_config
    num_pairs = len(task.split("train"))
    algo = _build_ac_algorithm(cfg, task)
    meta = {"algo": cfg.algo, "task": cfg.task, "run_dir": str(run_dir)}
    try:
        state = _restore_checkpoint(algo, run_dir) if resume else {}
        if not state:
            algo.load_actor(load_actor(mle["actor"]).model.state_dict())
        step = int(state.get("step", 0))
        writer = MetricsWriter(run_dir, resume_from_step=step if resume else None)
        try:
            per_epoch = num_pairs / ac.batch_size
            # ---------------------------------------------------------------- critic pretraining
            n_critic = _stage_updates(ac.critic_pretrain_epochs, num_pairs, ac.batch_size)
            chunk = ac.valid_every or max(1, round(per_epoch))
            done_c = int(state.get("critic_updates", 0))
            if done_c < n_critic:
                algo.set_stage("critic")
                print(f"[critic stage] {n_critic - done_c} updates of critic pretraining (actor frozen)", file=sys.stderr, flush=True)
            while done_c < n_critic:
                t0 = time.perf_counter()
                n = _train_chunk(algo, min(chunk, n_critic - done_c), writer, run_dir, "critic", per_epoch)
                done_c += n
                step += n
                writer.log(step, step / per_epoch, {EPOCH_TIME_S: time.perf_counter() - t0})
                _save_checkpoint(algo, run_dir, {"step": step, "critic_updates": done_c, "joint_updates": 0})
                plot_learning_curve(run_dir / "metrics.jsonl", run_dir / "curve.png", title=f"{cfg.algo} on {cfg.task}")
            # ---------------------------------------------------------------- joint training
            n_joint = _stage_updates(ac.joint_epochs, num_pairs, ac.batch_size)
            done_j = int(state.get("joint_updates", 0))
            schedule = PlateauSchedule(lr=ac.actor_lr, decay=ac.actor_lr_decay, max_decays=ac.max_lr_decays)
            collapsed = bool(state.get("collapsed", False))
            start_bleu = state.get("start_bleu")
            best_step = state.get("best_step")
            if "schedule" in state:
                schedule.load_state_dict(state["schedule"])
            algo.set_stage("joint")
            algo.set_lr(schedule.lr)
            if start_bleu is None:
                model = _local_actor(algo, cfg, task)
                start_bleu = validate(model, task, cfg)
                schedule.step(start_bleu)
                best_step = step
                save_actor(run_dir / ACTOR_FILES["best"], model, task.src_vocab, task.tgt_vocab, {**meta, "step": step, BLEU_VALID: start_bleu})
                writer.log(step, step / per_epoch, {BLEU_VALID: start_bleu, LR: schedule.lr, TOKENS_TOTAL: float(algo.tokens_total)})
                print(f"[joint stage] start: valid BLEU {start_bleu:.2f} (the MLE actor); {n_joint} updates at most",
                      file=sys.stderr, flush=True)
            while done_j < n_joint and not schedule.should_stop and not collapsed:
                t0 = time.perf_counter()
                n = _train_chunk(algo, min(chunk, n_joint - done_j), writer, run_dir, "joint", per_epoch)
                done_j += n
                step += n
                model = _local_actor(algo, cfg, task)
                bleu = validate(model, task, cfg)
                improved = schedule.step(bleu)
                if improved:
                    best_step = step
                    save_actor(run_dir / ACTOR_FILES["best"], model, task.src_vocab, task.tgt_vocab, {**meta, "step": step, BLEU_VALID: bleu})
                save_actor(run_dir / ACTOR_FILES["latest"], model, task.src_vocab, task.tgt_vocab, {**meta, "step": step, BLEU_VALID: bleu})
                algo.set_lr(schedule.lr)
                writer.log(step, step / per_epoch, {BLEU_VALID: bleu, LR: schedule.lr, EPOCH_TIME_S: time.perf_counter() - t0,
                                                    TOKENS_TOTAL: float(algo.tokens_total)})
                msg = f"[joint stage] update {done_j}/{n_joint}: valid BLEU {bleu:.2f} (start {start_bleu:.2f}, best {schedule.best:.2f}), actor lr {schedule.lr:g}"
                if bleu < start_bleu - ac.collapse_margin:
                    collapsed = True
                    msg += (f"\n[joint stage] COLLAPSE: validation BLEU fell {start_bleu - bleu:.1f} points below the start "
                            f"(collapse_margin {ac.collapse_margin}); joint training stopped, the best actor (step {best_step}) is kept.")
                print(msg, file=sys.stderr, flush=True)
                _save_checkpoint(algo, run_dir, {
                    "step": step, "critic_updates": done_c, "joint_updates": done_j, "schedule": schedule.state_dict(),
                    "start_bleu": start_bleu, "best_step": best_step, "collapsed": collapsed,
                })
                plot_learning_curve(run_dir / "metrics.jsonl", run_dir / "curve.png", title=f"{cfg.algo} on {cfg.task}")
            test = evaluate_test(run_dir, cfg, writer, step, step / per_epoch)
        finally:
            writer.close()
        results = {
            "algo": cfg.algo,
            "task": cfg.task,
            "preset": cfg.preset,
            "updates": step,
            "critic_updates": done_c,
            "joint_updates": done_j,
            "best_step": best_step,
            "collapsed": collapsed,
            "start_bleu_valid": start_bleu,
            BLEU_VALID: schedule.best,
            "test": test,
            "mle": mle,
            "wall_time_s": time.monotonic() - t_start,
        }
        write_results(run_dir, results)
        return results
    finally:
        algo.stop()
        if started_ray:
            import ray

            ray.shutdown()


def _train_chunk(algo: Any, n: int, writer: MetricsWriter, run_dir: Path, stage: str, per_epoch: float) -> int:
    """``n`` learner updates (one ``algo.train()``); their records checked for NaN/inf and logged."""
    algo.updates_per_iteration = n
    algo.train()
    records = algo.pop_train_log()
    _check_finite(records, run_dir, stage)
    _log_records(writer, records, per_epoch)
    return n


def _log_records(writer: MetricsWriter, records: list[dict[str, Any]], per_epoch: float) -> None:
    """Training records of the algorithm; x = update count, epoch = updates / (updates per epoch)."""
    for rec in records:
        rec = dict(rec)
        rec.pop("stage", None)
        step = rec.pop("step")
        writer.log(step, step / per_epoch, rec)
