"""ESX admission control: can a host hold a set of VMs?  The one home of the rule.

Scope: pure arithmetic over per-VM claims, in any one unit (MB for the config and
placement, pages for live migration); used by config validation (pinned VMs,
:mod:`cluster.config`), placement (:mod:`cluster.placement`) and migration
(:func:`hosts.migration_host.can_accept`, :mod:`cluster.migration_policy`).  A host
admits a set of VMs when

* ``reserve``: the sum of each VM's guaranteed minimum (``min_mb``, at least its
  ``pinned_mb``) plus overhead fits in machine memory;
* ``pinned``: the sum of pinned memory plus overhead -- frames nothing can ever reclaim
  -- leaves at least one page of machine memory, so that every other page can still be
  backed (swapping others out as needed);
* ``commit``: the sum of each VM's *configured* size (``memory_mb``, not ``max_mb``)
  plus overhead fits in memory + swap, so no host can run out of both.  As in ESX, a
  VM's swap is sized from its configured memory: ``max_mb`` caps what it may keep
  resident, but it can still touch every page, and the pages beyond ``max_mb`` must be
  backed by swap.  Less two pages: one frame or slot must stay free (when every page
  has been touched and swap is full, a page read back from swap needs a frame before
  its slot is freed), and memory and swap, each rounded down to whole pages, can
  together lose one page more than the VMs' sizes do.

Not covered: the dynamic part of migration admission (free frames above the HIGH
reserve, :func:`hosts.migration_host.admission_reason`), or choosing hosts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Claim", "Refusal", "check", "claim", "totals"]


@dataclass(frozen=True)
class Claim:
    """What one VM (or a sum of VMs: ``+``) claims of a host, in one unit."""

    reserve: float = 0.0  # max(min, pinned) + overhead: must be in memory
    pinned: float = 0.0  # pinned + overhead: never reclaimable
    commit: float = 0.0  # configured size + overhead: must be in memory + swap

    def __add__(self, other: Claim) -> Claim:
        return Claim(
            self.reserve + other.reserve, self.pinned + other.pinned, self.commit + other.commit
        )

    def __sub__(self, other: Claim) -> Claim:
        return Claim(
            self.reserve - other.reserve, self.pinned - other.pinned, self.commit - other.commit
        )


def claim(*, min: float, pinned: float, size: float, overhead: float) -> Claim:  # noqa: A002
    """The claim of one VM with these sizes (all in the same unit); ``size`` is its
    configured memory (``memory_mb``), whatever its ``max_mb``."""
    return Claim(
        reserve=(min if min > pinned else pinned) + overhead,
        pinned=pinned + overhead,
        commit=size + overhead,
    )


def totals(claims: Iterable[Claim]) -> Claim:
    out = Claim()
    for c in claims:
        out = out + c
    return out


@dataclass(frozen=True)
class Refusal:
    """Why a host cannot hold a set of VMs: which rule, the total and the limit."""

    rule: str  # "reserve" | "pinned" | "commit"
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
        head = "admission" if keys else "overcommitted"
        return (
            f"{head}: sum of {k[2]} + {k[3]} over {which} is {self.total:g} {unit} "
            f"> {k[4]} + {k[5]} less two pages = {self.limit:g} {unit} {tail}"
        )


def check(total: Claim, *, memory: float, swap: float, page: float = 1.0) -> Refusal | None:
    """None if a host of ``memory`` and ``swap`` admits VMs claiming ``total`` (their
    sum), else the first rule broken (reserve, pinned, commit).  ``page``: one page in
    the unit used; comparisons allow 1e-9 of float noise."""
    eps = 1e-9
    if total.reserve > memory + eps:
        return Refusal("reserve", total.reserve, memory)
    if total.pinned > memory - page + eps:
        return Refusal("pinned", total.pinned, memory - page)
    if total.commit > memory + swap - 2 * page + eps:
        return Refusal("commit", total.commit, memory + swap - 2 * page)
    return None


def shortfall(total: Claim, *, memory: float, swap: float, page: float = 1.0) -> float:
    """How far ``total`` is from being admitted (0 if it is): the largest excess over
    the three limits (used to name the closest host when a VM fits nowhere)."""
    return max(
        0.0,
        total.reserve - memory,
        total.pinned + page - memory,
        total.commit + 2 * page - memory - swap,
    )
