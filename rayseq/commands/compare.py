"""``rayseq compare --task T --algos a,b,… --seeds K``: run several algorithms on one task and
compare them the way the paper's Table 1 does.

For each seed, one MLE run is trained first (``RUN/mle-seedS``) when any algorithm starts from an
MLE actor (``algo.actor_init``: AC, ERAC, the swap-ins, SCST, MIXER); every such algorithm of that
seed starts from it, so the comparison is fair, and it is the ``mle`` row when ``mle`` is listed.
Then each algorithm runs in ``RUN/ALGO-seedS`` (sequentially, in this process; each run starts and
stops its own in-process Ray, or joins ``--address``). A run that already has ``results.json`` is
read, not retrained, so an interrupted comparison continues where it stopped. A failing run is
recorded with its error and the others go on.

Writes ``RUN/compare.json`` (every run), ``RUN/compare.md`` (per algorithm: test BLEU mean ± std,
min, max over the seeds, best validation BLEU, wall time, failures) and ``RUN/compare.png``
(validation BLEU against wall time and against tokens; runs started from the MLE run are shifted
by its time and tokens, so every curve counts the whole cost of getting there).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rayseq.metrics import BLEU_VALID, TIME_S, TOKENS_TOTAL, read_metrics
from rayseq.run_dir import RESULTS_JSON, atomic_write_bytes, atomic_write_json

COMPARE_JSON, COMPARE_MD, COMPARE_PNG = "compare.json", "compare.md", "compare.png"


@dataclass
class CompareConfig:
    """One comparison: algorithms × seeds on one task."""

    task: str
    """The task every algorithm runs on."""
    algos: list[str]
    """Registered algorithm names, in table order."""
    seeds: int = 1
    """Seeds per algorithm: ``base_seed``, ``base_seed + 1``, …"""
    preset: str = "cpu"
    """The preset of every run."""
    out: str = ""
    """Directory of the comparison (default ``runs/compare-TASK-PRESET``)."""
    overrides: list[str] = field(default_factory=list)
    """``key=value`` for every run (``algo.*`` keys only where the algorithm has them), or
    ``ALGO:key=value`` for one algorithm."""
    base_seed: int = 1234
    """The first seed."""
    data_dir: str | None = None
    """The task's data dir (IWSLT14, COCO)."""
    address: str | None = None
    """A Ray cluster to join for every run (default: a private in-process Ray per run)."""
    report_only: bool = False
    """Train nothing: tabulate the runs that have ``results.json``; the others show as not run."""

    def __post_init__(self) -> None:
        from rayseq.registry import ALGORITHMS

        if not self.algos:
            raise ValueError("compare: --algos is empty; name registered algorithms, e.g. --algos mle,raml,erac.")
        unknown = [a for a in self.algos if a not in ALGORITHMS]
        if unknown:
            raise ValueError(f"compare: unknown algorithm(s) {', '.join(unknown)}; registered: {', '.join(sorted(ALGORITHMS))}.")
        if len(set(self.algos)) != len(self.algos):
            raise ValueError(f"compare: --algos {','.join(self.algos)} names an algorithm twice.")
        if self.seeds < 1:
            raise ValueError(f"compare: --seeds {self.seeds}: must be >= 1.")
        for item in self.overrides:
            if "=" not in item:
                raise ValueError(f"compare: override {item!r} is not key=value (or ALGO:key=value).")
            scope = item.split("=", 1)[0].split(":", 1)
            if len(scope) == 2 and scope[0] not in ALGORITHMS:
                raise ValueError(f"compare: override {item!r} is for {scope[0]!r}, which is not a registered algorithm.")
        if not self.out:
            self.out = str(Path("runs") / f"compare-{self.task}-{self.preset}")


def _needs_mle(algo: str) -> bool:
    from dataclasses import fields

    from rayseq.registry import get_algorithm

    return any(f.name == "actor_init" for f in fields(get_algorithm(algo).config_cls))


