"""The idle memory tax end to end on one host: sampling -> estimates -> targets -> reclamation.

Two VMs with equal shares on a contended host, one idle after boot, one touching all of
its memory.  With tau = 0 they converge to equal targets; with tau = 0.75 the active VM
ends with about 4x the idle one's (k = 4, less the idle VM's few active pages), and
reclamation actually moves the memory.
"""

from __future__ import annotations

import pytest
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.free_memory import MemState
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.specs import HostPolicy, HostSpec, SimParams, VMSpec
from vmmsim.workloads.images import BUILTIN_IMAGES
from vmmsim.workloads.patterns import IdleParams, SteadyParams

PAGES = 2048


def run_host(tax_rate: float) -> HostMemoryManager:
    sim = SimParams(seed=5, tick_s=1.0, page_size=4096, content_bytes=64)
    policy = HostPolicy(
        tax_rate=tax_rate, sample_period_s=10, scan_vm_pages_per_s=0, scan_host_pages_per_s=0
    )
    host = HostMemoryManager(HostSpec("h", n_frames=2600, n_swap_slots=8192), sim, policy)
    # No sharing (scan off, and sharing=False since pages are also offered to sharing
    # before they are swapped -- the idle VM's zero-filled reads would share): memory is
    # what the VMs touch.
    blank = BUILTIN_IMAGES["blank"]
    host.boot_vm(
        VMSpec(
            "idle",
            PAGES,
            image=blank,
            sharing=False,
            workload_kind="idle",
            workload_params=IdleParams(background_fraction=0.01, accesses_per_s=5),
        )
    )
    host.boot_vm(
        VMSpec(
            "active",
            PAGES,
            image=blank,
            sharing=False,
            workload_kind="steady",
            workload_params=SteadyParams(
                wss_mb=PAGES * 4096 / 2**20, write_fraction=0.0, accesses_per_s=4 * PAGES
            ),
        )
    )
    # The idle VM first touches most of its memory (its boot, say), then goes quiet.
    import numpy as np
    from vmmsim.workloads.patterns import Accesses

    idle = host.vms["idle"]
    idle.apply(host.mem, host._make_room, Accesses(reads=np.arange(int(PAGES * 0.8))))
    host.run_ticks(0, 240, self_allocate_every=15)
    host.check_invariants()
    return host


@pytest.mark.parametrize(("tau", "lo", "hi"), [(0.0, 0.9, 1.1), (0.75, 3.0, 4.2)])
def test_idle_tax_moves_memory_to_the_active_vm(tau, lo, hi):
    host = run_host(tau)
    idle, active = host.vms["idle"], host.vms["active"]
    assert idle.sampler.estimate < 0.1 < 0.8 < active.sampler.estimate
    ratio = active.target / idle.target
    assert lo <= ratio <= hi, ratio
    if tau > 0:
        # Reclamation did the work: the idle VM holds about its target, not more.  The
        # active VM's first tick takes the host to HARD/LOW, and its faults keep it there;
        # HARD pages and does not balloon (Waldspurger 2002, sec. 6.3), so the idle VM's
        # excess went to VMM swap (the balloon's part is tests/test_reclamation.py's).
        assert host.state_ticks[MemState.HARD] + host.state_ticks[MemState.LOW] > 0
        assert idle.pmap.counts[ps.VMM_SWAPPED] > 0
        assert idle.resident <= idle.target * 1.1
        assert active.resident > 2.5 * idle.resident
