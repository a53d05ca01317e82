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
    # swap tiers (issue 18): swap-ins from the host swap cache and the compression cache
    # (not in faults_vmm_swap, which counts disk swap-ins), the VM's compressed pages (also
    # in swapped_mb), and the host's compression-cache frames and swap-cache slots in use
    "faults_swap_cache": "int64",
    "decompressions": "int64",
    "compressed_mb": "float64",
    "host_compression_mb": "float64",
    "host_swap_cache_mb": "float64",
}


class MetricRows:
    """Rows collected as tuples (one per tick and VM), turned into columns at the end."""

    def __init__(self) -> None:
        self.rows: list[tuple] = []

    @staticmethod
    def host_part(host: HostView, t: int) -> tuple:
        """The values every row of host ``host`` at tick ``t`` shares (computed once)."""
        mb = host.sim.page_size / 2**20
        return (
            t,
            t * host.sim.tick_s,
            host.name,
            host.mstate.name.lower(),
            host.mem.n_free * mb,
            host.tick_saved * mb,
            mb,
            host.mem.n_zip_frames * mb,
            host.mem.swap.n_cache_used * mb,
        )

    def add(self, host: HostView, vm: VirtualMachine, throughput: float, host_part: tuple) -> None:
        """One row: VM ``vm`` of ``host`` in the tick of ``host_part`` (:meth:`host_part`)."""
        t, time_s, host_name, state, free_mb, saved_mb, mb, zip_mb, cache_mb = host_part
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
                c.cache_swapins,
                c.decompressions,
                host.mem.zip_pages(vm.vm_id) * mb,
                zip_mb,
                cache_mb,
            )
        )

    def columns(self) -> dict[str, np.ndarray]:
        cols = list(zip(*self.rows, strict=True)) if self.rows else [()] * len(COLUMNS)
        return {
            k: np.array(col, dtype=object if dt == "str" else dt)
            for (k, dt), col in zip(COLUMNS.items(), cols, strict=True)
        }
