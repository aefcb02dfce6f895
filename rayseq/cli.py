"""The ``rayseq`` command line.

Subcommands are listed explicitly in ``_COMMANDS``; each has a parser builder and a runner.
Errors a user can fix (bad files, unknown names) print one line on stderr and exit with 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from rayseq.data.errors import DataError


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (print one JSON line with --json)")
    bsub = p.add_subparsers(dest="bench", required=True)
    r = bsub.add_parser("reward", help="batched prefix BLEU vs sacrebleu re-scoring every prefix")
    r.add_argument("--batch", type=int, default=256)
    r.add_argument("--smooth", default="exp", choices=["none", "floor", "add-k", "exp"])
    r.add_argument("--repeats", type=int, default=20)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--json", action="store_true", help="print one JSON line")


def _run_bench(args: argparse.Namespace) -> int:
    if args.bench == "reward":
        from rayseq.bench.reward import RewardBenchConfig, run

        result = run(RewardBenchConfig(batch=args.batch, smooth=args.smooth, repeats=args.repeats, seed=args.seed))
        if args.json:
            print(json.dumps(result))
        else:
            for k, v in result.items():
                print(f"{k:>28}: {v}")
        return 0
    raise AssertionError(args.bench)


def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="prepare corpora")
    dsub = p.add_subparsers(dest="data", required=True)
    i = dsub.add_parser("prepare-iwslt14", help="MIXER preprocessing of IWSLT14 de-en from the raw de-en.tgz")
    i.add_argument("archive", help="the IWSLT14 de-en.tgz archive (or its extracted directory)")
    i.add_argument("outdir", help="where train/valid/test.de-en.{de,en} are written")
    i.add_argument("--overwrite", action="store_true", help="replace files already in OUTDIR")
    i.add_argument("--no-progress", action="store_true")


def _run_data(args: argparse.Namespace) -> int:
    if args.data == "prepare-iwslt14":
        from rayseq.data.iwslt14 import prepare_iwslt14

        counts = prepare_iwslt14(args.archive, args.outdir, progress=not args.no_progress, overwrite=args.overwrite)
        print(json.dumps({"outdir": str(args.outdir), "pairs": counts}))
        return 0
    raise AssertionError(args.data)


_COMMANDS: dict[str, tuple[Callable[[argparse._SubParsersAction], None], Callable[[argparse.Namespace], int]]] = {
    "bench": (_add_bench, _run_bench),
    "data": (_add_data, _run_data),
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
    except (DataError, ValueError) as err:
        print(f"rayseq {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
