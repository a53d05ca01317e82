"""The host side of pre-copy live migration: what a source and a destination host do.

Scope: plain functions over a :class:`hosts.host_manager.HostMemoryManager` (no Ray, no
time).  The coordinator (``cluster/migration.py``) decides when each is called; page
bytes and hashes travel between hosts as numpy arrays.

Protocol of one pre-copy round, per range of guest pages (content-aware transfer; four
calls, alternating source and destination):

1. source :func:`collect_pages` -> :class:`PageBatch`: the pages to send (round 0: every
   *allocated* page -- mapped, shared or VMM-swapped, the latter read from the host swap
   store without swapping in; later rounds: pages written, or newly allocated, since the
   last collect) with their xxh3-64 hash.  Ballooned and untouched pages are never sent:
   the guest knows they hold nothing.  Guest-swapped pages live on the guest's swap disk,
   which travels with the VM state.  One compiled pass reads the pages into one
   contiguous array, kept for step 3, and hashes each from its copy.
2. destination :func:`known_pages` -> :class:`Offer`: the pages whose hash finds a frame
   in its sharing index (a shared frame, or a hint frame that still hashes to its key) in
   the VM's sharing group, with the *strong digest* of those frames
   (:mod:`hosts.migration_host_kernel`: two differently seeded xxh3-64, 128 bits).  Their
   bytes are copied aside at once, so later changes on the destination cannot lose them.
3. source :func:`ship_pages` -> :class:`Shipment`: the offered pages whose strong digest
   equals its own (computed for offered pages only) go as references; the bytes of all
   the others, as one array (no copy when nothing is a reference).
4. destination :func:`stage` keeps the referenced pages' copies and the bytes as
   received (gathered once, at attach).

Dirty tracking (the :data:`hosts.phys_map.DIRTY` bit of ``PhysMap.bits``): a collect
clears the dirty bits of the pages it takes and *sets* them on every page that is not
allocated, so a page that becomes allocated later (a first touch, a balloon page given
back and reused) is sent in the next round.  So "allocated and clean" always means "the
staged copy is current".  (A page released and re-backed *without a write* between two
collects would escape this; in the guest model released pages are only ever re-backed
through a write, which sets the dirty bit.)

Stop-and-copy: source :func:`detach_for_migration` returns the still-dirty pages' bytes,
the VM's state without its map (:func:`hosts.snapshot.vm_state`), its allocated and
ballooned pages, and releases everything the VM held on the source; destination
:func:`attach_migrated` restores it and installs every staged page -- onto an existing
shared frame of its group when the bytes are equal (real byte compare), else a private
frame -- and pauses it for the downtime.

Large pages (``policy.large_pages``): the destination backs the VM with large pages again,
as ESX allocates guest memory at the destination as it does at power-on: every 2 MB
region without a ballooned page is an intact large page again (not if the destination
is in the break state or beyond: 4 KB pages then), its pages installed as private frames
(never onto shared ones), the rest of it backed at the next tick
(:meth:`hosts.host_manager.HostMemoryManager.back_large_pages`).  What broke on the
source does not travel: a large page is a property of the host's backing, not of the
guest.

Admission (:func:`can_accept`, pure core :func:`admission_reason`): the destination's free
frames above its HIGH-state reserve must hold the VM's allocated pages + overhead, and
the destination with the VM (incoming ones included) must pass ESX admission control
(:mod:`hosts.admission`: minimum, pinned and configured size, as for placement).

Not covered: rounds, bandwidth, downtime and policy (``cluster/migration.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from vmmsim.hosts import admission, native
from vmmsim.hosts import migration_host_kernel as mk
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.admission import Claim
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.large_pages import breaks_at
from vmmsim.hosts.phys_map import DIRTY, PhysMap, clear, flag
from vmmsim.hosts.snapshot import restore_vm, vm_state
from vmmsim.hosts.specs import VMSpec

_MIG = "mig."  # array-name prefix of the migration payload (vs the VM state arrays)


@dataclass(frozen=True)
class PageBatch:
    """Pages a source sends in one round's range: guest page numbers and xxh3-64 hashes."""

    ppns: np.ndarray  # int64[n]
    h64: np.ndarray  # uint64[n], xxh3-64
    lo: int = 0  # first guest page of the range it was collected from

    def __len__(self) -> int:
        return len(self.ppns)


