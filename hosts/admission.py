"""ESX admission control: can a host hold a set of VMs?  The one home of the rule.

Scope: pure arithmetic over per-VM claims, in any one unit (MB for the config and
placement, pages for live migration); used by config validation (pinned VMs,
:mod:`cluster.config`), placement of every VM (:mod:`cluster.placement`) and migration
(:func:`hosts.migration_host.can_accept`, :mod:`cluster.migration_policy`).

The paper's rule (Waldspurger, OSDI 2002, sec. 6 "Admission Control"): a VM powers on
only if unreserved machine memory covers its ``min + overhead`` and unreserved swap
space covers the rest of its configured size, ``max - min`` (the paper's *max* is the
size configured for the guest: ``memory_mb`` here, whatever ``max_mb`` caps resident).
A host admits a set of VMs when

* ``reserve`` (paper): the sum of each VM's guaranteed minimum (``min_mb``, at least its
  ``pinned_mb``) plus overhead fits in machine memory;
* ``pinned``: the sum of pinned memory plus overhead -- frames nothing can ever reclaim
  -- leaves at least one page of machine memory, so that every other page can still be
  backed (swapping others out as needed);
* ``swap`` (paper): the sum of each VM's configured size less its minimum (at least
  pinned) fits in swap, so every page beyond the reserved minimum has a swap slot even
  if the host swaps it out (the paper: "this reservation ensures the system is able to
  preserve VM memory under any circumstances");
* ``commit``: the two above leave two pages over in all -- configured sizes plus
  overhead within memory + swap less two pages.  Not in the paper, a margin of this
  simulator: when every page has been touched and swap is full, a page read back from
  swap needs a frame before its slot is freed, and memory and swap, each rounded down
  to whole pages, can together lose one page more than the VMs' sizes do.  ``reserve``
  and ``swap`` imply it except within two pages of both limits.

Not covered: the dynamic part of migration admission (free frames above the HIGH
reserve, :func:`hosts.migration_host.admission_reason`), or choosing hosts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["RULES", "Claim", "Refusal", "check", "claim", "shortfall", "totals"]

RULES = ("reserve", "pinned", "swap", "commit")  # checked in this order


@dataclass(frozen=True)
class Claim:
    """What one VM (or a sum of VMs: ``+``) claims of a host, in one unit."""

    reserve: float = 0.0  # max(min, pinned) + overhead: must be in memory
    pinned: float = 0.0  # pinned + overhead: never reclaimable
    commit: float = 0.0  # configured size + overhead: must be in memory + swap
    swap: float = 0.0  # configured size - max(min, pinned): must be in swap

    def __add__(self, other: Claim) -> Claim:
        return Claim(
            self.reserve + other.reserve,
            self.pinned + other.pinned,
            self.commit + other.commit,
            self.swap + other.swap,
        )

    def __sub__(self, other: Claim) -> Claim:
        return Claim(
            self.reserve - other.reserve,
            self.pinned - other.pinned,
            self.commit - other.commit,
            self.swap - other.swap,
        )


def claim(*, min: float, pinned: float, size: float, overhead: float) -> Claim:  # noqa: A002
    """The claim of one VM with these sizes (all in the same unit); ``size`` is its
    configured memory (``memory_mb``, the paper's *max*), whatever its ``max_mb``."""
    low = min if min > pinned else pinned
    return Claim(
        reserve=low + overhead,
        pinned=pinned + overhead,
        commit=size + overhead,
        swap=max(0.0, size - low),
    )


def totals(claims: Iterable[Claim]) -> Claim:
    out = Claim()
    for c in claims:
        out = out + c
    return out


@dataclass(frozen=True)
class Refusal:
    """Why a host cannot hold a set of VMs: which rule, the total and the limit."""

    rule: str  # one of RULES
    total: float
    limit: float

    @property
    def over(self) -> float:
        return self.total - self.limit

    def message(self, which: str, unit: str = "MB", keys: bool = True) -> str:
        """One line; ``which`` names the VMs ("its 2 pinned VMs (a, b)"); ``keys``: use
        the config's key names (``min_mb`` ...) rather than plain words."""
        k = (
            ("min_mb", "pinned_mb", "memory_mb", "vm_overhead_mb", "memory_mb", "swap_mb")
            if keys
            else ("min", "pinned", "size", "overhead", "memory", "swap")
        )
        tail = f"(over by {self.over:g} {unit})"
        if self.rule == "reserve":
            return (
                f"admission: sum of {k[0]} + {k[3]} over {which} is {self.total:g} {unit} "
                f"> {k[4]} {self.limit:g} {unit} {tail} ({k[0]} counts at least {k[1]})"
            )
        if self.rule == "pinned":
            return (
                f"admission: sum of {k[1]} + {k[3]} over {which} is {self.total:g} {unit} "
                f"> {k[4]} less one page = {self.limit:g} {unit} {tail}: pinned memory "
                "must leave room in machine memory for the pages that can be reclaimed"
            )
        if self.rule == "swap":
            return (
                f"admission: sum of {k[2]} - {k[0]} over {which} is {self.total:g} {unit} "
                f"> {k[5]} {self.limit:g} {unit} {tail}: swap must hold every page beyond "
                f"the reserved minimum ({k[0]} counts at least {k[1]})"
            )
        return (
            f"admission: sum of {k[2]} + {k[3]} over {which} is {self.total:g} {unit} "
            f"> {k[4]} + {k[5]} less two pages = {self.limit:g} {unit} {tail}"
        )


def _limits(memory: float, swap: float, page: float) -> dict[str, float]:
    return {
        "reserve": memory,
        "pinned": memory - page,
        "swap": swap,
        "commit": memory + swap - 2 * page,
    }


def check(total: Claim, *, memory: float, swap: float, page: float = 1.0) -> Refusal | None:
    """None if a host of ``memory`` and ``swap`` admits VMs claiming ``total`` (their
    sum), else the first rule broken (in :data:`RULES` order).  ``page``: one page in
    the unit used; comparisons allow 1e-9 of float noise."""
    for rule, limit in _limits(memory, swap, page).items():
        have = getattr(total, rule)
        if have > limit + 1e-9:
            return Refusal(rule, have, limit)
    return None


def shortfall(total: Claim, *, memory: float, swap: float, page: float = 1.0) -> float:
    """How far ``total`` is from being admitted (0 if it is): the largest excess over
    the limits (used to name the closest host when a VM fits nowhere)."""
    lim = _limits(memory, swap, page)
    return max(0.0, *(getattr(total, r) - lim[r] for r in RULES))
