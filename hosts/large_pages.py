"""Large pages: guest memory backed by 2 MB machine pages, one VM's regions.

ESX (3.5 and later, with hardware-assisted MMU virtualisation) backs guest memory with
2 MB machine pages where it can: a TLB miss then walks one level less (VMware, "Large
Page Performance", 2008; "Understanding Memory Resource Management in VMware vSphere
5.0", 2011).  Inside a large page nothing is done per 4 KB page: no page sharing, no
ballooning, no swapping.  Under memory pressure ESX *breaks* large pages into 4 KB pages,
which then share, balloon and swap (VMware KB 1021095; ESX 5.x breaks them when the host
reaches the soft state, vSphere 6 already in its "clear" state).  ESX's sharing scanner
still hashes the small pages inside large pages and keeps their hints, so that they share
as soon as the large page is broken (KB 1021095, "Transparent Page Sharing (TPS) in
hardware MMU systems"): modelled by a ``seen`` bit per page, set when the scanner visits
a page of an intact large page; at the break those pages go through the sharing scan at
once (their current bytes, verified as any scan's: a hint gone stale in between, which
ESX would not share at once, shares here if the page matches now).  A broken large page
is never re-formed (ESX has no khugepaged-like promotion; KVM's transparent huge pages
do).

Scope: which 2 MB *regions* of one VM's guest-physical memory (``region_pages`` pages
each, 512 at 4 KiB pages; the tail of a VM whose size is not a multiple of 2 MB is small
pages only) are backed by an intact large page, as two boolean arrays over regions:

=============  ===========  ============================================================
``intact``     ``backed``   meaning
=============  ===========  ============================================================
True           False        never touched yet: a large page at its first touch
True           True         an intact large page: every page of it is MAPPED (private)
False          True         a large page that was broken: 4 KB pages from then on
False          False        backed by 4 KB pages from its first touch (no large page was
                            to be had: the host was short of frames or under pressure)
=============  ===========  ============================================================

and ``seen`` over the pages of intact large pages (above), plus the counts of each kind
(kept incrementally: metrics cost O(1)) and the large pages broken this tick.
:func:`breaks_at` is the rule comparing free-memory states.

A large page whose pages are all discarded at once (free page reporting of a whole 2 MB
block, :meth:`hosts.host_memory.HostMemory.discard`) goes back to "never touched yet"
(:meth:`LargePages.mark_unbacked`): Linux zaps the whole huge PMD and backs the region with
a new huge page at its next fault.

Not covered: the page operations (breaking with the sharing scan of its pages, backing a
region at first touch, discarding: :class:`hosts.host_memory.HostMemory`), when the
scanner breaks pages and when a region is backed
(:class:`hosts.host_manager.HostMemoryManager`).
Machine contiguity is not modelled: a large page is any ``region_pages`` frames, and a
large page can be had whenever that many frames are free (ESX also needs them
contiguous, which fragmentation makes rarer under pressure).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.free_memory import BY_PRESSURE, MemState, pressure

#: Bytes of one large page (x86-64's 2 MB page, what ESX backs guest memory with).
LARGE_PAGE_BYTES = 2 * 2**20


def region_pages(page_size: int) -> int:
    """Guest pages per large page: 2 MB / ``page_size`` (512 at 4 KiB)."""
    return max(1, LARGE_PAGE_BYTES // int(page_size))


def state_names() -> tuple[str, ...]:
    """Names ``policy.large_page_break_state`` accepts: the free-memory states, in
    pressure order (whatever :class:`hosts.free_memory.MemState` holds)."""
    return tuple(s.name.lower() for s in BY_PRESSURE)


def breaks_at(state: Any, break_state: str) -> bool:
    """True when free-memory ``state`` is ``break_state`` or one under more pressure:
    the scanner breaks the large pages it visits and no new large page is allocated.

    States compare by their pressure order (:func:`hosts.free_memory.pressure`: CLEAR,
    vSphere 6's state between HIGH and SOFT, has a value after LOW)."""
    return pressure(MemState(int(state))) >= pressure(MemState[break_state.upper()])


class LargePages:
    """The large-page regions of one VM (module docstring); lives on its
    :class:`hosts.phys_map.PhysMap` as ``pmap.large`` (None: no large pages)."""

    def __init__(self, n_pages: int, region_pages: int) -> None:
        if region_pages < 1:
            raise ValueError(f"region_pages must be >= 1 (got {region_pages})")
        self.region_pages = int(region_pages)
        self.n_regions = int(n_pages) // self.region_pages
        self.intact = np.ones(self.n_regions, dtype=bool)
        self.backed = np.zeros(self.n_regions, dtype=bool)
        self.seen = np.zeros(self.n_regions * self.region_pages, dtype=bool)
        self.n_intact = 0  # intact and backed: the large pages the VM holds
        self.n_broken = 0  # backed, then broken
        self.n_small = 0  # never backed by a large page
        self.tick_broken = 0  # large pages broken this tick (reset by the host each tick)
        self.shared_at_break = 0  # pages shared by the scan of just-broken large pages

    # ------------------------------------------------------------------ pages <-> regions
    def regions_of(self, ppns: np.ndarray) -> np.ndarray:
        """Sorted unique *intact* regions holding any of ``ppns`` (tail pages have none)."""
        r = np.asarray(ppns, dtype=np.int64) // self.region_pages
        r = r[r < self.n_regions]
        if not len(r):
            return r
        s = np.sort(r)
        u = s[np.concatenate(([True], s[1:] != s[:-1]))]
        return u[self.intact[u]]

    def pages_of(self, regions: np.ndarray) -> np.ndarray:
        """Guest pages of ``regions`` (ascending when ``regions`` is)."""
        R = self.region_pages
        return (np.asarray(regions, dtype=np.int64)[:, None] * R + np.arange(R)).ravel()

    def in_intact(self, ppns: np.ndarray) -> np.ndarray:
        """Mask over ``ppns``: the page lies in an intact region."""
        r = np.asarray(ppns, dtype=np.int64) // self.region_pages
        out = r < self.n_regions
        out[out] = self.intact[r[out]]
        return out

    def mark_seen(self, ppns: np.ndarray) -> None:
        """The scanner visited ``ppns``: those in intact large pages are hashed (hints)."""
        ppns = np.asarray(ppns, dtype=np.int64)
        r = ppns // self.region_pages
        m = r < self.n_regions
        m[m] = self.intact[r[m]] & self.backed[r[m]]
        self.seen[ppns[m]] = True

    def take_seen(self, regions: np.ndarray) -> np.ndarray:
        """Pages of ``regions`` the scanner had hashed (ascending); their bits cleared."""
        pages = self.pages_of(regions)
        seen = self.seen[pages]
        self.seen[pages] = False
        return pages[seen]

    def whole_backed(self, ppns: np.ndarray) -> np.ndarray:
        """Sorted intact, backed regions *all* of whose pages are among ``ppns`` (unique
        pages): large pages discarded whole."""
        r = np.asarray(ppns, dtype=np.int64) // self.region_pages
        u, n = np.unique(r[r < self.n_regions], return_counts=True)
        u = u[n == self.region_pages]
        return u[self.intact[u] & self.backed[u]]

    def to_back(self, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Intact regions not yet backed that hold a touched page (first touches this
        tick), and how many of their pages are still untouched (frames to back them)."""
        cand = np.flatnonzero(self.intact & ~self.backed)
        if not len(cand):
            return cand, cand
        R = self.region_pages
        st = state[: self.n_regions * R].reshape(self.n_regions, R)[cand]
        left = np.count_nonzero(st == ps.UNTOUCHED, axis=1)
        hit = left < R
        return cand[hit], left[hit]

    # ------------------------------------------------------------------ changes
    def mark_backed(self, regions: np.ndarray) -> None:
        """``regions`` (intact, unbacked, unique) now hold a large page each."""
        if (~self.intact[regions] | self.backed[regions]).any():
            raise InvariantError("backing a region that is broken or backed already")
        self.backed[regions] = True
        self.n_intact += len(regions)

    def mark_unbacked(self, regions: np.ndarray) -> None:
        """``regions`` (intact, backed, unique) lose their large page whole (all its pages
        discarded): intact and not backed again, a large page at their next first touch;
        their scanner hashes go with it."""
        if (~self.intact[regions] | ~self.backed[regions]).any():
            raise InvariantError("unbacking a region that is broken or not backed")
        self.backed[regions] = False
        self.seen[self.pages_of(regions)] = False
        self.n_intact -= len(regions)

    def mark_broken(self, regions: np.ndarray) -> int:
        """Break ``regions`` (intact, unique): 4 KB pages from now on.  Returns how many
        of them were large pages (backed); the others will never be."""
        if not self.intact[regions].all():
            raise InvariantError("breaking a region that is broken already")
        n = int(np.count_nonzero(self.backed[regions]))
        self.intact[regions] = False
        self.n_intact -= n
        self.n_broken += n
        self.tick_broken += n
        self.n_small += len(regions) - n
        return n

    # ------------------------------------------------------------------ state
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Arrays and counters for a snapshot (:mod:`hosts.snapshot`)."""
        arrays = {"large.intact": self.intact, "large.backed": self.backed, "large.seen": self.seen}
        return arrays, {"tick_broken": self.tick_broken, "shared_at_break": self.shared_at_break}

    @classmethod
    def restore(
        cls, n_pages: int, region_pages: int, arrays: dict[str, np.ndarray], meta: dict
    ) -> LargePages:
        lp = cls(n_pages, region_pages)
        lp.intact = np.array(arrays["large.intact"], dtype=bool, copy=True)
        lp.backed = np.array(arrays["large.backed"], dtype=bool, copy=True)
        lp.seen = np.array(arrays["large.seen"], dtype=bool, copy=True)
        shapes = (lp.intact.shape, lp.backed.shape, lp.seen.shape)
        if shapes != ((lp.n_regions,),) * 2 + ((lp.n_regions * lp.region_pages,),):
            raise ValueError("large-page arrays do not match the VM's regions")
        lp.n_intact, lp.n_broken, lp.n_small = lp.counts()
        lp.tick_broken = int(meta["tick_broken"])
        lp.shared_at_break = int(meta["shared_at_break"])
        return lp

    def counts(self) -> tuple[int, int, int]:
        """(intact large pages, broken large pages, regions never backed by one), counted."""
        i, b = self.intact, self.backed
        return (
            int(np.count_nonzero(i & b)),
            int(np.count_nonzero(~i & b)),
            int(np.count_nonzero(~i & ~b)),
        )

    def check_invariants(self, state: np.ndarray) -> None:
        """Counts agree with the arrays; a backed intact region is all private pages; no
        intact region holds a shared, swapped or ballooned page."""
        if self.counts() != (self.n_intact, self.n_broken, self.n_small):
            raise InvariantError(
                f"large-page counts {(self.n_intact, self.n_broken, self.n_small)} != "
                f"{self.counts()}"
            )
        R = self.region_pages
        st = state[: self.n_regions * R].reshape(self.n_regions, R)
        intact = st[self.intact]
        if ((intact != ps.UNTOUCHED) & (intact != ps.MAPPED)).any():
            raise InvariantError("an intact large page holds a shared, swapped or ballooned page")
        if (st[self.intact & self.backed] != ps.MAPPED).any():
            raise InvariantError("an intact large page has a page that is not backed")
        if self.seen.reshape(self.n_regions, R)[~(self.intact & self.backed)].any():
            raise InvariantError("a hashed ('seen') page outside an intact large page")
