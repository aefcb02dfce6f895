"""Entropy-regularised actor-critic (ERAC; Dai, Xie & Hovy 2018, §4.2) and AC (τ = 0).

The MDP M_R of Corollary 1: state = prefix, action = next token (eos included), deterministic
transitions, reward = BLEU increment (Eq. 13), γ = 1, entropy weight α = τ. The critic Q_φ
evaluates the current actor π_θ by TD learning (Eq. 18) against the soft target of Eq. (19),
computed with a Polyak-averaged target critic Q_φ̄; the actor follows the entropy-regularised
policy gradient summed over the whole vocabulary (Eq. 20), plus λ_mle × MLE on the reference.

Step indexing (every ``[N, T]`` / ``[N, T, V]`` tensor here follows it)
--------------------------------------------------------------------------
A sampled sequence y_1 … y_L (``rayseq.decoding.sample``: ``tokens`` without bos/eos,
``lengths`` = L) is read teacher-forced: decoder input ``tgt_in = <bos> y_1 … y_L``
(``rayseq.decoding.teacher_forcing_io``), width T = L_max + 1. Position t holds

* the **state** s_t = y_1..t (s_0 = empty prefix, read as ``<bos>``), t = 0 … L;
* the **action** a_t taken in s_t: y_{t+1} for t < L, ``<eos>`` at t = L
  (``tgt_out = y_1 … y_L <eos>``);
* its **reward** r_t = r(s_t, a_t) = |y*| · (BLEU(y_1..t+1) − BLEU(y_1..t)) for t < L
  (``envs.rewards.bleu_increments``, ×|y*| as the official code), and r_L = 0 (the eos step, Eq. 4);
* the actor's logits / the critic's Q(s_t, ·) at decoder position t.

Terminal steps: the eos action at t = L ends the episode (V̄ = 0 after it). A sequence that hit
the length cap (``lengths == max_len − 1`` in ``rayseq.decoding``'s step convention, eos forced
at step ``max_len``) ends at its last token instead: s_L is terminal (the MDP of
``envs.oracle``: a prefix of the maximum length has no choice left), so the step t = L − 1 is
terminal and position L is not a step at all (no action, no critic or actor loss). The official
code instead trains Q(s_L, eos) → 0 on the forced eos and bootstraps V̄(s_L) through it.
:func:`step_masks` builds ``mask`` (steps that exist) and ``done`` (terminal steps) from the
lengths.

Every loss sums over steps and averages over sequences (the official reduction). Tokens in
``exclude`` (default ``<pad>``, ``<bos>``: never a correct target) are never actions: π = 0 there
(``softmax(mask_logits(logits))``, the decoding policy), they contribute nothing to V̄, to the
actor objective or to the Q-variance penalty, and their Q-values are never trained.

Plain torch/numpy; no ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Literal, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from envs.rewards import prefix_bleu_batch, reward_scale
from rayseq.algorithms.mle import mle_loss, sequence_nll
from rayseq.decoding import BANNED_TOKENS, mask_logits, top_k_mask
from rayseq.models.base import BOS, EOS, PAD

L2_EPS = 1e-8
"""ε of the official L2 normalisation ``log π / (ε + ‖log π‖₂)``."""

ENTROPY_HORIZONS = ("all", "reference")
"""Values of ``ERACConfig.entropy_horizon``."""

VARIANTS: dict[str, dict[str, object]] = {
    "erac": {},
    "ac": {"tau": 0.0, "critic_tau": None},
    "erac-nofutent": {"critic_tau": 0.0},
    "erac-eq20": {"normalize_logpi_l2": False},
}
"""Config overrides of each actor-critic variant of the paper (Table 1 / Table 4)."""


@dataclass
class ERACConfig:
    """Hyper-parameters of critic pretraining and joint ERAC/AC training (official defaults)."""

    tau: float = 0.045
    """τ: entropy weight of the actor objective (Eq. 20); 0.045 official (0.04 with input feeding),
    0 = AC. Relative to the |y*|-scaled reward."""
    critic_tau: float | None = None
    """τ inside the critic's target V̄ (Eq. 19); None = ``tau``; 0 with tau > 0 is the
    "ERAC w/o future entropy" ablation (Table 4)."""
    entropy_horizon: Literal["all", "reference"] = "all"
    """The states whose entropy bonus τ·H(π(·|s)) the critic's target V̄ counts (Eq. 9 / 19):
    ``all`` (the paper) or ``reference``: only the states the reference episode has, prefixes of
    at most |y*| tokens (``reference_horizon``). Past them V̄ is the AC value Σ_w π Q̄, so the bonus
    no longer pays the policy for every token it runs past the reference length."""
    target_temperature: float = 1.0
    """T of the policy the critic's target V̄ (Eq. 19) evaluates: π_T ∝ π^{1/T} (``sharpen_log_probs``).
    1 = π itself (the paper). Below 1 the critic learns the value of continuing as a sharper policy
    does — nearer the greedy / beam decoder that is scored — than as a temperature-1 sample does
    (an expected-SARSA target: off-policy-correct for any T). Must be > 0."""
    target_entropy: float | None = None
    """Automatic temperature (SAC's α tuning, Haarnoja et al. 2018): the policy entropy (nats per
    sampled token) joint training holds by adapting τ after every update (``temperature_step``: τ
    grows while the entropy is below it, shrinks while above); the adapted τ is the actor's (Eq. 20)
    and, with ``critic_tau`` None, the critic target's. None (default): τ stays ``tau``."""
    tau_lr: float = 0.05
    """Step size of that adaptation on log τ, per update and nat of entropy gap."""
    tau_anneal_updates: int = 0
    """Anneal τ linearly to 0 over this many joint updates (``annealed_tau``), then hold it at 0:
    ERAC at the start of joint training, AC (τ = 0) after it. The annealed τ is the actor's (Eq. 20)
    and, with ``critic_tau`` None, the critic target's. 0 (default): τ stays ``tau``."""
    beta: float = 0.001
    """β: Polyak rate of the target critic, φ̄ ← (1 − β)φ̄ + βφ after every step; in (0, 1]."""
    lambda_var: float = 0.001
    """λ_var: weight of the variance of Q over the vocabulary (critic smoothing, §4.2)."""
    lambda_mle: float = 0.1
    """λ_mle: weight of the MLE loss on the reference added to the actor loss (§4.2)."""
    actor_lr: float = 1e-4
    """Adam learning rate of the actor (joint training)."""
    critic_lr: float = 1e-4
    """Adam learning rate of the critic during joint training; 0 freezes the critic there (the
    pretrained or ``critic_init`` critic's values are the actor's Q throughout)."""
    critic_pretrain_lr: float = 1e-3
    """Adam learning rate of the critic during pretraining (actor frozen)."""
    adam_betas: tuple[float, float] = (0.0, 0.999)
    """Adam (β1, β2) of both optimisers in joint training."""
    critic_pretrain_adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam (β1, β2) of critic pretraining (official ``train_critic.py``: β1 = 0.9)."""
    grad_clip: float = 5.0
    """Max global L2 norm of each model's gradient."""
    critic_pretrain_epochs: float = 20.0
    """Epochs (× the training pairs, in sampled episodes) of critic pretraining against the frozen
    MLE actor (official: up to 20; it stops earlier on a held-out plateau). Fractions allowed."""
    critic_init: str | None = None
    """A pretrained critic to start joint training from (an actor-critic run dir holding
    ``critic_best.pt``, or that file): critic pretraining is skipped. Several seeds of the same
    algorithm can share one pretrained critic this way (it must have been trained against the same
    start actor, with the same τ of the critic target)."""
    critic_warm_start: str | None = None
    """Weights critic pretraining starts from instead of random ones: a critic (``critic_best.pt``)
    or a VAML Q-net (``qnet.pt``), or a run dir holding one, of the same shape. A Q-net already
    ranks the next reference token first (Eq. 16 taught it on corrupted references); its values
    carry VAML's larger τ, a per-state offset that pretraining moves and that the actor's gradient
    does not see. Pretraining then runs as configured (its held-out checks, its plateau); with
    ``critic_init`` (no pretraining) it is not read."""
    critic_valid_every: int = 0
    """Score the critic on held-out samples of the frozen actor every this many pretraining
    updates (its TD error decides the best critic and the lr decay); 0 = every epoch."""
    critic_valid_sentences: int | None = None
    """Validation sources the critic is scored on (pretraining checks and at every joint
    validation); None = the whole validation split."""
    critic_lr_decay: float = 0.5
    """Critic pretraining lr × this after a held-out check without improvement (official 0.5)."""
    critic_max_decays: int = 5
    """Decays allowed before the next non-improvement ends critic pretraining (official: 5)."""
    fresh_joint_optimizers: bool = True
    """Joint training starts with fresh Adam state (official); False carries the critic's
    pretraining moments over."""
    joint_epochs: float = 30.0
    """Epochs of joint actor-critic training (official: up to 30). Fractions allowed."""
    valid_every: int = 0
    """Validate (BLEU, lr decay, best checkpoint) every this many joint updates; 0 = every epoch."""
    collapse_margin: float = 5.0
    """Stop joint training when validation BLEU falls this many points below its value at the
    start of joint training (a collapse; the best checkpoint is kept)."""
    actor_init: str | None = None
    """The MLE-pretrained actor: a run directory or actor file (``rayseq train --algo mle``).
    None: the run trains it first (its MLE stage)."""
    mle_epochs: int = 10
    """Epochs of the MLE stage when it runs (``actor_init`` None)."""
    schedule: Literal["sync", "async"] = "sync"
    """``sync``: sample a batch with the current weights, then update (the paper's). ``async``:
    workers keep sampling while the learner trains from replay (needs rollout workers)."""
    replay_capacity: int | None = None
    """Episodes kept in the replay buffer; None = one batch (on-policy)."""
    replay_ratio: float = 1.0
    """Episodes trained on per episode sampled (the updates-per-sample ratio; async schedule)."""
    replay_backend: str = "memory"
    """Where the replay buffer lives: ``memory`` (in the driver), ``redis`` (URL from $RAYSEQ_REDIS_URL,
    password from $RAYSEQ_REDIS_PASSWORD; durable, shared between jobs) or a ``redis://HOST:PORT/DB`` URL."""
    weights_sync_every: int = 1
    """Push the actor's weights to the rollout workers every this many updates."""
    actor_lr_decay: float = 0.9
    """Actor lr × this after a validation without BLEU improvement (joint training)."""
    max_lr_decays: int = 6
    """Decays allowed before the next non-improvement ends joint training."""
    samples_per_source: int = 1
    """Sequences sampled from the actor per source in joint training."""
    pretrain_samples_per_source: int = 2
    """Sequences sampled per source in critic pretraining."""
    sample_len_slack: int = 10
    """Joint training samples at most min(|y*| + slack, max_sample_len) decoder steps (eos incl.)."""
    pretrain_len_slack: int = 5
    """The same slack in critic pretraining."""
    max_sample_len: int = 50
    """Cap on decoder steps of a training sample (eos included, forced at the last step)."""
    normalize_logpi_l2: bool = True
    """The official code's actor term (undocumented in the paper, and what the published numbers
    came from): log π L2-normalised over the vocabulary inside the actor's entropy term, which
    shrinks it by ‖log π‖₂; the critic's V̄ keeps the full τ. False = Eq. (20) as printed (the
    ``erac-eq20`` ablation)."""
    actor_support: int = 0
    """Eq. (20)'s expectation over the actor's ``actor_support`` most likely tokens at each step,
    the others counting as their π-weighted mean (no gradient: ``support_signal``); 0 = the whole
    vocabulary, the paper's. The critic is trained only on tokens the actor samples, so its Q on
    the thousands of others is noise that Adam turns into full-size steps toward them."""
    exclude_tokens: tuple[int, ...] = (PAD, BOS)
    """Token ids that are never actions (π = 0, no loss): ``<pad>``, ``<bos>``."""
    seed: int = 1234
    """Random seed (the official default)."""
    batch_size: int = 50
    """Sources per batch (B)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.tau, (int, float)) and math.isfinite(self.tau) and self.tau >= 0):
            raise ValueError(
                f"ERACConfig.tau (τ, the entropy weight) = {self.tau!r}: must be a finite number "
                f">= 0 (0.045 official ERAC, 0 for AC)."
            )
        if self.critic_tau is not None and not (
            math.isfinite(self.critic_tau) and self.critic_tau >= 0
        ):
            raise ValueError(
                f"ERACConfig.critic_tau (τ of the critic target V̄) = {self.critic_tau!r}: must be "
                f"None (= tau) or a finite number >= 0 (0 = no future entropy)."
            )
        if self.entropy_horizon not in ENTROPY_HORIZONS:
            raise ValueError(
                f"ERACConfig.entropy_horizon = {self.entropy_horizon!r}: use one of {ENTROPY_HORIZONS} "
                f"('all': the paper; 'reference': τ·H counted only at prefixes of at most |y*| tokens)."
            )
        if not (isinstance(self.target_temperature, (int, float)) and math.isfinite(self.target_temperature)
                and self.target_temperature > 0):
            raise ValueError(
                f"ERACConfig.target_temperature (T of the critic target's policy π^(1/T)) = {self.target_temperature!r}: "
                f"must be a finite number > 0 (1 = the actor's own policy, the paper)."
            )
        if self.target_entropy is not None and not (math.isfinite(self.target_entropy) and self.target_entropy > 0):
            raise ValueError(f"ERACConfig.target_entropy = {self.target_entropy!r}: must be none (fixed τ) or > 0 nats.")
        if self.target_entropy is not None and self.tau <= 0:
            raise ValueError(f"ERACConfig.target_entropy needs τ > 0 to adapt from (log τ); got tau={self.tau}.")
        if not isinstance(self.tau_anneal_updates, int) or self.tau_anneal_updates < 0:
            raise ValueError(f"ERACConfig.tau_anneal_updates = {self.tau_anneal_updates!r}: must be an int >= 0 "
                             f"(joint updates over which τ falls linearly to 0; 0 = a constant τ).")
        if self.tau_anneal_updates and self.target_entropy is not None:
            raise ValueError("ERACConfig: tau_anneal_updates and target_entropy both set τ during joint training; "
                             "use one (tau_anneal_updates=0 or target_entropy=null).")
        if not (math.isfinite(self.tau_lr) and self.tau_lr > 0):
            raise ValueError(f"ERACConfig.tau_lr = {self.tau_lr}: must be > 0.")
        if not (math.isfinite(self.beta) and 0.0 < self.beta <= 1.0):
            raise ValueError(
                f"ERACConfig.beta (β, the target-critic Polyak rate) = {self.beta}: must be in "
                f"(0, 1] (0.001 official; 1 = no averaging)."
            )
        for name, sym in (("lambda_var", "λ_var"), ("lambda_mle", "λ_mle")):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"ERACConfig.{name} ({sym}) = {value}: must be a finite number >= 0.")
        for name in ("actor_lr", "critic_pretrain_lr", "grad_clip"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"ERACConfig.{name} = {value}: must be > 0.")
        if not (math.isfinite(self.critic_lr) and self.critic_lr >= 0):
            raise ValueError(f"ERACConfig.critic_lr = {self.critic_lr}: must be >= 0 (0 freezes the critic in joint training).")
        for name in ("adam_betas", "critic_pretrain_adam_betas"):
            betas = tuple(getattr(self, name))
            if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
                raise ValueError(
                    f"ERACConfig.{name} = {getattr(self, name)!r}: must be two numbers in [0, 1)."
                )
            setattr(self, name, betas)
        if not 0.0 < self.actor_lr_decay <= 1.0:
            raise ValueError(f"ERACConfig.actor_lr_decay = {self.actor_lr_decay}: must be in (0, 1].")
        for name in ("critic_pretrain_epochs", "joint_epochs", "collapse_margin"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"ERACConfig.{name} = {value!r}: must be a finite number >= 0.")
        if self.actor_support < 0:
            raise ValueError(f"ERACConfig.actor_support = {self.actor_support}: must be >= 0 (0: the whole vocabulary).")
        if self.schedule not in ("sync", "async"):
            raise ValueError(f"ERACConfig.schedule = {self.schedule!r}: use 'sync' or 'async'.")
        if not (math.isfinite(self.replay_ratio) and self.replay_ratio > 0):
            raise ValueError(f"ERACConfig.replay_ratio = {self.replay_ratio}: must be > 0.")
        if not (self.replay_backend in ("memory", "redis") or self.replay_backend.startswith(("redis://", "rediss://", "unix://"))):
            raise ValueError(f"ERACConfig.replay_backend = {self.replay_backend!r}: use 'memory', 'redis' or a redis:// URL.")
        if self.replay_capacity is not None and self.replay_capacity < 1:
            raise ValueError(f"ERACConfig.replay_capacity = {self.replay_capacity}: must be >= 1 (episodes) or none.")
        for name, low in (
            ("valid_every", 0),
            ("mle_epochs", 1),
            ("weights_sync_every", 1),
            ("max_lr_decays", 0),
            ("sample_len_slack", 0),
            ("pretrain_len_slack", 0),
            ("samples_per_source", 1),
            ("pretrain_samples_per_source", 1),
            ("max_sample_len", 1),
            ("batch_size", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise ValueError(f"ERACConfig.{name} = {value!r}: must be an int >= {low}.")
        self.exclude_tokens = tuple(int(t) for t in self.exclude_tokens)
        if EOS in self.exclude_tokens:
            raise ValueError(
                f"ERACConfig.exclude_tokens = {self.exclude_tokens} contains <eos> ({EOS}); a "
                f"sequence could never end. Exclude only tokens that are never targets, e.g. "
                f"{BANNED_TOKENS}."
            )

    # ------------------------------------------------------------------- derived values

    @property
    def target_tau(self) -> float:
        """τ used in the critic's target V̄ (Eq. 19): ``critic_tau``, or ``tau`` when None."""
        return self.tau if self.critic_tau is None else float(self.critic_tau)

    def max_len(self, ref_len: torch.Tensor, pretrain: bool = False) -> torch.Tensor:
        """Decoder-step limit per source, min(|y*| + slack, max_sample_len) ``[B]`` (eos included).

        In ``rayseq.decoding``'s convention: at most ``max_len − 1`` tokens, eos forced at step
        ``max_len``.
        """
        slack = self.pretrain_len_slack if pretrain else self.sample_len_slack
        return (ref_len.long() + slack).clamp(min=1, max=self.max_sample_len)

    # ------------------------------------------------------------------- variants

    @classmethod
    def variant(cls, name: str, **overrides: object) -> ERACConfig:
        """The config of a named variant (``erac``, ``ac``, ``erac-nofutent``) plus ``overrides``."""
        if name not in VARIANTS:
            raise ValueError(f"unknown actor-critic variant {name!r}; known: {sorted(VARIANTS)}.")
        known = {f.name for f in fields(cls)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"ERACConfig: unknown field(s) {sorted(unknown)}; known: {sorted(known)}.")
        kwargs = {**VARIANTS[name], **overrides}
        cfg = cls(**kwargs)  # type: ignore[arg-type]
        if name == "erac-nofutent" and not (cfg.tau > 0 and cfg.target_tau == 0):
            raise ValueError(
                f"erac-nofutent needs τ > 0 for the actor and critic_tau = 0; got tau={cfg.tau}, "
                f"critic_tau={cfg.critic_tau}."
            )
        if name == "ac" and (cfg.tau != 0 or cfg.target_tau != 0):
            raise ValueError(f"ac needs τ = 0 everywhere; got tau={cfg.tau}, critic_tau={cfg.critic_tau}.")
        return cfg

    @classmethod
    def ac(cls, **overrides: object) -> ERACConfig:
        """Actor-critic of Bahdanau et al. (2016) as in the paper: τ = 0 for actor and critic."""
        return cls.variant("ac", **overrides)

    @classmethod
    def nofutent(cls, **overrides: object) -> ERACConfig:
        """ERAC without future entropy (Table 4): critic target with τ = 0, actor with τ > 0."""
        return cls.variant("erac-nofutent", **overrides)


