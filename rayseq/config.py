"""Typed configuration of one training run: presets, ``key=value`` overrides, YAML files.

A run is described by one :class:`RunConfig`: run-level settings (task, epochs, batch size, how to
validate, where to write), the actor's shape (:class:`ModelConfig`) and the algorithm's own
dataclass config (``MLEConfig``, ``RAMLConfig``, …, found through ``rayseq.registry``).

:func:`build_run_config` layers, last wins::

    defaults (RunConfig / ModelConfig / the algorithm config's own defaults)
      → PRESETS[preset]["*"] → PRESETS[preset][task]
      → --config FILE.yaml → named command-line options (**cli) → key=value overrides

Keys are dotted: run-level fields by name (``epochs``), the actor under ``model.``
(``model.dropout``), the algorithm under ``algo.`` (``algo.lr``). A YAML file holds the same keys,
nested (``algo: {lr: 0.3}``) or dotted. Values are parsed with the field's type.

Run-level fields the algorithm config also has (``SHARED_FIELDS``: ``batch_size``, ``epochs`` →
``max_epochs``, ``valid_beam`` → ``beam_size``, ``max_decode_len``, ``seed``) are set once, at run
level, and copied into the algorithm config; their defaults are the algorithm's own (official)
values, so MLE gets batch 50 and RAML batch 42 without a preset naming them.

Every mistake raises :class:`ConfigError` (a ``ValueError``) with a one-line message naming the key,
the value and where it came from. No ray here.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from rayseq.data.tasks import TASKS as DATA_TASKS
from rayseq.models.seq2seq import Seq2SeqConfig
from rayseq.run_dir import flatten_dotted


class ConfigError(ValueError):
    """A bad training configuration: unknown key, wrong type, value out of range, bad file."""


# ----------------------------------------------------------------------------- dataclasses


@dataclass
class ModelConfig:
    """The actor's shape (``Seq2SeqConfig`` without the vocabulary sizes, which come from the data).

    Defaults are the paper's translation actor (§6.1; IMPLEMENTATION_NOTES "Actor").
    """

    emb_dim: int = 256
    """Source and target embedding size."""
    enc_hidden: int = 128
    """Encoder BiLSTM size per direction (encoder outputs are 2 × this)."""
    dec_hidden: int = 256
    """Decoder LSTM size; must equal 2 × enc_hidden."""
    dropout: float = 0.3
    """Dropout on ``att_out`` before the output layer."""
    input_feeding: bool = False
    """Feed the previous ``att_out`` into the decoder input (Luong et al. 2015; the paper's
    "with input feeding" rows)."""
    init_range: float = 0.1
    """Every parameter is drawn from U(−init_range, init_range)."""

    def __post_init__(self) -> None:
        # Seq2SeqConfig owns the checks (dec_hidden = 2·enc_hidden, dropout in [0, 1), ...).
        self.to_seq2seq(src_vocab_size=1, tgt_vocab_size=1)

    def to_seq2seq(self, src_vocab_size: int, tgt_vocab_size: int, src_feature_dim: int = 0) -> Seq2SeqConfig:
        """The actor's ``Seq2SeqConfig`` for the task's vocabularies (``src_feature_dim`` > 0 and
        ``src_vocab_size`` 0: feature sources, the NIC captioning actor)."""
        return Seq2SeqConfig(
            src_vocab_size=src_vocab_size,
            tgt_vocab_size=tgt_vocab_size,
            src_feature_dim=src_feature_dim,
            **dataclasses.asdict(self),
        )


SHARED_FIELDS: dict[str, str] = {
    "batch_size": "batch_size",
    "epochs": "max_epochs",
    "valid_beam": "beam_size",
    "max_decode_len": "max_decode_len",
    "seed": "seed",
}
"""Run-level field → the algorithm config's field that mirrors it (when the algorithm has it)."""

_MIRRORED_BY: dict[str, str] = {algo_name: run_name for run_name, algo_name in SHARED_FIELDS.items()}
"""Algorithm config field → the run-level field it mirrors."""

RESERVED_KEYS: tuple[str, ...] = ("algo", "task", "preset")
"""Chosen by the command line's own arguments, never by an override or a config file."""


