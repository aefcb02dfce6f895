"""Shared fixtures."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_session():
    """A private in-process Ray for one test module (3 CPUs: 2 rollout workers + 1 learner actor)."""
    import ray

    from rayseq.runtime.session import init_ray

    started = init_ray(num_cpus=3)
    yield
    if started:
        ray.shutdown()
