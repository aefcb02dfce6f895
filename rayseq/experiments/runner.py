"""Run an experiment on Ray Tune: its trials, their resources, restore, and the records the tables read.

Each phase (``rayseq.experiments.spec``: ``mle``, then ``main``) is one Tune experiment in
``OUT/tune/PHASE`` (open ``OUT/tune`` in TensorBoard), a grid over its trial specs: each trial is
:func:`rayseq.experiments.trial.run_trial` with the placement group its run's config asks for
(``rayseq.experiments.resources``), at most ``max_concurrent`` at a time. The ``main`` phase starts
once every MLE trial has ended, each of its RL trials from the best actor of its seed's MLE run.

A phase whose Tune experiment exists is **restored** (``tune.Tuner.restore``): finished trials
keep their results, unfinished ones continue from their checkpoints, errored ones keep their
errors unless ``retry_errored``. A phase asked again with its trials' budgets raised and nothing
else changed (e.g. ``--finetune-epochs`` 1 → 2) is a new Tune experiment instead — the old one is
kept beside it, renamed — whose trials extend the finished runs (``rayseq.experiments.trial``).
A budget that shrank is an error; any other changed setting is named on stderr (a restored trial
keeps the settings it started with). A failing trial ends in ERROR with its exception; the others
finish, and its row shows the error.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from rayseq.experiments.spec import ExperimentConfig, TrialSpec, trial_specs
from rayseq.experiments.trial import ERROR_TXT
from rayseq.run_dir import atomic_write_json

TUNE_DIR = "tune"
"""The Tune experiments' folder inside the experiment's ``out``."""

TRIALS_JSON = "rayseq_trials.json"
"""Inside a phase's Tune folder: the keys of the trials it was started with."""

QUIET_TUNE_ENV = {"TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0", "RAY_AIR_NEW_OUTPUT": "0"}
"""Every trial report carries a (tiny) checkpoint and ``num_to_keep=1`` snapshots the experiment
state at each: wanted here (restore loses nothing), so Tune's warning about it is switched off.
Tune's own console reporter is off (``verbose=0`` then prints nothing): the phase lines and
:class:`~rayseq.experiments.progress.TrialProgress` say what a user needs, and its TensorBoard hint
named the driver's temporary staging folder rather than the Tune experiment."""


def trial_name(trial: Any) -> str:
    """Tune's trial (and trial folder) name: the run's key, e.g. ``erac-seed1234``."""
    return str(trial.config["trial"]["key"])


