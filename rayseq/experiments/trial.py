"""The Tune trial: one training run (algorithm, seed, setting) through the normal driver.

:func:`run_trial` is the function trainable. It builds the run's config from the trial spec, runs
``rayseq.train.train`` in a thread and, while it trains, reports every validation of the run's
``metrics.jsonl`` to Tune (the validation record plus the latest value of every other metric
since the previous one: TensorBoard curves in the Tune folder) with a **checkpoint**; at the end it
reports the run's outcome (from its ``results.json``) — the last result, which the tables read.

The checkpoint is the run directory, by reference: a small ``trial.json`` naming it and the last
reported step. The run directory holds the driver's own checkpoints (replaced atomically), so the
heavy state is never copied; a trial Tune restores finds its checkpoint and resumes the driver
(``train(cfg, resume=True)``). A run that already finished (``results.json``: e.g. the driver was
killed between the run's end and Tune's record of it) is read back, never trained again — unless
the trial asks for the same run with a larger budget (``rayseq.run_dir.budget_grows``: e.g. the
``vaml`` protocol rerun with a larger ``--finetune-epochs``): then the run is **extended**, resumed
from its last checkpoint with the new budget.

A run directory must be reachable from every node that may run the trial (one machine, or a
shared filesystem: the same condition as Tune's ``storage_path``).
"""
from __future__ import annotations

import json
import math
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rayseq.experiments.spec import TrialSpec

TRIAL_JSON = "trial.json"
"""Inside a Tune checkpoint: ``{"key", "run_dir", "step"}``."""

ERROR_TXT = "compare_error.txt"
"""Written into the run directory when a trial fails: the traceback."""

POLL_S = 2.0
"""How often a training trial looks for new validation records."""


def run_trial(config: dict[str, Any]) -> None:
    """Tune function trainable (``config["trial"]``: ``TrialSpec.to_dict()``)."""
    import ray
    from ray import tune

    from rayseq.run_dir import RESULTS_JSON, RUN_JSON

    spec = TrialSpec.from_dict(config["trial"])
    run_dir = Path(spec.run_dir)
    context = {
        "key": spec.key, "algo": spec.algo, "label": spec.label, "setting": spec.setting, "seed": spec.seed,
        "run_dir": spec.run_dir, "actor_init": spec.actor_init, "mle_run_dir": spec.mle_run_dir,
        "node_id": ray.get_runtime_context().get_node_id(), "started_at": time.time(),
    }
    checkpoint = tune.get_checkpoint()
    last_step = _checkpoint_step(checkpoint)
    try:
        if (run_dir / RESULTS_JSON).is_file() and not extends_finished_run(spec):
            results, reused = json.loads((run_dir / RESULTS_JSON).read_text(encoding="utf-8")), True
        else:
            reused = False
            resume = checkpoint is not None or (run_dir / RUN_JSON).is_file()
            results = _train_and_report(spec, context, resume, last_step)
    except Exception:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / ERROR_TXT).write_text(traceback.format_exc(), encoding="utf-8")
        raise
    (run_dir / ERROR_TXT).unlink(missing_ok=True)  # an earlier attempt's
    final = {**context, **outcome(results), "reused": reused, "ended_at": time.time()}
    _report(final, spec, final.get("updates", last_step))


def trial_run_config(spec: TrialSpec) -> Any:
    """The trial's ``RunConfig`` (the config ``train`` runs, ``run.json`` its ``to_dict``)."""
    from rayseq.config import build_run_config
    from rayseq.registry import get_algorithm

    return build_run_config(spec.algo, get_algorithm(spec.algo).config_cls, spec.preset, spec.task, spec.overrides,
                            out=spec.run_dir, data_dir=spec.data_dir)


def extends_finished_run(spec: TrialSpec) -> bool:
    """Whether the finished run in the trial's run directory is this trial's run with a smaller
    budget, so that the trial resumes it to the new one (said on stderr) instead of reading it back."""
    from rayseq.config import field_defaults, to_dict
    from rayseq.run_dir import budget_grows, read_run_json, run_budget

    cfg = trial_run_config(spec)
    if getattr(cfg.algo_config, "qnet_only", False):  # VAML's step 1 alone: no actor epochs to extend
        return False
    old = read_run_json(spec.run_dir)
    if not budget_grows(old, to_dict(cfg), field_defaults(cfg)):
        return False
    print(f"[{spec.key}] extending the finished run in {spec.run_dir} from {run_budget(old):g} to "
          f"{run_budget(to_dict(cfg)):g} epochs (resumed from its last checkpoint)", file=sys.stderr, flush=True)
    return True


