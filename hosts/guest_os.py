"""The guest OS model: a VM's own memory manager, above the VMM's physical map.

Scope: the guest's page table from its workload's *virtual* pages to its *physical* pages,
its free list, an approximate LRU (clock over reference bits), clean vs dirty pages, and
its own swap disk.  A virtual page is in one of:

=========  ==========================================================================
NEVER      never used: the first touch zero-fills a free physical page (minor fault)
RESIDENT   mapped to a guest physical page (``v2p``)
SWAPPED    evicted dirty: bytes on the guest's swap disk (slot ``s``: ``v2p = -2 - s``)
DROPPED    evicted clean (an unmodified image page): re-read from the image (disk fault)
=========  ==========================================================================

Each physical page is free, holds one virtual page, is held by the balloon, or holds the
guest kernel's own structures (``KERNEL``).  When the guest needs a page it takes a free
one, else it evicts its coldest (clock): this is how "the guest chooses what to give up"
when the balloon inflates.

Kernel memory: a guest sizes some of its own structures by the memory it *booted with* --
Linux's ``mem_map`` (one ``struct page`` per physical page), page tables, buffer heads --
so a VM configured with 256 MB and ballooned to X has less room for its workload than a
VM configured with X (the paper's explanation of ballooning's small overhead, sec. 3.2).
``n_kernel`` physical pages are taken at boot and never freed, evicted or ballooned;
their fraction of the configured size is the image's ``kernel_fraction``.

The page table holds a swapped page's swap slot (``v2p = -2 - slot``; -1: no page and no
slot): a page has one or the other, never both, so one int32 per page does for both
(:meth:`GuestOS.slots_of`, :attr:`GuestOS.vslot`).

Freeing a physical page inside the guest does *not* free machine memory -- the VMM cannot
see it (that is what the balloon is for).  Not covered: VMM state (:mod:`hosts.phys_map`).
"""

from __future__ import annotations

import numba
import numpy as np
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.native import JIT

NEVER, RESIDENT, SWAPPED, DROPPED = 0, 1, 2, 3
FREE, BALLOON, KERNEL = -1, -2, -3


class GuestSwap:
    """The guest's swap disk: real bytes, grown on demand, slots reused."""

    def __init__(self, content_bytes: int, capacity: int = 64) -> None:
        self.content = np.zeros((capacity, content_bytes), dtype=np.uint8)
        self.free_stack = np.arange(capacity - 1, -1, -1, dtype=np.int32)
        self.n_free = capacity
        self.n_used = 0

    def reserve(self, n: int) -> None:
        """Make sure ``n`` slots are free (the disk grows: at least doubles)."""
        if n > self.n_free:
            self._grow(n - self.n_free)

    def put(self, data: np.ndarray) -> np.ndarray:
        n = len(data)
        self.reserve(n)
        slots = self.free_stack[self.n_free - n : self.n_free][::-1].copy()
        self.n_free -= n
        self.n_used += n
        self.content[slots] = data
        return slots

    def take(self, slots: np.ndarray) -> np.ndarray:
        data = self.content[slots]
        n = len(slots)
        self.free_stack[self.n_free : self.n_free + n] = np.sort(slots)[::-1]
        self.n_free += n
        self.n_used -= n
        return data

    def _grow(self, extra: int) -> None:
        old = len(self.content)
        new = max(2 * old, old + extra)
        content = np.zeros((new, self.content.shape[1]), dtype=np.uint8)
        content[:old] = self.content
        self.content = content
        stack = np.empty(new, dtype=np.int32)
        added = np.arange(new - 1, old - 1, -1, dtype=np.int32)
        stack[: len(added)] = added
        stack[len(added) : len(added) + self.n_free] = self.free_stack[: self.n_free]
        self.free_stack = stack
        self.n_free += len(added)