def run_experiment(cfg: ExperimentConfig) -> dict[str, Any]:
    """Run (or restore, or with ``report_only`` just read) every phase; returns
    ``{"phases": {phase: [record, ...]}, "tune": {phase: {...}}, "hardware": str, "wall_time_s": float}``,
    records in table order (see :func:`record`)."""
    from rayseq.runtime.session import init_ray

    t0 = time.monotonic()
    out = Path(cfg.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    phases = trial_specs(cfg)
    report: dict[str, Any] = {"phases": {}, "tune": {}, "hardware": None}
    if cfg.report_only:
        for phase, specs in phases.items():
            report["phases"][phase], report["tune"][phase] = _read_phase(out / TUNE_DIR / phase, specs)
        report["wall_time_s"] = time.monotonic() - t0
        return report

    import ray

    for key, value in QUIET_TUNE_ENV.items():
        os.environ.setdefault(key, value)
    from rayseq.experiments.resources import (
        cluster_has_gpus,
        describe_cluster,
        total,
        unplaceable,
        with_bundles,
    )

    biggest = max((total(_draft_bundles(s, cfg)) for specs in phases.values() for s in specs), default=1.0)
    started = init_ray(cfg.address, num_cpus=max(os.cpu_count() or 1, math.ceil(biggest)))
    try:
        gpu_default = 1.0 if cluster_has_gpus() else 0.0
        for specs in phases.values():
            for s in specs:
                with_bundles(s, cfg.trial_resources, gpu_default)
                why = unplaceable(s.bundles)
                if why:
                    print(f"[{cfg.name}] warning: trial {s.key} cannot start on this cluster as it is ({why}); it waits "
                          "for nodes to join. Lower num_rollout_workers / num_learners with --set.", file=sys.stderr, flush=True)
        report["hardware"] = describe_cluster()
        unfinished: dict[str, str] = {}  # run dir → key, of the earlier phases' runs that did not finish
        for phase, specs in phases.items():
            blocked = sorted({unfinished[d] for s in specs for d in s.depends_on() if d in unfinished})
            if blocked:  # never start from a failed run's partial actor, critic or Q-net
                why = f"not run: it starts from {', '.join(blocked)}, which did not finish"
                print(f"[{cfg.name}] phase {phase} {why}; see that run's {ERROR_TXT}, then rerun the same command "
                      "with --retry-errored (finished runs are read back)", file=sys.stderr, flush=True)
                report["phases"][phase] = [_not_run(s, why) for s in specs]
                report["tune"][phase] = {"path": str(out / TUNE_DIR / phase), "restored": False, "not_run": why}
            else:
                print(f"[{cfg.name}] phase {phase}: {len(specs)} trial{'s' if len(specs) != 1 else ''} "
                      f"({', '.join(s.key for s in specs)}); Tune experiment (TensorBoard logs) in "
                      f"{out / TUNE_DIR / phase}", file=sys.stderr, flush=True)
                report["phases"][phase], report["tune"][phase] = _run_phase(cfg, out / TUNE_DIR / phase, specs)
            unfinished.update({r["run_dir"]: r["key"] for r in report["phases"][phase] if r["status"] != "ok"})
    finally:
        if started:
            ray.shutdown()
    report["wall_time_s"] = time.monotonic() - t0
    return report


def _draft_bundles(spec: TrialSpec, cfg: ExperimentConfig) -> list[dict[str, float]]:
    """The bundles before Ray is up (GPUs unknown: counted as none), to size a private local Ray."""
    from rayseq.experiments.resources import with_bundles

    return with_bundles(TrialSpec.from_dict(spec.to_dict()), cfg.trial_resources, 0.0).bundles


def _trainable() -> Any:
    from ray import tune

    from rayseq.experiments.resources import placement_group_factory
    from rayseq.experiments.trial import run_trial

    return tune.with_resources(run_trial, placement_group_factory)


def _run_phase(cfg: ExperimentConfig, path: Path, specs: list[TrialSpec]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from ray import tune

    from rayseq.experiments.progress import TrialProgress

    info: dict[str, Any] = {"path": str(path), "restored": False}
    if tune.Tuner.can_restore(str(path)):
        _check_same_trials(path, specs)
        if _budgets_grew(path, specs, cfg.name):
            kept = _set_aside(path)
            info["previous"] = str(kept)
            print(f"[{cfg.name}] the trials' budgets grew: a new Tune experiment in {path} extends the finished "
                  f"runs (the earlier one is kept in {kept})", file=sys.stderr, flush=True)
    if tune.Tuner.can_restore(str(path)):
        tuner = tune.Tuner.restore(str(path), _trainable(), resume_unfinished=True, resume_errored=cfg.retry_errored)
        info["restored"] = True
        print(f"[{cfg.name}] restoring the Tune experiment in {path}"
              + (" (errored trials run again)" if cfg.retry_errored else ""), file=sys.stderr, flush=True)
    else:
        tuner = tune.Tuner(
            _trainable(),
            param_space={"trial": tune.grid_search([s.to_dict() for s in specs])},
            tune_config=tune.TuneConfig(max_concurrent_trials=cfg.max_concurrent, trial_name_creator=trial_name,
                                        trial_dirname_creator=trial_name),
            run_config=tune.RunConfig(
                name=path.name, storage_path=str(path.parent),
                failure_config=tune.FailureConfig(max_failures=0),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[TrialProgress(cfg.name)],
                verbose=0,
            ),
        )
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / TRIALS_JSON, [s.key for s in specs])
    grid = tuner.fit()
    return _records(grid, specs), info


def _read_phase(path: Path, specs: list[TrialSpec]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``report_only``: the results a phase's Tune experiment holds, without running anything."""
    from ray import tune

    info = {"path": str(path), "restored": False}
    if not tune.Tuner.can_restore(str(path)):
        return [_not_run(s, "not run (no Tune experiment; --report-only)") for s in specs], info
    grid = tune.Tuner.restore(str(path), _trainable()).get_results()
    return _records(grid, specs, unfinished="not finished (--report-only)"), info


def _key(result: Any) -> str:
    """A result's trial key: its folder's name (``trial_name``; a trial without results has no config)."""
    return Path(result.path).name


def _check_same_trials(path: Path, specs: list[TrialSpec]) -> None:
    """A restored phase must be the same grid (Tune would run the grid it was started with)."""
    manifest = path / TRIALS_JSON
    if not manifest.is_file():
        return
    have, want = set(json.loads(manifest.read_text(encoding="utf-8"))), {s.key for s in specs}
    if have != want:
        extra, missing = sorted(have - want), sorted(want - have)
        raise ValueError(
            f"the Tune experiment in {path} was started with other trials (only there: {', '.join(extra) or '-'}; "
            f"only asked now: {', '.join(missing) or '-'}); rerun it with its own algorithms, seeds and settings, or "
            "choose another --out."
        )


BUDGET_OVERRIDES: tuple[str, ...] = ("epochs=", "algo.budget_epochs=")
"""The trial overrides that set a run's budget (``rayseq.run_dir.BUDGET_KEYS``)."""


def _without_budget(spec: dict[str, Any]) -> dict[str, Any]:
    """A trial spec's settings, its budget overrides and resources left out."""
    out = {k: v for k, v in spec.items() if k != "bundles"}
    out["overrides"] = [o for o in spec.get("overrides", []) if not o.startswith(BUDGET_OVERRIDES)]
    return out


def _budgets_grew(path: Path, specs: list[TrialSpec], name: str) -> bool:
    """Whether the phase's Tune experiment in ``path`` was started with these trials at smaller budgets
    (``True``: start a new one). ValueError when a budget shrank; a warning on stderr when another
    setting changed (Tune restores the trial as it was started: a shared Q-net serves step-2 settings
    it was not started with)."""
    grew = False
    for spec in specs:
        params = path / spec.key / "params.json"
        if not params.is_file():  # a trial Tune never started: it runs with the new spec
            continue
        old = json.loads(params.read_text(encoding="utf-8")).get("trial", {})
        new = spec.to_dict()
        before, after = _override_budget(old.get("overrides", [])), _override_budget(new.get("overrides", []))
        if after < before:
            raise ValueError(
                f"the Tune experiment in {path} ran trial {spec.key} for {before:g} epochs; a budget can only grow "
                f"(asked now: {after:g}), since its run is trained past that: choose another --out."
            )
        grew = grew or after > before
        a, b = _without_budget(old), _without_budget(new)
        if a != b:
            changed = sorted({o for o in a.get("overrides", [])} ^ {o for o in b.get("overrides", [])})
            print(f"[{name}] note: trial {spec.key} was started with other settings ({', '.join(changed) or 'its spec'}); "
                  "Tune keeps the settings a trial started with", file=sys.stderr, flush=True)
    return grew


def _override_budget(overrides: list[str]) -> float:
    """The epochs a trial's overrides allow (``min(epochs, algo.budget_epochs)``; inf when unset)."""
    values = {o.split("=", 1)[0]: o.split("=", 1)[1] for o in overrides if o.startswith(BUDGET_OVERRIDES)}
    caps = [float(v) for v in values.values() if v not in ("", "0", "0.0", "null", "None")]
    return min(caps, default=math.inf)


def _set_aside(path: Path) -> Path:
    """Rename a phase's Tune folder to ``PHASE.N`` (the first free N); returns the new path."""
    n = 1
    while path.with_name(f"{path.name}.{n}").exists():
        n += 1
    kept = path.with_name(f"{path.name}.{n}")
    path.rename(kept)
    return kept


def _records(grid: Any, specs: list[TrialSpec], unfinished: str = "not finished") -> list[dict[str, Any]]:
    """One record per spec, in spec order, from the trials' results."""
    by_key = {_key(r): r for r in grid}
    return [record(s, by_key.get(s.key), unfinished) for s in specs]


def record(spec: TrialSpec, result: Any, unfinished: str = "not finished") -> dict[str, Any]:
    """The table's view of one trial: ``status`` ``ok`` (with ``test_bleu``, ``valid_bleu``,
    ``wall_time_s``, ``collapsed``, ``surrogate``, ``test_cider_d``, ``node_id``, ``started_at``,
    ``ended_at``) or ``failed`` (with ``error``)."""
    if result is None:
        return _not_run(spec, unfinished)
    metrics = dict(result.metrics or {})
    rec = _base(spec)
    rec["trial_path"] = result.path
    for key in ("node_id", "started_at", "ended_at", "reused"):
        if key in metrics:
            rec[key] = metrics[key]
    if result.error is not None:
        rec.update(status="failed", error=error_text(result.error))
    elif metrics.get("status") == "ok":
        rec.update({k: metrics[k] for k in ("status", "test_bleu", "valid_bleu", "wall_time_s", "collapsed", "surrogate",
                                            "test_cider_d", "updates") if k in metrics})
    else:
        rec.update(status="failed", error=unfinished)
    return rec


def _base(spec: TrialSpec) -> dict[str, Any]:
    return {"key": spec.key, "algo": spec.algo, "label": spec.label, "setting": spec.setting, "seed": spec.seed,
            "phase": spec.phase, "run_dir": spec.run_dir, "actor_init": spec.actor_init, "mle_run_dir": spec.mle_run_dir}


def _not_run(spec: TrialSpec, why: str) -> dict[str, Any]:
    return {**_base(spec), "status": "failed", "error": why}


def error_text(err: BaseException) -> str:
    """``Type: message`` of the exception a trial raised (Ray's wrapper and traceback removed), one line."""
    cause = err
    for _ in range(5):  # RayTaskError(TrainingError) / TuneError chains
        inner = getattr(cause, "cause", None) or cause.__cause__
        if inner is None or inner is cause:
            break
        cause = inner
    name = type(cause).__name__
    if name.startswith("RayTaskError(") and name.endswith(")"):
        name = name[len("RayTaskError("):-1]
    text = str(cause)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) > 1 and any(ln.startswith("Traceback") for ln in lines):  # a formatted traceback: its last line
        last = lines[-1]
        name, _, text = last.partition(": ") if ": " in last else (name, "", last)
    return f"{name}: {' '.join(text.split())[:300]}"


__all__ = ["TUNE_DIR", "error_text", "record", "run_experiment", "trial_name"]
