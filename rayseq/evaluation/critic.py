"""Score a critic (ERAC/AC) or a Q-net (VAML) on held-out data with ``rayseq.algorithms.critic_metrics``.

* :func:`score_critic` — an actor-critic's critic Q_φ against its actor π_θ: samples from the actor
  on the first ``n_sentences`` sources (the training samples' length cap, BLEU-increment rewards
  of ``envs.rewards`` through ``erac.token_rewards``), then the held-out TD error against the
  critic's own soft Bellman backup (Eq. 19), the rank correlation of Q with the Monte-Carlo soft
  return, the entropy of softmax(Q/τ) on the sampled states, and on the reference prefixes the
  top-1 / top-5 accuracy and the eos margin.
* :func:`score_qnet` — VAML's Q-net, which has no actor: reference prefixes only (top-1 / top-5,
  entropy of P_Qφ = softmax(Q/τ) of Eq. 17, eos margin).

Both return ``{metric name: float}`` under the shared names of ``rayseq.metrics``
(:data:`CRITIC_METRICS` says what each one is), put the models in eval mode while scoring and
restore their modes afterwards. Plain torch/numpy; no ray.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch

from rayseq.algorithms.critic_metrics import (
    boltzmann_entropy,
    early_eos_pull,
    eos_margin,
    mc_rank_correlation,
    soft_returns,
    td_error_per_token,
    topk_accuracy,
)
from rayseq.algorithms.erac import (
    ENTROPY_HORIZONS,
    capped_at,
    gather_actions,
    policy_log_probs,
    reference_horizon,
    sharpen_log_probs,
    soft_value,
    step_masks,
    token_rewards,
)
from rayseq.data.batching import pad_batch
from rayseq.decoding import BANNED_TOKENS, sample, teacher_forcing_io
from rayseq.metrics import (
    CRITIC_EARLY_EOS_PULL,
    CRITIC_EARLY_EOS_PULL_POSITIVE,
    CRITIC_EOS_MARGIN,
    CRITIC_EOS_MARGIN_POSITIVE,
    CRITIC_MC_RANK_CORR,
    CRITIC_TARGET_ENTROPY,
    CRITIC_TOP1_ACC,
    CRITIC_TOP5_ACC,
    CRITIC_VALID_TD,
    METRIC_NAMES,
)
from rayseq.models.base import EOS, PAD
from rayseq.models.critic import Critic
from rayseq.models.seq2seq import Seq2Seq

CRITIC_METRICS: dict[str, str] = {k: METRIC_NAMES[k] for k in (
    CRITIC_VALID_TD, CRITIC_TOP1_ACC, CRITIC_TOP5_ACC, CRITIC_MC_RANK_CORR, CRITIC_TARGET_ENTROPY,
    CRITIC_EOS_MARGIN, CRITIC_EOS_MARGIN_POSITIVE, CRITIC_EARLY_EOS_PULL, CRITIC_EARLY_EOS_PULL_POSITIVE,
)}
"""What each key of :func:`score_critic` / :func:`score_qnet` measures."""


class SplitLike(Protocol):
    """A data split: parallel lists of source and reference token ids (``ParallelCorpus``)."""

    src: Sequence[np.ndarray]
    tgt: Sequence[np.ndarray]


Data = SplitLike | tuple[Sequence[np.ndarray], Sequence[np.ndarray]]


def _pairs(data: Data, n_sentences: int, fn: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The first ``n_sentences`` (source, reference) pairs of ``data``."""
    if not (isinstance(n_sentences, int) and n_sentences >= 1):
        raise ValueError(f"{fn}: n_sentences={n_sentences!r} must be an int >= 1.")
    if isinstance(data, tuple):
        if len(data) != 2:
            raise ValueError(f"{fn}: data as a tuple must be (sources, references); got {len(data)} items.")
        srcs, refs = data
    elif hasattr(data, "src") and hasattr(data, "tgt"):
        srcs, refs = data.src, data.tgt
    else:
        raise TypeError(
            f"{fn}: data is a {type(data).__name__}; pass a split (task.split('valid')) or a "
            f"(sources, references) tuple of token-id arrays."
        )
    if len(srcs) != len(refs):
        raise ValueError(f"{fn}: {len(srcs)} sources but {len(refs)} references.")
    if len(refs) == 0:
        raise ValueError(f"{fn}: the data has no sentences.")
    n = min(n_sentences, len(refs))
    refs_out = [np.asarray(y, dtype=np.int64).reshape(-1) for y in refs[:n]]
    empty = [i for i, y in enumerate(refs_out) if y.size == 0]
    if empty:
        raise ValueError(f"{fn}: reference {empty[0]} is empty; every reference needs >= 1 token.")
    return [np.asarray(x) for x in srcs[:n]], refs_out


