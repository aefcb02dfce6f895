"""RLlib's own PPO / APPO / SAC on the sequence MDP (the swap-ins' RLlib glue).

``register_seq_env`` registers ``envs.make_env`` with Tune (``ENV_NAME``: the task's training pairs
as episodes, the native vector env on each env runner); ``CONFIGURE`` maps each typed config
(``rayseq.algorithms.swapins``) onto RLlib's ``AlgorithmConfig``; :func:`actor_state` reads the
actor's weights back from the learner. ``rayseq.runtime.builders.build_swapin_algorithm`` builds
the unchanged RLlib ``Algorithm`` from these.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from rayseq.algorithms.swapins import (
    APPOSwapConfig,
    PPOSwapConfig,
    SACSwapConfig,
)
from rayseq.runtime.swapin_module import (
    SeqAPPOModule,
    SeqPPOModule,
    SeqSACModule,
)

ENV_NAME = "rayseq-seqpred"
"""Tune name of the sequence environment (``envs.make_env``)."""

MODULES: dict[type, type] = {PPOSwapConfig: SeqPPOModule, APPOSwapConfig: SeqAPPOModule, SACSwapConfig: SeqSACModule}
"""Swap-in config class → the RLModule that meets its learner's API requirements."""


def register_seq_env() -> None:
    """``ENV_NAME`` → ``envs.make_env`` (idempotent)."""
    from ray.tune.registry import register_env

    from envs import make_env

    register_env(ENV_NAME, make_env)


def _ppo(rl_cfg: Any, sw: PPOSwapConfig) -> None:
    rl_cfg.training(
        train_batch_size_per_learner=sw.train_batch_size,
        minibatch_size=sw.minibatch_size,
        num_epochs=sw.num_epochs,
        clip_param=sw.clip_param,
        vf_loss_coeff=sw.vf_loss_coeff,
        vf_clip_param=sw.vf_clip_param,
        lambda_=sw.gae_lambda,
        use_kl_loss=sw.use_kl_loss,
        kl_coeff=sw.kl_coeff,
        entropy_coeff=sw.entropy_coeff,
        lr=sw.lr,
    )


def _appo(rl_cfg: Any, sw: APPOSwapConfig) -> None:
    rl_cfg.training(
        train_batch_size_per_learner=sw.train_batch_size,
        clip_param=sw.clip_param,
        vf_loss_coeff=sw.vf_loss_coeff,
        use_kl_loss=sw.use_kl_loss,
        kl_coeff=sw.kl_coeff,
        entropy_coeff=sw.entropy_coeff,
        target_network_update_freq=sw.target_update_freq,
        tau=sw.target_tau,
        lr=sw.lr,
    )
    rl_cfg.env_runners(rollout_fragment_length=sw.rollout_fragment_length)
    # asynchronous: a training_step only trains on what has arrived, so one iteration runs steps
    # until one batch has been trained on (with 0 s it could return having done nothing)
    rl_cfg.reporting(min_train_timesteps_per_iteration=sw.train_batch_size)


def _sac(rl_cfg: Any, sw: SACSwapConfig) -> None:
    # The actor's lr is 0 for the first actor_warmup sampled transitions, then actor_lr
    # (RLlib's piecewise-linear lr schedule, in sampled env steps).
    actor_lr: Any = sw.actor_lr if sw.actor_warmup == 0 else [[0, 0.0], [sw.actor_warmup, 0.0], [sw.actor_warmup + 1, sw.actor_lr]]
    rl_cfg.training(
        train_batch_size_per_learner=sw.train_batch_size,
        actor_lr=actor_lr,
        critic_lr=sw.critic_lr,
        alpha_lr=sw.alpha_lr,
        initial_alpha=sw.initial_alpha,
        target_entropy="auto" if sw.target_entropy is None else sw.target_entropy,
        tau=sw.target_tau,
        twin_q=True,
        num_steps_sampled_before_learning_starts=sw.learning_starts,
        training_intensity=sw.training_intensity,
        replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer", "capacity": sw.replay_capacity, "alpha": 0.6, "beta": 0.4},
    )
    rl_cfg.env_runners(rollout_fragment_length=sw.rollout_fragment_length)


CONFIGURE: dict[type, Any] = {PPOSwapConfig: _ppo, APPOSwapConfig: _appo, SACSwapConfig: _sac}
"""Swap-in config class → the function that maps it onto RLlib's ``AlgorithmConfig``."""


def actor_state(algo: Any) -> dict[str, np.ndarray]:
    """The actor's weights on the (first) learner, as numpy arrays."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    def get(learner: Any) -> dict[str, np.ndarray]:
        actor = learner.module[DEFAULT_MODULE_ID].unwrapped().actor_model()
        return {k: v.detach().cpu().numpy().copy() for k, v in actor.state_dict().items()}

    first = next(iter(algo.learner_group.foreach_learner(get)))
    return first.get()  # re-raises a learner's error