@dataclass
class ACConfig(ERACConfig):
    """Actor-critic of Bahdanau et al. (2016) as the paper runs it: ERAC with τ = 0 everywhere."""

    tau: float = 0.0
    """τ: must stay 0 (AC has no entropy term); use ``--algo erac`` for τ > 0."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tau != 0 or self.target_tau != 0:
            raise ValueError(
                f"ACConfig: tau = {self.tau}, critic_tau = {self.critic_tau}: AC needs τ = 0 "
                f"everywhere; use --algo erac (or erac-nofutent) for τ > 0."
            )


@dataclass
class ERACEq20Config(ERACConfig):
    """ERAC with the actor objective of Eq. (20) as printed: the full τ · entropy in the actor
    (an ablation; the official code L2-normalises log π there, see ``normalize_logpi_l2``)."""

    normalize_logpi_l2: bool = False
    """Must stay False in this variant (that is what it is)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.normalize_logpi_l2:
            raise ValueError("ERACEq20Config: normalize_logpi_l2 = True is plain `--algo erac`; this variant is Eq. (20) as printed.")


@dataclass
class ERACNoFutEntConfig(ERACConfig):
    """ERAC without future entropy (Table 4): the critic's target uses τ = 0, the actor τ > 0."""

    critic_tau: float | None = 0.0
    """τ of the critic target V̄: must stay 0 in this ablation."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.tau > 0 and self.target_tau == 0):
            raise ValueError(
                f"ERACNoFutEntConfig: tau = {self.tau}, critic_tau = {self.critic_tau}: the ablation "
                f"needs τ > 0 for the actor and critic_tau = 0."
            )


# ======================================================================= steps and rewards


def step_masks(
    lengths: torch.Tensor, capped: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mask, done)`` ``[N, width]`` bool for sequences of ``lengths`` L ``[N]`` tokens.

    ``capped`` ``[N]`` bool: the sequence hit the length cap (eos forced, not chosen).
    ``mask[n, t]``: step t exists (t ≤ L, or t < L when capped). ``done[n, t]``: step t is
    terminal (t = L, the eos action; t = L − 1 when capped), i.e. V̄ = 0 after it. ``width`` must
    be ≥ max L + 1 (the ``tgt_in`` width).
    """
    lengths = lengths.long()
    capped = capped.bool()
    if lengths.numel() and int(lengths.max()) + 1 > width:
        raise ValueError(
            f"step_masks: width={width} is too small for a sequence of {int(lengths.max())} "
            f"tokens (needs lengths.max() + 1 positions: <bos> y_1 … y_L)."
        )
    if bool((capped & (lengths < 1)).any()):
        raise ValueError("step_masks: a capped sequence must have at least one token.")
    last = lengths - capped.long()  # [N] index of the terminal step
    t = torch.arange(width, device=lengths.device).unsqueeze(0)  # [1, T]
    mask = t <= last.unsqueeze(1)  # [N, T]
    done = t == last.unsqueeze(1)  # [N, T]
    return mask, done


