"""Typed configs of the swap-ins: RLlib's own PPO, APPO and SAC (discrete) on the sequence MDP.

The swap-ins are not the paper's algorithms: they are standard RL algorithms, run unchanged from
``ray.rllib.algorithms`` on the same environment (``envs.seqpred``: action = next token, reward =
BLEU increment, γ = 1), with the project's actor as their policy, started from the same MLE actor
as ERAC (``actor_init`` or the run's own MLE stage). The losses are RLlib's (PPO's clipped
surrogate, APPO's V-trace surrogate, discrete SAC's soft Bellman and policy losses); this module
only holds the hyper-parameters a user changes, with their defaults, and checks them. No ray.

One *iteration* is one ``Algorithm.train()`` call: PPO samples ``train_batch_size`` tokens (env
steps) and makes ``num_epochs`` passes over them in minibatches; APPO trains asynchronously on
what its env runners sent until one ``train_batch_size`` batch was trained on; SAC samples
``rollout_fragment_length`` tokens per env and makes one update of ``train_batch_size`` replayed
transitions.

**Defaults are sized for Multi30k on 2 CPU cores** (about 20 minutes per swap-in after the MLE
stage): each training row re-encodes its source and teacher-forces its prefix (the module is
stateless, ``rayseq.runtime.swapin_module``), about 13 ms of one core per row with the paper's
actor; PPO then costs ~(num_epochs + 1) × train_batch_size rows per iteration (≈ 1 min).
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class SwapInConfig:
    """Settings every swap-in shares (the budget, validation, the MLE start, the episode caps)."""

    actor_init: str | None = None
    """The MLE-pretrained actor: a run directory or actor file (``rayseq train --algo mle``). None:
    the run trains it first in ``RUN_DIR/mle`` (run-level ``epochs`` = its epochs), as ERAC does."""
    iterations: int = 20
    """Budget: ``Algorithm.train()`` calls (see the module docstring for what one does)."""
    valid_every_iters: int = 5
    """Validate the actor (BLEU on the valid split) every this many iterations, and at the end."""
    lr: float = 1e-5
    """Adam learning rate of the policy (PPO/APPO: policy and value head; SAC: see actor_lr)."""
    grad_clip: float | None = 5.0
    """Clip each gradient's global norm to this (None: no clipping)."""
    gamma: float = 1.0
    """Discount γ; 1 as in the paper (episodic, finite)."""
    entropy_coeff: float = 0.0
    """Weight of the policy's entropy bonus (PPO/APPO)."""
    head_hidden: int = 256
    """Hidden width of the value / Q heads (an MLP on the actor's detached decoder state)."""
    sample_len_slack: int = 10
    """Episodes end after min(|y*| + slack, max_sample_len) tokens (eos forced there)."""
    max_sample_len: int = 50
    """Hard cap on the tokens of an episode."""

    def __post_init__(self) -> None:
        positive = ("iterations", "valid_every_iters", "head_hidden", "max_sample_len")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name}={getattr(self, name)}: must be >= 1.")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and value < 0 and f.name not in ("target_entropy",):
                raise ValueError(f"{type(self).__name__}.{f.name}={value}: must be >= 0.")
        if self.lr <= 0:
            raise ValueError(f"{type(self).__name__}.lr={self.lr}: must be > 0.")
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"{type(self).__name__}.gamma={self.gamma}: must be in (0, 1].")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"{type(self).__name__}.grad_clip={self.grad_clip}: must be > 0, or none.")
        if self.sample_len_slack < 0:
            raise ValueError(f"{type(self).__name__}.sample_len_slack={self.sample_len_slack}: must be >= 0.")


