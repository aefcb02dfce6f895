"""The paper's experiments by name (``rayseq reproduce NAME --task T``), on any task.

| name | what (Dai, Xie & Hovy 2018) | arms |
|---|---|---|
| ``table1`` | Table 1: every algorithm over seeds — test BLEU mean ± std, min, max | mle, raml, vaml, ac, erac |
| ``table3`` | Table 3: ERAC's validation BLEU over the target critic's rate β × the Q-variance penalty λ_var | erac × ``BETAS`` × ``LAMBDA_VARS`` |
| ``table4`` | Table 4: ERAC with and without future entropy, against AC | erac, erac-nofutent, ac |
| ``fig1`` | Figure 1: ERAC's BLEU against the entropy weight τ | erac × ``TAUS`` |
| ``ac`` | the actor-critic protocol: every RL arm and "MLE continued" from the same MLE actor | mle, mle (continued), ac, erac, erac-eq20, erac-nofutent |
| ``vaml`` | the VAML protocol: MLE continued, RAML and VAML fine-tuned from the same MLE actor for the same epochs | mle, mle (continued), raml (from mle), vaml (from mle) |

Every RL run (and every arm marked ``from_mle``) starts from the MLE actor of its seed (the experiment's MLE phase), which is also
printed as the reference. Each writes ``OUT/NAME.md``, ``OUT/NAME.json`` and ``OUT/NAME.png``,
labelled with the task, the preset and the hardware the trials ran on. A **diverged** run
(``rayseq.experiments.report.diverged``: collapsed, non-finite BLEU, or stopped on a non-finite
loss) is marked †.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rayseq.experiments.compare import table_records
from rayseq.experiments.report import (
    diverged,
    plot_compare,
    render_table,
    save_png,
    stats,
    summarize,
)
from rayseq.experiments.runner import run_experiment
from rayseq.experiments.spec import PHASE_CRITIC, PHASE_MLE, Arm, ExperimentConfig, split_mle_phase
from rayseq.run_dir import atomic_write_bytes, atomic_write_json

BETAS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
"""Table 3's β: Polyak rate of the target critic (``algo.beta``)."""
LAMBDA_VARS: tuple[float, ...] = (0.0, 0.001)
"""Table 3's λ_var: weight of the variance of Q over the vocabulary (``algo.lambda_var``)."""
TAUS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.045, 0.1, 0.2)
"""Figure 1's τ grid: ERAC's entropy weight (``algo.tau``; the critic's follows it)."""

DAGGER = "†"


@dataclass(frozen=True)
class Grid:
    """The values a grid experiment sweeps (defaults: the module's constants)."""

    betas: tuple[float, ...] = BETAS
    lambda_vars: tuple[float, ...] = LAMBDA_VARS
    taus: tuple[float, ...] = TAUS
    continued_epochs: float | None = None
    """Epochs of "MLE continued" in the ``ac`` protocol, a fraction allowed (None: the RL arms'
    joint-training budget, ERAC's ``algo.joint_epochs`` under the experiment's preset and settings)."""
    continued_valid_every: int | None = None
    """Updates between the validations of "MLE continued" (None: ERAC's ``algo.valid_every``, so
    that it picks its best actor as often as the RL arms do)."""
    finetune_epochs: float = 1.0
    """``vaml`` protocol: epochs (a fraction allowed) that MLE continued, RAML and VAML each train from
    the MLE actor."""
    finetune_checks: int = 2
    """``vaml`` protocol: validations per epoch of each fine-tuning arm (the best actor is kept)."""
    finetune_valid_every: tuple[tuple[str, int], ...] = ()
    """``vaml`` protocol: (algorithm, updates between validations), filled by ``reproduce`` from each
    algorithm's batch size and the task's training split (``finetune_intervals``)."""


