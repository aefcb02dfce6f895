"""``rayseq.experiments`` on real Ray Tune and real Ray (toy task, runs of seconds, no mocks): a 2 × 2
grid and its table, a failing trial kept in the table (and retried on request), a comparison whose
driver is killed and restored without retraining a finished trial, and two trials side by side on
the two nodes of a local multi-node cluster. Every Ray here is private (own temp dir and ports) and
stopped by PID or by its owner; never ``ray stop``."""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from rayseq.bench.tune import TINY, local_cluster
from rayseq.experiments import ExperimentConfig, run_compare
from rayseq.experiments.trial import ERROR_TXT

pytestmark = pytest.mark.ray

RUN = [*TINY, "epochs=1"]
"""A toy run of a few seconds (one epoch of a tiny model, greedy validation on 50 sentences)."""
RUN2 = [*TINY, "epochs=2"]
"""Two epochs: enough for seeds to differ in BLEU (one gives 0 everywhere)."""


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_two_algorithms_by_two_seeds_tabulated_from_their_trials(tmp_path, ray_session):
    out = tmp_path / "cmp"
    report = run_compare(ExperimentConfig.for_algos("toy", ["mle", "raml"], seeds=2, out=str(out), overrides=RUN2, max_concurrent=2))
    assert [row["algo"] for row in report["rows"]] == ["mle", "raml"]
    assert [r["key"] for r in report["runs"]] == ["mle-seed1234", "mle-seed1235", "raml-seed1234", "raml-seed1235"]
    md = (out / "compare.md").read_text()
    for row in report["rows"]:
        assert row["runs"] == row["ok"] == 2 and not row["failed"]
        results = [_results(out / f"{row['algo']}-seed{s}") for s in (1234, 1235)]
        for key, values in (("test_bleu", [r["test"]["bleu"] for r in results]), ("valid_bleu", [r["bleu/valid"] for r in results]),
                            ("wall_time_s", [r["wall_time_s"] for r in results])):
            assert row[key] == pytest.approx({"mean": statistics.mean(values), "std": statistics.stdev(values),
                                              "min": min(values), "max": max(values)}), key
        t = row["test_bleu"]
        assert f"| {row['algo']} | 2/2 | {t['mean']:.2f} ± {t['std']:.2f} | {t['min']:.2f} | {t['max']:.2f} |" in md
    # the figures come from Tune's results: each trial's last result (its folder under OUT/tune, with TensorBoard events)
    for rec in report["runs"]:
        trial = Path(rec["trial_path"])
        assert trial.parent.parent == out / "tune" and trial.name == rec["key"]
        last = json.loads((trial / "result.json").read_text().splitlines()[-1])
        assert last["test_bleu"] == _results(Path(rec["run_dir"]))["test"]["bleu"] == rec["test_bleu"]
        assert list(trial.glob("events.out.tfevents.*")) and list(trial.glob("checkpoint_*/trial.json"))
    assert (out / "compare.png").stat().st_size > 1000
    saved = json.loads((out / "compare.json").read_text())
    assert [r["key"] for r in saved["runs"]] == [r["key"] for r in report["runs"]] and saved["tune"]["mle"]["restored"] is False


def test_a_failing_trial_is_tabulated_with_its_error_and_retried_on_request(tmp_path, ray_session):
    """AC with the async schedule and no rollout workers fails inside the driver (building its algorithm);
    the MLE trial it would start from finishes, and the table shows both."""
    out = tmp_path / "cmp"
    cfg = ExperimentConfig.for_algos("toy", ["mle", "ac"], seeds=1, out=str(out), overrides=[*RUN, "num_rollout_workers=0", "ac:algo.schedule=async"])
    report = run_compare(cfg)
    rows = {row["algo"]: row for row in report["rows"]}
    assert rows["mle"]["ok"] == 1 and rows["mle"]["test_bleu"]["mean"] == _results(out / "mle-seed1234")["test"]["bleu"]
    assert rows["ac"]["ok"] == 0 and "async" in rows["ac"]["failed"][0], rows["ac"]
    ac = report["runs"][1]
    assert ac["status"] == "failed" and ac["actor_init"] == str(out / "mle-seed1234" / "actor_best.pt")
    assert "Traceback" in (out / "ac-seed1234" / ERROR_TXT).read_text()
    md = (out / "compare.md").read_text()
    assert "| mle | 1/1 |" in md and "| ac | 0/1 | failed |" in md and "FAILED" in md and "async" in md

    mle_mtime = (out / "mle-seed1234" / "results.json").stat().st_mtime_ns
    error_mtime = (out / "ac-seed1234" / ERROR_TXT).stat().st_mtime_ns
    again = run_compare(cfg)  # restored: the errored trial keeps its error, nothing runs
    assert again["tune"]["main"]["restored"] and "async" in again["rows"][1]["failed"][0]
    assert (out / "ac-seed1234" / ERROR_TXT).stat().st_mtime_ns == error_mtime
    cfg.retry_errored = True  # now it runs again (and fails again); the finished MLE trial does not
    retried = run_compare(cfg)
    assert "async" in retried["rows"][1]["failed"][0]
    assert (out / "ac-seed1234" / ERROR_TXT).stat().st_mtime_ns != error_mtime
    assert (out / "mle-seed1234" / "results.json").stat().st_mtime_ns == mle_mtime


