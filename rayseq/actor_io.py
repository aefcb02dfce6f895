"""The actor file every algorithm writes, and the run directory that holds it.

An actor file is one ``torch.save`` of a plain dict (no pickled classes, so it loads with
``torch.load(weights_only=True)``)::

    {"format": "rayseq-actor/1",
     "model_config": dataclasses.asdict(Seq2SeqConfig),
     "state_dict": {name: CPU tensor},
     "src_itos": [source tokens, index = id],
     "tgt_itos": [target tokens, index = id],
     "meta": {JSON-compatible: algo, step, bleu/valid, ...}}

It is written atomically (a temp file in the same folder, fsync, ``os.replace``): a reader, or a
kill mid-write, sees the previous file or the whole new one, never half of one.

A run directory (its layout: ``rayseq.run_dir``) holds
``run.json`` (``{"task", "data_dir", "algo", ...}``) and the actor files ``actor_best.pt`` and
``actor_latest.pt``; :func:`read_run_info` and :func:`resolve_actor` read it.

Plain torch; no ray.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rayseq.data.atomic import atomic_write
from rayseq.data.coco import FeatureSourceVocab
from rayseq.data.errors import DataError
from rayseq.data.vocab import Vocab
from rayseq.models.seq2seq import Seq2Seq, Seq2SeqConfig
from rayseq.run_dir import ACTOR_FILES, RUN_JSON, RunDirError, read_run_json

ACTOR_FORMAT = "rayseq-actor/1"
"""Value of the ``format`` key; bump the number when the layout changes."""


_KEYS = ("format", "model_config", "state_dict", "src_itos", "tgt_itos", "meta")

PathLike = str | os.PathLike[str]


@dataclass
class LoadedActor:
    """An actor read back by :func:`load_actor`."""

    model: Seq2Seq
    """The model, in eval mode (dropout off), on the requested device."""
    src_vocab: Vocab
    """Source vocabulary the model was trained with."""
    tgt_vocab: Vocab
    """Target vocabulary; ``tgt_vocab.itos[i]`` is the token of output id i."""
    meta: dict[str, Any]
    """What the trainer stored (algo, step, validation BLEU, ...)."""
    path: Path | None = None
    """The file it was read from."""


@dataclass
class RunInfo:
    """The contents of a run directory's ``run.json``."""

    task: str
    """Registered task name (``rayseq.data.tasks.TASKS``), e.g. ``multi30k``."""
    data_dir: str | None
    """Data directory the run was trained on (None: the shipped copy / ``$RAYSEQ_DATA_DIR``)."""
    algo: str | None
    """Algorithm that trained the run (``mle``, ``erac``, ...); None when not recorded."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Every other key of ``run.json``."""


# ---------------------------------------------------------------------------- actor files


def _jsonable(value: Any, key: str) -> Any:
    """``value`` as JSON-compatible data (numpy/torch scalars -> numbers, paths -> str)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, (np.generic, torch.Tensor)) and value.ndim == 0:
        return _jsonable(value.item(), key)
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _jsonable(value.tolist(), key)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{key}[{i}]") for i, v in enumerate(value)]
    raise DataError(
        f"save_actor: {key} is a {type(value).__name__}; meta must hold JSON-like values "
        f"(numbers, strings, lists, dicts). Convert it, e.g. to str."
    )


def save_actor(
    path: PathLike,
    model: Seq2Seq,
    src_vocab: Vocab,
    tgt_vocab: Vocab,
    meta: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` with its vocabularies and ``meta`` to ``path`` atomically.

    ``meta`` must be JSON-like (numpy/torch scalars are converted). The state dict is copied to
    the CPU, so the file loads on any device.
    """
    cfg = model.cfg
    if len(src_vocab) != cfg.src_vocab_size or len(tgt_vocab) != cfg.tgt_vocab_size:
        raise DataError(
            f"save_actor({os.fspath(path)}): vocab sizes (src {len(src_vocab)}, tgt {len(tgt_vocab)}) "
            f"differ from the model's (src {cfg.src_vocab_size}, tgt {cfg.tgt_vocab_size}); pass "
            f"the vocabularies the model was built with."
        )
    payload = {
        "format": ACTOR_FORMAT,
        "model_config": dataclasses.asdict(cfg),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "src_itos": list(src_vocab.itos),
        "tgt_itos": list(tgt_vocab.itos),
        "meta": _jsonable(dict(meta or {}), "meta"),
    }
    atomic_write(path, lambda f: torch.save(payload, f))


def _describe(obj: Any) -> str:
    """What a torch file holds, for an error message."""
    if isinstance(obj, dict):
        keys = list(obj)
        if keys and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return f"a bare state_dict ({len(keys)} tensors, e.g. {keys[0]!r}), not an actor file"
        shown = ", ".join(repr(k) for k in keys[:8]) + (", ..." if len(keys) > 8 else "")
        return f"a dict with keys [{shown}]"
    return f"a {type(obj).__name__}"


