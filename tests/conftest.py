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
