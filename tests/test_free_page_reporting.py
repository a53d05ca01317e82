"""virtio-balloon free page reporting (``policy.free_page_reporting``; Linux
VIRTIO_BALLOON_F_REPORTING) on hosts without Ray: exactly the reported frames are freed,
a reported page reads back as zeros at the VMM and the guest's data is intact, whole
blocks only with ``free_page_reporting_order``, the delay, snapshots."""

from __future__ import annotations

import numpy as np
import pytest
from hostkit import apply, keyed, make_host, make_policy, vm_spec
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.snapshot import host_state, restore_host
from vmmsim.hosts.specs import HostSpec, SimParams
from vmmsim.hosts.vm import TickCounters


def fpr_host(order: int = 0, delay_s: float = 2.0, n_pages: int = 16):
    policy = make_policy(
        free_page_reporting=True,
        free_page_reporting_order=order,
        free_page_reporting_delay_s=delay_s,
    )
    host = make_host(256, 256, policy=policy)
    vm = host.boot_vm(vm_spec("vm0", n_pages))
    return host, vm


def used_then_freed(host, vm, n_used: int, evict: np.ndarray) -> np.ndarray:
    """The guest writes virtual pages 0..n_used-1, then pages out the physical pages
    ``evict`` (they go back on its free list, still backed); returns their vpns."""
    apply(vm, host.mem, writes=np.arange(n_used), keys=np.arange(1, n_used + 1))
    vpns = vm.guest.p2v[evict].astype(np.int64)
    vm.guest_evict(host.mem, evict)
    return vpns


def report(host, t: int) -> int:
    for v in host.vms.values():
        v.tick = TickCounters()
    before = host.mem.n_free
    host.reporter.report(host, t)
    host.check_invariants()
    return host.mem.n_free - before


def test_reports_after_the_delay_free_exactly_those_frames_and_reads_give_zeros() -> None:
    host, vm = fpr_host(delay_s=2.0)
    evict = np.array([2, 5, 6], dtype=np.int64)
    vpns = used_then_freed(host, vm, 10, evict)
    assert (vm.pmap.state[evict] == ps.MAPPED).all()
    frames = set(vm.pmap.loc[evict].tolist())
    assert report(host, 0) == 0  # free since tick 0
    assert report(host, 1) == 0
    free_before = set(host.mem.frames.free_stack[: host.mem.n_free].tolist())
    assert report(host, 2) == 3  # free for 2 ticks: reported
    free_after = set(host.mem.frames.free_stack[: host.mem.n_free].tolist())
    assert free_after - free_before == frames
    assert (vm.pmap.state[evict] == ps.UNTOUCHED).all()
    assert vm.tick.reported == 3 and host.reporter.reported == 3
    # A later VMM read of a reported page is a zero-filled first touch.
    assert np.array_equal(host.mem.read_bytes(vm.vm_id, evict), np.zeros((3, 64), np.uint8))
    f = host.mem.read(vm.vm_id, evict[:1])
    assert f.first_touch == 1
    # The guest's own data survived (it was on the guest's swap disk).
    apply(vm, host.mem, reads=vpns)
    back = host.mem.read_bytes(vm.vm_id, vm.guest.v2p[vpns].astype(np.int64))
    assert np.array_equal(back, keyed(vpns + 1))
    host.check_invariants()


def test_pages_in_use_or_never_backed_are_not_reported() -> None:
    host, vm = fpr_host(delay_s=0.0)
    apply(vm, host.mem, writes=np.arange(4), keys=np.arange(1, 5))
    assert report(host, 0) == 0  # the free pages were never backed: nothing to return
    assert (vm.pmap.state[vm.guest.v2p[:4]] == ps.MAPPED).all()


def test_only_whole_free_blocks_are_reported_with_an_order() -> None:
    host, vm = fpr_host(order=2, delay_s=0.0, n_pages=16)  # blocks of 4 pages
    used_then_freed(host, vm, 16, np.array([4, 5, 6, 7, 9], dtype=np.int64))
    assert report(host, 0) == 4
    st = vm.pmap.state
    assert (st[4:8] == ps.UNTOUCHED).all() and st[9] == ps.MAPPED


