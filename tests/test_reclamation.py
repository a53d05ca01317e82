"""Reclamation: balloon, VMM swap, swap exhaustion, free-memory states of a host."""

from __future__ import annotations

import numpy as np
import pytest
from hostkit import apply, attach, keyed, make_host, make_mem, pages, vm_spec, write_keys
from vmmsim.hosts import guest_os as gos
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.errors import SwapFull
from vmmsim.hosts.free_memory import MemState, Thresholds
from vmmsim.hosts.vm import vm_page_contents


def fill(vm, host_or_mem, keys):
    """Write pages 0.. of ``vm`` with ``keys`` (through guest OS and VMM)."""
    mem = getattr(host_or_mem, "mem", host_or_mem)
    room = getattr(host_or_mem, "_make_room", None)
    n = len(keys)
    kw = {"make_room": room} if room else {}
    apply(vm, mem, writes=np.arange(n), keys=np.asarray(keys, dtype=np.uint64), **kw)


# ---------------------------------------------------------------------------- balloon
def test_balloon_of_private_resident_pages_frees_exactly_n_frames():
    from hostkit import make_vm

    vm, mem = make_vm(32)
    keys = np.arange(32) + 1
    fill(vm, mem, keys)
    assert vm.pmap.counts[ps.MAPPED] == 32 and vm.guest.n_free == 0
    free0 = mem.n_free
    assert vm.inflate_balloon(mem, 8) == 8
    assert mem.n_free == free0 + 8
    assert vm.pmap.counts[ps.BALLOONED] == 8 and vm.pmap.counts[ps.MAPPED] == 24
    assert (vm_page_contents(vm, mem) == keyed(keys)).all()  # the guest swapped 8 out
    vm.check_invariants()
    mem.check_invariants()


def test_deflate_returns_pages_to_the_guest_untouched():
    from hostkit import make_vm

    vm, mem = make_vm(32)
    fill(vm, mem, np.arange(32) + 1)
    vm.inflate_balloon(mem, 8)
    held = vm.guest.ballooned_pages()
    free0, gfree0 = mem.n_free, vm.guest.n_free
    assert vm.deflate_balloon(mem, 8) == 8
    assert (vm.pmap.state[held] == ps.UNTOUCHED).all() and (vm.pmap.loc[held] == -1).all()
    assert (vm.guest.p2v[held] == gos.FREE).all() and vm.guest.n_ballooned == 0
    assert vm.guest.n_free == gfree0 + 8 and mem.n_free == free0  # no frames taken yet
    vm.check_invariants()
    mem.check_invariants()
    # The guest reuses them: first touch zero-fills.
    apply(vm, mem, reads=np.flatnonzero(vm.guest.vstate == gos.SWAPPED))
    assert (vm_page_contents(vm, mem) == keyed(np.arange(32) + 1)).all()


def test_balloon_release_of_shared_and_swapped_pages():
    mem = make_mem(16, 8)
    a, pa = attach(mem, 8)
    b, pb = attach(mem, 8)
    write_keys(mem, a, pages(0, 1, 2), [5, 6, 7])
    write_keys(mem, b, pages(0), [5])
    mem.scan(a, pages(0))
    mem.scan(b, pages(0))
    mem.swap_out(a, pages(1))
    used, slots = mem.frames.n_used, mem.swap.n_used
    # shared (b keeps it), swapped (slot freed, no frame), private (frame freed)
    assert mem.release(a, pages(0, 1, 2), ps.BALLOONED) == 1
    mem.check_invariants()
    assert mem.frames.n_used == used - 1 and mem.swap.n_used == slots - 1
    assert (mem.read_bytes(b, pages(0)) == keyed([5])).all()


# ---------------------------------------------------------------------------- VMM swap
def test_swap_out_frees_frames_and_swap_in_restores_exact_bytes():
    mem = make_mem(16, 8)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, np.arange(4), [10, 0, 12, 13])
    free0 = mem.n_free
    assert mem.swap_out(vm, pages(0, 1, 3)) == 3
    mem.check_invariants()
    assert mem.n_free == free0 + 3 and mem.swap.n_used == 3
    assert (pmap.state[[0, 1, 3]] == ps.VMM_SWAPPED).all()
    assert (mem.read_bytes(vm, np.arange(4)) == keyed([10, 0, 12, 13])).all()  # no fault
    assert mem.swap.n_used == 3
    f = mem.read(vm, pages(0, 1))
    assert (f.vmm_swapin, f.first_touch) == (2, 0)
    assert mem.swap.n_used == 1 and (pmap.state[[0, 1]] == ps.MAPPED).all()
    # A write over a swapped page needs no read-back: the slot is just freed.
    f = mem.write(vm, pages(3), keyed([99]))
    assert f.vmm_swapin == 1 and mem.swap.n_used == 0
    mem.check_invariants()
    assert (mem.read_bytes(vm, np.arange(4)) == keyed([10, 0, 12, 99])).all()


