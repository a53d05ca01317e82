"""The VMM offers a page to page sharing before it swaps it out (Waldspurger 2002, 4.3).

:meth:`HostMemory.page_out` (what ``VirtualMachine.swap_out_random`` and so every VMM
swap-out goes through): a victim page whose bytes match a shared frame, or a hinted
frame, is shared instead of written to swap -- its frame is freed and no swap slot used.
Before this change every victim went to swap.  Page contents and ``check_invariants()``
are checked throughout.
"""

from __future__ import annotations

import numpy as np
from hostkit import (
    apply,
    attach,
    hinted_pair,
    keyed,
    make_host,
    make_mem,
    make_vm,
    pages,
    vm_spec,
    write_keys,
)
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.free_memory import MemState
from vmmsim.hosts.vm import vm_page_contents


def test_page_matching_a_shared_frame_is_shared_not_swapped():
    mem = make_mem(16, 8)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, pages(0, 1, 2), [7, 7, 9])
    mem.scan(vm, pages(0, 1))  # 0 and 1 share one frame
    assert pmap.state[0] == pmap.state[1] == ps.SHARED
    write_keys(mem, vm, pages(3), [7])  # a private copy of the shared bytes
    free0 = mem.n_free
    freed, s = mem.page_out(vm, pages(3))
    mem.check_invariants()
    assert (freed, s.merged, s.hint_hits) == (1, 1, 0)
    assert pmap.state[3] == ps.SHARED and pmap.loc[3] == pmap.loc[0]
    assert mem.swap.n_used == 0 and mem.n_free == free0 + 1
    assert (mem.read_bytes(vm, pages(0, 1, 2, 3)) == keyed([7, 7, 9, 7])).all()


def test_page_matching_a_hint_of_another_vm_is_shared_not_swapped():
    mem, (a, pa), (b, pb) = hinted_pair(16, 4, 11, ppn_b=2)  # a's page 0: a hint
    assert mem.index.n_hints() == 1
    freed, s = mem.page_out(b, pages(2))
    mem.check_invariants()
    assert (freed, s.hint_hits) == (1, 1)
    assert pa.state[0] == pb.state[2] == ps.SHARED and pa.loc[0] == pb.loc[2]
    assert mem.swap.n_used == 0 and mem.frames.n_used == 1
    assert (mem.read_bytes(b, pages(2)) == keyed([11])).all()


def test_unmatched_and_already_shared_pages_still_go_to_swap():
    mem = make_mem(16, 8)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, pages(0, 1, 2, 3), [5, 5, 6, 8])
    mem.scan(vm, pages(0, 1))  # 0, 1 shared
    freed, s = mem.page_out(vm, pages(1, 2, 3))
    mem.check_invariants()
    # 2 and 3 match nothing (swapped, 2 frames); 1 was shared (swapped, frame kept for 0)
    assert freed == 2 and s.merged + s.hint_hits == 0
    assert (pmap.state[[1, 2, 3]] == ps.VMM_SWAPPED).all() and mem.swap.n_used == 3
    assert (mem.read_bytes(vm, pages(0, 1, 2, 3)) == keyed([5, 5, 6, 8])).all()


def test_duplicate_victims_share_with_each_other():
    mem = make_mem(16, 8)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, pages(0, 1, 2), [3, 3, 3])
    freed, s = mem.page_out(vm, pages(0, 1, 2))
    mem.check_invariants()
    # the first copy becomes the shared frame (it stays resident), the others map onto it
    assert freed == 2 and mem.swap.n_used == 0
    assert (pmap.state[[0, 1, 2]] == ps.SHARED).all() and mem.frames.n_used == 1
    assert (mem.read_bytes(vm, pages(0, 1, 2)) == keyed([3, 3, 3])).all()


def test_vm_without_sharing_is_swapped_as_before():
    mem = make_mem(16, 8)
    vm, pmap = attach(mem, 8, sharing=False)
    write_keys(mem, vm, pages(0, 1), [4, 4])
    freed, s = mem.page_out(vm, pages(0, 1))
    mem.check_invariants()
    assert freed == 2 and (pmap.state[[0, 1]] == ps.VMM_SWAPPED).all()
    assert mem.swap.n_used == 2


def test_swap_out_random_shares_zero_pages_instead_of_swapping_them():
    """A VM's zero-filled pages (read, never written) end up on the zero page, not in
    swap; the count shared is in the VM's ``swap_shared`` counter."""
    vm, mem = make_vm(32, n_frames=64, swap=64)
    keys = np.zeros(32, dtype=np.uint64)
    keys[16:] = np.arange(16) + 100  # pages 16.. unique, 0..15 zeros (written as zeros)
    apply(vm, mem, writes=np.arange(32), keys=keys)
    freed = vm.swap_out_random(mem, 32)
    mem.check_invariants()
    vm.check_invariants()
    assert freed == 31  # one zero page stays as the shared zero frame
    assert vm.stats.swap_shared == 15
    assert vm.pmap.counts[ps.SHARED] == 16 and mem.swap.n_used == 16
    assert (vm_page_contents(vm, mem) == keyed(keys)).all()


def test_hard_state_reclaim_shares_duplicates_before_swapping():
    """A host in HARD pages a VM out: its duplicate pages are shared, only the unique
    ones take swap slots (before: all victims went to swap)."""
    host = make_host(100, 256, swap_rate_pages_per_s=64.0, scan_vm_pages_per_s=0.0)
    vm = host.boot_vm(vm_spec("a", 100))
    keys = np.where(np.arange(97) % 2 == 0, 5, np.arange(97) + 10).astype(np.uint64)
    apply(vm, host.mem, writes=np.arange(97), keys=keys, make_room=host._make_room)
    host.set_targets({"a": 50})
    host.run_ticks(0, 1)
    host.check_invariants()
    assert host.state_ticks[MemState.HARD] == 1
    # every frame freed is a victim swapped or a victim shared (all victims were private)
    assert vm.stats.swap_shared > 0
    assert host.mem.n_free - 3 == host.mem.swap.n_used + vm.stats.swap_shared
    host.run_ticks(1, 3)
    host.check_invariants()
    assert host.mem.n_free >= 12  # the goal (high 12 %) is met ...
    assert host.mem.swap.n_used < 9  # ... with fewer than the 12 - 3 frames swapped
    assert (vm_page_contents(vm, host.mem)[:97] == keyed(keys)).all()
