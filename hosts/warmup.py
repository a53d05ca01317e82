"""Compile (or load from numba's on-disk cache) every kernel a host uses, once per machine.

Scope: a tiny overcommitted host -- three VMs with writes, page sharing, ballooning and
VMM swapping -- run for a few dozen ticks, so each compiled kernel meets the argument
types of a real run.  The driver calls :func:`warm_kernels` before it starts host
actors: otherwise dozens of freshly started actors would each compile the same kernels
at the same moment (seconds of CPU each) instead of loading machine code.

Not covered: correctness (the tests check that); any output (nothing is written).
"""

from __future__ import annotations

import time

import numpy as np
from vmmsim.hosts import migration_host_kernel, native
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.specs import HostPolicy, HostSpec, SimParams, VMSpec
from vmmsim.workloads.images import ImageSpec
from vmmsim.workloads.patterns import SteadyParams


def warm_kernels() -> float:
    """Run the tiny host; return the seconds it took (compiling, or loading the cache)."""
    t0 = time.perf_counter()
    native.warm()
    migration_host_kernel.warm()
    sim = SimParams(seed=1, tick_s=1.0, page_size=4096, content_bytes=64)
    policy = HostPolicy(sample_period_s=5.0, scan_vm_pages_per_s=400.0)
    host = HostMemoryManager(HostSpec("warmup", n_frames=700, n_swap_slots=2048), sim, policy)
    image = ImageSpec("linux", 0.3, 0.1)
    params = SteadyParams(wss_mb=1.0, write_fraction=0.2, accesses_per_s=300.0)
    for i in range(3):
        host.boot_vm(
            VMSpec(
                f"w{i}", n_pages=512, image=image, workload_kind="steady", workload_params=params
            )
        )
    host.run_ticks(0, 40, self_allocate_every=5)
    w0 = host.vms["w0"]  # guest eviction (clock, then paging out)
    w0.guest_evict(host.mem, w0.guest.choose_victims(2, np.zeros(1, dtype=np.int64)))
    none = np.zeros(0, dtype=np.int64)
    w0.make_guest_room(host.mem, none, none)  # (the one-VM path's shortfall kernel)
    host.mem.index.find(0, np.zeros(1, dtype=np.uint64))  # migration's look-up
    host.mem.index.rebuild()  # a restore from a checkpoint
    host.check_invariants()
    return time.perf_counter() - t0
