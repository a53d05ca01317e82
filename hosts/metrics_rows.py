"""Per-tick metric rows of one host, collected column-wise (one row per tick and VM).

Scope: the column names, units and how each value is read off a VM.  The host returns
plain numpy columns; ``cluster`` turns them into Arrow and Parquet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from vmmsim.hosts import page_state as ps

if TYPE_CHECKING:  # pragma: no cover
    from vmmsim.hosts.vm import VirtualMachine


class HostView(Protocol):
    """What a row reads off its host (:class:`hosts.host_manager.HostMemoryManager`;
    a protocol, so this module does not import the host manager that imports it)."""

    name: str
    sim: Any  # hosts.specs.SimParams: page_size, tick_s
    mstate: Any  # hosts.free_memory.MemState
    mem: Any  # hosts.host_memory.HostMemory: n_free
    tick_saved: int
    policy: Any  # hosts.specs.HostPolicy: large_pages
    vms: dict[str, Any]  # name -> VirtualMachine


# name -> numpy dtype; the order here is the column order of metrics.parquet.
COLUMNS: dict[str, str] = {
    "tick": "int64",
    "time_s": "float64",
    "host": "str",
    "vm": "str",
    "resident_mb": "float64",
    "shared_mb": "float64",
    "zero_shared_mb": "float64",
    "ballooned_mb": "float64",
    "swapped_mb": "float64",
    "guest_swapped_mb": "float64",
    "target_mb": "float64",
    "active_est": "float64",
    "active_true": "float64",
    "throughput": "float64",
    "accesses": "int64",
    "cow_breaks": "int64",
    "scanned_pages": "int64",
    "faults_guest_swap": "int64",
    "faults_vmm_swap": "int64",
    "blocked": "bool",
    "host_state": "str",
    "host_free_mb": "float64",
    "host_saved_mb": "float64",
    # Large pages (hosts.large_pages; all 0 without them): the VM's intact and broken 2 MB
    # pages, those broken in the tick, and the host's intact and broken ones.
    "large_pages": "int64",
    "large_broken": "int64",
    "large_broken_tick": "int64",
    "host_large_pages": "int64",
    "host_large_broken": "int64",
    # swap tiers (issue 18): swap-ins from the host swap cache and the compression cache
    # (not in faults_vmm_swap, which counts disk swap-ins), the VM's compressed pages (also
    # in swapped_mb), and the host's compression-cache frames and swap-cache slots in use
    "faults_swap_cache": "int64",
    "decompressions": "int64",
    "compressed_mb": "float64",
    "host_compression_mb": "float64",
    "host_swap_cache_mb": "float64",
}


#: Columns a host adds after :data:`COLUMNS` only when a mechanism is on (name -> dtype):
#: KSM's counters (:data:`hosts.sharing.ksm.KSM_COLUMNS`, host values in every row) and
#: free page reporting's (:data:`hosts.free_page_reporting.FPR_COLUMNS`, per VM).
OPTIONAL_COLUMNS: dict[str, str] = {
    "ksm_pages_shared": "int64",
    "ksm_pages_sharing": "int64",
    "ksm_pages_unshared": "int64",
    "ksm_pages_volatile": "int64",
    "ksm_full_scans": "int64",
    "reported_pages": "int64",
}


class MetricRows:
    """Rows collected as tuples (one per tick and VM), turned into columns at the end.

    ``extra``: the host's columns beyond :data:`COLUMNS` (of :data:`OPTIONAL_COLUMNS`, in
    that order), empty unless a KVM-style mechanism is on."""

    def __init__(self, extra: dict[str, str] | None = None) -> None:
        self.rows: list[tuple] = []
        self.extra = dict(extra or {})

    @staticmethod
    def host_part(host: HostView, t: int) -> tuple:
        """The values every row of host ``host`` at tick ``t`` shares (computed once)."""
        mb = host.sim.page_size / 2**20
        large = (0, 0)
        if host.policy.large_pages:
            lps = [v.pmap.large for v in host.vms.values() if v.pmap.large is not None]
            large = (sum(lp.n_intact for lp in lps), sum(lp.n_broken for lp in lps))
        return (
            t,
            t * host.sim.tick_s,
            host.name,
            host.mstate.name.lower(),
            host.mem.n_free * mb,
            host.tick_saved * mb,
            mb,
            large,
            host.mem.n_zip_frames * mb,
            host.mem.swap.n_cache_used * mb,
        )

    def add(self, host: HostView, vm: VirtualMachine, throughput: float, host_part: tuple) -> None:
        """One row: VM ``vm`` of ``host`` in the tick of ``host_part`` (:meth:`host_part`)."""
        t, time_s, host_name, state, free_mb, saved_mb, mb, host_large, zip_mb, cache_mb = host_part
        lp = vm.pmap.large
        large = (0, 0, 0) if lp is None else (lp.n_intact, lp.n_broken, lp.tick_broken)
        counts = vm.pmap.counts.tolist()
        c = vm.tick
        sampler = vm.sampler
        self.rows.append(
            (
                t,
                time_s,
                host_name,
                vm.name,
                (counts[ps.MAPPED] + counts[ps.SHARED]) * mb,  # vm.resident
                counts[ps.SHARED] * mb,
                vm.pmap.n_zero_shared * mb,
                counts[ps.BALLOONED] * mb,
                counts[ps.VMM_SWAPPED] * mb,
                vm.guest.n_swapped * mb,
                vm.target * mb,
                sampler.estimate,
                sampler.active_true,
                throughput,
                c.accesses,
                c.cow,
                c.scanned,
                c.guest_swapins,
                c.vmm_swapins,
                c.blocked,
                state,
                free_mb,
                saved_mb,
                *large,
                *host_large,
                c.cache_swapins,
                c.decompressions,
                host.mem.zip_pages(vm.vm_id) * mb,
                zip_mb,
                cache_mb,
            )
        )

    def add_extra(self, host: Any, vm: VirtualMachine) -> None:
        """Append the optional columns' values to the row just added."""
        vals: list = []
        if "ksm_pages_shared" in self.extra:
            vals.extend(host.ksm_row)
        if "reported_pages" in self.extra:
            vals.append(vm.tick.reported)
        self.rows[-1] = self.rows[-1] + tuple(vals)

    def columns(self) -> dict[str, np.ndarray]:
        names = COLUMNS | self.extra
        cols = list(zip(*self.rows, strict=True)) if self.rows else [()] * len(names)
        return {
            k: np.array(col, dtype=object if dt == "str" else dt)
            for (k, dt), col in zip(names.items(), cols, strict=True)
        }
