"""Shared fixtures (none autouse).  Builders for host tests live in ``tests/hostkit.py``."""

from __future__ import annotations

import pytest
from hostkit import make_mem


@pytest.fixture
def checked_mem():
    """A small ``HostMemory`` (64 frames, 64 swap slots, 64-byte pages) whose invariants
    are checked again when the test ends."""
    mem = make_mem(64, 64)
    yield mem
    mem.check_invariants()


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (2 CPUs, small object store, no
    dashboard), shut down at the end.  Tests that use it are marked ``ray``."""
    import os

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            object_store_memory=256 * 2**20,
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )
        started = True
    yield ray
    if started:
        ray.shutdown()