@dataclass(frozen=True)
class Offer:
    """Destination -> source: positions in a :class:`PageBatch` of pages whose hash the
    destination holds a frame for, and the strong digests of those frames."""

    pos: np.ndarray  # int64[k], ascending
    strong: np.ndarray  # uint64[k, 2]


@dataclass(frozen=True)
class Shipment:
    """Source -> destination: positions in the batch sent as references (a subset of the
    offer's), and the bytes of every other page of the batch, in batch order."""

    refs: np.ndarray  # int64[r], ascending
    data: np.ndarray  # uint8[n - r, content_bytes]


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
    #: range start -> (offered batch positions, copies of the frames offered)
    offered: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

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


def _allocated(pmap: PhysMap, lo: int = 0, hi: int | None = None) -> np.ndarray:
    st = pmap.state[lo:hi]
    return (st == ps.MAPPED) | (st == ps.SHARED) | (st == ps.VMM_SWAPPED)


class SendBuffers:
    """Reusable arrays a source reads pages into (the page faults of a fresh array cost
    about half as much as the gather into it).

    Only for transports that copy a call's result before the host's next call runs (Ray:
    into the object store): a buffer is given back when its shipment is returned, and
    refilled by a later collect.  The in-process pool hands arrays over as they are and
    must not use this.  Keeps at most ``keep`` free buffers.
    """

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep
        self.free: list[np.ndarray] = []  # flat uint8 arrays

    def take(self, n: int, width: int) -> np.ndarray:
        """A C-contiguous ``uint8[n, width]`` (contents undefined).  New buffers get 1/8
        spare room, as a round's ranges hold slightly different numbers of pages."""
        need = n * width
        fits = [b for b in self.free if len(b) >= need]
        if fits:
            base = min(fits, key=len)
            self.free = [b for b in self.free if b is not base]
        else:
            base = np.empty(need + need // 8, dtype=np.uint8)
        return base[:need].reshape(n, width)

    def give(self, arr: np.ndarray) -> None:
        """Take back an array from :meth:`take` (keeping the largest ``keep``)."""
        base = arr.base if arr.base is not None else arr
        if isinstance(base, np.ndarray) and base.ndim == 1 and base.dtype == np.uint8:
            self.free = sorted([*self.free, base], key=len, reverse=True)[: self.keep]

    def clear(self) -> None:
        self.free.clear()


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
    host: HostMemoryManager,
    name: str,
    first_round: bool,
    lo: int = 0,
    hi: int | None = None,
    buffers: SendBuffers | None = None,
) -> PageBatch:
    """Pages of guest-page range ``[lo, hi)`` to send this round (see module docstring).

    Their bytes are read into one array (from ``buffers`` if given) and hashed in the
    same compiled pass; the array is kept for :func:`ship_pages` in the same round."""
    vm = host.vms[name]
    pm = vm.pmap
    alloc = _allocated(pm, lo, hi)
    bits = pm.bits[lo:hi]  # a view: updated in place
    sel = alloc if first_round else alloc & flag(bits, DIRTY)
    ppns = np.flatnonzero(sel).astype(np.int64) + lo
    clear(bits, DIRTY, sel)
    bits[~alloc] |= np.uint8(DIRTY)
    out = None if buffers is None else buffers.take(len(ppns), host.sim.content_bytes)
    data, h64 = _gather(host, pm, ppns, out)
    host.outgoing[(name, lo)] = (ppns, data)
    return PageBatch(ppns, h64, lo)


