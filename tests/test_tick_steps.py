"""A tick's VM steps batched into compiled calls (:mod:`hosts.tick_steps`) must be
indistinguishable from stepping one VM at a time.

Twin hosts, one with ``batch_steps`` off (each VM's step on its own fast path, or the
general path where that declines), driven through the same ticks under memory pressure:
after every tick every array, counter, generator state and page byte is equal, and the
batch really ran -- whole runs of VMs in one call, steps handed back to the one-VM path
(too few frames, ...), guests evicting inside the batched call, and copy-on-write breaks
whose freed frames the caller releases between VMs.  No Ray.
"""

from __future__ import annotations

import numpy as np
import pytest
from hostkit import CLASS_IMAGE, TEST_IMAGE, make_host, vm_spec
from test_vm_kernel import tick_twins
from vmmsim.hosts import tick_steps_kernel as tk
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.free_memory import MemState
from vmmsim.hosts.tick_steps import DTYPES, vm_arrays
from vmmsim.workloads.images import ImageSpec
from vmmsim.workloads.patterns import IdleParams, SteadyParams
from vmmsim.workloads.phased import PhasedParams

OTHER_IMAGE = ImageSpec("otherimg", shared_fraction=0.6, zero_fraction=0.0)


def _specs(n_steady: int = 4, image=TEST_IMAGE):
    specs = [
        vm_spec(
            f"s{i}",
            96,
            image=image,
            workload_kind="steady",
            workload_params=SteadyParams(wss_mb=0.25, write_fraction=0.3, accesses_per_s=40.0),
            pinned_pages=2,
            overhead_pages=2,
        )
        for i in range(n_steady)
    ]
    specs.insert(
        1,
        vm_spec(
            "skewed",  # a pattern that does not plan: the batch runs around it
            80,
            image=image,
            workload_kind="steady",
            workload_params=SteadyParams(
                wss_mb=0.2, write_fraction=0.2, accesses_per_s=30.0, hot_fraction=0.3
            ),
        ),
    )
    specs.append(
        vm_spec(
            "phased",
            80,
            image=image,
            workload_kind="phased",
            workload_params=PhasedParams(phases=((5.0, 0.05), (6.0, 0.3)), write_fraction=0.2),
            overhead_pages=2,
        )
    )
    # Two guests of their own image that write its (shared) pages: the second write to a
    # page drops its frame's last reference.
    specs += [
        vm_spec(
            f"idle{i}",
            64,
            image=OTHER_IMAGE,
            balloon=i == 0,
            workload_kind="idle",
            workload_params=IdleParams(
                background_fraction=0.3, accesses_per_s=20.0, write_fraction=0.5
            ),
        )
        for i in range(2)
    ]
    return specs


def twins(n_frames: int, seed: int = 3, image=TEST_IMAGE):
    hosts = []
    for batch in (True, False):
        host = make_host(n_frames, 2048, seed=seed)
        host.batch_steps = batch
        for spec in _specs(image=image):
            host.boot_vm(spec)
        hosts.append(host)
    return hosts


@pytest.mark.parametrize(
    ("seed", "image", "n_frames"),
    [(3, TEST_IMAGE, 360), (11, TEST_IMAGE, 360), (3, CLASS_IMAGE, 400)],
)
def test_batched_and_one_vm_at_a_time_ticks_agree_under_pressure(seed, image, n_frames):
    """Hosts sized to spend many ticks in SOFT (balloons: the guests evict to their own
    swap) and some in HARD (the VMM swaps); a host that stays in HARD/LOW never balloons,
    so no guest evicts.  (With ``CLASS_IMAGE`` every VM has its own image keys, in the
    address table; it shares less, so a larger host gives the same mix.)"""
    batched, single = twins(n_frames=n_frames, seed=seed, image=image)
    tick_twins(batched, single, 0, 80, allocate_every=5)
    assert batched.state_ticks[MemState.SOFT] > 0 and batched.state_ticks[MemState.HARD] > 0
    ts = batched.tick_steps
    end, declined, decref = ts.stops
    assert ts.batched > ts.stops[tk.END] * 2, ts.stops  # several VMs per compiled call
    assert declined > 0, ts.stops  # steps handed back (frames, too few victims, ...)
    assert ts.evictions > 0  # guests evicted inside the batched call
    assert decref > 0, ts.stops  # frames freed by a COW break, released between VMs
    assert single.tick_steps.batched == 0
    assert sum(vm.stats.guest_swapouts for vm in batched.vms.values()) > 0
    assert sum(vm.stats.cow_breaks for vm in batched.vms.values()) > 0


def test_the_address_table_follows_replaced_arrays():
    """A guest swap disk that grows replaces its arrays: the next tick's table must
    point at the new ones (else the kernel would write freed memory)."""
    batched, single = twins(n_frames=330)
    tick_twins(batched, single, 0, 3)
    vm_b, vm_s = batched.vms["s0"], single.vms["s0"]
    old = vm_b.guest.swap.content
    for vm in (vm_b, vm_s):
        vm.guest.swap.reserve(vm.guest.swap.n_free + 500)  # grows: new arrays
    assert vm_b.guest.swap.content is not old
    tick_twins(batched, single, 3, 30)
    addr = batched.tick_steps._addr
    assert vm_b.guest.swap.content.ctypes.data in addr[:, tk.A_GS_CONTENT]


def one_host():
    """A host of the steady VM ``s0`` and the other patterns, two ticks in."""
    host = make_host(330, 2048)
    for spec in _specs(1):
        host.boot_vm(spec)
    host.run_ticks(0, 2)
    return host


def test_an_array_of_another_dtype_is_refused_not_misread():
    host = one_host()
    vm = host.vms["s0"]
    vm.pmap.loc = vm.pmap.loc.astype(np.int64)  # what the kernel would misread as int32
    with pytest.raises(InvariantError, match="s0"):
        host.run_ticks(2, 1)


def test_dtypes_cover_every_array_the_kernel_views():
    host = one_host()
    vm = host.vms["s0"]
    scratch = host.mem.step_buffers(vm.spec.n_pages)[0]
    arrays = vm_arrays(vm, vm.workload._plan(vm.steps), scratch)
    assert len(DTYPES) == tk.N_ARR == len(arrays) - 1
    assert [a.dtype for a in arrays[: tk.N_ARR]] == list(DTYPES)