@dataclass
class RunConfig:
    """Everything one training run needs; ``run.json`` is ``to_dict`` of it."""

    algo: str
    """Algorithm name, a key of ``rayseq.registry.ALGORITHMS`` (``mle``, ``raml``, …)."""
    task: str
    """Task name, a key of ``rayseq.data.tasks.TASKS`` (``multi30k``, ``iwslt14``, ``toy``)."""
    preset: str
    """Name of the preset the run started from (a key of ``PRESETS``)."""
    algo_config: Any
    """The algorithm's own dataclass config; its ``SHARED_FIELDS`` equal the run-level values."""
    seed: int = 1234
    """Random seed of the run (model init, batching, sampling)."""
    out: str = ""
    """Run directory; empty → ``runs/{algo}-{task}-{preset}-seed{seed}``."""
    data_dir: str | None = None
    """Folder with one subfolder per task; None: the shipped copy / ``$RAYSEQ_DATA_DIR``."""
    num_learners: int = 0
    """Remote learner processes; 0 = one learner inside the driver process."""
    num_gpus_per_learner: float | None = None
    """GPUs per learner; None = auto (1 if ``torch.cuda.is_available()`` else 0, at run time)."""
    learner_resource: str | None = None
    """A custom Ray resource each remote learner requests (0.001 of it), placing learners on the nodes
    that advertise it: ``accelerator_type:A10G`` (Ray adds it to GPU nodes), or a resource from
    ``ray start --resources`` / a launcher node type's ``resources`` (``gpu_learner`` in
    clusters/local.yaml). Needs ``num_learners >= 1``; None: no constraint."""
    num_rollout_workers: int = 2
    """Remote rollout workers sampling from the actor (RL algorithms); 0 = sample in the driver."""
    envs_per_worker: int = 64
    """Sequences each rollout worker samples in parallel (its vector env's size)."""
    epochs: int = 30
    """Upper limit on training epochs (the algorithm's schedule may stop earlier)."""
    batch_size: int = 50
    """Sources per update (B)."""
    valid_beam: int = 5
    """Beam size for validation and test decoding (1 = greedy)."""
    valid_max_sentences: int | None = None
    """Validate on the first N sentences of the valid split (None = all of it)."""
    max_decode_len: int = 100
    """Max hypothesis length when decoding for evaluation."""
    log_every: int = 100
    """Write training metrics every this many updates."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The actor's shape."""

    def __post_init__(self) -> None:
        if not isinstance(self.algo, str) or not self.algo:
            raise ConfigError(f"RunConfig.algo={self.algo!r}: name a registered algorithm, e.g. 'mle'.")
        if self.task not in DATA_TASKS:
            raise ConfigError(
                f"RunConfig.task={self.task!r}: unknown task{_did_you_mean(str(self.task), DATA_TASKS)}; "
                f"registered tasks: {', '.join(sorted(DATA_TASKS))}."
            )
        if self.preset not in PRESETS:
            raise ConfigError(
                f"RunConfig.preset={self.preset!r}: unknown preset{_did_you_mean(str(self.preset), PRESETS)}; "
                f"presets: {', '.join(PRESETS)}."
            )
        if not isinstance(self.model, ModelConfig):
            raise ConfigError(f"RunConfig.model must be a ModelConfig; got {type(self.model).__name__}.")
        if not dataclasses.is_dataclass(self.algo_config) or isinstance(self.algo_config, type):
            raise ConfigError(
                f"RunConfig.algo_config must be an algorithm config instance (e.g. MLEConfig()); "
                f"got {self.algo_config!r}."
            )
        for name in ("epochs", "batch_size", "valid_beam", "max_decode_len", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"RunConfig.{name}={getattr(self, name)}: must be >= 1.")
        if self.valid_max_sentences is not None and self.valid_max_sentences < 1:
            raise ConfigError(
                f"RunConfig.valid_max_sentences={self.valid_max_sentences}: must be >= 1, or none "
                "for the whole valid split."
            )
        if self.num_learners < 0:
            raise ConfigError(
                f"RunConfig.num_learners={self.num_learners}: must be >= 0 (0 = learner in the driver)."
            )
        if self.num_rollout_workers < 0:
            raise ConfigError(
                f"RunConfig.num_rollout_workers={self.num_rollout_workers}: must be >= 0 (0 = sample in the driver)."
            )
        if self.envs_per_worker < 1:
            raise ConfigError(f"RunConfig.envs_per_worker={self.envs_per_worker}: must be >= 1.")
        if self.learner_resource is not None and (not self.learner_resource.strip() or self.num_learners < 1):
            raise ConfigError(
                f"RunConfig.learner_resource={self.learner_resource!r} with num_learners={self.num_learners}: "
                "name a Ray resource and set num_learners >= 1 (a learner in the driver cannot be placed)."
            )
        if self.num_gpus_per_learner is not None and not (
            math.isfinite(self.num_gpus_per_learner) and self.num_gpus_per_learner >= 0
        ):
            raise ConfigError(
                f"RunConfig.num_gpus_per_learner={self.num_gpus_per_learner}: must be >= 0, or none "
                "for auto."
            )
        if not self.out:
            self.out = default_out(self.algo, self.task, self.preset, self.seed)
        for run_name, algo_name in SHARED_FIELDS.items():
            if hasattr(self.algo_config, algo_name):
                run_value, algo_value = getattr(self, run_name), getattr(self.algo_config, algo_name)
                if run_value != algo_value:
                    cls = type(self.algo_config).__name__
                    raise ConfigError(
                        f"RunConfig.{run_name}={run_value!r} but {cls}.{algo_name}={algo_value!r}: "
                        f"they must match; set {run_name} only (build_run_config copies it)."
                    )

    def custom_resources_per_learner(self) -> dict[str, float]:
        """RLlib's ``custom_resources_per_learner`` for ``learner_resource``."""
        return {} if self.learner_resource is None else {self.learner_resource: 0.001}

    def resolved_num_gpus_per_learner(self) -> float:
        """``num_gpus_per_learner``, with None (auto) resolved on this machine."""
        if self.num_gpus_per_learner is not None:
            return float(self.num_gpus_per_learner)
        import torch

        return 1.0 if torch.cuda.is_available() else 0.0

    def seq2seq_config(self, src_vocab_size: int, tgt_vocab_size: int) -> Seq2SeqConfig:
        """The actor's ``Seq2SeqConfig`` for the task's vocabularies; a captioning task (whose
        source "vocabulary" is empty) gives its image feature size, so the actor is NIC."""
        feature_dim = getattr(DATA_TASKS[self.task], "feature_dim", 0) if src_vocab_size == 0 else 0
        return self.model.to_seq2seq(src_vocab_size, tgt_vocab_size, feature_dim)


