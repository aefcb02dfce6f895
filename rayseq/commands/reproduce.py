"""``rayseq reproduce table1|table3|table4|fig1|ac|vaml --task T``: the paper's experiments by name, the
command line of ``rayseq.experiments.paper`` (argument parsing and printing only).

Writes ``OUT/NAME.md``, ``OUT/NAME.json`` and ``OUT/NAME.png`` (default OUT:
``runs/reproduce-NAME-TASK-PRESET``); the trials run on Ray Tune like ``rayseq compare``'s, and
rerunning the command restores them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from rayseq.commands.compare import (
    add_experiment_arguments,
    experiment_kwargs,
    print_summary,
)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give comma-separated numbers, e.g. 0.01,0.1") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one number")
    return values


def add_arguments(p: argparse.ArgumentParser) -> None:
    from rayseq.experiments.paper import BETAS, LAMBDA_VARS, PAPER_EXPERIMENTS, TAUS

    p.add_argument("experiment", choices=list(PAPER_EXPERIMENTS),
                   help="; ".join(f"{k}: {v.title}" for k, v in PAPER_EXPERIMENTS.items()))
    p.add_argument("--task", required=True, help="toy, multi30k, iwslt14 or coco")
    p.add_argument("--out", help="the experiment's directory (default runs/reproduce-NAME-TASK-PRESET)")
    p.add_argument("--betas", type=_floats, help=f"table3: the β values (default {','.join(map(str, BETAS))})")
    p.add_argument("--lambda-vars", type=_floats, help=f"table3: the λ_var values (default {','.join(map(str, LAMBDA_VARS))})")
    p.add_argument("--taus", type=_floats, help=f"fig1: the τ grid (default {','.join(map(str, TAUS))})")
    p.add_argument("--continued-epochs", type=float,
                   help="ac: epochs of 'MLE continued', a fraction allowed (default: ERAC's algo.joint_epochs, the RL stage's budget)")
    p.add_argument("--finetune-epochs", type=float,
                   help="vaml: epochs each of MLE continued, RAML and VAML trains from the MLE actor (default 1); "
                        "rerun with a larger value and the same --out to extend the finished runs")
    p.add_argument("--finetune-checks", type=int,
                   help="vaml: validations per epoch of each fine-tuning row (default 2)")
    add_experiment_arguments(p, seeds_default=None)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rayseq.experiments.paper import PAPER_EXPERIMENTS, Grid, reproduce

    exp = PAPER_EXPERIMENTS[args.experiment]
    grid = Grid()
    owner = {"betas": "table3", "lambda_vars": "table3", "taus": "fig1", "continued_epochs": "ac",
             "finetune_epochs": "vaml", "finetune_checks": "vaml"}
    for key, value in (("betas", args.betas), ("lambda_vars", args.lambda_vars), ("taus", args.taus),
                       ("continued_epochs", args.continued_epochs), ("finetune_epochs", args.finetune_epochs),
                       ("finetune_checks", args.finetune_checks)):
        if value is not None:
            if key not in exp.grid_keys:
                raise ValueError(f"reproduce {args.experiment}: --{key.replace('_', '-')} is for {owner[key]} only")
            grid = replace(grid, **{key: value})
    report = reproduce(args.experiment, args.task, seeds=args.seeds, grid=grid, **experiment_kwargs(args))
    print_summary(report, report["out"], Path(report["out"], f"{args.experiment}.md"))
    return 0