def capped_at(lengths: torch.Tensor, max_len: int | torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: the sample hit the decoder-step limit ``max_len`` (``rayseq.decoding``'s
    convention: L = max_len − 1 tokens, eos forced)."""
    return lengths.long() >= torch.as_tensor(max_len, device=lengths.device).long() - 1


def token_rewards(
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    refs: Sequence[Sequence[int]],
    width: int,
    smooth: str = "plus1",
    scale: str | None = "ref_len",
) -> torch.Tensor:
    """Rewards r_t ``[N, width]`` float32 of sampled ``tokens`` ``[N, L]`` (Eq. 13).

    r_t = scale · (BLEU(y_1..t+1) − BLEU(y_1..t)) for t < L — the arithmetic of
    ``envs.rewards.bleu_increments`` (scale = |y*| with ``"ref_len"``, the official reward) —
    and 0 from t = L on (the eos step earns 0, Eq. 4). ``refs[n]`` is y* of row n (no bos/eos).
    """
    n = tokens.size(0)
    if len(refs) != n:
        raise ValueError(f"token_rewards: {n} sequences but {len(refs)} references.")
    toks = tokens.detach().cpu().numpy()
    lens = lengths.detach().cpu().long().numpy()
    if lens.size and int(lens.max()) > width - 1:
        raise ValueError(f"token_rewards: width={width} < longest sequence + 1 = {int(lens.max()) + 1}.")
    hyps = [toks[i, : lens[i]] for i in range(n)]
    ref_arrays = [np.asarray(r, dtype=np.int64) for r in refs]
    bleus = prefix_bleu_batch(hyps, ref_arrays, smooth)
    out = np.zeros((n, width), dtype=np.float64)
    for i, b in enumerate(bleus):
        if len(b):
            out[i, : len(b)] = np.diff(b, prepend=0.0) * reward_scale(len(b), ref_arrays[i], scale)
    return torch.from_numpy(out).to(dtype=torch.float32, device=tokens.device)


def policy_log_probs(
    logits: torch.Tensor, exclude: Sequence[int] = BANNED_TOKENS
) -> torch.Tensor:
    """log π(· | s) ``[..., V]`` = log_softmax(mask_logits(logits)): −inf at ``exclude``.

    Half / bf16 logits are upcast to float32; float64 stays float64.
    """
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return F.log_softmax(mask_logits(logits, exclude), dim=-1)


TAU_RANGE: tuple[float, float] = (1e-6, 10.0)
"""The automatic temperature stays in this range (``temperature_step``)."""


def temperature_step(tau: float, entropy: float, target_entropy: float, lr: float) -> float:
    """One gradient step of SAC's temperature loss J(log τ) = log τ · (H(π) − H̄) on log τ:
    log τ ← log τ + lr · (H̄ − H). Below the target entropy τ grows (more entropy bonus), above it
    shrinks; clipped to :data:`TAU_RANGE`."""
    if not (tau > 0 and math.isfinite(entropy) and lr > 0):
        raise ValueError(f"temperature_step: needs τ > 0, a finite entropy and lr > 0; got {tau}, {entropy}, {lr}.")
    low, high = TAU_RANGE
    return float(min(max(tau * math.exp(lr * (target_entropy - entropy)), low), high))


def annealed_tau(tau: float, joint_updates: int, anneal_updates: int) -> float:
    """τ after ``joint_updates`` joint updates of a linear anneal to 0 over ``anneal_updates``:
    τ · max(0, 1 − u / N); ``anneal_updates`` = 0 keeps τ."""
    if joint_updates < 0 or anneal_updates < 0:
        raise ValueError(f"annealed_tau: needs joint_updates >= 0 and anneal_updates >= 0; got {joint_updates}, {anneal_updates}.")
    if anneal_updates == 0:
        return float(tau)
    return float(tau) * max(0.0, 1.0 - joint_updates / anneal_updates)


def sharpen_log_probs(logp: torch.Tensor, temperature: float) -> torch.Tensor:
    """log π_T ``[..., V]`` of π_T(w|s) = π(w|s)^{1/T} / Σ_v π(v|s)^{1/T}: log_softmax(log π / T).

    T = 1 returns ``logp`` itself; T → 0 tends to the greedy policy; −inf (excluded tokens) stays −inf.
    """
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"sharpen_log_probs: temperature={temperature!r} must be a finite number > 0.")
    if temperature == 1.0:
        return logp
    return F.log_softmax(logp / temperature, dim=-1)


def gather_actions(q: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Q(s_t, a_t) ``[N, T]`` from ``q`` ``[N, T, V]`` and ``actions`` ``[N, T]`` (``tgt_out``)."""
    return q.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def _num_seqs(mask: torch.Tensor, num_seqs: int | None = None) -> int:
    """Sequences the per-step sums are averaged over: ``num_seqs``, else the batch rows of ``mask``."""
    return max(int(num_seqs) if num_seqs is not None else mask.size(0), 1)


def _finite_logp(logp: torch.Tensor, exclude: Sequence[int]) -> torch.Tensor:
    """``logp`` with the excluded columns (log π = −inf) set to 0: a finite copy, one pass."""
    if not len(exclude):
        return logp.clone()
    idx = torch.as_tensor(tuple(exclude), dtype=torch.long, device=logp.device)
    return logp.index_fill(-1, idx, 0.0)


# ======================================================================= critic


def reference_horizon(ref_len: torch.Tensor, width: int) -> torch.Tensor:
    """``[N, T]`` bool: state position t is within the reference episode, t ≤ |y*| ``ref_len`` ``[N]``.

    The reference y* visits the prefixes of 0 … |y*| tokens (its eos is chosen at t = |y*|);
    ``ERACConfig.entropy_horizon = "reference"`` counts the entropy bonus only there.
    """
    return torch.arange(width, device=ref_len.device)[None, :] <= ref_len.long()[:, None]


def soft_value(
    q: torch.Tensor,  # [N, T, V] target-critic Q̄(s_t, ·)
    logp: torch.Tensor,  # [N, T, V] log π(· | s_t), −inf at banned tokens
    tau: float,
    mask: torch.Tensor | None = None,  # [N, T] bool, states to keep
    exclude: Sequence[int] = BANNED_TOKENS,
    entropy_mask: torch.Tensor | None = None,  # [N, T] bool, states whose τ·H counts
) -> torch.Tensor:
    """Soft state value under π, Eq. (9) with α = τ: V̄(s) = Σ_w π(w|s)·(Q̄(s, w) − τ log π(w|s)).

    = E_π[Q̄] + τ H(π). Tokens in ``exclude`` (π = 0, log π = −inf) contribute 0 whatever their Q
    (even NaN); another token whose π underflows to 0 contributes 0 for a finite Q. τ = 0 gives the AC value Σ_w π Q̄ (Bahdanau et al. 2016). Returns ``[N, T]``, 0
    where ``mask`` is False. ``entropy_mask`` (None: every state): the states whose τ H(π) counts;
    elsewhere V̄ is the τ = 0 value (``reference_horizon``). No gradient is meant to flow (callers
    pass a target critic's Q̄ and a detached π).
    """
    if q.shape != logp.shape:
        raise ValueError(f"soft_value: q {tuple(q.shape)} and logp {tuple(logp.shape)} differ.")
    if tau < 0:
        raise ValueError(f"soft_value: τ={tau} must be >= 0.")
    if entropy_mask is not None and entropy_mask.shape != q.shape[:-1]:
        raise ValueError(f"soft_value: entropy_mask {tuple(entropy_mask.shape)} must be {tuple(q.shape[:-1])}.")
    p = logp.exp()  # [N, T, V], exactly 0 where log π = −inf
    idx = torch.as_tensor(tuple(exclude), dtype=torch.long, device=q.device)
    if tau > 0:
        lp = logp.clamp(min=torch.finfo(logp.dtype).min)  # −inf → finite; π = 0 there
        if entropy_mask is not None:
            lp = lp * entropy_mask.unsqueeze(-1).to(lp.dtype)  # no bonus outside the horizon
        inner = (q - tau * lp).index_fill_(-1, idx, 0.0)  # fresh tensor: Q − τ log π, 0 at excluded
    else:
        inner = q.index_fill(-1, idx, 0.0)
    v = (p * inner).sum(-1)  # [N, T]
    if mask is not None:
        v = torch.where(mask, v, 0.0)
    return v


def soft_td_target(
    rewards: torch.Tensor,  # [N, T] r_t of the action taken at s_t
    values: torch.Tensor,  # [N, T] V̄(s_t) at every state position t (soft_value)
    done: torch.Tensor,  # [N, T] bool, step t is terminal
    mask: torch.Tensor | None = None,  # [N, T] bool, steps that exist
) -> torch.Tensor:
    """Soft TD target, Eq. (19) (≡ Eq. 11 with γ = 1): Q̂_t = r_t + V̄(s_{t+1}), 0 after a terminal step.

    ``values`` is V̄ at each state, aligned with the steps: the function shifts it, so V̄(s_{t+1})
    = ``values[:, t + 1]`` (beyond the last column: 0). Where ``done`` (the eos action, or the last
    token of a capped sequence) the target is r_t alone; the values there and after it are never
    read (padding can hold anything). Returns ``[N, T]``, 0 where ``mask`` is False; detached.
    """
    if not (rewards.shape == values.shape == done.shape):
        raise ValueError(
            f"soft_td_target: rewards {tuple(rewards.shape)}, values {tuple(values.shape)} and "
            f"done {tuple(done.shape)} must all be [N, T]."
        )
    next_v = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)  # [N, T] V̄(s_{t+1})
    target = rewards + torch.where(done.bool(), 0.0, next_v)  # [N, T]
    if mask is not None:
        target = torch.where(mask, target, 0.0)
    return target.detach()


