"""GCS fault tolerance, for real: the GCS of a local head (``ray start --head``, own temp dir and
ports) is SIGKILLed during a training job and restarted with the command line, environment and
working directory it had (read from /proc, as a supervisor such as KubeRay's head restart would).

* With an external Redis (``RAY_REDIS_ADDRESS``, a private ``redis-server``): the raylet, the driver
  and the learner reconnect, the job finishes, and a detached actor created before the kill keeps its
  state and is found by name by a driver that starts after the restart.
* Without Redis (the GCS keeps its tables in memory): the restarted GCS is a new cluster; it knows
  neither the node nor the actor, the old raylet and driver are rejected (``WrongClusterID``) and
  the job does not finish — the failure mode that the Redis setting removes.

Everything runs in subprocesses (the test process never joins these clusters) and is stopped by PID.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _cluster_head import LocalHead
from _cluster_redis import LocalRedis

pytestmark = pytest.mark.ray

EPOCHS = 4

_LEDGER = r"""
import json, sys
import ray

ray.init(address=sys.argv[1], namespace="rayseq-gcs-ft", log_to_driver=False)

@ray.remote(num_cpus=0)
class Ledger:
    # a detached actor holding state in its process
    def __init__(self):
        self.items = []

    def add(self, item):
        self.items.append(item)
        return list(self.items)

if sys.argv[2] == "create":
    ledger = Ledger.options(name="ledger", lifetime="detached").remote()
else:
    ledger = ray.get_actor("ledger")  # a lookup in the GCS's actor table
print(json.dumps(ray.get(ledger.add.remote(sys.argv[2]), timeout=60)))
"""


def _ledger(head: LocalHead, step: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _LEDGER, head.address, step], env=head.env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


def _proc_snapshot(pid: int) -> tuple[list[str], dict[str, str], str]:
    """Command line, environment and cwd of a running process."""
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")[:-1]
    return ([a.decode() for a in cmdline], dict(e.decode().split("=", 1) for e in environ if b"=" in e),
            os.readlink(f"/proc/{pid}/cwd"))


def _wait_for_epoch(run: Path, job: subprocess.Popen, epoch: int, timeout_s: float = 300) -> None:
    state = run / "checkpoint" / "trainer_state.json"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= epoch:
            return
        if job.poll() is not None:
            raise AssertionError(f"the job exited ({job.returncode}) before epoch {epoch}:\n{job.stderr.read()[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} after {timeout_s}s")


def _kill_and_restart_gcs_during_a_job(tmp_path: Path, redis: LocalRedis | None) -> dict:
    """Start a head (with Redis when given), a detached actor and a training job; kill the GCS during
    the job and restart it; report what survived."""
    env = {"RAY_gcs_rpc_server_reconnect_timeout_s": "60"}  # how long raylets wait for a GCS (Ray's default)
    if redis is not None:
        env.update({"RAY_REDIS_ADDRESS": f"127.0.0.1:{redis.port}", "RAY_external_storage_namespace": "rayseq-gcs-ft"})
    head = LocalHead(num_cpus=2, env=env, block=False)
    job = None
    try:
        created = _ledger(head, "create")
        assert created.returncode == 0, created.stderr[-3000:]
        assert json.loads(created.stdout.splitlines()[-1]) == ["create"]

        run = tmp_path / "run"
        job = subprocess.Popen(
            [sys.executable, "-m", "rayseq.cli", "train", "--algo", "mle", "--task", "toy", "--preset", "cpu",
             "--num-learners", "1", "--address", head.address, "--out", str(run), f"epochs={EPOCHS}"],
            env=head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        _wait_for_epoch(run, job, 1)  # the job is running: a remote learner is training

        [gcs_pid] = head.daemon_pids("gcs_server")
        cmdline, environ, cwd = _proc_snapshot(gcs_pid)
        assert ("--redis_address=127.0.0.1" in cmdline) == (redis is not None)
        os.kill(gcs_pid, signal.SIGKILL)
        time.sleep(2)  # the cluster runs without a GCS for a moment
        head.restart(cmdline, environ, cwd)
        job_alive_at_restart = job.poll() is None

        try:
            out, err = job.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(job.pid, signal.SIGKILL)
            out, err = job.communicate(timeout=60)
        after = _ledger(head, "after", timeout_s=120)
        return {"job_alive_at_restart": job_alive_at_restart, "job_rc": job.returncode, "job_stdout": out,
                "job_stderr": err, "run": run, "ledger": after, "raylets": head.daemon_pids("raylet")}
    finally:
        if job is not None and job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait(timeout=60)
        head.stop()


def test_with_redis_the_job_and_a_detached_actor_survive_a_gcs_restart(tmp_path):
    redis = LocalRedis()
    try:
        r = _kill_and_restart_gcs_during_a_job(tmp_path, redis)
        assert r["job_alive_at_restart"], "the job finished before the GCS came back; nothing was tested"
        assert r["job_rc"] == 0, r["job_stderr"][-3000:]
        summary = json.loads(r["job_stdout"].strip().splitlines()[-1])
        results = json.loads((r["run"] / "results.json").read_text())
        assert results["epochs"] == EPOCHS and summary["bleu_test"] == results["test"]["bleu"]
        assert r["ledger"].returncode == 0, r["ledger"].stderr[-3000:]
        # found by name in the restarted GCS, with the state its process held before the kill
        assert json.loads(r["ledger"].stdout.splitlines()[-1]) == ["create", "after"]
        assert r["raylets"], "the head's raylet did not survive the GCS restart"
        import redis as redis_client

        assert redis_client.Redis(port=redis.port).keys("*"), "nothing of the GCS's tables is in Redis"
    finally:
        redis.stop()


def test_without_redis_a_gcs_restart_loses_the_cluster(tmp_path):
    r = _kill_and_restart_gcs_during_a_job(tmp_path, None)
    assert r["job_alive_at_restart"], "the job finished before the GCS came back; nothing was tested"
    # the restarted GCS is a new, empty cluster: the job and the actor lookup fail
    assert r["job_rc"] != 0
    assert not (r["run"] / "results.json").exists()
    assert r["ledger"].returncode != 0
    print(json.dumps({"job_rc": r["job_rc"], "job_error": r["job_stderr"][-600:],
                      "ledger_error": r["ledger"].stderr[-600:]}))
