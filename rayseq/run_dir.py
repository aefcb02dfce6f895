"""The run directory: create it, record ``run.json``, refuse to mix two runs, checkpoints, results.

The one reader and writer of a run's artefacts (the actor files' format is ``rayseq.actor_io``)::

    RUN_DIR/run.json          the run config (``rayseq.config.to_dict``), written by prepare_run_dir
    RUN_DIR/metrics.jsonl     one JSON object per logged step (``rayseq.metrics.MetricsWriter``)
    RUN_DIR/tb/               TensorBoard event files (same scalars)
    RUN_DIR/actor_best.pt     the actor with the best validation BLEU (``ACTOR_FILES``)
    RUN_DIR/actor_latest.pt   the actor at the latest validation
    RUN_DIR/checkpoint/       the algorithm's state + trainer_state.json (``save_checkpoint``)
    RUN_DIR/stages.json       the stages a multi-stage run has finished (``read_stages``)
    RUN_DIR/mle/              the MLE stage of a run that trains its own start actor (a run dir)
    RUN_DIR/results.json      final numbers (``write_results``)

Every file here is written atomically: a hidden temp file in the same folder, fsync, ``os.replace``;
a reader or a crash sees the old file or the new one, never half of one.

No ray, no torch.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from rayseq.data.atomic import atomic_write_bytes as _atomic_write_bytes

RUN_JSON = "run.json"
"""The run config inside a run directory."""

ACTOR_FILES: dict[str, str] = {"best": "actor_best.pt", "latest": "actor_latest.pt"}
"""``which`` -> actor file name inside a run directory."""

CHECKPOINT_DIR = "checkpoint"
"""The latest checkpoint inside a run directory: the algorithm's saved state + ``TRAINER_STATE``."""

TRAINER_STATE = "trainer_state.json"
"""The driver's own state (step, schedule, best so far, stage progress) inside a checkpoint."""

STAGES_JSON = "stages.json"
"""Finished stages of a multi-stage run (the MLE stage's actor and scores, ...)."""

MLE_DIR = "mle"
"""The MLE stage's own run directory inside a run that trains its start actor."""

RESULTS_JSON = "results.json"
"""Final results inside a run directory."""

METRICS_JSONL = "metrics.jsonl"
"""Metrics log inside a run directory (see ``rayseq.metrics``)."""

RESUME_MAY_CHANGE: tuple[str, ...] = (
    "out",
    "epochs",
    "algo_config.max_epochs",  # mirrors epochs (rayseq.config.SHARED_FIELDS)
    "algo_config.budget_epochs",  # fine-tuning: the update budget, in epochs
    "data_dir",
    "num_gpus_per_learner",
    "log_every",
    "algo_config.joint_epochs",  # actor-critic: how long the stages run
    "algo_config.critic_pretrain_epochs",
    "algo_config.iterations",  # swap-ins: how many RLlib iterations
    "algo_config.qnet_epochs",  # VAML: how long step 1 runs
    "num_rollout_workers",  # how the same run is spread over processes
    "envs_per_worker",
    "num_learners",
)
"""Dotted run.json keys that may differ when a run is resumed: where it is written, how long it
runs, where the data lives, which device and processes, how often it logs. Anything else changes
the run."""


BUDGET_KEYS: tuple[str, str] = ("epochs", "algo_config.budget_epochs")
"""The dotted run.json keys that bound an actor-epoch run (``rayseq.drivers.supervised``: MLE, RAML
and VAML's step 2): it stops after ``epochs`` epochs or ``budget_epochs`` epochs of updates (0: off)."""


class RunDirError(ValueError):
    """The run directory cannot be used as asked (another run is there, nothing to resume, ...)."""