@dataclass(frozen=True)
class PaperExperiment:
    """One of the paper's tables or figures."""

    title: str
    default_seeds: int
    arms: Callable[[Grid], list[Arm]]
    render: Callable[[ExperimentConfig, dict[str, Any]], str]
    """The markdown, from the JSON report."""
    plot: Callable[[ExperimentConfig, dict[str, Any], Path], Path]
    grid_keys: tuple[str, ...] = ()
    """Which ``Grid`` fields it reads."""


def _num(x: float) -> str:
    return f"{x:g}"


def _table3_arms(grid: Grid) -> list[Arm]:
    return [Arm("erac", f"beta={_num(b)},lambda_var={_num(lv)}", (f"algo.beta={_num(b)}", f"algo.lambda_var={_num(lv)}"))
            for b in grid.betas for lv in grid.lambda_vars]


def _ac_arms(grid: Grid) -> list[Arm]:
    """The actor-critic protocol's rows: the MLE actor, MLE continued for the joint stage's budget,
    and each actor-critic variant from that actor — ERAC also with the entropy bonus counted only up
    to the reference length (``algo.entropy_horizon=reference``, its own critic)."""
    epochs = grid.continued_epochs if grid.continued_epochs is not None else 1.0
    continued = [f"epochs={max(1, math.ceil(epochs))}", f"algo.budget_epochs={_num(epochs)}"]
    if grid.continued_valid_every:
        continued.append(f"algo.valid_every_updates={grid.continued_valid_every}")
    return [Arm("mle"), Arm("mle", "continued", tuple(continued), from_mle=True), Arm("ac"), Arm("erac"),
            Arm("erac", "horizon=reference", ("algo.entropy_horizon=reference",)),
            *(Arm(a) for a in ("erac-eq20", "erac-nofutent"))]


def rl_stage_budget(cfg: ExperimentConfig) -> tuple[float, int]:
    """ERAC's joint-training epochs and validation interval (updates; 0: once an epoch) under the
    experiment's preset, task and settings: what "MLE continued" gets in the ``ac`` protocol."""
    from rayseq.config import build_run_config
    from rayseq.experiments.spec import overrides_for
    from rayseq.registry import get_algorithm

    run = build_run_config("erac", get_algorithm("erac").config_cls, cfg.preset, cfg.task, overrides_for(cfg, "erac"))
    return float(run.algo_config.joint_epochs), int(run.algo_config.valid_every or 0)


FINETUNE_ALGOS: tuple[str, ...] = ("mle", "raml", "vaml")
"""The ``vaml`` protocol's fine-tuned rows (MLE continued, RAML and VAML from the MLE actor)."""


def _vaml_arms(grid: Grid) -> list[Arm]:
    """The VAML protocol's rows: the MLE actor, then MLE continued, RAML and VAML, each fine-tuned from
    that actor for ``finetune_epochs`` and validated ``finetune_checks`` times an epoch."""
    every = dict(grid.finetune_valid_every)
    epochs = grid.finetune_epochs

    def arm(algo: str) -> Arm:
        budget = [f"epochs={max(1, math.ceil(epochs))}", f"algo.budget_epochs={_num(epochs)}"]
        if every.get(algo):
            budget.append(f"algo.valid_every_updates={every[algo]}")
        return Arm(algo, "continued" if algo == "mle" else "from mle", tuple(budget), from_mle=True)

    return [Arm("mle"), *(arm(a) for a in FINETUNE_ALGOS)]


def finetune_intervals(cfg: ExperimentConfig, grid: Grid) -> tuple[tuple[str, int], ...]:
    """(algorithm, updates between validations) of the ``vaml`` protocol's fine-tuning arms: one
    epoch's updates at the algorithm's batch size under the experiment's settings, / ``finetune_checks``."""
    from rayseq.config import build_run_config
    from rayseq.data.tasks import load_task
    from rayseq.experiments.spec import overrides_for
    from rayseq.registry import get_algorithm

    n_train = len(load_task(cfg.task, cfg.data_dir).split("train"))
    out = []
    for algo in FINETUNE_ALGOS:
        run = build_run_config(algo, get_algorithm(algo).config_cls, cfg.preset, cfg.task, overrides_for(cfg, algo))
        per_epoch = math.ceil(n_train / run.batch_size)
        out.append((algo, max(1, math.ceil(per_epoch / max(1, grid.finetune_checks)))))
    return tuple(out)


