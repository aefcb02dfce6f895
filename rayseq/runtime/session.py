"""Starting or joining Ray, and keeping its known-harmless messages out of the user's output.

By default a private in-process instance (``address="local"``) with its own temp dir, so a laptop
needs no setup and nothing attaches to another cluster by accident. With ``--address`` (or
``RAY_ADDRESS``) the same job joins an existing cluster.

:func:`quiet_known_warnings` drops the log records that every run printed and that ask nothing of
the user (RLlib telling that the new API stack is on, RLlib's own internal use of its deprecated
``RLModuleConfig``, Tune's "Install gputil", the token-auth notice of a private local instance,
the line every Tune trial prints for each checkpoint it reports);
it runs on the driver and, as the ``worker_process_setup_hook``, in every worker of the private
local instance.
"""
from __future__ import annotations

import logging
import os
import tempfile

import ray

KNOWN_HARMLESS: tuple[str, ...] = (
    "on the new API stack! This is the new default behavior",
    "`RLModule(config=[RLModuleConfig object])` has been deprecated",
    "Install gputil for GPU system monitoring",
    "Token authentication is enabled for this Ray cluster",
    "Token authentication is disabled for this Ray cluster",
    "Checkpoint successfully created at",
)
"""Substrings of the log messages :func:`quiet_known_warnings` drops."""

_LOGGERS = (
    "ray._common.deprecation",
    "ray.rllib.algorithms.algorithm_config",
    "ray.tune.utils.util",
    "ray._private.authentication.authentication_token_setup",
    "ray.train._internal.storage",
    "ray.train.v2._internal.execution.storage",
)


class KnownHarmless(logging.Filter):
    """Drops records whose message contains one of ``KNOWN_HARMLESS``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(s in message for s in KNOWN_HARMLESS)


def quiet_known_warnings() -> None:
    """Install :class:`KnownHarmless` on the loggers that print those messages (idempotent)."""
    for name in _LOGGERS:
        log = logging.getLogger(name)
        if not any(isinstance(f, KnownHarmless) for f in log.filters):
            log.addFilter(KnownHarmless())


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS``, else start a private local instance.

    Returns True when this call started Ray (the caller then shuts it down).
    """
    quiet_known_warnings()
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:  # a cluster's jobs keep the runtime_env they were submitted with
        ray.init(address=address, log_to_driver=True)
        return True
    ray.init(
        address="local",
        _temp_dir=tempfile.mkdtemp(prefix="rayseq-ray-"),
        include_dashboard=False,
        num_cpus=num_cpus,
        log_to_driver=True,
        configure_logging=False,
        runtime_env={"worker_process_setup_hook": "rayseq.runtime.session.quiet_known_warnings"},
    )
    return True
