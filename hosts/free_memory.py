"""Free-memory states with hysteresis (ESX, Waldspurger OSDI 2002, sec. 6).

A host is in one of four states, chosen from its free-memory fraction; each state enables
a set of reclamation actions (:data:`ACTIONS`). Defaults are the paper's: high 6 %, soft
4 %, hard 2 %, low 1 % of host memory.

Transition rule (``free`` = free fraction of host memory, ``m`` = ``up_margin``).  Going
*down* happens as soon as free falls below a state's entry threshold, skipping states if
need be.  Going *up* is the paper's hysteresis (a higher state is entered only once free
memory *significantly* exceeds its threshold): free must clear the *next higher*
threshold by the margin ``m``, and the state climbs at most **one** level per evaluation
(LOW -> HARD -> SOFT -> HIGH takes three ticks at least)::

    from \\ free   < low    [low, hard)  [hard, soft)  [soft, high)  >= high
    HIGH           LOW      HARD         SOFT          HIGH          HIGH
    SOFT           LOW      HARD         SOFT          SOFT          HIGH*
    HARD           LOW      HARD         HARD          SOFT*         SOFT*
    LOW            LOW      LOW          HARD*         HARD*         HARD*

``*``: only once free >= the row's *exit threshold* + m (SOFT: high, HARD: soft, LOW:
hard); below that the row keeps its state.  Down moves ignore the margin.  The paper
gives no number for "significantly": ``up_margin`` defaults to 0.01 of host memory (one
point, the gap between the low and hard thresholds) -- our choice, not ESX's.

vSphere 6's five states with a sliding minFree (``policy.free_states = "vsphere6"``) are
:mod:`hosts.min_free`; they add :attr:`MemState.CLEAR` (value 4, so the paper's four keep
their values) and share the protocol of :class:`Thresholds` (``states``, ``reserve``,
``next_state``, ``goal_pages``, ``actions``) that the host manager uses.

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
    "BY_PRESSURE",
    "MemState",
    "Thresholds",
    "next_state",
    "pressure",
    "reclaim_goal_pages",
]


class MemState(enum.IntEnum):
    """Free-memory state.  Among the paper's four a larger value means less free memory
    (more pressure); CLEAR (vSphere 6 only) is out of that order: use :func:`pressure`."""

    HIGH = 0
    SOFT = 1
    HARD = 2
    LOW = 3
    # vSphere 6's fifth state (:mod:`hosts.min_free`), between HIGH and SOFT in pressure
    # (:func:`pressure`); its value comes after LOW so the paper's four keep theirs (the
    # digests and checkpoints of the paper's model hold these values).
    CLEAR = 4


#: Every state, calm to severe (vSphere 6's order; the paper's model never enters CLEAR).
BY_PRESSURE = (MemState.HIGH, MemState.CLEAR, MemState.SOFT, MemState.HARD, MemState.LOW)


def pressure(state: MemState) -> int:
    """Rank of ``state`` from calm (HIGH, 0) to severe (LOW, 4), CLEAR between HIGH and
    SOFT: compare states by this, never by their values (CLEAR's value is 4)."""
    return BY_PRESSURE.index(MemState(state))


@dataclass(frozen=True)
class Thresholds:
    """Free-memory thresholds as fractions of host memory; high > soft > hard > low >= 0.

    Each is the entry threshold of the state below it (free < soft enters SOFT, ...), and
    the exit threshold of the state below the next one (free >= soft + ``up_margin``
    leaves HARD).  ``up_margin`` (>= 0, < 1) is the hysteresis margin going up: Waldspurger
    2002, sec. 6.3, asks free memory to "significantly" exceed the higher threshold and
    gives no value; 0.01 (one point of host memory) is this simulator's default.
    """

    high: float = 0.06
    soft: float = 0.04
    hard: float = 0.02
    low: float = 0.01
    up_margin: float = 0.01

    def __post_init__(self) -> None:
        # chained comparison is False for NaN as well
        if not (1.0 >= self.high > self.soft > self.hard > self.low >= 0.0):
            raise ValueError(
                "thresholds must satisfy 1 >= high > soft > hard > low >= 0, got "
                f"high={self.high}, soft={self.soft}, hard={self.hard}, low={self.low}"
            )
        if not (0.0 <= self.up_margin < 1.0):
            raise ValueError(f"up_margin must satisfy 0 <= up_margin < 1, got {self.up_margin}")

    # The state-model protocol the host uses (:class:`hosts.min_free.MinFreeThresholds`
    # has the same members): the paper's model, as the functions of this module.
    model = "esx2002"
    states = (MemState.HIGH, MemState.SOFT, MemState.HARD, MemState.LOW)  # calm to severe

    @property
    def reserve(self) -> float:
        """Free fraction the allocation keeps out of targets: ``high``."""
        return self.high

    def next_state(self, prev: MemState, free_fraction: float) -> MemState:
        return next_state(prev, free_fraction, self)

    def goal_pages(self, free_pages: int, total_pages: int) -> int:
        return reclaim_goal_pages(free_pages, total_pages, self)

    def actions(self, state: MemState, free_fraction: float) -> frozenset[str]:
        """:data:`ACTIONS` of ``state`` (the paper's sets do not depend on free memory)."""
        return ACTIONS[MemState(state)]


def _state_entered(free: float, t: Thresholds) -> MemState:
    """Lowest state whose entry condition holds (the target when going down)."""
    if free < t.low:
        return MemState.LOW
    if free < t.hard:
        return MemState.HARD
    if free < t.soft:
        return MemState.SOFT
    return MemState.HIGH


def _exit_threshold(state: MemState, t: Thresholds) -> float:
    """Free fraction (before the margin) that ``state`` must clear to climb one level."""
    return {MemState.SOFT: t.high, MemState.HARD: t.soft, MemState.LOW: t.hard}[state]


def next_state(prev: MemState, free_fraction: float, t: Thresholds) -> MemState:
    """State after observing ``free_fraction`` in state ``prev`` (see the module table).

    Down: at once to the state whose entry condition holds (any number of levels).  Up:
    one level, and only once free is at least the next higher threshold plus
    ``t.up_margin``.  Since a state's exit threshold is above its own entry threshold, at
    most one of the two moves applies.
    """
    if math.isnan(free_fraction):
        raise ValueError("free_fraction must not be NaN")
    prev = MemState(prev)
    if prev == MemState.CLEAR:
        raise ValueError("the paper's four-state model has no CLEAR state")
    down = _state_entered(free_fraction, t)
    if down > prev:  # less free memory than prev tolerates: drop at once
        return down
    if prev != MemState.HIGH and free_fraction >= _exit_threshold(prev, t) + t.up_margin:
        return MemState(prev - 1)  # cleared the next higher threshold by the margin
    return prev  # inside the hysteresis band: keep the state


def reclaim_goal_pages(free_pages: int, total_pages: int, t: Thresholds) -> int:
    """Pages to reclaim to bring free memory back to where SOFT is left for HIGH.

    ``max(0, ceil((high + up_margin) * total) - free)``: the goal is the exit point of
    SOFT, not the high threshold itself -- aiming at ``high`` alone would park a host at
    exactly ``high`` free, inside the hysteresis band, in SOFT for ever (ballooning
    stops at the goal, so free never clears the margin).  The product is taken on the
    thresholds' decimal values (``Fraction(repr(x))``), so 0.06 * 100 is 6, not the 7 a
    binary float product (6.000000000000001) would round up to.
    """
    if total_pages < 0 or free_pages < 0:
        raise ValueError("free_pages and total_pages must be >= 0")
    frac = Fraction(repr(float(t.high))) + Fraction(repr(float(t.up_margin)))
    target = math.ceil(frac * int(total_pages))  # free pages wanted
    return max(0, target - int(free_pages))


ACTIONS: dict[MemState, frozenset[str]] = {
    MemState.HIGH: frozenset({"share"}),
    MemState.SOFT: frozenset({"share", "balloon"}),
    MemState.HARD: frozenset({"share", "swap"}),
    MemState.LOW: frozenset({"share", "swap", "block"}),
}
"""Reclamation actions enabled in each state, as in Waldspurger 2002, sec. 6.3: SOFT
balloons (and pages only VMs that cannot balloon), HARD relies on paging (no
ballooning), LOW pages and also blocks the VMs above target."""
