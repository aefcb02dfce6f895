"""``rayseq compare --task T --algos a,b,… --seeds K``: algorithms × seeds as Tune trials, tabulated
the way the paper's Table 1 is (``compare.md``, ``compare.json``, ``compare.png`` in ``OUT``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rayseq.experiments.report import write_compare
from rayseq.experiments.runner import run_experiment
from rayseq.experiments.spec import MLE, PHASE_MAIN, PHASE_MLE, ExperimentConfig, split_mle_phase


def table_records(cfg: ExperimentConfig, phases: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The records of the experiment's arms, in table order (the ``mle`` arm's are the MLE phase's
    MLE runs; a shared Q-net run there is no row)."""
    records: list[dict[str, Any]] = []
    for arm in cfg.arms:
        if arm.algo == MLE and not arm.setting:
            records += split_mle_phase(phases.get(PHASE_MLE, []))[0]
        else:
            records += [r for r in phases.get(PHASE_MAIN, []) if r["label"] == arm.label]
    return records


def run_compare(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run (restore, or read) the experiment; write and return ``compare.json``'s content."""
    result = run_experiment(cfg)
    extra = {"mle_runs": split_mle_phase(result["phases"].get(PHASE_MLE, []))[0], "tune": result["tune"], "hardware": result["hardware"],
             "wall_time_s": result["wall_time_s"]}
    return write_compare(Path(cfg.out), cfg, table_records(cfg, result["phases"]), extra)


__all__ = ["run_compare", "table_records"]