class CriticLoss(NamedTuple):
    """The critic loss and its parts (each summed over steps, averaged over sequences)."""

    loss: torch.Tensor  # [] td + λ_var · var, to minimise
    td: torch.Tensor  # [] ½ Σ_t (Q(s_t, a_t) − Q̂_t)²
    var: torch.Tensor  # [] Σ_t Var_w Q(s_t, w) (unweighted; 0, not computed, when λ_var = 0)
    num_tokens: torch.Tensor  # [] int64, steps covered


def critic_loss(
    q_taken: torch.Tensor,  # [N, T] Q_φ(s_t, a_t)
    target: torch.Tensor,  # [N, T] Q̂_t (detached here)
    q_all: torch.Tensor,  # [N, T, V] Q_φ(s_t, ·)
    mask: torch.Tensor,  # [N, T] bool, steps that exist
    lambda_var: float,
    exclude: Sequence[int] = BANNED_TOKENS,
    num_seqs: int | None = None,
) -> CriticLoss:
    """TD loss of Eq. (18) plus the λ_var smoothing of §4.2 (Bahdanau et al. 2016).

    td = (1/N) Σ_n Σ_t ½ (Q_φ(s_t, a_t) − sg[Q̂_t])². The ½ makes the gradient (Q − Q̂), exactly
    the official ``−sg[Q̂ − Q]·Q``, so λ_var keeps its official relative weight (Eq. 18 as printed
    is twice this).
    var = (1/N) Σ_n Σ_t Var_w Q_φ(s_t, w) over the allowed tokens (not ``exclude``), with the
    unbiased 1/(|W| − 1) of the official ``Q_all.var(2)`` (the paper writes the plain sum).
    Steps where ``mask`` is False contribute nothing, not even gradient (the official code also
    applies the variance at padding). ``num_seqs``: the N of the average (default: the rows of
    ``mask``; pass it when the steps of N sequences come packed as ``[1, K]`` rows).
    """
    if q_taken.shape != target.shape or q_taken.shape != mask.shape or q_all.shape[:2] != mask.shape:
        raise ValueError(
            f"critic_loss: q_taken {tuple(q_taken.shape)}, target {tuple(target.shape)}, mask "
            f"{tuple(mask.shape)} must be [N, T] and q_all {tuple(q_all.shape)} [N, T, V]."
        )
    if lambda_var < 0:
        raise ValueError(f"critic_loss: λ_var={lambda_var} must be >= 0.")
    mask = mask.bool()
    n = _num_seqs(mask, num_seqs)
    # TD error (Eq. 18)
    err = q_taken.masked_fill(~mask, 0.0) - target.detach().masked_fill(~mask, 0.0)  # [N, T]
    td = 0.5 * err.pow(2).sum() / n
    # Q-variance smoothing over the allowed vocabulary (two-pass; excluded columns subtracted)
    if lambda_var > 0:
        v_all = q_all.size(-1)
        idx = torch.as_tensor(tuple(exclude), dtype=torch.long, device=q_all.device)
        n_ok = v_all - int(idx.numel())
        q_ex = q_all.index_select(-1, idx)  # [N, T, |exclude|]
        mean = (q_all.sum(-1) - q_ex.sum(-1)) / n_ok  # [N, T]
        sq = (q_all - mean.unsqueeze(-1)).pow(2).sum(-1) - (q_ex - mean.unsqueeze(-1)).pow(2).sum(-1)
        var_t = sq / max(n_ok - 1, 1)  # [N, T] unbiased, as torch.var
        var = var_t.masked_fill(~mask, 0.0).sum() / n
    else:
        var = q_all.new_zeros(())
    return CriticLoss(loss=td + lambda_var * var, td=td, var=var, num_tokens=mask.sum())


