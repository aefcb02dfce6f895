"""Sequence-level REINFORCE baselines: SCST (Rennie et al. 2017) and MIXER-style REINFORCE with a
learned baseline (Ranzato et al. 2016), on the MDP and in the runtime of AC / ERAC.

Both fine-tune the MLE actor π_θ on sequences it samples itself (``rayseq.rollout``), with the
project's rewards: the BLEU increments r_t of Eq. (13) of Dai et al. (×|y*|), so that the return
of a whole sequence is R(y) = Σ_t r_t = |y*|·BLEU(y, y*). They differ in the baseline b that
REINFORCE subtracts from the return to reduce the variance of its gradient:

* **SCST** — b = R(ŷ), the reward of the actor's own greedy (argmax, dropout off) decode ŷ of the
  same source with the same weights, one baseline per sequence: the sampled sequence is pushed up
  iff it beats the test-time output. No learned parameters besides the actor.
* **MIXER** (REINFORCE part) — b_t = w·h_t + c, a linear regressor on the actor decoder's state
  h_t (gradient stopped: the regressor does not train the decoder), one baseline per step,
  regressed on the return-to-go G_t = Σ_{t' ≥ t} r_t' (Ranzato et al. regress on the final
  reward; with the per-token BLEU increments the return-to-go is the same target up to the reward
  already earned, which b_t cannot influence). MIXER's XENT → REINFORCE curriculum (annealing the
  number of reference-forced steps Δ) is **not** implemented: the actor starts from the MLE stage
  (MIXER's XENT phase) and is trained by REINFORCE on whole sequences (MIXER's last phase),
  optionally mixed with λ_mle × MLE on the reference.

Step layout, masks and terminal handling are those of ``rayseq.algorithms.erac`` (``step_masks``:
``mask`` marks the steps that exist, incl. the eos step of a sequence that chose eos and not the
forced eos of a capped one). Every loss sums over steps and averages over sequences (``num_seqs``,
default: the rows). Plain torch; no ray.

The runtime (``rayseq.runtime.actor_critic``, ``rayseq.drivers.actor_critic``) reads the fields both configs
share with :class:`~rayseq.algorithms.erac.ERACConfig` under the same names; the "critic" stage of
the driver is MIXER's baseline pretraining (``critic_pretrain_epochs`` = ``baseline_pretrain_epochs``)
and does not exist for SCST (0 epochs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from rayseq.decoding import BANNED_TOKENS
from rayseq.models.base import BOS, EOS, PAD


@dataclass
class REINFORCEConfig:
    """Fields shared by SCST and MIXER: sampling, the actor's optimiser and the joint stage."""

    lambda_mle: float = 0.0
    """λ_mle: weight of MLE on the reference added to the REINFORCE loss (0 = pure REINFORCE, as
    both papers after their XENT phase)."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor."""
    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam (β1, β2) of the actor (and of MIXER's baseline)."""
    grad_clip: float = 5.0
    """Max global L2 norm of each model's gradient."""
    joint_epochs: float = 30.0
    """Epochs (× the training pairs, in sampled episodes) of REINFORCE training. Fractions allowed."""
    valid_every: int = 0
    """Validate (BLEU, lr decay, best checkpoint) every this many updates; 0 = every epoch."""
    collapse_margin: float = 5.0
    """Stop training when validation BLEU falls this many points below its value at the start (a
    collapse; the best checkpoint is kept)."""
    actor_init: str | None = None
    """The MLE-pretrained actor: a run directory or actor file (``rayseq train --algo mle``).
    None: the run trains it first (its MLE stage)."""
    mle_epochs: int = 10
    """Epochs of the MLE stage when it runs (``actor_init`` None)."""
    schedule: Literal["sync", "async"] = "sync"
    """``sync``: sample a batch with the current weights, then update (on-policy REINFORCE).
    ``async`` trains on slightly older samples without importance correction (biased)."""
    replay_capacity: int | None = None
    """Episodes kept in the replay buffer; None = one batch (on-policy)."""
    replay_ratio: float = 1.0
    """Episodes trained on per episode sampled (async schedule)."""
    replay_backend: str = "memory"
    """Where the replay buffer lives: ``memory`` (in the driver), ``redis`` or a ``redis://`` URL
    (as ``ERACConfig.replay_backend``)."""
    weights_sync_every: int = 1
    """Push the actor's weights to the rollout workers every this many updates."""
    actor_lr_decay: float = 0.9
    """Actor lr × this after a validation without BLEU improvement."""
    max_lr_decays: int = 6
    """Decays allowed before the next non-improvement ends training."""
    samples_per_source: int = 1
    """Sequences sampled per source and update (episodes per update = batch_size × this)."""
    sample_len_slack: int = 10
    """A sample has at most min(|y*| + slack, max_sample_len) decoder steps (eos incl.)."""
    max_sample_len: int = 50
    """Cap on decoder steps of a training sample."""
    exclude_tokens: tuple[int, ...] = (PAD, BOS)
    """Token ids that are never actions (π = 0): ``<pad>``, ``<bos>``."""
    seed: int = 1234
    """Random seed."""
    batch_size: int = 50
    """Sources per batch (B)."""

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("lambda_mle", "joint_epochs", "collapse_margin"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}.{key} = {value!r}: must be a finite number >= 0.")
        for key in ("actor_lr", "grad_clip", "replay_ratio"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}.{key} = {value!r}: must be > 0.")
        betas = tuple(self.adam_betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{name}.adam_betas = {self.adam_betas!r}: must be two numbers in [0, 1).")
        self.adam_betas = betas
        if not 0.0 < self.actor_lr_decay <= 1.0:
            raise ValueError(f"{name}.actor_lr_decay = {self.actor_lr_decay}: must be in (0, 1].")
        if self.schedule not in ("sync", "async"):
            raise ValueError(f"{name}.schedule = {self.schedule!r}: use 'sync' or 'async'.")
        if not (self.replay_backend in ("memory", "redis") or self.replay_backend.startswith(("redis://", "rediss://", "unix://"))):
            raise ValueError(f"{name}.replay_backend = {self.replay_backend!r}: use 'memory', 'redis' or a redis:// URL.")
        if self.replay_capacity is not None and self.replay_capacity < 1:
            raise ValueError(f"{name}.replay_capacity = {self.replay_capacity}: must be >= 1 (episodes) or none.")
        for key, low in (("valid_every", 0), ("mle_epochs", 1), ("weights_sync_every", 1), ("max_lr_decays", 0),
                         ("samples_per_source", 1), ("sample_len_slack", 0), ("max_sample_len", 1), ("batch_size", 1)):
            value = getattr(self, key)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}.{key} = {value!r}: must be an int >= {low}.")
        self.exclude_tokens = tuple(int(t) for t in self.exclude_tokens)
        if EOS in self.exclude_tokens:
            raise ValueError(
                f"{name}.exclude_tokens = {self.exclude_tokens} contains <eos> ({EOS}); a sequence could "
                f"never end. Exclude only tokens that are never targets, e.g. {BANNED_TOKENS}."
            )

    # ------------------------------------------------------------------- the runtime's names

    @property
    def critic_pretrain_epochs(self) -> float:
        """Epochs of the driver's pretraining stage (no critic: none)."""
        return 0.0

    @property
    def pretrain_samples_per_source(self) -> int:
        """Samples per source in the pretraining stage: as in training."""
        return self.samples_per_source

    @property
    def pretrain_len_slack(self) -> int:
        """Length slack in the pretraining stage: as in training."""
        return self.sample_len_slack


@dataclass
class SCSTConfig(REINFORCEConfig):
    """Self-critical sequence training (Rennie et al. 2017): REINFORCE with the greedy decode's
    reward as the baseline; no critic, no pretraining stage."""


@dataclass
class MIXERConfig(REINFORCEConfig):
    """REINFORCE with a learned baseline b_t (Ranzato et al. 2016, MIXER without the XENT →
    REINFORCE curriculum); the baseline is pretrained briefly against the frozen MLE actor."""

    baseline_lr: float = 1e-2
    """Adam learning rate of the baseline regressor b_t (pretraining and training)."""
    baseline_pretrain_epochs: float = 0.1
    """Epochs (in sampled episodes) of baseline pretraining against the frozen MLE actor (the
    driver's "critic" stage); 0 = none. Fractions allowed."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.baseline_lr) and self.baseline_lr > 0):
            raise ValueError(f"MIXERConfig.baseline_lr = {self.baseline_lr!r}: must be > 0.")
        value = self.baseline_pretrain_epochs
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"MIXERConfig.baseline_pretrain_epochs = {value!r}: must be a finite number >= 0.")

    @property
    def critic_pretrain_epochs(self) -> float:
        """The driver's pretraining stage is baseline pretraining."""
        return float(self.baseline_pretrain_epochs)


# ======================================================================= returns


def _check(name: str, mask: torch.Tensor, **tensors: torch.Tensor) -> torch.Tensor:
    """``mask`` as bool; every tensor must have its ``[N, T]`` shape."""
    for key, t in tensors.items():
        if t.shape != mask.shape:
            raise ValueError(
                f"{name}: {key} {tuple(t.shape)} and mask {tuple(mask.shape)} must both be [N, T]."
            )
    return mask.bool()


def _num_seqs(mask: torch.Tensor, num_seqs: int | None) -> int:
    return max(int(num_seqs) if num_seqs is not None else mask.size(0), 1)


def sequence_return(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """R(y) = Σ_t r_t over the steps in ``mask`` ``[N, T]``: the sequence's reward ``[N]``.

    With the |y*|-scaled BLEU increments it is |y*|·BLEU(y, y*) (the r of Rennie et al. and of
    Ranzato et al.). Values outside ``mask`` (padding) are ignored.
    """
    mask = _check("sequence_return", mask, rewards=rewards)
    return rewards.masked_fill(~mask, 0.0).sum(1)


def returns_to_go(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """G_t = Σ_{t' ≥ t} r_t' (γ = 1), ``[N, T]``, 0 outside ``mask``: the regression target of
    MIXER's baseline b_t and the return its REINFORCE term weighs log π(a_t | s_t) by.

    The sum stops at the terminal step (``mask`` ends there): rewards in padding never leak in.
    """
    mask = _check("returns_to_go", mask, rewards=rewards)
    r = rewards.masked_fill(~mask, 0.0)
    g = r.flip(1).cumsum(1).flip(1)  # [N, T]
    return g.masked_fill(~mask, 0.0)


# ======================================================================= losses


def scst_loss(
    logp_taken: torch.Tensor,  # [N, T] log π_θ(a_t | s_t) of the sampled actions
    rewards: torch.Tensor,  # [N, T] r_t
    greedy_reward: torch.Tensor,  # [N] R(ŷ) of the greedy decode of the same source
    mask: torch.Tensor,  # [N, T] bool, steps that exist
    num_seqs: int | None = None,
) -> torch.Tensor:
    """SCST loss (Rennie et al. 2017, §4): −(1/N) Σ_n (R(y^s_n) − R(ŷ_n)) · Σ_t log π_θ(y^s_t | s_t).

    Its gradient is the paper's ∂L/∂s_t = (r(w^s) − r(ŵ)) (p_θ(w_t | h_t) − 1_{w^s_t}) summed over
    the steps: REINFORCE (Williams 1992) with the greedy decode's reward as the baseline. The
    advantage is a constant (no gradient); the eos step counts as a step (its log-prob is part of
    log p(y^s)), the forced eos of a capped sequence does not (``mask``). Returns a scalar.
    """
    mask = _check("scst_loss", mask, logp_taken=logp_taken, rewards=rewards)
    if greedy_reward.shape != mask.shape[:1]:
        raise ValueError(f"scst_loss: greedy_reward {tuple(greedy_reward.shape)} must be [N] = [{mask.size(0)}].")
    if not bool(torch.isfinite(greedy_reward).all()):
        raise ValueError(
            "scst_loss: greedy_reward has NaN/inf; the rollout workers must decode the greedy baseline "
            "(RolloutSampler.greedy_baseline)."
        )
    advantage = (sequence_return(rewards, mask) - greedy_reward).detach()  # [N]
    log_p_seq = logp_taken.masked_fill(~mask, 0.0).sum(1)  # [N] log π(y^s)
    return -(advantage.to(log_p_seq.dtype) * log_p_seq).sum() / _num_seqs(mask, num_seqs)


def reinforce_baseline_loss(
    logp_taken: torch.Tensor,  # [N, T] log π_θ(a_t | s_t)
    returns: torch.Tensor,  # [N, T] G_t (returns_to_go)
    baseline: torch.Tensor,  # [N, T] b_t (detached here)
    mask: torch.Tensor,  # [N, T] bool
    num_seqs: int | None = None,
) -> torch.Tensor:
    """REINFORCE with a learned baseline (Ranzato et al. 2016, §3.2):
    −(1/N) Σ_n Σ_t sg[G_t − b_t] · log π_θ(a_t | s_t).

    Per step, the gradient w.r.t. the output scores is the paper's ∂L/∂o_t = (r − r̄_{t+1})
    (p_θ(·) − 1(w_{t+1})), with the return-to-go G_t for r and b_t = b(s_t) for r̄_{t+1}. The
    baseline gets no gradient from this term (it is trained by :func:`baseline_mse`). Padding and
    the steps after a terminal one contribute nothing (``mask``). Returns a scalar.
    """
    mask = _check("reinforce_baseline_loss", mask, logp_taken=logp_taken, returns=returns, baseline=baseline)
    advantage = (returns - baseline).detach().masked_fill(~mask, 0.0)  # [N, T]
    logp = logp_taken.masked_fill(~mask, 0.0)  # padding may hold −inf (log π of <pad>)
    return -(advantage.to(logp.dtype) * logp).sum() / _num_seqs(mask, num_seqs)


def baseline_mse(
    baseline: torch.Tensor,  # [N, T] b_t
    returns: torch.Tensor,  # [N, T] G_t (detached here)
    mask: torch.Tensor,  # [N, T] bool
    num_seqs: int | None = None,
) -> torch.Tensor:
    """The baseline's regression loss (Ranzato et al. 2016, §3.2: ‖r̄_{t+1} − r‖²):
    (1/N) Σ_n Σ_t (b_t − sg[G_t])², over the steps in ``mask``. Returns a scalar."""
    mask = _check("baseline_mse", mask, baseline=baseline, returns=returns)
    err = (baseline - returns.detach().to(baseline.dtype)).masked_fill(~mask, 0.0)  # [N, T]
    return err.pow(2).sum() / _num_seqs(mask, num_seqs)
