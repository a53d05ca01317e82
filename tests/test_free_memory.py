"""Tests for hosts/free_memory.py: every transition of the table, hysteresis, goals."""

from __future__ import annotations

import pytest
from vmmsim.hosts.free_memory import (
    ACTIONS,
    MemState,
    Thresholds,
    next_state,
    reclaim_goal_pages,
)

T = Thresholds()  # high 0.06, soft 0.04, hard 0.02, low 0.01
H, S, D, L = MemState.HIGH, MemState.SOFT, MemState.HARD, MemState.LOW

# one representative free fraction per band, plus the exact thresholds
BANDS = [0.005, 0.015, 0.03, 0.05, 0.07]
# expected[prev][band]: the module docstring's table
TABLE = {
    H: [L, D, S, H, H],
    S: [L, D, S, S, H],
    D: [L, D, D, S, H],
    L: [L, L, D, S, H],
}


@pytest.mark.parametrize("prev", list(MemState))
@pytest.mark.parametrize("band", range(5))
def test_transition_table(prev, band):
    assert next_state(prev, BANDS[band], T) is TABLE[prev][band]


def test_enum_values():
    assert [int(s) for s in (H, S, D, L)] == [0, 1, 2, 3]


def test_hysteresis_bands():
    assert next_state(S, 0.05, T) is S  # above soft but below high: stays SOFT
    assert next_state(H, 0.05, T) is H  # below high but above soft: stays HIGH
    assert next_state(D, 0.03, T) is D
    assert next_state(S, 0.03, T) is S
    assert next_state(L, 0.015, T) is L
    assert next_state(D, 0.015, T) is D


def test_thresholds_are_exact_boundaries():
    # down: strictly below the threshold
    assert next_state(H, 0.04, T) is H
    assert next_state(H, 0.0399, T) is S
    assert next_state(S, 0.02, T) is S
    assert next_state(S, 0.0199, T) is D
    assert next_state(D, 0.01, T) is D
    assert next_state(D, 0.0099, T) is L
    # up: at or above the next higher threshold
    assert next_state(L, 0.02, T) is D
    assert next_state(L, 0.0199, T) is L
    assert next_state(D, 0.04, T) is S
    assert next_state(D, 0.0399, T) is D
    assert next_state(S, 0.06, T) is H
    assert next_state(S, 0.0599, T) is S


def test_multi_state_jumps():
    assert next_state(H, 0.0, T) is L  # HIGH -> LOW in one step
    assert next_state(H, 0.015, T) is D  # HIGH -> HARD
    assert next_state(S, 0.005, T) is L  # SOFT -> LOW
    assert next_state(L, 0.5, T) is H  # LOW -> HIGH
    assert next_state(L, 0.045, T) is S  # LOW -> SOFT
    assert next_state(D, 1.0, T) is H  # HARD -> HIGH


def test_accepts_plain_int_prev_and_custom_thresholds():
    t = Thresholds(high=0.5, soft=0.4, hard=0.3, low=0.0)
    assert next_state(3, 0.35, t) is D
    assert next_state(MemState.HIGH, 0.0, t) is D  # free < low never holds for low = 0


def test_nan_free_rejected():
    with pytest.raises(ValueError):
        next_state(H, float("nan"), T)


@pytest.mark.parametrize(
    "kw",
    [
        dict(high=0.04, soft=0.04),
        dict(soft=0.02),
        dict(hard=0.005),
        dict(low=-0.01),
        dict(high=1.5),
        dict(high=float("nan")),
        dict(high=0.01, soft=0.02, hard=0.03, low=0.04),
    ],
)
def test_thresholds_validation(kw):
    with pytest.raises(ValueError):
        Thresholds(**kw)


def test_thresholds_frozen():
    with pytest.raises(AttributeError):
        T.high = 0.1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("free", "total", "goal"),
    [
        (0, 100, 6),  # ceil(0.06 * 100) = 6, not 7 from float error
        (4, 100, 2),
        (6, 100, 0),
        (50, 100, 0),
        (0, 1000, 60),
        (10, 1000, 50),
        (0, 1001, 61),  # 60.06 -> 61
        (0, 0, 0),
        (0, 1, 1),  # 0.06 -> 1
        (100_000, 4_194_304, 151_659),  # 16 GiB of 4 KiB pages: ceil(251658.24) = 251659
    ],
)
def test_reclaim_goal_pages(free, total, goal):
    assert reclaim_goal_pages(free, total, T) == goal


def test_reclaim_goal_custom_high():
    assert reclaim_goal_pages(0, 100, Thresholds(high=0.07, soft=0.04)) == 7
    assert reclaim_goal_pages(3, 300, Thresholds(high=0.1, soft=0.04)) == 27


def test_reclaim_goal_validation():
    with pytest.raises(ValueError):
        reclaim_goal_pages(-1, 100, T)
    with pytest.raises(ValueError):
        reclaim_goal_pages(0, -1, T)


def test_actions():
    assert ACTIONS == {
        H: frozenset({"share"}),
        S: frozenset({"share", "balloon"}),
        D: frozenset({"share", "balloon", "swap"}),
        L: frozenset({"share", "balloon", "swap", "block"}),
    }
    # each state enables everything the state above it does
    for upper, lower in zip((H, S, D), (S, D, L), strict=True):
        assert ACTIONS[upper] < ACTIONS[lower]