class GuestOS:
    """One guest's memory manager over ``n_pages`` virtual and physical pages."""

    def __init__(
        self, n_pages: int, content_bytes: int, n_pinned: int = 0, n_kernel: int = 0
    ) -> None:
        self.n_pages = n_pages
        self.v2p = np.full(n_pages, -1, dtype=np.int32)
        self.vstate = np.zeros(n_pages, dtype=np.int8)
        self.clean = np.zeros(n_pages, dtype=bool)
        self.p2v = np.full(n_pages, FREE, dtype=np.int32)
        self.pref = np.zeros(n_pages, dtype=bool)
        # Pinned (device I/O) pages: the first n_pinned virtual pages, mapped 1:1 at boot
        # onto the first physical pages and never evicted, ballooned or VMM-swapped.
        self.pinned = np.zeros(n_pages, dtype=bool)
        self.pinned[:n_pinned] = True
        self.n_pinned = n_pinned
        self.free_stack = np.arange(n_pages - 1, -1, -1, dtype=np.int32)
        self.n_free = n_pages
        self.hand = 0
        self.swap = GuestSwap(content_bytes)
        self.n_ballooned = 0
        if n_pinned:
            v = np.arange(n_pinned, dtype=np.int64)
            self.map(v, self.alloc(n_pinned))
        # Kernel structures sized to the configured memory: the next physical pages off
        # the free list, held for good (no virtual page; the clock skips p2v < 0).
        self.n_kernel = n_kernel
        if n_kernel:
            self.p2v[self.alloc(n_kernel)] = KERNEL

    def slots_of(self, vpns: np.ndarray) -> np.ndarray:
        """Guest swap slots of ``SWAPPED`` virtual pages ``vpns`` (held in their ``v2p``)."""
        return -2 - self.v2p[vpns]

    @property
    def vslot(self) -> np.ndarray:
        """Every virtual page's guest swap slot, -1 where it has none (a new array)."""
        return np.where(self.v2p <= -2, -2 - self.v2p, -1).astype(np.int32)

    def page_table(self) -> np.ndarray:
        """``v2p`` without the swap slots: a physical page, or -1 (a new array; what
        digests and snapshots hold, as before the slots moved into ``v2p``)."""
        return np.maximum(self.v2p, -1)

    def set_tables(self, v2p: np.ndarray, vslot: np.ndarray) -> None:
        """Restore ``v2p`` from a page table and swap slots (:meth:`page_table`,
        :attr:`vslot`)."""
        self.v2p = np.where(vslot >= 0, -2 - vslot, v2p).astype(np.int32)

    def kernel_pages(self) -> np.ndarray:
        """The physical pages that hold the guest kernel's structures (sorted)."""
        return np.flatnonzero(self.p2v == KERNEL)

    # ------------------------------------------------------------------ free list
    def alloc(self, n: int) -> np.ndarray:
        if n > self.n_free:
            raise InvariantError(f"guest alloc of {n} pages with {self.n_free} free")
        ppns = self.free_stack[self.n_free - n : self.n_free][::-1].astype(np.int64)
        self.n_free -= n
        return ppns

    def push_free(self, ppns: np.ndarray) -> None:
        n = len(ppns)
        self.free_stack[self.n_free : self.n_free + n] = np.sort(ppns)[::-1]
        self.n_free += n
        self.p2v[ppns] = FREE
        self.pref[ppns] = False

    def map(self, vpns: np.ndarray, ppns: np.ndarray) -> None:
        self.v2p[vpns] = ppns
        self.p2v[ppns] = vpns
        self.vstate[vpns] = RESIDENT
        self.pref[ppns] = True

    # ------------------------------------------------------------------ clock
    def choose_victims(self, k: int, protect: np.ndarray | None = None) -> np.ndarray:
        """Up to ``k`` physical pages to evict, coldest first by the clock algorithm.

        Clock: sweep from the hand over evictable pages (in use, not pinned, not
        protected); pages with a clear reference bit are taken in sweep order; the bits of
        pages passed over are cleared, and if a full sweep finds too few, a second sweep
        takes pages in order.  The hand stops just after the last victim.  One compiled
        sweep that stops at the ``k``-th victim (:func:`clock_sweep`); the vectorised numpy
        version it replaced is the tests' oracle (``tests/oracles/clock.py``).
        """
        if k <= 0:
            return np.zeros(0, dtype=np.int64)
        prot = _NO_PAGES if protect is None else np.asarray(protect, dtype=np.int64)
        out = np.empty(min(k, self.n_pages), dtype=np.int64)
        n, self.hand = clock_sweep(self.p2v, self.pinned, self.pref, prot, self.hand, k, out)
        return out[:n]

    # ------------------------------------------------------------------ eviction
    def evict(self, ppns: np.ndarray, data: np.ndarray | None) -> tuple[int, int]:
        """Evict the virtual pages on physical pages ``ppns`` (frees those pages).

        ``data`` holds the pages' bytes for the dirty ones (rows in ``ppns`` order; only
        rows where the page is not clean are used).  Returns (dropped clean, swapped out).
        """
        vpns = self.p2v[ppns].astype(np.int64)
        clean = self.clean[vpns]
        dirty_v = vpns[~clean]
        self.v2p[vpns] = -1
        if len(dirty_v):
            assert data is not None
            self.v2p[dirty_v] = -2 - self.swap.put(data[~clean])
        self.vstate[dirty_v] = SWAPPED
        self.vstate[vpns[clean]] = DROPPED
        self.push_free(ppns)
        return int(clean.sum()), len(dirty_v)

    def needs_bytes(self, ppns: np.ndarray) -> np.ndarray:
        """Mask over ``ppns``: pages whose eviction must save their bytes (dirty)."""
        return ~self.clean[self.p2v[ppns]]

    # ------------------------------------------------------------------ balloon
    def take_for_balloon(self, ppns: np.ndarray) -> None:
        self.p2v[ppns] = BALLOON
        self.pref[ppns] = False
        self.n_ballooned += len(ppns)

    def ballooned_pages(self) -> np.ndarray:
        return np.flatnonzero(self.p2v == BALLOON)

    def return_from_balloon(self, ppns: np.ndarray) -> None:
        self.n_ballooned -= len(ppns)
        self.push_free(ppns)

    # ------------------------------------------------------------------ stats, checks
    @property
    def n_swapped(self) -> int:
        return self.swap.n_used

    @property
    def room(self) -> int:
        """Physical pages the workload can use: all but the balloon's, pinned and kernel."""
        return self.n_pages - self.n_ballooned - self.n_pinned - self.n_kernel

    @property
    def n_resident(self) -> int:
        return int(self.n_pages - self.n_free - self.n_ballooned)

    def check_invariants(self) -> None:
        res = np.flatnonzero(self.vstate == RESIDENT)
        if (self.v2p[res] < 0).any() or not np.array_equal(self.p2v[self.v2p[res]], res):
            raise InvariantError("guest page table and reverse map disagree")
        swapped = self.vstate == SWAPPED
        if (self.v2p[~swapped & (self.vstate != RESIDENT)] != -1).any():
            raise InvariantError("a non-resident virtual page still maps a physical page")
        slots = self.slots_of(np.flatnonzero(swapped))
        if (slots < 0).any() or len(np.unique(slots)) != len(slots):
            raise InvariantError("a swapped virtual page has no guest swap slot of its own")
        in_use = int((self.p2v >= 0).sum())
        if in_use != len(res):
            raise InvariantError("physical pages in use != resident virtual pages")
        if int((self.p2v == BALLOON).sum()) != self.n_ballooned:
            raise InvariantError("balloon count is off")
        if int((self.p2v == KERNEL).sum()) != self.n_kernel:
            raise InvariantError("guest kernel pages were freed, evicted or ballooned")
        free = self.free_stack[: self.n_free]
        if len(np.unique(free)) != self.n_free or (self.p2v[free] != FREE).any():
            raise InvariantError("guest free list is inconsistent")
        if int((self.p2v == FREE).sum()) != self.n_free:
            raise InvariantError("guest free count is off")
        if int((self.vstate == SWAPPED).sum()) != self.swap.n_used:
            raise InvariantError("guest swap slots in use != swapped pages")
        if (self.p2v[self.pinned] < 0).any():
            raise InvariantError("a pinned page is not resident")


