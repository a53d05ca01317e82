"""Share-based memory allocation with an idle memory tax (ESX, Waldspurger OSDI 2002, sec. 5).

Each VM i holds shares ``S_i``, currently ``P_i`` pages, and has an estimated active
fraction ``f_i``. With tax rate ``tau`` an idle page costs ``k = 1 / (1 - tau)`` active
pages, so the VM's shares-per-page ratio is::

    rho_i = S_i / (P_i (f_i + k (1 - f_i)))

ESX reclaims from the VM with the lowest ``rho`` first. Repeating that until the VMs fit
in the available memory ends at a *water level* ``rho*``: every VM that was reclaimed from
now sits exactly at ``rho*`` (or at its ``min``), every other VM keeps up to its ``max``.
:func:`allocate` computes that end point in closed form; :func:`reclaim_order` gives the
order for callers that reclaim incrementally instead.

Covered here: the pure arithmetic (tax cost, rho, water-level targets, integer rounding,
reclaim order). All functions are deterministic and free of side effects.

*Not* covered: estimating ``f`` (see the working-set sampler), deciding *how* pages are
reclaimed (sharing, ballooning, swapping: the host manager and ``hosts/free_memory.py``),
when to reallocate (the coordinator, every 15 s in ESX), and feedback of a new allocation
on ``f``. This module proposes targets; the caller decides and acts.

Allocation is a policy kind (:mod:`vmmsim.policies`, ``[policy] allocation``): a policy
is a function ``(AllocationView) -> targets`` (a ``{vm: pages}`` mapping or a sequence in
``view.vms`` order); :func:`share_idle_tax` (the default) is :func:`allocate` behind that
protocol, and :func:`check_targets` is the contract every decision must meet.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vmmsim.policies import PolicyError, register

__all__ = [
    "AllocationInput",
    "AllocationView",
    "allocate",
    "check_targets",
    "share_idle_tax",
    "reclaim_order",
    "shares_per_page",
    "tax_cost",
]


def _check_tax_rate(tax_rate: float) -> float:
    """Return ``tax_rate`` as float after checking 0 <= tau < 1 (NaN rejected too)."""
    tau = float(tax_rate)
    if not 0.0 <= tau < 1.0:  # also False for NaN
        raise ValueError(f"tax_rate must satisfy 0 <= tau < 1, got {tax_rate!r}")
    return tau


def tax_cost(f: np.ndarray, tax_rate: float) -> np.ndarray:
    """Per-page cost ``f + k (1 - f)`` with ``k = 1 / (1 - tau)``.

    ``f`` (active fraction) is clipped to [0, 1], so the cost lies in [1, k]: an active
    page costs 1, an idle page costs ``k``. Raises ``ValueError`` unless 0 <= tau < 1.
    """
    tau = _check_tax_rate(tax_rate)
    k = 1.0 / (1.0 - tau)  # idle-page cost in units of active pages; tau=0.75 -> k=4
    fc = np.clip(np.asarray(f, dtype=np.float64), 0.0, 1.0)
    return fc + k * (1.0 - fc)  # active part at cost 1, idle part at cost k


def shares_per_page(
    shares: np.ndarray, pages: np.ndarray, f: np.ndarray, tax_rate: float
) -> np.ndarray:
    """``rho = S / (P (f + k (1 - f)))`` per VM; ``+inf`` where ``P == 0``.

    A VM holding no pages has an infinite claim per page and is never reclaimed from.
    """
    s = np.asarray(shares, dtype=np.float64)
    p = np.asarray(pages, dtype=np.float64)
    denom = p * tax_cost(f, tax_rate)  # taxed page count: P active-equivalent pages
    rho = np.full(np.broadcast(s, denom).shape, np.inf)
    np.divide(s, denom, out=rho, where=p != 0)  # leaves +inf where P == 0
    return rho


def _as_vector(name: str, a: np.ndarray, dtype: type) -> np.ndarray:
    """Read-only 1-D copy of ``a`` in ``dtype``; rejects non-finite values."""
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if dtype is np.int64 and arr.dtype.kind == "f" and not np.all(arr == np.floor(arr)):
        raise ValueError(f"{name} must hold whole page counts")
    out = arr.astype(dtype, copy=True)
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class AllocationInput:
    """One allocation problem: per-VM arrays (length n) plus host-wide scalars.

    Arrays are copied on construction and made read-only, so an instance is an immutable
    snapshot (``eq=False``: instances compare by identity, as numpy arrays have no single
    truth value).

    - ``shares``: S_i > 0 (float64).
    - ``pages``: currently allocated pages P_i >= 0 (float64; used by :func:`reclaim_order`
      only, the targets of :func:`allocate` do not depend on it).
    - ``active``: estimated active fraction f_i, clipped to [0, 1] when used (float64).
    - ``min_pages`` / ``max_pages``: whole page counts, 0 <= min <= max (int64).
    - ``available_pages``: pages the VMs may hold in total (whole, >= 0).
    - ``tax_rate``: tau in [0, 1).
    """

    shares: np.ndarray
    pages: np.ndarray
    active: np.ndarray
    min_pages: np.ndarray
    max_pages: np.ndarray
    available_pages: int
    tax_rate: float = 0.75

    def __post_init__(self) -> None:
        fields = {
            "shares": np.float64,
            "pages": np.float64,
            "active": np.float64,
            "min_pages": np.int64,
            "max_pages": np.int64,
        }
        for name, dtype in fields.items():
            # frozen dataclass: bypass __setattr__ to store the validated copy
            object.__setattr__(self, name, _as_vector(name, getattr(self, name), dtype))
        n = self.shares.shape[0]
        for name in fields:
            if getattr(self, name).shape[0] != n:
                raise ValueError(f"all per-VM arrays must have length {n}; {name} differs")
        if np.any(self.shares <= 0):
            raise ValueError("shares must be > 0")
        if np.any(self.pages < 0):
            raise ValueError("pages must be >= 0")
        if np.any(self.min_pages < 0) or np.any(self.min_pages > self.max_pages):
            raise ValueError("need 0 <= min_pages <= max_pages")
        avail = self.available_pages
        if isinstance(avail, bool) or int(avail) != avail or avail < 0:
            raise ValueError(f"available_pages must be a whole number >= 0, got {avail!r}")
        object.__setattr__(self, "available_pages", int(avail))
        object.__setattr__(self, "tax_rate", _check_tax_rate(self.tax_rate))

    @property
    def n(self) -> int:
        """Number of VMs."""
        return int(self.shares.shape[0])


def reclaim_order(inp: AllocationInput) -> np.ndarray:
    """VM indices from lowest current rho to highest, ties by lower index (int64).

    Uses the *current* pages ``P``; VMs with ``P == 0`` (rho = +inf) come last.
    """
    rho = shares_per_page(inp.shares, inp.pages, inp.active, inp.tax_rate)
    return np.argsort(rho, kind="stable").astype(np.int64)  # stable: ties keep index order


def _water_level(w: np.ndarray, lo_pages: np.ndarray, hi_pages: np.ndarray, avail: int) -> float:
    """Solve ``sum_i clip(w_i * lam, lo_i, hi_i) == avail`` for ``lam = 1 / rho*``.

    Requires ``w > 0`` and ``sum(lo) < avail < sum(hi)``. ``g(lam)`` is continuous,
    nondecreasing and piecewise linear with breakpoints ``lo_i / w_i`` (VM i leaves its
    min) and ``hi_i / w_i`` (VM i reaches its max). We evaluate g at every breakpoint with
    sorted prefix sums (O(n log n)), pick the segment where g crosses ``avail`` and solve
    the linear piece there in closed form.
    """
    lo = lo_pages.astype(np.float64)
    hi = hi_pages.astype(np.float64)
    b_lo = lo / w  # lam at which VM i starts to rise above its min
    b_hi = hi / w  # lam at which VM i reaches its max
    o_lo = np.argsort(b_lo, kind="stable")
    o_hi = np.argsort(b_hi, kind="stable")
    s_lo, s_hi = b_lo[o_lo], b_hi[o_hi]
    # prefix sums (leading 0): over the first m VMs in breakpoint order
    cum_lo_min = np.concatenate(([0], np.cumsum(lo_pages[o_lo])))  # int64: exact
    cum_hi_max = np.concatenate(([0], np.cumsum(hi_pages[o_hi])))  # int64: exact
    cum_lo_w = np.concatenate(([0.0], np.cumsum(w[o_lo])))
    cum_hi_w = np.concatenate(([0.0], np.cumsum(w[o_hi])))
    total_min = int(cum_lo_min[-1])

    bps = np.unique(np.concatenate((s_lo, s_hi)))  # sorted candidate breakpoints
    n_a = np.searchsorted(s_lo, bps, side="right")  # VMs that have left their min
    n_b = np.searchsorted(s_hi, bps, side="right")  # VMs that sit at their max (subset)
    # g(b) = mins of VMs not yet rising + maxes of saturated VMs + b * w of rising VMs
    g = (total_min - cum_lo_min[n_a] + cum_hi_max[n_b]).astype(np.float64) + bps * (
        cum_lo_w[n_a] - cum_hi_w[n_b]
    )
    # first breakpoint with g >= avail; g(bps[0]) == sum(lo) < avail, so j >= 1
    j = int(np.searchsorted(g, avail, side="left"))
    j = min(max(j, 1), bps.shape[0] - 1)
    b0 = bps[j - 1]
    # Recompute the linear piece on (b0, bps[j]) directly (no cancellation between large
    # prefix sums): constant part C and slope W, then lam = (avail - C) / W.
    rising = (b_lo <= b0) & (b_hi > b0)
    at_max = b_hi <= b0
    at_min = b_lo > b0
    const = int(lo_pages[at_min].sum()) + int(hi_pages[at_max].sum())  # exact integers
    slope = float(np.sort(w[rising]).sum())  # sorted: sum independent of VM order
    if slope <= 0.0:  # cannot happen for a true crossing; fall back to the breakpoint
        return float(bps[j])
    return (avail - const) / slope


def _round_to_budget(
    x: np.ndarray, lo_pages: np.ndarray, hi_pages: np.ndarray, avail: int
) -> np.ndarray:
    """Round real targets ``x`` (lo <= x <= hi) to int64 with ``sum == avail``.

    Floors first (never below ``lo`` since ``lo`` is whole), then hands the leftover pages
    out one each, largest fractional remainder first, ties by lower index, never above
    ``hi``. If float error made the floors overshoot, pages are taken back from the
    smallest remainders first (ties by higher index), never below ``lo``.
    """
    base = np.clip(np.floor(x), lo_pages, hi_pages).astype(np.int64)
    frac = x - base  # in [0, 1) up to float error
    idx = np.arange(x.shape[0])
    leftover = avail - int(base.sum())  # whole pages still to place (or to take back)
    if leftover > 0:
        can = np.flatnonzero(base < hi_pages)
        # lexsort: last key is primary -> by -frac, then by index
        pick = can[np.lexsort((idx[can], -frac[can]))][:leftover]
        base[pick] += 1
    elif leftover < 0:
        can = np.flatnonzero(base > lo_pages)
        pick = can[np.lexsort((-idx[can], frac[can]))][:-leftover]
        base[pick] -= 1
    return base


def allocate(inp: AllocationInput) -> np.ndarray:
    """Target pages per VM (int64) under share-based allocation with the idle memory tax.

    Semantics, with ``cost_i = f_i + k (1 - f_i)`` and ``A = available_pages``:

    1. Uncontended, ``sum(max) <= A``: every VM gets its ``max``.
    2. Overcommitted, ``sum(min) >= A``: every VM gets its ``min`` (the sum may exceed
       ``A``; the caller detects and reports the overcommit).
    3. Otherwise the water level ``rho*`` with
       ``sum_i clip(S_i / (rho* cost_i), min_i, max_i) == A``, i.e. where repeatedly
       reclaiming from the lowest-rho VM stops. Each VM gets
       ``clip(S_i / (rho* cost_i), min_i, max_i)``: VMs that would sit below ``rho*`` are
       cut to ``S / (rho* cost)`` (never below ``min``), the others keep up to ``max``.
       Solved in closed form over the sorted breakpoints (O(n log n)), no iteration.
       Rounding: floor, then the leftover pages one each by largest fractional remainder,
       ties by lower index; ``sum(targets) == A`` exactly.

    Targets depend on shares, ``f``, bounds and ``A`` only, not on current ``pages``
    (use :func:`reclaim_order` for the incremental view). ``f`` is taken as given: the
    effect of the new allocation on the active fraction is not modelled. Pure function;
    permuting the VMs permutes the targets, except through the rounding tie-break.
    """
    lo, hi, avail = inp.min_pages, inp.max_pages, inp.available_pages
    if int(hi.sum()) <= avail:  # case 1: everyone fits at max
        return hi.copy()
    if int(lo.sum()) >= avail:  # case 2: even the minimums do not fit (or fit exactly)
        return lo.copy()
    cost = tax_cost(inp.active, inp.tax_rate)
    w = inp.shares / cost  # pages VM i receives per unit of 1/rho
    lam = _water_level(w, lo, hi, avail)  # lam = 1 / rho*
    x = np.clip(w * lam, lo, hi)  # real-valued targets at the water level
    return _round_to_budget(x, lo, hi, avail)


@dataclass(frozen=True)
class AllocationView:
    """What an allocation policy sees of one host at a reallocation point (read-only).

    Per-VM tuples in ``vms`` order (VM names sorted): ``shares``; ``pages`` (resident
    pages now); ``active`` (the working-set estimate, in [0, 1]); ``min_pages`` /
    ``max_pages`` (bounds every target must respect: ``min`` counts pinned pages).
    Host-wide: ``available_pages`` (pages the VMs may hold in all: memory less overheads
    and the free margin, plus what sharing saves) and ``tax_rate``.
    """

    host: str
    vms: tuple[str, ...]
    shares: tuple[float, ...]
    pages: tuple[float, ...]
    active: tuple[float, ...]
    min_pages: tuple[int, ...]
    max_pages: tuple[int, ...]
    available_pages: int
    tax_rate: float

    def to_input(self) -> AllocationInput:
        """The same problem as an :class:`AllocationInput` (numpy arrays)."""
        return AllocationInput(
            shares=np.asarray(self.shares, dtype=np.float64),
            pages=np.asarray(self.pages, dtype=np.float64),
            active=np.asarray(self.active, dtype=np.float64),
            min_pages=np.asarray(self.min_pages, dtype=np.int64),
            max_pages=np.asarray(self.max_pages, dtype=np.int64),
            available_pages=self.available_pages,
            tax_rate=self.tax_rate,
        )


@register("allocation", "share_idle_tax")
def share_idle_tax(view: AllocationView) -> list[int]:
    """ESX's share-based allocation with the idle memory tax (:func:`allocate`)."""
    if not view.vms:
        return []
    return allocate(view.to_input()).tolist()


