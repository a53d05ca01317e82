"""One VM's physical-to-machine map, as numpy arrays (never an object per page).

Scope: per-guest-page VMM state (:mod:`hosts.page_state`), where the page lives (``loc``:
a frame number or a swap slot) and three flags packed as bits of one byte per page
(``bits``, ``uint8[n_pages]``): :data:`ACCESSED` (cleared at each working-set sampling
period), :data:`DIRTY` (cleared by migration rounds) and :data:`SAMPLED` (the page is in
the working-set sampler's current sample and not touched since,
:class:`hosts.working_set.WorkingSetSampler`) -- plus per-state page counts kept up to date
incrementally so reports cost O(1), not O(pages).

Everything that changes a flag writes ``bits`` (the compiled steps, :mod:`hosts.vm_kernel`,
too); :attr:`PhysMap.accessed`, :attr:`PhysMap.dirty` and :attr:`PhysMap.sampled` are
read-only bool copies.  Snapshots store the three as the bool arrays they were before they
were packed (:func:`flag` / :func:`pack`, :mod:`hosts.snapshot`).

Not covered: changing frames or swap slots -- only :mod:`hosts.host_memory` does that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.errors import InvariantError

if TYPE_CHECKING:  # pragma: no cover
    from vmmsim.hosts.large_pages import LargePages

#: Bits of :attr:`PhysMap.bits`: the guest touched the page this sampling period; it must
#: be sent again by live migration (written, or not allocated, at or since the last collect:
#: :mod:`hosts.migration_host`); it is in the sampler's current sample, not touched yet.
ACCESSED, DIRTY, SAMPLED = 1, 2, 4


def flag(bits: np.ndarray, bit: int) -> np.ndarray:
    """``bool`` array: where ``bits`` has ``bit`` set (a new array)."""
    return (bits & bit) != 0


def clear(bits: np.ndarray, bit: int, pages: np.ndarray | None = None) -> None:
    """Clear ``bit`` in ``bits`` (in place): at ``pages`` (indices or a bool mask), or
    everywhere."""
    if pages is None:
        np.bitwise_and(bits, np.uint8(0xFF ^ bit), out=bits)
    else:
        bits[pages] &= np.uint8(0xFF ^ bit)


def pack(accessed: np.ndarray, dirty: np.ndarray | None, sampled: np.ndarray) -> np.ndarray:
    """``uint8`` bits from the three bool arrays (``dirty`` None: all clear)."""
    bits = accessed.astype(np.uint8) * np.uint8(ACCESSED)
    bits |= sampled.astype(np.uint8) * np.uint8(SAMPLED)
    if dirty is not None:
        bits |= dirty.astype(np.uint8) * np.uint8(DIRTY)
    return bits


class PhysMap:
    """Guest physical pages ``0 .. n_pages-1`` of one VM, as the VMM sees them."""

    def __init__(self, n_pages: int) -> None:
        self.n_pages = n_pages
        self.state = np.zeros(n_pages, dtype=np.int8)
        self.loc = np.full(n_pages, -1, dtype=np.int32)
        self.bits = np.zeros(n_pages, dtype=np.uint8)  # ACCESSED | DIRTY | SAMPLED
        self.counts = np.zeros(ps.N_STATES, dtype=np.int64)
        self.counts[ps.UNTOUCHED] = n_pages
        self.n_zero_shared = 0
        # Guest pages pinned for device I/O (never reclaimed): the host counts their frames
        # as locked when it sizes a step's chunks (hosts.host_memory.HostMemory.n_locked).
        self.n_pinned = 0
        # Large-page regions (hosts.large_pages), when the host backs the VM with them.
        self.large: LargePages | None = None

    def set_state(self, ppns: np.ndarray, new_state: int, loc: np.ndarray | int = -1) -> None:
        """Move unique pages ``ppns`` to ``new_state`` and keep the counts exact."""
        if len(ppns) == 0:
            return
        self.counts -= np.bincount(self.state[ppns], minlength=ps.N_STATES)
        self.counts[new_state] += len(ppns)
        self.state[ppns] = new_state
        self.loc[ppns] = loc

    @property
    def accessed(self) -> np.ndarray:
        """``bool[n_pages]``: the :data:`ACCESSED` bits (a copy: write :attr:`bits`)."""
        return flag(self.bits, ACCESSED)

    @property
    def dirty(self) -> np.ndarray:
        """``bool[n_pages]``: the :data:`DIRTY` bits (a copy: write :attr:`bits`)."""
        return flag(self.bits, DIRTY)

    @property
    def sampled(self) -> np.ndarray:
        """``bool[n_pages]``: the :data:`SAMPLED` bits (a copy: write :attr:`bits`)."""
        return flag(self.bits, SAMPLED)

    def pages_in(self, *states: int) -> np.ndarray:
        """Guest page numbers currently in any of ``states`` (O(pages); not for hot paths)."""
        return np.flatnonzero(np.isin(self.state, states))

    @property
    def resident(self) -> int:
        """Pages backed by a machine frame (private or shared)."""
        return int(self.counts[ps.MAPPED] + self.counts[ps.SHARED])

    @property
    def allocated(self) -> int:
        """Pages the VMM holds for the guest: resident or in VMM swap."""
        return self.resident + int(self.counts[ps.VMM_SWAPPED])

    def check_invariants(self) -> None:
        counts = np.bincount(self.state, minlength=ps.N_STATES)
        if not np.array_equal(counts, self.counts):
            raise InvariantError(f"page-state counts {self.counts} != actual {counts}")
        if ((self.state < 0) | (self.state >= ps.N_STATES)).any():
            raise InvariantError("unknown page state code")
        has_loc = np.isin(self.state, (ps.MAPPED, ps.SHARED, ps.VMM_SWAPPED))
        if (self.loc[has_loc] < 0).any():
            raise InvariantError("a mapped or swapped page has no location")
        if (self.loc[~has_loc] != -1).any():
            raise InvariantError("an unbacked page still has a location")
        if (self.bits & np.uint8(0xFF ^ (ACCESSED | DIRTY | SAMPLED))).any():
            raise InvariantError("an unknown page flag bit is set")
