"""The comparison's outputs, built from the trials' records: ``compare.md`` (Table-1 style),
``compare.json`` (every run) and ``compare.png`` (validation BLEU against wall time and tokens).

A record (``rayseq.experiments.runner.record``) is one trial: ``label`` (its row), ``algo``,
``seed``, ``status`` ok/failed, the figures of its ``results.json`` or its ``error``. No ray.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from rayseq.metrics import BLEU_VALID, TIME_S, TOKENS_TOTAL, read_metrics
from rayseq.run_dir import atomic_write_bytes, atomic_write_json

COMPARE_JSON, COMPARE_MD, COMPARE_PNG = "compare.json", "compare.md", "compare.png"


def stats(values: list[float]) -> dict[str, float]:
    """Mean, sample standard deviation (n − 1; 0 for one value), min and max."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


def diverged(rec: dict[str, Any]) -> bool:
    """Whether a run diverged: its joint training **collapsed** (validation BLEU fell
    ``algo.collapse_margin`` below its start: ``results.json``'s ``collapsed``; the best actor was
    kept), its BLEU is not a finite number, or it stopped on a non-finite loss (``TrainingError``
    "… is nan/inf …")."""
    if rec.get("status") == "ok":
        return bool(rec.get("collapsed")) or not all(math.isfinite(float(rec.get(k, 0.0))) for k in ("test_bleu", "valid_bleu"))
    error = str(rec.get("error", ""))
    return error.startswith("TrainingError") and any(w in error for w in (" is nan", " is inf", " is -inf"))


def summarize(labels: list[str], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per label (in that order): runs, failures, divergences and the statistics over seeds."""
    rows = []
    for label in labels:
        mine = [r for r in records if r.get("label", r["algo"]) == label]
        ok = [r for r in mine if r["status"] == "ok"]
        row: dict[str, Any] = {"algo": label, "runs": len(mine), "ok": len(ok),
                               "failed": [r.get("error", "") for r in mine if r["status"] != "ok"],
                               "diverged": sum(diverged(r) for r in mine)}
        if ok:
            row["test_bleu"] = stats([r["test_bleu"] for r in ok])
            row["valid_bleu"] = stats([r["valid_bleu"] for r in ok])
            row["wall_time_s"] = stats([r["wall_time_s"] for r in ok])
            row["collapsed"] = sum(bool(r.get("collapsed")) for r in ok)
            if all("test_cider_d" in r for r in ok):
                row["test_cider_d"] = stats([r["test_cider_d"] for r in ok])
        rows.append(row)
    return rows


def render_table(title: str, rows: list[dict[str, Any]], records: list[dict[str, Any]]) -> str:
    """The Table-1-style summary: per row test BLEU mean ± std, min, max over the seeds, best
    validation BLEU, wall time, collapses and failures."""
    cider = any("test_cider_d" in row for row in rows)
    lines = [
        f"# {title}",
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
    inits = sorted({r["mle_run_dir"] for r in records if r.get("mle_run_dir")})
    lines += ["", "Test BLEU: corpus BLEU-4 of the best-validation actor (beam search, the task's evaluation)"
              + ("; CIDEr-D as coco-caption computes it." if cider else "."),
              "Wall time: the algorithm's own run; RL algorithms start from the MLE run of the same seed"
              + (f" ({', '.join(inits)})" if inits else "") + ", whose time is not included here (it is in the plot)."]
    if any(r.get("surrogate") for r in records):
        lines.append("**Surrogate image features**: these are not results on real COCO images.")
    return "\n".join(lines) + "\n"


def plot_compare(labels: list[str], records: list[dict[str, Any]], png: Path, title: str) -> Path:
    """Validation BLEU against wall time and against tokens, one colour per row; runs that started
    from an MLE run are shifted by its time and tokens, so every curve counts the whole cost."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_t, ax_k = fig.subplots(1, 2)
    colours = {a: f"C{i % 10}" for i, a in enumerate(labels)}
    offsets: dict[str, tuple[float, float]] = {}
    for r in records:
        mle_dir = r.get("mle_run_dir")
        if mle_dir and mle_dir not in offsets and (Path(mle_dir) / "metrics.jsonl").is_file():
            recs = read_metrics(Path(mle_dir) / "metrics.jsonl")
            toks = [x[TOKENS_TOTAL] for x in recs if TOKENS_TOTAL in x]
            offsets[mle_dir] = (max((x.get(TIME_S, 0.0) for x in recs), default=0.0), max(toks, default=0.0))
    labelled = set()
    for r in records:
        label = r.get("label", r["algo"])
        metrics = Path(r["run_dir"]) / "metrics.jsonl"
        if r["status"] != "ok" or not metrics.is_file() or label not in colours:
            continue
        recs = [x for x in read_metrics(metrics) if BLEU_VALID in x]
        dt, dk = offsets.get(r.get("mle_run_dir") or "", (0.0, 0.0))
        legend = None if label in labelled else label
        labelled.add(label)
        ax_t.plot([(x[TIME_S] + dt) / 60 for x in recs], [x[BLEU_VALID] for x in recs], "o-", color=colours[label],
                  label=legend, markersize=3, linewidth=1)
        with_tok = [x for x in recs if TOKENS_TOTAL in x]
        ax_k.plot([(x[TOKENS_TOTAL] + dk) / 1e6 for x in with_tok], [x[BLEU_VALID] for x in with_tok], "o-",
                  color=colours[label], label=legend, markersize=3, linewidth=1)
    ax_t.set(xlabel="wall time (min, incl. the MLE actor's)", ylabel="validation BLEU", title="BLEU vs time")
    ax_k.set(xlabel="tokens trained on / sampled (millions, incl. MLE's)", ylabel="validation BLEU", title="BLEU vs tokens")
    for ax in (ax_t, ax_k):
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_png(fig, png)


def save_png(fig: Any, png: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(png, buf.getvalue())


def compare_title(task: str, labels: list[str], seeds: int, preset: str) -> str:
    return f"{task}: {', '.join(labels)} ({seeds} seed{'s' if seeds > 1 else ''}, preset {preset})"


def write_compare(out: Path, cfg: Any, records: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    """``compare.json`` / ``compare.md`` / ``compare.png`` of ``cfg`` (an ``ExperimentConfig``); returns the JSON."""
    rows = summarize(cfg.labels, records)
    report = {"task": cfg.task, "preset": cfg.preset, "algos": cfg.labels, "seeds": cfg.seeds, "overrides": cfg.overrides,
              "rows": rows, "runs": records, **extra}
    title = compare_title(cfg.task, cfg.labels, cfg.seeds, cfg.preset)
    atomic_write_json(out / COMPARE_JSON, report)
    atomic_write_bytes(out / COMPARE_MD, render_table(title, rows, records).encode("utf-8"))
    plot_compare(cfg.labels, records, out / COMPARE_PNG, f"{cfg.task}, preset {cfg.preset}")
    return report


__all__ = [
    "COMPARE_JSON",
    "COMPARE_MD",
    "COMPARE_PNG",
    "compare_title",
    "diverged",
    "plot_compare",
    "render_table",
    "save_png",
    "stats",
    "summarize",
    "write_compare",
]