# ======================================================================= actor


@torch.no_grad()
def support_signal(signal: torch.Tensor, p: torch.Tensor, logp: torch.Tensor, k: int) -> torch.Tensor:
    """``signal`` (sg[Q − τ log π], ``[..., V]``) with the tokens outside the ``k`` most likely under
    π replaced by the π-weighted mean over those ``k``: Σ_w π_w·signal_w is then that mean, and
    ∂/∂logit_j = −π_j (signal_j − mean) is 0 outside the support, unchanged in form inside it.
    ``k`` ≤ 0 or ≥ V: ``signal`` itself."""
    if k <= 0 or k >= signal.size(-1):
        return signal
    inside = top_k_mask(logp, k)
    w = torch.where(inside, p, torch.zeros_like(p))
    mean = (w * signal).sum(-1, keepdim=True) / w.sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
    return torch.where(inside, signal, mean)


def actor_objective(
    logits: torch.Tensor,  # [N, T, V] actor logits at s_t
    q: torch.Tensor,  # [N, T, V] critic Q_φ(s_t, ·) (detached here)
    mask: torch.Tensor,  # [N, T] bool, steps that exist
    tau: float,
    normalize_logpi_l2: bool = False,
    exclude: Sequence[int] = BANNED_TOKENS,
    num_seqs: int | None = None,
    support: int = 0,
) -> torch.Tensor:
    """Actor loss of Eq. (20): −(1/N) Σ_n Σ_t Σ_w π_θ(w|s_t) · sg[Q_φ(s_t, w) − τ log π_θ(w|s_t)].

    The expectation is over the whole vocabulary (no sampled action, no baseline; Bahdanau et al.
    2016), π = softmax(mask_logits(logits, exclude)). The gradient flows only through π; it equals
    Eq. (20), Σ_w ∇π(w)·Q(w) + τ ∇H(π), because Σ_w ∇π(w) = 0. Per step,
    ∂/∂logit_j = −π_j (A_j − Σ_w π_w A_w) with A = Q − τ log π.

    ``normalize_logpi_l2=True`` reproduces the official code (undocumented in the paper): inside
    the bracket log π is replaced by log π / (1e-8 + ‖log π‖₂), the L2 norm taken over the allowed
    vocabulary, which shrinks the entropy term by ‖log π‖₂ (≈ √V · |mean log π|). Only the
    entropy term changes; with τ = 0 the option has no effect.
    ``support`` > 0 restricts the expectation to the actor's ``support`` most likely tokens per
    step (``support_signal``; ``ERACConfig.actor_support``).
    Returns a scalar; 0 contribution (and gradient) where ``mask`` is False. ``num_seqs``: the N
    of the average (default: the rows of ``mask``; for steps packed as ``[1, K]`` rows).
    """
    if logits.shape != q.shape or logits.shape[:2] != mask.shape:
        raise ValueError(
            f"actor_objective: logits {tuple(logits.shape)} and q {tuple(q.shape)} must be "
            f"[N, T, V] and mask {tuple(mask.shape)} [N, T]."
        )
    if tau < 0:
        raise ValueError(f"actor_objective: τ={tau} must be >= 0.")
    mask = mask.bool()
    n = _num_seqs(mask, num_seqs)
    every = bool(mask.all())
    if not every:
        logits = logits.masked_fill(~mask.unsqueeze(-1), 0.0)  # padded steps: finite, no gradient
    logp = policy_log_probs(logits, exclude)  # [N, T, V]
    p = logp.exp()  # [N, T, V], 0 at excluded tokens
    with torch.no_grad():
        if tau > 0:
            lp = _finite_logp(logp.detach(), exclude)  # [N, T, V], 0 at excluded tokens
            if normalize_logpi_l2:
                lp = lp / (L2_EPS + lp.norm(p=2, dim=-1, keepdim=True))
            signal = q.to(lp.dtype) - tau * lp  # sg[Q − τ log π], a fresh tensor
        else:
            signal = q.to(p.dtype, copy=True)
        if len(exclude):  # π = 0 there; make 0 · Q = 0 even for a non-finite Q
            signal.index_fill_(-1, torch.as_tensor(tuple(exclude), dtype=torch.long, device=signal.device), 0.0)
        signal = support_signal(signal, p.detach(), logp.detach(), support)
    per_step = (p * signal).sum(-1)  # [N, T]
    if not every:
        per_step = per_step.masked_fill(~mask, 0.0)
    return -per_step.sum() / n


