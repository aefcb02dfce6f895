"""``rayseq bench train``: learner throughput through the RLlib runtime vs a plain PyTorch loop.

Both sides run the same updates (paper-size actor, SGD, grad clip 5) on the same real Multi30k
batches in the same process; the runtime side goes through ``LearnerGroup.update`` exactly as
training does. ``overhead`` = plain tokens/s ÷ runtime tokens/s (1.0 = no overhead).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from rayseq.algorithms.mle import mle_loss
from rayseq.algorithms.supervised_rows import mle_rows
from rayseq.data.batching import bucket_batches


@dataclass
class TrainBenchConfig:
    algo: str = "mle"
    """Algorithm whose learner is timed (its objective; MLE rows)."""
    batches: int = 20
    """Timed updates per side (after warm-up)."""
    warmup: int = 2
    """Untimed updates per side first."""
    batch_size: int = 50
    """Sentence pairs per update (the paper's MLE batch)."""
    seed: int = 0


def _plain_loop(model: torch.nn.Module, rows: list[dict], lr: float, clip: float) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    t0 = time.perf_counter()
    for r in rows:
        t = {k: torch.from_numpy(v) for k, v in r.items()}
        loss = mle_loss(model(t["src"], t["src_len"], t["tgt_in"]), t["tgt_out"]).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return time.perf_counter() - t0


def run(cfg: TrainBenchConfig) -> dict:
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    from rayseq.config import build_run_config
    from rayseq.data.tasks import load_task
    from rayseq.models.seq2seq import Seq2Seq
    from rayseq.registry import get_algorithm
    from rayseq.runtime.session import init_ray
    from rayseq.train import _build_algorithm

    entry = get_algorithm(cfg.algo)
    run_cfg = build_run_config(
        cfg.algo, entry.config_cls, "paper", "multi30k", [f"batch_size={cfg.batch_size}"], out=tempfile.mkdtemp()
    )
    task = load_task("multi30k")
    train = task.split("train")
    idx = bucket_batches([len(y) for y in train.tgt], cfg.batch_size, seed=cfg.seed)[: cfg.warmup + cfg.batches]
    rows = [mle_rows([train.src[i] for i in b], [train.tgt[i] for i in b]) for b in idx]
    tokens = sum(int((r["tgt_out"] != 0).sum()) for r in rows[cfg.warmup :])

    torch.manual_seed(cfg.seed)
    model = Seq2Seq(run_cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab))).train()
    lr, clip = run_cfg.algo_config.lr, run_cfg.algo_config.grad_clip
    _plain_loop(model, rows[: cfg.warmup], lr, clip)
    t_plain = _plain_loop(model, rows[cfg.warmup :], lr, clip)

    started = init_ray()
    algo = _build_algorithm(run_cfg, task)
    try:
        def update(r: dict) -> None:
            algo.learner_group.update(batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(r)}, env_steps=len(r["src"])))

        for r in rows[: cfg.warmup]:
            update(r)
        t0 = time.perf_counter()
        for r in rows[cfg.warmup :]:
            update(r)
        t_runtime = time.perf_counter() - t0
    finally:
        algo.stop()
        if started:
            import ray

            ray.shutdown()
    return {
        "algo": cfg.algo,
        "device": "cuda" if run_cfg.resolved_num_gpus_per_learner() > 0 else "cpu",
        "batch_size": cfg.batch_size,
        "updates": cfg.batches,
        "target_tokens": tokens,
        "learner_tokens_per_s": tokens / t_runtime,
        "plain_torch_tokens_per_s": tokens / t_plain,
        "runtime_ms_per_update": 1000 * t_runtime / cfg.batches,
        "plain_ms_per_update": 1000 * t_plain / cfg.batches,
        "overhead": t_runtime / t_plain,
        "mean_target_tokens_per_update": float(np.mean([(r["tgt_out"] != 0).sum() for r in rows])),
    }
