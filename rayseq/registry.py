"""Algorithm registry: name → (typed config class, RLlib Algorithm class, training driver).

Adding an algorithm is one file plus one line here. The Algorithm class and the driver are named
by their import paths and imported on demand, so that importing the registry (the CLI's
``--help``, the config layer) does not import ray; ``rayseq.drivers.train(cfg)`` is a lookup here.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rayseq.algorithms.erac import ACConfig, ERACConfig, ERACEq20Config, ERACNoFutEntConfig
from rayseq.algorithms.mle import MLEConfig
from rayseq.algorithms.raml import RAMLConfig
from rayseq.algorithms.reinforce import MIXERConfig, SCSTConfig
from rayseq.algorithms.swapins import APPOSwapConfig, PPOSwapConfig, SACSwapConfig
from rayseq.algorithms.vaml import VAMLConfig

SUPERVISED, VAML, ACTOR_CRITIC, SWAPIN = "supervised", "vaml", "actor_critic", "swapin"
"""Driver kinds, each one module of ``rayseq.drivers``: ``supervised`` (dataset batches),
``vaml`` (the Q-net stage, then dataset batches), ``actor_critic`` (MLE stage → critic pretraining
→ joint training with rollout workers), ``swapin`` (MLE stage → RLlib's own ``Algorithm.train()``
iterations; ``algorithm_path`` is the RLlib Algorithm class itself)."""

DRIVERS: dict[str, str] = {
    SUPERVISED: "rayseq.drivers.supervised:train_supervised",
    VAML: "rayseq.drivers.vaml:train_vaml",
    ACTOR_CRITIC: "rayseq.drivers.actor_critic:train_actor_critic",
    SWAPIN: "rayseq.drivers.swapin:train_swapin",
}
"""Driver kind → ``module:function`` ``(cfg, resume, address) -> results``."""

STARTS_FROM_MLE = (ACTOR_CRITIC, SWAPIN)
"""Driver kinds whose runs start from an MLE actor (``algo.actor_init`` or their own MLE stage)."""

SAMPLES_WITH_WORKERS = (ACTOR_CRITIC, SWAPIN)
"""Driver kinds whose runs sample on ``num_rollout_workers`` rollout workers (MLE, RAML and VAML
train on dataset batches in the learner and start none)."""


def _resolve(path: str) -> Any:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class AlgorithmEntry:
    """One registered algorithm."""

    config_cls: type
    """Its typed dataclass config (hyper-parameters with the paper's symbols)."""
    algorithm_path: str
    """``module:Class`` of its RLlib ``Algorithm`` subclass."""
    objective: str
    """What the learner optimises (the runtime's switch)."""
    summary: str
    kind: str = SUPERVISED
    """Which driver runs it (a key of ``DRIVERS``)."""

    def algorithm_cls(self) -> type:
        """The RLlib Algorithm class (imported now)."""
        return _resolve(self.algorithm_path)

    def driver(self) -> Callable[..., dict[str, Any]]:
        """The training driver ``(cfg, resume=False, address=None) -> results`` (imported now)."""
        return _resolve(DRIVERS[self.kind])

    @property
    def uses_rollout_workers(self) -> bool:
        """Whether its runs start ``num_rollout_workers`` rollout workers."""
        return self.kind in SAMPLES_WITH_WORKERS

    @property
    def starts_from_mle(self) -> bool:
        """Whether its runs start from an MLE actor."""
        return self.kind in STARTS_FROM_MLE


_SUPERVISED = "rayseq.runtime.supervised:SupervisedSeqAlgorithm"
_ACTOR_CRITIC = "rayseq.runtime.actor_critic:ActorCriticAlgorithm"

ALGORITHMS: dict[str, AlgorithmEntry] = {
    "mle": AlgorithmEntry(MLEConfig, _SUPERVISED, "mle", "maximum likelihood (teacher forcing)"),
    "raml": AlgorithmEntry(RAMLConfig, _SUPERVISED, "raml", "reward augmented maximum likelihood, Eq. (1)-(2)"),
    "vaml": AlgorithmEntry(
        VAMLConfig, "rayseq.runtime.vaml:VAMLAlgorithm", "vaml", "value augmented maximum likelihood: soft Q-net Eq. (16), actor Eq. (17)", VAML,
    ),
    "ac": AlgorithmEntry(ACConfig, _ACTOR_CRITIC, "ac", "actor-critic (Bahdanau et al. 2016): ERAC with τ = 0", ACTOR_CRITIC),
    "erac": AlgorithmEntry(
        ERACConfig, _ACTOR_CRITIC, "erac", "entropy-regularised actor-critic, Eq. (18)-(20), with the official actor term", ACTOR_CRITIC
    ),
    "erac-eq20": AlgorithmEntry(
        ERACEq20Config, _ACTOR_CRITIC, "erac-eq20", "ERAC with Eq. (20) as printed (full τ in the actor; an ablation)", ACTOR_CRITIC
    ),
    "erac-nofutent": AlgorithmEntry(
        ERACNoFutEntConfig, _ACTOR_CRITIC, "erac-nofutent", "ERAC without future entropy (critic τ = 0; Table 4)", ACTOR_CRITIC
    ),
    "scst": AlgorithmEntry(
        SCSTConfig, _ACTOR_CRITIC, "scst", "self-critical sequence training (Rennie et al. 2017): REINFORCE, greedy-decode baseline", ACTOR_CRITIC
    ),
    "mixer": AlgorithmEntry(
        MIXERConfig, _ACTOR_CRITIC, "mixer",
        "REINFORCE with a learned baseline b_t (Ranzato et al. 2016's MIXER without the XENT→REINFORCE curriculum)", ACTOR_CRITIC,
    ),
    "ppo": AlgorithmEntry(PPOSwapConfig, "ray.rllib.algorithms.ppo:PPO", "ppo", "RLlib's PPO (clipped surrogate, GAE) on the actor: a swap-in", SWAPIN),
    "appo": AlgorithmEntry(APPOSwapConfig, "ray.rllib.algorithms.appo:APPO", "appo", "RLlib's APPO (asynchronous PPO, V-trace) on the actor: a swap-in", SWAPIN),
    "sac": AlgorithmEntry(SACSwapConfig, "ray.rllib.algorithms.sac:SAC", "sac", "RLlib's discrete SAC (twin Q heads) on the actor: a swap-in", SWAPIN),
}


def get_algorithm(name: str) -> AlgorithmEntry:
    """The registered algorithm ``name``; ValueError listing the registered names otherwise."""
    if name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {name!r}; registered: {', '.join(sorted(ALGORITHMS))}")
    return ALGORITHMS[name]
