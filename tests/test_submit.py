"""``rayseq submit`` / ``rayseq jobs`` against a real local Ray head (own temp dir and ports,
dashboard on 127.0.0.1, token auth on when ~/.ray/auth_token exists), stopped by PID."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from _cluster_head import LocalHead

from rayseq.cli import main
from rayseq.cluster import submit as sub

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def head():
    h = LocalHead(num_cpus=2)
    try:
        h.wait_dashboard()
        yield h
    finally:
        h.stop()


def test_runtime_env_and_entrypoint():
    env = sub.runtime_env()
    assert Path(env["working_dir"], "pyproject.toml").is_file()
    for must in ("runs/", ".venv/", ".git/", "tests/"):
        assert must in env["excludes"]
    assert sub.entrypoint(["train", "--algo", "mle", "x=a b"]) == "python -m rayseq.cli train --algo mle 'x=a b'"
    with pytest.raises(ValueError, match="nothing to run"):
        sub.entrypoint([])
    with pytest.raises(ValueError, match="URL"):
        sub.resolve_address("127.0.0.1:6379")


def test_no_job_server_is_a_clear_error(capsys):
    from _cluster_head import free_port

    assert main(["jobs", "list", "--address", f"http://127.0.0.1:{free_port()}"]) == 2
    assert "no Ray job server" in capsys.readouterr().err


def test_submit_train_job_succeeds_and_results_are_readable(head, tmp_path, capsys):
    out = tmp_path / "mle-run"
    rc = main(["submit", "--address", head.dashboard_url, "--",
               "train", "--algo", "mle", "--task", "toy", "--preset", "cpu", "--out", str(out), "epochs=1"])
    assert rc == 0
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    status = sub.wait(job_id, head.dashboard_url, timeout_s=600)
    logs = sub.client(head.dashboard_url).get_job_logs(job_id)
    assert status == "SUCCEEDED", logs[-3000:]
    summary = json.loads([ln for ln in logs.splitlines() if ln.startswith("{")][-1])
    assert summary["run_dir"] == str(out)
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 1 and results["test"]["bleu"] == summary["bleu_test"]

    assert main(["jobs", "status", job_id, "--address", head.dashboard_url]) == 0
    assert capsys.readouterr().out.startswith("SUCCEEDED")
    assert main(["jobs", "logs", job_id, "--address", head.dashboard_url]) == 0
    assert '"run_dir"' in capsys.readouterr().out
    assert main(["jobs", "list", "--address", head.dashboard_url]) == 0
    assert job_id in capsys.readouterr().out
    assert main(["jobs", "status", "no-such-job", "--address", head.dashboard_url]) == 2
    assert "no job 'no-such-job'" in capsys.readouterr().err


def test_stop_a_running_job(head, capsys):
    assert main(["submit", "--address", head.dashboard_url, "--env", "RAYSEQ_X=1", "--",
                 "bench", "rollout", "--seconds", "60"]) == 0  # a job stopped by Ray can outlive it: keep it short
    job_id = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["jobs", "stop", job_id, "--address", head.dashboard_url]) == 0
    assert sub.wait(job_id, head.dashboard_url, timeout_s=120) == "STOPPED"