def _overrides_for(cc: CompareConfig, algo: str) -> list[str]:
    """The overrides that apply to ``algo``: its own ``ALGO:`` ones and the shared ones it has."""
    from rayseq.config import valid_keys
    from rayseq.registry import get_algorithm

    keys = set(valid_keys(get_algorithm(algo).config_cls))
    out = []
    for item in cc.overrides:
        key, _, value = item.partition("=")
        scope, sep, key_only = key.partition(":")
        if sep:
            if scope == algo:
                out.append(f"{key_only}={value}")
        elif not key.startswith("algo.") or key in keys:
            out.append(item)
    return out


def _run_one(cc: CompareConfig, algo: str, seed: int, run_dir: Path, actor_init: Path | None) -> dict[str, Any]:
    """Train (or read) one run; returns its record for the table (``status`` ok/failed)."""
    from rayseq.config import build_run_config
    from rayseq.registry import get_algorithm
    from rayseq.train import train

    rec: dict[str, Any] = {"algo": algo, "seed": seed, "run_dir": str(run_dir), "actor_init": str(actor_init) if actor_init else None}
    results_file = run_dir / RESULTS_JSON
    try:
        if results_file.is_file():
            results = json.loads(results_file.read_text(encoding="utf-8"))
            rec["reused"] = True
        elif cc.report_only:
            rec.update(status="failed", error="not run (no results.json; --report-only)")
            return rec
        else:
            overrides = _overrides_for(cc, algo) + [f"seed={seed}"]
            if actor_init is not None:
                overrides.append(f"algo.actor_init={actor_init}")
            cfg = build_run_config(algo, get_algorithm(algo).config_cls, cc.preset, cc.task, overrides,
                                   out=str(run_dir), data_dir=cc.data_dir)
            results = train(cfg, resume=(run_dir / "run.json").is_file(), address=cc.address)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 — one failing algorithm must not lose the others
        rec.update(status="failed", error=f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
        print(f"[compare] {algo} seed {seed} FAILED: {rec['error']}", file=sys.stderr, flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "compare_error.txt").write_text(traceback.format_exc(), encoding="utf-8")
        return rec
    rec.update(
        status="ok",
        test_bleu=float(results["test"]["bleu"]),
        valid_bleu=float("nan") if results.get(BLEU_VALID) is None else float(results[BLEU_VALID]),
        wall_time_s=float(results.get("wall_time_s", float("nan"))),
        collapsed=bool(results.get("collapsed", False)),
        surrogate=_is_surrogate(results),
    )
    if results["test"].get("cider_d") is not None:  # captioning: CIDEr-D next to BLEU-4
        rec["test_cider_d"] = float(results["test"]["cider_d"])
    return rec


def _is_surrogate(results: dict[str, Any]) -> bool:
    """Whether a run was evaluated on surrogate image features (``rayseq data surrogate-features``)."""
    test = results.get("test", {})
    return bool(results.get("surrogate") or test.get("surrogate") or test.get("features") == "surrogate")


def run_compare(cc: CompareConfig) -> dict[str, Any]:
    """Run every algorithm × seed, write the table, the plot and ``compare.json``; returns the latter."""
    out = Path(cc.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    records: list[dict[str, Any]] = []
    seeds = [cc.base_seed + i for i in range(cc.seeds)]
    total = len(seeds) * len(cc.algos)
    done = 0
    for seed in seeds:
        mle_dir = out / f"mle-seed{seed}"
        mle_rec = None
        if "mle" in cc.algos or any(_needs_mle(a) for a in cc.algos):
            print(f"[compare] seed {seed}: mle (the MLE actor the RL algorithms start from)", file=sys.stderr, flush=True)
            mle_rec = _run_one(cc, "mle", seed, mle_dir, None)
            if "mle" in cc.algos:
                records.append(mle_rec)
                done += 1
        for algo in cc.algos:
            if algo == "mle":
                continue
            done += 1
            print(f"[compare {done}/{total}] {algo} seed {seed}", file=sys.stderr, flush=True)
            if _needs_mle(algo) and (mle_rec is None or mle_rec["status"] != "ok"):
                records.append({"algo": algo, "seed": seed, "status": "failed", "run_dir": str(out / f"{algo}-seed{seed}"),
                                "error": "its MLE actor (mle run of this seed) failed"})
                continue
            records.append(_run_one(cc, algo, seed, out / f"{algo}-seed{seed}", mle_dir if _needs_mle(algo) else None))
            _write_outputs(cc, out, records, time.monotonic() - t0)  # partial results survive an interruption
    return _write_outputs(cc, out, records, time.monotonic() - t0)


def _stats(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


def summarize(cc: CompareConfig, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per algorithm (in ``cc.algos`` order): runs, failures and the statistics."""
    rows = []
    for algo in cc.algos:
        mine = [r for r in records if r["algo"] == algo]
        ok = [r for r in mine if r["status"] == "ok"]
        row: dict[str, Any] = {"algo": algo, "runs": len(mine), "ok": len(ok), "failed": [r.get("error", "") for r in mine if r["status"] != "ok"]}
        if ok:
            row["test_bleu"] = _stats([r["test_bleu"] for r in ok])
            row["valid_bleu"] = _stats([r["valid_bleu"] for r in ok])
            row["wall_time_s"] = _stats([r["wall_time_s"] for r in ok])
            row["collapsed"] = sum(bool(r.get("collapsed")) for r in ok)
            if all("test_cider_d" in r for r in ok):
                row["test_cider_d"] = _stats([r["test_cider_d"] for r in ok])
        rows.append(row)
    return rows


def render_table(cc: CompareConfig, rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """``compare.md``: the Table-1-style summary."""
    cider = any("test_cider_d" in row for row in rows)
    lines = [
        f"# {cc.task}: {', '.join(cc.algos)} ({cc.seeds} seed{'s' if cc.seeds > 1 else ''}, preset {cc.preset})",
        "",
        "| algorithm | runs | test BLEU mean ± std | min | max | "
        + ("test CIDEr-D mean ± std | " if cider else "")
        + "best valid BLEU (mean) | wall time (min, mean) | notes |",
        "|---|---|---|---|---|" + ("---|" if cider else "") + "---|---|---|",
    ]
    blank = "| " if cider else ""
    for row in rows:
        notes = []
        if row.get("collapsed"):
            notes.append(f"{row['collapsed']} collapsed (best actor kept)")
        notes += [f"FAILED: {e}" for e in row["failed"]]
        if "test_bleu" in row:
            t = row["test_bleu"]
            c = row.get("test_cider_d")
            cider_cell = (f"{c['mean']:.3f} ± {c['std']:.3f} | " if c else "| ") if cider else ""
            lines.append(
                f"| {row['algo']} | {row['ok']}/{row['runs']} | {t['mean']:.2f} ± {t['std']:.2f} | {t['min']:.2f} | {t['max']:.2f} | "
                f"{cider_cell}{row['valid_bleu']['mean']:.2f} | {row['wall_time_s']['mean'] / 60:.1f} | {'; '.join(notes)} |"
            )
        elif row["runs"] == 0:
            lines.append(f"| {row['algo']} | 0/0 | (not run yet) | | | {blank}| | |")
        else:
            lines.append(f"| {row['algo']} | 0/{row['runs']} | failed | | | {blank}| | {'; '.join(notes)} |")
    inits = sorted({r['actor_init'] for r in records if r.get('actor_init')})
    lines += ["", "Test BLEU: corpus BLEU-4 of the best-validation actor (beam search, the task's evaluation)"
              + ("; CIDEr-D as coco-caption computes it." if cider else "."),
              "Wall time: the algorithm's own run; RL algorithms start from the MLE run of the same seed"
              + (f" ({', '.join(inits)})" if inits else "") + ", whose time is not included here (it is in the plot)."]
    if any(r.get("surrogate") for r in records):
        lines.append("**Surrogate image features**: these are not results on real COCO images.")
    return "\n".join(lines) + "\n"


def plot_compare(cc: CompareConfig, records: list[dict[str, Any]], png: Path) -> Path:
    """Validation BLEU against wall time and against tokens, one colour per algorithm."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_t, ax_k = fig.subplots(1, 2)
    colours = {a: f"C{i % 10}" for i, a in enumerate(cc.algos)}
    offsets: dict[str, tuple[float, float]] = {}
    for r in records:
        if r["algo"] == "mle" or r.get("actor_init") is None:
            continue
        mle = Path(r["actor_init"]) / "metrics.jsonl"
        if mle.is_file() and r["actor_init"] not in offsets:
            recs = read_metrics(mle)
            toks = [x[TOKENS_TOTAL] for x in recs if TOKENS_TOTAL in x]
            offsets[r["actor_init"]] = (max((x.get(TIME_S, 0.0) for x in recs), default=0.0), max(toks, default=0.0))
    labelled = set()
    for r in records:
        metrics = Path(r["run_dir"]) / "metrics.jsonl"
        if r["status"] != "ok" or not metrics.is_file():
            continue
        recs = [x for x in read_metrics(metrics) if BLEU_VALID in x]
        dt, dk = offsets.get(r.get("actor_init") or "", (0.0, 0.0))
        label = None if r["algo"] in labelled else r["algo"]
        labelled.add(r["algo"])
        ax_t.plot([(x[TIME_S] + dt) / 60 for x in recs], [x[BLEU_VALID] for x in recs], "o-", color=colours[r["algo"]],
                  label=label, markersize=3, linewidth=1)
        with_tok = [x for x in recs if TOKENS_TOTAL in x]
        ax_k.plot([(x[TOKENS_TOTAL] + dk) / 1e6 for x in with_tok], [x[BLEU_VALID] for x in with_tok], "o-",
                  color=colours[r["algo"]], label=label, markersize=3, linewidth=1)
    ax_t.set(xlabel="wall time (min, incl. the MLE actor's)", ylabel="validation BLEU", title="BLEU vs time")
    ax_k.set(xlabel="tokens trained on / sampled (millions, incl. MLE's)", ylabel="validation BLEU", title="BLEU vs tokens")
    for ax in (ax_t, ax_k):
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize=8)
    fig.suptitle(f"{cc.task}, preset {cc.preset}")
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(png, buf.getvalue())


def _write_outputs(cc: CompareConfig, out: Path, records: list[dict[str, Any]], wall: float) -> dict[str, Any]:
    rows = summarize(cc, records)
    report = {"task": cc.task, "preset": cc.preset, "algos": cc.algos, "seeds": cc.seeds, "overrides": cc.overrides,
              "rows": rows, "runs": records, "wall_time_s": wall}
    atomic_write_json(out / COMPARE_JSON, report)
    atomic_write_bytes(out / COMPARE_MD, render_table(cc, rows, records).encode("utf-8"))
    plot_compare(cc, records, out / COMPARE_PNG)
    return report


# ----------------------------------------------------------------------------- CLI


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The experiment form of ``rayseq compare`` (with ``--algos``)."""
    p.add_argument("--task", help="the task every algorithm runs on (experiment form)")
    p.add_argument("--algos", help="comma-separated registered algorithms, e.g. mle,raml,vaml,ac,erac,ppo")
    p.add_argument("--seeds", type=int, default=1, help="seeds per algorithm (default 1)")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--base-seed", type=int, default=1234)
    p.add_argument("--data-dir")
    p.add_argument("--address", help="Ray cluster to join for every run")
    p.add_argument("--report-only", action="store_true", help="train nothing: tabulate the runs already in --out")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="[ALGO:]key=value",
                   help="a setting for every run (or one algorithm's); repeatable")


def run(args: argparse.Namespace) -> int:
    cc = CompareConfig(
        task=args.task, algos=[a.strip() for a in args.algos.split(",") if a.strip()], seeds=args.seeds, preset=args.preset,
        out=args.out or "", overrides=list(args.overrides), base_seed=args.base_seed, data_dir=args.data_dir,
        address=args.address, report_only=args.report_only,
    )
    report = run_compare(cc)
    print(Path(cc.out, COMPARE_MD).read_text(encoding="utf-8"))
    print(json.dumps({"out": cc.out, "wall_time_s": round(report["wall_time_s"], 1),
                      "failed": sum(r["status"] != "ok" for r in report["runs"])}))
    return 0
