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

T = Thresholds()  # high 0.06, soft 0.04, hard 0.02, low 0.01, up_margin 0.01
T0 = Thresholds(up_margin=0.0)  # the thresholds alone, no margin going up
H, S, D, L = MemState.HIGH, MemState.SOFT, MemState.HARD, MemState.LOW

# one representative free fraction per band, each past the band's lower bound + margin
BANDS = [0.005, 0.015, 0.035, 0.055, 0.08]
# expected[prev][band]: the module docstring's table (up: one level per evaluation)
TABLE = {
    H: [L, D, S, H, H],
    S: [L, D, S, S, H],
    D: [L, D, D, S, S],
    L: [L, L, D, D, D],
}


@pytest.mark.parametrize("prev", Thresholds.states)  # the paper's four
@pytest.mark.parametrize("band", range(5))
def test_transition_table(prev, band):
    assert next_state(prev, BANDS[band], T) is TABLE[prev][band]


def test_enum_values():
    assert [int(s) for s in (H, S, D, L)] == [0, 1, 2, 3]


# Next state by thresholds, previous state and free fraction (free falling left to right):
# * hysteresis: between two thresholds the state holds;
# * down: strictly below a threshold, any number of levels at once;
# * up: paper, sec. 6.3, only after free significantly exceeds the higher threshold, by
#   ``up_margin`` (was: on reaching it); at most one level per evaluation (was: LOW ->
#   HIGH in one tick);
# * the boundaries are exact (binary-exact fractions for the margin: threshold + margin
#   is exactly representable); a plain int is accepted as the previous state.
THRESHOLDS = {
    "default": T,
    "no-margin": T0,
    "binary": Thresholds(high=0.5, soft=0.25, hard=0.125, low=0.0625, up_margin=0.0625),
    "custom": Thresholds(high=0.5, soft=0.4, hard=0.3, low=0.0, up_margin=0.0),
}
NEXT_STATE = {
    "default": {
        H: {0.05: H, 0.04: H, 0.0399: S, 0.015: D, 0.0: L},
        S: {1.0: H, 0.065: S, 0.05: S, 0.03: S, 0.02: S, 0.0199: D, 0.005: L},
        D: {1.0: S, 0.045: D, 0.03: D, 0.015: D, 0.01: D, 0.0099: L},
        L: {1.0: D, 0.5: D, 0.025: L, 0.015: L},
    },
    "no-margin": {  # up at the higher threshold itself
        S: {0.065: H, 0.06: H, 0.0599: S},
        D: {0.045: S, 0.04: S, 0.0399: D},
        L: {0.025: D, 0.02: D, 0.0199: L},
    },
    "binary": {S: {0.5625: H, 0.5624: S}, D: {0.3125: S, 0.3124: D}, L: {0.1875: D, 0.1874: L}},
    "custom": {3: {0.35: D}, H: {0.0: D}},  # free < low never holds for low = 0
}
CASES = [
    (name, prev, free, want)
    for name, by_prev in NEXT_STATE.items()
    for prev, by_free in by_prev.items()
    for free, want in by_free.items()
]


@pytest.mark.parametrize(
    ("name", "prev", "free", "expected"),
    CASES,
    ids=[f"{n}-{MemState(p).name}-{f}" for n, p, f, _ in CASES],
)
def test_next_state(name, prev, free, expected):
    assert next_state(prev, free, THRESHOLDS[name]) is expected


def test_default_up_margin_is_one_point():
    assert T.up_margin == 0.01


def test_walk_up_is_one_level_per_evaluation():
    """No LOW -> HIGH in one tick (was: any number of levels up at once)."""
    for t in (T, T0):
        s = L
        walk = []
        for _ in range(4):
            s = next_state(s, 0.5, t)
            walk.append(s)
        assert walk == [D, S, H, H]


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
        dict(up_margin=-0.01),
        dict(up_margin=1.0),
        dict(up_margin=float("nan")),
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
        (0, 100, 7),  # ceil((0.06 + 0.01) * 100) = 7, not 8 from float error
        (4, 100, 3),
        (6, 100, 1),  # at exactly high, still short of the margin SOFT must clear
        (7, 100, 0),
        (50, 100, 0),
        (0, 1000, 70),
        (10, 1000, 60),
        (0, 1001, 71),  # 70.07 -> 71
        (0, 0, 0),
        (0, 1, 1),  # 0.07 -> 1
        (100_000, 4_194_304, 193_602),  # 16 GiB of 4 KiB pages: ceil(293601.28) = 293602
    ],
)
def test_reclaim_goal_pages(free, total, goal):
    assert reclaim_goal_pages(free, total, T) == goal


def test_reclaim_goal_custom_thresholds():
    assert reclaim_goal_pages(0, 100, Thresholds(high=0.07, soft=0.04)) == 8
    assert reclaim_goal_pages(3, 300, Thresholds(high=0.1, soft=0.04)) == 30
    assert reclaim_goal_pages(0, 100, Thresholds(up_margin=0.0)) == 6


@pytest.mark.parametrize("total", [100, 1000, 1001, 65_536, 4_194_304])
@pytest.mark.parametrize("margin", [0.0, 0.01, 0.025])
def test_meeting_the_goal_lets_soft_climb_to_high(total, margin):
    """Reclaiming exactly the goal from SOFT must be enough to leave SOFT: a goal of the
    high threshold alone parks the host at ``high`` free, inside the band, for ever."""
    t = Thresholds(up_margin=margin)
    for free in (0, int(total * t.soft), int(total * t.high)):
        after = free + reclaim_goal_pages(free, total, t)
        assert next_state(MemState.SOFT, after / total, t) == MemState.HIGH


def test_reclaim_goal_validation():
    with pytest.raises(ValueError):
        reclaim_goal_pages(-1, 100, T)
    with pytest.raises(ValueError):
        reclaim_goal_pages(0, -1, T)


def test_actions():
    assert ACTIONS == {
        H: frozenset({"share"}),
        S: frozenset({"share", "balloon"}),
        D: frozenset({"share", "swap"}),
        L: frozenset({"share", "swap", "block"}),
    }


def test_hard_and_low_page_without_ballooning():
    """Paper, sec. 6.3: soft balloons, hard relies on paging (was: HARD/LOW balloon too)."""
    assert [s for s in Thresholds.states if "balloon" in ACTIONS[s]] == [S]
    assert [s for s in Thresholds.states if "swap" in ACTIONS[s]] == [D, L]
    assert [s for s in Thresholds.states if "block" in ACTIONS[s]] == [L]