def _fig1_arms(grid: Grid) -> list[Arm]:
    return [Arm("erac", f"tau={_num(t)}", (f"algo.tau={_num(t)}",)) for t in grid.taus]


# ----------------------------------------------------------------------------- markdown


def _header(report: dict[str, Any]) -> list[str]:
    seeds = f"{report['seeds']} seed{'s' if report['seeds'] > 1 else ''}"
    return [f"# {report['title']}", "",
            f"Task **{report['task']}**, preset **{report['preset']}**, {seeds}; hardware: {report['hardware']}.", ""]


def _mle_line(report: dict[str, Any]) -> str:
    ref = report.get("mle_reference")
    if not ref:
        return "MLE reference: no finished MLE run."
    v, t = ref["valid_bleu"], ref["test_bleu"]
    return (f"MLE reference (the actor every RL run starts from, {ref['ok']} run{'s' if ref['ok'] != 1 else ''}): "
            f"validation BLEU {v['mean']:.2f} ± {v['std']:.2f}, test BLEU {t['mean']:.2f} ± {t['std']:.2f}.")


def _divergence_note() -> str:
    return (f"{DAGGER} diverged: joint training collapsed (validation BLEU fell `algo.collapse_margin` below its start; "
            "the best actor is kept and shown), the BLEU is not finite, or training stopped on a non-finite loss.")


def _cell(row: dict[str, Any], key: str = "valid_bleu") -> str:
    mark = f" {DAGGER}" if row["diverged"] else ""
    if key not in row:
        return "failed" + mark if row["runs"] else "(not run yet)"
    s = row[key]
    text = f"{s['mean']:.2f}" + (f" ± {s['std']:.2f}" if row["ok"] > 1 else "")
    if row["ok"] < row["runs"]:
        text += f" ({row['ok']}/{row['runs']} ok)"
    return text + mark


def _failures(report: dict[str, Any]) -> list[str]:
    return [f"- {r['key']}: {r['error']}" for r in report["runs"] if r["status"] != "ok"]


def _render_summary(cfg: ExperimentConfig, report: dict[str, Any]) -> str:
    """Tables 1 and 4: per algorithm test BLEU mean ± std, min, max (``render_table``)."""
    body = render_table(report["title"], report["rows"], report["runs"]).splitlines()
    lines = body[:1] + ["", *_header(report)[2:-1]] + body[1:]
    if any(r["algo"] != "mle" for r in report["runs"]):
        lines += ["", _mle_line(report)]
    if any(row["diverged"] for row in report["rows"]):
        lines += ["", "Diverged runs per algorithm: " + ", ".join(f"{row['algo']} {row['diverged']}{DAGGER}"
                                                               for row in report["rows"] if row["diverged"]), _divergence_note()]
    return "\n".join(lines) + "\n"


