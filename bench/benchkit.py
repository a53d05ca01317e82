"""Shared helpers of the benchmark scripts (run as ``python bench/<script>.py``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def best(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` timed calls of ``fn``, in seconds (least disturbed)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def rss_bytes(pid: int | None = None) -> int:
    """Resident set of process ``pid`` (this process by default) in bytes; 0 if it is gone."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0