class _Mean:
    """Running mean of per-batch means, weighted by their counts (NaN-mean batches skipped)."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, mean: torch.Tensor | float, count: torch.Tensor | int) -> None:
        c = int(count)
        if c > 0:
            self.total += float(mean) * c
            self.count += c

    @property
    def value(self) -> float:
        return self.total / self.count if self.count else float("nan")


def _reference_checks(
    critic: Critic,
    ref: torch.Tensor,  # [B, R]
    ref_len: torch.Tensor,  # [B]
    exclude: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q on the reference prefixes: ``(q [B, R + 1, V], next tokens [B, R + 1], mask [B, R + 1])``.

    Decoder input ``<bos> y*``; position t = state y*_1..t, next token y*_{t+1}, eos at t = |y*|.
    """
    tgt_in, next_tokens = teacher_forcing_io(ref, ref_len)  # [B, R + 1] each
    q = critic(ref, ref_len, tgt_in)  # [B, R + 1, V]
    t = torch.arange(tgt_in.size(1), device=ref.device).unsqueeze(0)  # [1, R + 1]
    mask = t <= ref_len.unsqueeze(1)  # [B, R + 1]
    return q, next_tokens.masked_fill(~mask, EOS), mask


class _EvalMode:
    """Put modules in eval mode; restore their train/eval modes on exit."""

    def __init__(self, *modules: torch.nn.Module) -> None:
        self.modules = modules
        self.modes = [m.training for m in modules]

    def __enter__(self) -> None:
        for m in self.modules:
            m.eval()

    def __exit__(self, *exc: object) -> None:
        for m, mode in zip(self.modules, self.modes):
            m.train(mode)


