"""How good is a critic? Held-out checks of Q_φ(s, w; y*) (Dai, Xie & Hovy 2018, §4.1–4.2).

The critic of ERAC/AC and VAML's Q-net are the same network (``rayseq.models.critic.Critic``).
Their training losses say how well Q fits its own moving targets; these functions say whether
the Q it learned is *useful*, on states the learner did not train on:

* :func:`td_error_per_token` — Bellman consistency: the squared soft TD error of Eq. (19) / (16)
  per token, mean over valid steps (the loss ``loss/critic_td`` is ½ × the per-sequence sum);
* :func:`topk_accuracy` — does argmax_w Q(s, w) on a reference prefix name the next reference
  token (the optimum of the BLEU-increment MDP, Corollary 1)?
* :func:`soft_returns` + :func:`mc_rank_correlation` — does Q(s_t, a_t) order the actor's own
  steps like their Monte-Carlo soft return (Q^π of Eq. 9)? Spearman with :func:`spearman_corr`;
* :func:`boltzmann_entropy` — entropy of softmax(Q/τ), the target ERAC's actor (Eq. 20) and
  VAML's actor (Eq. 17) are pulled toward;
* :func:`eos_margin` — Q(s, eos) − max_{w≠eos} Q(s, w) on prefixes at least |y*| long;
* :func:`early_eos_pull` — Q(s, eos) − E_π Q(s, ·) on the actor's states 1–2 tokens short of |y*|:
  does the critic pull the actor toward stopping before the reference length?

Step layout: that of ``rayseq.algorithms.erac`` (position t of an ``[N, T]`` / ``[N, T, V]``
tensor is state s_t = y_1..t and its action a_t). Tokens in ``exclude`` (default ``<pad>``,
``<bos>``) are never actions: their Q is ignored everywhere.
``rayseq.evaluation.critic`` runs a critic on data and calls these. Plain torch/numpy; no ray.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import torch

from rayseq.algorithms.erac import soft_td_target
from rayseq.decoding import BANNED_TOKENS, keep_top_k
from rayseq.models.base import EOS


def _allowed(vocab: int, exclude: Sequence[int], device: torch.device) -> torch.Tensor:
    """``[V]`` bool, False at the ``exclude`` token ids."""
    allowed = torch.ones(vocab, dtype=torch.bool, device=device)  # [V]
    if len(exclude):
        allowed[torch.as_tensor(tuple(exclude), dtype=torch.long, device=device)] = False
    return allowed


def _check_steps(fn: str, mask: torch.Tensor, **tensors: torch.Tensor) -> None:
    """Every tensor's first two dims must be ``mask``'s ``[N, T]``."""
    for name, t in tensors.items():
        if tuple(t.shape[:2]) != tuple(mask.shape) or mask.dim() != 2:
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items())
            raise ValueError(f"{fn}: {shapes} and mask {tuple(mask.shape)} must share [N, T] (mask is [N, T]).")


def _check_tau(fn: str, tau: float) -> None:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau >= 0):
        raise ValueError(f"{fn}: τ={tau!r} must be a finite number >= 0 (0 = no entropy term).")


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` ``[N, T]`` over ``mask``; NaN when the mask is empty."""
    mask = mask.bool()
    n = mask.sum()
    if int(n) == 0:
        return values.new_tensor(float("nan"))
    return torch.where(mask, values, torch.zeros_like(values)).sum() / n


# ======================================================================= 1. TD error


