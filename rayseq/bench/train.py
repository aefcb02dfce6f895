"""``rayseq bench train``: learner throughput through the RLlib runtime vs a plain PyTorch loop.

Both sides run the same updates (paper-size actor, SGD, grad clip 5) on the same real Multi30k
batches in the same process; the runtime side goes through ``LearnerGroup.update`` exactly as
training does. ``overhead`` = plain tokens/s ÷ runtime tokens/s (1.0 = no overhead).

``--algo vaml`` times VAML's step 2 (the actor, Eq. 17, with the frozen Q-net) on step 2's own rows
(RAML's K samples per source, their references and the per-token mix): the runtime side in stage
``actor``, the plain side the same update outside RLlib. On those same batches, interleaved update
by update so that a busy machine slows all of them alike, it also times RAML's update (weighted
NLL, Eq. 2) and VAML's with ``mix_mode="expected"`` (P_Qφ at every step: what the Q-net costs
without restricting it to the Bernoulli-mixed steps); ``vaml_step2_over_raml`` is the ratio of the
median update times (medians: a shared CPU's bursts of load skew means), ``…_cpu`` the same in
this process's CPU time (what other tenants of a shared machine disturb least).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch

from rayseq.algorithms.mle import mle_loss, sequence_nll
from rayseq.algorithms.supervised_rows import mle_rows, vaml_actor_rows
from rayseq.data.batching import bucket_batches


@dataclass
class TrainBenchConfig:
    algo: str = "mle"
    """Algorithm whose learner is timed (its objective; MLE rows, VAML: step 2's rows and update)."""
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


def _vaml_step2_vs_raml(run_cfg, task, rows: list[dict], warmup: int) -> tuple[dict, list[float]]:
    """VAML step-2 updates (Bernoulli and expected mix) and RAML updates on the same rows, plain
    torch, interleaved update by update, from the same actor initialisation. Returns the JSON keys
    and the seconds of each timed step-2 (Bernoulli mix) update."""
    import copy
    from dataclasses import asdict, replace

    from gymnasium import spaces

    from rayseq.runtime.vaml import MIX, VAMLRLModule, packed_vaml_losses

    vaml = run_cfg.algo_config
    model_config = {**asdict(run_cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab))), "qnet_target": False}
    torch.manual_seed(run_cfg.seed)
    module = VAMLRLModule(
        observation_space=spaces.Discrete(2), action_space=spaces.Discrete(len(task.tgt_vocab)), model_config=model_config
    ).train()
    module.stage = "actor"
    raml_actor, expected = copy.deepcopy(module.actor), copy.deepcopy(module)
    expected_cfg = replace(vaml, mix_mode="expected")
    opts = {name: torch.optim.SGD(list(params), lr=vaml.lr) for name, params in
            (("raml", raml_actor.parameters()), ("vaml", module.actor.parameters()), ("expected", expected.actor.parameters()))}

    def step(name: str, loss: torch.Tensor) -> None:
        opts[name].zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(opts[name].param_groups[0]["params"], vaml.grad_clip)
        opts[name].step()

    def raml_update(t: dict) -> None:  # the RAML learner's loss, Eq. (2): Σ w·NLL / Σ w
        nll = sequence_nll(raml_actor(t["src"], t["src_len"], t["tgt_in"]), t["tgt_out"])  # [N]
        step("raml", (t["weight"] * nll).sum() / t["weight"].sum())

    def vaml_update(t: dict) -> None:
        step("vaml", packed_vaml_losses(module.forward_train(t), t, vaml, "actor")[0])

    def expected_update(t: dict) -> None:
        t = {**t, MIX: torch.where(t["tgt_out"].ne(0), vaml.mix_prob, 0.0)}  # m_t = mix_prob at every real step
        step("expected", packed_vaml_losses(expected.forward_train(t), t, expected_cfg, "actor")[0])

    sides = {"raml": raml_update, "vaml": vaml_update, "expected": expected_update}
    times: dict[str, list[float]] = {name: [] for name in sides}  # wall-clock seconds per update
    cpu: dict[str, list[float]] = {name: [] for name in sides}  # this process's CPU seconds per update
    for i, r in enumerate(rows):
        t = {k: torch.from_numpy(v) for k, v in r.items()}
        for name, update in sides.items():
            t0, c0 = time.perf_counter(), time.process_time()
            update(t)
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    ms = {name: 1000 * float(np.median(v)) for name, v in times.items()}
    cpu_ms = {name: 1000 * float(np.median(v)) for name, v in cpu.items()}
    real = [r["tgt_out"] != 0 for r in rows]  # [N, T] each
    mixed = [(r[MIX] > 0) & m for r, m in zip(rows, real)]
    return {
        "vaml_step2_ms_per_update": ms["vaml"],
        "raml_ms_per_update": ms["raml"],
        "vaml_step2_over_raml": ms["vaml"] / ms["raml"],
        "vaml_step2_expected_ms_per_update": ms["expected"],
        "vaml_step2_expected_over_raml": ms["expected"] / ms["raml"],
        "vaml_step2_cpu_ms_per_update": cpu_ms["vaml"],
        "raml_cpu_ms_per_update": cpu_ms["raml"],
        "vaml_step2_over_raml_cpu": cpu_ms["vaml"] / cpu_ms["raml"],
        "qnet_step_fraction": float(sum(m.sum() for m in mixed) / sum(m.sum() for m in real)),
        "qnet_sequence_fraction": float(sum(m.any(1).sum() for m in mixed) / sum(len(m) for m in mixed)),
        "sequences_per_update": float(np.mean([len(r["src"]) for r in rows])),
        "torch_threads": torch.get_num_threads(),
    }, times["vaml"]


