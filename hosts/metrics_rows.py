"""Per-tick metric rows of one host, collected column-wise (one row per tick and VM).

Scope: the column names, units and how each value is read off a VM.  The host returns
plain numpy columns; ``cluster`` turns them into Arrow and Parquet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hosts import page_state as ps

if TYPE_CHECKING:  # pragma: no cover
    from hosts.host_manager import HostMemoryManager
    from hosts.vm import VirtualMachine

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
}


class MetricRows:
    def __init__(self) -> None:
        self.cols: dict[str, list] = {k: [] for k in COLUMNS}

    def add(self, host: HostMemoryManager, vm: VirtualMachine, t: int, throughput: float) -> None:
        mb = host.sim.page_size / 2**20
        counts = vm.pmap.counts
        c = vm.tick
        v = self.cols
        v["tick"].append(t)
        v["time_s"].append(t * host.sim.tick_s)
        v["host"].append(host.name)
        v["vm"].append(vm.name)
        v["resident_mb"].append(vm.resident * mb)
        v["shared_mb"].append(int(counts[ps.SHARED]) * mb)
        v["zero_shared_mb"].append(vm.pmap.n_zero_shared * mb)
        v["ballooned_mb"].append(int(counts[ps.BALLOONED]) * mb)
        v["swapped_mb"].append(int(counts[ps.VMM_SWAPPED]) * mb)
        v["guest_swapped_mb"].append(vm.guest.n_swapped * mb)
        v["target_mb"].append(vm.target * mb)
        v["active_est"].append(vm.sampler.estimate)
        v["active_true"].append(vm.sampler.active_true)
        v["throughput"].append(throughput)
        v["accesses"].append(c.accesses)
        v["cow_breaks"].append(c.cow)
        v["scanned_pages"].append(c.scanned)
        v["faults_guest_swap"].append(c.guest_swapins)
        v["faults_vmm_swap"].append(c.vmm_swapins)
        v["blocked"].append(c.blocked)
        v["host_state"].append(host.mstate.name.lower())
        v["host_free_mb"].append(host.mem.n_free * mb)
        v["host_saved_mb"].append(host.tick_saved * mb)

    def columns(self) -> dict[str, np.ndarray]:
        out = {}
        for k, dt in COLUMNS.items():
            out[k] = np.array(self.cols[k], dtype=object if dt == "str" else dt)
        return out
