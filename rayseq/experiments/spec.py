"""What an experiment runs: arms (an algorithm with settings of its own) × seeds, and the trials
they expand to.

An :class:`ExperimentConfig` names a task, a preset and its **arms**; every arm runs once per seed.
:func:`trial_specs` expands it into two phases of :class:`TrialSpec`:

1. ``mle`` — one MLE run per seed (``OUT/mle-seedS``; with ``shared_mle`` one, of the first seed),
   trained when ``mle`` is an arm or any arm's algorithm starts from an MLE actor
   (AC, ERAC, the swap-ins, SCST, MIXER; and arms marked ``from_mle``, e.g. "MLE continued");
2. ``main`` — every other arm × seed (``OUT/ALGO[-SETTING]-seedS``); one that starts from an MLE
   actor gets the best actor of its seed's MLE run as ``algo.actor_init``, so all start equal.

A trial spec is plain data (it travels inside Tune's trial config and comes back on restore). No ray.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

MLE = "mle"
"""The algorithm of phase 1 (and the ``mle`` arm)."""

SHARED_INIT_KEYS = ("algo.critic_init=", "algo.qnet_init=")
"""Overrides that hand a run another run's network (``TrialSpec.depends_on``)."""

PHASE_MLE, PHASE_CRITIC, PHASE_MAIN = "mle", "critic", "main"
"""The Tune experiments of an experiment, in order (``OUT/tune/mle``, ``OUT/tune/critic`` with
``shared_critic``, ``OUT/tune/main``)."""

JOINT_ONLY_FIELDS: frozenset[str] = frozenset({
    "tau", "critic_tau", "lambda_mle", "actor_lr", "critic_lr", "adam_betas", "critic_init", "fresh_joint_optimizers",
    "joint_epochs", "valid_every", "collapse_margin", "actor_lr_decay", "max_lr_decays", "samples_per_source",
    "sample_len_slack", "normalize_logpi_l2", "actor_support", "seed", "mle_epochs", "target_entropy", "tau_lr",
    "tau_anneal_updates",
})
"""Actor-critic settings that critic pretraining does not read (the critic target's τ enters as
``target_tau``): runs that differ only in these can share one pretrained critic."""


@dataclass(frozen=True)
class Arm:
    """One row of an experiment: an algorithm, optionally with settings of its own."""

    algo: str
    """A registered algorithm (``rayseq.registry.ALGORITHMS``)."""
    setting: str = ""
    """The setting's label, e.g. ``beta=0.01,lambda_var=0`` (empty: the algorithm as configured)."""
    overrides: tuple[str, ...] = ()
    """``key=value`` overrides of this arm, applied after the experiment's own."""
    from_mle: bool = False
    """Fine-tune: start from the experiment's MLE actor (``algo.actor_init``), as "MLE continued" and
    RAML / VAML from MLE do. Algorithms with an RL stage (:func:`needs_mle_actor`) always do."""

    @property
    def label(self) -> str:
        """Its name in tables and plots: ``erac`` or ``erac (tau=0.1)``."""
        return f"{self.algo} ({self.setting})" if self.setting else self.algo

    @property
    def slug(self) -> str:
        """Its name in run directories and Tune trial names: ``erac`` or ``erac-tau0.1``."""
        if not self.setting:
            return self.algo
        setting = re.sub(r"[^A-Za-z0-9._-]+", "-", self.setting.replace("=", "")).strip("-")
        return f"{self.algo}-{setting}"


