"""One VM's physical-to-machine map, as numpy arrays (never an object per page).

Scope: per-guest-page VMM state (:mod:`hosts.page_state`), where the page lives (``loc``:
a frame number or a swap slot), the accessed bit (cleared by the working-set sampler) and
the dirty bit (cleared by migration rounds), plus per-state page counts kept up to date
incrementally so reports cost O(1), not O(pages).

Not covered: changing frames or swap slots -- only :mod:`hosts.host_memory` does that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.errors import InvariantError

if TYPE_CHECKING:  # pragma: no cover
    from vmmsim.hosts.large_pages import LargePages


class PhysMap:
    """Guest physical pages ``0 .. n_pages-1`` of one VM, as the VMM sees them."""

    def __init__(self, n_pages: int) -> None:
        self.n_pages = n_pages
        self.state = np.zeros(n_pages, dtype=np.int8)
        self.loc = np.full(n_pages, -1, dtype=np.int32)
        self.accessed = np.zeros(n_pages, dtype=bool)
        self.dirty = np.zeros(n_pages, dtype=bool)
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
