"""Tests for hosts/allocation.py: exact small cases, the idle-tax rule, properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from vmmsim.hosts.allocation import (
    AllocationInput,
    allocate,
    reclaim_order,
    shares_per_page,
    tax_cost,
)


def make(
    shares,
    available,
    *,
    active=None,
    pages=None,
    min_pages=None,
    max_pages=None,
    tax_rate=0.0,
) -> AllocationInput:
    n = len(shares)
    return AllocationInput(
        shares=np.asarray(shares, dtype=np.float64),
        pages=np.asarray(pages if pages is not None else [100] * n, dtype=np.int64),
        active=np.asarray(active if active is not None else [1.0] * n, dtype=np.float64),
        min_pages=np.asarray(min_pages if min_pages is not None else [0] * n, dtype=np.int64),
        max_pages=np.asarray(max_pages if max_pages is not None else [10_000] * n, dtype=np.int64),
        available_pages=available,
        tax_rate=tax_rate,
    )


# --- tax_cost / shares_per_page / reclaim_order -------------------------------------------


def test_tax_cost_values_and_clipping():
    f = np.array([-1.0, 0.0, 0.5, 1.0, 2.0])
    np.testing.assert_array_equal(tax_cost(f, 0.75), [4.0, 4.0, 2.5, 1.0, 1.0])
    np.testing.assert_array_equal(tax_cost(f, 0.0), np.ones(5))


@pytest.mark.parametrize("tau", [1.0, -0.1, 1.5, float("nan")])
def test_tax_rate_validated(tau):
    with pytest.raises(ValueError):
        tax_cost(np.array([0.5]), tau)
    with pytest.raises(ValueError):
        make([1, 1], 10, tax_rate=tau)


def test_shares_per_page():
    rho = shares_per_page(
        np.array([100.0, 100.0, 100.0]), np.array([10, 0, 50]), np.array([0.0, 1.0, 1.0]), 0.5
    )
    # 100 / (10 * 2) = 5 (idle, k = 2); P == 0 -> inf; 100 / (50 * 1) = 2
    np.testing.assert_array_equal(rho, [5.0, np.inf, 2.0])


def test_reclaim_order_lowest_rho_first_ties_by_index():
    inp = make([100, 200, 100, 50, 100], 1000, pages=[10, 10, 10, 0, 20])
    # rho: 10, 20, 10, inf, 5
    np.testing.assert_array_equal(reclaim_order(inp), [4, 0, 2, 1, 3])
    assert reclaim_order(inp).dtype == np.int64


# --- input validation -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(shares=[1, 1], available=10, min_pages=[5, 0], max_pages=[4, 10]),  # min > max
        dict(shares=[0, 1], available=10),  # zero shares
        dict(shares=[1, 1], available=-1),
        dict(shares=[1, 1], available=10.5),
        dict(shares=[1, 1], available=10, pages=[-1, 0]),
    ],
)
def test_input_validation(kwargs):
    shares = kwargs.pop("shares")
    available = kwargs.pop("available")
    with pytest.raises(ValueError):
        make(shares, available, **kwargs)


def test_fractional_page_bounds_rejected():
    with pytest.raises(ValueError):
        AllocationInput(
            shares=np.ones(2),
            pages=np.ones(2),
            active=np.ones(2),
            min_pages=np.array([0.5, 0.0]),
            max_pages=np.array([2.0, 2.0]),
            available_pages=1,
            tax_rate=0.0,
        )


def test_length_mismatch_rejected():
    with pytest.raises(ValueError):
        AllocationInput(
            shares=np.ones(2),
            pages=np.ones(3),
            active=np.ones(2),
            min_pages=np.zeros(2, dtype=np.int64),
            max_pages=np.ones(2, dtype=np.int64),
            available_pages=1,
            tax_rate=0.0,
        )


def test_input_is_readonly_snapshot():
    shares = np.array([1.0, 2.0])
    inp = make(shares, 10)
    shares[0] = 99.0
    assert inp.shares[0] == 1.0
    with pytest.raises(ValueError):
        inp.shares[0] = 5.0


# --- exact small cases ------------------------------------------------------------------


def test_uncontended_gets_max():
    inp = make([1, 5, 3], 1000, max_pages=[100, 200, 300])
    t = allocate(inp)
    assert t.dtype == np.int64
    np.testing.assert_array_equal(t, [100, 200, 300])


def test_equal_shares_equal_split():
    np.testing.assert_array_equal(allocate(make([10, 10, 10, 10], 400)), [100] * 4)


def test_shares_two_to_one():
    np.testing.assert_array_equal(allocate(make([200, 100], 300)), [200, 100])


def test_min_bound_respected():
    # 2:1 would give 200:100, but VM 1 has min 150
    t = allocate(make([200, 100], 300, min_pages=[0, 150]))
    np.testing.assert_array_equal(t, [150, 150])


def test_max_bound_respected():
    # 2:1 of 300 would give 200 to VM 0, max 120; the rest goes to VM 1
    t = allocate(make([200, 100], 300, max_pages=[120, 1000]))
    np.testing.assert_array_equal(t, [120, 180])


def test_min_overcommitted_returns_min():
    t = allocate(make([1, 2, 3], 100, min_pages=[40, 40, 40], max_pages=[50, 50, 50]))
    np.testing.assert_array_equal(t, [40, 40, 40])


def test_min_exactly_available_returns_min():
    t = allocate(make([1, 2], 80, min_pages=[40, 40], max_pages=[50, 50]))
    np.testing.assert_array_equal(t, [40, 40])


def test_sum_equals_available_with_rounding():
    t = allocate(make([1, 1, 1], 100))
    # 33.33 each: floors 33, one leftover page to the lowest index (equal remainders)
    np.testing.assert_array_equal(t, [34, 33, 33])
    t = allocate(make([1, 2, 4], 100))
    # exact 14.29, 28.57, 57.14 -> remainders .29, .57, .14 -> leftover 1 to VM 1
    np.testing.assert_array_equal(t, [14, 29, 57])
    assert int(t.sum()) == 100


def test_empty_input():
    t = allocate(make([], 10))
    assert t.shape == (0,) and t.dtype == np.int64


def test_deterministic():
    rng = np.random.default_rng(7)
    n = 200
    inp = make(
        rng.uniform(1, 100, n),
        30_000,
        active=rng.uniform(0, 1, n),
        min_pages=rng.integers(0, 50, n),
        max_pages=rng.integers(200, 400, n),
        tax_rate=0.75,
    )
    np.testing.assert_array_equal(allocate(inp), allocate(inp))


def test_permutation_invariance():
    rng = np.random.default_rng(1)
    n = 30
    shares = rng.uniform(1, 100, n)  # continuous: no ties in remainders
    active = rng.uniform(0, 1, n)
    mins = rng.integers(0, 100, n)
    maxs = mins + rng.integers(50, 500, n)
    avail = int(mins.sum() + 0.5 * (maxs.sum() - mins.sum()))
    base = allocate(
        make(shares, avail, active=active, min_pages=mins, max_pages=maxs, tax_rate=0.75)
    )
    assert np.any((base > mins) & (base < maxs))  # the water level is active
    for seed in range(5):
        p = np.random.default_rng(seed).permutation(n)
        t = allocate(
            make(
                shares[p],
                avail,
                active=active[p],
                min_pages=mins[p],
                max_pages=maxs[p],
                tax_rate=0.75,
            )
        )
        np.testing.assert_array_equal(t, base[p])


def test_current_pages_do_not_change_targets():
    a = allocate(make([3, 1], 400, pages=[10, 900]))
    b = allocate(make([3, 1], 400, pages=[900, 10]))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, [300, 100])


def test_large_n_runs():
    rng = np.random.default_rng(0)
    n = 10_000
    mins = rng.integers(0, 100, n)
    maxs = mins + rng.integers(0, 1000, n)
    inp = make(
        rng.uniform(1, 1000, n),
        int(mins.sum() + (maxs.sum() - mins.sum()) // 3),
        active=rng.uniform(0, 1, n),
        min_pages=mins,
        max_pages=maxs,
        tax_rate=0.75,
    )
    t = allocate(inp)
    assert int(t.sum()) == inp.available_pages
    assert np.all((t >= mins) & (t <= maxs))


# --- the idle memory tax ----------------------------------------------------------------
# VM 0 idle (f = 0, page cost k), VM 1 active (f = 1, cost 1), equal shares and pages:
# unclipped targets are proportional to S / cost, so active / idle = k = 1 / (1 - tau).


def _idle_active(tau, **kw):
    return allocate(make([100, 100], 1000, active=[0.0, 1.0], pages=[800, 800], tax_rate=tau, **kw))


def test_idle_tax_zero_is_plain_shares():
    np.testing.assert_array_equal(_idle_active(0.0), [500, 500])


def test_idle_tax_075_active_gets_4x():
    idle, active = _idle_active(0.75)
    assert abs(active - 4 * idle) <= 1
    assert (idle, active) == (200, 800)


def test_idle_tax_05_active_gets_2x():
    idle, active = _idle_active(0.5)
    assert abs(active - 2 * idle) <= 1
    assert (idle, active) == (333, 667)  # 333.33 / 666.67: larger remainder gets the page


def test_idle_tax_bounded_by_min():
    # 4x rule would leave the idle VM 200 pages; its min is 300
    np.testing.assert_array_equal(_idle_active(0.75, min_pages=[300, 0]), [300, 700])


def test_idle_tax_bounded_by_max():
    # 4x rule would give the active VM 800 pages; its max is 600
    np.testing.assert_array_equal(_idle_active(0.75, max_pages=[10_000, 600]), [400, 600])


# --- properties -------------------------------------------------------------------------


@st.composite
def problems(draw, max_n=50, max_pages=2000):
    n = draw(st.integers(1, max_n))
    floats = st.floats(1.0, 1000.0, allow_nan=False)
    shares = np.array(draw(st.lists(floats, min_size=n, max_size=n)))
    active = np.array(draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n)))
    mins = np.array(draw(st.lists(st.integers(0, max_pages), min_size=n, max_size=n)))
    spans = np.array(draw(st.lists(st.integers(0, max_pages), min_size=n, max_size=n)))
    maxs = mins + spans
    avail = draw(st.integers(0, int(maxs.sum()) + 10))
    tau = draw(st.floats(0.0, 0.95))
    return make(shares, avail, active=active, min_pages=mins, max_pages=maxs, tax_rate=tau)


@settings(max_examples=300, deadline=None)
@given(problems())
def test_allocation_properties(inp):
    t = allocate(inp)
    lo, hi, avail = inp.min_pages, inp.max_pages, inp.available_pages
    assert t.dtype == np.int64 and t.shape == lo.shape
    assert np.all(lo <= t) and np.all(t <= hi)
    if lo.sum() <= avail:
        assert int(t.sum()) == min(avail, int(hi.sum()))
    else:
        np.testing.assert_array_equal(t, lo)
        return
    # water level: y = t / w is 1 / rho; unclipped VMs share y within one page each
    w = inp.shares / tax_cost(inp.active, inp.tax_rate)
    y = t / w
    tol = 1.0 / w  # one page, in units of 1 / rho
    eps = 1e-9 * (1.0 + np.abs(y))
    free = (t > lo) & (t < hi)
    if hi.sum() > avail and free.any():
        yf, tf = y[free], tol[free]
        # pairwise |y_i - y_j| <= tol_i + tol_j among unclipped VMs
        assert np.all(np.abs(yf[:, None] - yf[None, :]) <= tf[:, None] + tf[None, :] + eps.max())
        # VMs at max have rho >= rho* (y not above the level), at min rho <= rho*
        at_max, at_min = (t == hi) & (t > lo), (t == lo) & (t < hi)
        ref_hi = np.max(yf + tf)
        ref_lo = np.min(yf - tf)
        assert np.all(y[at_max] - tol[at_max] <= ref_hi + eps.max())
        assert np.all(y[at_min] + tol[at_min] >= ref_lo - eps.max())


def _greedy_reclaim(inp: AllocationInput) -> np.ndarray:
    """Reference: start at max, take one page at a time from the lowest-rho VM above min."""
    t = inp.max_pages.copy()
    cost = tax_cost(inp.active, inp.tax_rate)
    while t.sum() > inp.available_pages:
        with np.errstate(divide="ignore"):  # t == 0 only where t == min (masked out)
            rho = np.where(t > inp.min_pages, inp.shares / (t * cost), np.inf)
        i = int(np.argmin(rho))
        if not np.isfinite(rho[i]):
            break
        t[i] -= 1
    return t


@settings(max_examples=150, deadline=None)
@given(problems(max_n=6, max_pages=40))
def test_matches_incremental_reclaim(inp):
    # ESX's rule applied page by page ends within one page of the closed-form targets
    t = allocate(inp)
    g = _greedy_reclaim(inp)
    assert np.all(np.abs(t - g) <= 1)
