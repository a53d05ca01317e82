"""One tick's VM steps on a host: planned steps batched into compiled calls.

Scope: what ``vm.run_step`` does for each stepping VM of a tick, in the host's order, with
the Python work per VM cut to the workload's count draws and the bookkeeping of results.
A VM whose workload can :meth:`~workloads.patterns.Workload.plan` its step (steady, idle
and phased guests after boot) has its pages and keys drawn and applied by
:func:`hosts.tick_steps_kernel.run_steps`, many VMs per call; the others, and any step the kernel
hands back (guest eviction, too few frames, oversized or invalid steps), go through
``vm.run_step`` / ``vm.apply`` as before.  Same draws, same order of frame allocations and
frees, same state: bit for bit what the one-VM-at-a-time loop gives (the tests run both).

The kernel takes each VM's arrays as a table of addresses and lengths, built when the
arrays change and kept while they stay the same objects (checked every tick: a guest swap
disk that grew, a migrated or restored VM, a VM paused or blocked this tick rebuild it);
this object holds the arrays, so none is freed while the table points to it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from itertools import chain
from typing import Any

import numpy as np
from vmmsim.hosts import tick_steps_kernel as tk
from vmmsim.hosts import vm_kernel as vk
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.host_memory import HostMemory
from vmmsim.hosts.vm import VirtualMachine
from vmmsim.workloads.content import word_table
from vmmsim.workloads.patterns import Accesses, SplitPlan
from vmmsim.workloads.patterns_kernel import rng_pointers

MakeRoom = Callable[[int, VirtualMachine], None]

_EMPTY_I = np.zeros(0, dtype=np.int64)
_EMPTY_K = np.zeros(0, dtype=np.uint64)
_EMPTY_F = np.zeros(0, dtype=np.int32)  # to_free: frame numbers, as HostMemory.step_buffers


def vm_arrays(vm: VirtualMachine, plan: SplitPlan, scratch: np.ndarray) -> tuple[Any, ...]:
    """The arrays of one VM the kernel takes (columns ``A_*`` of :mod:`hosts.tick_steps_kernel`;
    ``scratch``: the host's dedup marks for it, :meth:`HostMemory.step_buffers`), then the
    VM's workload generator (whose C entry points go in ``vkey``)."""
    g, pm = vm.guest, vm.pmap
    return (
        g.vstate, g.v2p, g.p2v, g.clean, g.pref, g.free_stack,
        g.swap.content, g.swap.free_stack,
        pm.state, pm.loc, pm.counts, pm.bits,
        scratch, plan.pool_r, plan.pool_w, vm.image_key_array(), g.pinned,
        vm.workload.rng,
    )  # fmt: skip


#: The dtype the kernel views each array as (``A_*`` order).
DTYPES = tuple(
    np.dtype(t)
    for t in (
        np.int8, np.int32, np.int32, np.bool_, np.bool_, np.int32,
        np.uint8, np.int32,
        np.int8, np.int32, np.int64, np.uint8,
        np.int32, np.int64, np.int64, np.uint64, np.bool_,
    )
)  # fmt: skip


class TickSteps:
    """Runs a host's VM steps for one tick (see the module docstring); one per host."""

    def __init__(self) -> None:
        self._arrays: list[tuple[Any, ...]] = []  # what the address table points to
        self._addr = np.zeros((0, tk.N_ARR), dtype=np.int64)  # their data addresses
        self._alen = np.zeros((0, tk.N_ARR), dtype=np.int64)  # and lengths
        self._host: tuple[Any, ...] = ()  # (frame contents, their word view, key table)
        self._bufs = (_EMPTY_I, _EMPTY_I, _EMPTY_K, _EMPTY_F)  # reads, writes, keys, to_free
        self._vin = np.zeros((0, tk.N_VIN), dtype=np.int64)  # this tick's planned steps
        self._vkey = np.zeros((0, tk.N_VKEY), dtype=np.uint64)
        self._res = np.zeros((0, vk.N_RES), dtype=np.int64)
        self._ev = np.zeros((0, tk.N_EV), dtype=np.int64)  # guest evictions in the kernel
        self._counts: list[tuple[int, int]] = []  # (reads, writes) drawn per row
        self.batched = 0  # steps the kernel applied (tests)
        self.stops = [0, 0, 0]  # compiled calls by how they ended (END, DECLINED, DECREF)
        self.evictions = 0  # steps whose guest evicted inside the kernel (tests)

    def run(self, mem: HostMemory, vms: Sequence[VirtualMachine], make_room: MakeRoom) -> None:
        """Step every VM of ``vms`` once, in order."""
        plans = [vm.plan_step() for vm in vms]  # counts drawn now: each VM its own stream
        rows = [i for i, p in enumerate(plans) if p is not None]  # row r: VM rows[r]
        if rows:
            self._prepare(mem, [vms[i] for i in rows], [plans[i] for i in rows])
        q = r = 0
        while q < len(vms):
            if plans[q] is None:
                vms[q].run_step(mem, make_room)
                q += 1
                continue
            hi = r  # the rows of this run of planned VMs
            while hi < len(rows) and rows[hi] - rows[r] == hi - r:
                hi += 1
            self._run_rows(mem, [vms[i] for i in rows[r:hi]], r, hi, make_room)
            q, r = rows[hi - 1] + 1, hi

    def _prepare(
        self, mem: HostMemory, vms: Sequence[VirtualMachine], plans: Sequence[SplitPlan]
    ) -> None:
        """The address table (rebuilt only if an array changed), per-step rows, buffers."""
        fr = mem.frames
        arrays = [
            vm_arrays(vm, p, mem.step_buffers(vm.spec.n_pages)[0])
            for vm, p in zip(vms, plans, strict=True)
        ]
        if len(arrays) != len(self._arrays) or not all(
            map(operator.is_, chain.from_iterable(arrays), chain.from_iterable(self._arrays))
        ):
            self._table(vms, arrays)
        if not self._host or self._host[0] is not fr.content:
            n_words = -(-fr.content.shape[1] // 8)
            self._host = (fr.content, vk.word_view(fr.content), word_table(n_words))
        n = len(vms)
        self._vin = vin = np.empty((n, tk.N_VIN), dtype=np.int64)
        self._counts = counts = []
        max_r = max_w = 0
        for i, (vm, p) in enumerate(zip(vms, plans, strict=True)):
            g = vm.guest
            cap = mem.chunk_cap(g.room)
            n_r = p.n_r if p.n_r > 0 and p.len_r > 0 else 0
            n_w = p.n_w if p.n_w > 0 and p.len_w > 0 else 0
            counts.append((n_r, n_w))
            max_r, max_w = max(max_r, n_r), max(max_w, n_w)
            vin[i] = (
                g.n_free, g.swap.n_free, vm.vm_id, cap, p.len_r, n_r, p.len_w, n_w, g.hand,
            )  # fmt: skip
        self._res = np.zeros((n, vk.N_RES), dtype=np.int64)
        self._ev = np.zeros((n, tk.N_EV), dtype=np.int64)
        self._buffers(max_r, max_w)

    def _table(self, vms: Sequence[VirtualMachine], arrays: list[tuple[Any, ...]]) -> None:
        """The address table of ``arrays`` (held from now on, so they stay alive) and the
        VMs' generator entry points."""
        for vm, t in zip(vms, arrays, strict=True):
            for col, (a, dt) in enumerate(zip(t, DTYPES, strict=False)):
                if (
                    a.dtype != dt
                    or a.ndim != (2 if col == tk.A_GS_CONTENT else 1)
                    or not (a.flags.c_contiguous and a.flags.aligned)
                ):
                    raise InvariantError(
                        f"{vm.name}: an array of dtype {a.dtype} cannot be batched"
                    )
        self._arrays = arrays
        self._addr = np.array([[a.ctypes.data for a in t[: tk.N_ARR]] for t in arrays], np.int64)
        self._alen = np.array([[len(a) for a in t[: tk.N_ARR]] for t in arrays], np.int64)
        keys = [rng_pointers(t[-1]) for t in arrays]
        self._vkey = np.array(keys, dtype=np.uint64).reshape(len(vms), tk.N_VKEY)

    def _run_rows(
        self, mem: HostMemory, vms: Sequence[VirtualMachine], lo: int, hi: int, make_room: MakeRoom
    ) -> None:
        """Rows ``lo .. hi-1`` (the VMs ``vms``, consecutive in the host's order)."""
        fr, sw = mem.frames, mem.swap
        reads, writes, wkeys, to_free = self._bufs
        content, words, table = self._host
        res, ev, counts, base = self._res, self._ev, self._counts, lo
        while lo < hi:
            # Guest free counts in the rows are current: only a VM's own step changes them.
            q, how = tk.run_steps(
                lo, hi, self._vin, self._vkey, self._addr, self._alen,
                content, words, fr.refcount, fr.owner_vm, fr.owner_ppn, fr.free_stack,
                fr.n_free, sw.content, sw.used, sw.free_stack, sw.n_free, sw.tier, mem.zero,
                table,
                reads, writes, wkeys, to_free, res, ev,
            )  # fmt: skip
            self.stops[how] += 1
            done = q + 1 if how == tk.DECREF else q
            for i in range(lo, done):
                vm = vms[i - base]
                vm.steps += 1
                vm.tick.accesses += counts[i][0] + counts[i][1]
                if ev[i, tk.EV_DONE]:
                    self._absorb_eviction(vm, ev[i].tolist())
                vm.absorb(mem, res[i].tolist(), to_free)
            if mem.zip_mode:
                mem.settle_zip()  # decompressions: the caches shrink (after all rows)
            self.batched += done - lo
            if how == tk.DECLINED:  # drawn, not applied: the one-VM path takes it as is
                n_r, n_w = counts[q]
                acc = Accesses(reads[:n_r].copy(), writes[:n_w].copy(), wkeys[:n_w].copy())
                vm = vms[q - base]
                vm.steps += 1
                evicted = bool(ev[q, tk.EV_DONE])
                if evicted:
                    self._absorb_eviction(vm, ev[q].tolist())
                vm.apply(mem, make_room, acc, evicted=evicted)
                done = q + 1
            lo = done

    def _absorb_eviction(self, vm: VirtualMachine, e: list[int]) -> None:
        """Take in a guest eviction the kernel made for ``vm``'s step (row of ``ev``)."""
        vm.guest.hand = e[tk.EV_HAND]
        vm.absorb_eviction(
            bool(e[tk.EV_BALLOONED]),
            e[tk.EV_G_FREE], e[tk.EV_GS_FREE], e[tk.EV_SWAPPED], e[tk.EV_VMM_IN],
            e[tk.EV_IN_CACHE], e[tk.EV_IN_ZIP],
        )  # fmt: skip
        self.evictions += 1

    def _buffers(self, n_r: int, n_w: int) -> None:
        """Room for ``n_r`` reads and ``n_w`` writes (the buffers only grow, doubling)."""
        reads, writes, _, _ = self._bufs
        if len(reads) < n_r or len(writes) < n_w:
            n_r, n_w = max(n_r, len(reads)), max(n_w, len(writes))
            reads, writes = np.empty(2 * n_r, np.int64), np.empty(2 * n_w, np.int64)
            wkeys, to_free = np.empty(2 * n_w, np.uint64), np.empty(2 * (n_r + n_w), np.int32)
            self._bufs = (reads, writes, wkeys, to_free)
