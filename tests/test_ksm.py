"""KSM, the sharing scanner of a KVM-style host (``policy.sharing_scanner = "ksm"``;
Linux Documentation/admin-guide/mm/ksm.rst), on hosts without Ray: the linear walk, the
checksum rule (volatile pages), ``max_page_sharing``, ``use_zero_pages``, the counters
against a brute-force count, contents intact, snapshots."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hostkit import keyed, make_host, make_policy, pages, vm_spec, write_keys
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.sharing.index import FULL, HINT
from vmmsim.hosts.snapshot import host_state, restore_host
from vmmsim.hosts.vm import TickCounters


def ksm_host(n_vms: int = 2, n_pages: int = 40, per_tick: int = 10, **kw):
    """A host with KSM scanning ``per_tick`` pages a 1 s tick (one batch, unless
    ``ksm_sleep_millisecs`` says otherwise) and ``n_vms`` idle VMs."""
    kw.setdefault("ksm_sleep_millisecs", 1000.0)
    policy = make_policy(sharing_scanner="ksm", ksm_pages_to_scan=per_tick, **kw)
    host = make_host(1024, 1024, policy=policy)
    for i in range(n_vms):
        host.boot_vm(vm_spec(f"vm{i}", n_pages))
    return host


def fill(host, name: str, keys) -> None:
    vm = host.vms[name]
    write_keys(host.mem, vm.vm_id, np.arange(len(keys)), keys)


def tick(host, n: int = 1) -> None:
    """Run ``n`` KSM rounds only (no workload, no reclamation)."""
    for _ in range(n):
        for vm in host.vms.values():
            vm.tick = TickCounters()
        host.ksm.run(host)
        host.check_invariants()


def brute_stats(host) -> tuple[int, int, int, int]:
    """ksm.rst's counters, counted from the maps and the index records."""
    mem, ksm = host.mem, host.ksm
    use_zero = ksm.params.use_zero_pages
    frames, n_pages, unshared, volatile = set(), 0, 0, 0
    for name, vm in host.vms.items():
        st, loc = vm.pmap.state, vm.pmap.loc
        for p in np.flatnonzero(st == ps.SHARED):
            f = int(loc[p])
            if use_zero and mem.zero[f]:
                continue
            frames.add(f)
            n_pages += 1
        seen = ksm.seen.get(name, np.zeros(len(st), bool))
        for p in np.flatnonzero(st == ps.MAPPED):
            if mem.index.kind[loc[p]] == HINT:
                unshared += 1
            elif seen[p]:
                volatile += 1
    return len(frames), n_pages - len(frames), unshared, volatile


def contents_ok(host, expect: dict[str, np.ndarray]) -> bool:
    for name, keys in expect.items():
        vm = host.vms[name]
        got = host.mem.read_bytes(vm.vm_id, np.arange(len(keys)))
        if not np.array_equal(got, keyed(keys)):
            return False
    return True


def test_linear_scan_covers_every_page_in_ceil_n_over_pages_to_scan_rounds() -> None:
    host = ksm_host(n_vms=3, n_pages=37, per_tick=10)
    for name in host.vms:
        fill(host, name, np.arange(1, 38) + 1000 * int(name[-1]))
    total = 3 * 37
    rounds = math.ceil(total / 10)
    tick(host, rounds - 1)
    assert not all(s.all() for s in host.ksm.seen.values())
    # The walk is linear: VM by VM in name order, each from its first page.
    assert host.ksm.seen["vm0"].all() and host.ksm.seen["vm1"].all()
    seen2 = host.ksm.seen["vm2"]
    assert seen2[: int(seen2.sum())].all()
    assert host.ksm.full_scans == 0
    tick(host)
    assert all(s.all() for s in host.ksm.seen.values())
    # the pass ended when the walk wrapped, and with it that wake-up's batch (ksm.c's
    # scan_get_next_rmap_item returns NULL at the wrap): the next pass starts next tick
    assert host.ksm.full_scans == 1
    assert host.ksm.cursor_vm == "vm0" and host.ksm.cursor_pos == 0
    tick(host)
    assert host.ksm.cursor_pos == 10


def test_a_wrap_ends_only_its_own_batch() -> None:
    host = ksm_host(n_vms=1, n_pages=25, per_tick=10, ksm_sleep_millisecs=250.0)
    # (per_tick here is pages_to_scan: 4 wake-ups of 10 pages a 1 s tick)
    fill(host, "vm0", np.arange(1, 26))  # 4 batches of 10 a tick: 25 pages, wrap, 10
    tick(host)
    assert host.ksm.full_scans == 1 and host.ksm.cursor_pos == 10