@dataclass
class ExperimentConfig:
    """One experiment: arms × seeds on one task, run as Tune trials."""

    task: str
    """The task every run trains on (``rayseq.data.tasks.TASKS``)."""
    arms: list[Arm]
    """What runs, in table order (see :class:`Arm`); ``ExperimentConfig.for_algos`` makes one per algorithm."""
    seeds: int = 1
    """Seeds per arm: ``base_seed``, ``base_seed + 1``, …"""
    preset: str = "cpu"
    """The preset of every run."""
    out: str = ""
    """Directory of the experiment (default ``runs/NAME-TASK-PRESET``); runs, Tune folder and tables go there."""
    overrides: list[str] = field(default_factory=list)
    """``key=value`` for every run (``algo.*`` keys only where the algorithm has them), or
    ``ALGO:key=value`` for one algorithm."""
    base_seed: int = 1234
    """The first seed."""
    data_dir: str | None = None
    """The task's data dir (IWSLT14, COCO)."""
    address: str | None = None
    """The Ray cluster to run the trials on (default ``$RAY_ADDRESS``, else a private in-process Ray)."""
    report_only: bool = False
    """Train nothing: tabulate what the Tune experiments in ``out`` hold; the rest shows as not run."""
    max_concurrent: int | None = None
    """At most this many trials at once (default: as many as the cluster's resources allow)."""
    retry_errored: bool = False
    """On restore, run errored trials again (from their last checkpoint) instead of keeping their errors."""
    trial_resources: dict[str, float] = field(default_factory=dict)
    """Extra Ray resources each trial's driver asks for, e.g. ``{"node_a": 1}`` to pin trials to nodes."""
    name: str = "compare"
    """The experiment's name (default output folder, titles)."""
    shared_mle: bool = False
    """One MLE run (``base_seed``) that every seed's RL runs start from: the seeds then measure the
    RL stage's spread alone, and the MLE phase costs one run instead of one per seed."""
    shared_critic: bool = False
    """With ``shared_mle``: one critic pretraining per distinct critic setting (``critic_setting``:
    AC and ERAC w/o future entropy share the τ = 0 critic, ERAC and its Eq. 20 variant the τ > 0
    one), run once (``OUT/critic-ALGO-seedS``, the first seed) in a phase of its own; every seed's
    run of that setting starts joint training from it (``algo.critic_init``)."""

    shared_qnet: bool = False
    """One VAML step 1 (the Q-net, ``algo.qnet_only``) per distinct Q-net setting (``qnet_setting``),
    run once (``OUT/qnet-ALGO-seedS``, the first seed) in the ``mle`` phase, beside the MLE runs;
    every seed's VAML run of that setting trains its actor with it (``algo.qnet_init``). The Q-net
    reads the corrupted references only, not the actor, so it needs no MLE actor and sharing it
    changes no run's step 2."""

    def __post_init__(self) -> None:
        from rayseq.data.tasks import TASKS
        from rayseq.registry import ALGORITHMS

        if not self.arms:
            raise ValueError(f"{self.name}: nothing to run; name registered algorithms, e.g. --algos mle,raml,erac.")
        unknown = sorted({a.algo for a in self.arms if a.algo not in ALGORITHMS})
        if unknown:
            raise ValueError(f"{self.name}: unknown algorithm(s) {', '.join(unknown)}; registered: {', '.join(sorted(ALGORITHMS))}.")
        slugs = [a.slug for a in self.arms]
        if len(set(slugs)) != len(slugs):
            raise ValueError(f"{self.name}: --algos {','.join(slugs)} names an algorithm (setting) twice.")
        if self.task not in TASKS:
            raise ValueError(f"{self.name}: unknown task {self.task!r}; tasks: {', '.join(sorted(TASKS))}.")
        if self.seeds < 1:
            raise ValueError(f"{self.name}: --seeds {self.seeds}: must be >= 1.")
        if self.max_concurrent is not None and self.max_concurrent < 1:
            raise ValueError(f"{self.name}: --max-concurrent {self.max_concurrent}: must be >= 1 (or left out: no limit).")
        for item in self.overrides:
            if "=" not in item:
                raise ValueError(f"{self.name}: override {item!r} is not key=value (or ALGO:key=value).")
            scope = item.split("=", 1)[0].split(":", 1)
            if len(scope) == 2 and scope[0] not in ALGORITHMS:
                raise ValueError(f"{self.name}: override {item!r} is for {scope[0]!r}, which is not a registered algorithm.")
        for name, amount in self.trial_resources.items():
            if not name or not amount > 0:
                raise ValueError(f"{self.name}: trial resource {name}={amount}: name a Ray resource and a positive amount, e.g. node_a=1.")
        if self.shared_critic and not self.shared_mle:
            raise ValueError(f"{self.name}: --shared-critic needs --shared-mle (a critic is pretrained against one start actor).")
        if not self.out:
            self.out = str(Path("runs") / f"{self.name}-{self.task}-{self.preset}")

    @classmethod
    def for_algos(cls, task: str, algos: list[str], **kwargs: Any) -> ExperimentConfig:
        """The ``rayseq compare`` experiment: one arm per algorithm, as configured."""
        return cls(task=task, arms=[Arm(a) for a in algos], **kwargs)

    @property
    def seed_list(self) -> list[int]:
        return [self.base_seed + i for i in range(self.seeds)]

    @property
    def labels(self) -> list[str]:
        """The arms' labels, in table order."""
        return [a.label for a in self.arms]


