"""Content-based page sharing on ``HostMemory`` directly: the Linux KSM selftest scenarios.

Every test scans twice where a merge is expected (the first pass over a page only records
a hint, ESX fig. 3) and checks ``check_invariants()`` throughout.
"""

from __future__ import annotations

import numpy as np
import pytest
from hostkit import attach, keyed, make_mem, pages, write_keys

from hosts import host_memory, page_sharing
from hosts import page_state as ps


def scan2(mem, vm, ppns):
    """Two scan passes (hint, then merge); returns the second pass's stats."""
    ppns = np.asarray(ppns, dtype=np.int64)
    mem.scan(vm, ppns)
    mem.check_invariants()
    s = mem.scan(vm, ppns)
    mem.check_invariants()
    return s


def test_identical_pages_merge_into_one_frame():
    mem = make_mem(32, 8)
    vm, pmap = attach(mem, 16)
    n = 8
    write_keys(mem, vm, np.arange(n), [42] * n)
    used_before = mem.frames.n_used
    assert used_before == n
    scan2(mem, vm, np.arange(n))
    assert mem.index.n_shared_frames() == 1
    assert pmap.counts[ps.SHARED] == n
    assert mem.frames.n_used == used_before - (n - 1)  # n-1 frames freed
    frame = pmap.loc[0]
    assert (pmap.loc[:n] == frame).all() and mem.frames.refcount[frame] == n
    assert (mem.read_bytes(vm, np.arange(n)) == keyed([42] * n)).all()


def test_one_pass_merges_duplicates_within_the_batch():
    """Within one batch the first copy becomes a hint and the second promotes it."""
    mem = make_mem(16, 4)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, pages(0, 1, 2), [5, 5, 5])
    s = mem.scan(vm, pages(0, 1, 2))
    mem.check_invariants()
    assert (s.hint_hits, s.merged, s.frames_freed) == (1, 1, 2)
    assert pmap.counts[ps.SHARED] == 3 and mem.frames.n_used == 1


def test_unique_pages_never_merge():
    mem = make_mem(32, 8)
    vm, pmap = attach(mem, 16)
    write_keys(mem, vm, np.arange(10), np.arange(1, 11))
    for _ in range(3):
        s = mem.scan(vm, np.arange(10))
        mem.check_invariants()
        assert s.merged == s.hint_hits == s.frames_freed == 0
    assert pmap.counts[ps.SHARED] == 0 and mem.index.n_shared_frames() == 0
    assert mem.frames.n_used == 10


def test_write_to_merged_page_unmerges_only_that_page():
    mem = make_mem(32, 8)
    vm, pmap = attach(mem, 16)
    write_keys(mem, vm, np.arange(4), [9] * 4)
    scan2(mem, vm, np.arange(4))
    used = mem.frames.n_used
    f = write_keys(mem, vm, pages(2), [77])
    mem.check_invariants()
    assert f.cow == 1 and f.first_touch == 0
    assert pmap.state[2] == ps.MAPPED and pmap.counts[ps.SHARED] == 3
    assert mem.frames.n_used == used + 1
    got = mem.read_bytes(vm, np.arange(4))
    assert (got == keyed([9, 9, 77, 9])).all()
    # A write to a private page is no COW break.
    assert write_keys(mem, vm, pages(2), [78]).cow == 0


def test_cow_break_of_last_sharer_frees_the_shared_frame():
    mem = make_mem(16, 4)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, pages(0, 1), [3, 3])
    scan2(mem, vm, pages(0, 1))
    assert mem.index.n_shared_frames() == 1
    write_keys(mem, vm, pages(0, 1), [4, 5])
    mem.check_invariants()
    assert mem.index.n_shared_frames() == 0 and mem.frames.n_used == 2
    assert (mem.read_bytes(vm, pages(0, 1)) == keyed([4, 5])).all()


def test_zero_pages_merge_and_count_as_zero_shared():
    mem = make_mem(32, 8)
    a, pa = attach(mem, 16)
    b, pb = attach(mem, 16)
    write_keys(mem, a, np.arange(5), [0] * 5)
    write_keys(mem, b, np.arange(3), [0] * 3)
    write_keys(mem, b, pages(3, 4), [8, 8])  # shared, but not zero
    scan2(mem, a, np.arange(5))
    scan2(mem, b, np.arange(5))
    assert pa.n_zero_shared == 5 and pb.n_zero_shared == 3
    assert mem.index.n_shared_frames() == 2
    assert mem.zero.sum() == 1
    # COW break of a zero page, swap-out and release all leave the count exact.
    write_keys(mem, a, pages(0), [1])
    mem.swap_out(a, pages(1))
    mem.release(a, pages(2), ps.BALLOONED)
    mem.check_invariants()
    assert pa.n_zero_shared == 2


def test_zero_page_promoted_from_hint_in_same_batch_counts_once():
    """A hinted page promoted by a later copy and then visited in the same batch."""
    mem = make_mem(16, 4)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, pages(0, 1), [0, 0])
    mem.scan(vm, pages(0))  # hint for page 0
    s = mem.scan(vm, pages(1, 0))  # 1 promotes page 0's frame; then page 0 comes up
    mem.check_invariants()
    assert pmap.n_zero_shared == 2
    assert s.hint_hits == 1 and s.merged == 0 and s.frames_freed == 1