def test_vm_counts_vmm_swapins_on_the_next_access():
    from hostkit import make_vm

    vm, mem = make_vm(16)
    keys = np.arange(16) + 300
    fill(vm, mem, keys)
    assert vm.swap_out_random(mem, 5) == 5
    swapped = np.flatnonzero(vm.pmap.state == ps.VMM_SWAPPED)
    vm.tick.vmm_swapins = 0
    apply(vm, mem, reads=np.arange(16))
    assert vm.tick.vmm_swapins == 5 and len(swapped) == 5
    assert vm.pmap.counts[ps.VMM_SWAPPED] == 0
    assert (vm_page_contents(vm, mem) == keyed(keys)).all()


def test_swapping_a_shared_page_keeps_the_frame_for_the_other_sharers():
    mem = make_mem(16, 8)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, pages(0, 1, 2), [4, 4, 4])
    mem.scan(vm, pages(0, 1, 2))
    frame = pmap.loc[0]
    assert mem.frames.refcount[frame] == 3
    free0 = mem.n_free
    assert mem.swap_out(vm, pages(1)) == 0
    assert mem.frames.refcount[frame] == 2 and mem.n_free == free0
    assert mem.swap_out(vm, pages(0, 2)) == 1  # the last sharers leave: frame freed
    mem.check_invariants()
    assert mem.index.n_shared_frames() == 0
    assert (mem.read_bytes(vm, pages(0, 1, 2)) == keyed([4, 4, 4])).all()


def test_swap_exhaustion_raises_and_loses_nothing():
    mem = make_mem(16, 2)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, np.arange(4), [1, 2, 3, 4])
    with pytest.raises(SwapFull):
        mem.swap_out(vm, pages(0, 1, 2))
    mem.check_invariants()
    assert pmap.counts[ps.MAPPED] == 4 and mem.swap.n_used == 0
    mem.swap_out(vm, pages(0, 1))
    with pytest.raises(SwapFull):
        mem.swap_out(vm, pages(2))
    mem.check_invariants()
    assert (mem.read_bytes(vm, np.arange(4)) == keyed([1, 2, 3, 4])).all()


def test_host_out_of_memory_and_swap_raises_swapfull():
    host = make_host(24, 8)
    vm = host.boot_vm(vm_spec("a", 64))
    fill(vm, host, np.arange(20) + 1)
    with pytest.raises(SwapFull):  # 40 pages > 24 frames + 8 slots
        apply(
            vm,
            host.mem,
            writes=np.arange(20, 40),
            keys=np.arange(20, 40) + 1,
            make_room=host._make_room,
        )
    host.check_invariants()


def test_step_touching_more_pages_than_the_host_has_frames_is_served_by_swapping():
    host = make_host(24, 128)
    vm = host.boot_vm(vm_spec("a", 64))
    keys = np.arange(64) + 1
    fill(vm, host, keys)  # one step, 64 pages > 24 frames: chunked, the VMM swaps
    host.check_invariants()
    assert vm.pmap.counts[ps.VMM_SWAPPED] > 0
    assert (vm_page_contents(vm, host.mem) == keyed(keys)).all()


# ---------------------------------------------------------------------------- host states
def host_with_used(used: int, *, target: int = 50, policy: dict | None = None, **spec_kw):
    """A 100-frame host (thresholds 12/8/4/2 %) with one quiet VM holding ``used``
    private pages and a lower target; balloon rate 2 pages per tick."""
    n_frames = 100
    kw = {"balloon_rate_pages_per_s": 2.0, "swap_rate_pages_per_s": 64.0, **(policy or {})}
    host = make_host(n_frames, 256, **kw)
    vm = host.boot_vm(vm_spec("a", n_frames, sharing=False, **spec_kw))
    fill(vm, host, np.arange(used) + 1)
    host.set_targets({"a": target})
    return host, vm


def test_soft_state_balloons_and_does_not_swap():
    host, vm = host_with_used(94)  # free 6 %: SOFT
    host.run_ticks(0, 1)
    assert host.mstate == MemState.SOFT and host.state_ticks[MemState.SOFT] == 1
    assert vm.pmap.counts[ps.BALLOONED] == 2 and vm.pmap.counts[ps.VMM_SWAPPED] == 0
    host.check_invariants()


def test_soft_state_swaps_a_vm_without_balloon_driver():
    host, vm = host_with_used(94, balloon=False)
    host.run_ticks(0, 1)
    assert host.mstate == MemState.SOFT
    assert vm.pmap.counts[ps.BALLOONED] == 0 and vm.pmap.counts[ps.VMM_SWAPPED] == 7
    assert host.mem.n_free == 13  # back at the high threshold plus the 1 % up margin
    host.check_invariants()


def test_hard_state_pages_and_does_not_balloon():
    """Paper, sec. 6.3: in the hard state ESX relies on paging (was: balloon
    at the balloon rate, then swap the rest)."""
    host, vm = host_with_used(97)  # free 3 %: HARD
    host.run_ticks(0, 1)
    assert host.state_ticks[MemState.HARD] == 1
    assert vm.guest.n_ballooned == 0 and vm.pmap.counts[ps.BALLOONED] == 0
    assert vm.pmap.counts[ps.VMM_SWAPPED] == 10  # goal 12 + 1 margin - 3 free, by paging
    assert host.mem.n_free >= 13
    host.check_invariants()
    keys = np.arange(97) + 1
    assert (vm_page_contents(vm, host.mem)[:97] == keyed(keys)).all()