def test_ac_protocol_with_one_mle_actor_and_shared_critics(tmp_path, ray_session):
    """``reproduce ac --shared-mle --shared-critic`` on the toy task, 2 seeds: one MLE run, three critic
    pretrainings (τ = 0 for AC and ERAC w/o future entropy, τ > 0 for both ERACs, τ > 0 with the entropy
    horizon for ERAC (horizon=reference), a different critic target), then every arm × seed
    starts from that actor and its critic; MLE continued gets exactly the joint stage's updates."""
    from rayseq.experiments.paper import reproduce

    out = tmp_path / "ac"
    budget = ["algo.critic_pretrain_epochs=0.02", "algo.critic_valid_every=3", "algo.critic_valid_sentences=20",
              "algo.joint_epochs=0.02", "algo.valid_every=3", "algo.collapse_margin=100", "num_rollout_workers=0"]
    report = reproduce("ac", "toy", seeds=2, out=str(out), preset="cpu", overrides=[*RUN2, *budget],
                       shared_mle=True, shared_critic=True, max_concurrent=2)
    assert [r["key"] for r in report["mle_runs"]] == ["mle-seed1234"]
    assert [r["key"] for r in report["critic_runs"]] == ["critic-ac-seed1234", "critic-erac-seed1234",
                                                         "critic-erac-horizonreference-seed1234"]
    assert all(r["status"] == "ok" for r in report["runs"] + report["critic_runs"]), report["runs"]
    critic_of = {"ac": "critic-ac-seed1234", "erac-nofutent": "critic-ac-seed1234",
                 "erac": "critic-erac-seed1234", "erac-eq20": "critic-erac-seed1234",
                 "erac (horizon=reference)": "critic-erac-horizonreference-seed1234"}
    for run in report["runs"]:
        results = _results(Path(run["run_dir"]))
        if run["label"] in critic_of:
            assert run["algo"] in ("ac", "erac", "erac-eq20", "erac-nofutent")
            row = critic_of[run["label"]]
            assert results["critic"]["source"] == f"critic_init {out / row / 'critic_best.pt'}"
            assert results["critic_updates"] == 0 and results["joint_updates"] == 6
        elif run["label"] == "mle (continued)":
            assert results["updates"] == 6  # 0.02 of 300 updates an epoch: the joint stage's budget
    for critic in report["critic_runs"]:
        results = _results(Path(critic["run_dir"]))
        assert results["critic_updates"] == 6 and results["joint_updates"] == 0
        horizon = json.loads((Path(critic["run_dir"]) / "run.json").read_text())["algo_config"]["entropy_horizon"]
        assert horizon == ("reference" if "horizon" in critic["key"] else "all"), critic["key"]
    md = (out / "ac.md").read_text()
    assert "| critic-ac-seed1234 | 6 |" in md and "| critic-erac-seed1234 | 6 |" in md
    assert "| critic-erac-horizonreference-seed1234 | 6 |" in md


