"""vSphere 6's five free-memory states and its sliding minFree (``policy.free_states =
"vsphere6"``), beside the paper's four states of :mod:`hosts.free_memory`.

Sources: VMware, *vSphere Resource Management* (6.0), "Memory Reclamation" / free memory
states; D. Epping, "What happens at which vSphere memory state?" (yellow-bricks.com,
2016: the table of thresholds and actions below, and "there is an upper and lower
boundary when transitioning between states"); F. Denneman, "Mem.MinFreePct sliding
scale function" (frankdenneman.nl, 2011: the minFree scale, unchanged in 6.0);
running-system.com, "vSphere 6 ESXi memory states" (each state entered when free memory
falls *below* its threshold: clear < 100 %, soft < 64 %, ... of minFree).

**minFree** (MB) is a sliding scale of the host's configured memory ``M`` (MB, not pages,
so it does not depend on ``simulation.page_size``): 6 % of the first 4096 MB, 4 % of
4096-12288 MB, 2 % of 12288-28672 MB and 1 % of the rest -- 901.12 MB at 28 GB (the
write-ups round it to 899 MB), 1269.76 MB at 64 GB.  As a fraction of host memory it
shrinks as hosts grow (6 % at 4 GB, 1.98 % at 64 GB, 1.26 % at 256 GB).

**States**, as fractions ``f`` of minFree (free memory / minFree):

====== ========= ==================================================================
state  threshold actions (Epping's table; ``share`` is the background scan, always on)
====== ========= ==================================================================
HIGH   400 %     share; ``break_large`` once free < 400 % (large pages broken, TPS waits)
CLEAR  100 %     share, ``share_active``, ``break_large`` (break, and call TPS actively)
SOFT    64 %     share, balloon
HARD    32 %     share, ``compress``, swap -- ballooning stops
LOW     16 %     ``compress``, swap, block (and share: see below)
====== ========= ==================================================================

The transition rule is the paper model's (:func:`hosts.free_memory.next_state`), with
five levels: a state is entered going down as soon as free < its threshold (any number of
levels at once); going up a state climbs one level per evaluation, and only once free >=
the next higher state's threshold + ``up_margin`` (CLEAR climbs to HIGH at 400 % +
margin).  The margin follows the paper model's default rule -- the gap between the low
and hard thresholds (there 1 % of memory) -- so here it is 16 % of minFree.

**Reclaim goal and free target** (our choice, documented): the paper's goal is the exit
point of its ballooning state (free >= high + margin, the margin above the threshold the
allocation keeps free).  Mapped to five states, the ballooning state SOFT is left at
100 % of minFree + margin, so the goal is free >= 116 % of minFree and the allocation
keeps minFree (100 %) out of the VMs' targets: vSphere's "keep free memory above minFree".
The 400 % HIGH threshold is no goal of reclamation: it only says when large pages start
to break and when CLEAR is left.

What runs here: the sharing scan (every state; in CLEAR at ``share_scan_clear_factor``
times its rates: "actively call TPS", 1 = nothing beyond the usual scan), ballooning
(SOFT), swapping (HARD, LOW), blocking (LOW).  ``break_large`` and ``compress`` are named
for the large-page and compression mechanisms (other modules), and do nothing here.  The
sources list no TPS in LOW; the scan is not stopped there (the simulator's scan is the
background process of every state, and every page swapped is still offered to sharing
first), so LOW's set keeps ``share``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from vmmsim.hosts.free_memory import MemState, Thresholds

__all__ = ["ACTIONS", "LEVELS", "MinFreeThresholds", "min_free_mb", "thresholds_for"]

#: (band width MB, percent) of the sliding scale, first 4 GB first; the last band is open.
SCALE_MB = ((4096, 6), (8192, 4), (16384, 2), (None, 1))

#: Each state's threshold as a multiple of minFree (Epping 2016), calm to severe.
LEVELS: dict[MemState, Fraction] = {
    MemState.HIGH: Fraction(4),
    MemState.CLEAR: Fraction(1),
    MemState.SOFT: Fraction(64, 100),
    MemState.HARD: Fraction(32, 100),
    MemState.LOW: Fraction(16, 100),
}

_ORDER = tuple(LEVELS)  # HIGH, CLEAR, SOFT, HARD, LOW

ACTIONS: dict[MemState, frozenset[str]] = {
    MemState.HIGH: frozenset({"share", "break_large"}),
    MemState.CLEAR: frozenset({"share", "share_active", "break_large"}),
    MemState.SOFT: frozenset({"share", "balloon"}),
    MemState.HARD: frozenset({"share", "compress", "swap"}),
    MemState.LOW: frozenset({"share", "compress", "swap", "block"}),
}
"""Actions of each state (module table); HIGH's ``break_large`` applies only below the
400 % threshold (:meth:`MinFreeThresholds.actions`)."""


def min_free_mb(memory_mb: float) -> Fraction:
    """minFree of a host with ``memory_mb`` MB configured, exactly (module docstring)."""
    m = Fraction(repr(float(memory_mb)))
    if not m > 0:
        raise ValueError(f"memory_mb must be > 0, got {memory_mb}")
    out, lo = Fraction(0), Fraction(0)
    for width, pct in SCALE_MB:
        part = m - lo if width is None else min(m - lo, Fraction(width))
        if part <= 0:
            break
        out += part * pct / 100
        if width is not None:
            lo += width
    return out


@dataclass(frozen=True)
class MinFreeThresholds:
    """The five thresholds of one host, as fractions of its memory (``min_free``: minFree
    / memory, exact).  Same protocol as :class:`hosts.free_memory.Thresholds`."""

    min_free: Fraction

    model = "vsphere6"
    states = _ORDER  # calm to severe

    @classmethod
    def for_memory(cls, memory_mb: float) -> MinFreeThresholds:
        return cls(min_free_mb(memory_mb) / Fraction(repr(float(memory_mb))))

    def level(self, state: MemState) -> float:
        """Threshold of ``state`` as a fraction of host memory."""
        return float(LEVELS[MemState(state)] * self.min_free)

    @property
    def up_margin(self) -> float:
        """Hysteresis going up: the gap between the low and hard thresholds, 16 % of
        minFree (the paper model's default rule, module docstring)."""
        return float((LEVELS[MemState.HARD] - LEVELS[MemState.LOW]) * self.min_free)

    @property
    def reserve(self) -> float:
        """Free fraction the allocation keeps out of targets: minFree (100 %)."""
        return self.level(MemState.CLEAR)

    def next_state(self, prev: MemState, free_fraction: float) -> MemState:
        """State after observing ``free_fraction`` in ``prev`` (module docstring)."""
        if math.isnan(free_fraction):
            raise ValueError("free_fraction must not be NaN")
        r = _ORDER.index(MemState(prev))
        down = max((i for i in range(1, 5) if free_fraction < self.level(_ORDER[i])), default=0)
        if down > r:
            return _ORDER[down]
        if r > 0 and free_fraction >= self.level(_ORDER[r - 1]) + self.up_margin:
            return _ORDER[r - 1]
        return MemState(prev)

    def goal_pages(self, free_pages: int, total_pages: int) -> int:
        """``max(0, ceil(1.16 * minFree/memory * total) - free)``: pages to reclaim to
        leave SOFT (its exit point, 100 % + the 16 % margin), exactly."""
        if total_pages < 0 or free_pages < 0:
            raise ValueError("free_pages and total_pages must be >= 0")
        frac = (
            LEVELS[MemState.CLEAR] + LEVELS[MemState.HARD] - LEVELS[MemState.LOW]
        ) * self.min_free
        return max(0, math.ceil(frac * int(total_pages)) - int(free_pages))

    def actions(self, state: MemState, free_fraction: float) -> frozenset[str]:
        """Actions of ``state``; in HIGH, ``break_large`` only below 400 % of minFree."""
        acts = ACTIONS[MemState(state)]
        if state == MemState.HIGH and free_fraction >= self.level(MemState.HIGH):
            return acts - {"break_large"}
        return acts


def thresholds_for(policy: Any, memory_mb: float) -> Thresholds | MinFreeThresholds:
    """The state model of a host with ``memory_mb`` MB under ``policy``
    (:class:`hosts.specs.HostPolicy`): the paper's ``policy.thresholds``, or this
    module's five states when ``policy.free_states == "vsphere6"``."""
    if policy.free_states == "vsphere6":
        return MinFreeThresholds.for_memory(memory_mb)
    return policy.thresholds