class ActorLoss(NamedTuple):
    """The actor loss and its parts."""

    loss: torch.Tensor  # [] objective + λ_mle · mle, to minimise
    objective: torch.Tensor  # [] actor_objective (Eq. 20)
    mle: torch.Tensor  # [] MLE on the reference (token NLL summed over time, mean over batch)
    num_tokens: torch.Tensor  # [] int64, actor steps covered


def erac_actor_loss(
    logits: torch.Tensor,  # [N, T, V] actor logits on the sampled sequences
    q: torch.Tensor,  # [N, T, V] critic Q on the same positions
    mask: torch.Tensor,  # [N, T] bool
    tau: float,
    lambda_mle: float,
    mle_logits: torch.Tensor | None = None,  # [B, T*, V] actor logits on bos + y*
    mle_targets: torch.Tensor | None = None,  # [B, T*] y* eos pad…
    normalize_logpi_l2: bool = False,
    exclude: Sequence[int] = BANNED_TOKENS,
    num_seqs: int | None = None,
    support: int = 0,
) -> ActorLoss:
    """Joint-training actor loss (§4.2): Eq. (20) + λ_mle · MLE on the reference.

    The MLE term is ``rayseq.algorithms.mle.mle_loss`` (official ``train_mle``); it may be
    omitted (``mle_logits=None``) only when λ_mle = 0. With ``num_seqs`` (packed steps) both terms
    are sums divided by ``num_seqs``.
    """
    if lambda_mle < 0:
        raise ValueError(f"erac_actor_loss: λ_mle={lambda_mle} must be >= 0.")
    objective = actor_objective(logits, q, mask, tau, normalize_logpi_l2, exclude, num_seqs, support)
    if mle_logits is None or mle_targets is None:
        if lambda_mle > 0:
            raise ValueError(
                f"erac_actor_loss: λ_mle={lambda_mle} > 0 needs mle_logits and mle_targets "
                f"(the actor's teacher-forced logits on the reference)."
            )
        mle = objective.new_zeros(())
    elif num_seqs is not None:
        mle = sequence_nll(mle_logits, mle_targets).sum() / max(int(num_seqs), 1)
    else:
        mle = mle_loss(mle_logits, mle_targets).loss
    return ActorLoss(
        loss=objective + lambda_mle * mle, objective=objective, mle=mle, num_tokens=mask.sum()
    )


# ======================================================================= metrics


@torch.no_grad()
def entropy(logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean policy entropy H(π(·|s_t)) = −Σ_w π log π in nats over the steps in ``mask``.

    ``logp`` ``[N, T, V]`` (−inf allowed: 0 · log 0 = 0). Returns a scalar (``entropy`` metric).
    """
    p = logp.exp()
    h = -(p * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(-1)  # [N, T]; 0·log 0 = 0
    if mask is None:
        return h.mean()
    mask = mask.bool()
    return h.masked_fill(~mask, 0.0).sum() / mask.sum().clamp(min=1)
