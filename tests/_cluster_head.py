"""Test helper: a real local Ray head (``ray start --head --block``) in its own temp dir and ports.

Started as a subprocess and stopped by its PID (SIGTERM to the ``ray start --block`` process,
which takes its raylet, GCS and dashboard down with it) — never ``ray stop``, which would kill every
Ray process on the machine. Token auth is on (``RAY_AUTH_MODE=token``) when a token exists.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    if (Path.home() / ".ray" / "auth_token").is_file() or env.get("RAY_AUTH_TOKEN"):
        env.setdefault("RAY_AUTH_MODE", "token")
    env.update(extra or {})
    return env


class LocalHead:
    """One ``ray start --head`` on 127.0.0.1 (see module doc)."""

    def __init__(self, num_cpus: int = 2, env: dict[str, str] | None = None, args: list[str] | None = None,
                 port: int | None = None) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rsh-", dir="/tmp")  # short: unix socket paths
        self.port = port or free_port()
        self.dashboard_port = free_port()
        self.env = ray_env(env)
        ray_bin = str(Path(sys.executable).with_name("ray"))
        self.cmd = [
            ray_bin, "start", "--head", "--block", f"--temp-dir={self.temp_dir}", f"--port={self.port}",
            "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--num-gpus=0",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}", f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}", "--min-worker-port=0", "--max-worker-port=0",
            "--disable-usage-stats", *(args or []),
        ]
        self.log = open(Path(self.temp_dir) / "ray_start.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def log_text(self) -> str:
        self.log.flush()
        return (Path(self.temp_dir) / "ray_start.log").read_text(errors="replace")

    def wait_dashboard(self, timeout_s: float = 120.0) -> None:
        """Until the job server answers (any HTTP status) or the head died."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.dashboard_url + "/api/version", timeout=2)
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"no job server at {self.dashboard_url} after {timeout_s}s:\n{self.log_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM to the head's process group (all processes it started), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        # daemons the head spawned in its session (raylet, gcs_server, dashboard, workers)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
