"""virtio-balloon free page reporting (Linux ``VIRTIO_BALLOON_F_REPORTING``).

Source: Linux ``mm/page_reporting.c`` and ``drivers/virtio/virtio_balloon.c`` (feature
``VIRTIO_BALLOON_F_REPORTING``, Linux 5.7+; the virtio 1.2 spec's "free page reporting"
virtqueue).  The guest tells the host which pages sit on its free lists; the host drops
their backing (QEMU: ``MADV_DONTNEED`` / hole punch), so a later touch of such a page is
a fresh zero-filled page.  Linux reports only free blocks of at least
``page_reporting_order`` (``pageblock_order``: 2 MB with 4 KB pages), starting
``PAGE_REPORTING_DELAY`` (2 s) after a block was freed.

Model (a documented simplification): each tick, after the sharing scan, every guest
physical page that has been free in the guest at every tick boundary for at least
``delay_ticks`` ticks -- and still has machine backing -- is reported, and its frame (or
swap slot) is released: the page becomes UNTOUCHED.  With ``block_pages > 1`` only whole
aligned blocks of that many pages, *all* of them free that long, are reported (Linux's
order-9 blocks; our guest has no buddy allocator, so a block counts as free when all its
pages are); ``block_pages = 1`` reports page by page (an upper bound on what Linux
returns: free memory too fragmented for whole blocks is reported too).  Pages the guest
frees and reuses within one tick are not seen as freed.  The guest's free lists are not
charged any CPU for reporting.  With large pages (``policy.large_pages``) a reported block
inside an intact large page splits it first, and a large page reported whole is dropped
whole (Linux's ``zap_pmd_range`` on the host: :meth:`hosts.host_memory.HostMemory.discard`).

Not covered: the free page *hinting* of live migration (``VIRTIO_BALLOON_F_FREE_PAGE_HINT``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.guest_os import FREE

#: (The host manager that owns the reporter is passed in; annotated as Any, since
#: hosts.host_manager imports this module.)
HostMemoryManager = Any

#: Per-VM metrics column when reporting is on: guest pages reported this tick.
FPR_COLUMNS: dict[str, str] = {"reported_pages": "int64"}


class FreePageReporter:
    """The reporting of all VMs of one host: when each guest page last became free."""

    def __init__(self, delay_ticks: int, block_pages: int) -> None:
        self.delay_ticks = max(0, int(delay_ticks))
        self.block_pages = max(1, int(block_pages))
        self.free_since: dict[str, np.ndarray] = {}  # per VM: tick it was free since; -1
        self.reported = 0  # pages reported over the run
        self.frames_freed = 0  # frames those reports released

    def forget(self, name: str) -> None:
        """A VM left the host: its reporting starts afresh wherever it arrives."""
        self.free_since.pop(name, None)

    def due(self, host: HostMemoryManager, name: str, t: int) -> np.ndarray:
        """Guest pages of VM ``name`` to report at tick ``t`` (ascending); updates the
        free-since ticks."""
        vm = host.vms[name]
        free = vm.guest.p2v == FREE
        since = self.free_since.get(name)
        if since is None:
            since = self.free_since[name] = np.full(len(free), -1, dtype=np.int64)
        since[~free] = -1
        since[free & (since < 0)] = t
        ripe = free & (t - since >= self.delay_ticks)
        bp = self.block_pages
        if bp > 1:
            nb = len(ripe) // bp
            whole = ripe[: nb * bp].reshape(nb, bp).all(axis=1)
            ripe = np.zeros(len(ripe), dtype=bool)
            ripe[: nb * bp] = np.repeat(whole, bp)
        st = vm.pmap.state
        backed = (st == ps.MAPPED) | (st == ps.SHARED) | (st == ps.VMM_SWAPPED)
        return np.flatnonzero(ripe & backed)

    def report(self, host: HostMemoryManager, t: int) -> None:
        """Report every VM's due pages (VMs in name order); the host unbacks them."""
        for name in host.order:
            vm = host.vms[name]
            ppns = self.due(host, name, t)
            if not len(ppns):
                continue
            self.frames_freed += host.mem.discard(vm.vm_id, ppns)
            self.reported += len(ppns)
            vm.tick.reported += len(ppns)

    def check_invariants(self, host: HostMemoryManager) -> None:
        """Free-since ticks only for VMs here, only on free pages, never in the future."""
        for name, since in self.free_since.items():
            vm = host.vms.get(name)
            if vm is None or len(since) != vm.guest.n_pages:
                raise InvariantError(f"free page reporting: state of {name} does not fit it")
            if (since > host.tick).any():
                raise InvariantError(f"free page reporting: {name} free in the future")

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        a = {f"fpr/{n}": v for n, v in self.free_since.items()}
        return a, {
            "vms": sorted(self.free_since),
            "reported": self.reported,
            "frames_freed": self.frames_freed,
        }

    def restore(self, a: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.free_since = {n: np.array(a[f"fpr/{n}"], copy=True) for n in meta["vms"]}
        self.reported, self.frames_freed = meta["reported"], meta["frames_freed"]
