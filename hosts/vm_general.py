"""The general (numpy) path of a VM step: runtime code, and the kernels' reference.

Scope: what :class:`hosts.vm.VirtualMachine` does when the kernels decline a step (a page
out of range, a ballooned page) -- so this is *runtime* code, not only an oracle -- and
on every step when ``fast_path`` is off: deduplication (:func:`dedup`) and one chunk of
accesses through guest and VMM (:func:`apply_chunk`), in plain numpy array operations.
The compiled path (:mod:`hosts.vm_kernel`) reproduces these bit for bit, which the
tests check by running twin hosts side by side.  The guest's paging-out has a kernel only
(:mod:`hosts.guest_os_kernel`); its numpy oracle is ``tests/oracles/guest_evict.py``.

Not covered: choosing guest victims (:meth:`hosts.guest_os.GuestOS.choose_victims`), the
VMM's own operations (:mod:`hosts.host_memory`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from vmmsim.hosts import guest_os as gos
from vmmsim.hosts.host_memory import HostMemory
from vmmsim.workloads.content import page_bytes


class VirtualMachine(Protocol):
    """What the general path uses of :class:`hosts.vm.VirtualMachine` (a protocol, so
    this module does not import the module that calls it)."""

    vm_id: int
    guest: Any  # hosts.guest_os.GuestOS
    pmap: Any  # hosts.phys_map.PhysMap
    sampler: Any  # hosts.working_set.WorkingSetSampler
    layout: Any  # workloads.images.BootLayout
    sim: Any  # hosts.specs.SimParams
    tick: Any  # hosts.vm.TickCounters
    stats: Any  # hosts.vm.VMStats

    def make_guest_room(self, mem: HostMemory, rd: np.ndarray, wr: np.ndarray) -> None: ...

    def image_keys_of(self, vpns: np.ndarray) -> np.ndarray: ...


#: ``make_room(frames_needed, vm)``: the host frees frames (:data:`hosts.vm.MakeRoom`).
MakeRoom = Callable[[int, Any], None]

_EMPTY = np.zeros(0, dtype=np.int64)


def apply_chunk(
    vm: VirtualMachine,
    mem: HostMemory,
    make_room: MakeRoom,
    rd: np.ndarray,
    wr: np.ndarray,
    keys: np.ndarray,
    evicted: bool = False,
) -> None:
    """The general path of :meth:`VirtualMachine._apply_chunk` (numpy; any guest or host
    state): sorted, disjoint reads ``rd`` and writes ``wr`` (keys ``keys``).

    ``evicted``: :meth:`VirtualMachine.make_guest_room` already ran for this chunk (not again).
    """
    g, c = vm.guest, vm.tick
    cb = vm.sim.content_bytes
    if not evicted:
        vm.make_guest_room(mem, rd, wr)
    r_res = g.vstate[rd] == gos.RESIDENT
    w_res = g.vstate[wr] == gos.RESIDENT
    miss_r, miss_w = rd[~r_res], wr[~w_res]
    restore_v, restore_d = _EMPTY, np.zeros((0, cb), np.uint8)
    if len(miss_r) or len(miss_w):
        vr, vw = g.vstate[miss_r], g.vstate[miss_w]
        r_sw, r_dr, r_nv = (miss_r[vr == s] for s in (gos.SWAPPED, gos.DROPPED, gos.NEVER))
        w_sw = miss_w[vw == gos.SWAPPED]
        w_disk = int(np.count_nonzero((vw == gos.SWAPPED) | (vw == gos.DROPPED)))
        sw_data = g.swap.take(g.slots_of(r_sw))
        g.swap.take(g.slots_of(w_sw))  # overwritten whole: the slot is just freed
        g.v2p[r_sw] = -1
        g.v2p[w_sw] = -1
        g.clean[r_nv] = False
        g.clean[r_sw] = False
        g.clean[r_dr] = True
        disk = len(r_sw) + len(r_dr) + w_disk
        c.disk += disk
        c.guest_swapins += disk
        c.minor += len(r_nv) + int(np.count_nonzero(vw == gos.NEVER))
        miss = np.concatenate([miss_r, miss_w])
        g.map(miss, g.alloc(len(miss)))
        # Contents the guest puts into the new physical pages before a read: its
        # swap/disk copy, or zeros for a first touch.  Pages the step writes need no
        # restore (writes replace whole pages).
        restore_v = np.concatenate([r_sw, r_dr, r_nv])
        dr_data = page_bytes(vm.image_keys_of(r_dr), cb)
        restore_d = np.concatenate([sw_data, dr_data, np.zeros((len(r_nv), cb), np.uint8)])
        rd = rd[r_res]
    wv = np.concatenate([restore_v, wr])
    data = np.concatenate([restore_d, page_bytes(keys, cb)])
    r_ppn = g.v2p[rd].astype(np.int64)
    w_ppn = g.v2p[wv].astype(np.int64)
    need = mem.frames_needed(vm.vm_id, r_ppn, w_ppn)
    while need > mem.n_free:
        # make_room may VMM-swap pages of this very batch, which then need a frame
        # back: count again (each such page is swapped at most once, so this ends).
        make_room(need - mem.n_free, vm)
        need = mem.frames_needed(vm.vm_id, r_ppn, w_ppn)
    fr = mem.read(vm.vm_id, r_ppn)
    fw = mem.write(vm.vm_id, w_ppn, data)
    c.minor += fr.first_touch + fw.first_touch + fw.cow
    c.cow += fw.cow
    c.vmm_swapins += fr.vmm_swapin + fw.vmm_swapin
    c.disk += fr.vmm_swapin + fw.vmm_swapin
    c.cache_swapins += fr.cache_in + fw.cache_in
    c.decompressions += fr.zip_in + fw.zip_in
    all_ppn = np.concatenate([r_ppn, w_ppn])
    hits = vm.sampler.on_access(vm.pmap.bits, all_ppn)
    c.minor += hits
    c.sample += hits
    c.first_touch += fr.first_touch + fw.first_touch
    g.pref[all_ppn] = True
    if len(wr):
        img = wr < vm.layout.n_image
        cl = np.zeros(len(wr), dtype=bool)
        if img.any():
            cl[img] = vm.image_keys_of(wr[img]) == keys[img]
        g.clean[wr] = cl


def dedup(
    reads: np.ndarray, wr: np.ndarray, keys: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The general path's deduplication: sorting for a few accesses, else boolean masks
    over the guest's ``n`` pages (O(pages + accesses))."""
    if (len(reads) + len(wr)) * 8 < n:
        return _dedup_sorted(reads, wr, keys)
    wmask = np.zeros(n, dtype=bool)
    if len(wr):
        last = np.full(n, -1, dtype=np.int64)
        np.maximum.at(last, wr, np.arange(len(wr), dtype=np.int64))
        wr = np.flatnonzero(last >= 0)
        keys = keys[last[wr]]
        wmask[wr] = True
    rmask = np.zeros(n, dtype=bool)
    rmask[reads] = True
    rmask &= ~wmask
    return np.flatnonzero(rmask), wr, keys


def _dedup_sorted(
    reads: np.ndarray, writes: np.ndarray, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique reads and writes (the last write to a page wins; a page both read
    and written is a write) by sorting -- cheaper than page masks for a few accesses."""
    if len(writes):
        order = np.argsort(writes, kind="stable")
        ws = writes[order]
        last = np.ones(len(ws), dtype=bool)
        last[:-1] = ws[1:] != ws[:-1]  # the last of each run of equal pages
        writes, keys = ws[last], keys[order][last]
    rs = np.sort(reads)
    if len(rs):
        first = np.ones(len(rs), dtype=bool)
        first[1:] = rs[1:] != rs[:-1]
        rs = rs[first]
        if len(writes):
            at = np.minimum(np.searchsorted(writes, rs), len(writes) - 1)
            rs = rs[writes[at] != rs]
    return rs, writes, keys
