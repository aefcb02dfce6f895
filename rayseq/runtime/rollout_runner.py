"""Rollout workers: an RLlib EnvRunner that samples whole translations with carried decoder state.

Each worker owns a native :class:`envs.vector.SeqPredVectorEnv` of ``num_envs_per_env_runner``
sub-environments over the task's training pairs and the actor part of the learner's RLModule
(built ``inference_only``). :meth:`SeqRolloutRunner.sample_episodes` runs
:class:`rayseq.rollout.RolloutSampler` (one decoder step for all rows per token, never re-reading
the prefix) and returns finished :class:`rayseq.rollout.Episode` objects with the version of the
weights that sampled them. The driver pushes weights with :meth:`set_actor_weights`.

RLlib's own sampling entry point :meth:`sample` works too (it returns the same episodes), and
``set_state``/``get_state`` speak RLlib's format, so ``EnvRunnerGroup.sync_weights`` and
checkpoint restores reach the worker's actor.
"""
from __future__ import annotations

import time
from typing import Any

import ray
import torch
from gymnasium import spaces
from ray.rllib.core import COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.env.env_runner import EnvRunner
from ray.rllib.utils.metrics import WEIGHTS_SEQ_NO

from envs.pairs import PairData
from envs.seqpred import SeqPredConfig
from envs.vector import SeqPredVectorEnv
from rayseq.rollout import RolloutSampler


def task_pairs(task: str, data_dir: str | None) -> PairData:
    """The training pairs of ``task`` as the env's :class:`PairData`."""
    from rayseq.data.tasks import load_task

    t = load_task(task, data_dir)
    train = t.split("train")
    return PairData(train.src, train.tgt, len(t.src_vocab), len(t.tgt_vocab), name=f"{task}/train")


class SeqRolloutRunner(EnvRunner):
    """One rollout worker (see module doc). ``config.env_config``: ``task``, ``data_dir``,
    ``len_slack``, ``max_len``, ``sample_train_mode`` (dropout on while sampling, as the official
    code samples), ``greedy_baseline`` (also decode each source greedily: SCST's baseline)."""

    def __init__(self, *, config, **kwargs) -> None:
        super().__init__(config=config, **kwargs)
        if self.worker_index:  # a remote worker process: as many threads as CPUs reserved for it
            torch.set_num_threads(max(1, int(config.num_cpus_per_env_runner or 1)))
        env_cfg = dict(config.env_config)
        self._pairs = task_pairs(env_cfg["task"], env_cfg.get("data_dir"))
        self._train_mode = bool(env_cfg.get("sample_train_mode", True))
        self._greedy_baseline = bool(env_cfg.get("greedy_baseline", False))
        spec: RLModuleSpec = config.rl_module_spec
        self.module = RLModuleSpec(
            module_class=spec.module_class,
            observation_space=config.observation_space,
            action_space=config.action_space,
            model_config=spec.model_config,
            inference_only=True,
        ).build()
        self.module.train(self._train_mode)
        self.version = 0
        self.env: SeqPredVectorEnv | None = None
        self.sampler: RolloutSampler | None = None
        self.configure_sampling(int(env_cfg.get("len_slack", 10)), int(env_cfg.get("max_len", 50)))

    # ----------------------------------------------------------------- sampling

    def configure_sampling(self, len_slack: int, max_len: int) -> None:
        """(Re)build the vector env with the episode cap min(|y*| + len_slack, max_len)."""
        self.env = SeqPredVectorEnv(
            self._pairs, int(self.config.num_envs_per_env_runner), SeqPredConfig(max_len=max_len, len_slack=len_slack)
        )
        seed = (self._seed or 0) * 7919 + (self.worker_index or 0)
        self.sampler = RolloutSampler(self.module.actor, self.env, seed=seed)
        self.sampler.version = self.version
        self.sampler.train_mode = self._train_mode
        self.sampler.greedy_baseline = self._greedy_baseline

    def sample_episodes(self, num_episodes: int, on_policy: bool = False) -> dict[str, Any]:
        """At least ``num_episodes`` finished episodes, plus timing (``tokens``, ``time_s``).

        ``on_policy``: fresh episodes, all sampled by the current weights (``RolloutSampler.collect``).
        """
        t0 = time.perf_counter()
        before = self.sampler.tokens_sampled
        episodes = self.sampler.collect(int(num_episodes), on_policy=on_policy)
        return {
            "episodes": episodes,
            "tokens": self.sampler.tokens_sampled - before,
            "time_s": time.perf_counter() - t0,
            "worker": self.worker_index or 0,
        }

    def set_actor_weights(self, state: Any, version: int) -> None:
        """Load the actor's weights (a state dict or an ObjectRef to one) as ``version``."""
        if isinstance(state, ray.ObjectRef):
            state = ray.get(state)
        self.module.set_state(state)
        self.version = int(version)
        self.sampler.version = self.version

    # ----------------------------------------------------------------- EnvRunner API

    def sample(self, *, num_episodes: int | None = None, **kwargs) -> list:
        return self.sample_episodes(num_episodes or int(self.config.num_envs_per_env_runner))["episodes"]

    def get_spaces(self) -> dict[str, tuple[spaces.Space, spaces.Space]]:
        pair = (self.config.observation_space, self.config.action_space)
        return {"__env__": pair, DEFAULT_MODULE_ID: pair}

    def assert_healthy(self) -> None:
        assert self.env is not None and self.sampler is not None, "rollout worker has no env"

    def get_metrics(self) -> dict:
        return {}

    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        return {COMPONENT_RL_MODULE: self.module.get_state(), WEIGHTS_SEQ_NO: self.version}

    def set_state(self, state: dict[str, Any]) -> None:
        if COMPONENT_RL_MODULE in state:
            module_state = state[COMPONENT_RL_MODULE]
            if isinstance(module_state, ray.ObjectRef):
                module_state = ray.get(module_state)
            if DEFAULT_MODULE_ID in module_state:
                module_state = module_state[DEFAULT_MODULE_ID]
            self.module.set_state(module_state)
        if state.get(WEIGHTS_SEQ_NO):
            self.version = int(state[WEIGHTS_SEQ_NO])
            self.sampler.version = self.version

    def stop(self) -> None:
        if self.env is not None:
            self.env.close()
