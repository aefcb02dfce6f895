"""GCS fault tolerance, for real: the GCS of a local head (``ray start --head``, own temp dir and
ports) is SIGKILLed during a training job and restarted with the command line, environment and
working directory it had (read from /proc, as a supervisor such as KubeRay's head restart would).

* With an external Redis (``RAY_REDIS_ADDRESS``, a private ``redis-server``): the raylet, the driver
  and the learner reconnect, the job finishes, and a detached actor created before the kill keeps its
  state and is found by name by a driver that starts after the restart.
* Without Redis (the GCS keeps its tables in memory) the same restart gives a new, empty cluster: a
  new cluster id (the old raylet and workers are rejected: ``Wrong cluster ID``), no session name
  (new drivers cannot join), no actor table (the detached actor is out of reach) — the failure mode
  that the Redis setting removes.

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

EPOCHS = 8  # the GCS is killed after epoch 1

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


class _Head:
    """A head (with an external Redis when given) whose GCS can be killed and restarted."""

    def __init__(self, redis: LocalRedis | None) -> None:
        env = {"RAY_gcs_rpc_server_reconnect_timeout_s": "60"}  # how long raylets wait for a GCS (Ray's default)
        if redis is not None:
            env.update({"RAY_REDIS_ADDRESS": f"127.0.0.1:{redis.port}", "RAY_external_storage_namespace": "rayseq-gcs-ft"})
        self.redis = redis
        self.head = LocalHead(num_cpus=2, env=env, block=False)

    def kill_and_restart_gcs(self, down_s: float = 2.0) -> None:
        [gcs_pid] = self.head.daemon_pids("gcs_server")
        cmdline, environ, cwd = _proc_snapshot(gcs_pid)
        assert ("--redis_address=127.0.0.1" in cmdline) == (self.redis is not None)
        os.kill(gcs_pid, signal.SIGKILL)
        time.sleep(down_s)  # the cluster runs without a GCS for a moment
        self.head.restart(cmdline, environ, cwd)

    def stop(self) -> None:
        self.head.stop()


def test_with_redis_a_training_job_and_a_detached_actor_survive_a_gcs_restart(tmp_path):
    redis = LocalRedis()
    cluster = _Head(redis)
    head, job = cluster.head, None
    try:
        created = _ledger(head, "create")
        assert created.returncode == 0, created.stderr[-3000:]
        assert json.loads(created.stdout.splitlines()[-1]) == ["create"]

        run = tmp_path / "run"
        job = subprocess.Popen(
            [sys.executable, "-m", "rayseq.cli", "train", "--algo", "mle", "--task", "toy", "--preset", "cpu",
             "--num-learners", "1", "--address", head.address, "--out", str(run), f"epochs={EPOCHS}"],
            env=head.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        _wait_for_epoch(run, job, 1)  # the job is running: a remote learner actor is training

        cluster.kill_and_restart_gcs()
        epoch_at_restart = json.loads((run / "checkpoint" / "trainer_state.json").read_text())["epoch"]
        assert job.poll() is None and epoch_at_restart < EPOCHS, "the job finished before the GCS came back"

        out, err = job.communicate(timeout=300)
        assert job.returncode == 0, err[-3000:]
        summary = json.loads(out.strip().splitlines()[-1])
        results = json.loads((run / "results.json").read_text())
        assert results["epochs"] == EPOCHS and summary["bleu_test"] == results["test"]["bleu"]

        # a driver started after the restart joins the cluster and finds the actor by name in the
        # restarted GCS, with the state its process held before the kill
        after = _ledger(head, "after")
        assert after.returncode == 0, after.stderr[-3000:]
        assert json.loads(after.stdout.splitlines()[-1]) == ["create", "after"]
        assert head.daemon_pids("raylet"), "the head's raylet did not survive the GCS restart"
        import redis as redis_client

        assert redis_client.Redis(port=redis.port).keys("*"), "nothing of the GCS's tables is in Redis"
    finally:
        if job is not None and job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.communicate(timeout=60)
        cluster.stop()
        redis.stop()


def test_without_redis_a_restarted_gcs_has_lost_the_cluster(tmp_path):
    """The same steps without Redis (no training job: a running job whose calls go straight to its
    actors can even finish, see the README; what breaks is everything that needs the GCS's tables)."""
    cluster = _Head(None)
    head = cluster.head
    try:
        created = _ledger(head, "create")
        assert created.returncode == 0, created.stderr[-3000:]
        cluster.kill_and_restart_gcs()
        after = _ledger(head, "after")
        # the restarted GCS is a new, empty cluster (new cluster id, empty tables): a new driver cannot
        # join (the session name the head wrote is gone), so the detached actor is out of reach
        assert after.returncode != 0
        assert "Could not read 'session_name' from GCS" in after.stderr, after.stderr[-3000:]
        gcs_logs = [f.read_text(errors="replace") for f in Path(head.temp_dir).glob("session_2*/logs/gcs_server*.out")]
        assert any("Wrong cluster ID" in text for text in gcs_logs)  # the old raylet is rejected
    finally:
        cluster.stop()
