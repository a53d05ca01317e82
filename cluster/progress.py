"""A one-line terminal progress bar: simulated time, ticks/s and ETA.

Quiet when stderr is not a terminal or when asked (``--quiet``); never affects results.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(
        self,
        total_ticks: int,
        tick_s: float,
        enabled: bool | None = None,
        stream: TextIO | None = None,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = total_ticks
        self.tick_s = tick_s
        self.t0 = time.perf_counter()
        self._last = 0.0

    def update(self, tick: int, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if not force and now - self._last < 0.2 and tick < self.total:
            return
        self._last = now
        el = now - self.t0
        rate = tick / el if el > 0 else 0.0
        eta = (self.total - tick) / rate if rate > 0 else float("nan")
        frac = tick / self.total if self.total else 1.0
        bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
        self.stream.write(
            f"\r[{bar}] {tick * self.tick_s:,.0f}/{self.total * self.tick_s:,.0f} s simulated"
            f"  {rate:,.1f} ticks/s  ETA {eta:,.0f} s "
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.update(self.total, force=True)
            self.stream.write("\n")
            self.stream.flush()
