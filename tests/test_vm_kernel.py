"""The compiled fast paths must be indistinguishable from the numpy code they replace.

* :mod:`workloads.patterns_kernel` -- the same draws, and the same generator state after, as
  numpy's ``Generator.integers`` (page picks, content keys);
* :func:`hosts.vm_kernel.dedup` -- the same sorted unique reads/writes/keys as the
  general path's numpy deduplication;
* :meth:`VirtualMachine._apply_fast` (kernels :func:`hosts.vm_kernel.step` and
  ``apply_chunk``) -- twin hosts, one with every VM on the general path
  (``fast_path = False``), driven through the same operations (ticks with workloads,
  sharing scans, reclamation, the test's own accesses, balloon, VMM swapping): after every
  operation *every* array and counter of the hosts, their VMs, guests, samplers and sharing
  indexes is equal, and the fast path was really taken (and declined where it must).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hostkit import CLASS_IMAGE, TEST_IMAGE, make_host, make_vm, no_room, vm_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracles.guest_evict import use_reference_paths
from vmmsim.hosts import guest_os_kernel as gk
from vmmsim.hosts import page_state as ps
from vmmsim.hosts import vm_kernel as vk
from vmmsim.hosts.vm import VirtualMachine, vm_page_contents
from vmmsim.hosts.vm_general import dedup as dedup_numpy
from vmmsim.workloads import patterns_kernel
from vmmsim.workloads.content import page_bytes
from vmmsim.workloads.patterns import Accesses, SteadyParams
from vmmsim.workloads.phased import PhasedParams


# ---------------------------------------------------------------------------- draws
@pytest.mark.parametrize("seed", range(6))
def test_draws_match_numpy_and_leave_the_same_generator_state(seed):
    a = np.random.Generator(np.random.PCG64(seed))
    b = np.random.Generator(np.random.PCG64(seed))
    for _ in range(40):
        m = int(a.integers(1, 5000))
        assert m == int(b.integers(1, 5000))
        pool = np.arange(m, dtype=np.int64) * 7 + 3
        n_r, n_w = int(a.integers(0, 1500)), int(a.integers(0, 200))
        b.integers(0, 1500), b.integers(0, 200)
        want_r = pool[a.integers(0, m, size=n_r)] if n_r else np.zeros(0, np.int64)
        want_w = pool[a.integers(0, m, size=n_w)] if n_w else np.zeros(0, np.int64)
        want_k = a.integers(1, 2**64 - 1, size=len(want_w), dtype=np.uint64, endpoint=True)
        got_r, got_w, got_k = patterns_kernel.draw_split(b, pool, n_r, pool, n_w)
        assert np.array_equal(got_r, want_r) and np.array_equal(got_w, want_w)
        assert np.array_equal(got_k, want_k) and got_k.dtype == np.uint64
        a.integers(0, 3)  # an odd 32-bit draw: the buffered half word must carry over
        b.integers(0, 3)
        assert a.bit_generator.state == b.bit_generator.state


def test_draw_edge_cases_consume_nothing_when_numpy_consumes_nothing():
    a = np.random.Generator(np.random.PCG64(1))
    b = np.random.Generator(np.random.PCG64(1))
    one = np.array([42], dtype=np.int64)
    assert np.array_equal(patterns_kernel.draw(b, one, 5), one[a.integers(0, 1, size=5)])
    assert len(patterns_kernel.draw(b, np.zeros(0, np.int64), 5)) == 0
    assert len(patterns_kernel.draw(b, one, 0)) == 0
    assert len(patterns_kernel.nonzero_keys(b, 0)) == 0
    r, w, k = patterns_kernel.draw_split(b, one, 0, np.zeros(0, np.int64), 3)
    assert len(r) == len(w) == len(k) == 0
    assert a.bit_generator.state == b.bit_generator.state


# ---------------------------------------------------------------------------- dedup
@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 300),
    reads=st.lists(st.integers(0, 10**6), max_size=200),
    writes=st.lists(st.integers(0, 10**6), max_size=200),
    data=st.data(),
)
def test_dedup_matches_the_numpy_dedup(n, reads, writes, data):
    rd = np.asarray(reads, dtype=np.int64) % n
    wr = np.asarray(writes, dtype=np.int64) % n
    keys = np.asarray(
        data.draw(st.lists(st.integers(0, 2**64 - 1), min_size=len(wr), max_size=len(wr))),
        dtype=np.uint64,
    )
    scratch = np.full(n, -1, dtype=np.int32)
    got = vk.dedup(rd, wr, keys, scratch)
    want = dedup_numpy(rd, wr, keys, n)
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)
    assert (scratch == -1).all()


# ---------------------------------------------------------------------------- twin hosts
def snapshot(obj, depth: int = 0) -> dict:
    """Every array and plain value reachable from ``obj``'s attributes (copied)."""
    out = {}
    for k, v in sorted(vars(obj).items()):
        if k == "_scratch":  # the fast path's dedup marks (all -1 between steps)
            continue
        if isinstance(v, np.ndarray):
            out[k] = v.copy()
        elif isinstance(v, (int, float, bool, str, np.generic)) or v is None:
            out[k] = v
        elif isinstance(v, (dict, set, tuple)) and depth > 0:
            out[k] = repr(v)
        elif hasattr(v, "__dict__") and depth < 2 and not callable(v):
            out[k] = snapshot(v, depth + 1)
    return out