@dataclass
class TrialSpec:
    """One Tune trial: one training run. Plain data (Tune's trial config holds ``asdict`` of it)."""

    key: str
    """Unique in the experiment: the run directory's name and the Tune trial's name."""
    phase: str
    """``mle`` or ``main``."""
    algo: str
    label: str
    """The arm's label (table row)."""
    setting: str
    seed: int
    task: str
    preset: str
    data_dir: str | None
    overrides: list[str]
    """Every ``key=value`` of the run, in order (experiment, algorithm, arm, seed, actor_init)."""
    run_dir: str
    """Absolute: trials run in other processes and other working directories."""
    mle_run_dir: str | None = None
    """The MLE run this one starts from (phase ``main``, algorithms with ``actor_init``)."""
    actor_init: str | None = None
    """The best actor of ``mle_run_dir``, passed as ``algo.actor_init``."""
    bundles: list[dict[str, float]] = field(default_factory=list)
    """Ray resources of the trial: its driver first, then learners and rollout workers
    (``rayseq.experiments.resources.trial_bundles``)."""

    def depends_on(self) -> list[str]:
        """The run dirs of the experiment's earlier runs this one starts from: its MLE run, and the
        shared critic or Q-net it is given (``algo.critic_init`` / ``algo.qnet_init``)."""
        deps = [self.mle_run_dir] if self.mle_run_dir else []
        return deps + [o.split("=", 1)[1] for o in self.overrides if o.startswith(SHARED_INIT_KEYS)]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def needs_mle_actor(algo: str) -> bool:
    """Whether ``algo`` always starts from an MLE actor: its config has ``actor_init`` and it is not a
    supervised algorithm (MLE, RAML, VAML train from scratch unless an arm says ``from_mle``)."""
    from rayseq.algorithms.mle import SupervisedConfig
    from rayseq.registry import get_algorithm

    cls = get_algorithm(algo).config_cls
    return any(f.name == "actor_init" for f in fields(cls)) and not issubclass(cls, SupervisedConfig)


def starts_from_mle(arm: Arm) -> bool:
    """Whether ``arm``'s runs get the MLE phase's actor as ``algo.actor_init``."""
    return arm.from_mle or needs_mle_actor(arm.algo)


def overrides_for(cfg: ExperimentConfig, algo: str) -> list[str]:
    """The experiment's overrides that apply to ``algo``: its own ``ALGO:`` ones and the shared
    ones it has (an ``algo.*`` key the algorithm lacks is left out)."""
    from rayseq.config import valid_keys
    from rayseq.registry import get_algorithm

    keys = set(valid_keys(get_algorithm(algo).config_cls))
    out = []
    for item in cfg.overrides:
        key, _, value = item.partition("=")
        scope, sep, key_only = key.partition(":")
        if sep:
            if scope == algo:
                out.append(f"{key_only}={value}")
        elif not key.startswith("algo.") or key in keys:
            out.append(item)
    return out


