"""Free-memory states with hysteresis (ESX, Waldspurger OSDI 2002, sec. 6).

A host is in one of four states, chosen from its free-memory fraction; each state enables
a set of reclamation actions (:data:`ACTIONS`). Defaults are the paper's: high 6 %, soft
4 %, hard 2 %, low 1 % of host memory.

Transition rule (``free`` = free fraction of host memory). Going *down* happens as soon
as free falls below the state's entry threshold; going *up* needs free to clear the
*next higher* threshold, which gives a hysteresis band between thresholds::

    from \\ free   < low    [low, hard)  [hard, soft)  [soft, high)  >= high
    HIGH           LOW      HARD         SOFT          HIGH          HIGH
    SOFT           LOW      HARD         SOFT          SOFT          HIGH
    HARD           LOW      HARD         HARD          SOFT          HIGH
    LOW            LOW      LOW          HARD          SOFT          HIGH

Big changes may skip states in either direction. Outside the bands the state is a
function of ``free`` alone; inside a band it also depends on the previous state.

Covered here: the state machine, the reclaim goal and the per-state action sets, as pure
functions and data. *Not* covered: carrying out the actions (page sharing, ballooning,
swapping, blocking VMs: the host manager), how the reclaim goal is split across VMs
(``hosts/allocation.py``), or any timing (how often states are re-evaluated).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = [
    "ACTIONS",
    "MemState",
    "Thresholds",
    "next_state",
    "reclaim_goal_pages",
]


class MemState(enum.IntEnum):
    """Free-memory state; a larger value means less free memory (more pressure)."""

    HIGH = 0
    SOFT = 1
    HARD = 2
    LOW = 3


@dataclass(frozen=True)
class Thresholds:
    """Free-memory thresholds as fractions of host memory; high > soft > hard > low >= 0.

    Each is the entry threshold of the state below it (free < soft enters SOFT, ...), and
    the exit threshold of the state below the next one (free >= soft leaves HARD).
    """

    high: float = 0.06
    soft: float = 0.04
    hard: float = 0.02
    low: float = 0.01

    def __post_init__(self) -> None:
        # chained comparison is False for NaN as well
        if not (1.0 >= self.high > self.soft > self.hard > self.low >= 0.0):
            raise ValueError(
                "thresholds must satisfy 1 >= high > soft > hard > low >= 0, got "
                f"high={self.high}, soft={self.soft}, hard={self.hard}, low={self.low}"
            )


def _state_entered(free: float, t: Thresholds) -> MemState:
    """Lowest state whose entry condition holds (the target when going down)."""
    if free < t.low:
        return MemState.LOW
    if free < t.hard:
        return MemState.HARD
    if free < t.soft:
        return MemState.SOFT
    return MemState.HIGH


def _state_cleared(free: float, t: Thresholds) -> MemState:
    """Highest state whose exit threshold free has cleared (the target when going up)."""
    if free >= t.high:
        return MemState.HIGH
    if free >= t.soft:
        return MemState.SOFT
    if free >= t.hard:
        return MemState.HARD
    return MemState.LOW


def next_state(prev: MemState, free_fraction: float, t: Thresholds) -> MemState:
    """State after observing ``free_fraction`` in state ``prev`` (see the module table).

    ``_state_entered(free) >= _state_cleared(free)`` always holds (they differ by at most
    one, inside a band), so at most one of the two moves applies.
    """
    if math.isnan(free_fraction):
        raise ValueError("free_fraction must not be NaN")
    prev = MemState(prev)
    down = _state_entered(free_fraction, t)
    if down > prev:  # less free memory than prev tolerates: drop at once
        return down
    up = _state_cleared(free_fraction, t)
    if up < prev:  # free cleared the next higher threshold: climb
        return up
    return prev  # inside the hysteresis band: keep the state


def reclaim_goal_pages(free_pages: int, total_pages: int, t: Thresholds) -> int:
    """Pages to reclaim to bring free memory back to the high threshold.

    ``max(0, ceil(high * total) - free)``. The product is taken on the threshold's
    decimal value (``Fraction(repr(high))``), so 0.06 * 100 is 6, not the 7 a binary
    float product (6.000000000000001) would round up to.
    """
    if total_pages < 0 or free_pages < 0:
        raise ValueError("free_pages and total_pages must be >= 0")
    target = math.ceil(Fraction(repr(float(t.high))) * int(total_pages))  # free pages wanted
    return max(0, target - int(free_pages))


ACTIONS: dict[MemState, frozenset[str]] = {
    MemState.HIGH: frozenset({"share"}),
    MemState.SOFT: frozenset({"share", "balloon"}),
    MemState.HARD: frozenset({"share", "balloon", "swap"}),
    MemState.LOW: frozenset({"share", "balloon", "swap", "block"}),
}
"""Reclamation actions enabled in each state (ESX: balloon from soft, swap from hard,
block VMs that allocate from low)."""
