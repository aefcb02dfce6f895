"""Test helper: a real local Ray head (``ray start --head --block``) in its own temp dir and ports.

Started as a subprocess in a new process group and stopped by that group's id (SIGTERM, then
SIGKILL, to the ``ray start`` process and the raylet, GCS and dashboard it started, which stay in its
group) — never ``ray stop``, which would kill every Ray process on the machine. Token auth is on
(``RAY_AUTH_MODE=token``) when a token exists.

``block=False`` runs ``ray start`` without ``--block`` (as on a real head): it exits once the head is
up and the daemons live on, so one of them (the GCS) can be killed and restarted
(:meth:`LocalHead.daemon_pids`, :meth:`LocalHead.restart`), which ``--block`` would answer by
killing the whole head.
"""
from __future__ import annotations

import json
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
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """``n`` distinct free ports: every socket stays bound until all are drawn, so the kernel cannot
    hand out one port twice (two Ray components on one port make ``ray start`` fail)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


NODE_PORTS: tuple[str, ...] = ("dashboard-agent-listen", "dashboard-agent-grpc", "metrics-export", "runtime-env-agent",
                               "node-manager", "object-manager")
"""The ``ray start --NAME-port`` flags every node gets its own port for (a head also its GCS, dashboard
and Ray Client ports)."""


def port_flags(names: tuple[str, ...], ports: list[int]) -> list[str]:
    """``--NAME-port=P`` for each name with its port (one port each)."""
    if len(ports) != len(names):
        raise ValueError(f"port_flags: {len(names)} names, {len(ports)} ports")
    return [f"--{name}-port={p}" for name, p in zip(names, ports)]


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
                 port: int | None = None, block: bool = True) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rsh-", dir="/tmp")  # short: unix socket paths
        ports = [p for p in free_ports(len(NODE_PORTS) + 3) if p != port]  # dashboard, client, node ports, GCS
        self.dashboard_port = ports[0]
        self.port = port or ports[len(NODE_PORTS) + 2]
        self.env = ray_env(env)
        self._launch([
            "--head", *(["--block"] if block else []), f"--port={self.port}", "--num-gpus=0",
            "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
            *port_flags(("ray-client-server", *NODE_PORTS), ports[1:len(NODE_PORTS) + 2]),
            f"--num-cpus={num_cpus}", *(args or []),
        ])
        if not block:
            try:
                rc = self.proc.wait(timeout=180)
            except subprocess.TimeoutExpired:
                rc = None
            if rc != 0:
                log = self.log_text()[-3000:]
                self.stop()
                raise RuntimeError(f"ray start --head exited with {rc}:\n{log}")

    def _launch(self, flags: list[str]) -> None:
        """``ray start FLAGS`` on 127.0.0.1 in ``self.temp_dir``, in a new process group (``self.pgid``:
        the group of ``ray start`` and every daemon it starts), logging to ``ray_start.log``."""
        self.cmd = [
            str(Path(sys.executable).with_name("ray")), "start", *flags, f"--temp-dir={self.temp_dir}",
            "--node-ip-address=127.0.0.1", "--min-worker-port=0", "--max-worker-port=0", "--disable-usage-stats",
        ]
        self.log = open(Path(self.temp_dir) / "ray_start.log", "w")  # noqa: SIM115
        self._restarted: list[subprocess.Popen] = []
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.pgid = self.proc.pid

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

    def daemon_pids(self, name: str) -> list[int]:
        """PIDs of this head's live processes (its process group, restarted daemons) called ``name``
        (at most 15 characters: the kernel's ``comm``)."""
        restarted = {p.pid for p in self._restarted}
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                stat = (entry / "stat").read_text()
                comm, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
                if comm == name and state != "Z" and (os.getpgid(pid) == self.pgid or pid in restarted):
                    pids.append(pid)
            except (OSError, ValueError):
                continue  # gone meanwhile
        return pids

    def restart(self, cmdline: list[str], environ: dict[str, str], cwd: str) -> subprocess.Popen:
        """Start a process again with the command line, environment and cwd it had (read from /proc);
        :meth:`stop` ends it too (by its PID: it cannot join the head's group from another session)."""
        log = open(Path(self.temp_dir) / f"restarted_{Path(cmdline[0]).name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(cmdline, env=environ, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        log.close()
        self._restarted.append(proc)
        return proc

    def stop(self) -> None:
        """SIGTERM to the head's process group (all processes it started) and to restarted daemons,
        SIGKILL if they linger."""
        for proc in self._restarted:
            if proc.poll() is None:
                proc.terminate()
        try:
            os.killpg(self.pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10  # daemons (raylet, gcs_server, dashboard, workers) end on SIGTERM
        while time.monotonic() < deadline and _group_alive(self.pgid):
            time.sleep(0.2)
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for proc in self._restarted:
            if proc.poll() is None:
                proc.kill()
        for proc in [self.proc, *self._restarted]:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class LocalWorker(LocalHead):
    """One worker node (``ray start --address=HEAD --block``) joining ``head``: its own temp dir,
    ports and resources (e.g. ``num_gpus=1``: a node that advertises a GPU, CUDA or not; custom
    ``resources``);
    stopped like the head (its process group)."""

    def __init__(self, head: LocalHead, num_cpus: int = 1, num_gpus: int = 0,
                 resources: dict[str, float] | None = None) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="rsw-", dir="/tmp")
        self.env = head.env
        self._launch([
            f"--address={head.address}", "--block", f"--num-cpus={num_cpus}", f"--num-gpus={num_gpus}",
            *port_flags(NODE_PORTS, free_ports(len(NODE_PORTS))),
            *([f"--resources={json.dumps(resources)}"] if resources else []),
        ])


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