def outcome(results: dict[str, Any]) -> dict[str, Any]:
    """The figures a table needs from a run's ``results.json``."""
    from rayseq.metrics import BLEU_VALID, QNET_GREEDY_BLEU, QNET_VALID_TD

    test = results.get("test", {})
    out: dict[str, Any] = {
        "status": "ok",
        "test_bleu": float(test["bleu"]),
        "valid_bleu": float("nan") if results.get(BLEU_VALID) is None else float(results[BLEU_VALID]),
        "wall_time_s": float(results.get("wall_time_s", float("nan"))),
        "collapsed": bool(results.get("collapsed", False)),
        "surrogate": bool(results.get("surrogate") or test.get("surrogate") or test.get("features") == "surrogate"),
    }
    if results.get("updates") is not None:
        out["updates"] = int(results["updates"])
    qnet = results.get("qnet") or {}
    if qnet.get("source") == "trained":  # VAML's step 1 ran here (alone, for --shared-qnet: its figures are the row's)
        out.update({key: float(qnet[key]) for key in (QNET_VALID_TD, QNET_GREEDY_BLEU) if qnet.get(key) is not None})
    if test.get("cider_d") is not None:  # captioning: CIDEr-D next to BLEU-4
        out["test_cider_d"] = float(test["cider_d"])
    return out


def _train_and_report(spec: TrialSpec, context: dict[str, Any], resume: bool, last_step: int) -> dict[str, Any]:
    """``train()`` in a thread; its validations reported to Tune as they appear; its results returned."""
    from rayseq.errors import TrainingError
    from rayseq.run_dir import METRICS_JSONL, RESULTS_JSON
    from rayseq.train import train

    if spec.mle_run_dir is not None and not (Path(spec.mle_run_dir) / RESULTS_JSON).is_file():
        raise TrainingError(
            f"its MLE actor is missing: the mle run of seed {spec.seed} ({spec.mle_run_dir}) did not finish; "
            "see its row, fix it and rerun with --retry-errored."
        )
    cfg = trial_run_config(spec)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["results"] = train(cfg, resume=resume)
        except BaseException as err:  # noqa: BLE001 — re-raised in the trial's thread
            box["error"] = err

    thread = threading.Thread(target=target, name=f"rayseq-train-{spec.key}", daemon=True)
    thread.start()
    tail = _ValidationTail(Path(spec.run_dir) / METRICS_JSONL, last_step)
    while thread.is_alive():
        thread.join(POLL_S)
        for metrics in tail.new():
            _report({**context, **metrics}, spec, int(metrics["step"]))
    if "error" in box:
        raise box["error"]
    for metrics in tail.new():
        _report({**context, **metrics}, spec, int(metrics["step"]))
    return box["results"]


def _report(metrics: dict[str, Any], spec: TrialSpec, step: int) -> None:
    """One Tune result with the run directory as its checkpoint."""
    from ray import tune

    with tempfile.TemporaryDirectory(prefix="rayseq-trial-") as tmp:
        Path(tmp, TRIAL_JSON).write_text(json.dumps({"key": spec.key, "run_dir": spec.run_dir, "step": step}), encoding="utf-8")
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def _checkpoint_step(checkpoint: Any) -> int:
    """The last step reported before a restore (-1: none)."""
    if checkpoint is None:
        return -1
    with checkpoint.as_directory() as d:
        path = Path(d, TRIAL_JSON)
        return int(json.loads(path.read_text(encoding="utf-8")).get("step", -1)) if path.is_file() else -1


class _ValidationTail:
    """New validation records of a growing ``metrics.jsonl`` (steps after ``after_step``), each with
    the latest value of every other numeric metric logged since the previous validation."""

    def __init__(self, path: Path, after_step: int) -> None:
        self.path, self.after = path, after_step

    def new(self) -> Iterator[dict[str, Any]]:
        from rayseq.metrics import BLEU_VALID, STEP, read_metrics

        if not self.path.is_file():
            return
        latest: dict[str, Any] = {}
        for rec in read_metrics(self.path):
            if rec.get(STEP, -1) <= self.after:
                continue
            latest.update({k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                           and math.isfinite(v)})
            if BLEU_VALID in rec:
                self.after = rec[STEP]
                yield dict(latest)
                latest = {}


__all__ = ["ERROR_TXT", "TRIAL_JSON", "outcome", "run_trial"]