def default_out(algo: str, task: str, preset: str, seed: int) -> str:
    """The run directory used when ``out`` is not given."""
    return os.path.join("runs", f"{algo}-{task}-{preset}-seed{seed}")


# ----------------------------------------------------------------------------- presets

_TOY: dict[str, Any] = {
    "epochs": 3,
    "batch_size": 50,
    "valid_beam": 2,  # still exercises beam search, in milliseconds
    "valid_max_sentences": None,  # the whole 200-sentence valid split
    "max_decode_len": 20,  # toy targets have at most 8 symbols
    "log_every": 20,
    "model.emb_dim": 32,
    "model.enc_hidden": 32,
    "model.dec_hidden": 64,
    "model.dropout": 0.1,
    # actor-critic stages: seconds, not minutes (200 pairs / batch 50 = 4 updates per epoch)
    "algo.critic_pretrain_epochs": 2.0,
    "algo.joint_epochs": 2.0,
    "algo.valid_every": 4,
    "algo.beta": 0.05,  # ~120 critic updates: the target critic must follow within them
    "algo.baseline_pretrain_epochs": 2.0,  # MIXER: its baseline b_t pretrained like the critic above
    # VAML: 3 passes of Q-net training (60 updates of 50 references), checked on 200 references
    "algo.qnet_epochs": 3.0,
    "algo.qnet_valid_sentences": 200,
    # swap-ins (RLlib PPO/APPO/SAC): a few small iterations
    "algo.iterations": 4,
    "algo.valid_every_iters": 2,
    "algo.train_batch_size": 200,
    "algo.minibatch_size": 50,
    "algo.num_epochs": 2,
    "algo.rollout_fragment_length": 10,
    "algo.learning_starts": 100,
    "algo.actor_warmup": 100,
    "algo.head_hidden": 32,
}
"""The toy task under every preset: a tiny model, a few epochs; a full run takes seconds."""

PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # The paper's / official code's settings (IMPLEMENTATION_NOTES "Actor", "Algorithms", "Eval").
    # batch_size, epochs and the optimiser come from the algorithm config's own defaults, which
    # are the official values: MLE SGD lr 0.6, batch 50, <= 30 epochs, lr × 0.5 on no improvement,
    # stop after 6 decays; RAML the same with batch 42.
    "paper": {
        "*": {
            "valid_beam": 5,
            "valid_max_sentences": None,
            "max_decode_len": 100,
            "log_every": 100,
            "model.emb_dim": 256,
            "model.enc_hidden": 128,
            "model.dec_hidden": 256,
            "model.dropout": 0.3,
        },
        "toy": _TOY,
        # Captioning (NIC on the Karpathy split): training captions have <= 16 tokens.
        "coco": {"max_decode_len": 20},
    },
    # Sized so a full MLE run on Multi30k takes about 30 minutes on 2 CPU cores: a plain PyTorch
    # loop with the paper's actor needs ~134 s per Multi30k epoch at batch 50 (232 ms/update ×
    # 580 updates) and reached 35.7 BLEU (greedy) after 9 epochs. 10 epochs ≈ 22 min of training;
    # beam-5 validation on the first 500 valid sentences ≈ 15 s/epoch (2.5 min in all); the final
    # test decode, start-up and framework overhead fill the rest. The paper's model size is kept.
    # Algorithms that cost k × an MLE update (RAML: K = 5 sequences per source) take k × as long.
    "cpu": {
        "*": {
            "epochs": 10,
            "valid_beam": 5,
            "valid_max_sentences": 500,
            "max_decode_len": 100,
            "log_every": 50,
            "model.emb_dim": 256,
            "model.enc_hidden": 128,
            "model.dec_hidden": 256,
            "model.dropout": 0.3,
            # Actor-critic stages (the MLE stage is the MLE run above: `epochs` = its epochs).
            # An ERAC update of 50 sampled sentences costs ~1-1.5 s here with its sampling (3.4 x
            # an MLE update on the same batch), so the paper's 20 + 30 epochs would take days:
            # half an epoch of critic pretraining (290 updates, 2 samples per source: 29K
            # episodes) and one epoch of joint training, validated every 100 updates. With so few
            # updates the official Polyak rate 0.001 would leave the target critic near its random
            # initialisation (0.999^290 = 75 % of it), so β = 0.01 (as the reference run used).
            "algo.critic_pretrain_epochs": 0.5,
            "algo.joint_epochs": 1.0,
            "algo.valid_every": 100,
            "algo.beta": 0.01,
            # the critic is scored on held-out samples (500 validation sources) twice in its
            # half epoch; the better of the two starts joint training
            "algo.critic_valid_every": 145,
            "algo.critic_valid_sentences": 500,
        },
        # VAML's Q-net (step 1) on Multi30k: 2 passes (1,160 updates of 50 references × 6
        # trajectories, ~1.07 s each here: 22.5 min measured) instead of the default 5 (~52 min).
        # Measured whole VAML run (Q-net + 10 actor epochs of 605-712 s): 151 min, about 25 of
        # them lost to a CI run sharing the 2 cores.
        "multi30k": {"algo.qnet_epochs": 2.0},
        # IWSLT14 has 5.3 × the pairs of Multi30k, longer sentences and a 3.9 × larger target
        # vocabulary: one epoch is roughly an hour on 2 cores. One epoch is a check, not a result.
        "iwslt14": {"epochs": 1},
        "toy": _TOY,
        # Captioning on 2 CPU cores: 119K restval pairs (2,389 MLE updates of 50 per epoch, 75 ms
        # each here: ~3 min an epoch), NIC with the actor's sizes; validation on the first 500
        # Karpathy-val images, captions <= 20 steps. One epoch, so that the five-algorithm
        # comparison takes about 1.6 h (measured: MLE 3.8, RAML 19.6, VAML 45.9, AC 12.2, ERAC
        # 14.1 min; RAML's and VAML's actor updates cost ~5 x an MLE update). VAML's
        # Q-net: 0.3 of a pass (717 updates, each on 50 captions x 6 corruptions). Actor-critic:
        # 240 critic-pretraining and 480 joint updates (0.1 / 0.2 epoch).
        "coco": {
            "epochs": 1,
            "algo.qnet_epochs": 0.3,
            "valid_max_sentences": 500,
            "max_decode_len": 20,
            "algo.critic_pretrain_epochs": 0.1,
            "algo.joint_epochs": 0.2,
            "algo.valid_every": 100,
        },
    },
    # The README's main job: the whole actor-critic pipeline on Multi30k in about 10 minutes on
    # 2 CPU cores — a 3-epoch MLE stage (~4.5 min), 116 critic-pretraining updates scored on 200
    # held-out sources every 58, and 116 joint updates validated every 58 on 300 sentences. A
    # demonstration of the system, not a result: see the cpu preset for the measured runs.
    "quick": {
        "*": {
            "epochs": 3,
            "valid_beam": 5,
            "valid_max_sentences": 300,
            "max_decode_len": 100,
            "log_every": 20,
            "model.emb_dim": 256,
            "model.enc_hidden": 128,
            "model.dec_hidden": 256,
            "model.dropout": 0.3,
            "algo.critic_pretrain_epochs": 0.2,
            "algo.joint_epochs": 0.2,
            "algo.valid_every": 58,
            "algo.beta": 0.05,
            "algo.critic_valid_every": 58,
            "algo.critic_valid_sentences": 200,
            # 116 critic updates leave the critic far from ready (measured on Multi30k: top-1
            # 0.001, eos margin -1.45: it says "go on" after the whole reference); at the official
            # actor lr 1e-4 the actor then learned long, looping outputs within 58 updates (valid
            # BLEU 27.33 -> 12.95, length ratio 2.12, 41 % loops: a collapse). At 1e-5 it stays near
            # its start (27.33 -> 27.91, length ratio 0.88). Gains need a trained critic.
            "algo.actor_lr": 1e-5,
        },
        "toy": _TOY,
        "coco": {
            "epochs": 1,
            "valid_max_sentences": 300,
            "max_decode_len": 20,
            "algo.critic_pretrain_epochs": 0.02,
            "algo.joint_epochs": 0.04,
            "algo.valid_every": 48,
        },
    },
}
"""Preset name → task (or ``"*"`` for every task) → dotted-key overrides, applied ``"*"`` first."""