@torch.no_grad()
def td_error_per_token(
    q_taken: torch.Tensor,  # [N, T] Q(s_t, a_t)
    rewards: torch.Tensor,  # [N, T] r_t of the action taken at s_t
    values: torch.Tensor,  # [N, T] soft value V(s_t) at every state position t
    done: torch.Tensor,  # [N, T] bool, step t is terminal
    mask: torch.Tensor,  # [N, T] bool, steps that exist
) -> torch.Tensor:
    """Held-out soft TD error per token: mean over valid t of (Q(s_t, a_t) − Q̂_t)².

    Q̂_t = r_t + V(s_{t+1}), r_t alone where step t is terminal — the soft Bellman backup of
    Eq. (19) (ERAC, V = Σ_w π(Q − τ log π), ``erac.soft_value``) or Eq. (16) (VAML,
    V = τ log Σ_w exp(Q/τ), ``vaml.soft_max_value``), computed by the learner's own
    ``erac.soft_td_target``: ``values`` holds V at each state (aligned with the steps, like the
    learner's), V(s_{t+1}) = ``values[:, t + 1]``. Unlike ``loss/critic_td`` (½ Σ_t per sequence)
    this is a per-token mean without the ½. Returns a scalar; NaN when ``mask`` is empty.
    """
    _check_steps("td_error_per_token", mask, q_taken=q_taken, rewards=rewards, values=values, done=done)
    mask = mask.bool()
    target = soft_td_target(rewards.to(values.dtype), values, done, mask)  # [N, T]
    err = torch.where(mask, q_taken.to(target.dtype) - target, torch.zeros_like(target))  # [N, T]
    return _masked_mean(err * err, mask)


# ======================================================================= 2. top-k accuracy


@torch.no_grad()
def topk_accuracy(
    q: torch.Tensor,  # [N, T, V] Q(s_t, ·) on reference prefixes s_t = y*_1..t
    next_tokens: torch.Tensor,  # [N, T] y*_{t+1} (eos at t = |y*|)
    mask: torch.Tensor,  # [N, T] bool, states to score
    k: int = 1,
    exclude: Sequence[int] = BANNED_TOKENS,
) -> torch.Tensor:
    """Share of reference prefixes where the next reference token is among the k best of Q.

    Checks Corollary 1's optimum: in the BLEU-increment MDP the best action on a reference prefix
    y*_1..t is y*_{t+1} (eos after the whole y*), so argmax_w Q(s, w) should name it. A hit when
    fewer than k allowed tokens w ≠ y have Q(s, w) ≥ Q(s, y): **a tie counts against the
    reference token** (a constant Q scores 0, not 1). Tokens in ``exclude`` are never ranked;
    a reference token in ``exclude`` is an error. Returns a scalar in [0, 1]; NaN for an empty mask.
    """
    if q.dim() != 3:
        raise ValueError(f"topk_accuracy: q must be [N, T, V], got {tuple(q.shape)}.")
    _check_steps("topk_accuracy", mask, q=q, next_tokens=next_tokens)
    if not (isinstance(k, int) and k >= 1):
        raise ValueError(f"topk_accuracy: k={k!r} must be an int >= 1.")
    mask = mask.bool()
    allowed = _allowed(q.size(-1), exclude, q.device)  # [V]
    y = next_tokens.long().masked_fill(~mask, EOS)  # [N, T], a real index at unscored states
    if bool((~allowed[y] & mask).any()):
        bad = sorted(set(y[mask & ~allowed[y]].tolist()))
        raise ValueError(
            f"topk_accuracy: reference tokens {bad} are in exclude={tuple(exclude)}; they are never "
            f"actions. Pass the reference prefixes' next tokens (y* then eos) and mask the rest."
        )
    q_y = q.gather(-1, y.unsqueeze(-1))  # [N, T, 1]
    ge = (q >= q_y) & allowed  # [N, T, V] allowed tokens at least as good as y (y itself included)
    rivals = ge.sum(-1) - 1  # [N, T]
    hit = (rivals < k).to(q.dtype if q.is_floating_point() else torch.float32)  # [N, T]
    return _masked_mean(hit, mask)


# ======================================================================= 3. Monte-Carlo rank correlation