def test_a_page_reused_before_the_delay_is_not_reported() -> None:
    host, vm = fpr_host(delay_s=3.0)
    used_then_freed(host, vm, 6, np.array([1, 2], dtype=np.int64))
    report(host, 0)
    apply(vm, host.mem, writes=np.array([10, 11]), keys=np.array([50, 51]))  # reuses them
    assert report(host, 3) == 0


def test_snapshot_keeps_the_free_since_ticks() -> None:
    host, vm = fpr_host(delay_s=2.0)
    used_then_freed(host, vm, 8, np.array([3], dtype=np.int64))
    report(host, 0)
    a, meta = host_state(host)
    back = restore_host(host.spec, host.sim, host.policy, {"vm0": vm.spec}, a, meta)
    assert np.array_equal(back.reporter.free_since["vm0"], host.reporter.free_since["vm0"])
    assert report(back, 2) == 1


@pytest.mark.parametrize(("order", "page_size", "block"), [(9, 4096, 512), (0, 4096, 1)])
def test_block_size_in_simulated_pages(order: int, page_size: int, block: int) -> None:
    from vmmsim.hosts.host_manager import free_page_reporter
    from vmmsim.hosts.specs import SimParams

    p = make_policy(free_page_reporting=True, free_page_reporting_order=order)
    r = free_page_reporter(p, SimParams(1, 0.5, page_size, 64))
    assert r.block_pages == block and r.delay_ticks == 4


def lp_fpr_host(order: int) -> tuple:
    """Large pages and reporting (delay 0) on 64 KiB pages (32-page large pages, blocks of
    ``(4 KiB << order) / 64 KiB`` pages): a VM of two large pages, all written and backed."""
    policy = make_policy(
        large_pages=True,
        free_page_reporting=True,
        free_page_reporting_order=order,
        free_page_reporting_delay_s=0.0,
    )
    host = HostMemoryManager(HostSpec("h", 256, 256), SimParams(7, 1.0, 65536, 64), policy)
    vm = host.boot_vm(vm_spec("vm0", 64))
    apply(vm, host.mem, writes=np.arange(64), keys=np.arange(1, 65))
    host.back_large_pages()
    assert vm.pmap.large.n_intact == 2
    return host, vm


def test_a_block_reported_inside_a_large_page_splits_it_first() -> None:
    host, vm = lp_fpr_host(order=5)
    assert host.reporter.block_pages == 2
    evict = np.array([4, 5, 6, 7, 9], dtype=np.int64)
    vm.guest_evict(host.mem, evict)
    assert report(host, 0) == 4  # (checks invariants: none broken)
    lp = vm.pmap.large
    assert lp.intact.tolist() == [False, True] and lp.counts() == (1, 1, 0)
    assert lp.tick_broken == 1
    st = vm.pmap.state
    assert (st[4:8] == ps.UNTOUCHED).all() and st[9] == ps.MAPPED and (st[32:] == ps.MAPPED).all()


def test_a_large_page_reported_whole_is_dropped_whole_and_backed_again() -> None:
    host, vm = lp_fpr_host(order=9)
    assert host.reporter.block_pages == 32  # a whole large page
    vm.guest_evict(host.mem, np.arange(32, 64))
    vm.pmap.large.seen[32:40] = True  # hashes of its pages go with it
    assert report(host, 0) == 32
    lp = vm.pmap.large
    assert lp.intact.tolist() == [True, True] and lp.backed.tolist() == [True, False]
    assert lp.counts() == (1, 0, 0) and lp.tick_broken == 0 and not lp.seen.any()
    assert (vm.pmap.state[32:] == ps.UNTOUCHED).all()
    vm.tick = TickCounters()
    apply(vm, host.mem, writes=[40], keys=[99])  # the guest reuses one page of it
    host.back_large_pages()
    host.check_invariants()
    assert lp.backed.tolist() == [True, True] and (vm.pmap.state[32:] == ps.MAPPED).all()