@torch.no_grad()
def score_critic(
    critic: Critic,
    actor: Seq2Seq,
    data: Data,
    tau: float,
    n_sentences: int = 200,
    *,
    critic_tau: float | None = None,
    target_temperature: float = 1.0,
    entropy_horizon: str = "all",
    len_slack: int = 10,
    max_len: int = 50,
    samples_per_source: int = 1,
    batch_size: int = 64,
    seed: int = 0,
    exclude: Sequence[int] = BANNED_TOKENS,
    smooth: str = "plus1",
    scale: str | None = "ref_len",
) -> dict[str, float]:
    """Critic-quality metrics of an ERAC/AC critic Q_φ against its actor π_θ (keys: :data:`CRITIC_METRICS`).

    Args:
      critic: the critic Q_φ(s, w; y*) (reads the reference).
      actor: the actor π_θ whose samples are scored (sampled in eval mode, temperature 1).
      data: a split (``task.split("valid")``) or a ``(sources, references)`` tuple of token ids.
      tau: τ of the actor objective (Eq. 20): the temperature of the target softmax(Q/τ).
      n_sentences: score the first this many sentences.
      critic_tau: τ of the critic's target V̄ (Eq. 19) and of the soft return; None = ``tau``
        (``ERACConfig.target_tau``).
      target_temperature: T of the policy π^(1/T) that V̄ evaluates (``ERACConfig.target_temperature``).
      entropy_horizon: the states whose τ·H counts in V̄ and in the soft return
        (``ERACConfig.entropy_horizon``: ``all`` or ``reference``).
      len_slack, max_len: the training samples' cap, min(|y*| + len_slack, max_len) tokens; a
        sample at the cap ends at its last token (no eos step), as in the env.
      samples_per_source: samples drawn per source.
      batch_size: sources per forward pass.
      seed: seeds the sampling (same seed, same weights → same numbers).
      exclude: tokens that are never actions (π = 0; their Q ignored).
      smooth, scale: the reward's BLEU smoothing and scale (``envs.rewards``; official: plus1, |y*|).

    Returns floats: ``critic/valid_td``, ``critic/mc_rank_corr``, ``critic/target_entropy`` on
    the sampled states; ``critic/top1_acc``, ``critic/top5_acc``, ``critic/eos_margin``,
    ``critic/eos_margin_positive`` on the reference prefixes. ``mc_rank_corr`` is NaN when
    undefined (fewer than two steps, or a constant Q or return).
    """
    fn = "score_critic"
    v_tau = tau if critic_tau is None else critic_tau
    for name, value in (("tau", tau), ("critic_tau", v_tau)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{fn}: {name}={value!r} must be a finite number >= 0 (0 = AC).")
    for name, value, low in (("len_slack", len_slack, 0), ("max_len", max_len, 1),
                             ("samples_per_source", samples_per_source, 1), ("batch_size", batch_size, 1)):
        if not (isinstance(value, int) and value >= low):
            raise ValueError(f"{fn}: {name}={value!r} must be an int >= {low}.")
    if entropy_horizon not in ENTROPY_HORIZONS:
        raise ValueError(f"{fn}: entropy_horizon={entropy_horizon!r}; use one of {ENTROPY_HORIZONS}.")
    srcs, refs = _pairs(data, n_sentences, fn)
    device = next(critic.parameters()).device
    gen = torch.Generator(device=device).manual_seed(int(seed))
    k = samples_per_source
    td, ent, top1, top5, margin, positive = _Mean(), _Mean(), _Mean(), _Mean(), _Mean(), _Mean()
    pull, pull_positive = _Mean(), _Mean()
    q_taken_all: list[torch.Tensor] = []
    returns_all: list[torch.Tensor] = []
    with _EvalMode(critic, actor):
        for start in range(0, len(refs), batch_size):
            b_src, b_ref = srcs[start : start + batch_size], refs[start : start + batch_size]
            src_np, src_len_np = pad_batch(b_src, pad=PAD)
            ref_np, ref_len_np = pad_batch(b_ref, pad=PAD)
            src, src_len = torch.as_tensor(src_np, device=device), torch.as_tensor(src_len_np, device=device)
            ref, ref_len = torch.as_tensor(ref_np, device=device), torch.as_tensor(ref_len_np, device=device)
            # Samples of the actor, capped as the training samples (cap tokens, then no eos step)
            cap = (ref_len + len_slack).clamp(max=max_len)  # [B] tokens at most
            steps = (cap + 1).repeat_interleave(k)  # [N] decoder steps, eos included
            tokens, lengths, _ = sample(actor, src, src_len, cap + 1, num_samples=k, generator=gen, banned=exclude)
            tgt_in, actions = teacher_forcing_io(tokens, lengths)  # [N, T] each
            width = tgt_in.size(1)
            mask, done = step_masks(lengths, capped_at(lengths, steps), width)  # [N, T]
            rewards = token_rewards(tokens, lengths, [y for y in b_ref for _ in range(k)], width, smooth, scale)
            # Critic and actor on the sampled states
            q = critic.decode(critic.expand_encoder(critic.encode(ref, ref_len), k), tgt_in)  # [N, T, V]
            logp = policy_log_probs(actor.decode(actor.expand_encoder(actor.encode(src, src_len), k), tgt_in), exclude)
            horizon = reference_horizon(ref_len.repeat_interleave(k), width) if entropy_horizon == "reference" else None
            values = soft_value(q, sharpen_log_probs(logp, target_temperature), v_tau, mask, exclude, horizon)  # [N, T] V(s_t), Eq. (9)
            q_taken = gather_actions(q, actions)  # [N, T]
            n_steps = mask.sum()
            td.add(td_error_per_token(q_taken, rewards, values, done, mask), n_steps)
            ent.add(boltzmann_entropy(q, tau, mask, exclude), n_steps)
            g = soft_returns(rewards, gather_actions(logp, actions), mask, v_tau, horizon)  # [N, T]
            early = early_eos_pull(q, logp, ref_len.repeat_interleave(k), mask, EOS, exclude)
            pull.add(early.mean, early.count)
            pull_positive.add(early.positive, early.count)
            q_taken_all.append(q_taken[mask].double().cpu())
            returns_all.append(g[mask].double().cpu())
            # Reference prefixes
            q_ref, next_ref, mask_ref = _reference_checks(critic, ref, ref_len, exclude)
            n_ref = mask_ref.sum()
            top1.add(topk_accuracy(q_ref, next_ref, mask_ref, 1, exclude), n_ref)
            top5.add(topk_accuracy(q_ref, next_ref, mask_ref, 5, exclude), n_ref)
            em = eos_margin(q_ref, ref_len, mask_ref, EOS, exclude)
            margin.add(em.mean, em.count)
            positive.add(em.positive, em.count)
    q_cat, g_cat = torch.cat(q_taken_all), torch.cat(returns_all)  # [K]
    every = torch.ones(1, q_cat.numel(), dtype=torch.bool)
    return {
        CRITIC_VALID_TD: td.value,
        CRITIC_MC_RANK_CORR: mc_rank_correlation(q_cat.unsqueeze(0), g_cat.unsqueeze(0), every),
        CRITIC_TARGET_ENTROPY: ent.value,
        CRITIC_TOP1_ACC: top1.value,
        CRITIC_TOP5_ACC: top5.value,
        CRITIC_EOS_MARGIN: margin.value,
        CRITIC_EOS_MARGIN_POSITIVE: positive.value,
        CRITIC_EARLY_EOS_PULL: pull.value,
        CRITIC_EARLY_EOS_PULL_POSITIVE: pull_positive.value,
    }


@torch.no_grad()
def score_qnet(
    qnet: Critic,
    data: Data,
    tau: float,
    n_sentences: int = 200,
    *,
    batch_size: int = 64,
    exclude: Sequence[int] = BANNED_TOKENS,
    top_k: int = 0,
) -> dict[str, float]:
    """Critic-quality metrics of VAML's Q-net (no actor) on the reference prefixes of ``data``.

    Args:
      qnet: the Q-net Q_φ(s, w; y*) (a :class:`Critic`).
      data: a split (``task.split("valid")``) or a ``(sources, references)`` tuple (sources unused).
      tau: VAML's τ (Eq. 10 / 17): the temperature of P_Qφ = softmax(Q/τ).
      n_sentences: score the first this many references.
      batch_size: references per forward pass.
      exclude: tokens that are never actions (``VAMLConfig.exclude_tokens``).
      top_k: P_Qφ kept on the Q-net's ``top_k`` best tokens (``VAMLConfig.pq_topk``; 0 = all).

    Returns floats: ``critic/top1_acc``, ``critic/top5_acc``, ``critic/target_entropy``
    (entropy of P_Qφ, as step 2 uses it, on the reference prefixes), ``critic/eos_margin``,
    ``critic/eos_margin_positive``.
    """
    fn = "score_qnet"
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"{fn}: tau={tau!r} must be a finite number >= 0.")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"{fn}: batch_size={batch_size!r} must be an int >= 1.")
    _, refs = _pairs(data, n_sentences, fn)
    device = next(qnet.parameters()).device
    top1, top5, ent, margin, positive = _Mean(), _Mean(), _Mean(), _Mean(), _Mean()
    with _EvalMode(qnet):
        for start in range(0, len(refs), batch_size):
            ref_np, ref_len_np = pad_batch(refs[start : start + batch_size], pad=PAD)
            ref, ref_len = torch.as_tensor(ref_np, device=device), torch.as_tensor(ref_len_np, device=device)
            q, next_ref, mask = _reference_checks(qnet, ref, ref_len, exclude)  # [B, T, V], [B, T], [B, T]
            n = mask.sum()
            top1.add(topk_accuracy(q, next_ref, mask, 1, exclude), n)
            top5.add(topk_accuracy(q, next_ref, mask, 5, exclude), n)
            ent.add(boltzmann_entropy(q, tau, mask, exclude, top_k), n)
            em = eos_margin(q, ref_len, mask, EOS, exclude)
            margin.add(em.mean, em.count)
            positive.add(em.positive, em.count)
    return {
        CRITIC_TOP1_ACC: top1.value,
        CRITIC_TOP5_ACC: top5.value,
        CRITIC_TARGET_ENTROPY: ent.value,
        CRITIC_EOS_MARGIN: margin.value,
        CRITIC_EOS_MARGIN_POSITIVE: positive.value,
    }