def critic_setting(cfg: ExperimentConfig, arm: Arm) -> str | None:
    """What ``arm``'s critic pretraining depends on, as a canonical string (None: its algorithm has
    no critic stage): the run config less ``JOINT_ONLY_FIELDS``, the algorithm's name and the run's
    own paths, with the critic target's τ."""
    import json
    from dataclasses import asdict as as_dict

    from rayseq.algorithms.erac import ERACConfig
    from rayseq.config import build_run_config, to_dict
    from rayseq.registry import get_algorithm

    cls = get_algorithm(arm.algo).config_cls
    if not issubclass(cls, ERACConfig):
        return None
    run = build_run_config(arm.algo, cls, cfg.preset, cfg.task, overrides_for(cfg, arm.algo) + list(arm.overrides))
    algo = {k: v for k, v in as_dict(run.algo_config).items() if k not in JOINT_ONLY_FIELDS}
    algo["target_tau"] = run.algo_config.target_tau
    rest = {k: v for k, v in to_dict(run).items() if k not in ("algo", "algo_config", "out", "seed", "epochs")}
    return json.dumps({"algo": algo, "run": rest}, sort_keys=True, default=str)


QNET_FIELDS: frozenset[str] = frozenset({
    "tau", "qnet_epochs", "qnet_lr", "qnet_lr_decay", "qnet_max_decays", "qnet_batch_size", "num_corruptions",
    "corrupt_prob", "qnet_target_beta", "qnet_replay", "qnet_replay_fraction", "qnet_valid_sentences",
    "qnet_grad_clip", "qnet_select", "bleu_smooth", "n_specials", "exclude_tokens",
})
"""The VAML settings its step 1 (the Q-net) reads: runs that agree on these and on the run-level
settings can share one Q-net."""


def qnet_setting(cfg: ExperimentConfig, arm: Arm) -> str | None:
    """What ``arm``'s Q-net depends on, as a canonical string (None: not VAML): ``QNET_FIELDS`` and
    the run config less the algorithm, the run's own paths, its seed and its epochs."""
    import json
    from dataclasses import asdict as as_dict

    from rayseq.algorithms.vaml import VAMLConfig
    from rayseq.config import build_run_config, to_dict
    from rayseq.registry import get_algorithm

    cls = get_algorithm(arm.algo).config_cls
    if not issubclass(cls, VAMLConfig):
        return None
    run = build_run_config(arm.algo, cls, cfg.preset, cfg.task, overrides_for(cfg, arm.algo) + list(arm.overrides))
    algo = {k: v for k, v in as_dict(run.algo_config).items() if k in QNET_FIELDS}
    rest = {k: v for k, v in to_dict(run).items() if k not in ("algo", "algo_config", "out", "seed", "epochs")}
    return json.dumps({"algo": algo, "run": rest}, sort_keys=True, default=str)


QNET_PREFIX = "qnet-"
"""Key prefix of a shared Q-net run (``--shared-qnet``), which runs in the MLE phase."""


