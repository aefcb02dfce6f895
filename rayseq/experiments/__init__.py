"""Experiments on Ray Tune: ``rayseq compare`` and the paper's tables by name (``rayseq reproduce``).

Every (algorithm, seed, setting) is one Tune trial that runs the normal training driver
(``rayseq.train.train``), reports its validations and outcome to Tune and checkpoints through it;
its resources come from the run's own config, so a cluster runs trials side by side and a laptop
queues them. An interrupted experiment resumes through Tune's experiment restore.

::

    spec.py       Arm, ExperimentConfig → TrialSpec per trial (MLE phase, then the rest)
    resources.py  a run's config → its trial's placement group; the cluster's hardware
    trial.py      the Tune trainable: one run through the driver, reported and checkpointed
    runner.py     Tuner per phase (new or restored) → one record per trial
    report.py     records → compare.md / compare.json / compare.png; divergence
    compare.py    ``rayseq compare``
    paper.py      ``rayseq reproduce table1|table3|table4|fig1``
"""
from __future__ import annotations

from rayseq.experiments.compare import run_compare
from rayseq.experiments.paper import PAPER_EXPERIMENTS, Grid, reproduce
from rayseq.experiments.report import diverged, render_table, summarize
from rayseq.experiments.runner import run_experiment
from rayseq.experiments.spec import Arm, ExperimentConfig, TrialSpec

__all__ = [
    "PAPER_EXPERIMENTS",
    "Arm",
    "ExperimentConfig",
    "Grid",
    "TrialSpec",
    "diverged",
    "render_table",
    "reproduce",
    "run_compare",
    "run_experiment",
    "summarize",
]
