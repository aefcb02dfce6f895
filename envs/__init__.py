"""Sequence prediction as a Gymnasium MDP (paper Corollary 1), its BLEU reward and exact oracle.

``import envs`` registers:

* ``rayseq/Translation-v0`` — a translation task's pairs (default: the Multi30k training split
  shipped with the package; ``task=``, ``split=``, ``data_dir=``, or explicit ``src_file=`` /
  ``tgt_file=``), and
* ``rayseq/ToySeq-v0`` — reverse a random string over a tiny vocabulary; needs no data.
* ``rayseq/Captioning-v0`` — a captioning task's pairs (``task="coco"``, ``split=``, ``data_dir=``):
  the source is the image feature (a float vector), the reference one of its captions.

Both have a native vector entry point (``gymnasium.make_vec(..., vectorization_mode=
"vector_entry_point")``). ``make_env(env_config)`` is the creator for RLlib's ``register_env``:
it returns the vector env when RLlib passes ``num_envs``.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym

from envs.pairs import PairData, caption_pairs, toy_pairs, translation_pairs
from envs.seqpred import SeqPredConfig, SeqPredEnv
from envs.vector import SeqPredVectorEnv

TRANSLATION_ID = "rayseq/Translation-v0"
TOY_ID = "rayseq/ToySeq-v0"
CAPTIONING_ID = "rayseq/Captioning-v0"

_PAIR_KEYS = {
    TRANSLATION_ID: ("task", "split", "data_dir", "src_file", "tgt_file", "max_pairs"),
    TOY_ID: ("num_pairs", "num_symbols", "min_len", "max_len_symbols", "seed"),
    CAPTIONING_ID: ("task", "split", "data_dir", "max_pairs"),
}
_CONFIG_KEYS = ("max_len", "len_slack", "smooth", "scale", "eos")


def _split_kwargs(env_id: str, kwargs: dict[str, Any]) -> tuple[PairData, SeqPredConfig]:
    unknown = set(kwargs) - set(_PAIR_KEYS[env_id]) - set(_CONFIG_KEYS)
    if unknown:
        raise TypeError(
            f"{env_id}: unknown option(s) {sorted(unknown)}; accepted: {sorted(_PAIR_KEYS[env_id] + _CONFIG_KEYS)}"
        )
    cfg = SeqPredConfig(**{k: v for k, v in kwargs.items() if k in _CONFIG_KEYS})
    pair_kw = {k: v for k, v in kwargs.items() if k in _PAIR_KEYS[env_id]}
    if env_id == TOY_ID:
        if "max_len_symbols" in pair_kw:
            pair_kw["max_len"] = pair_kw.pop("max_len_symbols")
        return toy_pairs(**pair_kw), cfg
    if env_id == CAPTIONING_ID:
        return caption_pairs(**pair_kw), cfg
    return translation_pairs(**pair_kw), cfg


def make_translation_env(**kwargs: Any) -> SeqPredEnv:
    return SeqPredEnv(*_split_kwargs(TRANSLATION_ID, kwargs))


def make_translation_vector_env(num_envs: int = 1, **kwargs: Any) -> SeqPredVectorEnv:
    pairs, cfg = _split_kwargs(TRANSLATION_ID, kwargs)
    return SeqPredVectorEnv(pairs, num_envs, cfg)


def make_toy_env(**kwargs: Any) -> SeqPredEnv:
    return SeqPredEnv(*_split_kwargs(TOY_ID, kwargs))


def make_toy_vector_env(num_envs: int = 1, **kwargs: Any) -> SeqPredVectorEnv:
    pairs, cfg = _split_kwargs(TOY_ID, kwargs)
    return SeqPredVectorEnv(pairs, num_envs, cfg)


def make_captioning_env(**kwargs: Any) -> SeqPredEnv:
    return SeqPredEnv(*_split_kwargs(CAPTIONING_ID, kwargs))


def make_captioning_vector_env(num_envs: int = 1, **kwargs: Any) -> SeqPredVectorEnv:
    pairs, cfg = _split_kwargs(CAPTIONING_ID, kwargs)
    return SeqPredVectorEnv(pairs, num_envs, cfg)


def make_env(env_config: dict[str, Any] | None = None) -> SeqPredEnv | SeqPredVectorEnv:
    """Creator for ``ray.tune.register_env``: ``{"env": TRANSLATION_ID | TOY_ID | CAPTIONING_ID, ...options}``.

    RLlib's env runners call it with ``num_envs`` added when they want a vector env.
    """
    cfg = dict(env_config or {})
    env_id = cfg.pop("env", TRANSLATION_ID)
    if env_id not in _PAIR_KEYS:
        raise ValueError(f"unknown env {env_id!r}; registered: {sorted(_PAIR_KEYS)}")
    num_envs = cfg.pop("num_envs", None)
    pairs, sp_cfg = _split_kwargs(env_id, cfg)
    return SeqPredEnv(pairs, sp_cfg) if num_envs is None else SeqPredVectorEnv(pairs, int(num_envs), sp_cfg)


def register() -> None:
    """Register the environments with gymnasium (idempotent)."""
    for env_id, entry, vector_entry in (
        (TRANSLATION_ID, make_translation_env, make_translation_vector_env),
        (TOY_ID, make_toy_env, make_toy_vector_env),
        (CAPTIONING_ID, make_captioning_env, make_captioning_vector_env),
    ):
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point=entry, vector_entry_point=vector_entry)


register()

__all__ = [
    "CAPTIONING_ID",
    "caption_pairs",
    "PairData",
    "SeqPredConfig",
    "SeqPredEnv",
    "SeqPredVectorEnv",
    "TOY_ID",
    "TRANSLATION_ID",
    "make_env",
    "toy_pairs",
    "translation_pairs",
]