# ----------------------------------------------------------------------------- atomic writes


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Create or replace ``path`` with ``data`` atomically (RunDirError if the folder is missing)."""
    return _atomic_write_bytes(path, data, error=RunDirError)


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON (UTF-8, trailing newline) atomically; returns the path.

    Serialisation happens before anything touches the disk, so a value JSON cannot hold raises
    ``TypeError`` and leaves no file behind.
    """
    data = (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    return atomic_write_bytes(path, data)


# ----------------------------------------------------------------------------- run directory


def flatten_dotted(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → dotted keys (``{"algo": {"lr": 1}}`` → ``{"algo.lr": 1}``)."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(flatten_dotted(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_differences(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    ignore: Iterable[str] = RESUME_MAY_CHANGE,
    defaults: Mapping[str, Any] | None = None,
) -> list[str]:
    """``"key: old → new"`` for every dotted key whose value differs, except ``ignore``d keys.

    ``defaults`` (dotted key → default value): a key that ``old`` lacks and whose new value is its
    default is no difference — a setting added to rayseq after ``old`` was written, at the value
    that does what the older version did.
    """
    # compare as JSON stores them (a tuple in the config is a list in run.json)
    a, b = flatten_dotted(json.loads(json.dumps(old))), flatten_dotted(json.loads(json.dumps(new)))
    known = json.loads(json.dumps(dict(defaults or {})))
    skip = set(ignore)
    missing = object()
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in skip:
            continue
        va, vb = a.get(key, missing), b.get(key, missing)
        if va is missing and key in known and vb == known[key]:
            continue
        if va != vb:
            show = lambda v: "(absent)" if v is missing else json.dumps(v)  # noqa: E731
            diffs.append(f"{key}: {show(va)} → {show(vb)}")
    return diffs


def run_budget(run_config: Mapping[str, Any]) -> float | None:
    """The epochs a run trains at most under :data:`BUDGET_KEYS`; None for a run without an update
    budget (actor-critic, swap-ins: their stages are sized by other keys)."""
    flat = flatten_dotted(json.loads(json.dumps(run_config)))
    epochs, budget = flat.get(BUDGET_KEYS[0]), flat.get(BUDGET_KEYS[1])
    if epochs is None or budget is None:
        return None
    return min(float(epochs), float(budget)) if budget else float(epochs)


def budget_grows(
    old: Mapping[str, Any], new: Mapping[str, Any], defaults: Mapping[str, Any] | None = None
) -> bool:
    """Whether ``new`` is the run ``old`` describes trained longer: equal up to :data:`RESUME_MAY_CHANGE`,
    with a larger :func:`run_budget`. Such a run, finished, is extended by resuming it."""
    before, after = run_budget(old), run_budget(new)
    if before is None or after is None or after <= before:
        return False
    return not config_differences(old, new, RESUME_MAY_CHANGE, defaults)


def read_run_json(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``RUN_DIR/run.json`` as a dict; RunDirError naming the file if it is missing or not JSON."""
    path = Path(run_dir) / RUN_JSON
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path} not found; {run_dir} is not a rayseq run directory.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(
            f"{path} is not valid JSON ({err}); delete it or choose another --out."
        ) from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path} holds a {type(data).__name__}, not a run config; choose another --out.")
    return data


def _has_progress(run_dir: Path) -> bool:
    """Whether a run already wrote metrics, results or checkpoints here."""
    return (
        (run_dir / METRICS_JSONL).exists()
        or (run_dir / RESULTS_JSON).exists()
        or any(run_dir.glob("*.pt"))
    )


def prepare_run_dir(
    out: str | os.PathLike[str],
    run_config_dict: Mapping[str, Any],
    resume: bool,
    ignore_on_resume: Iterable[str] = RESUME_MAY_CHANGE,
    defaults: Mapping[str, Any] | None = None,
) -> Path:
    """Create ``out`` (if needed) and write ``run.json``; returns the run directory.

    * New directory, or one without ``run.json`` → start a new run (``resume`` → RunDirError: there
      is nothing to resume).
    * ``run.json`` present and equal to ``run_config_dict`` up to ``ignore_on_resume`` keys:
      ``resume`` → continue (run.json is rewritten with the new epochs/out/...); not ``resume`` →
      allowed only while the old run has written no metrics, results or ``*.pt`` checkpoints
      (a crash before the first log), else RunDirError.
    * ``run.json`` of a different run → RunDirError naming the differing keys; a key ``run.json``
      lacks (written before rayseq had that setting) at its value in ``defaults`` is no difference.
    """
    run_dir = Path(out)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, not a folder; choose another --out.")
    run_json = run_dir / RUN_JSON
    if run_json.exists():
        old = read_run_json(run_dir)
        diffs = config_differences(old, run_config_dict, ignore_on_resume, defaults)
        if diffs:
            shown = "; ".join(diffs[:5]) + (f"; and {len(diffs) - 5} more" if len(diffs) > 5 else "")
            if resume:
                raise RunDirError(
                    f"cannot resume {run_dir}: its {RUN_JSON} was written by a different config "
                    f"({shown}); resume with the same settings (only {', '.join(ignore_on_resume)} "
                    f"may change) or start a new run with another --out."
                )
            raise RunDirError(
                f"{run_dir} already holds a different run ({RUN_JSON} differs: {shown}); choose "
                f"another --out, or pass --resume with that run's settings to continue it."
            )
        if not resume and _has_progress(run_dir):
            raise RunDirError(
                f"{run_dir} already holds this run, with metrics or checkpoints; pass --resume to "
                "continue it, or choose another --out to start again."
            )
    elif resume:
        raise RunDirError(
            f"--resume given but {run_json} does not exist, so there is no run to resume; point "
            "--out at the run directory to continue, or drop --resume to start a new run."
        )
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunDirError(
            f"cannot create run directory {run_dir} ({err.strerror or err}); choose another --out."
        ) from None
    atomic_write_json(run_json, dict(run_config_dict))
    return run_dir


def write_results(run_dir: str | os.PathLike[str], results: Mapping[str, Any]) -> Path:
    """Write ``RUN_DIR/results.json`` (final BLEU, best epoch, ...) atomically; returns its path."""
    return atomic_write_json(Path(run_dir) / RESULTS_JSON, dict(results))


# ----------------------------------------------------------------------------- checkpoints


def save_checkpoint(algo: Any, run_dir: str | os.PathLike[str], trainer_state: Mapping[str, Any]) -> Path:
    """``algo.save_to_path`` + ``trainer_state`` as ``RUN_DIR/checkpoint``, replacing the previous
    checkpoint only once the new one is complete (a kill at any point leaves one good checkpoint)."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{CHECKPOINT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    algo.save_to_path(str(tmp.resolve()))
    atomic_write_json(tmp / TRAINER_STATE, dict(trainer_state))
    final, old = run_dir / CHECKPOINT_DIR, run_dir / f".{CHECKPOINT_DIR}.old"
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)  # stale: `final` is the last good checkpoint
        os.replace(final, old)
    # else `old` (if any) is the last good checkpoint (a kill between the renames): keep it until `final` exists
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def restore_checkpoint(algo: Any, run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Restore ``algo`` from ``RUN_DIR/checkpoint`` and return its trainer state ({} if none)."""
    run_dir = Path(run_dir)
    ckpt = run_dir / CHECKPOINT_DIR
    if not ckpt.is_dir() and (run_dir / f".{CHECKPOINT_DIR}.old").is_dir():
        ckpt = run_dir / f".{CHECKPOINT_DIR}.old"  # killed between the two renames
    if not ckpt.is_dir():
        return {}
    algo.restore_from_path(str(ckpt.resolve()))
    return json.loads((ckpt / TRAINER_STATE).read_text(encoding="utf-8"))


def has_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    """Whether ``RUN_DIR`` holds a checkpoint to resume from."""
    run_dir = Path(run_dir)
    return (run_dir / CHECKPOINT_DIR).is_dir() or (run_dir / f".{CHECKPOINT_DIR}.old").is_dir()


def read_stages(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``RUN_DIR/stages.json`` ({} when no stage has finished)."""
    path = Path(run_dir) / STAGES_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_stages(run_dir: str | os.PathLike[str], stages: Mapping[str, Any]) -> Path:
    """Record the finished stages (atomically)."""
    return atomic_write_json(Path(run_dir) / STAGES_JSON, dict(stages))


def read_results(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``RUN_DIR/results.json`` as a dict, or None when the run has not finished."""
    path = Path(run_dir) / RESULTS_JSON
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


__all__ = [
    "ACTOR_FILES",
    "BUDGET_KEYS",
    "CHECKPOINT_DIR",
    "METRICS_JSONL",
    "MLE_DIR",
    "STAGES_JSON",
    "TRAINER_STATE",
    "RESULTS_JSON",
    "RESUME_MAY_CHANGE",
    "RUN_JSON",
    "RunDirError",
    "atomic_write_bytes",
    "atomic_write_json",
    "budget_grows",
    "config_differences",
    "flatten_dotted",
    "has_checkpoint",
    "read_results",
    "read_stages",
    "restore_checkpoint",
    "save_checkpoint",
    "write_stages",
    "prepare_run_dir",
    "read_run_json",
    "run_budget",
    "write_results",
]