def _gather(
    host: HostMemoryManager, pm: PhysMap, ppns: np.ndarray, out: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bytes (one contiguous array, ``out`` if given) and xxh3-64 of allocated pages, from
    the frame table or the host swap store."""
    st = pm.state[ppns]
    if ((st == ps.BALLOONED) | (st == ps.UNTOUCHED)).any():
        raise ValueError("migration reads only allocated pages")
    mem = host.mem
    swapped = st == ps.VMM_SWAPPED
    return mk.gather_hash(mem.frames.content, mem.swap.content, pm.loc[ppns], swapped, out)


def page_bytes(host: HostMemoryManager, name: str, ppns: np.ndarray) -> np.ndarray:
    """``uint8[n, content_bytes]``: current bytes of allocated pages (no side effects)."""
    return _gather(host, host.vms[name].pmap, np.asarray(ppns, dtype=np.int64))[0]


def ship_pages(
    host: HostMemoryManager,
    name: str,
    batch: PageBatch,
    offer: Offer,
    buffers: SendBuffers | None = None,
) -> Shipment:
    """The pages of ``batch`` the destination offered and whose strong digests equal ours
    go as references, the others' bytes as one array: those read by :func:`collect_pages`
    (the VM has not run since -- a round's calls all come before its ticks), else read
    now.  The array read goes back to ``buffers`` (the caller copies the result before
    the next collect)."""
    got = host.outgoing.pop((name, batch.lo), None)
    if got is None or not np.array_equal(got[0], batch.ppns):
        got = (batch.ppns, page_bytes(host, name, batch.ppns))
    data = got[1]
    if buffers is not None:
        buffers.give(data)
    refs = offer.pos[(mk.strong_digest(data, offer.pos) == offer.strong).all(axis=1)]
    if not len(refs):
        return Shipment(refs, data)  # the usual case: the array as read, no copy
    send = np.ones(len(data), dtype=bool)
    send[refs] = False
    return Shipment(refs, data[send])


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
    host: Claim,
    vm: Claim,
    memory_pages: int,
    swap_pages: int,
) -> str | None:
    """None if a host can take a VM, else why not (pure: also used by cluster policy).

    ``host``: the summed claims of the VMs on (and arriving at) the host; ``vm``: the
    arriving VM's (pages).  Dynamic part: its allocated pages + overhead must fit in the
    free frames above the HIGH-state reserve.  Static part: ESX admission control of
    the host with the VM (:func:`hosts.admission.check`)."""
    room = free_pages - reserve_pages
    if need_pages > room:
        return (
            f"not enough free memory: needs {need_pages} pages (allocated + overhead), "
            f"{max(room, 0)} free above the high-state reserve"
        )
    refused = admission.check(host + vm, memory=memory_pages, swap=swap_pages)
    if refused is not None:
        return refused.message("the host's VMs with this one", unit="pages", keys=False)
    return None


def vm_claim(spec: VMSpec) -> Claim:
    """A VM's admission claim in pages (:mod:`hosts.admission`): its configured size
    (``n_pages``, not ``max_resident``) counts against memory + swap."""
    return admission.claim(
        min=spec.min_pages,
        pinned=spec.pinned_pages,
        size=spec.n_pages,
        overhead=spec.overhead_pages,
    )


def can_accept(host: HostMemoryManager, spec: VMSpec, allocated_pages: int) -> str | None:
    """Admission of a VM with ``allocated_pages`` on this host (VMs arriving included)."""
    if spec.name in host.vms or spec.name in host.incoming:
        return f"{spec.name} is already on {host.name}"
    incoming = list(host.incoming.values())
    claims = admission.totals(
        [vm_claim(v.spec) for v in host.vms.values()] + [vm_claim(i.spec) for i in incoming]
    )
    n = host.spec.n_frames
    return admission_reason(
        free_pages=host.mem.n_free - sum(i.allocated + i.spec.overhead_pages for i in incoming),
        reserve_pages=host.thresholds.goal_pages(0, n),
        need_pages=allocated_pages + spec.overhead_pages,
        host=claims,
        vm=vm_claim(spec),
        memory_pages=n,
        swap_pages=host.spec.n_swap_slots,
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
def known_pages(host: HostMemoryManager, name: str, batch: PageBatch) -> Offer:
    """Pages of ``batch`` whose hash finds a frame of the VM's group here that still hashes
    to it, with those frames' strong digests; copies of the frames are kept for
    :func:`stage`."""
    inc = host.incoming[name]
    gid = host.groups.get(inc.spec.sharing_group)
    pos = frames = np.zeros(0, dtype=np.int64)
    if len(batch) and gid is not None:
        cand = host.mem.index.find(gid, np.ascontiguousarray(batch.h64, dtype=np.uint64))
        pos = np.flatnonzero(cand >= 0).astype(np.int64)
        frames = cand[pos]
    # a copy: the frames may change later; hints may be stale, so the copies are re-hashed
    rows, h64, strong = mk.gather_hash_strong(host.mem.frames.content, frames)
    good = h64 == batch.h64[pos]
    if not good.all():
        pos, rows, strong = pos[good], rows[good], strong[good]
    inc.offered[batch.lo] = (pos, rows)
    return Offer(pos, strong)


def stage(
    host: HostMemoryManager, name: str, batch: PageBatch, shipment: Shipment
) -> tuple[int, int]:
    """Keep a range's pages: the copies of the referenced frames and the bytes sent (as
    received; later rounds overwrite earlier ones).  Returns (pages sent as bytes, pages
    sent as references)."""
    inc = host.incoming[name]
    pos, rows = inc.offered.pop(batch.lo, (np.zeros(0, dtype=np.int64), None))
    refs = shipment.refs
    sent = np.ones(len(batch), dtype=bool)
    if len(refs):
        at = np.searchsorted(pos, refs)
        if not ((at < len(pos)).all() and np.array_equal(pos[at], refs)):
            raise RuntimeError(f"{name}: a reference to a page that was not offered")
        inc.put(batch.ppns[refs], rows[at])
        sent[refs] = False
    ppns = batch.ppns[sent] if len(refs) else batch.ppns
    if len(ppns) != len(shipment.data):
        raise RuntimeError(f"{name}: {len(shipment.data)} pages of bytes for {len(ppns)} pages")
    inc.put(ppns, shipment.data)
    return len(ppns), len(refs)


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
    ballooned = arrays[_MIG + "ballooned"]
    lp = vm.pmap.large
    if lp is not None:  # large pages again, but none holding a ballooned page
        small = lp.regions_of(ballooned)
        if breaks_at(host.mstate, host.policy.large_page_break_state):
            small = np.flatnonzero(lp.intact)
        lp.mark_broken(small)
    shared = _install(host, vm.vm_id, spec.sharing, vm.group_id, alloc, data, lp)
    vm.pmap.set_state(ballooned, ps.BALLOONED, -1)
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
    large: Any = None,
) -> int:
    """Back ``ppns`` with ``data``: shared frames where equal bytes are shared already
    (never inside an intact large page of ``large``, a :class:`LargePages`)."""
    mem = host.mem
    share = np.zeros(len(ppns), dtype=bool)
    frames = np.zeros(0, dtype=np.int64)
    if large is not None and len(ppns) and large.in_intact(ppns).all():
        sharing = False
    # (On a KSM host pages arrive private: KSM merges them when it scans them.)
    if sharing and len(ppns) and host.ksm is None:
        if mem.index.n_shared_frames():
            h = native.hash_pages(data, np.arange(len(data), dtype=np.int64))
            cand = mem.index.find_shared(group, h)
            if large is not None:
                cand[large.in_intact(ppns)] = -1
            hit = np.flatnonzero(cand >= 0)
            same = mk.rows_equal(mem.frames.content, cand[hit], data, hit)  # byte compare
            share[hit[same]] = True
            frames = cand[hit[same]]
    mem.install_shared(vm_id, ppns[share], frames)
    mem.install(vm_id, ppns[~share], data[~share])
    return int(share.sum())