_NO_PAGES = np.zeros(0, dtype=np.int64)


@numba.njit(**JIT)
def clock_sweep(p2v, pinned, pref, protect, hand, k, out):  # noqa: ANN001, ANN201
    """The clock sweep of :meth:`GuestOS.choose_victims`; return (victims in ``out``,
    new hand)."""
    n = p2v.shape[0]
    prot = np.zeros(n, dtype=np.bool_)
    for x in range(protect.shape[0]):
        prot[protect[x]] = True
    nv = 0
    last = -1
    any_ok = False
    for j in range(n):  # first sweep: cold pages, up to k
        p = hand + j
        if p >= n:
            p -= n
        if p2v[p] < 0 or pinned[p] or prot[p]:
            continue
        any_ok = True
        if not pref[p]:
            out[nv] = p
            nv += 1
            if nv == k:
                last = p
                break
    if not any_ok:
        return 0, hand
    if nv == k:  # the bits of pages passed over are cleared (second chance used)
        for j in range(n):
            p = hand + j
            if p >= n:
                p -= n
            if p2v[p] >= 0 and not pinned[p] and not prot[p]:
                pref[p] = False
            if p == last:
                break
    else:  # too few cold pages: every cold page, then the first others, in sweep order
        extra = k - nv
        nv = 0
        for j in range(n):
            p = hand + j
            if p >= n:
                p -= n
            if p2v[p] < 0 or pinned[p] or prot[p]:
                continue
            if not pref[p] or extra > 0:
                if pref[p]:
                    extra -= 1
                out[nv] = p
                nv += 1
                last = p
            pref[p] = False
    return nv, (last + 1) % n