def test_vaml_protocol_with_one_mle_actor_and_one_qnet(tmp_path, ray_session, capfd):
    """``reproduce vaml --shared-mle --shared-qnet`` on the toy task, 2 seeds: one MLE run and, beside it
    in the same phase, one Q-net run (step 1 only, no actor), then MLE continued, RAML and VAML from
    that actor for the same 6 updates (0.02 of 300 an epoch), validated every 3; every VAML run trains with the one Q-net and makes no Q-net update.
    Rerun with ``finetune_epochs`` doubled, the finished runs are extended to 12 updates; halved, refused."""
    from rayseq.experiments.paper import Grid, reproduce
    from rayseq.metrics import BLEU_VALID, read_metrics

    out = tmp_path / "vaml"
    settings = ["vaml:algo.qnet_epochs=0.1", "vaml:algo.qnet_valid_sentences=20", "raml:algo.num_samples=1",
                "vaml:algo.num_samples=1"]
    report = reproduce("vaml", "toy", seeds=2, out=str(out), preset="cpu", grid=Grid(finetune_epochs=0.02, finetune_checks=100),
                       overrides=[*RUN2, *settings], shared_mle=True, shared_qnet=True, max_concurrent=2)
    assert [r["key"] for r in report["mle_runs"]] == ["mle-seed1234"] and report["mle_reference"]["ok"] == 1
    assert [r["key"] for r in report["critic_runs"]] == ["qnet-vaml-seed1234"]
    assert list(report["tune"]) == ["mle", "main"]
    assert all(r["status"] == "ok" for r in report["runs"] + report["critic_runs"]), report["runs"]
    qnet_dir = out / "qnet-vaml-seed1234"
    qnet = _results(qnet_dir)
    assert qnet["qnet"]["source"] == "trained" and qnet["qnet"]["updates"] == 6 and qnet["epochs"] == 0
    rows = [r for r in report["runs"] if r["label"] != "mle"]
    assert sorted(r["label"] for r in rows) == sorted(["mle (continued)", "raml (from mle)", "vaml (from mle)"] * 2)
    for run in rows:
        results = _results(Path(run["run_dir"]))
        assert results["updates"] == 6 and results["epochs"] == 0.02, (run["key"], results)
        assert [r["step"] for r in read_metrics(Path(run["run_dir"])) if BLEU_VALID in r] == [0, 3, 6]
        if run["algo"] == "vaml":
            assert results["qnet"]["source"] == f"qnet_init {qnet_dir}"
    md = (out / "vaml.md").read_text()
    assert "vaml (from mle)" in md and "| vaml-from-mle-seed1235 | qnet_init" in md
    assert (out / "vaml.png").is_file()
    said = capfd.readouterr().err  # the Q-net run trains no actor: its line gives the Q-net's figures
    assert f"qnet-vaml-seed1234 done: Q-net held-out TD {qnet['qnet']['qnet/valid_td']:.3f}, greedy BLEU given y*" in said

    # the same command with twice the budget: new Tune experiments (the old ones kept as PHASE.1) whose
    # trials extend the finished runs to 12 updates; the MLE run and the Q-net are read back
    longer = reproduce("vaml", "toy", seeds=2, out=str(out), preset="cpu", grid=Grid(finetune_epochs=0.04, finetune_checks=100),
                       overrides=[*RUN2, *settings], shared_mle=True, shared_qnet=True, max_concurrent=2)
    assert longer["tune"]["main"]["previous"] == str((out / "tune" / "main.1").resolve())
    assert (out / "tune" / "mle.1").is_dir() and (out / "tune" / "main").is_dir()
    assert all(r["status"] == "ok" for r in longer["runs"] + longer["critic_runs"]), longer["runs"]
    assert all(r["reused"] for r in longer["mle_runs"] + longer["critic_runs"])
    assert _results(qnet_dir)["qnet"] == qnet["qnet"]
    for run in [r for r in longer["runs"] if r["label"] != "mle"]:
        assert not run["reused"], run["key"]
        results = _results(Path(run["run_dir"]))
        assert results["updates"] == 12 and results["epochs"] == 0.04, (run["key"], results)
        assert [r["step"] for r in read_metrics(Path(run["run_dir"])) if BLEU_VALID in r] == [0, 3, 6, 9, 12]
    with pytest.raises(ValueError, match="a budget can only grow"):
        reproduce("vaml", "toy", seeds=2, out=str(out), preset="cpu", grid=Grid(finetune_epochs=0.02, finetune_checks=100),
                  overrides=[*RUN2, *settings], shared_mle=True, shared_qnet=True, max_concurrent=2)


def test_a_failed_shared_qnet_stops_the_runs_that_start_from_it(tmp_path, ray_session):
    """The shared Q-net run fails (its replay source does not exist): the MLE run beside it finishes, and
    no run of the next phase starts (a VAML run would otherwise train with the failed run's partial
    ``qnet.pt``); the table says why, and the failed run keeps its traceback."""
    from rayseq.experiments.paper import Grid, reproduce

    out = tmp_path / "vaml"
    settings = ["vaml:algo.qnet_epochs=0.1", "vaml:algo.qnet_valid_sentences=20", "raml:algo.num_samples=1",
                "vaml:algo.num_samples=1", f"vaml:algo.qnet_replay={tmp_path / 'no-such-run'}"]
    report = reproduce("vaml", "toy", seeds=1, out=str(out), preset="cpu", grid=Grid(finetune_epochs=0.02, finetune_checks=100),
                       overrides=[*RUN, *settings], shared_mle=True, shared_qnet=True, max_concurrent=2)
    assert [r["status"] for r in report["mle_runs"]] == ["ok"]
    assert [r["status"] for r in report["critic_runs"]] == ["failed"]
    assert "not a run directory" in (out / "qnet-vaml-seed1234" / ERROR_TXT).read_text()
    main = [r for r in report["runs"] if r["label"] != "mle"]
    assert main and all(r["status"] == "failed" for r in main)
    assert all(r["error"] == "not run: it starts from qnet-vaml-seed1234, which did not finish" for r in main)
    assert report["tune"]["main"]["not_run"] and not (out / "tune" / "main").exists()
    assert not any(Path(r["run_dir"]).exists() for r in main)


