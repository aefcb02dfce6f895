"""Replay buffer on Redis: durable, shared between processes and jobs.

Same interface as :class:`rayseq.replay.ReplayBuffer` (``add``, ``sample``, ``len``, ``stats``,
``state_dict``): a ring of ``capacity`` slots in one Redis hash (``KEY:ring``, slot → encoded
episode) and a write counter (``KEY:head``). ``add`` reserves slots with one atomic ``INCRBY`` and
writes them in one pipeline, so the oldest episodes are overwritten first and several writers
(rollout workers, jobs) never collide; ``sample`` reads the chosen slots with one ``HMGET``.
Contents outlive the driver (and, with Redis persistence on, Redis restarts): a resumed run, or a
second job (e.g. VAML's off-policy Q-net training on an ERAC job's samples), reads them by key.

Episodes are stored in a compact binary form (:func:`encode_episode`): a fixed header, token ids
as uint16 when the vocabulary allows (int32 otherwise), rewards/log-probs as float32.

Redis outage: every command is retried ``retries`` times, ``retry_wait_s`` apart, then
:class:`ReplayUnavailable` names the URL, the key and what to do. Nothing is dropped silently.
"""
from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np

from rayseq.replay_memory import ReplayStats
from rayseq.rollout import Episode

URL_ENV = "RAYSEQ_REDIS_URL"
PASSWORD_ENV = "RAYSEQ_REDIS_PASSWORD"
_MAGIC = b"RSE1"
_HEADER = struct.Struct("<4sBBBBiiIII")  # magic, src dtype, token dtype, capped, pad, version, index, S, R, L
_DTYPES = {0: np.dtype("<u2"), 1: np.dtype("<i4"), 2: np.dtype("<f4")}
_CODES = {v: k for k, v in _DTYPES.items()}
T = TypeVar("T")


class ReplayUnavailable(RuntimeError):
    """Redis did not answer after the retries; the message says where and what to do."""


def _ids_dtype(*arrays: np.ndarray) -> np.dtype:
    top = max((int(a.max()) for a in arrays if a.size), default=0)
    low = min((int(a.min()) for a in arrays if a.size), default=0)
    return _DTYPES[0] if 0 <= low and top < 2**16 else _DTYPES[1]


def encode_episode(e: Episode) -> bytes:
    """The compact binary form of ``e`` (see module doc); :func:`decode_episode` inverts it."""
    src = np.asarray(e.src)
    src_dt = _DTYPES[2] if src.dtype.kind == "f" else _ids_dtype(src)
    tok_dt = _ids_dtype(np.asarray(e.ref), np.asarray(e.tokens))
    header = _HEADER.pack(_MAGIC, _CODES[src_dt], _CODES[tok_dt], int(bool(e.capped)), 0, int(e.version), int(e.index),
                          src.size, len(e.ref), len(e.tokens))
    return b"".join((
        header, src.astype(src_dt).tobytes(), np.asarray(e.ref).astype(tok_dt).tobytes(),
        np.asarray(e.tokens).astype(tok_dt).tobytes(), np.asarray(e.rewards, dtype="<f4").tobytes(),
        np.asarray(e.logp, dtype="<f4").tobytes(),
    ))


def decode_episode(data: bytes) -> Episode:
    magic, src_c, tok_c, capped, _, version, index, s, r, n = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError(f"not an encoded rayseq episode (magic {magic!r}); was the key written by another program?")
    off = _HEADER.size

    def take(dtype: np.dtype, count: int) -> np.ndarray:
        nonlocal off
        out = np.frombuffer(data, dtype=dtype, count=count, offset=off)
        off += count * dtype.itemsize
        return out

    src_dt, tok_dt = _DTYPES[src_c], _DTYPES[tok_c]
    src = take(src_dt, s).astype(np.float32 if src_dt.kind == "f" else np.int64)
    ref = take(tok_dt, r).astype(np.int64)
    tokens = take(tok_dt, n).astype(np.int64)
    rewards = take(_DTYPES[2], n + 1).astype(np.float32)
    logp = take(_DTYPES[2], n + 1).astype(np.float32)
    return Episode(src=src, ref=ref, tokens=tokens, rewards=rewards, logp=logp, capped=bool(capped),
                   version=int(version), index=int(index))


def redis_url(url: str | None = None) -> str:
    """``url``, else ``$RAYSEQ_REDIS_URL``; a clear error when neither is set."""
    url = url or os.environ.get(URL_ENV)
    if not url:
        raise ValueError(f"replay backend 'redis' needs a Redis URL: set {URL_ENV}=redis://HOST:PORT/0 "
                         f"(password in {PASSWORD_ENV}, never in a committed file) or algo.replay_backend=redis://...")
    return url


