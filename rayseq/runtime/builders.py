"""The RLlib ``Algorithm`` of each driver, built from a run's typed config.

One function per algorithm family, next to each other: the supervised family (MLE, RAML, VAML:
dataset batches on the learner), the actor-critic family (AC, ERAC, SCST, MIXER: rollout workers,
replay, learner) and RLlib's own algorithms as swap-ins (PPO, APPO, SAC). The registry entry of
``cfg.algo`` names the Algorithm class; these map the run config onto its ``AlgorithmConfig``.
"""
from __future__ import annotations

import sys
from dataclasses import asdict
from typing import Any

from rayseq.config import RunConfig
from rayseq.data.tasks import Task
from rayseq.registry import get_algorithm


def _pairs(cfg: RunConfig, task: Task) -> Any:
    from envs.pairs import PairData

    train = task.split("train")
    return PairData(train.src, train.tgt, len(task.src_vocab), len(task.tgt_vocab), name=f"{cfg.task}/train")


def build_supervised_algorithm(cfg: RunConfig, task: Task) -> Any:
    """MLE / RAML / VAML: ``SupervisedSeqAlgorithm`` (or ``VAMLAlgorithm``) over the training split."""
    from gymnasium import spaces
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from envs.seqpred import SeqPredConfig, observation_space

    entry = get_algorithm(cfg.algo)
    model_config = asdict(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab)))
    default_cfg = entry.algorithm_cls().get_default_config()
    module_class = default_cfg.get_default_rl_module_spec().module_class  # ActorRLModule, VAMLRLModule
    model_config.update(default_cfg.module_extras(cfg.algo_config))
    rl_cfg = (
        default_cfg
        .environment(
            observation_space=observation_space(_pairs(cfg, task), SeqPredConfig()),
            action_space=spaces.Discrete(len(task.tgt_vocab)),
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=module_class, model_config=model_config))
        .learners(num_learners=cfg.num_learners, num_gpus_per_learner=cfg.resolved_num_gpus_per_learner(),
                  custom_resources_per_learner=cfg.custom_resources_per_learner())
        .debugging(seed=cfg.seed)
    )
    rl_cfg.lr = cfg.algo_config.lr
    rl_cfg.grad_clip = cfg.algo_config.grad_clip
    rl_cfg.objective = entry.objective
    rl_cfg.objective_config = asdict(cfg.algo_config)
    rl_cfg.task, rl_cfg.data_dir = cfg.task, cfg.data_dir
    rl_cfg.batch_size, rl_cfg.seed, rl_cfg.log_every = cfg.batch_size, cfg.seed, cfg.log_every
    rl_cfg.show_progress = sys.stderr.isatty()
    return rl_cfg.build_algo()


def build_actor_critic_algorithm(cfg: RunConfig, task: Task) -> Any:
    """AC / ERAC / SCST / MIXER: ``ActorCriticAlgorithm`` with rollout workers and a replay buffer."""
    from gymnasium import spaces
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from envs.seqpred import SeqPredConfig, observation_space
    from rayseq.replay import run_replay_key
    from rayseq.runtime.ac_learner import ActorCriticRLModule, module_heads, needs_greedy_decode

    entry = get_algorithm(cfg.algo)
    ac = cfg.algo_config
    model_config = {**asdict(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab))), "heads": module_heads(entry.objective)}
    env_config = {"task": cfg.task, "data_dir": cfg.data_dir, "len_slack": ac.sample_len_slack, "max_len": ac.max_sample_len,
                  "greedy_baseline": needs_greedy_decode(entry.objective)}
    workers = cfg.num_rollout_workers
    rl_cfg = (
        entry.algorithm_cls()
        .get_default_config()
        .environment(
            observation_space=observation_space(_pairs(cfg, task), SeqPredConfig(max_len=ac.max_sample_len)),
            action_space=spaces.Discrete(len(task.tgt_vocab)),
            env_config=env_config,
        )
        .rl_module(rl_module_spec=RLModuleSpec(module_class=ActorCriticRLModule, model_config=model_config))
        .env_runners(
            num_env_runners=workers,
            num_envs_per_env_runner=cfg.envs_per_worker,
            num_cpus_per_env_runner=1,
            create_local_env_runner=workers == 0,
        )
        # a lost rollout worker (crash, spot reclaim) is restarted by Ray and re-synced before the next
        # request; the sync schedule re-samples its share meanwhile (ActorCriticAlgorithm._sample_sync)
        .fault_tolerance(restart_failed_env_runners=True, max_num_env_runner_restarts=1000,
                         env_runner_health_probe_timeout_s=30.0)
        .learners(num_learners=cfg.num_learners, num_gpus_per_learner=cfg.resolved_num_gpus_per_learner(),
                  custom_resources_per_learner=cfg.custom_resources_per_learner())
        # critic pretraining gives the actor no gradient: DDP (num_learners > 1) must allow that
        .framework(torch_ddp_kwargs={"find_unused_parameters": True})
        .debugging(seed=cfg.seed)
    )
    rl_cfg.objective_config, rl_cfg.algo_name = asdict(ac), cfg.algo
    rl_cfg.task, rl_cfg.data_dir, rl_cfg.seed, rl_cfg.log_every = cfg.task, cfg.data_dir, cfg.seed, cfg.log_every
    rl_cfg.schedule, rl_cfg.replay_capacity, rl_cfg.replay_ratio = ac.schedule, ac.replay_capacity, ac.replay_ratio
    rl_cfg.weights_sync_every = ac.weights_sync_every
    rl_cfg.replay_key = run_replay_key(cfg.out)
    rl_cfg.show_progress = sys.stderr.isatty()
    return rl_cfg.build_algo()


def build_swapin_algorithm(cfg: RunConfig, task: Task, init_actor: str | None) -> Any:
    """PPO / APPO / SAC: RLlib's unchanged Algorithm with the actor module, started from ``init_actor``."""
    from ray.rllib.core.rl_module.rl_module import RLModuleSpec

    from envs import CAPTIONING_ID, TRANSLATION_ID
    from rayseq.runtime.swapin_algorithm import CONFIGURE, ENV_NAME, MODULES, register_seq_env
    from rayseq.runtime.swapin_module import HEAD_HIDDEN, INIT_ACTOR, check_module_apis

    sw = cfg.algo_config
    module_cls = MODULES[type(sw)]
    register_seq_env()
    model_config = asdict(cfg.seq2seq_config(len(task.src_vocab), len(task.tgt_vocab)))
    model_config.update({INIT_ACTOR: init_actor, HEAD_HIDDEN: sw.head_hidden})
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
    CONFIGURE[type(sw)](rl_cfg, sw)
    check_module_apis(cfg.algo, rl_cfg.get_default_learner_class(), module_cls)
    return rl_cfg.build_algo()