def test_only_present_pages_count_against_pages_to_scan() -> None:
    host = ksm_host(n_vms=1, n_pages=100, per_tick=10)
    vm = host.vms["vm0"]
    write_keys(host.mem, vm.vm_id, np.arange(0, 100, 10), np.arange(1, 11))  # 10 present
    tick(host)
    assert host.ksm.seen["vm0"].sum() == 10
    assert vm.tick.scanned == 10


def test_identical_pages_merge_on_the_second_pass_not_the_first() -> None:
    host = ksm_host(n_vms=2, n_pages=10, per_tick=20)
    keys = np.arange(1, 11)
    fill(host, "vm0", keys)
    fill(host, "vm1", keys)
    tick(host)  # first pass: every checksum is new -> volatile, nothing merges
    assert host.shared_pages() == 0
    assert brute_stats(host)[3] == 20
    tick(host)  # second pass: unchanged -> unstable tree -> merged
    assert host.shared_pages() == 20
    assert host.ksm.stats(host)[:2] == (10, 10)
    assert contents_ok(host, {"vm0": keys, "vm1": keys})


def test_volatile_pages_are_not_merged() -> None:
    """Identical pages whose checksum changed since their last scan enter no tree (the
    ESX scan would merge them at once)."""
    host = ksm_host(n_vms=2, n_pages=4, per_tick=8)
    fill(host, "vm0", [1, 2, 3, 4])
    fill(host, "vm1", [5, 6, 7, 8])
    tick(host)
    fill(host, "vm0", [9, 9, 9, 9])  # both VMs now hold identical pages, all changed
    fill(host, "vm1", [9, 9, 9, 9])
    tick(host)
    assert host.shared_pages() == 0
    assert host.ksm.stats(host)[3] == 8  # all volatile
    tick(host)  # unchanged since: they merge now (vm0's first page into the unstable tree)
    assert host.shared_pages() == 8
    # and in the ESX scan (the same writes) they merge at the first look
    esx = make_host(1024, 1024, policy=make_policy(scan_vm_pages_per_s=8.0))
    for name in ("vm0", "vm1"):
        esx.boot_vm(vm_spec(name, 4))
        write_keys(esx.mem, esx.vms[name].vm_id, np.arange(4), [9, 9, 9, 9])
    esx.mem.scan(esx.vms["vm0"].vm_id, pages(0, 1, 2, 3))
    assert esx.shared_pages() > 0


@pytest.mark.parametrize(
    ("cap", "refcounts", "unshared"), [(2, [2] * 5, 0), (3, [3, 3, 3], 1), (256, [10], 0)]
)
def test_max_page_sharing_caps_every_shared_page(cap: int, refcounts, unshared: int) -> None:
    """Ten equal pages: a shared page that reaches ``cap`` sharers is set aside (FULL) and
    the next matches start a new copy, exactly as ksm.rst's max_page_sharing."""
    host = ksm_host(n_vms=1, n_pages=10, per_tick=10, ksm_max_page_sharing=cap)
    fill(host, "vm0", [7] * 10)
    tick(host, 3)
    fr = host.mem.frames
    shared = np.flatnonzero(fr.shared)
    assert sorted(fr.refcount[shared].tolist()) == refcounts
    assert (host.mem.index.kind[shared] == FULL).sum() == (len(refcounts) if cap <= 10 else 0)
    assert host.ksm.stats(host)[:3] == (len(refcounts), sum(refcounts) - len(refcounts), unshared)
    assert contents_ok(host, {"vm0": np.full(10, 7)})


def test_a_write_to_a_merged_page_breaks_cow_and_a_full_page_keeps_its_sharers() -> None:
    host = ksm_host(n_vms=1, n_pages=6, per_tick=6, ksm_max_page_sharing=3)
    fill(host, "vm0", [7] * 6)
    tick(host, 3)
    vm = host.vms["vm0"]
    write_keys(host.mem, vm.vm_id, pages(0), [99])
    host.check_invariants()
    assert contents_ok(host, {"vm0": np.array([99, 7, 7, 7, 7, 7])})