def split_mle_phase(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The MLE phase's records as (MLE runs, shared Q-net runs)."""
    qnets = [r for r in records if str(r.get("key", "")).startswith(QNET_PREFIX)]
    return [r for r in records if r not in qnets], qnets


def mle_key(seed: int) -> str:
    return f"{MLE}-seed{seed}"


def trial_specs(cfg: ExperimentConfig) -> dict[str, list[TrialSpec]]:
    """Phase name → its trials, in table order (arm, then seed). ``bundles`` are left empty
    (:func:`rayseq.experiments.resources.with_bundles` fills them once Ray is up)."""
    from rayseq.run_dir import ACTOR_FILES

    out = Path(cfg.out).resolve()
    data_dir = str(Path(cfg.data_dir).resolve()) if cfg.data_dir else None
    want_mle = any(a.algo == MLE and not a.setting for a in cfg.arms) or any(starts_from_mle(a) for a in cfg.arms)
    phases: dict[str, list[TrialSpec]] = {PHASE_MLE: [], PHASE_MAIN: []}

    def spec(arm: Arm, seed: int, phase: str, mle_dir: Path | None) -> TrialSpec:
        key = f"{arm.slug}-seed{seed}"
        overrides = overrides_for(cfg, arm.algo) + list(arm.overrides) + [f"seed={seed}"]
        actor = None
        if mle_dir is not None:
            actor = str(mle_dir / ACTOR_FILES["best"])
            overrides.append(f"algo.actor_init={actor}")
        return TrialSpec(key=key, phase=phase, algo=arm.algo, label=arm.label, setting=arm.setting, seed=seed,
                         task=cfg.task, preset=cfg.preset, data_dir=data_dir, overrides=overrides,
                         run_dir=str(out / key), mle_run_dir=None if mle_dir is None else str(mle_dir), actor_init=actor)

    mle_seeds = cfg.seed_list[:1] if cfg.shared_mle else cfg.seed_list
    if want_mle:
        phases[PHASE_MLE] = [spec(Arm(MLE), seed, PHASE_MLE, None) for seed in mle_seeds]
    critics: dict[str, TrialSpec] = {}  # critic setting → its pretraining run
    qnets: dict[str, TrialSpec] = {}  # Q-net setting → its step-1 run
    if cfg.shared_critic:
        phases = {PHASE_MLE: phases[PHASE_MLE], PHASE_CRITIC: [], PHASE_MAIN: []}
    if cfg.shared_qnet:  # step 1 needs no actor: it runs beside the MLE runs, in their phase
        for arm in cfg.arms:
            setting = qnet_setting(cfg, arm)
            if setting is not None and setting not in qnets:
                qnet = spec(arm, mle_seeds[0], PHASE_MLE, None)
                qnet.key = f"{QNET_PREFIX}{arm.algo}-seed{mle_seeds[0]}"
                qnet.run_dir = str(out / qnet.key)
                qnet.label = f"Q-net of {arm.label}"
                qnet.overrides.append("algo.qnet_only=true")  # step 1; no actor is trained
                qnets[setting] = qnet
                phases[PHASE_MLE].append(qnet)
    if cfg.shared_critic:
        for arm in cfg.arms:
            setting = critic_setting(cfg, arm)
            if setting is not None and setting not in critics:
                critic = spec(arm, mle_seeds[0], PHASE_CRITIC, out / mle_key(mle_seeds[0]))
                critic.key = f"critic-{critic.key}"
                critic.run_dir = str(out / critic.key)
                critic.label = f"critic of {arm.label}"
                critic.overrides.append("algo.joint_epochs=0")  # critic pretraining, no joint stage
                critics[setting] = critic
                phases[PHASE_CRITIC].append(critic)
    for arm in cfg.arms:
        if arm.algo == MLE and not arm.setting:
            continue  # the MLE phase's runs are its rows
        setting = critic_setting(cfg, arm) if critics else None
        for seed in cfg.seed_list:
            mle_seed = mle_seeds[0] if cfg.shared_mle else seed
            mle_dir = out / mle_key(mle_seed) if starts_from_mle(arm) else None
            main = spec(arm, seed, PHASE_MAIN, mle_dir)
            if setting is not None:
                main.overrides.append(f"algo.critic_init={critics[setting].run_dir}")
            if cfg.shared_qnet and (q := qnet_setting(cfg, arm)) is not None:
                main.overrides.append(f"algo.qnet_init={qnets[q].run_dir}")
            phases[PHASE_MAIN].append(main)
    return {name: specs for name, specs in phases.items() if specs}


__all__ = [
    "MLE",
    "JOINT_ONLY_FIELDS",
    "PHASE_CRITIC",
    "PHASE_MAIN",
    "PHASE_MLE",
    "QNET_FIELDS",
    "QNET_PREFIX",
    "Arm",
    "ExperimentConfig",
    "TrialSpec",
    "critic_setting",
    "mle_key",
    "needs_mle_actor",
    "qnet_setting",
    "split_mle_phase",
    "starts_from_mle",
    "overrides_for",
    "trial_specs",
]