def load_actor(path: PathLike, device: str | torch.device = "cpu") -> LoadedActor:
    """Read an actor file written by :func:`save_actor`; the model is in eval mode on ``device``.

    Raises DataError, naming ``path``, for a missing file, a file that is not a rayseq actor
    (saying what it holds), and vocabularies or weights that do not fit the stored config.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not an actor file" if path.is_dir() else "not found"
        raise DataError(
            f"{path}: {what}. Pass an actor file written by training (e.g. RUN_DIR/actor_best.pt)."
        )
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # torch raises several unrelated types for non-torch files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{path}: not a rayseq actor file: torch.load failed ({first[:200]}). Pass a file "
            f"written by rayseq training (RUN_DIR/actor_best.pt or actor_latest.pt)."
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != ACTOR_FORMAT:
        if isinstance(obj, dict) and isinstance(obj.get("format"), str) and obj["format"].startswith("rayseq-actor/"):
            found = f"format {obj['format']!r}, which this rayseq version cannot read (upgrade rayseq)"
        else:
            found = _describe(obj)
        raise DataError(f"{path}: not a rayseq actor file ({ACTOR_FORMAT!r}); found {found}.")
    missing = [k for k in _KEYS if k not in obj]
    if missing:
        raise DataError(f"{path}: actor file is missing {', '.join(missing)}; it is damaged, save it again.")

    try:
        cfg = Seq2SeqConfig(**obj["model_config"])
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: model_config {obj['model_config']!r} is not a valid Seq2SeqConfig ({e}).") from None
    try:
        src_vocab = FeatureSourceVocab() if cfg.src_feature_dim > 0 else Vocab(obj["src_itos"])  # captioning: no source vocab
        tgt_vocab = Vocab(obj["tgt_itos"])
    except DataError as e:
        raise DataError(f"{path}: bad vocabulary in actor file: {e}") from None
    for side, vocab, size in (("src", src_vocab, cfg.src_vocab_size), ("tgt", tgt_vocab, cfg.tgt_vocab_size)):
        if len(vocab) != size:
            raise DataError(
                f"{path}: {side}_itos has {len(vocab)} tokens but model_config.{side}_vocab_size is "
                f"{size}; the file is inconsistent, save it again from the trained model."
            )

    model = Seq2Seq(cfg)
    try:
        model.load_state_dict(obj["state_dict"], strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        raise DataError(
            f"{path}: state_dict does not fit model_config ({detail[:400]}). The file is "
            f"inconsistent; save it again from the trained model."
        ) from None
    model.to(device).eval()
    return LoadedActor(model=model, src_vocab=src_vocab, tgt_vocab=tgt_vocab, meta=dict(obj["meta"]), path=path)


# ---------------------------------------------------------------------------- run directories


def _check_run_dir(run_dir: PathLike) -> Path:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        what = "is a file, not a folder" if run_dir.exists() else "not found"
        raise DataError(
            f"{run_dir}: run directory {what}. Pass the folder a training run wrote "
            f"(`rayseq train ...` creates one)."
        )
    return run_dir


def read_run_info(run_dir: PathLike) -> RunInfo:
    """Parse ``RUN_DIR/run.json``; DataError naming the file and the bad key."""
    path = _check_run_dir(run_dir) / RUN_JSON
    if not path.is_file():
        raise DataError(
            f"{path}: not found; is {run_dir} a rayseq run directory? Train one with "
            f"`rayseq train ...`, or write {RUN_JSON} with at least {{\"task\": \"multi30k\"}}."
        )
    try:
        data = read_run_json(path.parent)
    except RunDirError as e:
        raise DataError(str(e)) from None
    task = data.get("task")
    if not isinstance(task, str) or not task:
        raise DataError(f"{path}: key \"task\" is {task!r}; it must name a task, e.g. \"multi30k\".")
    data_dir = data.get("data_dir")
    if data_dir is not None and not isinstance(data_dir, str):
        raise DataError(f"{path}: key \"data_dir\" is {data_dir!r}; use a path string or null.")
    algo = data.get("algo")
    extra = {k: v for k, v in data.items() if k not in ("task", "data_dir", "algo")}
    return RunInfo(task=task, data_dir=data_dir, algo=None if algo is None else str(algo), extra=extra)


def resolve_actor(run_dir: PathLike, which: str = "best") -> Path:
    """Path of ``RUN_DIR/actor_{which}.pt`` (``which``: ``best`` or ``latest``); DataError if absent."""
    if which not in ACTOR_FILES:
        raise DataError(f"which={which!r}: choose one of {', '.join(ACTOR_FILES)}.")
    run_dir = _check_run_dir(run_dir)
    path = run_dir / ACTOR_FILES[which]
    if path.is_file():
        return path
    others = [w for w, name in ACTOR_FILES.items() if w != which and (run_dir / name).is_file()]
    if others:
        hint = f"it has {ACTOR_FILES[others[0]]}: use --which {others[0]}."
    elif (run_dir / RUN_JSON).is_file():
        hint = "the run has not saved an actor yet (wait for the first validation) or was moved."
    else:
        hint = "is it a rayseq run directory? Train one with `rayseq train ...`."
    raise DataError(f"{run_dir} has no {ACTOR_FILES[which]}; {hint}")


# ---------------------------------------------------------------------------- critic files

CRITIC_FORMAT = "rayseq-critic/1"
"""Format tag of a critic file (``critic_best.pt``: the critic joint training starts from)."""

CRITIC_FILE = "critic_best.pt"
"""The best pretrained critic of an actor-critic run (its held-out TD error was lowest)."""

QNET_FORMAT = "rayseq-qnet/1"
"""Format tag of VAML's Q-net file (the critic's shape; Q of Eq. 16 instead of the actor's Q^π)."""

