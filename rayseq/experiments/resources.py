"""What a trial asks Ray for, from the run's own config, and what the cluster has.

A trial is one training driver (``rayseq.train.train``) and the actors it starts. Its placement
group (``tune.PlacementGroupFactory``) has one bundle per process:

* the driver: 1 CPU (validation decoding, the learner when ``num_learners`` is 0 — then also its
  ``num_gpus_per_learner``, fractional GPUs included), plus ``trial_resources``;
* each remote learner (``num_learners``): ``num_gpus_per_learner`` GPUs, 1 CPU when it has no GPU
  (RLlib's ``num_cpus_per_learner="auto"``), and 0.001 of ``learner_resource`` when set;
* each rollout worker (``num_rollout_workers`` of the actor-critic family and the swap-ins; MLE, RAML
  and VAML start none): 1 CPU.

Tune starts a trial once its whole group fits, so a cluster runs trials side by side and a laptop
queues them. Bundles are packed onto as few nodes as possible (``PACK``), spilling over when they
do not fit one node.
"""
from __future__ import annotations

from typing import Any

from rayseq.experiments.spec import TrialSpec

STRATEGY = "PACK"
"""Placement strategy of a trial's bundles."""


def trial_bundles(cfg: Any, gpus_per_learner: float, trial_resources: dict[str, float] | None = None) -> list[dict[str, float]]:
    """The bundles of one run (``cfg``: its ``rayseq.config.RunConfig``), ``gpus_per_learner`` resolved."""
    from rayseq.registry import get_algorithm

    g = float(gpus_per_learner)
    driver: dict[str, float] = {"CPU": 1.0, **(trial_resources or {})}
    if cfg.num_learners == 0 and g > 0:
        driver["GPU"] = g
    learner: dict[str, float] = {"CPU": 0.0 if g > 0 else 1.0, "GPU": g, **cfg.custom_resources_per_learner()}
    workers = cfg.num_rollout_workers if get_algorithm(cfg.algo).uses_rollout_workers else 0
    bundles = [driver] + [dict(learner) for _ in range(cfg.num_learners)] + [{"CPU": 1.0} for _ in range(workers)]
    return [{k: v for k, v in b.items() if v} for b in bundles]


def placement_group_factory(config: dict[str, Any]) -> Any:
    """``tune.with_resources``'s callable: the trial config's bundles as a ``PlacementGroupFactory``."""
    from ray import tune

    bundles = config["trial"]["bundles"] or [{"CPU": 1.0}]
    return tune.PlacementGroupFactory(bundles, strategy=STRATEGY)


def cluster_has_gpus() -> bool:
    """Whether the connected Ray cluster advertises any GPU."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0)) > 0


def with_bundles(spec: TrialSpec, trial_resources: dict[str, float], gpu_default: float) -> TrialSpec:
    """``spec`` with its bundles filled in, and ``num_gpus_per_learner`` pinned so that the trial
    asks for what its placement group holds (``None``, auto, becomes ``gpu_default``: 1 when the
    cluster has GPUs, else 0). A run whose config does not build keeps one driver bundle: the
    trial itself raises the config error, which the table then shows."""
    from rayseq.config import build_run_config
    from rayseq.registry import get_algorithm

    try:
        cfg = build_run_config(spec.algo, get_algorithm(spec.algo).config_cls, spec.preset, spec.task, spec.overrides,
                               out=spec.run_dir, data_dir=spec.data_dir)
    except ValueError:
        spec.bundles = [{"CPU": 1.0, **trial_resources}]
        return spec
    g = gpu_default if cfg.num_gpus_per_learner is None else float(cfg.num_gpus_per_learner)
    if cfg.num_gpus_per_learner is None:
        spec.overrides = [*spec.overrides, f"num_gpus_per_learner={g:g}"]
    spec.bundles = trial_bundles(cfg, g, trial_resources)
    return spec


def total(bundles: list[dict[str, float]], resource: str = "CPU") -> float:
    return sum(b.get(resource, 0.0) for b in bundles)


def unplaceable(bundles: list[dict[str, float]]) -> str | None:
    """Why these bundles can never be placed on the connected cluster (as it is now), or None."""
    import ray

    have = ray.cluster_resources()
    for name in sorted({k for b in bundles for k in b}):
        need = total(bundles, name)
        if need > float(have.get(name, 0.0)) + 1e-9:
            return f"it needs {need:g} {name} and the cluster has {float(have.get(name, 0.0)):g}"
    return None


def describe_cluster() -> str:
    """The hardware of the connected Ray cluster in a few words, e.g. ``1 node, 2 CPUs, no GPU``."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(float(n["Resources"].get("CPU", 0.0)) for n in nodes)
    gpus = sum(float(n["Resources"].get("GPU", 0.0)) for n in nodes)
    kinds = sorted({k.split(":", 1)[1] for n in nodes for k in n["Resources"] if k.startswith("accelerator_type:")})
    gpu_text = f"{gpus:g} GPU{'s' if gpus != 1 else ''}" + (f" ({', '.join(kinds)})" if kinds else "") if gpus else "no GPU"
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''}, {cpus:g} CPUs, {gpu_text}"


__all__ = [
    "STRATEGY",
    "cluster_has_gpus",
    "describe_cluster",
    "placement_group_factory",
    "total",
    "trial_bundles",
    "unplaceable",
    "with_bundles",
]
