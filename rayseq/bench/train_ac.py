"""``rayseq bench train --algo erac``: the cost of an actor-critic update against an MLE update.

On the same real Multi30k batches (paper-size actor and critic), in one process:

* **sampling**: one sample per source drawn by :class:`rayseq.rollout.RolloutSampler` (what a
  rollout worker does, on the learner's device here), rewards included;
* **ERAC update** through the RLlib ``LearnerGroup.update`` of
  :class:`rayseq.runtime.ac_learner.ActorCriticLearner` (one fused pass per network, as training
  does) on those samples;
* **MLE update** through the MLE learner (``SupervisedSeqLearner``) on the same batch: the same
  sources with the sampled sequences as targets (the same tokens, so the cost ratio is the
  algorithm's alone).

``erac_over_mle_cost`` = ERAC update time ÷ MLE update time (both learner-side; sampling is the
rollout workers' job and reported apart). ``critic_pretrain_*``: a critic-pretraining update (the
frozen actor's log π, the critic's Eq. 18 step, the target critic) on the same samples, through the
same learner — the cost that dominates the authors' schedule (20 critic epochs before joint training). The ERAC update includes its λ_mle·MLE term on the
references. Tokens/s count the sampled actions (eos included) trained on. The phase times split an ERAC update into its network
passes, each timed alone in plain torch: critic (forward + backward of Eq. 18 with the Eq. 19
target), target critic (forward), actor (forward + backward of Eq. 20 on the samples), MLE term
(forward + backward on the references). Their sum is the cost of the unfused update.
"""
from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class ACTrainBenchConfig:
    algo: str = "erac"
    batches: int = 10
    """Timed updates per side (after warm-up)."""
    warmup: int = 2
    batch_size: int = 50
    seed: int = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], n: int, device: torch.device) -> float:
    """Mean seconds of ``fn`` over ``n`` calls (device-synchronised)."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / n


def _time_learner_updates(algo, batches: list[dict], cfg: ACTrainBenchConfig, device: torch.device) -> float:
    """Mean seconds of ``algo.learner_group.update`` over the timed batches (after warm-up)."""
    from ray.rllib.core import DEFAULT_MODULE_ID
    from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch

    def update(b: dict) -> None:
        algo.learner_group.update(batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(b)}, env_steps=len(b["src"])))

    for b in batches[: cfg.warmup]:
        update(b)
    _sync(device)
    t0 = time.perf_counter()
    for b in batches[cfg.warmup :]:
        update(b)
    _sync(device)
    return (time.perf_counter() - t0) / cfg.batches


def run(cfg: ACTrainBenchConfig) -> dict:
    from envs.pairs import PairData
    from envs.seqpred import SeqPredConfig
    from envs.vector import SeqPredVectorEnv
    from rayseq.algorithms.erac import (
        ERACConfig,
        actor_objective,
        critic_loss,
        gather_actions,
        policy_log_probs,
        sharpen_log_probs,
        soft_td_target,
        soft_value,
        step_masks,
    )
    from rayseq.algorithms.mle import MLEConfig, mle_loss
    from rayseq.algorithms.supervised_rows import mle_rows
    from rayseq.config import build_run_config
    from rayseq.data.tasks import load_task
    from rayseq.models.critic import Critic, CriticConfig
    from rayseq.models.seq2seq import Seq2Seq
    from rayseq.registry import get_algorithm
    from rayseq.rollout import RolloutSampler, collate
    from rayseq.runtime.session import init_ray, quiet_known_warnings
    from rayseq.runtime.builders import build_supervised_algorithm
    from rayseq.runtime.builders import build_actor_critic_algorithm

    quiet_known_warnings()  # the plain-torch timings below build RLlib modules before Ray starts
    torch.manual_seed(cfg.seed)
    entry = get_algorithm(cfg.algo)
    ac_cfg = build_run_config(
        cfg.algo, entry.config_cls, "paper", "multi30k", [f"batch_size={cfg.batch_size}"], out=tempfile.mkdtemp(),
        num_rollout_workers=0, envs_per_worker=cfg.batch_size,
    )
    mle_cfg = build_run_config("mle", MLEConfig, "paper", "multi30k", [f"batch_size={cfg.batch_size}"], out=tempfile.mkdtemp())
    device = torch.device("cuda" if ac_cfg.resolved_num_gpus_per_learner() > 0 else "cpu")
    erac: ERACConfig = ac_cfg.algo_config
    task = load_task("multi30k")
    train = task.split("train")
    pairs = PairData(train.src, train.tgt, len(task.src_vocab), len(task.tgt_vocab), name="multi30k/train")
    s2s = ac_cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab))

    # ---------------------------------------------------------------- sampling (a rollout worker's job)
    actor = Seq2Seq(s2s).to(device)
    env = SeqPredVectorEnv(pairs, cfg.batch_size, SeqPredConfig(max_len=erac.max_sample_len, len_slack=erac.sample_len_slack))
    sampler = RolloutSampler(actor, env, seed=cfg.seed, device=device, train_mode=True)
    n_all = cfg.warmup + cfg.batches
    sampler.collect(cfg.batch_size, on_policy=True)  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    batches = [collate(sampler.collect(cfg.batch_size, on_policy=True)) for _ in range(n_all)]
    _sync(device)
    t_sample = (time.perf_counter() - t0) / n_all
    steps = [int(b["lengths"].sum() + (~b["capped"]).sum()) for b in batches]  # actions per batch
    ref_rows = [  # for the MLE term's phase: the references of the same sources
        mle_rows([list(s[: n]) for s, n in zip(b["src"], b["src_len"])], [list(r[: n]) for r, n in zip(b["ref"], b["ref_len"])])
        for b in batches
    ]
    same_rows = [  # the MLE update "on the same batch": the sampled sequences as its targets
        mle_rows([list(s[: n]) for s, n in zip(b["src"], b["src_len"])], [list(t[1 : n + 1]) for t, n in zip(b["tgt_in"], b["lengths"])])
        for b in batches
    ]
    ref_tokens = [int((r["tgt_out"] != 0).sum()) for r in ref_rows]

    # ---------------------------------------------------------------- phases, plain torch, unfused
    critic = Critic(CriticConfig.like_actor(s2s)).to(device)
    target = Critic(CriticConfig.like_actor(s2s)).to(device).requires_grad_(False)
    actor.train()
    tb = [{k: torch.as_tensor(v, device=device) for k, v in b.items()} for b in batches]
    rb = [{k: torch.as_tensor(v, device=device) for k, v in r.items()} for r in ref_rows]
    it = {"i": 0}

    def nxt() -> dict:
        it["i"] = (it["i"] + 1) % n_all
        return tb[it["i"]]

    def phase_target() -> None:
        b = nxt()
        with torch.no_grad():
            target(b["ref"], b["ref_len"], b["tgt_in"])

    def phase_critic() -> None:
        b = nxt()
        with torch.no_grad():
            logp = policy_log_probs(actor(b["src"], b["src_len"], b["tgt_in"]))
            q_bar = target(b["ref"], b["ref_len"], b["tgt_in"])
        q = critic(b["ref"], b["ref_len"], b["tgt_in"])
        mask, done = step_masks(b["lengths"], b["capped"], q.size(1))
        v_bar = soft_value(q_bar, sharpen_log_probs(logp, erac.target_temperature), erac.target_tau, mask)
        tgt = soft_td_target(b["rewards"], v_bar, done, mask)
        critic_loss(gather_actions(q, b["actions"]), tgt, q, mask, erac.lambda_var).loss.backward()

    def phase_actor() -> None:
        b = nxt()
        logits = actor(b["src"], b["src_len"], b["tgt_in"])
        mask, _ = step_masks(b["lengths"], b["capped"], logits.size(1))
        actor_objective(logits, torch.zeros_like(logits), mask, erac.tau).backward()

    def phase_mle() -> None:
        r = rb[it["i"]]
        nxt()
        mle_loss(actor(r["src"], r["src_len"], r["tgt_in"]), r["tgt_out"]).loss.backward()

    phases = {}
    for name, fn in (("critic", phase_critic), ("target_critic", phase_target), ("actor", phase_actor), ("mle_term", phase_mle)):
        _timed(fn, cfg.warmup, device)
        phases[name] = _timed(fn, cfg.batches, device)

    # ---------------------------------------------------------------- fused update, plain torch
    t_plain_erac, t_plain_mle = _plain_updates(s2s, erac, tb, [
        {k: torch.as_tensor(v, device=device) for k, v in r.items()} for r in same_rows
    ], cfg, device)

    # ---------------------------------------------------------------- fused updates through RLlib
    started = init_ray()
    try:
        algo = build_actor_critic_algorithm(ac_cfg, task)
        try:
            algo.set_stage("critic")
            t_critic = _time_learner_updates(algo, batches, cfg, device)
            algo.set_stage("joint")
            t_erac = _time_learner_updates(algo, batches, cfg, device)
        finally:
            algo.stop()
        mle_algo = build_supervised_algorithm(mle_cfg, task)
        try:
            t_mle = _time_learner_updates(mle_algo, same_rows, cfg, device)
        finally:
            mle_algo.stop()
    finally:
        if started:
            import ray

            ray.shutdown()
    timed_steps = float(np.mean(steps[cfg.warmup :]))
    timed_ref = float(np.mean(ref_tokens[cfg.warmup :]))
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "algo": cfg.algo,
        "device": device_name,
        "batch_size": cfg.batch_size,
        "updates": cfg.batches,
        "erac_tokens_per_s": timed_steps / t_erac,
        "mle_tokens_per_s": timed_steps / t_mle,
        "erac_over_mle_cost": t_erac / t_mle,
        "erac_ms_per_update": 1000 * t_erac,
        "critic_pretrain_ms_per_update": 1000 * t_critic,
        "critic_pretrain_updates_per_s": 1.0 / t_critic,
        "critic_pretrain_tokens_per_s": timed_steps / t_critic,
        "critic_pretrain_over_mle_cost": t_critic / t_mle,
        "mle_ms_per_update": 1000 * t_mle,
        "phase_ms": {
            "sampling": 1000 * t_sample,
            "critic": 1000 * phases["critic"],
            "target_critic": 1000 * phases["target_critic"],
            "actor": 1000 * phases["actor"],
            "mle_term": 1000 * phases["mle_term"],
        },
        "unfused_ms_per_update": 1000 * (phases["critic"] + phases["actor"] + phases["mle_term"]),
        "plain_torch_erac_ms_per_update": 1000 * t_plain_erac,
        "plain_torch_mle_ms_per_update": 1000 * t_plain_mle,
        "plain_torch_erac_over_mle_cost": t_plain_erac / t_plain_mle,
        "sampled_tokens_per_update": timed_steps,
        "reference_tokens_per_update": timed_ref,
        "config": asdict(cfg),
    }


def _plain_updates(s2s, erac, batches: list[dict], mle_batches: list[dict], cfg: ACTrainBenchConfig, device) -> tuple[float, float]:
    """Seconds per fused ERAC update and per MLE update (same batch) in plain torch, no RLlib.

    The ERAC update is exactly the learner's: ``ActorCriticRLModule.forward_train`` (one pass per
    network, packed steps), ``packed_losses``, one backward, per-model clipping, two Adams, Polyak.
    """
    from gymnasium import spaces

    from rayseq.algorithms.mle import mle_loss
    from rayseq.models.critic import polyak_update
    from rayseq.models.seq2seq import Seq2Seq
    from rayseq.runtime.ac_learner import (
        ActorCriticRLModule,
        clip_global_norm_,
        packed_losses,
    )

    module = ActorCriticRLModule(
        observation_space=spaces.Box(0, 1, (1,)), action_space=spaces.Discrete(s2s.tgt_vocab_size),
        model_config=asdict(s2s),
    ).to(device)
    module.stage = "joint"
    module.train()
    opt_a = torch.optim.Adam(module.actor.parameters(), lr=erac.actor_lr, betas=erac.adam_betas)
    opt_c = torch.optim.Adam(module.critic.parameters(), lr=erac.critic_lr, betas=erac.adam_betas)
    n = len(batches)

    def erac_step(i: int) -> None:
        b = batches[i % n]
        total, _ = packed_losses(module.forward_train(b), b, erac, joint=True)
        opt_a.zero_grad(set_to_none=True)
        opt_c.zero_grad(set_to_none=True)
        total.backward()
        for params in (module.actor.parameters(), module.critic.parameters()):
            clip_global_norm_([p.grad for p in params if p.grad is not None], erac.grad_clip)
        opt_a.step()
        opt_c.step()
        polyak_update(module.target_critic, module.critic, erac.beta)

    actor = Seq2Seq(s2s).to(device).train()
    opt = torch.optim.SGD(actor.parameters(), lr=0.6)

    def mle_step(i: int) -> None:
        r = mle_batches[i % n]
        loss = mle_loss(actor(r["src"], r["src_len"], r["tgt_in"]), r["tgt_out"]).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(actor.parameters(), 5.0)
        opt.step()

    out = []
    for step in (erac_step, mle_step):
        for i in range(cfg.warmup):
            step(i)
        it = iter(range(cfg.warmup, cfg.warmup + cfg.batches))
        out.append(_timed(lambda step=step, it=it: step(next(it)), cfg.batches, device))
    return out[0], out[1]