def score_run_critic(run_dir: str | os.PathLike[str], n_sentences: int | None = None, which: str = "best",
                     data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """``rayseq eval RUN_DIR --critic``: score a run's critic (``critic_best.pt`` of an actor-critic
    run, or the ``algo.critic_init`` critic it started from, against its ``which`` actor) or Q-net (``qnet.pt`` of a VAML run) on the validation split
    (its first ``n_sentences``; None: the run's ``critic_valid_sentences``, else all)."""
    from rayseq.actor_io import CRITIC_FILE, find_q_file, load_actor, load_critic_file, read_run_info, resolve_actor
    from rayseq.data.errors import DataError
    from rayseq.data.tasks import load_task
    from rayseq.models.critic import CriticConfig

    info = read_run_info(run_dir)
    algo = dict(info.extra.get("algo_config") or {})
    qnet = info.algo == "vaml"
    path = Path(run_dir) / ("qnet.pt" if qnet else CRITIC_FILE)
    if not path.is_file() and not qnet and algo.get("critic_init"):
        # joint training started from a shared pretrained critic (algo.critic_init): score that one
        try:
            path = find_q_file(algo["critic_init"], "algo.critic_init")
        except DataError as err:
            raise DataError(f"{err} {run_dir} started from that critic; the path is relative to where it was trained: "
                            "run this command from that directory.") from None
    if not path.is_file():
        what = "a VAML run writes qnet.pt after its Q-net stage" if qnet else (
            f"an actor-critic run (ac, erac, ...) writes {CRITIC_FILE} during critic pretraining")
        raise DataError(f"{path}: not found; {what}. Is {run_dir} such a run, and has it got that far?")
    obj = load_critic_file(path, fmt="rayseq-qnet/1" if qnet else "rayseq-critic/1")
    model = Critic(CriticConfig(**obj["critic_config"]))
    model.load_state_dict(obj["state_dict"])
    task = load_task(info.task, data_dir if data_dir is not None else info.data_dir)
    valid = task.split("valid")
    n = n_sentences or algo.get("critic_valid_sentences") or len(valid)
    n = min(int(n), len(valid))
    tau = float(algo.get("tau", 0.0))
    exclude = tuple(algo.get("exclude_tokens", BANNED_TOKENS))
    if qnet:  # P_Qφ as step 2 uses it (algo.pq_tau, algo.pq_topk)
        tau = float(algo["pq_tau"]) if algo.get("pq_tau") is not None else tau
        metrics = score_qnet(model, valid, tau, n, exclude=exclude, top_k=int(algo.get("pq_topk", 0)))
    else:
        actor = load_actor(resolve_actor(run_dir, which)).model
        critic_tau = algo.get("critic_tau")
        metrics = score_critic(model, actor, valid, tau, n, critic_tau=None if critic_tau is None else float(critic_tau),  # None: tau
                               target_temperature=float(algo.get("target_temperature", 1.0)),
                               entropy_horizon=str(algo.get("entropy_horizon", "all")),
                               len_slack=int(algo.get("sample_len_slack", 10)), max_len=int(algo.get("max_sample_len", 50)),
                               seed=int(algo.get("seed", 0)), exclude=exclude)
    return {"run_dir": os.fspath(run_dir), "file": os.fspath(path), "kind": "qnet" if qnet else "critic",
            "sentences": n, "tau": tau, **metrics}


__all__ = ["CRITIC_METRICS", "score_critic", "score_qnet", "score_run_critic"]