def _render_ac(cfg: ExperimentConfig, report: dict[str, Any]) -> str:
    """The summary table, then each RL run's critic at the start of joint training and its
    decoding at its best validation (``rayseq.evaluation.critic``; ``decode/*``)."""
    from rayseq.metrics import (
        CRITIC_EOS_MARGIN,
        CRITIC_MC_RANK_CORR,
        CRITIC_TARGET_ENTROPY,
        CRITIC_TOP1_ACC,
        CRITIC_VALID_TD,
        DECODE_LEN_RATIO,
        DECODE_LOOP_SHARE,
    )

    lines = _render_summary(cfg, report).rstrip("\n").splitlines()
    keys = (CRITIC_VALID_TD, CRITIC_TOP1_ACC, CRITIC_MC_RANK_CORR, CRITIC_TARGET_ENTROPY, CRITIC_EOS_MARGIN,
            DECODE_LEN_RATIO, DECODE_LOOP_SHARE)
    lines += ["", "At the start of joint training (the critic against the MLE actor, held-out):", "",
              "| run | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for run in report["runs"]:
        start = _joint_start(run.get("run_dir"))
        if start:
            lines.append(f"| {run['key']} | " + " | ".join(f"{start[k]:.3f}" if k in start else "–" for k in keys) + " |")
    critics = report.get("critic_runs") or []
    if critics:
        lines += ["", "Critics pretrained once and shared by every seed of the runs that use them (`--shared-critic`):", "",
                  "| critic run | updates | stopped on plateau | best held-out TD | wall time (min) |", "|---|---|---|---|---|"]
        for run in critics:
            c = _results(run.get("run_dir")).get("critic") or {}
            best = c.get("best") or {}
            td = best.get(CRITIC_VALID_TD)
            wall = run.get("wall_time_s", float("nan"))
            lines.append(f"| {run['key']} | {c.get('updates', '–')} | {c.get('stopped_on_plateau', '–')} | "
                         f"{'–' if td is None else f'{td:.4f}'} | {wall / 60:.1f} |")
    return "\n".join(lines) + "\n"


def _results(run_dir: str | None) -> dict[str, Any]:
    if not run_dir or not (Path(run_dir) / "results.json").is_file():
        return {}
    return dict(json.loads((Path(run_dir) / "results.json").read_text(encoding="utf-8")))


def _joint_start(run_dir: str | None) -> dict[str, Any]:
    return dict(_results(run_dir).get("joint_start") or {})


def _render_table3(cfg: ExperimentConfig, report: dict[str, Any]) -> str:
    grid = Grid(**{k: tuple(v) for k, v in report["grid"].items()})
    rows = {row["algo"]: row for row in report["rows"]}
    lines = _header(report) + [
        ("ERAC's best validation BLEU (mean over seeds) for the target critic's Polyak rate β (rows) and the Q-variance "
         "penalty λ_var (columns)."), "",
        "| β \\ λ_var | " + " | ".join(_num(lv) for lv in grid.lambda_vars) + " |",
        "|---|" + "---|" * len(grid.lambda_vars),
    ]
    for b in grid.betas:
        cells = [_cell(rows[f"erac (beta={_num(b)},lambda_var={_num(lv)})"]) for lv in grid.lambda_vars]
        lines.append(f"| {_num(b)} | " + " | ".join(cells) + " |")
    lines += ["", _mle_line(report), "", _divergence_note()]
    if _failures(report):
        lines += ["", "Failed runs:", *_failures(report)]
    return "\n".join(lines) + "\n"


def _render_fig1(cfg: ExperimentConfig, report: dict[str, Any]) -> str:
    lines = _header(report) + [
        f"ERAC's BLEU against the entropy weight τ (`algo.tau`); the plot is `{report['experiment']}.png`.", "",
        "| τ | best valid BLEU | test BLEU | runs |", "|---|---|---|---|",
    ]
    for tau, row in zip(report["grid"]["taus"], report["rows"]):
        lines.append(f"| {_num(tau)} | {_cell(row)} | {_cell(row, 'test_bleu')} | {row['ok']}/{row['runs']} |")
    lines += ["", _mle_line(report), "", _divergence_note()]
    if _failures(report):
        lines += ["", "Failed runs:", *_failures(report)]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots


def _plot_summary(cfg: ExperimentConfig, report: dict[str, Any], png: Path) -> Path:
    return plot_compare(cfg.labels, report["runs"], png, _label(report))


def _label(report: dict[str, Any]) -> str:
    return f"{report['title']}\ntask {report['task']}, preset {report['preset']}, {report['hardware']}"


def _sweep(ax: Any, xs: list[float], rows: list[dict[str, Any]], key: str, label: str, colour: str) -> None:
    """One line of BLEU (mean ± std over seeds) against a swept value; diverged points marked † in red."""
    pts = [(x, row[key]) for x, row in zip(xs, rows) if key in row]
    if pts:
        ax.errorbar([p[0] for p in pts], [p[1]["mean"] for p in pts], yerr=[p[1]["std"] for p in pts], fmt="o-",
                    color=colour, label=label, markersize=4, linewidth=1, capsize=2)
    for x, row in zip(xs, rows):
        if row["diverged"]:
            y = row[key]["mean"] if key in row else None
            if y is None:
                continue
            ax.plot([x], [y], "x", color="red", markersize=9, markeredgewidth=2)
            ax.annotate(DAGGER, (x, y), textcoords="offset points", xytext=(4, 4), color="red")


def _suptitle(fig: Any, report: dict[str, Any]) -> None:
    """The experiment's label; the † key only where some row has a diverged run."""
    diverged = any(row.get("diverged") for row in report.get("rows", []))
    fig.suptitle(_label(report) + (f"   ({DAGGER} diverged)" if diverged else ""), fontsize=9)


def _mle_hline(ax: Any, report: dict[str, Any], key: str) -> None:
    ref = report.get("mle_reference")
    if ref:
        ax.axhline(ref[key]["mean"], color="grey", linestyle="--", linewidth=1, label=f"MLE ({ref[key]['mean']:.2f})")


def _figure(ncols: int = 1) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5 * ncols, 4.4), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _plot_table3(cfg: ExperimentConfig, report: dict[str, Any], png: Path) -> Path:
    grid = report["grid"]
    rows = {row["algo"]: row for row in report["rows"]}
    fig = _figure()
    ax = fig.subplots()
    for i, lv in enumerate(grid["lambda_vars"]):
        _sweep(ax, grid["betas"], [rows[f"erac (beta={_num(b)},lambda_var={_num(lv)})"] for b in grid["betas"]],
               "valid_bleu", f"λ_var = {_num(lv)}", f"C{i}")
    _mle_hline(ax, report, "valid_bleu")
    ax.set_xscale("log")
    ax.set(xlabel="β (target critic's Polyak rate)", ylabel="best validation BLEU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _suptitle(fig, report)
    fig.tight_layout()
    return save_png(fig, png)


def _plot_fig1(cfg: ExperimentConfig, report: dict[str, Any], png: Path) -> Path:
    taus = report["grid"]["taus"]
    fig = _figure(2)
    for ax, key, name in zip(fig.subplots(1, 2), ("valid_bleu", "test_bleu"), ("best validation BLEU", "test BLEU")):
        _sweep(ax, taus, report["rows"], key, "ERAC", "C0")
        _mle_hline(ax, report, key)
        positive = [t for t in taus if t > 0]
        if positive and max(positive) / min(positive) >= 20:
            ax.set_xscale("symlog", linthresh=min(positive))
        ax.set(xlabel="τ (entropy weight)", ylabel=name, title=f"{name} vs τ")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _suptitle(fig, report)
    fig.tight_layout()
    return save_png(fig, png)


def _plot_runs(cfg: ExperimentConfig, report: dict[str, Any], png: Path, panels: tuple[tuple[str, str], ...],
               x_key: str, xlabel: str) -> Path:
    """One panel per ``(metric, title)`` of every run's ``metrics.jsonl`` against ``x_key``, one colour
    per row, every seed a line; the MLE run (the start) is the dashed line of the first panel."""
    from rayseq.metrics import read_metrics

    fig = _figure(len(panels))
    axes = fig.subplots(1, len(panels)) if len(panels) > 1 else [fig.subplots()]
    colours = {label: f"C{i % 10}" for i, label in enumerate(cfg.labels)}
    labelled: set[tuple[int, str]] = set()
    for run in report["runs"]:
        metrics = Path(run.get("run_dir") or "") / "metrics.jsonl"
        label = run.get("label", run["algo"])
        if run["status"] != "ok" or not metrics.is_file() or label not in colours or label == "mle":
            continue  # the MLE run is the start: the dashed line
        recs = read_metrics(metrics)
        for i, (ax, (key, _)) in enumerate(zip(axes, panels)):
            pts = [(r[x_key], r[key]) for r in recs
                   if x_key in r and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if pts:
                legend = None if (i, label) in labelled else label
                labelled.add((i, label))
                ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", color=colours[label],
                        label=legend, markersize=3, linewidth=1, alpha=0.85)
    _mle_hline(axes[0], report, "valid_bleu")
    for ax, (_, name) in zip(axes, panels):
        ax.set(xlabel=xlabel, title=name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    _suptitle(fig, report)
    fig.tight_layout()
    return save_png(fig, png)


def _plot_ac(cfg: ExperimentConfig, report: dict[str, Any], png: Path) -> Path:
    """Validation BLEU, the policy's entropy and the sampled length against the RL stage's update
    (each run's own count: joint updates, or MLE continued's), one colour per row, every seed a line."""
    from rayseq.metrics import BLEU_VALID, ENTROPY, SAMPLE_LEN, STEP

    panels = ((BLEU_VALID, "validation BLEU"), (ENTROPY, "policy entropy (nats)"), (SAMPLE_LEN, "sampled length (tokens)"))
    return _plot_runs(cfg, report, png, panels, STEP, "update of the RL stage (MLE continued: its updates)")


def _plot_vaml(cfg: ExperimentConfig, report: dict[str, Any], png: Path) -> Path:
    """Validation BLEU against the epoch of fine-tuning, one colour per row, every seed a line."""
    from rayseq.metrics import BLEU_VALID, EPOCH

    return _plot_runs(cfg, report, png, ((BLEU_VALID, "validation BLEU"),), EPOCH, "epoch of fine-tuning from the MLE actor")


def _render_vaml(cfg: ExperimentConfig, report: dict[str, Any]) -> str:
    """The summary table, then the Q-net (step 1) each VAML run used, scored again on its held-out draw."""
    from rayseq.metrics import CRITIC_TARGET_ENTROPY, CRITIC_TOP1_ACC, QNET_GREEDY_BLEU, QNET_VALID_TD

    lines = _render_summary(cfg, report).rstrip("\n").splitlines()
    keys = (QNET_VALID_TD, QNET_GREEDY_BLEU, CRITIC_TOP1_ACC, CRITIC_TARGET_ENTROPY)
    qnets = [(r["key"], _results(r.get("run_dir")).get("qnet") or {}) for r in report["runs"] if r["algo"] == "vaml"]
    if any(q for _, q in qnets):
        lines += ["", "The Q-net each VAML run's step 2 used (held-out figures, each scored on its own run's draw of corrupted validation references):", "",
                  "| run | source | updates | " + " | ".join(keys) + " |", "|---|---|---|" + "---|" * len(keys)]
        for key, q in qnets:
            lines.append(f"| {key} | {q.get('source', '–')} | {q.get('updates', '–')} | "
                         + " | ".join(f"{q[k]:.3f}" if isinstance(q.get(k), (int, float)) else "–" for k in keys) + " |")
    return "\n".join(lines) + "\n"


PAPER_EXPERIMENTS: dict[str, PaperExperiment] = {
    "table1": PaperExperiment(
        "Table 1: MLE, RAML, VAML, AC and ERAC over seeds", 3,
        lambda grid: [Arm(a) for a in ("mle", "raml", "vaml", "ac", "erac")], _render_summary, _plot_summary),
    "table3": PaperExperiment(
        "Table 3: ERAC's validation BLEU over β × λ_var", 1, _table3_arms, _render_table3, _plot_table3, ("betas", "lambda_vars")),
    "table4": PaperExperiment(
        "Table 4: ERAC with and without future entropy, and AC", 3,
        lambda grid: [Arm(a) for a in ("erac", "erac-nofutent", "ac")], _render_summary, _plot_summary),
    "fig1": PaperExperiment(
        "Figure 1: ERAC's BLEU against the entropy weight τ", 1, _fig1_arms, _render_fig1, _plot_fig1, ("taus",)),
    "ac": PaperExperiment(
        "The actor-critic protocol: MLE, MLE continued, AC, ERAC (official actor term), ERAC with the entropy "
        "horizon at the reference length, ERAC (Eq. 20 as printed), ERAC w/o future entropy, all from the same MLE actor", 3, _ac_arms, _render_ac, _plot_ac,
        ("continued_epochs", "continued_valid_every")),
    "vaml": PaperExperiment(
        "The VAML protocol: MLE continued, RAML, VAML from one MLE actor, same epochs", 3, _vaml_arms, _render_vaml, _plot_vaml, ("finetune_epochs", "finetune_checks")),
}
"""Name → the experiment (``rayseq reproduce NAME``)."""


def reproduce(name: str, task: str, seeds: int | None = None, grid: Grid | None = None, **kwargs: Any) -> dict[str, Any]:
    """Run (restore, or read) the paper's experiment ``name`` on ``task``; writes ``OUT/NAME.{md,json,png}``
    and returns the JSON. ``kwargs``: the other ``ExperimentConfig`` fields (preset, out, overrides, …)."""
    if name not in PAPER_EXPERIMENTS:
        raise ValueError(f"reproduce: unknown experiment {name!r}; choose one of {', '.join(PAPER_EXPERIMENTS)}.")
    exp = PAPER_EXPERIMENTS[name]
    grid = grid or Grid()
    cfg = ExperimentConfig(task=task, arms=exp.arms(grid), seeds=seeds or exp.default_seeds, name=f"reproduce-{name}", **kwargs)
    if "continued_epochs" in exp.grid_keys and (grid.continued_epochs is None or grid.continued_valid_every is None):
        joint_epochs, valid_every = rl_stage_budget(cfg)
        grid = replace(grid, continued_epochs=joint_epochs if grid.continued_epochs is None else grid.continued_epochs,
                       continued_valid_every=valid_every if grid.continued_valid_every is None else grid.continued_valid_every)
        cfg = replace(cfg, arms=exp.arms(grid))
    if "finetune_epochs" in exp.grid_keys and not grid.finetune_valid_every:
        grid = replace(grid, finetune_valid_every=finetune_intervals(cfg, grid))
        cfg = replace(cfg, arms=exp.arms(grid))
    out = Path(cfg.out)
    result = run_experiment(cfg)
    records = table_records(cfg, result["phases"])
    mle_runs, qnet_runs = split_mle_phase(result["phases"].get(PHASE_MLE, []))
    mle_ok = [r for r in mle_runs if r["status"] == "ok"]
    hardware = result["hardware"] or _previous_hardware(out / f"{name}.json")
    report = {
        "experiment": name, "title": exp.title, "out": str(out), "task": cfg.task, "preset": cfg.preset, "hardware": hardware,
        "seeds": cfg.seeds, "arms": cfg.labels, "overrides": cfg.overrides,
        "grid": {k: (list(v) if isinstance(v := getattr(grid, k), tuple) else v) for k in exp.grid_keys},
        "rows": summarize(cfg.labels, records), "runs": records, "mle_runs": mle_runs,
        "critic_runs": qnet_runs + result["phases"].get(PHASE_CRITIC, []),
        "mle_reference": {"ok": len(mle_ok), "valid_bleu": stats([r["valid_bleu"] for r in mle_ok]),
                          "test_bleu": stats([r["test_bleu"] for r in mle_ok])} if mle_ok else None,
        "diverged": [r["key"] for r in records if diverged(r)],
        "tune": result["tune"], "wall_time_s": result["wall_time_s"],
    }
    atomic_write_json(out / f"{name}.json", report)
    atomic_write_bytes(out / f"{name}.md", exp.render(cfg, report).encode("utf-8"))
    exp.plot(cfg, report, out / f"{name}.png")
    return report


def _previous_hardware(path: Path) -> str:
    """``--report-only`` starts no Ray: the hardware the earlier run recorded."""
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["hardware"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown (--report-only; not recorded)"


__all__ = ["BETAS", "LAMBDA_VARS", "PAPER_EXPERIMENTS", "TAUS", "Grid", "PaperExperiment", "reproduce"]
