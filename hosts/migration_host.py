"""The host side of pre-copy live migration: what a source and a destination host do.

Scope: plain functions over a :class:`hosts.host_manager.HostMemoryManager` (no Ray, no
time).  The coordinator (``cluster/migration.py``) decides when each is called; page
bytes and hashes travel between hosts as numpy arrays.

Protocol of one pre-copy round, per range of guest pages (content-aware transfer):

1. source :func:`collect_pages` -> :class:`PageBatch`: the pages to send (round 0: every
   *allocated* page -- mapped, shared or VMM-swapped, the latter read from the host swap
   store without swapping in; later rounds: pages written, or newly allocated, since the
   last collect) with their xxh3-64 hash and xxh3-128 digest.  Ballooned and untouched
   pages are never sent: the guest knows they hold nothing.  Guest-swapped pages live on
   the guest's swap disk, which travels with the VM state.
2. destination :func:`known_pages` -> mask of pages whose content it already holds: a
   frame in its sharing index (a shared frame, or a hint frame that still hashes to its
   key) in the VM's sharing group whose xxh3-64 *and* xxh3-128 both match.  Their bytes
   are copied into the staging buffer at once, so later changes on the destination
   cannot lose them: they cost a reference on the wire, not a page.
3. source :func:`batch_bytes` for the rest (read ahead while hashing), destination
   :func:`stage` keeps them (as received; gathered once, at attach).

Dirty tracking: a collect clears the ``dirty`` bits of the pages it takes and *sets*
them on every page that is not allocated, so a page that becomes allocated later (a
first touch, a balloon page given back and reused) is sent in the next round.  So
"allocated and clean" always means "the staged copy is current".  (A page released and
re-backed *without a write* between two collects would escape this; in the guest model
released pages are only ever re-backed through a write, which sets ``dirty``.)

Stop-and-copy: source :func:`detach_for_migration` returns the still-dirty pages' bytes,
the VM's state without its map (:func:`hosts.snapshot.vm_state`), its allocated and
ballooned pages, and releases everything the VM held on the source; destination
:func:`attach_migrated` restores it and installs every staged page -- onto an existing
shared frame of its group when the bytes are equal (real byte compare), else a private
frame -- and pauses it for the downtime.

Admission (:func:`can_accept`, pure core :func:`admission_reason`): the destination's free
frames above its HIGH-state reserve must hold the VM's allocated pages + overhead, and
its committed memory (max + overhead of its VMs, incoming ones included) must leave room
for the VM's within memory + swap.

Not covered: rounds, bandwidth, downtime and policy (``cluster/migration.py``).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xxhash

from hosts import page_state as ps
from hosts.free_memory import reclaim_goal_pages
from hosts.host_manager import HostMemoryManager
from hosts.page_sharing import hash_page
from hosts.phys_map import PhysMap
from hosts.snapshot import restore_vm, vm_state
from hosts.specs import VMSpec

_MIG = "mig."  # array-name prefix of the migration payload (vs the VM state arrays)


@dataclass(frozen=True)
class PageBatch:
    """Pages a source offers in one round: guest page numbers and content hashes."""

    ppns: np.ndarray  # int64[n]
    h64: np.ndarray  # uint64[n], xxh3-64
    h128: np.ndarray  # uint64[n, 2], xxh3-128
    lo: int = 0  # first guest page of the range it was collected from

    def __len__(self) -> int:
        return len(self.ppns)


@dataclass
class Incoming:
    """Staging of a VM arriving on this host: the latest bytes of every page sent.

    Arrays arrive whole and are kept as they are (on Ray: read-only views of the object
    store, no copy); ``chunk[ppn]``/``row[ppn]`` say where a page's latest bytes are (-1:
    never staged).  They are gathered once, at attach.
    """

    spec: VMSpec
    allocated: int  # pages reserved at admission
    chunk: np.ndarray  # int32[n_pages]
    row: np.ndarray  # int32[n_pages]
    chunks: list[np.ndarray] = field(default_factory=list)

    def put(self, ppns: np.ndarray, data: np.ndarray) -> None:
        if not len(ppns):
            return
        self.chunk[ppns] = len(self.chunks)
        self.row[ppns] = np.arange(len(ppns), dtype=np.int32)
        self.chunks.append(data)

    def get(self, ppns: np.ndarray, content_bytes: int) -> np.ndarray:
        """Latest staged bytes of ``ppns`` (all must have been staged)."""
        out = np.empty((len(ppns), content_bytes), dtype=np.uint8)
        cid = self.chunk[ppns]
        if (cid < 0).any():
            raise RuntimeError(f"{self.spec.name}: pages never sent: {ppns[cid < 0][:5]}")
        order = np.argsort(cid, kind="stable")
        bounds = np.flatnonzero(np.diff(cid[order])) + 1
        for sel in np.split(order, bounds) if len(order) else []:
            out[sel] = self.chunks[int(cid[sel[0]])][self.row[ppns[sel]]]
        return out


# ---------------------------------------------------------------------------- hashing
def hashes(rows: np.ndarray | list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """xxh3-64 (uint64[n]) and xxh3-128 (uint64[n, 2]) of page rows: a contiguous
    ``uint8[n, content_bytes]`` array or a list of row views (numpy row views are far
    cheaper to make than memoryview slices, and ``map`` runs no bytecode per row)."""
    views = list(rows)  # row views, made once for both hashes
    h64 = np.fromiter(map(hash_page, views), dtype=np.uint64, count=len(views))
    d = b"".join(map(_h128, views))
    h128 = np.frombuffer(d, dtype="<u8").astype(np.uint64).reshape(len(views), 2)
    return h64, h128


_h128 = xxhash.xxh3_128_digest


def _allocated(pmap: PhysMap, lo: int = 0, hi: int | None = None) -> np.ndarray:
    st = pmap.state[lo:hi]
    return (st == ps.MAPPED) | (st == ps.SHARED) | (st == ps.VMM_SWAPPED)


# ---------------------------------------------------------------------------- source
def page_counts(host: HostMemoryManager) -> dict[str, Any]:
    """Per VM (name order): resident, allocated and allocated-and-dirty page counts."""
    vms = [host.vms[n] for n in host.order]
    alloc = [_allocated(v.pmap) for v in vms]
    return {
        "vms": list(host.order),
        "resident": np.array([v.resident for v in vms], dtype=np.int64),
        "allocated": np.array([int(a.sum()) for a in alloc], dtype=np.int64),
        "dirty": np.array(
            [int(np.count_nonzero(a & v.pmap.dirty)) for a, v in zip(alloc, vms, strict=True)],
            dtype=np.int64,
        ),
    }


def allocated_pages(host: HostMemoryManager, name: str) -> int:
    return host.vms[name].pmap.allocated


def collect_pages(
    host: HostMemoryManager, name: str, first_round: bool, lo: int = 0, hi: int | None = None
) -> PageBatch:
    """Pages of guest-page range ``[lo, hi)`` to send this round (see module docstring).

    Their bytes are read into one array by a helper thread (a numpy gather runs without
    the GIL) while they are hashed from where they live; the array is kept for
    :func:`batch_bytes` in the same round."""
    vm = host.vms[name]
    pm = vm.pmap
    alloc = _allocated(pm, lo, hi)
    dirty = pm.dirty[lo:hi]  # a view: updated in place
    sel = alloc if first_round else alloc & dirty
    ppns = np.flatnonzero(sel).astype(np.int64) + lo
    dirty[sel] = False
    dirty[~alloc] = True
    data = np.empty((len(ppns), host.sim.content_bytes), dtype=np.uint8)
    ahead = _reader().submit(_read_into, host, vm.vm_id, ppns, data)
    h64, h128 = hashes(_page_rows(host, pm, ppns))
    ahead.result()
    host.outgoing[(name, lo)] = (ppns, data)
    return PageBatch(ppns, h64, h128, lo)


def _page_rows(host: HostMemoryManager, pm: PhysMap, ppns: np.ndarray) -> list[np.ndarray]:
    """Row views of the current bytes of allocated pages (frames or host swap store)."""
    st, loc = pm.state[ppns], pm.loc[ppns].tolist()
    frames, swap = host.mem.frames.content, host.mem.swap.content
    if not (st == ps.VMM_SWAPPED).any():
        return list(map(frames.__getitem__, loc))
    return [
        (swap if s == ps.VMM_SWAPPED else frames)[x] for s, x in zip(st.tolist(), loc, strict=True)
    ]


def _read_into(host: HostMemoryManager, vm_id: int, ppns: np.ndarray, out: np.ndarray) -> None:
    pm = host.mem.vms[vm_id].pmap
    st = pm.state[ppns]
    if ((st == ps.MAPPED) | (st == ps.SHARED)).all():  # the usual case: one gather
        # mode="clip": an unbuffered take (the indices are valid frame numbers)
        np.take(host.mem.frames.content, pm.loc[ppns], axis=0, out=out, mode="clip")
    else:
        out[:] = host.mem.read_bytes(vm_id, ppns)


def page_bytes(host: HostMemoryManager, name: str, ppns: np.ndarray) -> np.ndarray:
    """``uint8[n, content_bytes]``: current bytes of allocated pages (no side effects)."""
    vm = host.vms[name]
    ppns = np.asarray(ppns, dtype=np.int64)
    st = vm.pmap.state[ppns]
    if ((st == ps.MAPPED) | (st == ps.SHARED)).all():  # the usual case: one gather
        return np.take(host.mem.frames.content, vm.pmap.loc[ppns], axis=0)
    return host.mem.read_bytes(vm.vm_id, ppns)


def batch_bytes(
    host: HostMemoryManager, name: str, batch: PageBatch, known: np.ndarray
) -> np.ndarray:
    """Bytes of the pages of ``batch`` the destination does not hold: those read ahead by
    :func:`collect_pages` (the VM has not run since -- a round's calls all come before
    its ticks), else read now."""
    got = host.outgoing.pop((name, batch.lo), None)
    if got is not None and np.array_equal(got[0], batch.ppns):
        return got[1][~known] if known.any() else got[1]
    return page_bytes(host, name, batch.ppns[~known])


_READER: list[ThreadPoolExecutor] = []


def _reader() -> ThreadPoolExecutor:
    """One helper thread per process, for numpy gathers (they release the GIL)."""
    if not _READER:
        _READER.append(ThreadPoolExecutor(max_workers=1, thread_name_prefix="page-reader"))
    return _READER[0]


def detach_for_migration(
    host: HostMemoryManager, name: str
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Stop-and-copy on the source: the VM's last dirty pages and state; then release
    every page, frame reference and swap slot it held here and detach it."""
    vm = host.vms[name]
    pm = vm.pmap
    alloc = _allocated(pm)
    final = np.flatnonzero(alloc & pm.dirty).astype(np.int64)
    arrays, meta = vm_state(vm, with_map=False)
    arrays = dict(arrays)
    arrays[_MIG + "final_ppns"] = final
    arrays[_MIG + "final_data"] = host.mem.read_bytes(vm.vm_id, final)
    arrays[_MIG + "alloc_ppns"] = np.flatnonzero(alloc).astype(np.int64)
    arrays[_MIG + "ballooned"] = np.flatnonzero(pm.state == ps.BALLOONED).astype(np.int64)
    held = np.flatnonzero(pm.state != ps.UNTOUCHED).astype(np.int64)
    for key in [k for k in host.outgoing if k[0] == name]:
        del host.outgoing[key]
    host.mem.release(vm.vm_id, held, ps.UNTOUCHED)
    host.detach(name)
    return arrays, meta


