"""The ``rayseq`` command line.

Subcommands are listed explicitly in ``_COMMANDS``; each has a parser builder and a runner.
Errors a user can fix (bad files, unknown names) print one line on stderr and exit with 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from rayseq.errors import USER_ERRORS


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (print one JSON line with --json)")
    bsub = p.add_subparsers(dest="bench", required=True)
    r = bsub.add_parser("reward", help="batched prefix BLEU vs sacrebleu re-scoring every prefix")
    r.add_argument("--batch", type=int, default=256)
    r.add_argument("--smooth", default="exp", choices=["none", "floor", "add-k", "exp"])
    r.add_argument("--repeats", type=int, default=20)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--backend", default="auto", choices=["auto", "numba", "numpy"], help="our prefix-BLEU implementation")
    r.add_argument("--json", action="store_true", help="print one JSON line")
    t = bsub.add_parser("train", help="learner tokens/s through the RLlib runtime vs a plain PyTorch loop")
    t.add_argument("--algo", default="mle")
    t.add_argument("--batches", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=50)
    t.add_argument("--json", action="store_true", help="print one JSON line")
    o = bsub.add_parser("oracle", help="ERAC critic and actor vs the exact soft-Q oracle on a tiny MDP")
    o.add_argument("--seed", type=int, default=0)
    o.add_argument("--json", action="store_true", help="print one JSON line")
    ro = bsub.add_parser("rollout", help="sampled tokens/s of a rollout worker vs RLlib's default env runner")
    ro.add_argument("--envs", type=int, default=64, help="sequences sampled in parallel per worker")
    ro.add_argument("--seconds", type=float, default=20.0, help="timed sampling per side")
    ro.add_argument("--json", action="store_true", help="print one JSON line")
    rp = bsub.add_parser("replay", help="Redis replay backend insert/sample throughput vs the in-memory buffer")
    rp.add_argument("--episodes", type=int, default=20000)
    rp.add_argument("--batch", type=int, default=500)
    rp.add_argument("--url", help="Redis URL (default $RAYSEQ_REDIS_URL, else a private redis-server)")
    rp.add_argument("--json", action="store_true", help="print one JSON line")
    tu = bsub.add_parser("tune", help="wall time of a toy Tune grid on a local 2-node cluster, 1 vs 2 trials at once")
    tu.add_argument("--trials", type=int, default=4, help="trials in the grid (MLE seeds)")
    tu.add_argument("--epochs", type=int, default=3, help="toy epochs per trial")
    tu.add_argument("--json", action="store_true", help="print one JSON line")


def _run_bench(args: argparse.Namespace) -> int:
    if args.bench == "reward":
        from rayseq.bench.reward import RewardBenchConfig, run

        result = run(
            RewardBenchConfig(
                batch=args.batch, smooth=args.smooth, repeats=args.repeats, seed=args.seed, backend=args.backend
            )
        )
    elif args.bench == "train":
        from rayseq.registry import ACTOR_CRITIC, get_algorithm

        if get_algorithm(args.algo).kind == ACTOR_CRITIC:  # rollout workers + replay
            from rayseq.bench.train_ac import ACTrainBenchConfig
            from rayseq.bench.train_ac import run as run_ac

            result = run_ac(ACTrainBenchConfig(algo=args.algo, batches=args.batches, batch_size=args.batch_size))
        else:
            from rayseq.bench.train import TrainBenchConfig
            from rayseq.bench.train import run as run_train

            result = run_train(TrainBenchConfig(algo=args.algo, batches=args.batches, batch_size=args.batch_size))
    elif args.bench == "oracle":
        from rayseq.bench.oracle import OracleBenchConfig
        from rayseq.bench.oracle import run as run_oracle

        result = run_oracle(OracleBenchConfig(seed=args.seed))
    elif args.bench == "rollout":
        from rayseq.bench.rollout import RolloutBenchConfig
        from rayseq.bench.rollout import run as run_rollout

        result = run_rollout(RolloutBenchConfig(envs=args.envs, seconds=args.seconds))
    elif args.bench == "replay":
        from rayseq.bench.replay import ReplayBenchConfig
        from rayseq.bench.replay import run as run_replay

        result = run_replay(ReplayBenchConfig(episodes=args.episodes, batch=args.batch, url=args.url))
    elif args.bench == "tune":
        from rayseq.bench.tune import TuneBenchConfig
        from rayseq.bench.tune import run as run_tune

        result = run_tune(TuneBenchConfig(trials=args.trials, epochs=args.epochs))
    else:
        raise AssertionError(args.bench)
    if args.json:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>28}: {v}")
    return 0


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare corpora")
    dsub = p.add_subparsers(dest="data", required=True)
    i = dsub.add_parser("prepare-iwslt14", help="MIXER preprocessing of IWSLT14 de-en from the raw de-en.tgz")
    i.add_argument("archive", help="the IWSLT14 de-en.tgz archive (or its extracted directory)")
    i.add_argument("outdir", help="where train/valid/test.de-en.{de,en} are written")
    i.add_argument("--overwrite", action="store_true", help="replace files already in OUTDIR")
    i.add_argument("--no-progress", action="store_true")
    from rayseq.commands.features import add_data_commands

    add_data_commands(dsub)  # extract-features, surrogate-features (captioning)


def _run_data(args: argparse.Namespace) -> int:
    if args.data in ("extract-features", "surrogate-features"):
        from rayseq.commands.features import run_data_command

        return run_data_command(args)
    if args.data == "prepare-iwslt14":
        from rayseq.data.iwslt14 import prepare_iwslt14

        counts = prepare_iwslt14(args.archive, args.outdir, progress=not args.no_progress, overwrite=args.overwrite)
        print(json.dumps({"outdir": str(args.outdir), "pairs": counts}))
        return 0
    raise AssertionError(args.data)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    from rayseq.commands.compare import add_arguments

    p = sub.add_parser(
        "compare",
        help="run algorithms × seeds on a task as Ray Tune trials and tabulate them (--task --algos), "
             "or plot existing runs (RUN_DIR ... --out PNG)",
    )
    p.add_argument("runs", nargs="*", metavar="[LABEL=]RUN_DIR", help="plot form: run directories (or metrics.jsonl files)")
    p.add_argument("--out", help="plot form: the PNG to write; experiment form: the comparison directory")
    p.add_argument("--metrics", help="plot form: comma-separated metric names (default: bleu/valid,entropy,sample/bleu,loss/critic_td)")
    p.add_argument("--title")
    add_arguments(p)


def _run_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rayseq.metrics import COMPARE_METRICS, plot_comparison

    if args.algos or args.task:
        if not (args.algos and args.task):
            raise ValueError("compare: the experiment form needs both --task and --algos (e.g. --task toy --algos mle,raml,erac)")
        if args.runs:
            raise ValueError("compare: give either run directories to plot or --task/--algos to run, not both")
        from rayseq.commands.compare import run

        return run(args)
    if not args.runs or not args.out:
        raise ValueError("compare: give RUN_DIR ... --out PNG to plot runs, or --task T --algos a,b,... to run a comparison")
    runs = {}
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep:
            label, path = Path(item).name, item
        if not Path(path).exists():
            raise ValueError(f"{path}: no such run directory or metrics.jsonl; give RUN_DIR or LABEL=RUN_DIR")
        runs[label] = path
    metrics = tuple(m.strip() for m in args.metrics.split(",")) if args.metrics else COMPARE_METRICS
    print(plot_comparison(runs, args.out, metrics, args.title))
    return 0


def _add_module_command(name: str, module: str, help_text: str):
    """A subcommand whose module provides ``add_arguments(parser)`` and ``run(args)``."""
    import importlib

    def add(sub: argparse._SubParsersAction) -> None:
        importlib.import_module(module).add_arguments(sub.add_parser(name, help=help_text))

    def run(args: argparse.Namespace) -> int:
        return importlib.import_module(module).run(args)

    return add, run


def _add_train(sub: argparse._SubParsersAction) -> None:
    from rayseq.config import PRESETS
    from rayseq.data.tasks import TASKS
    from rayseq.registry import ALGORITHMS

    p = sub.add_parser("train", help="train an algorithm on a task (in-process Ray or a cluster)")
    p.add_argument("--algo", help=f"algorithm: {', '.join(ALGORITHMS)}")
    p.add_argument("--task", default="multi30k", help=f"task: {', '.join(TASKS)} (default multi30k)")
    p.add_argument("--preset", default="cpu", help=f"preset: {', '.join(PRESETS)} (default cpu)")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run directory (default runs/ALGO-TASK-PRESET-seedN)")
    p.add_argument("--config", help="YAML file of settings (same keys as the overrides)")
    p.add_argument("--data-dir", help="folder with the task's files (iwslt14)")
    p.add_argument("--num-learners", type=int, help="remote learner processes (0: in the driver)")
    p.add_argument("--num-gpus-per-learner", type=float, help="default: 1 when CUDA is available, else 0")
    p.add_argument("--num-rollout-workers", type=int, help="rollout workers sampling from the actor (RL algorithms; 0: in the driver)")
    p.add_argument("--envs-per-worker", type=int, help="sequences each rollout worker samples in parallel")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a private in-process Ray)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. epochs=5 algo.lr=0.3 model.dropout=0.2")


def _run_train(args: argparse.Namespace) -> int:
    from rayseq.config import apply_overrides, build_run_config, from_dict
    from rayseq.registry import get_algorithm
    from rayseq.run_dir import read_run_json
    from rayseq.train import train

    cli = {
        "seed": args.seed,
        "data_dir": args.data_dir,
        "num_learners": args.num_learners,
        "num_gpus_per_learner": args.num_gpus_per_learner,
        "num_rollout_workers": args.num_rollout_workers,
        "envs_per_worker": args.envs_per_worker,
    }
    if args.resume:
        old = read_run_json(args.resume)
        if args.algo and args.algo != old.get("algo"):
            raise ValueError(f"--algo {args.algo} but {args.resume} is a {old.get('algo')} run; drop --algo to resume it")
        cfg = from_dict(old, get_algorithm(old["algo"]).config_cls, source=f"{args.resume}/run.json")
        cfg = apply_overrides(cfg, args.overrides, out=args.resume, **cli)
    else:
        if not args.algo:
            raise ValueError("--algo is required (or --resume RUN_DIR)")
        entry = get_algorithm(args.algo)
        cfg = build_run_config(
            args.algo, entry.config_cls, args.preset, args.task, args.overrides, args.config, out=args.out, **cli
        )
    results = train(cfg, resume=bool(args.resume), address=args.address)
    summary = {"run_dir": cfg.out, "bleu_test": results["test"]["bleu"], "sacrebleu_test": results["test"]["sacrebleu"],
               "bleu_valid_best": results["bleu/valid"]}
    if "mle" in results:  # actor-critic: the MLE stage's figures next to the final ones
        summary.update({"mle_bleu_test": results["mle"]["test"].get("bleu"), "mle_sacrebleu_test": results["mle"]["test"].get("sacrebleu")})
        summary.update({k: results[k] for k in ("updates", "iterations", "collapsed") if k in results})
    else:
        summary["epochs"] = results["epochs"]
    summary["wall_time_s"] = round(results["wall_time_s"], 1)
    print(json.dumps(summary))
    return 0


_COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "train": (_add_train, _run_train),
    "bench": (_add_bench, _run_bench),
    "compare": (_add_compare, _run_compare),
    "data": (_add_data, _run_data),
    "reproduce": _add_module_command(
        "reproduce", "rayseq.commands.reproduce", "the paper's experiments by name: table1, table3, table4, fig1, ac (Ray Tune trials)"
    ),
    "eval": _add_module_command("eval", "rayseq.commands.evaluate", "BLEU of a trained run on a split or files"),
    "translate": _add_module_command("translate", "rayseq.commands.translate", "translate tokenized stdin to stdout"),
    "submit": _add_module_command("submit", "rayseq.cluster.submit", "run a rayseq command as a job on a Ray cluster (rayseq submit -- train ...)"),
    "jobs": _add_module_command("jobs", "rayseq.cluster.jobs", "status, logs, stop or list jobs submitted to a Ray cluster"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rayseq", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add, _ in _COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _COMMANDS[args.command][1](args)
    except USER_ERRORS as err:
        print(f"rayseq {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