@dataclass
class PPOSwapConfig(SwapInConfig):
    """RLlib PPO (Schulman et al. 2017) with GAE; ``ray.rllib.algorithms.ppo.PPOConfig``."""

    train_batch_size: int = 1000
    """Tokens (env steps) sampled per iteration."""
    minibatch_size: int = 250
    """Tokens per SGD minibatch."""
    num_epochs: int = 2
    """Passes over each iteration's tokens."""
    clip_param: float = 0.2
    """ε of the clipped surrogate: the ratio π/π_old is clipped to [1 − ε, 1 + ε]."""
    vf_loss_coeff: float = 0.5
    """Weight of the value loss (the value head only: it reads the detached decoder state)."""
    vf_clip_param: float = 1000.0
    """Clip of the squared value error (RLlib's default 10 is tuned for small returns; a
    sequence's return is up to |y*| BLEU points on the ref_len reward scale)."""
    gae_lambda: float = 0.95
    """λ of generalised advantage estimation."""
    use_kl_loss: bool = False
    """Add RLlib's adaptive KL(π_old ‖ π) penalty."""
    kl_coeff: float = 0.2
    """Initial KL penalty weight (use_kl_loss)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("train_batch_size", "minibatch_size", "num_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"PPOSwapConfig.{name}={getattr(self, name)}: must be >= 1.")
        if self.minibatch_size > self.train_batch_size:
            raise ValueError(
                f"PPOSwapConfig.minibatch_size={self.minibatch_size} > train_batch_size="
                f"{self.train_batch_size}: a minibatch is part of an iteration's batch; lower it."
            )


@dataclass
class APPOSwapConfig(SwapInConfig):
    """RLlib APPO (asynchronous PPO with V-trace, IMPALA's architecture); ``APPOConfig``."""

    train_batch_size: int = 1000
    """Tokens per learner update."""
    rollout_fragment_length: int = 50
    """Tokens an env runner sends at a time (V-trace's trajectory length)."""
    clip_param: float = 0.2
    """ε of APPO's clipped surrogate."""
    vf_loss_coeff: float = 0.5
    """Weight of the value loss."""
    use_kl_loss: bool = False
    """Add the KL(π_target ‖ π) penalty."""
    kl_coeff: float = 0.2
    """KL penalty weight (use_kl_loss)."""
    target_update_freq: int = 2
    """Update the old-policy target network every this many learner updates."""
    target_tau: float = 1.0
    """Polyak weight of that update (1 = copy)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("train_batch_size", "rollout_fragment_length", "target_update_freq"):
            if getattr(self, name) < 1:
                raise ValueError(f"APPOSwapConfig.{name}={getattr(self, name)}: must be >= 1.")
        if not 0 < self.target_tau <= 1:
            raise ValueError(f"APPOSwapConfig.target_tau={self.target_tau}: must be in (0, 1].")


@dataclass
class SACSwapConfig(SwapInConfig):
    """RLlib SAC for discrete actions (Christodoulou 2019) with twin Q heads; ``SACConfig``."""

    iterations: int = 80
    """Budget: ``Algorithm.train()`` calls (one sample call and one update each)."""
    train_batch_size: int = 128
    """Replayed transitions per update."""
    rollout_fragment_length: int = 4
    """Tokens each env samples per iteration (one iteration = one sample call of
    envs × env runners × this, then one update: replay ratio train_batch_size / that)."""
    actor_lr: float = 1e-5
    """Adam learning rate of the policy (the actor); ``lr`` is unused by SAC."""
    critic_lr: float = 3e-4
    """Adam learning rate of the Q heads."""
    alpha_lr: float = 0.0
    """Adam learning rate of log α (0: the temperature α stays at initial_alpha)."""
    initial_alpha: float = 0.05
    """Temperature α of the entropy term at the start."""
    target_entropy: float | None = None
    """Entropy (nats) α is tuned towards when alpha_lr > 0 (None: RLlib's 'auto')."""
    target_tau: float = 0.005
    """Polyak weight of the target Q heads' update."""
    replay_capacity: int = 50_000
    """Transitions kept in RLlib's prioritised episode replay buffer."""
    learning_starts: int = 1000
    """Transitions sampled before the first update."""
    actor_warmup: int = 2000
    """Transitions sampled while the actor's lr is 0 (the Q heads learn first, as the paper's
    critic pretraining; after it the actor lr steps to actor_lr)."""
    training_intensity: float | None = None
    """Replayed / sampled transitions ratio (None: RLlib's default, one update per sample call)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("train_batch_size", "replay_capacity", "rollout_fragment_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"SACSwapConfig.{name}={getattr(self, name)}: must be >= 1.")
        for name in ("learning_starts", "actor_warmup"):
            if getattr(self, name) < 0:
                raise ValueError(f"SACSwapConfig.{name}={getattr(self, name)}: must be >= 0.")
        if self.initial_alpha <= 0:
            raise ValueError(f"SACSwapConfig.initial_alpha={self.initial_alpha}: must be > 0.")
        if not 0 < self.target_tau <= 1:
            raise ValueError(f"SACSwapConfig.target_tau={self.target_tau}: must be in (0, 1].")
