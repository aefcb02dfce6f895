"""``rayseq compare --task T --algos a,b,… --seeds K``: the command line of
``rayseq.experiments.compare`` (argument parsing and printing only).

Every algorithm × seed is a Ray Tune trial (``OUT/tune``); RL algorithms start from the MLE run of
their seed (a first Tune phase). Rerunning the same command restores the experiment: finished
trials are kept, interrupted ones resume, errored ones are retried with ``--retry-errored``.
Writes ``OUT/compare.md``, ``OUT/compare.json`` and ``OUT/compare.png``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_experiment_arguments(p: argparse.ArgumentParser, seeds_default: int | None = 1) -> None:
    """The options ``compare`` and ``reproduce`` share (``--task`` and ``--out`` are added by each)."""
    p.add_argument("--seeds", type=int, default=seeds_default,
                   help="seeds per algorithm" + (f" (default {seeds_default})" if seeds_default else " (default: the experiment's)"))
    p.add_argument("--preset", default="cpu")
    p.add_argument("--base-seed", type=int, default=1234)
    p.add_argument("--data-dir", help="the task's data dir (iwslt14, coco)")
    p.add_argument("--address", help="Ray cluster to run the trials on (default $RAY_ADDRESS, else a private in-process Ray)")
    p.add_argument("--max-concurrent", type=int, help="at most this many trials at once (default: as many as resources allow)")
    p.add_argument("--retry-errored", action="store_true", help="on restore, run the errored trials again")
    p.add_argument("--report-only", action="store_true", help="train nothing: tabulate the trials already in --out")
    p.add_argument("--trial-resource", dest="trial_resources", action="append", default=[], metavar="NAME=AMOUNT",
                   help="a Ray resource every trial's driver asks for (pins trials to nodes that have it); repeatable")
    p.add_argument("--shared-mle", action="store_true",
                   help="one MLE run (the base seed) that every seed's RL runs start from: the seeds measure the RL stage alone")
    p.add_argument("--shared-critic", action="store_true",
                   help="with --shared-mle: pretrain each distinct critic once; every seed's AC/ERAC run starts joint training from it")
    p.add_argument("--shared-qnet", action="store_true",
                   help="train each distinct VAML Q-net once (step 1); every seed's VAML run trains its actor with it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[ALGO:]key=value",
                   help="a setting for every run (or one algorithm's); repeatable")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The experiment form of ``rayseq compare`` (with ``--algos``)."""
    p.add_argument("--task", help="the task every algorithm runs on (experiment form)")
    p.add_argument("--algos", help="comma-separated registered algorithms, e.g. mle,raml,vaml,ac,erac,ppo")
    add_experiment_arguments(p)


def experiment_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``ExperimentConfig`` fields from the shared options."""
    resources = {}
    for item in args.trial_resources:
        name, sep, amount = item.partition("=")
        try:
            resources[name.strip()] = float(amount)
        except ValueError:
            sep = ""
        if not sep or not name.strip():
            raise ValueError(f"--trial-resource {item!r}: write NAME=AMOUNT, e.g. node_a=1")
    return {"preset": args.preset, "out": args.out or "", "overrides": list(args.overrides), "base_seed": args.base_seed,
            "data_dir": args.data_dir, "address": args.address, "report_only": args.report_only,
            "max_concurrent": args.max_concurrent, "retry_errored": args.retry_errored, "trial_resources": resources,
            "shared_mle": args.shared_mle, "shared_critic": args.shared_critic,
            "shared_qnet": args.shared_qnet}


def print_summary(report: dict[str, Any], out: str, md: Path) -> None:
    print(md.read_text(encoding="utf-8"))
    print(json.dumps({"out": out, "wall_time_s": round(report["wall_time_s"], 1),
                      "failed": sum(r["status"] != "ok" for r in report["runs"]), "tune": str(Path(out, "tune"))}))


def run(args: argparse.Namespace) -> int:
    from rayseq.experiments import ExperimentConfig, run_compare
    from rayseq.experiments.report import COMPARE_MD

    cfg = ExperimentConfig.for_algos(args.task, [a.strip() for a in args.algos.split(",") if a.strip()],
                                     seeds=args.seeds, **experiment_kwargs(args))
    report = run_compare(cfg)
    print_summary(report, cfg.out, Path(cfg.out, COMPARE_MD))
    return 0
