"""``rayseq train``: one driver loop for every algorithm.

Per epoch: the algorithm's ``train()`` (RLlib learners do the updates), then validation BLEU of
the actor on the driver, the lr schedule, checkpoints (RLlib algorithm state + the plain actor
file, latest and best), metrics (``metrics.jsonl``, TensorBoard) and the learning-curve PNG. At
the end the best actor is evaluated on the test split (``results.json``). ``--resume`` continues
from the latest checkpoint: same step counter, same schedule, same data order.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayseq.actor_io import ACTOR_FILES, save_actor
from rayseq.algorithms.mle import PlateauSchedule
from rayseq.commands.evaluate import evaluate
from rayseq.commands.translate import translate_ids
from rayseq.config import RunConfig, to_dict
from rayseq.data.tasks import Task, load_task
from rayseq.errors import TrainingError
from rayseq.evaluation import corpus_bleu_ids
from rayseq.metrics import (
    BLEU_TEST,
    BLEU_VALID,
    EPOCH_TIME_S,
    LOSS_ACTOR,
    LR,
    TOKENS_PER_S,
    TOKENS_TOTAL,
    MetricsWriter,
    plot_learning_curve,
)
from rayseq.models.seq2seq import Seq2Seq
from rayseq.registry import get_algorithm
from rayseq.run_dir import atomic_write_json, prepare_run_dir, write_results

CHECKPOINT_DIR = "checkpoint"
TRAINER_STATE = "trainer_state.json"


def validate(model: Seq2Seq, task: Task, cfg: RunConfig, split: str = "valid") -> float:
    """Corpus BLEU (paper style, token ids) of the actor on ``split`` (first N sentences if set)."""
    corpus = task.split(split)
    n = len(corpus) if cfg.valid_max_sentences is None or split != "valid" else min(cfg.valid_max_sentences, len(corpus))
    model.eval()
    hyps = translate_ids(model, corpus.src[:n], beam=cfg.valid_beam, max_len=cfg.max_decode_len, desc=f"{split} BLEU")
    if hasattr(corpus, "refs"):  # captioning: multi-reference BLEU-4 as coco-caption computes it
        from rayseq.evaluation_coco import coco_bleu

        itos = task.tgt_vocab.itos
        return float(coco_bleu([[itos[t] for t in h] for h in hyps], corpus.refs[:n])["bleu_4"])
    return float(corpus_bleu_ids(hyps, [[r] for r in corpus.tgt[:n]])["bleu"])


def _build_algorithm(cfg: RunConfig, task: Task):
    from gymnasium import spaces
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from envs.pairs import PairData
    from envs.seqpred import SeqPredConfig, observation_space
    entry = get_algorithm(cfg.algo)
    train = task.split("train")
    pairs = PairData(train.src, train.tgt, len(task.src_vocab), len(task.tgt_vocab), name=f"{cfg.task}/train")
    model_config = asdict(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab)))
    algo_cls = entry.algorithm_cls()
    default_cfg = algo_cls.get_default_config()
    module_class = default_cfg.get_default_rl_module_spec().module_class  # ActorRLModule, VAMLRLModule
    model_config.update(default_cfg.module_extras(cfg.algo_config))
    rl_cfg = (
        default_cfg
        .environment(
            observation_space=observation_space(pairs, SeqPredConfig()),
            action_space=spaces.Discrete(len(task.tgt_vocab)),
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module_class, model_config=model_config))
        .learners(num_learners=cfg.num_learners, num_gpus_per_learner=cfg.resolved_num_gpus_per_learner(),
                  custom_resources_per_learner=cfg.custom_resources_per_learner())
        .debugging(seed=cfg.seed)
    )
    rl_cfg.lr = cfg.algo_config.lr
    rl_cfg.grad_clip = cfg.algo_config.grad_clip
    rl_cfg.objective = entry.objective
    rl_cfg.objective_config = asdict(cfg.algo_config)
    rl_cfg.task, rl_cfg.data_dir = cfg.task, cfg.data_dir
    rl_cfg.batch_size, rl_cfg.seed, rl_cfg.log_every = cfg.batch_size, cfg.seed, cfg.log_every
    rl_cfg.show_progress = sys.stderr.isatty()
    return rl_cfg.build_algo()


def _local_actor(algo: Any, cfg: RunConfig, task: Task) -> Seq2Seq:
    model = Seq2Seq(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab)))
    model.load_state_dict({k: torch.tensor(v) for k, v in algo.actor_state_dict().items()})  # copies (read-only arrays)
    return model.eval()


def _save_checkpoint(algo: Any, run_dir: Path, state: dict[str, Any]) -> None:
    """RLlib state + trainer state, replacing the previous checkpoint only once complete."""
    tmp = run_dir / f".{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp.resolve()))
    atomic_write_json(tmp / TRAINER_STATE, state)
    final, old = run_dir / CHECKPOINT_DIR, run_dir / f".{CHECKPOINT_DIR}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)  # stale: `final` is the last good checkpoint
        os.replace(final, old)
    # else `old` (if any) is the last good checkpoint (a kill between the renames): keep it until `final` exists
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def _restore_checkpoint(algo: Any, run_dir: Path) -> dict[str, Any]:
    ckpt = run_dir / CHECKPOINT_DIR
    if not ckpt.is_dir() and (run_dir / f".{CHECKPOINT_DIR}.old").is_dir():
        ckpt = run_dir / f".{CHECKPOINT_DIR}.old"  # killed between the two renames
    if not ckpt.is_dir():
        return {}
    algo.restore_from_path(str(ckpt.resolve()))
    return json.loads((ckpt / TRAINER_STATE).read_text(encoding="utf-8"))


def evaluate_test(run_dir: Path, cfg: RunConfig, writer: MetricsWriter, step: int, epoch: float) -> dict[str, Any]:
    """The end of every driver: the best actor on the test split, logged as ``bleu/test``, the curve redrawn."""
    test = evaluate(run_dir, split="test", beam=cfg.valid_beam, max_len=cfg.max_decode_len, data_dir=cfg.data_dir, progress=False)
    writer.log(step, epoch, {BLEU_TEST: test["bleu"]})
    plot_learning_curve(run_dir / "metrics.jsonl", run_dir / "curve.png", title=f"{cfg.algo} on {cfg.task}")
    return test


def train(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the contents of ``results.json``."""
    from rayseq.registry import ACTOR_CRITIC, SWAPIN
    from rayseq.runtime.session import init_ray

    if get_algorithm(cfg.algo).kind == ACTOR_CRITIC:
        from rayseq.train_ac import train_actor_critic

        return train_actor_critic(cfg, resume=resume, address=address)
    if get_algorithm(cfg.algo).kind == SWAPIN:
        from rayseq.train_swapin import train_swapin

        return train_swapin(cfg, resume=resume, address=address)

    t_start = time.monotonic()
    run_dir = prepare_run_dir(cfg.out, to_dict(cfg), resume)
    task = load_task(cfg.task, cfg.data_dir)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    started_ray = init_ray(address)
    algo = _build_algorithm(cfg, task)
    try:
        state = _restore_checkpoint(algo, run_dir) if resume else {}
        schedule = PlateauSchedule(lr=cfg.algo_config.lr, decay=cfg.algo_config.lr_decay, max_decays=cfg.algo_config.max_decays)
        if state:
            schedule.load_state_dict(state["schedule"])
            algo.set_lr(schedule.lr)
        epoch, step = int(state.get("epoch", 0)), int(state.get("step", 0))
        best_epoch = state.get("best_epoch")
        writer = MetricsWriter(run_dir, resume_from_step=step if resume else None)
        meta = {"algo": cfg.algo, "task": cfg.task, "run_dir": str(run_dir)}
        extra: dict[str, Any] = {}  # stage summaries kept in every checkpoint (VAML's Q-net)
        try:
            if hasattr(algo, "train_qnet"):  # VAML step 1, before the actor epochs
                from rayseq.train_vaml import qnet_stage

                extra["qnet"] = qnet_stage(
                    algo, cfg, task, run_dir, writer, state, lambda st: _save_checkpoint(algo, run_dir, {**st, "schedule": schedule.state_dict()})
                )
                step = int(algo.num_updates)
            while epoch < cfg.epochs and not schedule.should_stop:
                t0 = time.perf_counter()
                result = algo.train()
                for rec in algo.pop_train_log():
                    if not np.isfinite(rec[LOSS_ACTOR]):
                        raise TrainingError(
                            f"{LOSS_ACTOR} is {rec[LOSS_ACTOR]} at step {rec['step']} (epoch {epoch + 1}); "
                            f"training stopped. Last good checkpoint: {run_dir / CHECKPOINT_DIR} "
                            f"(epoch {epoch}); resume with a smaller lr (algo.lr=...)."
                        )
                    writer.log(rec.pop("step"), rec.pop("epoch"), rec)
                epoch += 1
                step = int(algo.num_updates)
                model = _local_actor(algo, cfg, task)
                bleu = validate(model, task, cfg)
                improved = schedule.step(bleu)
                if improved:
                    best_epoch = epoch
                    save_actor(run_dir / ACTOR_FILES["best"], model, task.src_vocab, task.tgt_vocab, {**meta, "epoch": epoch, BLEU_VALID: bleu})
                save_actor(run_dir / ACTOR_FILES["latest"], model, task.src_vocab, task.tgt_vocab, {**meta, "epoch": epoch, BLEU_VALID: bleu})
                algo.set_lr(schedule.lr)
                writer.log(
                    step,
                    epoch,
                    {
                        BLEU_VALID: bleu,
                        LR: schedule.lr,
                        TOKENS_PER_S: float(result.get(TOKENS_PER_S, 0.0)),
                        TOKENS_TOTAL: float(algo.tokens_total),
                        EPOCH_TIME_S: time.perf_counter() - t0,
                    },
                )
                _save_checkpoint(algo, run_dir, {"epoch": epoch, "step": step, "schedule": schedule.state_dict(), "best_epoch": best_epoch, **extra})
                plot_learning_curve(run_dir / "metrics.jsonl", run_dir / "curve.png", title=f"{cfg.algo} on {cfg.task}")
                print(
                    f"epoch {epoch}: valid BLEU {bleu:.2f} (best {schedule.best:.2f}, epoch {best_epoch}), lr {schedule.lr:g}",
                    file=sys.stderr,
                    flush=True,
                )
            test = evaluate_test(run_dir, cfg, writer, step, epoch)
        finally:
            writer.close()
        results = {
            "algo": cfg.algo,
            "task": cfg.task,
            "preset": cfg.preset,
            "epochs": epoch,
            "updates": step,
            "best_epoch": best_epoch,
            BLEU_VALID: schedule.best,
            "test": test,
            **extra,
            "wall_time_s": time.monotonic() - t_start,
        }
        write_results(run_dir, results)
        return results
    finally:
        algo.stop()
        if started_ray:
            import ray

            ray.shutdown()
