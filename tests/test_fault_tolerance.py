"""Fault tolerance, for real: a rollout worker killed mid-training, a driver killed mid-run, a kill
during a checkpoint write (including the save after one). Redis-backed GCS fault tolerance: tests/test_gcs_ft.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayseq.algorithms.erac import ERACConfig
from rayseq.config import build_run_config
from rayseq.metrics import WORKER_RESTARTS

pytestmark = pytest.mark.ray


@pytest.fixture
def erac_algo(tmp_path, ray_session):
    from rayseq.data.tasks import load_task
    from rayseq.runtime.builders import build_actor_critic_algorithm

    cfg = build_run_config("erac", ERACConfig, "cpu", "toy", ["log_every=1", "batch_size=10"], out=str(tmp_path / "run"),
                           num_rollout_workers=2, envs_per_worker=8)
    algo = build_actor_critic_algorithm(cfg, load_task("toy"))
    algo.set_stage("joint")
    yield algo
    algo.stop()


def _worker_pids(algo) -> list[int]:
    return algo.env_runner_group.foreach_env_runner(lambda r: os.getpid(), local_env_runner=False)


def test_killed_rollout_worker_is_restarted_and_no_update_is_lost(erac_algo):
    algo = erac_algo
    pids = _worker_pids(algo)
    assert len(pids) == 2
    os.kill(pids[0], signal.SIGKILL)  # a lost worker (crash, reclaimed spot node)
    algo.updates_per_iteration = 3
    algo.train()  # the dead worker's share is sampled by the other one
    assert algo.num_updates == 3
    first = algo.pop_train_log()
    assert [r["step"] for r in first] == [1, 2, 3]
    # the next iteration first brings the restarted worker back (RLlib probe + our re-sync)
    deadline = time.monotonic() + 120
    while algo.env_runner_group.num_healthy_remote_env_runners() < 2 and time.monotonic() < deadline:
        algo.train()
    assert algo.env_runner_group.num_healthy_remote_env_runners() == 2
    new_pids = _worker_pids(algo)
    assert pids[0] not in new_pids and pids[1] in new_pids
    # the restarted worker samples with the learner's current weights (version = update count)
    versions = algo.env_runner_group.foreach_env_runner(lambda r: r.version, local_env_runner=False)
    assert versions == [algo.num_updates] * 2
    records = first + algo.pop_train_log()
    assert [r["step"] for r in records] == list(range(1, algo.num_updates + 1))  # every update ran, in order
    assert records[-1][WORKER_RESTARTS] >= 1
    assert all(r["sample/bleu"] >= 0 for r in records)


# ----------------------------------------------------------------------------- the driver


def _train_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rayseq.cli", "train", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    return env


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, epoch: int, timeout_s: float = 600) -> None:
    state = run / "checkpoint" / "trainer_state.json"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if state.is_file() and json.loads(state.read_text())["epoch"] >= epoch:
            return
        assert proc.poll() is None, f"training exited early ({proc.returncode})"
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} after {timeout_s}s")


_DIE_DURING_SAVE = r"""
import os, signal, sys
from pathlib import Path
from rayseq import run_dir

run = Path(sys.argv[1])
mode = sys.argv[2]

class HalfWritten:
    # stands in for the algorithm: writes part of a checkpoint, then the process is killed
    def save_to_path(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / "partial.bin").write_bytes(b"x" * 1000)
        if mode == "during-save":
            os.kill(os.getpid(), signal.SIGKILL)

real = os.replace
def replace(src, dst):
    if mode == "before-final-rename" and Path(dst).name == "checkpoint":
        os.kill(os.getpid(), signal.SIGKILL)  # the next save after a kill between the renames, cut short
    real(src, dst)
    if mode == "between-renames" and str(dst).endswith(".checkpoint.old"):
        os.kill(os.getpid(), signal.SIGKILL)  # the old one moved aside, the new one not yet in place
os.replace = replace
run_dir.save_checkpoint(HalfWritten(), run, {"epoch": 99})
"""


def test_killed_driver_resumes_and_a_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    run = tmp_path / "mle"
    proc = subprocess.Popen(_train_cmd("--algo", "mle", "--task", "toy", "--preset", "cpu", "--out", str(run), "epochs=2"),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        _wait_for_checkpoint(run, proc, 1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver (and the Ray it started) dies
        proc.communicate(timeout=60)
    saved = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
    if saved["epoch"] != 1:
        pytest.fail(f"the driver finished epoch {saved['epoch']} before it was killed; nothing left to resume")
    # later processes are killed while writing the next checkpoint: mid-write, between the renames, and
    # (with only `.checkpoint.old` left) the next save right before its new checkpoint is in place
    for mode in ("during-save", "between-renames", "before-final-rename"):
        killed = subprocess.run([sys.executable, "-c", _DIE_DURING_SAVE, str(run), mode], env=_env(), capture_output=True,
                                check=False)
        assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
        assert not (run / "checkpoint").exists() or mode == "during-save", mode
        restorable = run / ("checkpoint" if mode == "during-save" else ".checkpoint.old") / "trainer_state.json"
        assert json.loads(restorable.read_text())["epoch"] == 1, mode  # the previous checkpoint is still there

    resumed = subprocess.run(_train_cmd("--resume", str(run)), env=_env(), capture_output=True, text=True, timeout=900,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["epochs"] == 2
    assert "epoch 2:" in resumed.stderr and "epoch 1:" not in resumed.stderr  # continued after the last good checkpoint
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # the step counter continued
    final = json.loads((run / "checkpoint" / "trainer_state.json").read_text())
    assert final["epoch"] == 2 and not (run / ".checkpoint.tmp").exists() and not (run / ".checkpoint.old").exists()
