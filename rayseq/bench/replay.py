"""``rayseq bench replay``: insert/sample throughput of the Redis replay backend vs the in-memory buffer.

Both sides store and sample the same synthetic episodes (Multi30k-like lengths) in the same run;
the figures of merit are the ratios (episodes per second, Redis / memory), since these machines
are noisy. Redis: ``--url`` / $RAYSEQ_REDIS_URL, else a private ``redis-server`` on 127.0.0.1 and a
free port, started and stopped (by PID) here.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from rayseq.replay import ReplayBuffer
from rayseq.replay_redis import URL_ENV, RedisReplayBuffer, encode_episode
from rayseq.rollout import Episode


@dataclass
class ReplayBenchConfig:
    episodes: int = 20000
    """Episodes inserted (in batches of ``batch``)."""
    batch: int = 500
    """Episodes per add/sample call (one learner batch)."""
    capacity: int = 10000
    """Ring capacity (half the inserts evict)."""
    samples: int = 40
    """Timed sample calls of ``batch`` episodes each."""
    url: str | None = None
    """Redis URL (default $RAYSEQ_REDIS_URL, else a private redis-server)."""
    seed: int = 0


def synthetic_episodes(n: int, seed: int = 0, vocab: int = 10000) -> list[Episode]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s, r, L = (int(x) for x in rng.integers(8, 25, size=3))
        out.append(Episode(src=rng.integers(4, vocab, size=s), ref=rng.integers(4, vocab, size=r),
                           tokens=rng.integers(4, vocab, size=L), rewards=rng.random(L + 1).astype(np.float32),
                           logp=-rng.random(L + 1).astype(np.float32), capped=False, version=i, index=i))
    return out


@contextmanager
def private_redis() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if not binary:
        raise ValueError(f"no Redis: pass --url, set {URL_ENV}, or install redis-server (apt-get install -y redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="rsbench-redis-")
    proc = subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir, "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import redis

        for _ in range(200):
            try:
                redis.Redis(port=port).ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def _time(buf, episodes: list[Episode], cfg: ReplayBenchConfig) -> tuple[float, float]:
    t0 = time.perf_counter()
    for i in range(0, len(episodes), cfg.batch):
        buf.add(episodes[i:i + cfg.batch])
    insert = len(episodes) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for _ in range(cfg.samples):
        buf.sample(cfg.batch, fresh_first=cfg.batch // 2)
    sample = cfg.samples * cfg.batch / (time.perf_counter() - t0)
    return insert, sample


def run(cfg: ReplayBenchConfig) -> dict:
    episodes = synthetic_episodes(cfg.episodes, cfg.seed)
    mem_insert, mem_sample = _time(ReplayBuffer(cfg.capacity, seed=cfg.seed), episodes, cfg)
    url = cfg.url or os.environ.get(URL_ENV)
    with (private_redis() if not url else _given(url)) as u:
        buf = RedisReplayBuffer(cfg.capacity, seed=cfg.seed, url=u, key=f"rayseq:bench:{os.getpid()}")
        buf.clear()
        try:
            red_insert, red_sample = _time(buf, episodes, cfg)
        finally:
            buf.clear()
            buf._redis.delete(f"{buf.key}:meta")
    bytes_per = float(np.mean([len(encode_episode(e)) for e in episodes[:1000]]))
    return {
        "bench": "replay", "episodes": cfg.episodes, "batch": cfg.batch, "capacity": cfg.capacity,
        "memory_insert_eps_per_s": round(mem_insert), "memory_sample_eps_per_s": round(mem_sample),
        "redis_insert_eps_per_s": round(red_insert), "redis_sample_eps_per_s": round(red_sample),
        "insert_ratio_redis_vs_memory": red_insert / mem_insert, "sample_ratio_redis_vs_memory": red_sample / mem_sample,
        "encoded_bytes_per_episode": round(bytes_per, 1), "redis": "given" if url else "private redis-server",
    }


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url