@torch.no_grad()
def soft_returns(
    rewards: torch.Tensor,  # [N, T] r_t
    logp_taken: torch.Tensor,  # [N, T] log π(a_t | s_t) of the action taken
    mask: torch.Tensor,  # [N, T] bool, steps that exist (t = 0 … last)
    tau: float,
    entropy_mask: torch.Tensor | None = None,  # [N, T] bool, states whose bonus counts
) -> torch.Tensor:
    """Monte-Carlo soft return of each step, the sample of Q^π(s_t, a_t) (Eq. 9, α = τ, γ = 1).

    G_t = r_t + Σ_{k>t} (r_k − τ log π(a_k | s_k)): the reward of the step itself, then every later
    reward plus the entropy bonus −τ log π of every *later* action (the sampled form of τ·H(π);
    the action a_t is given, so its own −τ log π is not part of Q^π(s_t, a_t)). Its expectation
    given (s_t, a_t) is exactly Q^π(s_t, a_t) = r_t + V^π(s_{t+1}). τ = 0: the plain return
    Σ_{k≥t} r_k. Steps outside ``mask`` contribute nothing (their log π may be −inf) and get 0.
    ``entropy_mask`` (None: every step): the states whose bonus counts, as in
    ``erac.soft_value`` (``ERACConfig.entropy_horizon``). Returns ``[N, T]``.
    """
    _check_steps("soft_returns", mask, rewards=rewards, logp_taken=logp_taken,
                 **({} if entropy_mask is None else {"entropy_mask": entropy_mask}))
    _check_tau("soft_returns", tau)
    mask = mask.bool()
    bonus = mask if entropy_mask is None else mask & entropy_mask.bool()  # [N, T]
    r = torch.where(mask, rewards.to(torch.float64), 0.0)  # [N, T]
    lp = torch.where(bonus, logp_taken.to(torch.float64), 0.0)  # [N, T]
    step = r - tau * lp if tau > 0 else r  # [N, T] r_k − τ log π(a_k|s_k)
    to_go = step.flip(1).cumsum(1).flip(1)  # [N, T] Σ_{k≥t}
    later = torch.cat([to_go[:, 1:], torch.zeros_like(to_go[:, :1])], dim=1)  # [N, T] Σ_{k>t}
    return torch.where(mask, r + later, 0.0).to(rewards.dtype if rewards.is_floating_point() else torch.float64)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties given the mean of the ranks they span (float64)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    order = np.argsort(x, kind="mergesort")  # [n]
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])  # first index of each tie group
    ends = np.r_[starts[1:], len(xs)]  # one past the last
    mean_rank = (starts + 1 + ends) / 2.0  # ranks are 1-based: (start+1 + end) / 2
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def spearman_corr(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
    """Spearman's ρ: the Pearson correlation of :func:`average_ranks` of x and of y.

    NaN when there are fewer than 2 points or either side is constant (ρ undefined); NaN inputs
    are an error.
    """
    xa = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64).reshape(-1)
    ya = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64).reshape(-1)
    if xa.shape != ya.shape:
        raise ValueError(f"spearman_corr: x has {xa.size} values, y {ya.size}; pass paired values.")
    if np.isnan(xa).any() or np.isnan(ya).any():
        raise ValueError("spearman_corr: NaN in the inputs; ranks of NaN are undefined (drop those pairs).")
    if xa.size < 2:
        return float("nan")
    rx, ry = average_ranks(xa), average_ranks(ya)
    rx -= rx.mean()
    ry -= ry.mean()
    denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((rx * ry).sum() / denom, -1.0, 1.0))


def mc_rank_correlation(
    q_taken: torch.Tensor,  # [N, T] Q(s_t, a_t) of the actor's sampled steps
    returns: torch.Tensor,  # [N, T] their Monte-Carlo soft returns (soft_returns)
    mask: torch.Tensor,  # [N, T] bool, steps that exist
) -> float:
    """Spearman ρ between Q(s_t, a_t) and the Monte-Carlo soft return G_t over all valid steps.

    A critic that has learnt Q^π (Eq. 9; the fixed point of ERAC's Eq. 18–19 for the actor π)
    orders the actor's steps like their returns: ρ → 1 as Q → Q^π and samples → ∞ (with the
    exact expected return, ρ = 1 exactly). Pooled over sequences and positions. NaN when
    undefined (see :func:`spearman_corr`).
    """
    _check_steps("mc_rank_correlation", mask, q_taken=q_taken, returns=returns)
    mask = mask.bool()
    return spearman_corr(q_taken[mask], returns[mask])


