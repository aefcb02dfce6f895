"""Test helper: a private ``redis-server`` on 127.0.0.1 and a free port, stopped by PID.

The Debian package provides the binary (CI: `.ci/run` runs `apt-get install -y redis-server`).
When it is missing the tests FAIL with that instruction (they are never silently skipped).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest
from _cluster_head import free_port


def redis_server_binary() -> str:
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None)
    if not path:
        pytest.fail("redis-server is not installed: `apt-get install -y redis-server` (CI's .ci/run installs it)")
    return path


class LocalRedis:
    def __init__(self, persist: bool = False) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="rsredis-")
        args = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
                "--save", "1 1" if persist else "", "--appendonly", "yes" if persist else "no",
                "--protected-mode", "yes", "--daemonize", "no", "--loglevel", "warning"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        t0 = time.monotonic()
        import redis

        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=1).ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() - t0 > 30:
                    raise RuntimeError(f"redis-server did not start: {self.proc.stderr.read().decode()}") from None
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
