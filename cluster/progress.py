"""A one-line terminal progress bar: simulated time, ticks/s and ETA.

Scope: the rate and ETA come from the last ``window_s`` seconds of wall time (not the
average since start, which start-up and a slow beginning would skew); start-up before the
first tick (Ray's, when :meth:`Progress.started` is given a label) is shown apart; the
final line (wall time and the overall ticks/s) is written once, by :meth:`Progress.close`.
Quiet when stderr is not a terminal or when asked (``--quiet``); never affects results.
"""

from __future__ import annotations

import collections
import sys
import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 20  # characters of the bar: the whole line stays within 80 columns


class Progress:
    def __init__(
        self,
        total_ticks: int,
        tick_s: float,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        *,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = total_ticks
        self.tick_s = tick_s
        self.window_s = window_s
        self.clock = clock
        self.t0 = clock()
        self.sim_t0 = self.t0  # when ticks started (after start-up)
        self.startup: tuple[str, float] | None = None
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._last = float("-inf")
        self._width = 0  # length of the line on screen (cleared when the next is shorter)
        self._closed = False
        self._first: tuple[float, int] | None = None  # first update after started()

    def started(self, label: str | None = None) -> None:
        """Ticks start now: what came before (``label``, e.g. "Ray start-up") is shown
        apart and left out of the rate."""
        now = self.clock()
        if label:
            self.startup = (label, now - self.t0)
        self.sim_t0 = now
        self._samples.clear()
        self._first = None

    def rate(self, now: float, tick: int) -> float:
        """Ticks per wall second over about the last ``window_s`` seconds: from the newest
        sample at least that old (the first sample while fewer have passed) to now."""
        self._samples.append((now, tick))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()
        t_old, k_old = self._samples[0]
        return (tick - k_old) / (now - t_old) if now > t_old else 0.0

    def update(self, tick: int, force: bool = False) -> None:
        if not self.enabled or self._closed or tick >= self.total:
            return  # the final line is close()'s
        now = self.clock()
        if self._first is None:
            self._first = (now, tick)
        rate = self.rate(now, tick)
        if not force and now - self._last < 0.2:
            return
        self._last = now
        eta = f"ETA {(self.total - tick) / rate:,.0f} s" if rate > 0 else "ETA ?"
        self._write(self._bar(tick) + f"  {rate:,.1f} ticks/s  {eta}")

    def close(self) -> None:
        """The final line, once: simulated time, wall time of the ticks, overall rate."""
        if not self.enabled or self._closed:
            return
        self._closed = True
        now = self.clock()
        wall = now - self.sim_t0
        rate = ""
        if self._first is not None and now > self._first[0]:  # ticks after the first round
            rate = f", {(self.total - self._first[1]) / (now - self._first[0]):,.1f} ticks/s"
        self._write(self._bar(self.total) + f"  in {wall:,.1f} s{rate}")
        self.stream.write("\n")
        self.stream.flush()

    def abandon(self) -> None:
        """The run failed: end the bar's line (so that the error starts on its own)."""
        if self.enabled and not self._closed and self._width:
            self._closed = True
            self.stream.write("\n")
            self.stream.flush()

    def _bar(self, tick: int) -> str:
        frac = min(1.0, tick / self.total) if self.total else 1.0
        bar = "#" * int(WIDTH * frac) + "-" * (WIDTH - int(WIDTH * frac))
        done, total = tick * self.tick_s, self.total * self.tick_s
        return f"[{bar}] {done:,.0f}/{total:,.0f} s simulated"

    def _write(self, line: str) -> None:
        if self.startup is not None:
            line += f"  ({self.startup[0]} {self.startup[1]:,.1f} s)"
        pad = " " * max(0, self._width - len(line))
        self._width = len(line)
        self.stream.write(f"\r{line}{pad}")
        self.stream.flush()