# ---------------------------------------------------------------------------- admission
def admission_reason(
    *,
    free_pages: int,
    reserve_pages: int,
    need_pages: int,
    committed_pages: int,
    capacity_pages: int,
    vm_commit_pages: int,
) -> str | None:
    """None if a host can take a VM, else why not (pure: also used by cluster policy)."""
    room = free_pages - reserve_pages
    if need_pages > room:
        return (
            f"not enough free memory: needs {need_pages} pages (allocated + overhead), "
            f"{max(room, 0)} free above the high-state reserve"
        )
    if committed_pages + vm_commit_pages > capacity_pages:
        return (
            f"overcommitted: committed {committed_pages} + {vm_commit_pages} pages "
            f"(max + overhead) > memory + swap {capacity_pages} pages"
        )
    return None


def can_accept(host: HostMemoryManager, spec: VMSpec, allocated_pages: int) -> str | None:
    """Admission of a VM with ``allocated_pages`` on this host (VMs arriving included)."""
    if spec.name in host.vms or spec.name in host.incoming:
        return f"{spec.name} is already on {host.name}"
    incoming = list(host.incoming.values())
    committed = sum(v.spec.max_resident + v.overhead_pages for v in host.vms.values())
    committed += sum(i.spec.max_resident + i.spec.overhead_pages for i in incoming)
    n = host.spec.n_frames
    return admission_reason(
        free_pages=host.mem.n_free - sum(i.allocated + i.spec.overhead_pages for i in incoming),
        reserve_pages=reclaim_goal_pages(0, n, host.policy.thresholds),
        need_pages=allocated_pages + spec.overhead_pages,
        committed_pages=committed,
        capacity_pages=n + host.spec.n_swap_slots,
        vm_commit_pages=spec.max_resident + spec.overhead_pages,
    )