def test_page_changed_since_its_hint_is_not_merged():
    mem = make_mem(16, 4)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, pages(0), [100])
    mem.scan(vm, pages(0))  # hint: hash(100) -> page 0's frame
    write_keys(mem, vm, pages(0), [200])  # page 0 changes; the hint is now stale
    write_keys(mem, vm, pages(1), [100])  # a copy of page 0's OLD content
    s = mem.scan(vm, pages(1))
    mem.check_invariants()
    assert s.hint_stale == 1 and s.hint_hits == s.merged == 0
    assert pmap.counts[ps.SHARED] == 0
    assert (mem.read_bytes(vm, pages(0, 1)) == keyed([200, 100])).all()
    # The stale hint was replaced by page 1's: another copy of 100 now merges with it.
    write_keys(mem, vm, pages(2), [100])
    s = mem.scan(vm, pages(2))
    mem.check_invariants()
    assert s.hint_hits == 1 and pmap.state[1] == pmap.state[2] == ps.SHARED
    assert pmap.state[0] == ps.MAPPED


def test_page_freed_since_its_hint_is_not_merged():
    """The hinted frame was freed and reused by another page: no merge with the reuser."""
    mem = make_mem(16, 4)
    vm, pmap = attach(mem, 8)
    write_keys(mem, vm, pages(0), [100])
    mem.scan(vm, pages(0))
    mem.swap_out(vm, pages(0))  # frees the hinted frame
    write_keys(mem, vm, pages(3), [300])  # likely reuses it
    write_keys(mem, vm, pages(1), [100])
    mem.scan(vm, pages(1))
    mem.check_invariants()
    assert pmap.counts[ps.SHARED] == 0
    assert (mem.read_bytes(vm, pages(0, 1, 3)) == keyed([100, 100, 300])).all()


@pytest.fixture
def colliding_hash(monkeypatch):
    """Every page hashes to the same value (both names the modules bound)."""

    def const(_data) -> int:
        return 0x1234

    monkeypatch.setattr(page_sharing, "hash_page", const)
    monkeypatch.setattr(host_memory, "hash_page", const)


def test_hash_collisions_never_share_different_bytes(colliding_hash):
    mem = make_mem(64, 8)
    a, pa = attach(mem, 16)
    b, pb = attach(mem, 16)
    keys_a = [1, 2, 1, 3, 2, 1, 0, 0]
    keys_b = [3, 1, 2, 2, 0, 4, 4, 1]
    write_keys(mem, a, np.arange(8), keys_a)
    write_keys(mem, b, np.arange(8), keys_b)
    collisions = 0
    for _ in range(3):
        collisions += scan2(mem, a, np.arange(8)).collisions
        collisions += scan2(mem, b, np.arange(8)).collisions
    assert collisions > 0
    assert (mem.read_bytes(a, np.arange(8)) == keyed(keys_a)).all()
    assert (mem.read_bytes(b, np.arange(8)) == keyed(keys_b)).all()
    # Every frame holds one content: pages on one frame have equal keys.
    owners: dict[int, set[int]] = {}
    for pmap, keys in ((pa, keys_a), (pb, keys_b)):
        for p, k in enumerate(keys):
            owners.setdefault(int(pmap.loc[p]), set()).add(k)
    assert all(len(ks) == 1 for ks in owners.values())
    assert pa.counts[ps.SHARED] + pb.counts[ps.SHARED] > 0  # some did share (equal bytes)


def test_identical_pages_in_different_groups_never_share():
    mem = make_mem(32, 8)
    a, pa = attach(mem, 8, group=0)
    b, pb = attach(mem, 8, group=1)
    write_keys(mem, a, np.arange(2), [11, 11])
    write_keys(mem, b, np.arange(2), [11, 11])
    for _ in range(2):
        for vm in (a, b):
            mem.scan(vm, np.arange(2))
            mem.check_invariants()
    # Each group shares within itself only: two shared frames, one per group.
    assert mem.index.n_shared_frames() == 2
    assert pa.loc[0] == pa.loc[1] and pb.loc[0] == pb.loc[1] and pa.loc[0] != pb.loc[0]
    assert mem.frames.n_used == 2


def test_vm_without_sharing_is_never_merged():
    mem = make_mem(32, 8)
    a, pa = attach(mem, 8)
    b, pb = attach(mem, 8, sharing=False)
    write_keys(mem, a, np.arange(3), [11] * 3)
    write_keys(mem, b, np.arange(3), [11] * 3)
    for _ in range(2):
        mem.scan(b, np.arange(3))
        mem.scan(a, np.arange(3))
        mem.check_invariants()
    assert pb.counts[ps.SHARED] == 0 and (mem.frames.refcount[pb.loc[:3]] == 1).all()
    assert pa.counts[ps.SHARED] == 3
    assert mem.frames.n_used == 1 + 3


def test_merge_across_vms_and_swap_of_a_shared_page():
    mem = make_mem(32, 8)
    a, pa = attach(mem, 8)
    b, pb = attach(mem, 8)
    write_keys(mem, a, pages(0), [6])
    write_keys(mem, b, pages(0), [6])
    mem.scan(a, pages(0))
    s = mem.scan(b, pages(0))
    mem.check_invariants()
    assert s.hint_hits == 1 and pa.state[0] == pb.state[0] == ps.SHARED
    assert mem.swap_out(a, pages(0)) == 0  # b still shares the frame
    mem.check_invariants()
    assert mem.frames.refcount[pb.loc[0]] == 1
    assert (mem.read_bytes(a, pages(0)) == keyed([6])).all()
    assert (mem.read_bytes(b, pages(0)) == keyed([6])).all()
