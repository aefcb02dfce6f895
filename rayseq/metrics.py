"""Metric names every algorithm shares, and the one place they are written.

``MetricsWriter(run_dir).log(step, epoch, {LOSS_MLE: 2.1, LR: 0.6})`` appends one JSON object per
line to ``RUN_DIR/metrics.jsonl`` (``{"step", "epoch", "time_s", <metrics>}``, flushed at once) and
mirrors the numbers to TensorBoard (``RUN_DIR/tb``). ``read_metrics`` reads the file back;
``plot_learning_curve`` draws validation BLEU against epoch and wall time, and the training losses
against step.

No ray. matplotlib and tensorboardX are imported only when used.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from rayseq.run_dir import METRICS_JSONL, atomic_write_bytes

# ----------------------------------------------------------------------------- shared names

LOSS_ACTOR = "loss/actor"
LOSS_CRITIC_TD = "loss/critic_td"
LOSS_MLE = "loss/mle"
ENTROPY = "entropy"
TAU = "tau"  # the entropy weight τ in force (changes under the automatic temperature, algo.target_entropy)
BLEU_VALID = "bleu/valid"
BLEU_TEST = "bleu/test"
TOKENS_PER_S = "throughput/tokens_per_s"
POLICY_LAG = "policy_lag"
LR = "lr"
GRAD_NORM = "grad_norm"
EPOCH_TIME_S = "time/epoch_s"
LOSS_CRITIC_VAR = "loss/critic_var"
LOSS_ACTOR_OBJECTIVE = "loss/actor_objective"
Q_TAKEN = "critic/q_taken"
POLICY_LAG_MAX = "policy_lag_max"
SAMPLE_BLEU = "sample/bleu"
SAMPLE_LEN = "sample/length"
SAMPLE_TOKENS_PER_S = "sample/tokens_per_s"
LOSS_BASELINE = "loss/baseline"
REWARD_BASELINE = "reward/baseline"
TOKENS_TOTAL = "tokens/total"
LOSS_VAML_CE = "loss/vaml_ce"
QNET_VALID_TD = "qnet/valid_td"
QNET_GREEDY_BLEU = "qnet/greedy_bleu"
WORKER_RESTARTS = "workers/restarts"
REPLAY_SIZE = "replay/size"
LOSS_VALUE = "loss/value"
DECODE_LEN_RATIO = "decode/len_ratio"  # validation outputs' total length / the references' (rayseq.evaluation.score)
DECODE_LOOP_SHARE = "decode/loop_share"  # share of validation outputs with a repeated 3-gram
DECODE_AT_CAP_SHARE = "decode/at_cap_share"  # share of validation outputs that ran to the decoding cap
LR_QNET = "lr/qnet"  # VAML's Q-net optimiser's learning rate
LR_CRITIC = "lr/critic"  # the critic optimiser's learning rate
CRITIC_BEST_TD = "critic/best_valid_td"  # the best held-out TD error of critic pretraining so far
CRITIC_VALID_TD = "critic/valid_td"  # held-out soft TD error (Q − Q̂)² per token (rayseq.evaluation.critic)
CRITIC_TOP1_ACC = "critic/top1_acc"  # share of reference prefixes where argmax_w Q is the next reference token
CRITIC_TOP5_ACC = "critic/top5_acc"  # the same with the next reference token among the 5 best
CRITIC_MC_RANK_CORR = "critic/mc_rank_corr"  # Spearman ρ of Q(s_t, a_t) with the actor's Monte-Carlo soft return
CRITIC_TARGET_ENTROPY = "critic/target_entropy"  # mean entropy of softmax(Q/τ), the actor's target (Eq. 20 / 17)
CRITIC_EOS_MARGIN = "critic/eos_margin"  # mean Q(s, eos) − max_{w≠eos} Q(s, w) on the complete reference
CRITIC_EOS_MARGIN_POSITIVE = "critic/eos_margin_positive"  # share of those states with a positive margin
CRITIC_EARLY_EOS_PULL = "critic/early_eos_pull"  # mean Q(s, eos) − E_π Q(s, ·) on sampled states 1–2 tokens short of |y*|
CRITIC_EARLY_EOS_PULL_POSITIVE = "critic/early_eos_pull_positive"  # share of those states with a positive pull

METRIC_NAMES: dict[str, str] = {
    LOSS_ACTOR: "the loss the actor is trained on (MLE NLL, RAML Eq. 2, ERAC/AC actor Eq. 20, VAML step 2)",
    LOSS_CRITIC_TD: "squared TD error: ERAC/AC critic Eq. 18 (target Eq. 19), VAML Q-net Eq. 16",
    LOSS_MLE: "reference NLL (summed over time, batch mean), e.g. ERAC's auxiliary λ_mle term",
    ENTROPY: "mean per-token entropy of the actor's policy π(·|s), in nats",
    TAU: "the entropy weight τ of ERAC's actor (and critic target) in force; adapted every update under algo.target_entropy",
    BLEU_VALID: "corpus BLEU-4 (0-100) on the validation split (or its first valid_max_sentences)",
    BLEU_TEST: "corpus BLEU-4 (0-100) on the test split",
    TOKENS_PER_S: "target tokens trained on per second of wall time",
    POLICY_LAG: "learner updates between the weights that produced a sample and those trained on it",
    LR: "current learning rate of the actor",
    GRAD_NORM: "global L2 norm of the actor's gradient before clipping",
    EPOCH_TIME_S: "wall-clock seconds of the last epoch (training and validation)",
    LOSS_CRITIC_VAR: "Var_w Q(s, w) over the allowed vocabulary, summed over steps (the λ_var smoothing)",
    LOSS_ACTOR_OBJECTIVE: "the actor's RL term alone (Eq. 20), without the λ_mle·MLE term",
    Q_TAKEN: "mean critic value Q(s_t, a_t) of the sampled actions",
    POLICY_LAG_MAX: "the largest policy lag in the logging window",
    SAMPLE_BLEU: "mean sentence BLEU (0-100) of the sequences the learner trained on",
    SAMPLE_LEN: "mean length (tokens, eos excluded) of the sequences the learner trained on",
    SAMPLE_TOKENS_PER_S: "tokens sampled per second of rollout-worker time (actor + reward)",
    LOSS_BASELINE: "squared error of a learned REINFORCE baseline b_t against the return-to-go, summed over steps (MIXER)",
    REWARD_BASELINE: "mean REINFORCE baseline of the first step as a sentence BLEU (0-100, b / |y*|): SCST the greedy decode's, MIXER b(s_0)",
    TOKENS_TOTAL: "target tokens so far: trained on (MLE, RAML, VAML) or sampled by the rollout workers (RL algorithms)",
    LOSS_VAML_CE: "VAML step 2: Σ_t CE(P_Qφ ‖ π_θ), RAML-weighted, per source (exact with mix_mode=expected; with the Bernoulli mix an unbiased estimate from the mixed tokens, / mix_prob); the loss mixes it with the NLL",
    QNET_VALID_TD: "VAML Q-net: Eq. 16's squared soft TD error per sequence on corrupted validation references",
    QNET_GREEDY_BLEU: "VAML Q-net: corpus BLEU (0-100) of argmax-Q decoding given the validation references (an oracle reads y*)",
    WORKER_RESTARTS: "rollout-worker restarts so far (RLlib restarted a failed env runner; training went on)",
    REPLAY_SIZE: "episodes held by the replay buffer (memory or Redis backend)",
    LOSS_VALUE: "squared error of a learned state-value head V(s) against its return target (PPO: GAE, APPO: V-trace)",
    DECODE_LEN_RATIO: "validation outputs' total length / the references' total length (> 1: the actor runs long)",
    DECODE_LOOP_SHARE: "share of validation outputs in which some 3-gram occurs twice (decoding loops)",
    DECODE_AT_CAP_SHARE: "share of validation outputs that ran to max_decode_len without <eos>",
    LR_QNET: "current learning rate of VAML's Q-net (step 1's plateau schedule)",
    LR_CRITIC: "current learning rate of the critic (critic pretraining's plateau schedule)",
    CRITIC_BEST_TD: "the best held-out TD error of critic pretraining so far (it picks the critic joint training starts from)",
    CRITIC_VALID_TD: "held-out soft TD error (Q(s_t,a_t) − r_t − V(s_{t+1}))² per token on the actor's samples, "
    "V from the critic itself (Eq. 19; no ½, mean over tokens)",
    CRITIC_TOP1_ACC: "share of reference prefixes y*_1..t where argmax_w Q(s, w) is y*_{t+1} (eos after y*); ties count as misses",
    CRITIC_TOP5_ACC: "the same with y*_{t+1} among the 5 best tokens of Q",
    CRITIC_MC_RANK_CORR: "Spearman ρ of Q(s_t, a_t) with the Monte-Carlo soft return r_t + Σ_{k>t}(r_k − τ log π(a_k|s_k)) "
    "of the actor's samples (Q^π of Eq. 9)",
    CRITIC_TARGET_ENTROPY: "mean entropy (nats) of softmax(Q/τ), the actor's target (Eq. 20 / VAML Eq. 17); "
    "on the actor's sampled states (score_critic) or the reference prefixes (score_qnet)",
    CRITIC_EOS_MARGIN: "mean Q(y*, eos) − max_{w≠eos} Q(y*, w) on the complete reference (> 0: the critic says stop)",
    CRITIC_EOS_MARGIN_POSITIVE: "share of references where that margin is > 0",
    CRITIC_EARLY_EOS_PULL: "mean Q(s, eos) − Σ_w π(w|s) Q(s, w) on the actor's sampled states 1–2 tokens short of |y*| (> 0: the critic pulls the actor to stop early)",
    CRITIC_EARLY_EOS_PULL_POSITIVE: "share of those states where that pull is > 0",
}
"""Every shared metric name → what it measures. Log these names; others are allowed but
should only be added here once two algorithms use them."""

STEP, EPOCH, TIME_S = "step", "epoch", "time_s"
RESERVED_KEYS = (STEP, EPOCH, TIME_S)
"""Keys every record has; not metric names."""


def _scalar(name: str, value: Any) -> Any:
    """A JSON-ready value: Python/numpy/torch numbers → int/float; strings and None pass through."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:  # numpy / torch scalar
        value = value.item()
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    raise TypeError(
        f"metric {name!r} is a {type(value).__name__}; log numbers (or strings), e.g. loss.item()."
    )