# ----------------------------------------------------------------------------- keys and types


@dataclass(frozen=True)
class _Key:
    """One settable key: which section it lives in, its field name and type."""

    section: Literal["run", "model", "algo"]
    name: str
    type: Any


def _hints(cls: type) -> dict[str, Any]:
    """Resolved field annotations of a dataclass (works with ``from __future__ import annotations``)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def _key_table(algo_config_cls: type) -> dict[str, _Key]:
    """Every settable key → where it lives. Mirrored algorithm fields are not keys of their own."""
    if not dataclasses.is_dataclass(algo_config_cls) or not isinstance(algo_config_cls, type):
        raise ConfigError(
            f"algorithm config class {algo_config_cls!r} is not a dataclass; register a typed "
            "dataclass config in rayseq/registry.py."
        )
    table: dict[str, _Key] = {}
    for name, tp in _hints(RunConfig).items():
        if name not in ("model", "algo_config"):
            table[name] = _Key("run", name, tp)
    for name, tp in _hints(ModelConfig).items():
        table[f"model.{name}"] = _Key("model", name, tp)
    mirrored = set(SHARED_FIELDS.values())
    for name, tp in _hints(algo_config_cls).items():
        if name not in mirrored:
            table[f"algo.{name}"] = _Key("algo", name, tp)
    return table


def valid_keys(algo_config_cls: type) -> list[str]:
    """The keys an override or config file may set for this algorithm, sorted."""
    return sorted(k for k in _key_table(algo_config_cls) if k not in RESERVED_KEYS)


def _did_you_mean(word: str, choices: Sequence[str] | Mapping[str, Any]) -> str:
    """``"; did you mean 'x'?"``-style hint, or ``""``."""
    choices = list(choices)
    close = [c for c in choices if c.endswith("." + word)]  # "lr" → "algo.lr"
    close += [c for c in difflib.get_close_matches(word, choices, n=3, cutoff=0.6) if c not in close]
    if not close:
        return ""
    return " (did you mean " + " or ".join(repr(c) for c in close[:3]) + "?)"


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    """``value`` (a string from the command line or a YAML/JSON scalar) as type ``tp``."""

    def bad() -> ConfigError:
        return ConfigError(
            f"{source}: key {key!r} expects {_type_name(tp)}; got {value!r}. Fix the value."
        )

    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            if type(None) in args:
                return None
            raise bad()
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, source)
            except ConfigError:
                continue
        raise bad()
    if value is None:
        raise bad()
    if origin is Literal:
        for choice in typing.get_args(tp):
            if value == choice or (isinstance(value, str) and value == str(choice)):
                return choice
        raise bad()
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value.strip())
            except ValueError:
                raise bad() from None
        else:
            raise bad()
        if math.isnan(result):
            raise bad()
        return result
    if tp is str:
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, str):
            return value
        raise bad()
    # Any other annotation (none exist today): take YAML's reading of a string as is.
    return yaml.safe_load(value) if isinstance(value, str) else value


# ----------------------------------------------------------------------------- layers


class _Builder:
    """A flat ``dotted key → value`` view of a run config being assembled, with provenance."""

    def __init__(self, algo_config_cls: type) -> None:
        self.algo_config_cls = algo_config_cls
        self.table = _key_table(algo_config_cls)
        self.values: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        algo_defaults = _defaults(algo_config_cls)
        run_defaults, model_defaults = _defaults(RunConfig), _defaults(ModelConfig)
        for key, spec in self.table.items():
            if spec.section == "run":
                if spec.name in SHARED_FIELDS and SHARED_FIELDS[spec.name] in algo_defaults:
                    # The algorithm's own (official) value, e.g. RAML's batch 42.
                    self.values[key] = algo_defaults[SHARED_FIELDS[spec.name]]
                elif spec.name in run_defaults:
                    self.values[key] = run_defaults[spec.name]
            elif spec.section == "model":
                self.values[key] = model_defaults[spec.name]
            elif spec.name in algo_defaults:
                self.values[key] = algo_defaults[spec.name]
        self.sources = {k: "default" for k in self.values}

    def set(self, key: str, value: Any, source: str, reserved_ok: bool = False) -> None:
        """Set one dotted key from ``source`` (a description used in error messages)."""
        if not isinstance(key, str) or not key:
            raise ConfigError(f"{source}: empty key; write key=value, e.g. algo.lr=0.3.")
        if key in RESERVED_KEYS and not reserved_ok:
            if value == self.values.get(key):
                return  # a config file that repeats the chosen task / algorithm is fine
            raise ConfigError(
                f"{source}: {key}={value!r} differs from the {key} chosen on the command line "
                f"({self.values.get(key)!r}); {key} is chosen by the command's own argument, not "
                "by an override or config file."
            )
        run_key = _MIRRORED_BY.get(key.removeprefix("algo.")) if key.startswith("algo.") else None
        if run_key is not None and _has_field(self.algo_config_cls, key[5:]):
            raise ConfigError(
                f"{source}: {key} mirrors the run-level key {run_key!r}; set {run_key}={value} instead."
            )
        if key not in self.table:
            raise ConfigError(
                f"{source}: unknown key {key!r}{_did_you_mean(key, self.table)}; {self._valid_hint(key)}"
            )
        self.values[key] = _coerce(value, self.table[key].type, key, source)
        self.sources[key] = source

    def _valid_hint(self, key: str) -> str:
        section = key.split(".", 1)[0] if "." in key else ""
        if section in ("model", "algo"):
            keys = sorted(k for k in self.table if k.startswith(section + "."))
            return f"valid {section} keys: {', '.join(keys)}."
        run_keys = sorted(k for k, s in self.table.items() if s.section == "run" and k not in RESERVED_KEYS)
        return f"valid keys: {', '.join(run_keys)}, model.*, algo.* (see `valid_keys`)."

    def layer(self, mapping: Mapping[str, Any], source: str, skip_foreign_algo_keys: bool = False) -> None:
        """Set every key of ``mapping``. ``skip_foreign_algo_keys`` (presets): ``algo.*`` keys this
        algorithm does not have are skipped (a preset sizes several algorithms at once)."""
        for key, value in mapping.items():
            if skip_foreign_algo_keys and key.startswith("algo.") and key not in self.table and not _has_field(
                self.algo_config_cls, key[5:]
            ):
                continue
            self.set(key, value, source)

    def build(self) -> RunConfig:
        """Construct the dataclasses; their own checks become one-line ``ConfigError``s."""
        missing = [k for k in self.table if k not in self.values and k not in RESERVED_KEYS]
        if missing:
            raise ConfigError(
                f"no value for {', '.join(missing)} (no default); set it, e.g. {missing[0]}=..."
            )
        run = {s.name: self.values[k] for k, s in self.table.items() if s.section == "run"}
        model_kw = {s.name: self.values[k] for k, s in self.table.items() if s.section == "model"}
        algo_kw = {s.name: self.values[k] for k, s in self.table.items() if s.section == "algo"}
        for run_name, algo_name in SHARED_FIELDS.items():
            if _has_field(self.algo_config_cls, algo_name):
                algo_kw[algo_name] = run[run_name]
        model = self._construct(ModelConfig, model_kw, "model")
        algo_config = self._construct(self.algo_config_cls, algo_kw, "algo")
        return self._construct(
            RunConfig, {**run, "model": model, "algo_config": algo_config}, "run"
        )

    def _construct(self, cls: type, kwargs: dict[str, Any], section: str) -> Any:
        try:
            return cls(**kwargs)
        except (ValueError, TypeError) as err:
            text = " ".join(str(err).split())
            # field name → the dotted key a user sets it with (mirrored fields: the run-level key)
            if section == "algo":
                names = {k: _MIRRORED_BY.get(k, f"algo.{k}") for k in kwargs}
            elif section == "model":
                names = {k: f"model.{k}" for k in kwargs}
            else:
                names = {k: k for k in kwargs if k not in ("model", "algo_config")}
            blamed = [
                f"{key} from {self.sources[key]}"
                for name, key in names.items()
                if re.search(rf"\b{re.escape(name)}\b", text) and self.sources.get(key, "default") != "default"
            ]
            where = f" [{'; '.join(blamed)}]" if blamed else ""
            raise ConfigError(f"invalid configuration: {text}{where}; fix the value and run again.") from None


def _has_field(cls: type, name: str) -> bool:
    """Whether dataclass ``cls`` has an init field ``name``."""
    return any(f.name == name and f.init for f in dataclasses.fields(cls))


def _defaults(cls: type) -> dict[str, Any]:
    """Field name → default value (calling default factories) for fields that have one."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def parse_override(item: str) -> tuple[str, str]:
    """``"algo.lr=0.3"`` → ``("algo.lr", "0.3")``; ConfigError if it is not ``key=value``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override {item!r} is not key=value; write e.g. algo.lr=0.3 or model.dropout=0.2."
        )
    return key.strip(), value


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML (or JSON) config file into dotted keys; ConfigError naming the file otherwise."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found; check the --config path.") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path}: cannot read it ({err}).") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"config file {path}: invalid YAML{at}: {' '.join(str(problem).split())}.") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"config file {path}: expected a mapping of keys (e.g. `epochs: 5` / `algo: {{lr: 0.3}}`); "
            f"got a {type(data).__name__}."
        )
    bad = [k for k in _flatten_keys(data) if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config file {path}: key {bad[0]!r} is not a string; keys are names like epochs.")
    return flatten_dotted(data)


def _flatten_keys(mapping: Mapping[Any, Any]) -> list[Any]:
    keys: list[Any] = []
    for key, value in mapping.items():
        keys.append(key)
        if isinstance(value, Mapping):
            keys.extend(_flatten_keys(value))
    return keys


# ----------------------------------------------------------------------------- public API


def _finish(b: "_Builder", cli: Mapping[str, Any], overrides: Sequence[str]) -> RunConfig:
    """Apply named options (None = not given), then ``key=value`` overrides, and build."""
    for key, value in cli.items():
        if value is not None:
            b.set(key, value, f"option {key}")
    for item in overrides:
        key, value = parse_override(item)
        b.set(key, value, f"override {item!r}")
    return b.build()


def build_run_config(
    algo: str,
    algo_config_cls: type,
    preset: str,
    task: str,
    overrides: Sequence[str] = (),
    config_file: str | os.PathLike[str] | None = None,
    **cli: Any,
) -> RunConfig:
    """The run config for ``algo`` on ``task`` from ``preset``, a config file, options and overrides.

    ``cli``: run-level fields given as named command-line options (``seed=3``, ``out="runs/x"``,
    ``num_learners=2``, …); None values are ignored (option not given). ``overrides``: ``key=value``
    strings, applied last. ConfigError (one line) on any mistake.
    """
    if preset not in PRESETS:
        raise ConfigError(
            f"unknown preset {preset!r}{_did_you_mean(preset, PRESETS)}; presets: {', '.join(PRESETS)}."
        )
    if task not in DATA_TASKS:
        raise ConfigError(
            f"unknown task {task!r}{_did_you_mean(task, DATA_TASKS)}; tasks: {', '.join(sorted(DATA_TASKS))}."
        )
    b = _Builder(algo_config_cls)
    b.set("algo", algo, "the algorithm argument", reserved_ok=True)
    b.set("task", task, "the task argument", reserved_ok=True)
    b.set("preset", preset, "the preset argument", reserved_ok=True)
    b.layer(PRESETS[preset].get("*", {}), f"preset {preset!r}", skip_foreign_algo_keys=True)
    b.layer(PRESETS[preset].get(task, {}), f"preset {preset!r} for task {task!r}", skip_foreign_algo_keys=True)
    if config_file is not None:
        b.layer(load_config_file(config_file), f"config file {os.fspath(config_file)}")
    return _finish(b, cli, overrides)


def apply_overrides(
    run_config: RunConfig, overrides: Sequence[str] = (), **cli: Any
) -> RunConfig:
    """A copy of ``run_config`` with ``cli`` options and ``key=value`` overrides applied (e.g. on resume)."""
    algo_config_cls = type(run_config.algo_config)
    b = _Builder(algo_config_cls)
    for key, value in _flat_from_dict(to_dict(run_config)).items():
        if key.startswith("algo.") and key[5:] in _MIRRORED_BY:
            continue  # mirrored; copied again from the run-level value
        b.set(key, value, "the existing run config", reserved_ok=True)
    return _finish(b, cli, overrides)


def to_dict(run_config: RunConfig) -> dict[str, Any]:
    """JSON-safe nested dict (``run.json``): run-level keys, ``model``, ``algo_config``."""
    return dataclasses.asdict(run_config)


def field_defaults(run_config: RunConfig) -> dict[str, Any]:
    """Dotted ``run.json`` key → the default of that field (run-level, ``model.*``,
    ``algo_config.*``; fields with a plain default only): what a run written before the field
    existed did (``rayseq.run_dir.prepare_run_dir`` resumes such a run)."""
    out: dict[str, Any] = {}
    for prefix, obj in (("", run_config), ("model.", run_config.model), ("algo_config.", run_config.algo_config)):
        for f in dataclasses.fields(obj):
            if f.default is not dataclasses.MISSING:
                out[prefix + f.name] = f.default
    return out


def _flat_from_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        if key == "algo_config" and isinstance(value, Mapping):
            flat.update({f"algo.{k}": v for k, v in value.items()})
        elif key == "model" and isinstance(value, Mapping):
            flat.update({f"model.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def from_dict(d: Mapping[str, Any], algo_config_cls: type, source: str = "run config") -> RunConfig:
    """Inverse of :func:`to_dict`; ``source`` (e.g. the run.json path) names it in errors."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{source}: expected a JSON object; got a {type(d).__name__}.")
    for section in ("model", "algo_config"):
        if section in d and not isinstance(d[section], Mapping):
            raise ConfigError(f"{source}: key {section!r} must be an object; got {d[section]!r}.")
    b = _Builder(algo_config_cls)
    required = ("algo", "task", "preset")
    absent = [k for k in required if k not in d]
    if absent:
        raise ConfigError(f"{source}: missing key {absent[0]!r}; it is not a run config written by to_dict.")
    flat = _flat_from_dict(d)
    mirrored = {f"algo.{a}": r for a, r in _MIRRORED_BY.items() if _has_field(algo_config_cls, a)}
    for key, value in flat.items():
        if key in mirrored:
            continue  # checked against the run-level value below
        b.set(key, value, source, reserved_ok=True)
    for key, run_key in mirrored.items():
        if key in flat and flat[key] != b.values.get(run_key):
            raise ConfigError(
                f"{source}: {key}={flat[key]!r} differs from {run_key}={b.values.get(run_key)!r}; "
                f"they must be equal (edit {run_key} and {key} together)."
            )
    return b.build()


__all__ = [
    "ConfigError",
    "ModelConfig",
    "PRESETS",
    "RESERVED_KEYS",
    "RunConfig",
    "SHARED_FIELDS",
    "apply_overrides",
    "build_run_config",
    "default_out",
    "from_dict",
    "load_config_file",
    "parse_override",
    "field_defaults",
    "to_dict",
    "valid_keys",
]