QNET_FILE = "qnet.pt"
"""The Q-net a VAML run trained (the best by held-out Eq. 16 error) or used (``algo.qnet_init``)."""


def _own_tensor(value: Any) -> torch.Tensor:
    """A CPU tensor that owns its memory: a tensor cloned, an array copied (Ray hands read-only arrays)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()
    return torch.from_numpy(np.array(value, copy=True))


def save_critic_file(path: PathLike, state_dict: dict[str, Any], critic_config: dict[str, Any], meta: dict[str, Any],
                     fmt: str = CRITIC_FORMAT) -> Path:
    """``{"format", "critic_config", "state_dict", "meta"}`` as one ``torch.save``, written atomically
    (a critic of an actor-critic run, or VAML's Q-net with its own ``fmt``)."""
    payload = {"format": fmt, "critic_config": dict(critic_config),
               "state_dict": {k: _own_tensor(v) for k, v in state_dict.items()},
               "meta": _jsonable(meta, "meta")}
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_critic_file(path: PathLike, fmt: str | tuple[str, ...] = CRITIC_FORMAT) -> dict[str, Any]:
    """The dict :func:`save_critic_file` wrote (in ``fmt``, or one of them); DataError naming the
    file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such critic file; train the run (it writes {CRITIC_FILE} after critic pretraining).")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 — any unreadable file is the user's to fix
        raise DataError(f"{path}: not a readable critic file ({err}).") from None
    formats = (fmt,) if isinstance(fmt, str) else tuple(fmt)
    if not isinstance(obj, dict) or obj.get("format") not in formats:
        raise DataError(f"{path}: not a {' or '.join(formats)} file "
                        f"(format {obj.get('format') if isinstance(obj, dict) else None!r}).")
    return obj


def critic_shape_diffs(have: dict[str, Any], want: dict[str, Any]) -> list[str]:
    """``"key: file X vs run Y"`` for every field of the network shape ``want`` (``asdict(CriticConfig)``)
    that a critic or Q-net file's ``critic_config`` ``have`` does not match."""
    return [f"{k}: file {have.get(k)!r} vs run {v!r}" for k, v in want.items() if have.get(k) != v]


def find_q_file(spec: PathLike, key: str) -> Path:
    """The critic (``critic_best.pt``) or VAML Q-net (``qnet.pt``) file ``spec`` names, itself or
    in the run dir it names; DataError naming the setting ``key`` when there is none."""
    path = Path(spec)
    if path.is_dir():
        found = [path / name for name in (CRITIC_FILE, QNET_FILE) if (path / name).is_file()]
        if not found:
            raise DataError(f"{key}={spec}: the directory holds neither {CRITIC_FILE} nor {QNET_FILE}; name an "
                            f"actor-critic run (after critic pretraining) or a VAML run, or one of those files.")
        path = found[0]
    if not path.is_file():
        raise DataError(f"{key}={spec}: no such file; name a {CRITIC_FILE} or {QNET_FILE}, or the run dir holding it.")
    return path


def load_q_weights(spec: PathLike, want: dict[str, Any], key: str) -> dict[str, Any]:
    """The file :func:`save_critic_file` wrote for a critic or a VAML Q-net (:func:`find_q_file`),
    checked against the shape ``want`` (``asdict(CriticConfig)``) of the run that reads it; ``key``
    names the setting in errors."""
    path = find_q_file(spec, key)
    try:
        obj = load_critic_file(path, (CRITIC_FORMAT, QNET_FORMAT))
    except DataError as err:
        raise DataError(f"{key}={err}") from None
    diffs = critic_shape_diffs(obj.get("critic_config", {}), want)
    if diffs:
        raise DataError(f"{key}={path}: its network does not fit this run ({'; '.join(diffs)}); use one trained "
                        f"with the same task and model settings.")
    return obj
