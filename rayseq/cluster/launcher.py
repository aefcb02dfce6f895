"""Offline checks of Ray cluster-launcher YAML files (``clusters/*.yaml``).

:func:`check_launcher_config` runs Ray's own preparation and schema validation
(``ray.autoscaler._private.util.prepare_config`` + ``validate_config``; no cloud credentials
needed) and also rejects unknown ``provider`` keys (Ray's schema allows any there).

Ray 2.60 quirk handled here: the ``fake_multinode`` provider's defaults file
(``fake_multi_node/example.yaml``) is not in the wheel, so ``prepare_config`` cannot merge
defaults for it; such files must spell out every key and are validated without that merge.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import yaml

FAKE_PROVIDERS = ("fake_multinode",)
FAKE_PROVIDER_KEYS = ("gcs_address", "head_node_id", "launch_multiple")
"""Keys the fake provider reads (ray/autoscaler/_private/fake_multi_node/node_provider.py)."""


def _schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def _fake_defaults_missing() -> bool:
    from ray.autoscaler._private.providers import _load_fake_multinode_defaults_config

    return not os.path.isfile(_load_fake_multinode_defaults_config())


def load_launcher_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot read the cluster config ({err}).") from err
    if not isinstance(config, dict) or not isinstance(config.get("provider"), dict):
        raise ValueError(f"{path}: not a Ray cluster-launcher config (no provider mapping).")  # noqa: TRY004 (a user error)
    return config


def check_launcher_config(config: dict[str, Any], where: str = "cluster config") -> dict[str, Any]:
    """Ray's validation of ``config``; returns the prepared config. Raises ValueError naming ``where``."""
    import jsonschema
    from ray.autoscaler._private.util import (
        fill_node_type_min_max_workers,
        merge_setup_commands,
        prepare_config,
        validate_config,
        validate_docker_config,
    )

    provider = config["provider"]
    known = set(_schema()["properties"]["provider"]["properties"])
    if provider.get("type") in FAKE_PROVIDERS:
        known |= set(FAKE_PROVIDER_KEYS)
    unknown = sorted(set(provider) - known)
    if unknown:
        raise ValueError(f"{where}: unknown provider key(s) {unknown}; Ray's schema knows {sorted(known)}.")
    try:
        if provider.get("type") in FAKE_PROVIDERS and _fake_defaults_missing():
            prepared = copy.deepcopy(config)
            prepared.setdefault("auth", {})
            merge_setup_commands(prepared)
            validate_docker_config(prepared)
            fill_node_type_min_max_workers(prepared)
        else:
            prepared = prepare_config(copy.deepcopy(config))
        validate_config(prepared)
    except (jsonschema.ValidationError, KeyError, ValueError, RuntimeError) as err:
        msg = err.message if isinstance(err, jsonschema.ValidationError) else str(err)
        path = "/".join(str(p) for p in getattr(err, "absolute_path", []))
        raise ValueError(f"{where}: invalid Ray cluster config{f' at {path}' if path else ''}: {msg}") from err
    return prepared