def begin_incoming(host: HostMemoryManager, spec: VMSpec, allocated_pages: int) -> None:
    """Create the staging record of an admitted VM."""
    host.incoming[spec.name] = Incoming(
        spec,
        allocated_pages,
        np.full(spec.n_pages, -1, dtype=np.int32),
        np.full(spec.n_pages, -1, dtype=np.int32),
    )


def final_check(host: HostMemoryManager, name: str, allocated_pages: int) -> str | None:
    """Can the VM be installed right now?  (Frames for its pages + overhead, physically.)"""
    inc = host.incoming[name]
    need = allocated_pages + inc.spec.overhead_pages
    if need > host.mem.n_free:
        return f"at stop-and-copy: needs {need} frames, {host.mem.n_free} free"
    return None


def abort_incoming(host: HostMemoryManager, name: str) -> None:
    host.incoming.pop(name, None)


# ---------------------------------------------------------------------------- destination
def known_pages(
    host: HostMemoryManager, name: str, h64: np.ndarray, h128: np.ndarray, ppns: np.ndarray
) -> np.ndarray:
    """Mask: pages whose content this host holds already; their bytes are staged now."""
    inc = host.incoming[name]
    mask = np.zeros(len(h64), dtype=bool)
    gid = host.groups.get(inc.spec.sharing_group)
    if not len(h64) or gid is None:
        return mask
    cand = host.mem.index.find(gid, np.asarray(h64, dtype=np.uint64))
    idx = np.flatnonzero(cand >= 0)
    if not len(idx):
        return mask
    frames = cand[idx]
    rows = host.mem.frames.content[frames]  # a copy: the frames may change later
    f64, f128 = hashes(rows)  # (hints may be stale: their frames are re-hashed)
    good = (f64 == h64[idx]) & (f128 == h128[idx]).all(axis=1)
    mask[idx[good]] = True
    inc.put(ppns[idx[good]], rows[good] if not good.all() else rows)
    return mask


