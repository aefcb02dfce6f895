"""Replay buffers of sampled episodes for the actor-critic learner: pick one by backend.

``memory`` is :class:`rayseq.replay_memory.ReplayBuffer` (a FIFO in the learner's process);
``redis`` or a redis:// URL is :class:`rayseq.replay_redis.RedisReplayBuffer` (a durable ring that
survives the learner and that other jobs can read). Both share one interface and ``ReplayStats``.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from rayseq.replay_memory import ReplayBuffer, ReplayStats
from rayseq.replay_redis import RedisReplayBuffer


def make_replay_buffer(backend: str, capacity: int, seed: int = 0, key: str = "rayseq:replay") -> ReplayBuffer | RedisReplayBuffer:
    """The buffer for ``backend``: ``memory`` → :class:`ReplayBuffer`; ``redis`` or a redis:// URL →
    :class:`rayseq.replay_redis.RedisReplayBuffer` under ``key`` (URL from $RAYSEQ_REDIS_URL for ``redis``)."""
    if backend == "memory":
        return ReplayBuffer(capacity, seed=seed)
    if backend == "redis" or backend.startswith(("redis://", "rediss://", "unix://")):
        return RedisReplayBuffer(capacity, seed=seed, url=None if backend == "redis" else backend, key=key)
    raise ValueError(f"replay backend {backend!r}: use 'memory', 'redis' or a redis:// URL.")



def run_replay_key(run_dir: str) -> str:
    """The Redis key prefix of a run's replay rings (``:critic`` / ``:joint`` are appended per stage):
    one per run directory, so a resumed run finds its episodes and another job can read them."""
    return "rayseq:replay:" + hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


__all__ = ["RedisReplayBuffer", "ReplayBuffer", "ReplayStats", "make_replay_buffer", "run_replay_key"]