class MetricsWriter:
    """Appends metric records to ``RUN_DIR/metrics.jsonl`` and mirrors scalars to ``RUN_DIR/tb``.

    ``time_s`` is wall time since the writer was created, continued from the last record of an
    existing file (a resumed run keeps one time axis). With ``resume_from_step`` set, records after
    that step (logged after the checkpoint being resumed from) are dropped first.
    One writer per run, in the driver process.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        tensorboard: bool = True,
        resume_from_step: int | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_JSONL
        previous = read_metrics(self.path) if self.path.exists() else []
        if resume_from_step is not None:
            kept = [r for r in previous if r.get(STEP, 0) <= resume_from_step]
            if len(kept) != len(previous):
                lines = "".join(json.dumps(r) + "\n" for r in kept)
                atomic_write_bytes(self.path, lines.encode("utf-8"))
            previous = kept
        self._time_offset = float(previous[-1].get(TIME_S) or 0.0) if previous else 0.0
        self._t0 = time.monotonic()
        self._file = open(self.path, "a", encoding="utf-8")
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(logdir=str(self.run_dir / "tb"), flush_secs=10)

    def elapsed_s(self, since: float | None = None) -> float:
        """Wall-clock seconds of the run so far (continued across resumes); ``since``: an earlier
        ``time.monotonic()`` of this session (before the writer existed) to count from instead."""
        return self._time_offset + time.monotonic() - (self._t0 if since is None else min(since, self._t0))

    def log(
        self,
        step: int,
        epoch: float | None,
        metrics: Mapping[str, Any],
        time_s: float | None = None,
    ) -> dict[str, Any]:
        """Append one record ``{"step", "epoch", "time_s", **metrics}``; returns it.

        ``step``: learner updates so far; ``epoch``: epochs so far (may be fractional);
        ``time_s``: wall seconds (default: ``elapsed_s()``). Numbers are also written to
        TensorBoard at ``step``.
        """
        if self._file.closed:
            raise RuntimeError(f"MetricsWriter for {self.path} is closed; create a new one.")
        clash = [k for k in metrics if k in RESERVED_KEYS]
        if clash:
            raise ValueError(f"metric name {clash[0]!r} is reserved (record keys: {', '.join(RESERVED_KEYS)}).")
        record: dict[str, Any] = {
            STEP: int(step),
            EPOCH: _scalar(EPOCH, epoch),
            TIME_S: round(self.elapsed_s() if time_s is None else float(time_s), 3),
        }
        for name, value in metrics.items():
            record[str(name)] = _scalar(str(name), value)
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for name, value in record.items():
                if name != STEP and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(name, value, global_step=record[STEP])
        return record

    def close(self) -> None:
        """Flush and close the files (idempotent)."""
        if not self._file.closed:
            self._file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def read_metrics(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` (or of ``RUN_DIR/metrics.jsonl`` given a run dir).

    A half-written last line (a run killed mid-write) is skipped; a bad line elsewhere raises
    ``ValueError`` naming file and line.
    """
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_JSONL
    lines = path.read_text(encoding="utf-8").splitlines()
    records: list[dict[str, Any]] = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break  # truncated final write
            raise ValueError(f"{path}:{i + 1}: not a JSON object ({err}); fix or delete that line.") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}:{i + 1}: expected a JSON object, got {type(record).__name__}.")
        records.append(record)
    return records


