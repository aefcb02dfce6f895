"""Starting or joining Ray.

By default a private in-process instance (``address="local"``) with its own temp dir, so a laptop
needs no setup and nothing attaches to another cluster by accident. With ``--address`` (or
``RAY_ADDRESS``) the same job joins an existing cluster.
"""
from __future__ import annotations

import os
import tempfile

import ray


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Connect to ``address`` / ``$RAY_ADDRESS``, else start a private local instance.

    Returns True when this call started Ray (the caller then shuts it down).
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True
    ray.init(
        address="local",
        _temp_dir=tempfile.mkdtemp(prefix="rayseq-ray-"),
        include_dashboard=False,
        num_cpus=num_cpus,
        log_to_driver=True,
        configure_logging=False,
    )
    return True
