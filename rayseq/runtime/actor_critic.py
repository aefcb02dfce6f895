"""AC / ERAC as an RLlib Algorithm: rollout workers → replay buffer → learner(s).

* **Rollout workers** (:class:`~rayseq.runtime.rollout_runner.SeqRolloutRunner`, ``num_env_runners``
  of them, ``num_envs_per_env_runner`` sequences each; 0 = one sampler in the driver) sample
  translations with the latest actor weights they were sent.
* **Replay buffer** (:class:`rayseq.replay.ReplayBuffer`) of ``replay_capacity`` episodes in the
  driver; the learner draws ``replay_ratio`` × as many episodes as the workers deliver.
* **Learner(s)** (:class:`~rayseq.runtime.ac_learner.ActorCriticLearner`, RLlib's LearnerGroup:
  ``num_learners``, ``num_gpus_per_learner``) update critic, target critic and actor.
* Weights go to the workers every ``weights_sync_every`` updates (the version = the update count).

Schedules (``schedule``):

``"sync"`` (default; the paper's): sample a batch with the current weights, then update on it.
  With the default ``replay_capacity`` = one batch and ``replay_ratio`` = 1 every episode is used
  exactly once, right after it was drawn (policy lag 0 up to episodes straddling a weight push).
``"async"``: every worker always has a sampling request in flight; the learner trains from replay
  whenever the ratio allows, while the workers keep sampling with slightly older weights (the
  policy lag is logged). Needs remote workers (``num_env_runners`` ≥ 1).

One ``train()`` call runs ``updates_per_iteration`` learner updates.
"""
from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np
import ray
from ray.rllib.algorithms.algorithm import Algorithm
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig
from ray.rllib.core import COMPONENT_ENV_RUNNER, COMPONENT_LEARNER, COMPONENT_RL_MODULE, DEFAULT_MODULE_ID
from ray.rllib.core.rl_module.rl_module import RLModuleSpec
from ray.rllib.policy.sample_batch import MultiAgentBatch, SampleBatch
from ray.rllib.utils.checkpoints import Checkpointable
from ray.rllib.utils.metrics import LEARNER_RESULTS
from tqdm import tqdm

from rayseq.algorithms.erac import annealed_tau, temperature_step
from rayseq.metrics import (
    ENTROPY,
    LOSS_ACTOR,
    LOSS_ACTOR_OBJECTIVE,
    LOSS_BASELINE,
    LOSS_CRITIC_TD,
    LOSS_CRITIC_VAR,
    LOSS_MLE,
    POLICY_LAG,
    POLICY_LAG_MAX,
    Q_TAKEN,
    REWARD_BASELINE,
    SAMPLE_BLEU,
    SAMPLE_LEN,
    SAMPLE_TOKENS_PER_S,
    TAU,
    TOKENS_PER_S,
    TOKENS_TOTAL,
    WORKER_RESTARTS,
)
from rayseq.replay import make_replay_buffer
from rayseq.rollout import collate
from rayseq.runtime.ac_learner import (
    STAGES,
    ActorCriticLearner,
    ActorCriticRLModule,
    typed_objective,
)
from rayseq.runtime.rollout_runner import SeqRolloutRunner

SCHEDULES = ("sync", "async")
LEARNER_KEYS = (LOSS_CRITIC_TD, LOSS_CRITIC_VAR, Q_TAKEN, ENTROPY, LOSS_ACTOR, LOSS_ACTOR_OBJECTIVE, LOSS_MLE,
                LOSS_BASELINE, REWARD_BASELINE)


