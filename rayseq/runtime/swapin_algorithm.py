"""Building RLlib's own PPO / APPO / SAC for the sequence MDP (the swap-ins' RLlib glue).

:func:`build_swapin_algorithm` registers ``envs.make_env`` with Tune (``ENV_NAME``: the task's
training pairs as episodes, the native vector env on each env runner), maps the typed config
(``rayseq.algorithms.swapins``) onto RLlib's ``AlgorithmConfig``, checks that the module has every
API the algorithm's learner requires (``rl_module_required_apis``), and builds the unchanged
RLlib ``Algorithm``. :func:`actor_state` reads the actor's weights back from the learner.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np

from rayseq.algorithms.swapins import (
    APPOSwapConfig,
    PPOSwapConfig,
    SACSwapConfig,
    SwapInConfig,
)
from rayseq.config import RunConfig
from rayseq.data.tasks import Task
from rayseq.runtime.swapin_module import (
    HEAD_HIDDEN,
    INIT_ACTOR,
    SeqAPPOModule,
    SeqPPOModule,
    SeqSACModule,
    check_module_apis,
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


_CONFIGURE = {PPOSwapConfig: _ppo, APPOSwapConfig: _appo, SACSwapConfig: _sac}


def build_swapin_algorithm(cfg: RunConfig, task: Task, init_actor: str | None) -> Any:
    """RLlib's Algorithm (``registry`` entry ``cfg.algo``) with the actor module, from ``init_actor``."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from rayseq.registry import get_algorithm

    sw: SwapInConfig = cfg.algo_config
    module_cls = MODULES[type(sw)]
    register_seq_env()
    model_config = asdict(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab)))
    model_config.update({INIT_ACTOR: init_actor, HEAD_HIDDEN: sw.head_hidden})
    from envs import CAPTIONING_ID, TRANSLATION_ID

    env_id = CAPTIONING_ID if len(task.src_vocab) == 0 else TRANSLATION_ID  # image features as sources
    env_config = {"env": env_id, "task": cfg.task, "data_dir": cfg.data_dir, "len_slack": sw.sample_len_slack,
                  "max_len": sw.max_sample_len}
    rl_cfg = (
        get_algorithm(cfg.algo)
        .algorithm_cls()
        .get_default_config()
        .environment(ENV_NAME, env_config=env_config)
        .env_runners(
            num_env_runners=cfg.num_rollout_workers,
            num_envs_per_env_runner=cfg.envs_per_worker,
            gym_env_vectorize_mode="vector_entry_point",
        )
        .learners(num_learners=cfg.num_learners, num_gpus_per_learner=cfg.resolved_num_gpus_per_learner(),
                  custom_resources_per_learner=cfg.custom_resources_per_learner())
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module_cls, model_config=model_config))
        .training(gamma=sw.gamma, grad_clip=sw.grad_clip, grad_clip_by="global_norm")
        .debugging(seed=cfg.seed)
        # one Algorithm.train() = one training_step (RLlib's defaults repeat it for >= 1-10 s)
        .reporting(metrics_num_episodes_for_smoothing=20, min_time_s_per_iteration=0,
                   min_sample_timesteps_per_iteration=0, min_train_timesteps_per_iteration=0)
    )
    _CONFIGURE[type(sw)](rl_cfg, sw)
    check_module_apis(cfg.algo, rl_cfg.get_default_learner_class(), module_cls)
    return rl_cfg.build_algo()


def actor_state(algo: Any) -> dict[str, np.ndarray]:
    """The actor's weights on the (first) learner, as numpy arrays."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    def get(learner: Any) -> dict[str, np.ndarray]:
        actor = learner.module[DEFAULT_MODULE_ID].unwrapped().actor_model()
        return {k: v.detach().cpu().numpy().copy() for k, v in actor.state_dict().items()}

    first = next(iter(algo.learner_group.foreach_learner(get)))
    return first.get()  # re-raises a learner's error