def stage(host: HostMemoryManager, name: str, ppns: np.ndarray, data: np.ndarray) -> None:
    """Store sent page bytes in the staging buffer (later rounds overwrite earlier ones)."""
    host.incoming[name].put(np.asarray(ppns, dtype=np.int64), data)


def attach_migrated(
    host: HostMemoryManager,
    spec: VMSpec,
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
    pause_ticks: float = 0.0,
) -> dict[str, int]:
    """Restore an arriving VM, install its staged pages, pause it ``pause_ticks``."""
    inc = host.incoming.pop(spec.name)
    stage_final = arrays[_MIG + "final_ppns"]
    inc.put(stage_final, arrays[_MIG + "final_data"])
    alloc = arrays[_MIG + "alloc_ppns"]
    data = inc.get(alloc, host.sim.content_bytes)
    state = {k: v for k, v in arrays.items() if not k.startswith(_MIG)}
    vm = restore_vm(spec, host.sim, host.policy, state, meta)
    host.attach(vm)
    shared = _install(host, vm.vm_id, spec.sharing, vm.group_id, alloc, data)
    vm.pmap.set_state(arrays[_MIG + "ballooned"], ps.BALLOONED, -1)
    if pause_ticks > 0:
        host.paused[spec.name] = pause_ticks
    return {"pages_migrated": len(alloc), "final_pages": len(stage_final), "shared": shared}


def _install(
    host: HostMemoryManager,
    vm_id: int,
    sharing: bool,
    group: int,
    ppns: np.ndarray,
    data: np.ndarray,
) -> int:
    """Back ``ppns`` with ``data``: shared frames where equal bytes are shared already."""
    mem = host.mem
    share = np.zeros(len(ppns), dtype=bool)
    frames = np.zeros(0, dtype=np.int64)
    if sharing and len(ppns):
        if mem.index.n_shared_frames():
            h = np.array([hash_page(r) for r in data], dtype=np.uint64)
            cand = mem.index.find_shared(group, h)
            hit = np.flatnonzero(cand >= 0)
            same = (mem.frames.content[cand[hit]] == data[hit]).all(axis=1)  # byte compare
            share[hit[same]] = True
            frames = cand[hit[same]]
    mem.install_shared(vm_id, ppns[share], frames)
    mem.install(vm_id, ppns[~share], data[~share])
    return int(share.sum())