class ActorCriticConfig(AlgorithmConfig):
    """RLlib config of AC/ERAC (and SCST/MIXER); ``objective_config`` is the typed config of the
    registry entry ``algo_name`` (``ERACConfig``, ``SCSTConfig``, …) as a dict."""

    def __init__(self, algo_class: type | None = None) -> None:
        super().__init__(algo_class=algo_class or ActorCriticAlgorithm)
        self.objective_config: dict[str, Any] = {}
        self.algo_name = "erac"
        """Registry name of the algorithm: its config class reads ``objective_config`` (AC, ERAC, SCST, MIXER)."""
        self.task = "multi30k"
        self.data_dir: str | None = None
        self.seed = 0
        self.log_every = 50
        self.show_progress = True
        self.schedule = "sync"
        self.replay_capacity: int | None = None
        """Episodes kept; None = one batch (on-policy)."""
        self.replay_ratio = 1.0
        """Episodes trained on per episode sampled (updates-per-sample ratio)."""
        self.replay_key = "rayseq:replay"
        """Redis key prefix of the replay buffer (redis backend; the driver sets one per run directory)."""
        self.weights_sync_every = 1
        """Push the actor's weights to the workers every this many updates."""
        self.updates_per_iteration = 100
        self.env_runner_cls = SeqRolloutRunner
        self.num_envs_per_env_runner = 64
        self.create_local_env_runner = True
        self.grad_clip = None  # the learner clips each model itself

    def get_default_learner_class(self):
        return ActorCriticLearner

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(module_class=ActorCriticRLModule)

    def validate(self) -> None:
        super().validate()
        if self.schedule not in SCHEDULES:
            self._value_error(f"schedule={self.schedule!r}; use one of {SCHEDULES}")
        if self.schedule == "async" and self.num_env_runners < 1 and not self.in_evaluation:
            self._value_error("schedule='async' needs remote rollout workers (num_env_runners >= 1)")
        if not self.replay_ratio > 0:
            self._value_error(f"replay_ratio={self.replay_ratio}: must be > 0")
        if self.weights_sync_every < 1:
            self._value_error(f"weights_sync_every={self.weights_sync_every}: must be >= 1")
        typed_objective(self)


