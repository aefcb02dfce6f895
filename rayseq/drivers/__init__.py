"""The training drivers: one module per pipeline, all written with ``rayseq.drivers.stage``.

``supervised``    MLE, RAML: epochs of dataset batches
``vaml``          VAML: the Q-net stage, then the supervised epochs
``pretrained``    the MLE stage every RL pipeline starts from
``actor_critic``  AC, ERAC, SCST, MIXER: MLE stage → critic pretraining → joint training
``swapin``        RLlib's PPO, APPO, SAC: MLE stage → ``Algorithm.train()`` iterations

:func:`train` runs the driver the algorithm's registry entry names. Imports run one way:
``stage`` ← ``supervised`` ← ``vaml``, ``pretrained`` ← ``actor_critic``, ``swapin``.
"""
from __future__ import annotations

from typing import Any

from rayseq.config import RunConfig
from rayseq.registry import get_algorithm


def train(cfg: RunConfig, resume: bool = False, address: str | None = None) -> dict[str, Any]:
    """Run (or resume) training as configured; returns the contents of ``results.json``."""
    return get_algorithm(cfg.algo).driver()(cfg, resume=resume, address=address)


__all__ = ["train"]