# ======================================================================= 4. target entropy


@torch.no_grad()
def boltzmann_entropy(
    q: torch.Tensor,  # [N, T, V] Q(s_t, ·)
    tau: float,
    mask: torch.Tensor,  # [N, T] bool, states to average over
    exclude: Sequence[int] = BANNED_TOKENS,
    top_k: int = 0,
) -> torch.Tensor:
    """Mean entropy (nats) of softmax_w(Q(s, w)/τ) over the allowed tokens, per valid state; with
    ``top_k`` > 0 over the ``top_k`` largest Q(s, ·) only (VAML's cut target, ``algo.pq_topk``).

    The Boltzmann policy of Q: the target ERAC's actor is pulled toward (Eq. 20 is maximised by
    π ∝ exp(Q/τ)) and VAML's token-level target P_Qφ (Eq. 17). τ = 0 is handled explicitly as
    the limit τ → 0: uniform over the maximisers of Q (``envs.oracle.boltzmann_policy``), so the
    entropy is log(number of tied maximisers) — 0 when the argmax is unique. Returns a scalar;
    NaN for an empty mask.
    """
    if q.dim() != 3:
        raise ValueError(f"boltzmann_entropy: q must be [N, T, V], got {tuple(q.shape)}.")
    _check_steps("boltzmann_entropy", mask, q=q)
    _check_tau("boltzmann_entropy", tau)
    mask = mask.bool()
    allowed = _allowed(q.size(-1), exclude, q.device)  # [V]
    qf = q if q.dtype in (torch.float32, torch.float64) else q.float()
    qm = keep_top_k(qf.masked_fill(~allowed, float("-inf")), top_k)  # [N, T, V]
    if tau == 0:
        ties = (qm == qm.max(-1, keepdim=True).values).sum(-1)  # [N, T]
        h = ties.clamp(min=1).to(qf.dtype).log()  # [N, T]
    else:
        logp = torch.log_softmax(qm / tau, dim=-1)  # [N, T, V], −inf at excluded
        p = logp.exp()
        h = -(p * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)  # [N, T]; 0·log 0 = 0
    return _masked_mean(h, mask)


# ======================================================================= 5. eos margin


def _check_eos_args(fn: str, q: torch.Tensor, ref_len: torch.Tensor, mask: torch.Tensor, eos: int,
                    exclude: Sequence[int]) -> None:
    """``mask`` is q's ``[N, T]``, ``ref_len`` is ``[N]``, ``eos`` an allowed token id of q's vocabulary."""
    _check_steps(fn, mask, q=q)
    if ref_len.shape != (q.size(0),):
        raise ValueError(f"{fn}: ref_len {tuple(ref_len.shape)} must be [N] = [{q.size(0)}].")
    if eos in tuple(exclude) or not 0 <= eos < q.size(-1):
        raise ValueError(f"{fn}: eos={eos} must be a token id < V={q.size(-1)} outside exclude={tuple(exclude)}.")


class EosMargin(NamedTuple):
    """Q(s, eos) − max_{w≠eos} Q(s, w) on prefixes at least |y*| long."""

    mean: torch.Tensor  # [] mean margin (NaN when no such state)
    positive: torch.Tensor  # [] share of those states with margin > 0 (NaN when none)
    count: torch.Tensor  # [] int64, states scored


