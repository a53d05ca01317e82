"""Property tests: no page content is ever lost or leaked across VMs.

Two levels, each against a shadow model of what every page must contain:

* ``HostMemory`` directly -- random reads, writes (a small alphabet of content keys, so
  duplicates and zero pages are common), sharing scans, VMM swap-outs and balloon
  releases/returns over three VMs (two sharing groups) on a host with fewer frames than
  guest pages;
* ``HostMemoryManager`` -- small VMs on an overcommitted host, with the test's own
  accesses (through guest OS and VMM) interleaved with ticks, reallocation, random
  targets, balloon inflate/deflate and random VMM swapping.

After every step all ``check_invariants()`` hold and every page reads back exactly the
bytes the shadow model says.
"""

from __future__ import annotations

import numpy as np
import pytest
from hostkit import TEST_IMAGE, keyed, make_host, vm_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.host_memory import HostMemory
from vmmsim.hosts.phys_map import PhysMap
from vmmsim.hosts.sharing import index as page_sharing
from vmmsim.hosts.vm import vm_page_contents
from vmmsim.workloads.content import page_bytes
from vmmsim.workloads.images import image_keys
from vmmsim.workloads.patterns import Accesses, SteadyParams

# ---------------------------------------------------------------------------- HostMemory
N_PAGES = 12
N_VMS = 3
N_FRAMES = 20  # < N_VMS * N_PAGES: the driver must swap to make room
N_SLOTS = N_VMS * N_PAGES  # never SwapFull: every page fits in swap
KEYS = [0, 1, 2, 3, 0xDEAD]  # key 0 is the zero page
CB = 32

page_sets = st.lists(st.integers(0, N_PAGES - 1), min_size=1, max_size=6, unique=True)
vm_ids = st.integers(0, N_VMS - 1)
op = st.one_of(
    st.tuples(st.just("read"), vm_ids, page_sets),
    st.tuples(
        st.just("write"), vm_ids, page_sets, st.lists(st.sampled_from(KEYS), min_size=6, max_size=6)
    ),
    st.tuples(st.just("scan"), vm_ids, page_sets),
    st.tuples(st.just("swap"), vm_ids, page_sets),
    st.tuples(st.just("balloon"), vm_ids, page_sets),
    st.tuples(st.just("unballoon"), vm_ids, page_sets),
)


class Driver:
    """Runs ops on a HostMemory and keeps the shadow model (content key per page)."""

    def __init__(self, sharing_vm2: bool) -> None:
        self.mem = HostMemory(N_FRAMES, N_SLOTS, CB)
        self.pmaps = [PhysMap(N_PAGES) for _ in range(N_VMS)]
        # vm 0 and 1 share a group; vm 2 is alone in group 1 (sharing maybe off).
        for i, pm in enumerate(self.pmaps):
            group = 0 if i < 2 else 1
            sharing = sharing_vm2 if i == 2 else True
            assert self.mem.attach(pm, group, sharing, overhead_pages=1) == i
        self.shadow = np.zeros((N_VMS, N_PAGES), dtype=np.uint64)
        self.expected_bytes = {int(k): keyed([k], CB)[0] for k in KEYS}
        self.rng = np.random.default_rng(0)

    def usable(self, vm: int, ppns: list[int]) -> np.ndarray:
        p = np.asarray(ppns, dtype=np.int64)
        return p[self.pmaps[vm].state[p] != ps.BALLOONED]

    def make_room(self, need: int, protect_vm: int, protect: np.ndarray) -> None:
        """Swap out resident pages (not the ones about to be accessed) until ``need`` fit."""
        while self.mem.n_free < need:
            cands = []
            for vm, pm in enumerate(self.pmaps):
                res = np.flatnonzero((pm.state == ps.MAPPED) | (pm.state == ps.SHARED))
                if vm == protect_vm:
                    res = np.setdiff1d(res, protect)
                cands += [(vm, int(p)) for p in res]
            assert cands, "no page left to swap: test sizing is wrong"
            vm, p = cands[int(self.rng.integers(len(cands)))]
            self.mem.swap_out(vm, np.array([p], dtype=np.int64))

    def step(self, o) -> None:
        kind, vm = o[0], o[1]
        mem, pm = self.mem, self.pmaps[vm]
        p = self.usable(vm, o[2])
        if kind == "read":
            self.make_room(mem.frames_needed(vm, p, p[:0]), vm, p)
            mem.read(vm, p)
        elif kind == "write":
            keys = np.asarray(o[3][: len(p)], dtype=np.uint64)
            self.make_room(mem.frames_needed(vm, p[:0], p), vm, p)
            mem.write(vm, p, page_bytes(keys, CB))
            self.shadow[vm, p] = keys
        elif kind == "scan":
            mem.scan(vm, p)
        elif kind == "swap":
            res = p[np.isin(pm.state[p], (ps.MAPPED, ps.SHARED))]
            mem.swap_out(vm, res)
        elif kind == "balloon":
            mem.release(vm, p, ps.BALLOONED)
            self.shadow[vm, p] = 0  # undefined for the guest; not read while ballooned
        elif kind == "unballoon":
            q = np.asarray(o[2], dtype=np.int64)
            q = q[pm.state[q] == ps.BALLOONED]
            mem.release(vm, q, ps.UNTOUCHED)
            self.shadow[vm, q] = 0  # a page handed back is zero-filled on first touch

    def check(self) -> None:
        self.mem.check_invariants()
        for vm, pm in enumerate(self.pmaps):
            live = np.flatnonzero(pm.state != ps.BALLOONED)
            got = self.mem.read_bytes(vm, live)
            want = page_bytes(self.shadow[vm, live], CB)
            bad = np.flatnonzero((got != want).any(axis=1))
            assert not len(bad), f"vm {vm} pages {live[bad].tolist()} hold the wrong bytes"
        # Accounting: every frame is free, an overhead frame or backs >= 1 page.
        n_backing = len(
            np.unique(
                np.concatenate(
                    [pm.loc[(pm.state == ps.MAPPED) | (pm.state == ps.SHARED)] for pm in self.pmaps]
                )
            )
        )
        assert n_backing + N_VMS + self.mem.n_free == N_FRAMES
        swapped = sum(int(pm.counts[ps.VMM_SWAPPED]) for pm in self.pmaps)
        assert swapped == self.mem.swap.n_used


