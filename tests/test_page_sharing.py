"""Content-based page sharing on ``HostMemory`` directly, and the sharing index beneath it.

* The Linux KSM selftest scenarios: every test scans twice where a merge is expected (the
  first pass over a page only records a hint, ESX fig. 3) and checks
  ``check_invariants()`` throughout.
* The index's open-addressing table on its own: colliding probe runs, wrap-around,
  deletion that keeps later entries findable, a near-full table against a dict model.
* The compiled scan against :func:`reference_scan`, a plain-dict model of the ESX scan,
  on random small hosts (hashes masked so that equal hashes with different bytes occur).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hostkit import attach, hinted_pair, keyed, make_mem, pages, write_keys
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.sharing import index as page_sharing


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
    """Every page hashes to the same value (the index's test hook masks every hash)."""
    monkeypatch.setattr(page_sharing.SharingIndex, "hash_mask", np.uint64(0))


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
    mem, (a, pa), (b, pb) = hinted_pair(32, 8, 6)
    s = mem.scan(b, pages(0))
    mem.check_invariants()
    assert s.hint_hits == 1 and pa.state[0] == pb.state[0] == ps.SHARED
    assert mem.swap_out(a, pages(0)) == 0  # b still shares the frame
    mem.check_invariants()
    assert mem.frames.refcount[pb.loc[0]] == 1
    assert (mem.read_bytes(a, pages(0)) == keyed([6])).all()
    assert (mem.read_bytes(b, pages(0)) == keyed([6])).all()


# ---------------------------------------------------------------------------- hash table
# The index is one open-addressing table of frame numbers keyed by each frame's record.
# These tests drive the table kernels directly, with keys chosen so probe runs collide.


def _enter(idx, f: int, kind: int, group: int, key: int) -> int:
    """Give frame ``f`` an entry (as the scan kernel does); returns the displaced frame."""
    idx.kind[f], idx.key[f], idx.group[f] = kind, np.uint64(key), group
    d = page_sharing.insert(*idx.table_args(), f)
    if d >= 0:
        idx.kind[d] = page_sharing.NONE
    else:
        idx.counts[kind] += 1
    return int(d)


def _keys_homed_at(idx, group: int, home: int, n: int, seed: int = 0) -> list[int]:
    """``n`` distinct hashes whose home slot in ``group`` is ``home``."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    while len(out) < n:
        h = int(rng.integers(0, 2**63)) * 2 + 1
        if page_sharing.home(np.uint64(h), np.int32(group), idx.shift) == home and h not in out:
            out.append(h)
    return out


def _check_table(idx, model: dict[tuple[int, int, int], int]) -> None:
    """The table holds exactly ``model`` ((group, hash, kind) -> frame), all findable."""
    n = len(idx.kind)
    idx.check_invariants(np.zeros((n, 8), dtype=np.uint8), np.zeros(n, dtype=bool))
    assert int((idx.slots >= 0).sum()) == len(model) == idx.n_hints()
    for (g, h, _k), f in model.items():
        assert idx.find(g, np.array([h], dtype=np.uint64))[0] == f
        assert idx.find_shared(g, np.array([h], dtype=np.uint64))[0] == -1


def test_table_colliding_probe_runs_and_wraparound():
    idx = page_sharing.SharingIndex(20)  # 32 slots
    cap = len(idx.slots)
    assert cap == 32
    # Two clusters: one homed at the last slot (its run wraps to slot 0), one at slot 0.
    last = _keys_homed_at(idx, 0, cap - 1, 5, seed=1)
    first = _keys_homed_at(idx, 0, 0, 4, seed=2)
    model = {}
    for f, h in enumerate(last + first):
        assert _enter(idx, f, page_sharing.HINT, 0, h) == -1
        model[(0, h, page_sharing.HINT)] = f
    _check_table(idx, model)
    assert idx.slots[cap - 1] == 0 and (idx.slots[:8] >= 0).all()
    # Deleting from the middle of the wrapped run keeps every later entry findable.
    for f in (1, 5, 0, 7, 3):
        idx.forget(np.array([f]))
        del model[next(k for k, v in model.items() if v == f)]
        _check_table(idx, model)
        assert idx.kind[f] == page_sharing.NONE
        h = int(idx.key[f])
        assert idx.find(0, np.array([h], dtype=np.uint64))[0] == -1
    # Forgetting frames without entries is a no-op.
    idx.forget(np.array([1, 5, 19]))
    _check_table(idx, model)


def test_table_kinds_and_groups_are_separate_keys():
    idx = page_sharing.SharingIndex(8)
    n = len(idx.kind)
    content = np.zeros((n, 8), dtype=np.uint8)
    content[0] = 7
    h = page_sharing.hash_page(content[0])
    shared = np.zeros(n, dtype=bool)
    shared[0] = True
    _enter(idx, 0, page_sharing.SHARED, 0, h)
    _enter(idx, 1, page_sharing.HINT, 0, h)  # same hash, other kind
    _enter(idx, 2, page_sharing.HINT, 1, h)  # same hash, other group
    idx.check_invariants(content, shared)
    q = np.array([h, h ^ 1], dtype=np.uint64)
    assert idx.find_shared(0, q).tolist() == [0, -1]
    assert idx.find(0, q).tolist() == [0, -1]  # shared first
    assert idx.find(1, q).tolist() == [2, -1] and idx.find_shared(1, q).tolist() == [-1, -1]
    assert idx.n_shared_frames() == 1 and idx.n_hints() == 2
    idx.forget(np.array([0]))
    shared[0] = False
    idx.check_invariants(content, shared)
    assert idx.find(0, q).tolist() == [1, -1] and idx.n_shared_frames() == 0
    # A second hint under the same key displaces the first (its record goes to NONE).
    assert _enter(idx, 3, page_sharing.HINT, 0, h) == 1
    assert idx.kind[1] == page_sharing.NONE and idx.find(0, q).tolist() == [3, -1]
    idx.check_invariants(content, shared)


def test_check_invariants_catches_a_record_without_entry_and_a_bad_hash():
    idx = page_sharing.SharingIndex(8)
    n = len(idx.kind)
    content = np.zeros((n, 8), dtype=np.uint8)
    shared = np.zeros(n, dtype=bool)
    _enter(idx, 0, page_sharing.HINT, 0, 123)
    idx.kind[4] = page_sharing.HINT  # a record with no slot
    with pytest.raises(InvariantError, match="no index entry"):
        idx.check_invariants(content, shared)
    idx.kind[4] = page_sharing.NONE
    _enter(idx, 5, page_sharing.SHARED, 0, 99)  # not what frame 5 hashes to
    shared[5] = True
    with pytest.raises(InvariantError, match="no longer hashes"):
        idx.check_invariants(content, shared)
    shared[5] = False
    with pytest.raises(InvariantError, match="frame is not"):
        idx.check_invariants(content, shared)


def test_rebuild_from_records_restores_every_entry():
    idx = page_sharing.SharingIndex(40)
    rng = np.random.default_rng(3)
    for f in range(40):  # full: every frame has an entry, clustered homes
        _enter(idx, f, page_sharing.HINT, int(rng.integers(0, 3)), int(rng.integers(0, 2**62)))
    before = {f: idx.find(int(idx.group[f]), idx.key[f : f + 1])[0] for f in range(40)}
    assert all(before[f] == f for f in range(40))
    idx.slots[:] = -1
    idx.counts[:] = 0
    idx.rebuild()
    assert idx.n_hints() == 40
    for f in range(40):
        assert idx.find(int(idx.group[f]), idx.key[f : f + 1])[0] == f


TABLE_FRAMES = 21  # 32 slots: up to 2/3 full
MASK = 0xF  # 16 hash values x 3 groups x 2 kinds: long, mixed probe runs


def _rows_by_masked_hash(width: int = 8) -> np.ndarray:
    """rows[v]: a page whose xxh3 & MASK is v."""
    rows = np.zeros((MASK + 1, width), dtype=np.uint8)
    found = np.zeros(MASK + 1, dtype=bool)
    rng = np.random.default_rng(0)
    while not found.all():
        r = rng.integers(0, 256, width, dtype=np.uint8)
        v = page_sharing.hash_page(r) & MASK
        if not found[v]:
            rows[v], found[v] = r, True
    return rows


ROWS = _rows_by_masked_hash()
table_op = st.tuples(
    st.integers(0, TABLE_FRAMES - 1),
    st.integers(0, MASK),
    st.integers(0, 2),
    st.sampled_from([page_sharing.HINT, page_sharing.SHARED]),
)


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(table_op, max_size=80))
def test_table_matches_a_dict_model(ops):
    """Insert (or, if the frame has an entry, delete) at random; the table always equals a
    dict model and ``check_invariants`` holds (entries reachable, records both ways)."""
    idx = page_sharing.SharingIndex(TABLE_FRAMES)
    idx.hash_mask = np.uint64(MASK)
    content = np.zeros((TABLE_FRAMES, ROWS.shape[1]), dtype=np.uint8)
    shared = np.zeros(TABLE_FRAMES, dtype=bool)
    model: dict[tuple[int, int, int], int] = {}
    for f, h, g, kind in ops:
        if idx.kind[f] != page_sharing.NONE:
            old = (int(idx.group[f]), int(idx.key[f]), int(idx.kind[f]))
            idx.forget(np.array([f]))
            assert model.pop(old) == f
            shared[f] = False
        else:
            content[f] = ROWS[h]
            d = _enter(idx, f, kind, g, h)
            assert d == model.get((g, h, kind), -1)
            if d >= 0:
                shared[d] = False
            model[(g, h, kind)] = f
            shared[f] = kind == page_sharing.SHARED
        idx.check_invariants(content, shared)
        assert idx.n_shared_frames() == sum(k[2] == page_sharing.SHARED for k in model)
        for (g2, h2, k2), f2 in model.items():
            q = np.array([h2], dtype=np.uint64)
            if k2 == page_sharing.SHARED:
                assert idx.find_shared(g2, q)[0] == f2
            elif (g2, h2, page_sharing.SHARED) not in model:
                assert idx.find(g2, q)[0] == f2
    assert int((idx.slots >= 0).sum()) == len(model)


# ---------------------------------------------------------------------------- scan vs model
def _entries(idx, kind: int) -> dict[tuple[int, int], int]:
    """The index's entries of one kind as (group, hash) -> frame, from the records."""
    fs = np.flatnonzero(idx.kind == kind).tolist()
    return {(int(idx.group[f]), int(idx.key[f])): f for f in fs}


def reference_scan(mem, vm: int, ppns: np.ndarray):
    """What ``mem.scan(vm, ppns)`` must do, from a plain-dict model of the index.

    The ESX scan of a batch, written for clarity: classify each page in order against
    shared entries (index, then promoted in this batch), then hints (this batch's, then
    the index's); verify (index hints re-hashed, pairs byte-compared); promote, merge and
    re-hint.  Returns (stats fields, expected (vm, page) -> (state, frame) changes,
    expected shared and hint dicts (group, hash) -> frame, expected zero frames)."""
    idx, fr = mem.index, mem.frames
    mask = int(idx.mask)
    slot = mem.vms[vm]
    g, pmap = slot.group, slot.pmap

    def h_of(f: int) -> int:
        return page_sharing.hash_page(fr.content[f].tobytes()) & mask

    shared, hints = _entries(idx, page_sharing.SHARED), _entries(idx, page_sharing.HINT)
    zero = set(np.flatnonzero(mem.zero).tolist())
    cand = [p for p in ppns.tolist() if pmap.state[p] == ps.MAPPED]
    stats = dict(scanned=len(cand), merged=0, hint_hits=0, hint_stale=0, collisions=0)
    stats["frames_freed"] = 0
    if not cand or not slot.sharing:
        return stats, {}, shared, hints, zero
    frames = [int(pmap.loc[p]) for p in cand]
    batch_shared: dict[int, int] = {}
    new_hints: dict[int, int] = {}
    old_hint: dict[int, int] = {}
    pairs: list[tuple[int, int]] = []
    for i, f in enumerate(frames):
        h = h_of(f)
        t = shared.get((g, h), batch_shared.get(h))
        if t is None:
            t = new_hints.get(h)
            if t is None:
                t = hints.get((g, h))
                if t is None or t == f:
                    new_hints[h] = f
                    continue
                old_hint[t] = h
            batch_shared[h] = t
        if t != f:
            pairs.append((i, t))
    stale = {t for t, h in old_hint.items() if fr.refcount[t] != 1 or h_of(t) != h}
    ok = []
    for i, t in pairs:
        if t in stale:
            continue
        if fr.content[frames[i]].tobytes() == fr.content[t].tobytes():
            ok.append((i, t))
        else:
            stats["collisions"] += 1
    for t in stale:
        first = next(i for i, tt in pairs if tt == t)
        new_hints.setdefault(old_hint[t], frames[first])
    promoted: dict[int, int] = {}
    for i, t in ok:
        if not fr.shared[t] and t not in promoted:
            promoted[t] = h_of(frames[i])
    for h in promoted.values():
        new_hints.pop(h, None)
    stats.update(
        hint_stale=len(stale),
        hint_hits=len(promoted),
        merged=len(ok) - len(promoted),
        frames_freed=len(ok),
    )
    changes = {(vm, cand[i]): (ps.SHARED, t) for i, t in ok}
    for t, h in promoted.items():
        changes[(int(fr.owner_vm[t]), int(fr.owner_ppn[t]))] = (ps.SHARED, t)
        shared[(g, h)] = t
        if not fr.content[t].any():
            zero.add(t)
    gone = {frames[i] for i, _ in ok} | set(promoted) | set(new_hints.values())
    hints = {k: f for k, f in hints.items() if f not in gone}
    hints.update({(g, h): f for h, f in new_hints.items()})
    return stats, changes, shared, hints, zero


SCAN_PAGES = 8
SCAN_KEYS = [0, 1, 2, 3, 0xDEAD]
scan_pages = st.lists(st.integers(0, SCAN_PAGES - 1), min_size=1, max_size=SCAN_PAGES, unique=True)
few_pages = st.lists(st.integers(0, SCAN_PAGES - 1), min_size=1, max_size=3, unique=True)
scan_vm = st.integers(0, 2)
scan_op = st.one_of(
    st.tuples(
        st.just("write"),
        scan_vm,
        few_pages,
        st.lists(st.sampled_from(SCAN_KEYS), min_size=3, max_size=3),
    ),
    st.tuples(st.just("write"), scan_vm, few_pages, st.lists(st.just(0xBEEF), min_size=3)),
    st.tuples(st.just("scan"), scan_vm, scan_pages),
    st.tuples(st.just("scan"), scan_vm, few_pages),
    st.tuples(st.just("swap"), scan_vm, scan_pages),
    st.tuples(st.just("drop"), scan_vm, scan_pages),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    init=st.lists(st.sampled_from(SCAN_KEYS), min_size=3 * SCAN_PAGES, max_size=3 * SCAN_PAGES),
    ops=st.lists(scan_op, max_size=40),
    mask=st.sampled_from([(1 << 64) - 1, 0x3, 0]),
    sharing_vm2=st.booleans(),
)
def test_compiled_scan_matches_the_reference_model(init, ops, mask, sharing_vm2):
    """Every page written, then random writes, swaps, releases and scans (in random page
    order; hashes masked so collisions happen); every scan does exactly what
    :func:`reference_scan` says."""
    n_vm = 3
    mem = make_mem(n_vm * SCAN_PAGES + 4, n_vm * SCAN_PAGES, 32)
    mem.index.hash_mask = np.uint64(mask)
    pmaps = [
        attach(mem, SCAN_PAGES, group=0 if v < 2 else 1, sharing=v < 2 or sharing_vm2)[1]
        for v in range(n_vm)
    ]
    every = np.arange(SCAN_PAGES)
    for vm in range(n_vm):
        write_keys(mem, vm, every, init[vm * SCAN_PAGES : (vm + 1) * SCAN_PAGES], 32)
    for o in ops:
        kind, vm, p = o[0], o[1], np.asarray(o[2], dtype=np.int64)
        if kind == "write":
            write_keys(mem, vm, p, o[3][: len(p)], 32)
        elif kind == "swap":
            mem.swap_out(vm, p[np.isin(pmaps[vm].state[p], (ps.MAPPED, ps.SHARED))])
        elif kind == "drop":
            mem.release(vm, p, ps.UNTOUCHED)
        else:
            stats, changes, shared, hints, zero = reference_scan(mem, vm, p)
            before = [(pm.state.copy(), pm.loc.copy()) for pm in pmaps]
            got = mem.scan(vm, p)
            assert dataclasses.asdict(got) == stats
            for k in ("hint_stale", "collisions", "hint_hits", "merged"):
                if stats[k]:
                    event(f"scan with {k}")
            for v, pm in enumerate(pmaps):
                st_, loc = before[v]
                for q, (s, f) in ((q, sf) for (vv, q), sf in changes.items() if vv == v):
                    st_[q], loc[q] = s, f
                assert (pm.state == st_).all() and (pm.loc == loc).all()
            # (check_invariants below ties every record to a findable table entry)
            assert _entries(mem.index, page_sharing.SHARED) == shared
            assert _entries(mem.index, page_sharing.HINT) == hints
            assert set(np.flatnonzero(mem.zero).tolist()) == zero
        mem.check_invariants()


def _twin_state(mem):
    """Everything the scan may change on a host, as comparable arrays."""
    fr, idx = mem.frames, mem.index
    out = [fr.refcount, fr.shared, fr.owner_vm, fr.owner_ppn, fr.free_stack[: fr.n_free]]
    out += [idx.slots, idx.kind, idx.key, idx.group, idx.counts, mem.zero]
    for v in sorted(mem.vms):
        pm = mem.vms[v].pmap
        out += [pm.state, pm.loc, pm.counts, np.array([pm.n_zero_shared])]
    return out


@pytest.mark.parametrize("mask", [0xFFFFFFFFFFFFFFFF, 0x7])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scan_many_is_the_per_vm_scans_in_order(seed, mask):
    """``HostMemory.scan_many`` (one compiled call for all of a tick's VMs) leaves a host
    exactly as ``scan`` (one call per VM) VM after VM does: every frame, index and map
    array, the counts -- over rounds of random writes (stale hints, COW breaks), two
    sharing groups, a VM that does not share, pages scanned twice in one batch list, and
    hashes masked to 3 bits so collisions occur."""
    rng = np.random.default_rng(seed)
    twins = []
    for _ in range(2):
        mem = make_mem(400, 64)
        mem.index.hash_mask = np.uint64(mask)
        vms = [attach(mem, 48, group=g % 2, sharing=g != 3)[0] for g in range(5)]
        twins.append((mem, vms))
    for _round in range(6):
        writes = [(v, np.unique(rng.integers(0, 48, 20)), rng.integers(1, 9, 48)) for v in range(5)]
        batch = [(v, rng.permutation(48)[: rng.integers(0, 40)]) for v in rng.permutation(5)]
        stats = []
        for k, (mem, vms) in enumerate(twins):
            for v, ppns, keys in writes:
                write_keys(mem, vms[v], ppns, keys[: len(ppns)])
            if k == 0:
                row = []
                for v, c in batch:
                    st = mem.scan(vms[v], c)
                    shares = mem.vms[vms[v]].sharing
                    got = (st.hint_hits, st.merged, st.hint_stale, st.collisions, st.frames_freed)
                    row.append(got if shares else (0,) * 5)
                stats.append(row)
            else:
                res = mem.scan_many([vms[v] for v, _ in batch], [c for _, c in batch])
                stats.append([tuple(r[1:6]) for r in res.tolist()])
            mem.check_invariants()
        assert stats[0] == stats[1]
        for a, b in zip(_twin_state(twins[0][0]), _twin_state(twins[1][0]), strict=True):
            np.testing.assert_array_equal(a, b)
    assert twins[1][0].index.n_shared_frames() > 0  # sharing happened