# ----------------------------------------------------------------------------- plot


def _series(records: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        vx, vy = r.get(x), r.get(y)
        if isinstance(vx, (int, float)) and isinstance(vy, (int, float)) and math.isfinite(vy):
            xs.append(float(vx))
            ys.append(float(vy))
    return xs, ys


def _write_png(fig: Any, out_png: str | os.PathLike[str], title: str | None) -> Path:
    """Title, tight layout, and the figure as a PNG written atomically; returns its path."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return atomic_write_bytes(out_png, buf.getvalue())


def plot_learning_curve(
    metrics_path: str | os.PathLike[str], out_png: str | os.PathLike[str], title: str | None = None
) -> Path:
    """PNG with validation BLEU vs epoch, vs wall time, training losses vs step and, when logged, the
    critic's held-out figures and the decoding stats vs step; returns its path.

    ``metrics_path``: a ``metrics.jsonl`` or a run directory. Written atomically. Panels without
    data say so instead of failing (e.g. before the first validation).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records = read_metrics(metrics_path)
    quality = sorted({k for r in records for k in r if k.startswith(("critic/", "decode/")) and k != CRITIC_BEST_TD})
    fig = Figure(figsize=(20 if quality else 15, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax_epoch, ax_time, ax_loss, *ax_quality = fig.subplots(1, 4 if quality else 3)

    def empty(ax: Any, what: str) -> None:
        ax.text(0.5, 0.5, f"no {what} yet", ha="center", va="center", transform=ax.transAxes)

    for ax, x, xlabel, scale in (
        (ax_epoch, EPOCH, "epoch", 1.0),
        (ax_time, TIME_S, "wall time (min)", 1 / 60),
    ):
        plotted = False
        for name, marker in ((BLEU_VALID, "o-"), (BLEU_TEST, "s")):
            xs, ys = _series(records, x, name)
            if xs:
                ax.plot([v * scale for v in xs], ys, marker, label=name, markersize=4)
                plotted = True
        if plotted:
            ax.legend(loc="lower right")
        else:
            empty(ax, BLEU_VALID)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("BLEU")
        ax.grid(alpha=0.3)
    ax_epoch.set_title("validation BLEU vs epoch")
    ax_time.set_title("validation BLEU vs wall time")

    loss_names = sorted({k for r in records for k in r if k.startswith("loss/")})
    for name in loss_names:
        xs, ys = _series(records, STEP, name)
        if xs:
            ax_loss.plot(xs, ys, label=name, linewidth=1)
    if loss_names:
        ax_loss.legend(loc="upper right")
    else:
        empty(ax_loss, "training loss")
    ax_loss.set_xlabel("step (updates)")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("training loss vs step")
    ax_loss.grid(alpha=0.3)

    for ax in ax_quality:  # the critic's held-out figures and how the decoded outputs look
        for name in quality:
            xs, ys = _series(records, STEP, name)
            if xs:
                ax.plot(xs, ys, "o-", label=name, markersize=3, linewidth=1)
        ax.legend(loc="best", fontsize=7)
        ax.set_xlabel("step (updates)")
        ax.set_title("critic (held-out) and decoding vs step")
        ax.grid(alpha=0.3)

    return _write_png(fig, out_png, title)


__all__ = [
    "BLEU_TEST",
    "BLEU_VALID",
    "ENTROPY",
    "EPOCH_TIME_S",
    "GRAD_NORM",
    "LOSS_ACTOR",
    "LOSS_CRITIC_TD",
    "LOSS_MLE",
    "LR",
    "METRIC_NAMES",
    "POLICY_LAG",
    "RESERVED_KEYS",
    "TOKENS_PER_S",
    "MetricsWriter",
    "plot_learning_curve",
    "read_metrics",
]


COMPARE_METRICS: tuple[str, ...] = (BLEU_VALID, ENTROPY, "sample/bleu", LOSS_CRITIC_TD)
"""What ``rayseq compare`` plots by default (one panel each, against the update count)."""


def plot_comparison(
    runs: Mapping[str, str | os.PathLike[str]],
    out_png: str | os.PathLike[str],
    metrics: tuple[str, ...] = COMPARE_METRICS,
    title: str | None = None,
) -> Path:
    """One panel per metric, one line per run (label → run dir or metrics.jsonl), x = update.

    Runs without a metric are left out of its panel; a panel no run has says so. Written
    atomically; returns its path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not runs:
        raise ValueError("plot_comparison: no runs given.")
    records = {label: read_metrics(path) for label, path in runs.items()}
    fig = Figure(figsize=(4.6 * len(metrics), 4.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, name in zip(axes, metrics):
        plotted = False
        for label, recs in records.items():
            xs, ys = _series(recs, STEP, name)
            if xs:
                ax.plot(xs, ys, "o-" if name == BLEU_VALID else "-", label=label, markersize=3, linewidth=1)
                plotted = True
        if plotted:
            ax.legend(loc="best", fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {name}", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("update")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    return _write_png(fig, out_png, title)