def run_ops(ops, sharing_vm2: bool) -> Driver:
    d = Driver(sharing_vm2)
    for o in ops:
        d.step(o)
        d.check()
    # Finally scan everything twice: all equal pages within a group end up on one frame.
    for _ in range(2):
        for vm in range(N_VMS):
            d.mem.scan(vm, np.arange(N_PAGES))
            d.check()
    for vm in range(N_VMS):
        if vm == 2 and not sharing_vm2:
            assert d.pmaps[vm].counts[ps.SHARED] == 0
    return d


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(ops=st.lists(op, max_size=40), sharing_vm2=st.booleans())
def test_host_memory_never_loses_or_leaks_content(ops, sharing_vm2):
    run_ops(ops, sharing_vm2)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=40), sharing_vm2=st.booleans())
def test_host_memory_with_colliding_hashes(ops, sharing_vm2):
    """Every page hashes alike: only byte compares keep different contents apart."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(page_sharing.SharingIndex, "hash_mask", np.uint64(0))
        run_ops(ops, sharing_vm2)


# ---------------------------------------------------------------------------- host manager
HOST_FRAMES = 96
VM_PAGES = (64, 48, 40)


class VMShadow:
    """Content key of every virtual page of one VM (0 = never written: zeros)."""

    def __init__(self, vm) -> None:
        self.vm = vm
        self.keys = np.zeros(vm.spec.n_pages, dtype=np.uint64)

    def record(self, acc: Accesses) -> None:
        for p, k in zip(acc.writes.tolist(), acc.write_keys.tolist(), strict=True):
            self.keys[p] = k  # in order: the last write to a page wins

    def check(self, mem) -> None:
        got = vm_page_contents(self.vm, mem)
        want = page_bytes(self.keys, self.vm.sim.content_bytes)
        bad = np.flatnonzero((got != want).any(axis=1))
        assert not len(bad), f"{self.vm.name}: virtual pages {bad[:8].tolist()} differ"


def wrap_workload(vm, shadow: VMShadow) -> None:
    """Record what the VM's own workload writes (the steps run_ticks makes): its steps,
    and its planned steps, whose pages a compiled batch draws (hosts.tick_steps) -- the
    same draws, made here from a copy of the generator."""
    step, plan = vm.workload.step, vm.workload.plan

    def recorded(i):
        acc = step(i)
        shadow.record(acc)
        return acc

    def planned(i):
        p = plan(i)
        if p is not None:
            twin = np.random.Generator(np.random.PCG64())
            twin.bit_generator.state = vm.workload.rng.bit_generator.state
            shadow.record(p.draw(twin))
        return p

    vm.workload.step = recorded
    vm.workload.plan = planned


host_op = st.one_of(
    st.tuples(st.just("ticks"), st.integers(1, 3)),
    st.tuples(st.just("self_allocate")),
    st.tuples(st.just("targets"), st.lists(st.integers(8, 64), min_size=3, max_size=3)),
    st.tuples(
        st.just("access"),
        st.integers(0, 2),
        st.lists(st.integers(0, 63), max_size=24),  # reads
        st.lists(st.tuples(st.integers(0, 63), st.integers(0, 7)), max_size=24),  # writes
    ),
    st.tuples(st.just("fill"), st.integers(0, 2), st.booleans()),
    st.tuples(st.just("inflate"), st.integers(0, 2), st.integers(0, 40)),
    st.tuples(st.just("deflate"), st.integers(0, 2), st.integers(0, 40)),
    st.tuples(st.just("vmm_swap"), st.integers(0, 2), st.integers(0, 30)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(host_op, min_size=1, max_size=25), seed=st.integers(0, 3))
def test_host_manager_keeps_every_vms_pages(ops, seed):
    host = make_host(HOST_FRAMES, 512, seed=seed)
    vms, shadows = [], []
    specs = [
        vm_spec(
            "a",
            VM_PAGES[0],
            image=TEST_IMAGE,
            workload_kind="steady",
            workload_params=_steady(),
            pinned_pages=2,
            overhead_pages=2,
        ),
        vm_spec("b", VM_PAGES[1], image=TEST_IMAGE, overhead_pages=2),
        vm_spec("c", VM_PAGES[2], balloon=False, overhead_pages=2),
    ]
    for spec in specs:
        vm = host.boot_vm(spec)
        sh = VMShadow(vm)
        wrap_workload(vm, sh)
        vms.append(vm)
        shadows.append(sh)

    def check():
        host.check_invariants()
        for sh in shadows:
            sh.check(host.mem)

    host.run_ticks(0, 1)  # boot: image pages written at step 0
    check()
    fresh = iter(range(1000, 10**9))
    for o in ops:
        kind = o[0]
        if kind == "ticks":
            host.run_ticks(host.tick, o[1])
        elif kind == "self_allocate":
            host.self_allocate()
        elif kind == "targets":
            host.set_targets({vm.name: t for vm, t in zip(vms, o[1], strict=True)})
        elif kind == "access":
            vm, sh = vms[o[1]], shadows[o[1]]
            n = vm.spec.n_pages
            reads = np.asarray([r % n for r in o[2]], dtype=np.int64)
            wr = np.asarray([w % n for w, _ in o[3]], dtype=np.int64)
            keys = _keys_for(vm, wr, [k for _, k in o[3]], fresh)
            acc = Accesses(reads, wr, keys)
            vm.apply(host.mem, host._make_room, acc)
            sh.record(acc)
        elif kind == "fill":  # touch every page: write fresh keys, or read
            vm, sh = vms[o[1]], shadows[o[1]]
            every = np.arange(vm.spec.n_pages, dtype=np.int64)
            if o[2]:
                acc = Accesses(
                    writes=every, write_keys=_keys_for(vm, every, [6] * len(every), fresh)
                )
            else:
                acc = Accesses(reads=every)
            vm.apply(host.mem, host._make_room, acc)
            sh.record(acc)
        elif kind == "inflate":
            vms[o[1]].inflate_balloon(host.mem, o[2])
        elif kind == "deflate":
            vms[o[1]].deflate_balloon(host.mem, o[2])
        elif kind == "vmm_swap":
            vms[o[1]].swap_out_random(host.mem, o[2])
        check()


def _steady():
    # 64 pages of 4 KiB = 0.25 MB: the working set is half the VM, touched 20 times/s.
    return SteadyParams(wss_mb=0.125, write_fraction=0.3, accesses_per_s=20.0)


def _keys_for(vm, wr: np.ndarray, choice: list[int], fresh) -> np.ndarray:
    """Content keys from a small alphabet: zero (0), a few shared keys (1-4), the page's
    own image key (5: makes an image page clean again, so the guest may drop it) or a
    fresh unique key (6, 7: memory that cannot be shared)."""
    alphabet = (0, 11, 12, 13, 14, 0)
    keys = np.asarray([alphabet[c] if c < 6 else next(fresh) for c in choice], dtype=np.uint64)
    img = (np.asarray(choice) == 5) & (wr < vm.layout.n_image)
    if img.any():
        keys[img] = image_keys(vm.spec.image, vm.sim.seed, wr[img], vm.layout.n_image)
    return keys