class ActorCriticAlgorithm(Algorithm):
    """The actor/learner loop (see module doc)."""

    @classmethod
    def get_default_config(cls) -> ActorCriticConfig:
        return ActorCriticConfig()

    def setup(self, config: AlgorithmConfig) -> None:
        super().setup(config)
        _, self.erac = typed_objective(self.config)
        self._tau: float | None = getattr(self.erac, "tau", None)
        """The entropy weight τ in force (``set_tau``); None for objectives without one."""
        self.num_updates = 0
        self.joint_updates = 0
        """Updates of the joint stage so far (a resumed run's driver sets it; τ's anneal counts them)."""
        self.tokens_total = 0
        """Tokens sampled by the rollout workers over the run (the compare plot's x axis)."""
        self.updates_per_iteration = int(self.config.updates_per_iteration)
        """Learner updates per ``train()`` call (the driver may change it between calls)."""
        self.stage = "joint"
        self._train_log: list[dict[str, Any]] = []
        self._rng = np.random.default_rng(self.config.seed)
        self._credit = 0.0
        self._in_flight: set[int] = set()
        self.set_stage("joint")

    # ----------------------------------------------------------------- stage / weights

    @property
    def batch_episodes(self) -> int:
        """Episodes per learner update: batch_size sources × samples per source."""
        k = self.erac.pretrain_samples_per_source if self.stage == "critic" else self.erac.samples_per_source
        return self.erac.batch_size * k

    def set_stage(self, stage: str) -> None:
        """Switch between critic pretraining and joint training (learners, workers, replay)."""
        if stage not in STAGES:
            raise ValueError(f"stage={stage!r}; use one of {STAGES}")
        self.stage = stage
        self.learner_group.foreach_learner(lambda learner: learner.set_stage(stage))
        slack = self.erac.pretrain_len_slack if stage == "critic" else self.erac.sample_len_slack
        max_len = self.erac.max_sample_len
        self._drain()
        self._foreach_runner(lambda r: r.configure_sampling(slack, max_len))
        capacity = self.config.replay_capacity or self.batch_episodes
        self.buffer = make_replay_buffer(self.erac.replay_backend, int(capacity), seed=int(self._rng.integers(2**31)),
                                         key=f"{self.config.replay_key}:{stage}")
        self._credit = 0.0
        self.push_weights()

    def load_actor(self, state_dict: dict[str, Any]) -> None:
        """Load actor weights into every learner and push them to the workers."""
        self.learner_group.foreach_learner(lambda learner: learner.load_actor(state_dict))
        self.push_weights()

    def set_lr(self, lr: float) -> None:
        self.learner_group.foreach_learner(lambda learner: learner.set_lr(lr))

    @property
    def tau(self) -> float | None:
        """The entropy weight τ in force (None for objectives without one: SCST, MIXER)."""
        return self._tau

    def set_tau(self, tau: float) -> None:
        """τ on every learner (the automatic temperature's step; a resumed run's last τ)."""
        self._tau = float(tau)
        self.learner_group.foreach_learner(lambda learner: learner.set_tau(tau))

    def set_critic_lr(self, lr: float) -> None:
        """The critic optimiser's lr on every learner (critic pretraining's plateau schedule)."""
        self.learner_group.foreach_learner(lambda learner: learner.set_critic_lr(lr))

    def critic_state_dict(self) -> dict[str, Any]:
        """The critic's weights (``rayseq.models.critic.Critic`` keys) from the (first) learner."""
        return next(iter(self.learner_group.foreach_learner(lambda learner: learner.critic_state_dict()))).get()

    def load_critic(self, state_dict: dict[str, Any]) -> None:
        """Load critic (and target critic) weights on every learner."""
        self.learner_group.foreach_learner(lambda learner: learner.load_critic(state_dict))

    def reset_optimizers(self) -> None:
        """Fresh optimiser state on every learner (joint training starts with new Adam moments)."""
        self.learner_group.foreach_learner(lambda learner: learner.reset_optimizers())

    def _inference_state(self) -> dict[str, Any]:
        """The inference-only module state (``actor.*`` keys) of the (first) learner."""
        state = self.learner_group.get_state(
            components=f"{COMPONENT_LEARNER}/{COMPONENT_RL_MODULE}/{DEFAULT_MODULE_ID}", inference_only=True
        )
        return state[COMPONENT_LEARNER][COMPONENT_RL_MODULE][DEFAULT_MODULE_ID]

    def actor_state_dict(self) -> dict[str, Any]:
        """The actor's torch state dict (keys of ``Seq2Seq``), from the (first) learner."""
        return {k.removeprefix("actor."): v for k, v in self._inference_state().items() if k.startswith("actor.")}

    def push_weights(self) -> None:
        """Send the learner's actor weights to every rollout worker as version ``num_updates``."""
        state = self._inference_state()
        version = self.num_updates
        if self.env_runner_group.num_remote_env_runners():
            ref = ray.put(state)
            self.env_runner_group.foreach_env_runner(
                lambda r: r.set_actor_weights(ref, version), local_env_runner=False, timeout_seconds=0.0
            )
        if self.env_runner is not None:
            self.env_runner.set_actor_weights(state, version)

    def _foreach_runner(self, func) -> None:
        if self.env_runner_group.num_remote_env_runners():
            self.env_runner_group.foreach_env_runner(func, local_env_runner=False)
        if self.env_runner is not None:
            func(self.env_runner)

    # ----------------------------------------------------------------- sampling

    def _sample_sync(self, n: int) -> list:
        """At least ``n`` episodes from the workers (split evenly over the healthy ones), blocking.

        A worker that dies mid-request delivers nothing: the shortfall is sampled again from the
        healthy workers (RLlib restarts the dead one; :meth:`restore_env_runners` brings it back),
        so every update still trains on a full batch.
        """
        if not self.env_runner_group.num_remote_env_runners():
            return self._absorb([self.env_runner.sample_episodes(n, on_policy=True)])
        episodes: list = []
        while len(episodes) < n:
            healthy = self.env_runner_group.num_healthy_remote_env_runners()
            if not healthy:
                if not self.restore_env_runners(self.env_runner_group):
                    time.sleep(0.5)
                continue
            per = -(-(n - len(episodes)) // healthy)
            results = self.env_runner_group.foreach_env_runner(
                lambda r, per=per: r.sample_episodes(per, on_policy=True), local_env_runner=False
            )
            episodes += self._absorb(results)
        return episodes

    def restore_env_runners(self, env_runner_group) -> list[int]:
        """RLlib's restore of restarted workers, then this stage's sampling settings and weights."""
        restored = super().restore_env_runners(env_runner_group)
        if restored and env_runner_group is self.env_runner_group:
            slack = self.erac.pretrain_len_slack if self.stage == "critic" else self.erac.sample_len_slack
            max_len = self.erac.max_sample_len
            env_runner_group.foreach_env_runner(
                lambda r: r.configure_sampling(slack, max_len), remote_worker_ids=restored, local_env_runner=False
            )
            self.push_weights()
            print(f"[fault tolerance] rollout worker(s) {restored} restarted "
                  f"({env_runner_group.num_remote_worker_restarts()} restarts so far)", file=sys.stderr, flush=True)
        return restored

    def _launch(self, ids: list[int] | None = None) -> None:
        per = max(1, self.batch_episodes // max(1, self.env_runner_group.num_remote_env_runners()))
        ids = ids if ids is not None else [i for i in self.env_runner_group.healthy_worker_ids() if i not in self._in_flight]
        if ids:
            self.env_runner_group.foreach_env_runner_async(lambda r: r.sample_episodes(per), tag="sample", remote_worker_ids=ids)
            self._in_flight.update(ids)

    def _sample_async(self, block: bool) -> list:
        self._launch()
        ready = self.env_runner_group.fetch_ready_async_reqs(tags="sample", timeout_seconds=None if block else 0.0)
        if block:
            while not ready:
                ready = self.env_runner_group.fetch_ready_async_reqs(tags="sample", timeout_seconds=0.05)
        ids = [wid for wid, _ in ready]
        self._in_flight.difference_update(ids)
        self._launch(ids)
        return self._absorb([res for _, res in ready])

    def _drain(self) -> None:
        """Wait for in-flight async requests (before a stage switch) and drop their episodes."""
        while self._in_flight:
            ready = self.env_runner_group.fetch_ready_async_reqs(tags="sample", timeout_seconds=0.1)
            self._in_flight.difference_update(wid for wid, _ in ready)

    def _absorb(self, results: list[dict[str, Any]]) -> list:
        episodes = [e for r in results for e in r["episodes"]]
        self._sample_tokens += sum(r["tokens"] for r in results)
        self.tokens_total += sum(r["tokens"] for r in results)
        self._sample_time += max((r["time_s"] for r in results), default=0.0)
        return episodes

    # ----------------------------------------------------------------- training

    def training_step(self) -> None:
        cfg = self.config
        n = self.batch_episodes
        self._sample_tokens, self._sample_time = 0, 0.0
        window: dict[str, list[float]] = {}
        trained_tokens = 0
        t0 = time.perf_counter()
        bar = tqdm(range(self.updates_per_iteration), desc=f"{self.stage}", unit="update",
                   disable=not cfg.show_progress, leave=False)
        for _ in bar:
            if cfg.schedule == "sync":
                fresh = self._sample_sync(n)
                self.buffer.add(fresh)
                episodes = self.buffer.sample(n, fresh_first=len(fresh))
                self._credit = 0.0
            else:
                fresh = self._sample_async(block=self._credit < 1.0 and len(self.buffer) < n)
                self.buffer.add(fresh)
                self._credit += len(fresh) * cfg.replay_ratio / n
                while self._credit < 1.0:
                    more = self._sample_async(block=True)
                    self.buffer.add(more)
                    self._credit += len(more) * cfg.replay_ratio / n
                    fresh = fresh + more
                self._credit -= 1.0
                episodes = self.buffer.sample(n)
            anneal = getattr(self.erac, "tau_anneal_updates", 0)
            if anneal and self.stage == "joint":  # τ falls linearly to 0: ERAC → AC
                self.set_tau(annealed_tau(self.erac.tau, self.joint_updates, anneal))
            batch = collate(episodes)
            lag = self.num_updates - batch["version"]
            results = self.learner_group.update(
                batch=MultiAgentBatch({DEFAULT_MODULE_ID: SampleBatch(batch)}, env_steps=len(episodes)),
                timesteps={},
            )
            self.metrics.aggregate(results, key=LEARNER_RESULTS)
            self.num_updates += 1
            self.joint_updates += self.stage == "joint"
            trained_tokens += int(batch["lengths"].sum() + (~batch["capped"]).sum())
            rec = {k: float(np.mean([r[DEFAULT_MODULE_ID][k].peek() for r in results if k in r[DEFAULT_MODULE_ID]]))
                   for k in LEARNER_KEYS if k in results[0][DEFAULT_MODULE_ID]}
            rec[POLICY_LAG] = float(lag.mean())
            rec[POLICY_LAG_MAX] = float(lag.max())
            rec[WORKER_RESTARTS] = float(self.env_runner_group.num_remote_worker_restarts())
            ref_len = np.array([len(e.ref) for e in episodes], dtype=float)
            rec[SAMPLE_BLEU] = float(np.mean([e.bleu_scaled for e in episodes] / ref_len)) * 100.0
            rec[SAMPLE_LEN] = float(batch["lengths"].mean())
            target = getattr(self.erac, "target_entropy", None)
            if target is not None and self.stage == "joint" and ENTROPY in rec:  # SAC's automatic temperature
                self.set_tau(temperature_step(self.tau, rec[ENTROPY], target, self.erac.tau_lr))
            if self.tau is not None:
                rec[TAU] = self.tau
            for k, v in rec.items():
                window.setdefault(k, []).append(v)
            if self.num_updates % cfg.weights_sync_every == 0:
                self.push_weights()
            if self.num_updates % cfg.log_every == 0:
                elapsed = time.perf_counter() - t0
                out = {k: float(np.mean(v)) for k, v in window.items()}
                out[POLICY_LAG_MAX] = float(np.max(window[POLICY_LAG_MAX]))
                out[WORKER_RESTARTS] = float(np.max(window[WORKER_RESTARTS]))
                out[TOKENS_PER_S] = trained_tokens / elapsed
                out[SAMPLE_TOKENS_PER_S] = self._sample_tokens / max(self._sample_time, 1e-9)
                out[TOKENS_TOTAL] = float(self.tokens_total)
                out["stage"] = self.stage
                self._train_log.append({"step": self.num_updates, **out})
                window = {}
                if not cfg.show_progress:
                    print(
                        f"{self.stage} update {self.num_updates}: "
                        + (f"TD {out[LOSS_CRITIC_TD]:.3f}, " if LOSS_CRITIC_TD in out else "")
                        + (f"baseline MSE {out[LOSS_BASELINE]:.3f}, " if LOSS_BASELINE in out else "")
                        + (f"baseline BLEU {out[REWARD_BASELINE]:.1f}, " if REWARD_BASELINE in out else "")
                        + f"sample BLEU {out[SAMPLE_BLEU]:.1f}, len {out[SAMPLE_LEN]:.1f}, entropy {out.get(ENTROPY, 0):.2f}, "
                        f"lag {out[POLICY_LAG]:.2f}, {out[TOKENS_PER_S]:.0f} tok/s",
                        file=sys.stderr, flush=True,
                    )
            bar.set_postfix(td=f"{rec.get(LOSS_CRITIC_TD, 0):.2f}", bleu=f"{rec[SAMPLE_BLEU]:.1f}")
        self.metrics.log_value(TOKENS_PER_S, trained_tokens / (time.perf_counter() - t0), window=1)

    # ----------------------------------------------------------------- driver helpers

    def pop_train_log(self) -> list[dict[str, Any]]:
        out, self._train_log = self._train_log, []
        return out

    def restore_from_path(self, path, *args, **kwargs) -> None:
        Checkpointable.restore_from_path(self, path, *args, **kwargs)
        self.push_weights()

    def get_checkpointable_components(self) -> list[tuple[str, Any]]:
        """The learner group only: rollout workers hold no state of their own (the driver pushes the
        actor's weights to them), and the in-driver runner (``num_rollout_workers=0``) is not a
        ``Checkpointable``."""
        return [(name, c) for name, c in super().get_checkpointable_components() if name != COMPONENT_ENV_RUNNER]

    def get_state(self, *args, **kwargs) -> dict[str, Any]:
        state = super().get_state(*args, **kwargs)
        state["rayseq_num_updates"] = self.num_updates
        state["rayseq_tokens_total"] = self.tokens_total
        state["rayseq_stage"] = self.stage
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        self.num_updates = int(state.get("rayseq_num_updates", self.num_updates))
        self.tokens_total = int(state.get("rayseq_tokens_total", self.tokens_total))
        if state.get("rayseq_stage", self.stage) != self.stage:
            self.set_stage(state["rayseq_stage"])

    def cleanup(self) -> None:
        self._drain()
        super().cleanup()
