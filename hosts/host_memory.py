"""Page-level mechanism of one host: frames, swap, sharing index and the VMs' maps.

Scope: every operation that changes which frame or swap slot backs a guest page --
first touch, copy-on-write, VMM swap out/in (sharing tried first: :meth:`page_out`),
releasing pages to the balloon, the page sharing scan, installing migrated pages -- each
vectorised over a batch of guest pages, the host frames the sharing index itself takes
(:meth:`charge_index`), and ``check_invariants()`` over all of it.  Callers pass *unique*
guest page numbers.

Large pages (:mod:`hosts.large_pages`, a VM whose ``pmap.large`` is set): the scan never
shares a page of an intact large page; VMM swapping and ballooning a page break its large
page first (:meth:`break_large`, which runs the sharing scan over the broken page's
other pages at once: ESX kept their hashes); :meth:`back_large` backs the rest of a large
page at its first touch; pages discarded by free page reporting (:meth:`discard`) split
a large page they cover in part, and unback one they cover whole.

Writes replace whole pages (the access model is page-granular), so the copy a real COW
break makes is subsumed by the write itself; the fault is still counted.

Not covered: when and to whom these happen (policy, :mod:`hosts.host_manager`), the guest
OS's own view (:mod:`hosts.guest_os`).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import numpy as np
from vmmsim.hosts import compression as zc
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.machine_memory import MachineMemory
from vmmsim.hosts.phys_map import ACCESSED, DIRTY, PhysMap
from vmmsim.hosts.sharing import scan as sk
from vmmsim.hosts.sharing.index import NONE, SharingIndex, hash_page
from vmmsim.hosts.vmm_swap import T_B2, T_NF2, T_SEEN2, SwapStore

#: The dtypes of a VM's map arrays in the multi-VM scan's table (``M_*`` order).
_MAP_DTYPES = (np.dtype(np.int8), np.dtype(np.int32), np.dtype(np.int64))


@dataclass
class Faults:
    """VMM-level faults of one batch of accesses."""

    first_touch: int = 0
    vmm_swapin: int = 0  # from the regular (disk) swap
    cow: int = 0
    cache_in: int = 0  # from the host swap cache
    zip_in: int = 0  # from the compression cache (decompressions)


@dataclass
class ScanStats:
    scanned: int = 0
    merged: int = 0  # pages remapped onto an existing shared frame
    hint_hits: int = 0  # hints turned into a new shared frame
    hint_stale: int = 0  # hints whose page had changed since
    collisions: int = 0  # equal hashes, different bytes: never shared
    frames_freed: int = 0


@dataclass
class VMSlot:
    pmap: PhysMap
    group: int
    sharing: bool
    overhead: np.ndarray


class HostMemory:
    """All page state of one host.  VMs are attached under small integer ids."""

    def __init__(
        self, n_frames: int, n_swap_slots: int, content_bytes: int, cache_slots: int = 0
    ) -> None:
        self.content_bytes = content_bytes
        self.frames = MachineMemory(n_frames, content_bytes)
        self.swap = SwapStore(n_swap_slots, content_bytes, cache_slots)
        self.index = SharingIndex(n_frames)
        self.zero = np.zeros(n_frames, dtype=bool)  # shared frames known to hold zeros
        self.zero_hash = hash_page(np.zeros(content_bytes, dtype=np.uint8))
        self.vms: dict[int, VMSlot] = {}
        self.next_id = 0
        self._locked: int | None = None  # cache of n_locked (None: count again)
        # Frames holding the sharing index's entries (charge_index): used, no owner.
        self.index_frames = np.zeros(0, dtype=np.int32)
        # ESX offers every page it swaps to the sharing scan first (page_out); a KVM host
        # (KSM, :mod:`hosts.sharing.ksm`) does not.
        self.share_before_swap = True
        # Memory compression (hosts.compression; off unless configure_compression):
        # quarter pages held per cache (ESX: one per VM id; zswap: the pool, key -1), the
        # frames the caches take (used, no owner), and zswap's "refusing" flag.
        self.zip_mode = zc.OFF
        self.zip_pct = 0.0
        self.zip_accept_pct = 100.0
        self.zip_units_of: dict[int, int] = {}
        self.zip_pages_of: dict[int, int] = {}  # compressed pages per VM id (metrics)
        self.zip_frames = np.zeros(0, dtype=np.int32)
        self.zip_full = False
        # The VMs' map arrays as an address table for the multi-VM scan (scan_many):
        # rebuilt when any of them is another object; holding them keeps them alive.
        self._map_arrays: tuple[list[int], list[np.ndarray]] = ([], [])
        self._maddr = np.zeros((0, sk.N_MAP), dtype=np.int64)
        self._mlen = np.zeros((0, sk.N_MAP), dtype=np.int64)
        # The VM steps' scratch buffers, one pair for all VMs (steps run one at a time):
        # step_buffers hands out views of them.
        self._step_bufs: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._scratch = np.zeros(0, dtype=np.int32)
        self._to_free = np.zeros(0, dtype=np.int32)

    # ------------------------------------------------------------------ VMs
    def attach(self, pmap: PhysMap, group: int, sharing: bool, overhead_pages: int) -> int:
        vm = self.next_id
        self.next_id += 1
        overhead = self.frames.alloc(overhead_pages, zero=False)
        self.frames.owner_vm[overhead] = vm
        self.vms[vm] = VMSlot(pmap, group, sharing, overhead)
        self._locked = None
        return vm

    def detach(self, vm: int) -> None:
        slot = self.vms[vm]
        if slot.pmap.allocated:
            raise InvariantError("detaching a VM that still holds frames or swap")
        self.frames.decref(slot.overhead)
        del self.vms[vm]
        self._locked = None

    @property
    def n_locked(self) -> int:
        """Frames no reclamation can ever free: the VMs' overheads and pinned pages, and
        the frames the sharing index takes.  (Not the compression caches' frames: writing
        their pages to swap frees them, :meth:`zip_evict`.)"""
        if self._locked is None:
            self._locked = sum(len(s.overhead) + s.pmap.n_pinned for s in self.vms.values())
        return self._locked + len(self.index_frames)

    def step_buffers(self, n_pages: int) -> tuple[np.ndarray, np.ndarray]:
        """A VM step's scratch buffers for a VM of ``n_pages`` pages: the deduplication
        marks (``int32[n_pages]``, all -1 between steps; its length is the range the
        kernels check pages against) and room for the frames a step's COW breaks free
        (``int32[n_pages]``: frame numbers, as ``PhysMap.loc``).  Views of one pair of host
        buffers shared by all its VMs -- they step one at a time -- the same objects each
        call until a larger VM comes (``4 + 4`` bytes per page of the largest VM, not of
        every VM)."""
        bufs = self._step_bufs.get(n_pages)
        if bufs is None:
            if len(self._scratch) < n_pages:  # (views handed out before keep the old pair)
                self._scratch = np.full(n_pages, -1, dtype=np.int32)
                self._to_free = np.empty(n_pages, dtype=np.int32)
                self._step_bufs = {}
            bufs = self._step_bufs[n_pages] = (
                self._scratch[:n_pages],
                self._to_free[:n_pages],
            )
        return bufs

    # ------------------------------------------------------------------ index memory
    @property
    def n_index_frames(self) -> int:
        """Frames the sharing index takes now (:meth:`charge_index`)."""
        return len(self.index_frames)

    def charge_index(self, want: int) -> int:
        """Make the sharing index hold ``want`` frames (:func:`index_frames_for`): shrink
        at once (the frames taken last are freed first), grow only into free frames (a
        shortfall is charged at a later call).  Returns the frames it holds now."""
        have = len(self.index_frames)
        if want < have:
            drop = self.index_frames[want:]
            self.index_frames = self.index_frames[:want].copy()
            self.decref(drop)
        elif want > have:
            n = min(want - have, self.frames.n_free)
            if n:
                got = self.frames.alloc(n, zero=False)
                self.index_frames = np.concatenate((self.index_frames, got))
        return len(self.index_frames)

    def chunk_cap(self, guest_room: int) -> int:
        """Most distinct pages one chunk of a VM's step may touch: half of what both the
        guest (``guest_room``: pages not pinned or ballooned) and the host (frames not
        locked) can hold, so that the frames a chunk needs can always be made free; and
        at most the free frames plus free swap slots.

        The last bound matters when swap is (nearly) full: a chunk's VMM-swapped pages
        keep their slots until they are read back, so every frame the chunk needs beyond
        the free ones must come from swapping *other* pages out into free slots.  A chunk
        never needs more frames than it has pages, and swapping out (even the chunk's own
        pages) or in leaves free frames + free slots unchanged, so such a chunk can always
        be served; the following chunks then use the slots its swap-ins released.
        """
        room = self.frames.n_free + self.swap.n_free
        return max(1, min(min(guest_room, self.frames.n_frames - self.n_locked) // 2, room))

    @property
    def n_free(self) -> int:
        return self.frames.n_free

    # ------------------------------------------------------------------ accesses
    def frames_needed(self, vm: int, reads: np.ndarray, writes: np.ndarray) -> int:
        """Frames a batch will allocate: first touches, swap-ins and COW breaks."""
        st = self.vms[vm].pmap.state
        r, w = st[reads], st[writes]
        return int(
            np.count_nonzero((r == ps.UNTOUCHED) | (r == ps.VMM_SWAPPED))
            + np.count_nonzero(w != ps.MAPPED)
        )

    def _back(self, vm: int, pmap: PhysMap, ppns: np.ndarray, *, fill: bool, f: Faults) -> None:
        """Give frames to UNTOUCHED / VMM_SWAPPED pages among ``ppns`` (filled if asked)."""
        st = pmap.state[ppns]
        new = ppns[st == ps.UNTOUCHED]
        if len(new):
            frames = self.frames.alloc(len(new), zero=fill)
            self._own(vm, new, frames)
            pmap.set_state(new, ps.MAPPED, frames)
            f.first_touch += len(new)
        sw = ppns[st == ps.VMM_SWAPPED]
        if len(sw):
            slots = pmap.loc[sw]
            frames = self.frames.alloc(len(sw), zero=False)
            if fill:
                self.frames.content[frames] = self.swap.take(slots)
            else:
                self.swap.free(slots)
            self._own(vm, sw, frames)
            pmap.set_state(sw, ps.MAPPED, frames)
            tiers = self.swap.tier_of(slots)
            n_c, n_z = int(np.count_nonzero(tiers == 0)), int(np.count_nonzero(tiers == 2))
            f.cache_in += n_c
            f.zip_in += n_z
            f.vmm_swapin += len(sw) - n_c - n_z
            if n_z:
                self.settle_zip()
        if (st == ps.BALLOONED).any():
            raise InvariantError("guest touched a page its balloon holds")

    def _own(self, vm: int, ppns: np.ndarray, frames: np.ndarray) -> None:
        self.frames.owner_vm[frames] = vm
        self.frames.owner_ppn[frames] = ppns

    def read(self, vm: int, ppns: np.ndarray) -> Faults:
        """Guest reads of unique pages: first touch zero-fills, swapped pages come back."""
        pmap = self.vms[vm].pmap
        f = Faults()
        self._back(vm, pmap, ppns, fill=True, f=f)
        pmap.bits[ppns] |= np.uint8(ACCESSED)
        return f

    def write(self, vm: int, ppns: np.ndarray, data: np.ndarray) -> Faults:
        """Guest writes of whole unique pages; a write to a shared page breaks COW."""
        pmap = self.vms[vm].pmap
        f = Faults()
        self._back(vm, pmap, ppns, fill=False, f=f)
        cow = ppns[pmap.state[ppns] == ps.SHARED]
        if len(cow):
            old = pmap.loc[cow].copy()
            frames = self.frames.alloc(len(cow), zero=False)
            self._own(vm, cow, frames)
            pmap.n_zero_shared -= int(self.zero[old].sum())
            pmap.set_state(cow, ps.MAPPED, frames)
            self.decref(old)
            f.cow += len(cow)
        self.frames.content[pmap.loc[ppns]] = data
        pmap.bits[ppns] |= np.uint8(ACCESSED | DIRTY)
        return f

    def read_bytes(self, vm: int, ppns: np.ndarray) -> np.ndarray:
        """Contents of resident pages (no side effects); zeros for untouched pages."""
        pmap = self.vms[vm].pmap
        st = pmap.state[ppns]
        out = np.zeros((len(ppns), self.content_bytes), dtype=np.uint8)
        res = (st == ps.MAPPED) | (st == ps.SHARED)
        out[res] = self.frames.content[pmap.loc[ppns[res]]]
        sw = st == ps.VMM_SWAPPED
        out[sw] = self.swap.content[pmap.loc[ppns[sw]]]
        if (st == ps.BALLOONED).any():
            raise InvariantError("reading a ballooned page")
        return out

    # ------------------------------------------------------------------ reclamation
    def decref(self, frames: np.ndarray) -> int:
        freed = self.frames.decref(frames)
        self.index.forget(freed)
        self.zero[freed] = False
        return len(freed)

    def release(self, vm: int, ppns: np.ndarray, to_state: int) -> int:
        """Drop the backing of pages (balloon inflation, migration away); frames freed.

        Ballooning a page of an intact large page breaks it first (:meth:`break_large`)."""
        pmap = self.vms[vm].pmap
        freed = 0
        if pmap.large is not None and to_state == ps.BALLOONED:
            freed = self._break_for(vm, ppns)
        st = pmap.state[ppns]
        res = ppns[(st == ps.MAPPED) | (st == ps.SHARED)]
        frames = pmap.loc[res].copy()
        pmap.n_zero_shared -= int(self.zero[frames].sum())
        sw = ppns[st == ps.VMM_SWAPPED]
        self.swap.free(pmap.loc[sw].copy())
        pmap.set_state(ppns, to_state, -1)
        if self.zip_mode:
            self.settle_zip()
        return freed + self.decref(frames)

    def discard(self, vm: int, ppns: np.ndarray) -> int:
        """Drop the backing of pages the guest reported free (free page reporting,
        :mod:`hosts.free_page_reporting`; QEMU discards them with ``MADV_DONTNEED``): they
        become UNTOUCHED; frames freed.

        Large pages go as Linux's ``zap_pmd_range`` (``mm/memory.c``) treats a huge PMD in
        the range: one discarded whole is zapped (``zap_huge_pmd``) and its region is
        intact and not backed again (:meth:`hosts.large_pages.LargePages.mark_unbacked`: a
        new large page at its next first touch, as a THP fault); one discarded in part is
        split first (``__split_huge_pmd``): :meth:`break_large`, as for a swapped or
        ballooned page.  (So Linux's virtio_balloon reports 2 MB blocks where it can, "to
        avoid THP splitting" in the host: ``drivers/virtio/virtio_balloon.c``, 5.14.)"""
        ppns = np.asarray(ppns, dtype=np.int64)
        lp = self.vms[vm].pmap.large
        freed = 0
        if lp is not None:
            lp.mark_unbacked(lp.whole_backed(ppns))
            part = lp.regions_of(ppns)
            part = part[lp.backed[part]]  # (not the whole ones, nor any never backed)
            freed = self.break_large(vm, part, spare=ppns).frames_freed
        return freed + self.release(vm, ppns, ps.UNTOUCHED)

    def page_out(self, vm: int, ppns: np.ndarray) -> tuple[int, ScanStats]:
        """VMM page-out of resident pages, sharing first; return (frames freed, scan).

        ESX tries to share a page before paging it out (Waldspurger 2002, sec. 4.3): the
        private pages among ``ppns`` go through the sharing scan (:meth:`scan`: hash,
        look up shared and hint frames, byte compare), and a page that matches is shared
        instead -- its frame freed, no swap slot used.  Pages the scan made shared (also
        a victim promoted as another victim's hint) stay resident; the rest, and pages
        that were shared already, are written to swap (:meth:`swap_out`).  A VM without
        sharing, or a page that matches nothing, is simply swapped.

        With memory compression (:mod:`hosts.compression`) the private pages that
        compress well go to the compression cache, the rest to swap.  The cache is a
        best-effort tier in front of swap: pages whose compression would free no frame
        net -- one page that must open a new cache frame (the cache grows by a whole
        frame, the page frees one) -- are written to swap instead, so that every private
        page paged out frees a frame (:func:`hosts.reclamation.make_room` relies on it).
        """
        pmap = self.vms[vm].pmap
        st = pmap.state[ppns]
        if not ((st == ps.MAPPED) | (st == ps.SHARED)).all():
            raise InvariantError("page_out of a page that is not resident")
        freed = self._break_for(vm, ppns) if pmap.large is not None else 0
        if self.share_before_swap:
            s = self.scan(vm, ppns[st == ps.MAPPED])
            out = ppns[(st == ps.SHARED) | (pmap.state[ppns] == ps.MAPPED)]
        else:  # a KSM host: straight to compression / swap
            s, out = ScanStats(), ppns
        if self.zip_mode and len(out):
            # (frames freed: counted as the change of free frames -- the caches' frames
            # also shrink as they settle or write back)
            free0 = self.frames.n_free - s.frames_freed - freed
            zp, units = self._zip_admit(vm, out)
            if len(zp) and self._zip_growth(vm, units) >= len(zp):
                zp = zp[:0]  # compressing would free no frame: to swap instead
            if len(zp):
                out = out[~np.isin(out, zp, assume_unique=True)]
                self.compress(vm, zp, units)
            if self.zip_full:  # (also when the pool took none: Linux zswap queues its
                # shrink worker whenever a store finds the pool at its limit)
                self._zip_shrink(reserve=len(out))
            if len(out):
                self.swap_out(vm, out)
            return self.frames.n_free - free0, s
        return freed + s.frames_freed + (self.swap_out(vm, out) if len(out) else 0), s

    # ------------------------------------------------------------------ compression
    def configure_compression(self, mode: str, pct: float, accept_pct: float = 100.0) -> None:
        """Switch memory compression on (:mod:`hosts.compression`): ``mode`` ``"esx"``
        (per-VM caches of ``pct`` % of each VM's configured memory) or ``"zswap"`` (one
        pool of ``pct`` % of host memory, accepting again below ``accept_pct`` % of it)."""
        self.zip_mode = zc.MODES.index(mode)
        self.zip_pct = float(pct)
        self.zip_accept_pct = float(accept_pct)

    def _zip_key(self, vm: int) -> int:
        return vm if self.zip_mode == zc.ESX else -1

    def _zip_cap(self, vm: int) -> int:
        if self.zip_mode == zc.ESX:
            return zc.vm_cap_units(len(self.vms[vm].pmap.state), self.zip_pct)
        return zc.pool_cap_units(self.frames.n_frames, self.zip_pct)

    def _zip_admit(self, vm: int, ppns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pages among ``ppns`` (resident, being paged out) that go to the compression
        cache, in page order, and their sizes: private pages (a shared page's frame stays,
        so compressing it would save nothing) that compress to half a page or less.

        ESX: a full cache makes room by writing its oldest pages to swap (ESX evicts from
        the compression cache to swap), as many as the new pages need.  zswap: while the
        pool is full (it hit its cap) it refuses every page, until it has shrunk below
        its accept threshold; :meth:`_zip_shrink` writes back its oldest pages.
        """
        self.settle_zip()
        pmap = self.vms[vm].pmap
        priv = ppns[pmap.state[ppns] == ps.MAPPED]
        units = zc.size_units(self.frames.content, pmap.loc[priv].astype(np.int64))
        ok = units > 0
        priv, units = priv[ok], units[ok]
        key, cap = self._zip_key(vm), self._zip_cap(vm)
        have = self.zip_units_of.get(key, 0)
        csum = np.cumsum(units, dtype=np.int64)
        if self.zip_mode == zc.ESX:
            k = int(np.searchsorted(csum, cap, side="right"))  # at most a whole cache
            short = (int(csum[k - 1]) if k else 0) - (cap - have)
            if short > 0:  # (keeping a slot for every page of the batch)
                self._zip_writeback(key, short, reserve=len(ppns))
                have = self.zip_units_of.get(key, 0)
        elif self.zip_full:
            if have * 100.0 < self.zip_accept_pct * cap:
                self.zip_full = False
            else:
                return priv[:0], units[:0]
        k = int(np.searchsorted(csum, cap - have, side="right"))
        if k < len(priv) and self.zip_mode == zc.ZSWAP:
            self.zip_full = True  # the pool hit its cap: refuse until below the threshold
        return priv[:k], units[:k]

    def _zip_growth(self, vm: int, units: np.ndarray) -> int:
        """Frames the cache of ``vm`` would grow by if it took pages of sizes ``units``."""
        have = self.zip_units_of.get(self._zip_key(vm), 0)
        return zc.frames_for(have + int(units.sum())) - zc.frames_for(have)

    def zip_evict(self, vm: int, n: int) -> int:
        """Free up to ``n`` frames of the compression cache of ``vm`` (ESX: its own cache;
        zswap: the host's pool, any VM's pages) by writing its oldest pages to swap --
        decompressed, one swap slot each -- as long as swap has free slots; return the
        frames freed.

        Reclamation's last resort (:func:`hosts.reclamation.make_room`): the caches'
        frames hold no page a VM can touch, but they are host memory all the same, and
        ESX empties a compression cache into swap ("Understanding Memory Resource
        Management in VMware vSphere 5.0", VMware white paper, 2011, sec. "Memory
        Compression": a compressed page chosen by age is decompressed and swapped out).
        """
        key = self._zip_key(vm)
        have = self.zip_units_of.get(key, 0)
        if n <= 0 or not have or not self.swap.n_free:
            return 0
        keep = max(0, zc.frames_for(have) - n) * zc.UNITS_PER_FRAME
        before = len(self.zip_frames)
        self._zip_writeback(key, have - keep, reserve=0)
        return before - len(self.zip_frames)

    def _zip_shrink(self, reserve: int) -> None:
        """zswap's shrinker: a full pool writes back its oldest pages to swap until it is
        below the accept threshold (Linux zswap: "zswap will evict pages from the pool on
        an LRU basis" once at its limit; as compressed order, here)."""
        cap = zc.pool_cap_units(self.frames.n_frames, self.zip_pct)
        goal = int(np.ceil(self.zip_accept_pct * cap / 100.0)) - 1  # strictly below
        excess = self.zip_units_of.get(-1, 0) - max(goal, 0)
        if excess > 0:
            self._zip_writeback(-1, excess, reserve)

    def _zip_writeback(self, key: int, units: int, reserve: int) -> None:
        """Write the oldest pages of cache ``key`` to swap until ``units`` quarter pages
        are freed, leaving ``reserve`` swap slots free (fewer pages if swap has not that
        many); their maps point at their new slots."""
        sw = self.swap
        base = sw.zip_base
        z = np.flatnonzero(sw.used[base:])
        if self.zip_mode == zc.ESX:
            z = z[sw.zip_owner[z] == key]
        z = z[np.argsort(sw.zip_seq[z], kind="stable")]
        k = int(np.searchsorted(np.cumsum(sw.zip_units[z], dtype=np.int64), units)) + 1
        z = z[: max(0, min(k, len(z), sw.n_free - reserve))]
        if not len(z):
            return
        new = sw.put(sw.content[z + base])
        owners, ppns = sw.zip_owner[z], sw.zip_ppn[z]
        for o in np.unique(owners).tolist():
            mine = owners == o
            self.vms[o].pmap.loc[ppns[mine]] = new[mine]
        sw.free((z + base).astype(np.int64))
        self.settle_zip()

    def compress(self, vm: int, ppns: np.ndarray, units: np.ndarray) -> int:
        """Move private resident pages into the compression cache (their bytes to the
        compression tier of the swap store, sizes ``units``); return frames freed net of
        the frames the cache grows by."""
        self.settle_zip()
        pmap = self.vms[vm].pmap
        frames = pmap.loc[ppns].copy()
        slots = self.swap.put_zip(self.frames.content[frames], units, vm, ppns)
        pmap.set_state(ppns, ps.VMM_SWAPPED, slots)
        freed = self.decref(frames)
        key = self._zip_key(vm)
        self.zip_units_of[key] = self.zip_units_of.get(key, 0) + int(units.sum())
        self.zip_pages_of[vm] = self.zip_pages_of.get(vm, 0) + len(ppns)
        return freed - self._charge_zip()

    def settle_zip(self) -> None:
        """Take in the compression slots freed since the last call (decompressions by the
        kernels, releases): their caches shrink, and the frames no longer needed are
        freed."""
        sw = self.swap
        t = sw.tier
        seen, nf = int(t[T_SEEN2]), int(t[T_NF2])
        if nf == seen:
            return
        base = int(t[T_B2])
        gone = sw.free_stack[base + seen : base + nf].astype(np.int64) - base
        t[T_SEEN2] = nf
        units = sw.zip_units[gone].astype(np.int64)
        owners = sw.zip_owner[gone]
        for o in np.unique(owners).tolist():
            mine = owners == o
            self.zip_pages_of[o] -= int(np.count_nonzero(mine))
            if self.zip_mode == zc.ESX:
                self.zip_units_of[o] -= int(units[mine].sum())
        if self.zip_mode != zc.ESX:
            self.zip_units_of[-1] -= int(units.sum())
        self.zip_units_of = {k: u for k, u in self.zip_units_of.items() if u}
        self.zip_pages_of = {k: n for k, n in self.zip_pages_of.items() if n}
        self._charge_zip()

    def rebuild_zip_counts(self) -> None:
        """The caches' unit and page counts from the compression slots in use (a restored
        snapshot: they are derived state)."""
        sw = self.swap
        used = np.flatnonzero(sw.used[sw.zip_base :])
        units, owners = sw.zip_units[used].astype(np.int64), sw.zip_owner[used]
        self.zip_units_of, self.zip_pages_of = {}, {}
        for o in np.unique(owners).tolist():
            mine = owners == o
            self.zip_pages_of[o] = int(np.count_nonzero(mine))
            key = self._zip_key(o)
            self.zip_units_of[key] = self.zip_units_of.get(key, 0) + int(units[mine].sum())

    def zip_pages(self, vm: int) -> int:
        """Pages of VM ``vm`` in the compression cache."""
        return self.zip_pages_of.get(vm, 0)

    def _charge_zip(self) -> int:
        """Make the caches hold the frames their pages take; return the change."""
        want = sum(zc.frames_for(u) for u in self.zip_units_of.values())
        have = len(self.zip_frames)
        if want < have:
            drop = self.zip_frames[want:]
            self.zip_frames = self.zip_frames[:want].copy()
            self.frames.decref(drop)
        elif want > have:
            got = self.frames.alloc(want - have, zero=False)
            self.zip_frames = np.concatenate((self.zip_frames, got))
        return want - have

    @property
    def n_zip_frames(self) -> int:
        """Frames the compression caches take now."""
        return len(self.zip_frames)

    def swap_out(self, vm: int, ppns: np.ndarray) -> int:
        """Write resident pages to the swap store; return how many frames that freed.

        A shared page's bytes go to swap too and only its reference is dropped: the
        frame is freed when its last sharer leaves (``swap full`` raises, never loses data).
        """
        pmap = self.vms[vm].pmap
        st = pmap.state[ppns]
        if not ((st == ps.MAPPED) | (st == ps.SHARED)).all():
            raise InvariantError("swap_out of a page that is not resident")
        freed = self._break_for(vm, ppns) if pmap.large is not None else 0
        frames = pmap.loc[ppns].copy()
        slots = self.swap.put(self.frames.content[frames])
        pmap.n_zero_shared -= int(self.zero[frames].sum())
        pmap.set_state(ppns, ps.VMM_SWAPPED, slots)
        return freed + self.decref(frames)

    # ------------------------------------------------------------------ sharing
    def scan(self, vm: int, ppns: np.ndarray) -> ScanStats:
        """One batch of the ESX sharing scan over candidate pages ``ppns`` of one VM.

        Hash each private page; a hash found among shared frames -> byte compare -> remap
        and free the duplicate; found among hints -> re-hash the hinted page (it may have
        changed) and byte compare -> both pages onto one new shared frame; otherwise record
        a hint.  Equal hashes with different bytes never share.  Pages inside an intact
        large page are never candidates (:mod:`hosts.large_pages`).

        The scan itself is :meth:`scan_many` of this one VM (one mechanism for a batch of
        one VM and a tick's batches of many).  A VM that does not share is counted as
        scanned and left alone.
        """
        slot = self.vms[vm]
        pmap = slot.pmap
        cand = ppns[pmap.state[ppns] == ps.MAPPED]
        if pmap.large is not None:  # never a page of an intact large page
            cand = cand[~pmap.large.in_intact(cand)]
        if not len(cand) or not slot.sharing:
            return ScanStats(scanned=len(cand))
        row = self.scan_many([vm], [cand])[0].tolist()
        return ScanStats(
            scanned=row[sk.R_SCANNED],
            merged=row[sk.R_MERGED],
            hint_hits=row[sk.R_HINT_HITS],
            hint_stale=row[sk.R_STALE],
            collisions=row[sk.R_COLL],
            frames_freed=row[sk.R_FREED],
        )

    def scan_many(self, vms: list[int], cands: list[np.ndarray]) -> np.ndarray:
        """One tick's scan batches of several VMs, in order, in one compiled call
        (:func:`hosts.sharing.scan.scan_vms`): each VM's ``MAPPED`` candidates are hashed,
        classified against the index and byte-compared (:func:`hosts.sharing.scan.scan_batch`),
        the owner pages of promoted frames made shared, and the verified pairs merged
        (:func:`hosts.sharing.scan.merge_pages`), VM after VM.  The candidates must lie
        outside intact large pages (:meth:`scan` filters them).

        Returns one row per VM of :class:`ScanStats`' counts (columns ``R_*`` of
        :mod:`hosts.sharing.scan`); a VM that does not share gets a zero row (as
        :meth:`scan` gives it no scan either)."""
        res = np.zeros((len(vms), sk.N_RES), dtype=np.int64)
        if not vms:
            return res
        maddr, mlen, mgroup = self._map_table()
        starts = np.zeros(len(vms) + 1, dtype=np.int64)
        np.cumsum([len(c) for c in cands], out=starts[1:])
        fr, idx = self.frames, self.index
        nz_add = np.zeros(len(maddr), dtype=np.int64)
        mask = idx.mask
        _, fr.n_free, err, what = sk.scan_vms(
            np.array(vms, dtype=np.int64), starts, np.concatenate(cands).astype(np.int64),
            mgroup, maddr, mlen, fr.content, fr.refcount, fr.shared, fr.owner_vm,
            fr.owner_ppn, fr.free_stack, fr.n_free, *idx.table_args(), idx.counts, self.zero,
            mask, np.uint64(self.zero_hash) & mask, res, nz_add,
        )  # fmt: skip
        for v in np.flatnonzero(nz_add).tolist():
            self.vms[v].pmap.n_zero_shared += int(nz_add[v])
        if what == 1:
            raise InvariantError(f"scan: index entry of frame {err} missing or doubly shared")
        if what:
            msg = "refcount went negative" if what == 2 else "index entry missing"
            raise InvariantError(f"scan: frame {err}: {msg}")
        return res

    def _map_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The address table of the VMs' maps (row ``vm_id``; columns ``M_*``) and each
        VM's sharing group (-1: it does not share), rebuilt only when a VM came or went or
        has new map arrays (a restore, a migration)."""
        flat = [a for s in self.vms.values() for a in (s.pmap.state, s.pmap.loc, s.pmap.counts)]
        ids = list(self.vms)
        old_ids, old_flat = self._map_arrays
        if ids != old_ids or not all(map(operator.is_, flat, old_flat)):
            addr = np.zeros((self.next_id, sk.N_MAP), dtype=np.int64)
            alen = np.zeros((self.next_id, sk.N_MAP), dtype=np.int64)
            for k, v in enumerate(ids):
                t = flat[3 * k : 3 * k + 3]
                for a, dt in zip(t, _MAP_DTYPES, strict=True):
                    if a.dtype != dt or not (a.flags.c_contiguous and a.flags.aligned):
                        raise InvariantError(f"VM {v}: a map array of dtype {a.dtype}")
                addr[v] = [a.ctypes.data for a in t]
                alen[v] = [len(a) for a in t]
            self._map_arrays, self._maddr, self._mlen = (ids, flat), addr, alen
        group = np.full(self.next_id, -1, dtype=np.int32)
        for v, s in self.vms.items():
            if s.sharing:
                group[v] = s.group
        return self._maddr, self._mlen, group

    def promote_owners(self, frames: np.ndarray) -> None:
        """Owner pages of frames the scan just made shared become SHARED pages too.

        (The frames' flags, references and index entries are the kernel's work.)"""
        fr = self.frames
        owners = fr.owner_vm[frames]
        for owner in _unique(owners).tolist():
            of = frames[owners == owner]
            opmap = self.vms[owner].pmap
            opmap.set_state(fr.owner_ppn[of].astype(np.int64), ps.SHARED, of)
            opmap.n_zero_shared += int(self.zero[of].sum())

    # ------------------------------------------------------------------ large pages
    def break_large(
        self, vm: int, regions: np.ndarray, *, scan: bool = True, spare: np.ndarray | None = None
    ) -> ScanStats:
        """Break the intact large pages ``regions`` (sorted, unique) of ``vm`` into 4 KB
        pages; with ``scan`` (and the VM sharing), run the sharing scan at once over their
        pages the scanner had hashed (``seen``), ``spare`` excepted -- ESX kept hints for
        the small pages inside large pages, so those share as soon as the large page is
        broken.  Returns that scan's stats (``frames_freed``: frames sharing freed)."""
        lp = self.vms[vm].pmap.large
        regions = np.asarray(regions, dtype=np.int64)
        if lp is None or not len(regions):
            return ScanStats()
        pages = lp.take_seen(regions)
        lp.mark_broken(regions)
        if not scan or not self.vms[vm].sharing or not len(pages):
            return ScanStats()
        if spare is not None and len(spare):
            pages = pages[~np.isin(pages, spare)]
        s = self.scan(vm, pages)
        lp.shared_at_break += s.merged + s.hint_hits
        return s

    def _break_for(self, vm: int, ppns: np.ndarray) -> int:
        """Break the intact large pages holding any of ``ppns`` (to be swapped or
        ballooned: ESX breaks a large page when it must reclaim a small page from it);
        return the frames the scan of their other pages freed."""
        regions = self.vms[vm].pmap.large.regions_of(ppns)
        if not len(regions):
            return 0
        return self.break_large(vm, regions, spare=ppns).frames_freed

    def back_large(self, vm: int, regions: np.ndarray) -> int:
        """Back intact, not yet backed ``regions`` of ``vm`` with a large page each: their
        untouched pages get zeroed frames (ESX backs the whole 2 MB at the first touch of
        any 4 KB page in it).  Returns the frames taken."""
        pmap = self.vms[vm].pmap
        pages = pmap.large.pages_of(regions)
        new = pages[pmap.state[pages] == ps.UNTOUCHED]
        self._back(vm, pmap, new, fill=True, f=Faults())
        pmap.large.mark_backed(np.asarray(regions, dtype=np.int64))
        return len(new)

    # ------------------------------------------------------------------ migration
    def install(self, vm: int, ppns: np.ndarray, data: np.ndarray) -> None:
        """Back pages with given contents as private frames (migration arrival)."""
        pmap = self.vms[vm].pmap
        if (pmap.state[ppns] != ps.UNTOUCHED).any():
            raise InvariantError("installing over a page that is already backed")
        frames = self.frames.alloc(len(ppns), zero=False)
        self.frames.content[frames] = data
        self._own(vm, ppns, frames)
        pmap.set_state(ppns, ps.MAPPED, frames)

    def install_shared(self, vm: int, ppns: np.ndarray, frames: np.ndarray) -> None:
        """Map untouched pages onto existing shared frames of the VM's group (migration
        arrival of content this host already shares; the caller has byte-compared)."""
        slot = self.vms[vm]
        pmap = slot.pmap
        if (pmap.state[ppns] != ps.UNTOUCHED).any():
            raise InvariantError("installing over a page that is already backed")
        if not self.frames.shared[frames].all() or (self.index.group[frames] != slot.group).any():
            raise InvariantError("install_shared onto a frame not shared in the VM's group")
        if pmap.large is not None and pmap.large.in_intact(ppns).any():
            raise InvariantError("install_shared into an intact large page")
        pmap.set_state(ppns, ps.SHARED, frames)
        np.add.at(self.frames.refcount, frames, np.int32(1))
        pmap.n_zero_shared += int(self.zero[frames].sum())

    # ------------------------------------------------------------------ checks
    def check_invariants(self) -> None:
        n = self.frames.n_frames
        refs = np.zeros(n, dtype=np.int64)
        slots: list[np.ndarray] = []
        fr = self.frames
        for vm, slot in self.vms.items():
            pmap = slot.pmap
            pmap.check_invariants()
            st, loc = pmap.state, pmap.loc
            mapped = np.flatnonzero(st == ps.MAPPED)
            shared = np.flatnonzero(st == ps.SHARED)
            refs += np.bincount(loc[mapped], minlength=n)
            refs += np.bincount(loc[shared], minlength=n)
            refs += np.bincount(slot.overhead, minlength=n)
            slots.append(loc[st == ps.VMM_SWAPPED])
            mf = loc[mapped]
            if fr.shared[mf].any():
                raise InvariantError(f"vm {vm}: a private page maps a shared frame")
            if (fr.owner_vm[mf] != vm).any() or (fr.owner_ppn[mf] != mapped).any():
                raise InvariantError(f"vm {vm}: private frame owner record is wrong")
            sf = loc[shared]
            if not fr.shared[sf].all():
                raise InvariantError(f"vm {vm}: a shared (COW) page maps a private frame")
            if (self.index.group[sf] != slot.group).any():
                raise InvariantError(f"vm {vm}: shares a frame outside its sharing group")
            if int(self.zero[sf].sum()) != pmap.n_zero_shared:
                raise InvariantError(f"vm {vm}: zero-shared count is off")
            if pmap.large is not None:
                pmap.large.check_invariants(st)
                lf = loc[mapped[pmap.large.in_intact(mapped)]]
                if (self.index.kind[lf] != NONE).any():
                    raise InvariantError(f"vm {vm}: a page of an intact large page is indexed")
        ix = self.index_frames
        refs += np.bincount(ix, minlength=n)
        if len(ix) and (fr.shared[ix].any() or (fr.owner_vm[ix] != -1).any()):
            raise InvariantError("a frame of the sharing index is shared or owned by a VM")
        zf = self.zip_frames
        refs += np.bincount(zf, minlength=n)
        if len(zf) and (fr.shared[zf].any() or (fr.owner_vm[zf] != -1).any()):
            raise InvariantError("a frame of the compression cache is shared or owned by a VM")
        self._check_zip()
        fr.check_invariants(refs)
        if (refs[fr.shared] < 1).any():
            raise InvariantError("a shared frame has no references")
        self.swap.check_invariants(np.concatenate(slots) if slots else np.zeros(0, dtype=np.int32))
        self.index.check_invariants(fr.content, fr.shared)
        if (self.zero & ~fr.shared).any():
            raise InvariantError("zero flag on a frame that is not shared")

    def _check_zip(self) -> None:
        """Compressed pages vs the caches' counts, caps and frames."""
        sw = self.swap
        t = sw.tier
        if t[T_SEEN2] != t[T_NF2]:
            raise InvariantError("compression slots freed but not settled")
        base = sw.zip_base
        used = np.flatnonzero(sw.used[base:])
        if len(used) and not self.zip_mode:
            raise InvariantError("compressed pages with compression off")
        units, owners = sw.zip_units[used].astype(np.int64), sw.zip_owner[used]
        if len(used) and ((units < 1) | (units > 2)).any():
            raise InvariantError("a compressed page of a size that is not 1/4 or 1/2 page")
        keys = owners if self.zip_mode == zc.ESX else np.full(len(used), -1)
        want: dict[int, int] = {}
        for k in np.unique(keys).tolist():
            want[k] = int(units[keys == k].sum())
        if want != self.zip_units_of:
            raise InvariantError(f"compression caches hold {self.zip_units_of}, pages {want}")
        per_vm = {o: int(n) for o, n in zip(*np.unique(owners, return_counts=True), strict=True)}
        if per_vm != self.zip_pages_of:
            raise InvariantError("compressed page counts per VM are off")
        for k, u in want.items():
            if self.zip_mode == zc.ESX:
                cap = zc.vm_cap_units(len(self.vms[k].pmap.state), self.zip_pct)
            else:
                cap = zc.pool_cap_units(self.frames.n_frames, self.zip_pct)
            if u > cap:
                raise InvariantError(f"compression cache {k} above its cap ({u} > {cap})")
        if len(self.zip_frames) != sum(zc.frames_for(u) for u in want.values()):
            raise InvariantError("compression cache frames != what its pages take")
        for vm in np.unique(owners).tolist():
            pm = self.vms[vm].pmap
            z = used[owners == vm]
            pp = sw.zip_ppn[z]
            if (pm.state[pp] != ps.VMM_SWAPPED).any() or (pm.loc[pp] != z + base).any():
                raise InvariantError(f"vm {vm}: a compressed page's record is not its map's")


def index_frames_for(n_entries: int, entry_bytes: int, page_size: int) -> int:
    """Frames the sharing index takes for ``n_entries`` entries of ``entry_bytes`` each.

    Waldspurger 2002, sec. 4.3: "Each frame is encoded compactly in 16 bytes" (shared
    and hint frames alike), "less than 0.5% of system memory" in all -- 16 bytes per
    entry is at most 16 / 4096 = 0.4% of memory, as a frame has at most one entry.
    """
    if n_entries < 0 or entry_bytes < 0 or page_size <= 0:
        raise ValueError("n_entries, entry_bytes must be >= 0 and page_size > 0")
    return -(-int(n_entries) * int(entry_bytes) // int(page_size))


def _unique(a: np.ndarray) -> np.ndarray:
    """Sorted unique values (np.unique is far slower than a sort on numpy 2.4 here)."""
    if len(a) < 2:
        return np.asarray(a).copy()
    s = np.sort(a)
    return s[np.concatenate(([True], s[1:] != s[:-1]))]