@pytest.mark.parametrize("use_zero", [False, True])
def test_use_zero_pages(use_zero: bool) -> None:
    host = ksm_host(n_vms=1, n_pages=12, per_tick=12, ksm_max_page_sharing=2,
                    ksm_use_zero_pages=use_zero)  # fmt: skip
    keys = np.array([0] * 8 + [5] * 4)
    fill(host, "vm0", keys)
    tick(host, 3)
    vm = host.vms["vm0"]
    zero_frames = np.flatnonzero(host.mem.zero)
    shared, sharing, *_ = host.ksm.stats(host)
    if use_zero:
        # zero pages: one frame, uncapped, counted in neither counter
        assert len(zero_frames) == 1 and host.mem.frames.refcount[zero_frames[0]] == 8
        assert vm.pmap.n_zero_shared == 8
        assert (shared, sharing) == (2, 2)  # the fives: two copies of two
    else:
        assert host.mem.frames.refcount[zero_frames].max() <= 2
        assert (shared, sharing) == (6, 6)
    assert (shared, sharing) == brute_stats(host)[:2]
    assert contents_ok(host, {"vm0": keys})


@pytest.mark.parametrize("use_zero", [False, True])
def test_counters_match_a_brute_force_count_under_random_writes(use_zero: bool) -> None:
    rng = np.random.default_rng(3)
    host = ksm_host(n_vms=3, n_pages=50, per_tick=23, ksm_max_page_sharing=4,
                    ksm_use_zero_pages=use_zero)  # fmt: skip
    expect = {}
    for name in host.vms:
        expect[name] = rng.integers(0, 6, 50)
        fill(host, name, expect[name])
    for _ in range(30):
        for name, vm in host.vms.items():
            w = np.unique(rng.integers(0, 50, 4))
            k = rng.integers(0, 6, len(w))
            write_keys(host.mem, vm.vm_id, w, k)
            expect[name][w] = k
        tick(host)
        assert host.ksm.stats(host)[:4] == brute_stats(host)
    assert host.shared_pages() > 0
    assert contents_ok(host, expect)


def test_collisions_never_share_different_bytes() -> None:
    host = ksm_host(n_vms=2, n_pages=8, per_tick=16)
    host.mem.index.hash_mask = np.uint64(0)  # every page hashes alike
    try:
        keys0, keys1 = np.arange(1, 9), np.array([1, 2, 3, 4, 10, 11, 12, 13])
        fill(host, "vm0", keys0)
        fill(host, "vm1", keys1)
        tick(host, 4)
        assert contents_ok(host, {"vm0": keys0, "vm1": keys1})
    finally:
        host.mem.index.hash_mask = np.uint64(0xFFFF_FFFF_FFFF_FFFF)


def test_snapshot_restores_checksums_cursor_and_continues_identically() -> None:
    a = ksm_host(n_vms=2, n_pages=30, per_tick=17)
    rng = np.random.default_rng(5)
    for name in a.vms:
        fill(a, name, rng.integers(0, 5, 30))
    tick(a, 3)
    arrays, meta = host_state(a)
    specs = {n: v.spec for n, v in a.vms.items()}
    b = restore_host(a.spec, a.sim, a.policy, specs, arrays, meta)
    b.check_invariants()
    assert b.ksm.cursor_vm == a.ksm.cursor_vm and b.ksm.cursor_pos == a.ksm.cursor_pos
    for h in (a, b):
        for name in h.vms:
            write_keys(h.mem, h.vms[name].vm_id, pages(3), [4])
        tick(h, 4)
    assert a.digest(full=True) == b.digest(full=True)
    assert a.ksm.stats(a) == b.ksm.stats(b)
    assert all(np.array_equal(a.ksm.sums[n], b.ksm.sums[n]) for n in a.vms)


def test_page_out_swaps_without_sharing_on_a_ksm_host() -> None:
    host = ksm_host(n_vms=2, n_pages=4, per_tick=1)
    fill(host, "vm0", [1, 2, 3, 4])
    fill(host, "vm1", [1, 2, 3, 4])
    freed, s = host.mem.page_out(host.vms["vm1"].vm_id, pages(0, 1))
    assert freed == 2 and s.merged == s.hint_hits == 0
    assert host.vms["vm1"].pmap.counts[ps.VMM_SWAPPED] == 2
    host.check_invariants()


def test_a_departing_vm_leaves_the_scan() -> None:
    host = ksm_host(n_vms=2, n_pages=10, per_tick=5)
    fill(host, "vm0", np.arange(1, 11))
    fill(host, "vm1", np.arange(1, 11))
    tick(host, 6)
    vm = host.vms["vm0"]
    host.mem.release(vm.vm_id, np.arange(10), ps.UNTOUCHED)
    host.detach("vm0")
    assert "vm0" not in host.ksm.sums
    host.check_invariants()
    tick(host, 3)
    assert contents_ok(host, {"vm1": np.arange(1, 11)})