def host_state(host) -> dict:
    mem = host.mem
    state = {
        "digest": host.digest(full=True),
        "frames": snapshot(mem.frames),
        "swap": snapshot(mem.swap),
        "index": snapshot(mem.index, 1),
        "zero": mem.zero.copy(),
        "tick": host.tick,
        "mstate": int(host.mstate),
        "blocked": sorted(host.blocked),
    }
    for name in host.order:
        vm = host.vms[name]
        state[name] = {
            "guest": snapshot(vm.guest),
            "pmap": snapshot(vm.pmap),
            "sampler": snapshot(vm.sampler),
            "tick": dict(vm.tick.__dict__),
            "stats": vm.stats.as_dict(),
            "rng": (vm.workload_rng.bit_generator.state, vm.vmm_rng.bit_generator.state),
            "contents": vm_page_contents(vm, mem),
            "steps": vm.steps,
            "target": vm.target,
        }
    return state


def assert_same(a, b, path: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"{path} differs"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


@pytest.fixture
def statuses(monkeypatch):
    """Outcomes of the fast path: Counter of True (taken) / False (declined), and of each
    kernel status."""
    seen: Counter = Counter()
    real = VirtualMachine._apply_fast

    def spy(self, *a):
        status = real(self, *a)
        seen[status == vk.OK] += 1
        return status

    monkeypatch.setattr(VirtualMachine, "_apply_fast", spy)
    for name in ("step", "apply_chunk"):
        kernel = getattr(vk, name)

        def kernel_spy(*a, kernel=kernel):
            kernel(*a)
            seen[("status", int(a[-1][vk.ST]))] += 1

        monkeypatch.setattr(vk, name, kernel_spy)
    real_evict = gk.evict

    def evict_spy(*a):
        real_evict(*a)
        seen[("evict", int(a[-1][gk.R_ST]))] += 1

    monkeypatch.setattr(gk, "evict", evict_spy)
    return seen


def tick_twins(a, b, start: int, stop: int, allocate_every: int = 0) -> None:
    """Ticks ``start .. stop-1`` on twin hosts ``a`` and ``b`` (each self-allocating every
    ``allocate_every`` ticks, if set): after every tick the metrics and every array of the
    two are equal, and ``a`` holds its invariants."""
    for t in range(start, stop):
        if allocate_every and t % allocate_every == 0:
            a.self_allocate()
            b.self_allocate()
        cols_a = a.run_ticks(t, 1)
        cols_b = b.run_ticks(t, 1)
        for k in cols_a:
            assert np.array_equal(cols_a[k], cols_b[k]), f"tick {t}: metric {k}"
        assert_same(host_state(a), host_state(b), f"tick {t}")
        a.check_invariants()


def twin_hosts(specs, n_frames: int, swap: int = 2048, seed: int = 3):
    hosts = []
    for fast in (True, False):
        host = make_host(n_frames, swap, seed=seed)
        for spec in specs:
            vm = host.boot_vm(spec)
            use_reference_paths(vm, fast)
        hosts.append(host)
    return hosts


def _specs(image=TEST_IMAGE):
    return [
        vm_spec(
            "a",
            96,
            image=image,
            workload_kind="steady",
            workload_params=SteadyParams(wss_mb=0.25, write_fraction=0.3, accesses_per_s=40.0),
            pinned_pages=2,
            overhead_pages=2,
        ),
        vm_spec(
            "b",
            80,
            image=image,
            workload_kind="phased",
            workload_params=PhasedParams(phases=((5.0, 0.05), (6.0, 0.3)), write_fraction=0.2),
            overhead_pages=2,
        ),
        vm_spec(
            "c",
            64,
            image=image,
            balloon=False,
            workload_kind="steady",
            workload_params=SteadyParams(wss_mb=0.2, write_fraction=0.5, accesses_per_s=30.0),
        ),
    ]


def test_tick_loop_fast_and_general_paths_agree_under_pressure(statuses):
    """Overcommitted host (sharing, ballooning, VMM swapping, guest swapping, make_room):
    every array equal after every tick, with the fast path taken and declined."""
    fast, slow = twin_hosts(_specs(), n_frames=150)
    tick_twins(fast, slow, 0, 60, allocate_every=5)
    assert statuses[True] > 50 and statuses[False] > 0, statuses
    assert statuses[("status", vk.FRAMES)] > 0, statuses  # make_room from the fast path
    assert statuses[("status", vk.EVICT)] > 0, statuses  # guest eviction: general path
    assert statuses[("status", vk.CHUNK)] > 0, statuses  # boot: more pages than a chunk
    counts = Counter()
    for vm in fast.vms.values():
        s = vm.stats
        counts.update(cow=s.cow_breaks, vmm_in=s.vmm_swapins, guest_in=s.guest_swapins)
        counts.update(guest_out=s.guest_swapouts)
    assert all(counts[k] > 0 for k in ("cow", "vmm_in", "guest_in", "guest_out")), counts
    assert statuses[("evict", gk.OK)] > 0, statuses  # the compiled guest eviction ran


def test_class_image_fast_and_general_paths_agree(statuses):
    """Per-VM image keys (page classes, :data:`hostkit.CLASS_IMAGE`): dropped image pages
    re-read by the kernel hold the same bytes as on the general path, tick after tick."""
    fast, slow = twin_hosts(_specs(CLASS_IMAGE), n_frames=150)
    tick_twins(fast, slow, 0, 40, allocate_every=5)
    assert statuses[True] > 20 and statuses[False] > 0, statuses
    a, b = fast.vms["a"], fast.vms["b"]
    assert not np.array_equal(a.image_key_array(), b.image_key_array()[: len(a.image_key_array())])
    assert sum(vm.stats.guest_swapins for vm in fast.vms.values()) > 0  # re-reads happened


host_op = st.one_of(
    st.tuples(st.just("ticks"), st.integers(1, 3)),
    st.tuples(st.just("self_allocate")),
    st.tuples(
        st.just("access"),
        st.integers(0, 2),
        st.lists(st.integers(0, 95), max_size=40),
        st.lists(st.tuples(st.integers(0, 95), st.integers(0, 7)), max_size=40),
    ),
    st.tuples(st.just("inflate"), st.integers(0, 2), st.integers(0, 40)),
    st.tuples(st.just("deflate"), st.integers(0, 2), st.integers(0, 40)),
    st.tuples(st.just("vmm_swap"), st.integers(0, 2), st.integers(0, 30)),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(host_op, min_size=1, max_size=20),
    seed=st.integers(0, 3),
    image=st.sampled_from([TEST_IMAGE, CLASS_IMAGE]),
)
def test_random_operations_fast_and_general_paths_agree(ops, seed, image):
    hosts = twin_hosts(_specs(image), n_frames=170, seed=seed)
    fresh = iter(range(1000, 10**9))
    for h in hosts:
        h.run_ticks(0, 1)
    for o in ops:
        kind = o[0]
        fresh_keys = None
        for h in hosts:
            vms = [h.vms[n] for n in h.order]
            if kind == "ticks":
                h.run_ticks(h.tick, o[1])
            elif kind == "self_allocate":
                h.self_allocate()
            elif kind == "access":
                vm = vms[o[1]]
                n = vm.spec.n_pages
                wr = np.asarray([w % n for w, _ in o[3]], dtype=np.int64)
                if fresh_keys is None:  # the same keys for both hosts
                    fresh_keys = _keys_for(vm, wr, [k for _, k in o[3]], fresh)
                acc = Accesses(np.asarray([r % n for r in o[2]], dtype=np.int64), wr, fresh_keys)
                vm.apply(h.mem, h._make_room, acc)
            elif kind == "inflate":
                vms[o[1]].inflate_balloon(h.mem, o[2])
            elif kind == "deflate":
                vms[o[1]].deflate_balloon(h.mem, o[2])
            elif kind == "vmm_swap":
                vms[o[1]].swap_out_random(h.mem, o[2])
        hosts[0].check_invariants()
        assert_same(host_state(hosts[0]), host_state(hosts[1]), f"after {o}")


def _keys_for(vm, wr: np.ndarray, choice: list[int], fresh) -> np.ndarray:
    """Keys from a small alphabet (zero, shared values, the page's own image key) or fresh
    unique ones, as in ``test_host_memory_properties``."""
    alphabet = (0, 11, 12, 13, 14, 0)
    keys = np.asarray([alphabet[c] if c < 6 else next(fresh) for c in choice], dtype=np.uint64)
    img = (np.asarray(choice) == 5) & (wr < vm.layout.n_image)
    if img.any():
        keys[img] = vm.image_keys_of(wr[img])
    return keys


def test_cow_break_of_the_last_references_frees_the_shared_frame():
    """Two pages of one VM share a frame; one step writes both: the frame's last
    reference goes through ``decref`` (index and zero flag updated) on both paths."""
    states = []
    for fast in (True, False):
        vm, mem = make_vm(16, n_frames=40, image=TEST_IMAGE)
        use_reference_paths(vm, fast)
        acc = Accesses(writes=np.array([9, 10, 11]), write_keys=np.array([5, 5, 0], np.uint64))
        vm.apply(mem, no_room, acc)
        mem.scan(vm.vm_id, vm.pmap.pages_in(ps.MAPPED))
        p9, p10 = (int(vm.guest.v2p[v]) for v in (9, 10))  # guest physical pages
        assert vm.pmap.state[p9] == vm.pmap.state[p10] == ps.SHARED
        frame = int(vm.pmap.loc[p9])
        assert vm.pmap.loc[p10] == frame and mem.frames.refcount[frame] == 2
        free0 = mem.n_free
        vm.tick.__init__()
        acc = Accesses(
            reads=np.array([3, 9]), writes=np.array([10, 9]), write_keys=np.array([7, 8], np.uint64)
        )
        vm.apply(mem, no_room, acc)
        assert mem.frames.refcount[frame] == 0 and not mem.frames.shared[frame]
        assert mem.n_free == free0 - 3 + 1 and vm.tick.cow == 2  # page 3: first touch
        mem.check_invariants()
        vm.check_invariants()
        want = page_bytes(np.array([8, 7], np.uint64), vm.sim.content_bytes)
        assert np.array_equal(vm_page_contents(vm, mem)[[9, 10]], want)
        states.append(
            (snapshot(mem.frames), snapshot(mem.index, 1), snapshot(vm.pmap), snapshot(vm.guest))
        )
    for a, b in zip(*states, strict=True):
        assert_same(a, b)


@pytest.mark.parametrize("cb", [64, 20])
def test_write_key_makes_page_bytes(cb):
    keys = np.array([0, 1, 2**63 + 5, 2**64 - 1, 123456789], dtype=np.uint64)
    table = page_bytes(np.zeros(0, np.uint64), cb)  # warm the table cache
    from vmmsim.workloads.content import word_table

    table = word_table(-(-cb // 8))
    for words in (True, False):
        rows = np.full((len(keys), cb), 0xAB, dtype=np.uint8)
        view = vk.word_view(rows) if words else np.zeros((0, 1), dtype=np.uint64)
        assert len(view) == (len(keys) if words and cb % 8 == 0 else 0)
        for i, k in enumerate(keys):
            vk.write_key(rows, view, i, k, table)
        assert np.array_equal(rows, page_bytes(keys, cb))


@pytest.mark.parametrize("fast", [True, False])
def test_first_touch_read_zero_fills_a_recycled_frame(fast):
    """A pinned page is guest-resident from boot but never backed: reading it first
    touches a frame -- one just freed by VMM swapping, full of old bytes -- zero-filled."""
    vm, mem = make_vm(16, n_frames=12, image=TEST_IMAGE, pinned_pages=2)
    use_reference_paths(vm, fast)
    vm.apply(
        mem, no_room, Accesses(writes=np.arange(4, 12), write_keys=np.arange(1, 9, dtype=np.uint64))
    )
    assert vm.swap_out_random(mem, 8) == 8
    vm.apply(mem, no_room, Accesses(reads=np.array([0, 1])))
    assert vm.tick.first_touch == 8 + 2
    assert not vm_page_contents(vm, mem)[:2].any()
    keys = np.arange(1, 9, dtype=np.uint64)
    assert np.array_equal(vm_page_contents(vm, mem)[4:12], page_bytes(keys, vm.sim.content_bytes))
    mem.check_invariants()
    vm.check_invariants()


def test_a_page_outside_the_guest_takes_the_general_path():
    """Out-of-range pages never reach the kernels (no unchecked indexing): the step goes
    to the general path, whose numpy indexing raises as it always did."""
    for fast in (True, False):
        vm, mem = make_vm(16, n_frames=40)
        use_reference_paths(vm, fast)
        with pytest.raises(IndexError):
            vm.apply(mem, no_room, Accesses(reads=np.array([3, 16])))
        scratch = np.full(16, -1, dtype=np.int32)
        with pytest.raises(IndexError):
            vk.dedup(np.array([3]), np.array([99]), np.array([1], np.uint64), scratch)
        assert (scratch == -1).all()