def _ray_pids_under(temp: str) -> list[int]:
    """Processes whose command line names ``temp`` (the Ray a killed driver started there)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if temp.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _kill_ray_under(temp: str) -> None:
    for pid in _ray_pids_under(temp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    shutil.rmtree(temp, ignore_errors=True)


def test_killed_driver_is_restored_without_retraining_finished_trials(tmp_path):
    out = tmp_path / "cmp"
    cmd = [sys.executable, "-m", "rayseq.cli", "compare", "--task", "toy", "--algos", "mle", "--seeds", "2",
           "--max-concurrent", "1", "--out", str(out), *[x for o in RUN for x in ("--set", o)]]
    ray_tmp = tempfile.mkdtemp(prefix="rsk-", dir="/tmp")  # the drivers' private Rays live here (short: socket paths)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"TMPDIR": ray_tmp}
    log = open(tmp_path / "first.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        done: list[Path] = []
        while not done:  # the first trial has finished: its results.json (and Tune's experiment state) exist
            assert proc.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            if list((out / "tune" / "mle").glob("experiment_state-*.json")):
                done = [d for d in out.glob("mle-seed*") if (d / "results.json").is_file()]
            time.sleep(0.5)
        finished = done[0]
        mtime, metrics = (finished / "results.json").stat().st_mtime_ns, (finished / "metrics.jsonl").read_bytes()
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything in its process group
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        log.close()
        _kill_ray_under(ray_tmp)  # its Ray daemons, should any have outlived it
    assert not (out / "compare.json").exists() or len(json.loads((out / "compare.json").read_text())["runs"]) < 2

    env["TMPDIR"] = ray_tmp = tempfile.mkdtemp(prefix="rsk-", dir="/tmp")
    try:
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    finally:
        _kill_ray_under(ray_tmp)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "restoring the Tune experiment" in second.stderr
    assert "Tune experiment (TensorBoard logs) in" in second.stderr
    assert "To visualize your results with TensorBoard" not in second.stdout + second.stderr  # Tune's reporter is off
    report = json.loads((out / "compare.json").read_text())
    assert report["tune"]["mle"]["restored"] and [r["status"] for r in report["runs"]] == ["ok", "ok"]
    assert (finished / "results.json").stat().st_mtime_ns == mtime and (finished / "metrics.jsonl").read_bytes() == metrics
    other = next(d for d in out.glob("mle-seed*") if d != finished)
    assert _results(other)["test"]["bleu"] == next(r for r in report["runs"] if r["run_dir"] == str(other))["test_bleu"]


def test_two_trials_run_at_once_on_the_two_nodes_of_a_cluster(tmp_path):
    """Each node has one ``slot`` and each trial's driver asks for one: the two trials must land on
    different nodes; with room for both, they run at the same time."""
    import ray

    if ray.is_initialized():  # another test's private Ray: trials must go to the cluster
        ray.shutdown()
    with local_cluster([{"num_cpus": 1, "resources": {"slot": 1}}, {"num_cpus": 1, "resources": {"slot": 1}}]) as cluster:
        report = run_compare(ExperimentConfig.for_algos(
            "toy", ["mle"], seeds=2, out=str(tmp_path / "cmp"), overrides=RUN, address=cluster.address,
            trial_resources={"slot": 1}, max_concurrent=2))
        nodes = {n["NodeID"]: n["Resources"] for n in cluster.global_state.node_table() if n["Alive"]}
    a, b = report["runs"]
    assert a["status"] == b["status"] == "ok", report["runs"]
    assert a["node_id"] != b["node_id"] and nodes[a["node_id"]].get("slot") == nodes[b["node_id"]].get("slot") == 1
    assert a["started_at"] < b["ended_at"] and b["started_at"] < a["ended_at"]  # the two intervals overlap
    assert report["hardware"].startswith("3 nodes, 2 CPUs")
