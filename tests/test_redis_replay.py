"""The Redis replay backend against a real local redis-server (tests/_cluster_redis.py)."""
from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys

import numpy as np
import pytest
from _cluster_redis import LocalRedis

from rayseq.replay import ReplayBuffer, make_replay_buffer
from rayseq.replay_redis import (
    RedisReplayBuffer,
    ReplayUnavailable,
    decode_episode,
    encode_episode,
)
from rayseq.rollout import Episode


def _episode(i: int, vocab: int = 1000, float_src: bool = False) -> Episode:
    rng = np.random.default_rng(i)
    n = int(rng.integers(1, 12))
    src = rng.random(16, dtype=np.float32) if float_src else rng.integers(0, vocab, size=int(rng.integers(1, 15)))
    return Episode(src=src, ref=rng.integers(4, vocab, size=int(rng.integers(1, 10))), tokens=rng.integers(4, vocab, size=n),
                   rewards=rng.random(n + 1).astype(np.float32), logp=-rng.random(n + 1).astype(np.float32),
                   capped=bool(i % 2), version=i * 3, index=i)


def _same(a: Episode, b: Episode) -> bool:
    return all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("src", "ref", "tokens", "rewards", "logp")) and (
        (a.capped, a.version, a.index) == (b.capped, b.version, b.index))


@pytest.fixture
def server():
    s = LocalRedis()
    yield s
    s.stop()


@pytest.mark.parametrize("kw", [{}, {"vocab": 100_000}, {"float_src": True}])
def test_encoding_roundtrip_and_compact(kw):
    for i in range(20):
        e = _episode(i, **kw)
        blob = encode_episode(e)
        assert _same(decode_episode(blob), e)
        assert len(blob) < len(pickle.dumps(e, protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(ValueError, match="not an encoded rayseq episode"):
        decode_episode(b"XXXX" + blob[4:])


def test_capacity_holds_oldest_evicted_and_sampling_like_memory(server):
    buf = RedisReplayBuffer(10, seed=0, url=server.url, key="t:cap")
    mem = ReplayBuffer(10, seed=0)
    for chunk in (range(7), range(7, 18), range(18, 25)):
        eps = [_episode(i) for i in chunk]
        buf.add(eps)
        mem.add(eps)
    assert len(buf) == len(mem) == 10
    st = buf.stats()
    assert (st.size, st.capacity, st.added, st.dropped) == (10, 10, 25, 15) == (len(mem), mem.capacity, mem.added, mem.dropped)
    got = buf.sample(30)
    assert {e.index for e in got} <= set(range(15, 25))
    fresh = buf.sample(4, fresh_first=4)
    assert [e.index for e in fresh] == [21, 22, 23, 24]
    assert all(_same(a, b) for a, b in zip(fresh, mem.sample(4, fresh_first=4), strict=True))
    # a batch larger than the ring keeps its newest part
    buf.add([_episode(i) for i in range(100, 130)])
    assert sorted(e.index for e in buf.sample(10, fresh_first=10)) == list(range(120, 130))
    with pytest.raises(ValueError, match="ring of capacity 10, not 20"):
        RedisReplayBuffer(20, url=server.url, key="t:cap")


def test_empty_and_missing_url_are_clear_errors(server, monkeypatch):
    with pytest.raises(ValueError, match="is empty"):
        RedisReplayBuffer(5, url=server.url, key="t:empty").sample(1)
    monkeypatch.delenv("RAYSEQ_REDIS_URL", raising=False)
    with pytest.raises(ValueError, match="RAYSEQ_REDIS_URL"):
        make_replay_buffer("redis", 5)
    monkeypatch.setenv("RAYSEQ_REDIS_URL", server.url)
    assert isinstance(make_replay_buffer("redis", 5, key="t:env"), RedisReplayBuffer)
    assert isinstance(make_replay_buffer("memory", 5), ReplayBuffer)


_WRITER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[3])
from test_redis_replay import _episode
from rayseq.replay_redis import RedisReplayBuffer
buf = RedisReplayBuffer(50, url=sys.argv[1], key=sys.argv[2])
buf.add([_episode(i) for i in range(30)])
os.kill(os.getpid(), signal.SIGKILL)  # the driver dies
"""


def test_contents_survive_a_killed_driver(server):
    proc = subprocess.run([sys.executable, "-c", _WRITER, server.url, "t:kill", os.path.dirname(__file__)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    again = RedisReplayBuffer(50, url=server.url, key="t:kill")  # the resumed driver / a second job
    assert len(again) == 30
    assert all(_same(e, _episode(e.index)) for e in again.sample(30))


def test_redis_outage_is_a_clear_error_after_bounded_retries():
    s = LocalRedis()
    buf = RedisReplayBuffer(10, url=s.url, key="t:down", retries=2, retry_wait_s=0.05, socket_timeout_s=1.0)
    buf.add([_episode(0)])
    s.stop()  # Redis goes away mid-training
    with pytest.raises(ReplayUnavailable, match=r"unreachable after 3 tries.*--resume"):
        buf.add([_episode(1)])
    with pytest.raises(ReplayUnavailable):
        buf.sample(1)


@pytest.mark.ray
def test_actor_critic_training_on_the_redis_backend(server, tmp_path, ray_session):
    import redis

    from rayseq.algorithms.erac import ERACConfig
    from rayseq.config import build_run_config
    from rayseq.data.tasks import load_task
    from rayseq.runtime.builders import build_actor_critic_algorithm

    cfg = build_run_config("erac", ERACConfig, "cpu", "toy", [f"algo.replay_backend={server.url}", "batch_size=10",
                           "algo.replay_capacity=40", "log_every=1"], out=str(tmp_path / "run"),
                           num_rollout_workers=1, envs_per_worker=8)
    algo = build_actor_critic_algorithm(cfg, load_task("toy"))
    try:
        algo.set_stage("joint")
        algo.updates_per_iteration = 3
        algo.train()
        assert algo.num_updates == 3
        assert isinstance(algo.buffer, RedisReplayBuffer)
        keys = {k.decode() for k in redis.Redis.from_url(server.url).keys("rayseq:replay:*:joint:head")}
        assert keys == {f"{algo.buffer.key}:head"}
        assert algo.buffer.stats().added >= 30
    finally:
        algo.stop()


def test_bench_replay_reports_ratios_and_cleans_up(server):
    import redis

    from rayseq.bench.replay import ReplayBenchConfig, run

    out = run(ReplayBenchConfig(episodes=1000, batch=100, capacity=500, samples=5, url=server.url))
    assert out["redis_insert_eps_per_s"] > 0 and out["memory_sample_eps_per_s"] > 0
    assert out["insert_ratio_redis_vs_memory"] == pytest.approx(out["redis_insert_eps_per_s"] / out["memory_insert_eps_per_s"], rel=0.01)
    assert 0 < out["encoded_bytes_per_episode"] < 400
    assert redis.Redis.from_url(server.url).keys("rayseq:bench:*") == []