def test_low_state_blocks_vms_above_target():
    no_reclaim = {"swap_rate_pages_per_s": 0.0, "balloon_rate_pages_per_s": 0.0}
    host, vm = host_with_used(99, policy=no_reclaim)  # free 1 %: LOW
    cols = host.run_ticks(0, 2)
    assert host.state_ticks[MemState.LOW] == 2
    assert host.blocked == {"a"} and vm.stats.blocked_ticks == 1
    # The metric says what happened in each tick: ran in tick 0, blocked in tick 1.
    assert cols["blocked"].tolist() == [False, True]
    assert cols["throughput"][1] == 0.0
    host.check_invariants()


def test_overcommitted_host_moves_through_the_states():
    """Two VMs grow their memory; the host walks down HIGH -> SOFT -> HARD, reclaims."""
    host = make_host(128, 512)
    a = host.boot_vm(vm_spec("a", 96))
    b = host.boot_vm(vm_spec("b", 96, balloon=False))
    seen = []
    keys = {a.name: np.zeros(96, np.uint64), b.name: np.zeros(96, np.uint64)}
    for r in range(48):
        for vm in (a, b):
            p = np.arange(2 * r, 2 * r + 2)
            k = (p + 1000 * (vm is b) + 1).astype(np.uint64)
            apply(vm, host.mem, writes=p, keys=k, make_room=host._make_room)
            keys[vm.name][p] = k
        host.self_allocate()
        host.run_ticks(host.tick, 1)
        seen.append(host.mstate)
        host.check_invariants()
    assert host.state_ticks.sum() == 48
    assert {MemState.HIGH, MemState.SOFT, MemState.HARD} <= set(seen)
    assert seen.index(MemState.HIGH) < seen.index(MemState.SOFT) < seen.index(MemState.HARD)
    assert a.pmap.counts[ps.BALLOONED] > 0  # a is ballooned ...
    assert b.pmap.counts[ps.BALLOONED] == 0 and b.pmap.counts[ps.VMM_SWAPPED] > 0  # b swapped
    for vm in (a, b):
        assert (vm_page_contents(vm, host.mem) == keyed(keys[vm.name])).all()
    s = host.summary()
    assert sum(s["state_ticks"].values()) == 48


def test_low_state_pages_and_does_not_balloon():
    """LOW is HARD plus blocking: paging only (was: balloon, then swap)."""
    host, vm = host_with_used(99)  # free 1 %: LOW
    host.run_ticks(0, 1)
    assert host.state_ticks[MemState.LOW] == 1
    assert vm.guest.n_ballooned == 0 and vm.pmap.counts[ps.VMM_SWAPPED] == 12  # 13 - 1
    assert host.blocked == {"a"}  # still above its target: blocked on the next tick
    host.check_invariants()


# ---------------------------------------------------------------------------- hysteresis
MARGIN = Thresholds(high=0.12, soft=0.08, hard=0.04, low=0.02, up_margin=0.05)


def test_host_leaves_soft_only_once_free_clears_high_by_the_margin():
    """Paper, sec. 6.3: up "only after free memory significantly exceeds the higher
    threshold" (was: HIGH as soon as free reached high)."""
    host, vm = host_with_used(85, target=85, policy={"thresholds": MARGIN})  # free 15 %
    host.mstate = MemState.SOFT
    host.run_ticks(0, 1)
    assert host.mstate == MemState.SOFT  # 15 % >= high 12 %, < 12 + 5 %
    assert vm.swap_out_random(host.mem, 2) == 2  # free 17 %
    host.run_ticks(1, 1)
    assert host.mstate == MemState.HIGH
    host.check_invariants()


def test_host_climbs_one_state_per_tick():
    host, vm = host_with_used(50, target=50)  # free 50 %
    host.mstate = MemState.LOW
    seen = []
    for t in range(4):
        host.run_ticks(t, 1)
        seen.append(host.mstate)
    assert seen == [MemState.HARD, MemState.SOFT, MemState.HIGH, MemState.HIGH]  # was HIGH x4


def test_soft_below_its_goal_keeps_the_balloon_of_a_vm_below_target():
    """In SOFT the goal is high + margin (17 frames here), so at 15 free there is no
    surplus to deflate into, even for a VM below its target (was: 3 pages deflated into
    the frames above the high threshold, and the host never left SOFT)."""
    policy = {"thresholds": MARGIN, "balloon_rate_pages_per_s": 100.0}
    host, vm = host_with_used(90, target=95, policy=policy)
    vm.inflate_balloon(host.mem, 5)  # takes 5 of the guest's 10 free pages
    assert vm.swap_out_random(host.mem, 5) == 5  # resident 85, free 15 %: surplus 3
    host.mstate = MemState.SOFT
    host.run_ticks(0, 1)
    assert host.mstate == MemState.SOFT
    assert vm.guest.n_ballooned == 5  # surplus 15 - 17 < 0: nothing handed back
    host.check_invariants()