@torch.no_grad()
def eos_margin(
    q: torch.Tensor,  # [N, T, V] Q(s_t, ·)
    ref_len: torch.Tensor,  # [N] |y*|
    mask: torch.Tensor,  # [N, T] bool, states that exist
    eos: int = EOS,
    exclude: Sequence[int] = BANNED_TOKENS,
) -> EosMargin:
    """Stopping margin Q(s_t, eos) − max_{w ≠ eos} Q(s_t, w) over the states with t ≥ |y*|.

    On the complete reference (t = |y*|) every further token lowers BLEU while eos earns 0
    (Eq. 4/13), so the optimal hard Q* (τ = 0) has a positive margin there; a critic that wants
    ever-longer outputs has a negative one. The max runs over the allowed tokens (not
    ``exclude``). Returns the mean margin, the share of positive margins and the count.
    """
    if q.dim() != 3:
        raise ValueError(f"eos_margin: q must be [N, T, V], got {tuple(q.shape)}.")
    _check_eos_args("eos_margin", q, ref_len, mask, eos, exclude)
    allowed = _allowed(q.size(-1), exclude, q.device)  # [V]
    allowed[eos] = False
    if not bool(allowed.any()):
        raise ValueError("eos_margin: no token besides eos is allowed; the margin is undefined.")
    t = torch.arange(q.size(1), device=q.device).unsqueeze(0)  # [1, T]
    states = mask.bool() & (t >= ref_len.to(q.device).long().unsqueeze(1))  # [N, T]
    qf = q if q.dtype in (torch.float32, torch.float64) else q.float()
    best_other = qf.masked_fill(~allowed, float("-inf")).max(-1).values  # [N, T]
    margin = torch.where(states, qf[..., eos] - best_other, torch.zeros_like(best_other))  # [N, T]
    return EosMargin(
        mean=_masked_mean(margin, states),
        positive=_masked_mean((margin > 0).to(qf.dtype), states),
        count=states.sum(),
    )


# ======================================================================= 6. early eos pull


@torch.no_grad()
def early_eos_pull(
    q: torch.Tensor,  # [N, T, V] Q(s_t, ·) on the actor's sampled states
    logp: torch.Tensor,  # [N, T, V] log π(·|s_t) (−inf / anything at excluded tokens)
    ref_len: torch.Tensor,  # [N] |y*| of each sample's reference
    mask: torch.Tensor,  # [N, T] bool, states that exist
    eos: int = EOS,
    exclude: Sequence[int] = BANNED_TOKENS,
    window: int = 2,
) -> EosMargin:
    """Advantage of stopping, Q(s_t, eos) − Σ_w π(w|s_t) Q(s_t, w), over the last ``window`` states
    before the reference length: |y*| − window ≤ t < |y*|.

    An actor-critic update raises log π(eos|s) when Q(s, eos) is above the policy's mean Q at s:
    on the states shorter than the reference, where eos ends the output early (the brevity
    penalty), a positive pull trains the actor to stop early and shortens its outputs. Far from
    the end stopping is plainly bad; the window keeps the states where it is a close call. The mean
    runs over the allowed tokens (not ``exclude``), with π renormalised over them. Returns the mean
    pull, the share of positive pulls and the count of states scored.
    """
    if not (isinstance(window, int) and window >= 1):
        raise ValueError(f"early_eos_pull: window={window!r} must be an int >= 1.")
    if q.dim() != 3 or logp.shape != q.shape:
        raise ValueError(f"early_eos_pull: q {tuple(q.shape)} and logp {tuple(logp.shape)} must both be [N, T, V].")
    _check_eos_args("early_eos_pull", q, ref_len, mask, eos, exclude)
    allowed = _allowed(q.size(-1), exclude, q.device)  # [V]
    t = torch.arange(q.size(1), device=q.device).unsqueeze(0)  # [1, T]
    lengths = ref_len.to(q.device).long().unsqueeze(1)  # [N, 1]
    states = mask.bool() & (t < lengths) & (t >= lengths - window)  # [N, T]
    qf = q if q.dtype in (torch.float32, torch.float64) else q.float()
    pi = torch.softmax(logp.to(qf.dtype).masked_fill(~allowed, float("-inf")), dim=-1)  # [N, T, V]
    mean_q = (pi * qf.masked_fill(~allowed, 0.0)).sum(-1)  # [N, T]
    pull = torch.where(states, qf[..., eos] - mean_q, torch.zeros_like(mean_q))  # [N, T]
    return EosMargin(
        mean=_masked_mean(pull, states),
        positive=_masked_mean((pull > 0).to(qf.dtype), states),
        count=states.sum(),
    )
