"""``rayseq bench tune``: a toy Tune grid on a local two-node Ray cluster, one trial at a time vs two.

Both sides run the same grid (``--trials`` MLE runs of the toy task, one per seed, each a Tune
trial through ``rayseq.experiments``) on the same cluster in the same process: a head without
CPUs and two nodes of one CPU each (``ray.cluster_utils.Cluster``, its own temp dir and ports,
shut down at the end). The figure of merit is the ratio of wall times, ``max_concurrent`` 1 / 2;
on an otherwise idle machine with two free cores it approaches 2 (trial start-up and the final
evaluations are part of both).
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

TINY: tuple[str, ...] = (
    "batch_size=10", "model.emb_dim=16", "model.enc_hidden=16", "model.dec_hidden=32",
    "valid_beam=1", "valid_max_sentences=50",
)
"""Overrides that make a toy run take seconds."""


@dataclass
class TuneBenchConfig:
    trials: int = 4
    """Trials in the grid (MLE runs, one per seed)."""
    epochs: int = 3
    """Toy epochs per trial."""
    node_cpus: int = 1
    """CPUs of each of the two nodes."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_cluster(nodes: list[dict[str, Any]]) -> Iterator[Any]:
    """A ``ray.cluster_utils.Cluster`` on this machine: a head with no CPUs and one node per entry of
    ``nodes`` (``Cluster.add_node`` arguments, e.g. ``{"num_cpus": 1, "resources": {"node_a": 1}}``).
    Its own ``RAY_TMPDIR`` (so no other driver's ``ray.init()`` finds it) and ports; shut down after."""
    temp = tempfile.mkdtemp(prefix="rsc-", dir="/tmp")  # short: unix socket paths
    old_tmpdir = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp  # where Cluster writes its address file: TEMP/ray/ray_current_cluster
    os.makedirs(os.path.join(temp, "ray"))
    from ray.cluster_utils import Cluster

    common = {"temp_dir": os.path.join(temp, "ray"), "include_dashboard": False}
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            **common, "num_cpus": 0, "gcs_server_port": _free_port(), "ray_client_server_port": _free_port(),
            "dashboard_agent_listen_port": _free_port(), "metrics_export_port": _free_port(),
            "runtime_env_agent_port": _free_port(),
        })
        for args in nodes:
            cluster.add_node(**common, dashboard_agent_listen_port=_free_port(), metrics_export_port=_free_port(),
                             runtime_env_agent_port=_free_port(), **args)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        if cluster is not None:
            cluster.shutdown()
        if old_tmpdir is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmpdir
        shutil.rmtree(temp, ignore_errors=True)


def run(cfg: TuneBenchConfig) -> dict[str, Any]:
    from rayseq.experiments import ExperimentConfig
    from rayseq.experiments.compare import run_compare

    overrides = [*TINY, f"epochs={cfg.epochs}"]
    out = tempfile.mkdtemp(prefix="rayseq-bench-tune-")
    result: dict[str, Any] = {"trials": cfg.trials, "epochs": cfg.epochs, "nodes": 2, "node_cpus": cfg.node_cpus}
    try:
        with local_cluster([{"num_cpus": cfg.node_cpus}, {"num_cpus": cfg.node_cpus}]) as cluster:
            for k in (1, 2):
                t0 = time.perf_counter()
                report = run_compare(ExperimentConfig.for_algos(
                    "toy", ["mle"], seeds=cfg.trials, out=os.path.join(out, f"concurrent{k}"), overrides=overrides,
                    address=cluster.address, max_concurrent=k, name="bench-tune"))
                result[f"wall_s_concurrent{k}"] = round(time.perf_counter() - t0, 2)
                ok = [r for r in report["runs"] if r["status"] == "ok"]
                result[f"failed_concurrent{k}"] = len(report["runs"]) - len(ok)
                result[f"nodes_used_concurrent{k}"] = len({r.get("node_id") for r in ok})
                result[f"trial_s_mean_concurrent{k}"] = round(sum(r["ended_at"] - r["started_at"] for r in ok) / max(1, len(ok)), 2)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    result["speedup"] = round(result["wall_s_concurrent1"] / result["wall_s_concurrent2"], 3)
    result["load_avg_1min"] = round(os.getloadavg()[0], 2)
    return result