class RedisReplayBuffer:
    """FIFO episode ring on Redis with uniform sampling (see module doc)."""

    def __init__(self, capacity: int, seed: int = 0, *, url: str | None = None, key: str = "rayseq:replay",
                 retries: int = 5, retry_wait_s: float = 0.5, socket_timeout_s: float = 5.0) -> None:
        import redis

        if not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"RedisReplayBuffer: capacity={capacity!r} must be an int >= 1 (episodes).")
        self.capacity, self.key, self.url = capacity, key, redis_url(url)
        self.retries, self.retry_wait_s = int(retries), float(retry_wait_s)
        self._redis = redis.Redis.from_url(self.url, password=os.environ.get(PASSWORD_ENV) or None,
                                           socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s)
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        self._rng = np.random.default_rng(seed)
        self.sampled = 0
        have = self._call(lambda r: r.hget(f"{key}:meta", "capacity"))
        if have is None:
            self._call(lambda r: r.hsetnx(f"{key}:meta", "capacity", capacity))
        elif int(have) != capacity:
            raise ValueError(f"Redis key {key!r} at {self._where()} holds a replay ring of capacity {int(have)}, not "
                             f"{capacity}; use the same replay_capacity or clear it (RedisReplayBuffer.clear()).")

    @classmethod
    def open_existing(cls, url: str | None, key: str, seed: int = 0) -> "RedisReplayBuffer":
        """A reader of a ring another job filled (its capacity read from Redis); ValueError if the
        key holds no replay ring."""
        import redis

        url = redis_url(url)
        client = redis.Redis.from_url(url, password=os.environ.get(PASSWORD_ENV) or None, socket_connect_timeout=5.0)
        try:
            have = client.hget(f"{key}:meta", "capacity")
        except (redis.ConnectionError, redis.TimeoutError) as err:
            raise ReplayUnavailable(f"Redis replay at {url} unreachable ({err}); start Redis or fix the URL.") from err
        if have is None:
            raise ValueError(f"Redis at {url} holds no replay ring under key {key!r}; did that run train with "
                             "algo.replay_backend=redis (and reach its joint stage)?")
        return cls(int(have), seed=seed, url=url, key=key)

    def _where(self) -> str:
        kw = self._redis.connection_pool.connection_kwargs
        return f"redis://{kw.get('host')}:{kw.get('port')}/{kw.get('db', 0)}"

    def _call(self, fn: Callable[[Any], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return fn(self._redis)
            except self._errors as err:
                if attempt == self.retries:
                    raise ReplayUnavailable(
                        f"Redis replay at {self._where()} (key {self.key!r}) unreachable after {self.retries + 1} tries "
                        f"{self.retry_wait_s}s apart ({err}); no episode was dropped silently: training stops here. "
                        f"Bring Redis back, then resume the run (--resume RUN_DIR)."
                    ) from err
                time.sleep(self.retry_wait_s)
        raise AssertionError("unreachable")

    @property
    def head(self) -> int:
        """Episodes ever added under this key."""
        return int(self._call(lambda r: r.get(f"{self.key}:head")) or 0)

    def __len__(self) -> int:
        return min(self.head, self.capacity)

    def add(self, episodes: Iterable[Episode]) -> None:
        """Append episodes; beyond ``capacity`` the oldest are overwritten."""
        blobs = [encode_episode(e) for e in episodes]
        if not blobs:
            return
        end = int(self._call(lambda r: r.incrby(f"{self.key}:head", len(blobs))))
        start = end - len(blobs)
        blobs = blobs[-self.capacity:]  # a batch larger than the ring keeps its newest part
        first = end - len(blobs)
        mapping = {(first + i) % self.capacity: b for i, b in enumerate(blobs)}
        self._call(lambda r: r.hset(f"{self.key}:ring", mapping=mapping))
        dropped = max(0, end - self.capacity) - max(0, start - self.capacity)
        if dropped:
            self._call(lambda r: r.hincrby(f"{self.key}:meta", "dropped", dropped))

    def sample(self, n: int, fresh_first: int = 0) -> list[Episode]:
        """As :meth:`rayseq.replay.ReplayBuffer.sample` (uniform; the newest ``fresh_first`` first)."""
        if n < 1:
            raise ValueError(f"RedisReplayBuffer.sample: n={n} must be >= 1.")
        head = self.head
        size = min(head, self.capacity)
        if size == 0:
            raise ValueError(f"RedisReplayBuffer.sample: key {self.key!r} is empty; add episodes first.")
        k = min(fresh_first, n, size)
        picked = list(range(size - k, size))  # positions, 0 = oldest held
        rest = n - k
        if rest:
            pool = size - k
            extra = self._rng.integers(0, size, size=rest) if pool == 0 else self._rng.choice(pool, size=rest, replace=rest > pool)
            picked.extend(int(i) for i in extra)
        oldest = head - size
        slots = [(oldest + p) % self.capacity for p in picked]
        blobs = self._call(lambda r: r.hmget(f"{self.key}:ring", slots))
        missing = [s for s, b in zip(slots, blobs, strict=True) if b is None]
        if missing:
            raise ReplayUnavailable(f"Redis replay {self.key!r} at {self._where()}: slots {missing[:5]} are missing "
                                    f"(the key was cleared or evicted by Redis' maxmemory policy; use noeviction).")
        self.sampled += n
        return [decode_episode(b) for b in blobs]

    def stats(self) -> ReplayStats:
        head = self.head
        dropped = int(self._call(lambda r: r.hget(f"{self.key}:meta", "dropped")) or 0)
        return ReplayStats(min(head, self.capacity), self.capacity, head, self.sampled, dropped)

    def clear(self) -> None:
        self._call(lambda r: r.delete(f"{self.key}:ring", f"{self.key}:head", f"{self.key}:meta"))
        self._call(lambda r: r.hset(f"{self.key}:meta", "capacity", self.capacity))

    def state_dict(self) -> dict:
        """The sample counter and RNG (the episodes themselves live in Redis)."""
        return {"sampled": self.sampled, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.sampled = int(state.get("sampled", 0))
        if "rng" in state:
            self._rng.bit_generator.state = state["rng"]