def check_targets(view: AllocationView, decision: Any, policy: str) -> dict[str, int]:
    """``decision`` as ``{vm: pages}`` after checking the allocation contract:

    one whole number per VM of ``view.vms`` (a mapping with exactly those keys, or a
    sequence in that order), ``min_pages <= t <= max_pages``, and
    ``sum(t) <= max(available_pages, sum(min_pages))`` (minimums always fit: the host
    reclaims to them).  Anything else is a :class:`PolicyError` naming ``policy``."""
    where = f"allocation policy {policy!r} on host {view.host}"
    if isinstance(decision, Mapping):
        keys = set(decision)
        if keys != set(view.vms):
            extra, missing = sorted(map(str, keys - set(view.vms))), sorted(set(view.vms) - keys)
            raise PolicyError(
                f"{where}: returned targets for the wrong VMs "
                f"(missing {missing[:5]}, unknown {extra[:5]})"
            )
        values = [decision[v] for v in view.vms]
    elif isinstance(decision, (Sequence, np.ndarray)) and not isinstance(decision, (str, bytes)):
        values = list(decision)
        if len(values) != len(view.vms):
            raise PolicyError(f"{where}: returned {len(values)} targets for {len(view.vms)} VMs")
    else:
        raise PolicyError(
            f"{where}: must return a {{vm: pages}} mapping or a sequence, "
            f"got {type(decision).__name__}"
        )
    out: dict[str, int] = {}
    for vm, t, lo, hi in zip(view.vms, values, view.min_pages, view.max_pages, strict=True):
        if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
            raise PolicyError(f"{where}: target of {vm} is not a whole number ({t!r})")
        if not lo <= t <= hi:
            raise PolicyError(f"{where}: target of {vm} = {int(t)} outside [{lo}, {hi}] pages")
        out[vm] = int(t)
    total, cap = sum(out.values()), max(view.available_pages, sum(view.min_pages))
    if total > cap:
        raise PolicyError(f"{where}: targets sum to {total} pages > {cap} available")
    return out