def run(cfg: TrainBenchConfig) -> dict:
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    from rayseq.config import build_run_config
    from rayseq.data.tasks import load_task
    from rayseq.models.seq2seq import Seq2Seq
    from rayseq.registry import get_algorithm
    from rayseq.runtime.builders import build_supervised_algorithm
    from rayseq.runtime.session import init_ray, quiet_known_warnings

    quiet_known_warnings()  # the plain-torch timings below build RLlib modules before Ray starts
    entry = get_algorithm(cfg.algo)
    run_cfg = build_run_config(
        cfg.algo, entry.config_cls, "paper", "multi30k", [f"batch_size={cfg.batch_size}"], out=tempfile.mkdtemp()
    )
    task = load_task("multi30k")
    train = task.split("train")
    idx = bucket_batches([len(y) for y in train.tgt], cfg.batch_size, seed=cfg.seed)[: cfg.warmup + cfg.batches]
    vaml = cfg.algo == "vaml"
    if vaml:  # step 2's rows: RAML's K samples per source, their references, the mix (as training draws them)
        rng = np.random.default_rng((run_cfg.seed, 0, 1))
        pairs = [([train.src[i] for i in b], [train.tgt[i] for i in b]) for b in idx]
        rows = [vaml_actor_rows(src, tgt, run_cfg.algo_config, len(task.tgt_vocab), rng) for src, tgt in pairs]
    else:
        rows = [mle_rows([train.src[i] for i in b], [train.tgt[i] for i in b]) for b in idx]
    tokens = sum(int((r["tgt_out"] != 0).sum()) for r in rows[cfg.warmup :])

    extra: dict = {}
    if vaml:
        extra, vaml_times = _vaml_step2_vs_raml(run_cfg, task, rows, cfg.warmup)
        t_plain = sum(vaml_times)
    else:
        torch.manual_seed(cfg.seed)
        model = Seq2Seq(run_cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab))).train()
        lr, clip = run_cfg.algo_config.lr, run_cfg.algo_config.grad_clip
        _plain_loop(model, rows[: cfg.warmup], lr, clip)
        t_plain = _plain_loop(model, rows[cfg.warmup :], lr, clip)

    started = init_ray()
    algo = build_supervised_algorithm(run_cfg, task)
    if vaml:
        algo.set_stage("actor")
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
        **extra,
    }
