"""One virtual machine on a host: guest OS, VMM map, balloon, sampler and workload.

Scope: what happens inside one VM in one tick -- the workload's accesses go through the
guest's page table (guest faults, clock eviction, guest swap) down to the VMM's map
(first touch, COW, VMM swap-in) -- and the per-VM reclamation actions the host manager
asks for: inflate/deflate the balloon, VMM-swap random victims.  Costs of faults become
throughput with a simple stall model (:class:`FaultCosts`).

Everything that defines the VM lives here and moves with it on migration: maps, guest
state, balloon, sampler, workload and both random generators (``workload_rng`` drives the
access stream, ``vmm_rng`` the VMM's sampling, scan order and swap victims).

Not covered: choosing targets or states (:mod:`hosts.host_manager`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import gcd
from typing import Any

import numpy as np
import xxhash
from vmmsim.hosts import balloon, vm_general
from vmmsim.hosts import guest_os as gos
from vmmsim.hosts import guest_os_kernel as gk
from vmmsim.hosts import page_state as ps
from vmmsim.hosts import vm_kernel as vk
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.guest_os import GuestOS
from vmmsim.hosts.host_memory import HostMemory
from vmmsim.hosts.native import hash_pages
from vmmsim.hosts.phys_map import PhysMap
from vmmsim.hosts.specs import HostPolicy, SimParams, VMSpec
from vmmsim.hosts.working_set import WorkingSetSampler
from vmmsim.workloads import registry
from vmmsim.workloads.content import derived_keys, page_bytes, stable_hash64, word_table
from vmmsim.workloads.images import BootLayout, vm_image_keys
from vmmsim.workloads.patterns import Accesses, SplitPlan, WorkloadEnv

_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass
class VMStats:
    """Counters of one VM; ``tick_*`` fields are reset every tick, totals never."""

    first_touch: int = 0
    cow_breaks: int = 0
    vmm_swapins: int = 0
    guest_swapins: int = 0  # disk reads: swapped or dropped guest pages
    guest_swapouts: int = 0  # disk writes of dirty pages
    sample_faults: int = 0
    scanned: int = 0
    merged: int = 0
    hint_hits: int = 0
    hint_stale: int = 0
    collisions: int = 0
    swap_shared: int = 0  # pages shared instead of VMM-swapped (HostMemory.page_out)
    cache_swapins: int = 0  # VMM swap-ins from the host swap cache
    decompressions: int = 0  # VMM swap-ins from the compression cache
    accesses: int = 0
    blocked_ticks: int = 0
    paused_ticks: int = 0
    work_done: float = 0.0
    ticks: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class TickCounters:
    disk: int = 0
    minor: int = 0
    first_touch: int = 0
    sample: int = 0
    cow: int = 0
    vmm_swapins: int = 0  # from the regular (disk) swap
    guest_swapins: int = 0
    scanned: int = 0
    accesses: int = 0
    cache_swapins: int = 0  # VMM swap-ins from the host swap cache (not in disk)
    decompressions: int = 0  # VMM swap-ins from the compression cache (not in disk)
    paused: float = 0.0  # fraction of the tick the VM was not running
    blocked: bool = False  # blocked for the whole tick (host in LOW, VM above target)
    reported: int = 0  # pages reported free to the host (hosts.free_page_reporting)


@dataclass(frozen=True)
class FaultCosts:
    disk_s: float = 0.005
    minor_s: float = 2e-6
    cache_s: float = 1e-4  # a swap-in from the host swap cache (policy.swap_cache_latency_us)
    decompress_s: float = 2e-5  # a decompression (policy.decompress_us)

    def throughput(self, tick_s: float, c: TickCounters) -> float:
        """Work done / work demanded: the tick's work is stretched by its stalls."""
        stall = c.disk * self.disk_s + c.minor * self.minor_s
        if c.cache_swapins or c.decompressions:  # (0 when off: the sum is as it was)
            stall += c.cache_swapins * self.cache_s + c.decompressions * self.decompress_s
        return (1.0 - c.paused) * tick_s / (tick_s + stall)


def fault_costs(policy: HostPolicy) -> FaultCosts:
    """The stall costs of ``policy``'s latencies."""
    return FaultCosts(
        policy.disk_latency_s,
        policy.minor_fault_s,
        policy.swap_cache_latency_s,
        policy.decompress_s,
    )


MakeRoom = Callable[[int, "VirtualMachine"], None]


def vm_seed_sequence(seed: int, name: str, purpose: str) -> np.random.SeedSequence:
    """The VM's own stream: independent of placement, host and other VMs."""
    key = stable_hash64("vm", name, purpose)
    return np.random.SeedSequence(seed, spawn_key=(key & 0xFFFFFFFF, key >> 32))


def kernel_pages(spec: VMSpec) -> int:
    """Physical pages the guest kernel keeps for structures sized to the configured memory
    (the image's ``kernel_fraction``), at most half of the pages that are not pinned: the
    rest is the workload's (a guest left a page or two would run every access as its own
    chunk through the clock)."""
    n = int(spec.image.kernel_fraction * spec.n_pages)
    return max(0, min(n, (spec.n_pages - spec.pinned_pages) // 2))


class VirtualMachine:
    """A VM and all of its memory state; attached to one :class:`HostMemory` at a time.

    ``fast_path`` (default on) applies each step with the compiled kernels of
    :mod:`hosts.vm_kernel` whenever their preconditions hold; off, every step takes the
    general numpy path (:mod:`hosts.vm_general`, also the fallback when a kernel declines a
    step).  Both give the same state, bit for bit.
    """

    fast_path: bool = True

    def __init__(
        self,
        spec: VMSpec,
        sim: SimParams,
        sample_pages: int = 100,
        balloon_max_fraction: float = 0.65,
        workload: Any = None,
    ) -> None:
        """``workload``: use this instead of building the spec's generator (a replay)."""
        self.spec = spec
        self.name = spec.name
        self.sim = sim
        n = spec.n_pages
        self.pmap = PhysMap(n)
        self.pmap.n_pinned = spec.pinned_pages
        self.guest = GuestOS(n, sim.content_bytes, spec.pinned_pages, kernel_pages(spec))
        self.layout = BootLayout.for_image(spec.image, n, sim.page_size)
        self.sampler = WorkingSetSampler(sample_pages)
        self.balloon_max_fraction = balloon_max_fraction
        self.workload_rng = np.random.Generator(
            np.random.PCG64(vm_seed_sequence(sim.seed, spec.name, "workload"))
        )
        self.vmm_rng = np.random.Generator(
            np.random.PCG64(vm_seed_sequence(sim.seed, spec.name, "vmm"))
        )
        if workload is None:
            env = WorkloadEnv(
                n, sim.page_size, sim.tick_s, sim.seed, spec.image, self.layout, spec.name
            )
            cls = registry.get(spec.workload_kind)
            params = spec.workload_params if spec.workload_params is not None else cls.Params()
            workload = cls(params, env, self.workload_rng)
        self.workload = workload
        self.steps = 0
        self.target = spec.max_resident
        self.stats = VMStats()
        self.tick = TickCounters()
        self.scan_credit = 0.0
        self.scan_a, self.scan_b, self.scan_pos = 1, 0, n  # forces a new permutation
        self.vm_id = -1  # set when attached to a host
        self.group_id = 0
        self._evict_res = np.zeros(gk.N_RES, dtype=np.int64)
        self._img: np.ndarray | None = None  # content keys of the image pages
        self._fast: tuple | None = None  # fast path's per-host views and buffers

    # ------------------------------------------------------------------ attach
    @property
    def overhead_pages(self) -> int:
        return self.spec.overhead_pages

    @property
    def balloon_cap(self) -> int:
        """Most pages the balloon may hold (:func:`hosts.balloon.balloon_cap`)."""
        sp = self.spec
        return balloon.balloon_cap(
            sp.n_pages, sp.pinned_pages + self.guest.n_kernel, self.balloon_max_fraction, sp.balloon
        )

    # ------------------------------------------------------------------ one tick
    def plan_step(self) -> SplitPlan | None:
        """The next step as a plan for :mod:`hosts.tick_steps` (its counts drawn now), or
        None: take :meth:`run_step`.  Only on the fast path, after boot, for workloads that
        plan (:meth:`workloads.patterns.Workload.plan`)."""
        if not self.fast_path:
            return None
        return self.workload.plan(self.steps)

    def run_step(self, mem: HostMemory, make_room: MakeRoom) -> Accesses:
        """Run the workload's next step through guest and VMM; return its accesses."""
        if self.steps == 0 and self.guest.n_kernel:
            self._boot_kernel(mem, make_room)
        acc = self.workload.step(self.steps)
        self.steps += 1
        self.apply(mem, make_room, acc)
        return acc

    def _boot_kernel(self, mem: HostMemory, make_room: MakeRoom) -> None:
        """The guest kernel writes its structures at boot: its pages hold machine frames
        from then on (private content: keys from the seed and the VM's name)."""
        ppns = self.guest.kernel_pages()
        keys = derived_keys(stable_hash64("kernel", self.sim.seed, self.name), ppns)
        # In chunks, as any step: on a small host the kernel alone may not fit at once.
        step = mem.chunk_cap(len(ppns))
        for lo in range(0, len(ppns), step):
            chunk = ppns[lo : lo + step]
            need = mem.frames_needed(self.vm_id, _EMPTY, chunk)
            if need > mem.n_free:
                make_room(need, self)
            mem.write(self.vm_id, chunk, page_bytes(keys[lo : lo + step], self.sim.content_bytes))

    def apply(
        self, mem: HostMemory, make_room: MakeRoom, acc: Accesses, evicted: bool = False
    ) -> None:
        """Apply one step's accesses, in chunks small enough for the guest's memory.

        Deduplication: the last write to a page wins, a page read and written is a write.
        With ``fast_path`` the common step is one compiled call (deduplication and all,
        :func:`hosts.vm_kernel.step`); otherwise, or when it declines, the accesses are
        deduplicated here and applied chunk by chunk.  ``evicted``: the batched steps
        (:mod:`hosts.tick_steps_kernel`) found the step in one chunk, short of guest
        pages, and the guest has already evicted for it (what :meth:`make_guest_room`
        does here): the step goes on from there.
        """
        n = self.spec.n_pages
        wr = np.asarray(acc.writes, dtype=np.int64)
        keys = np.asarray(acc.write_keys, dtype=np.uint64)
        reads = np.asarray(acc.reads, dtype=np.int64)
        self.tick.accesses += acc.count
        self.tick.disk += acc.disk_reads  # file I/O the workload could not cache
        g = self.guest
        # A chunk must fit both the guest's memory and the host's: all its pages are
        # backed at once, so a chunk larger than the frames the host can free (all but
        # overheads and pinned pages) could never be served.
        cap = mem.chunk_cap(g.room)
        try_fast, status = self.fast_path, vk.OK
        scratch = mem.step_buffers(n)[0]
        if evicted:
            rd, wr, keys = vk.dedup(reads, wr, keys, scratch)
            self._apply_chunk(mem, make_room, rd, wr, keys, True, evicted=True)
            return
        if try_fast:
            status = self._apply_fast(mem, make_room, (reads, wr, keys, scratch, cap))
            if status == vk.OK:
                return
            # CHUNK: chunk by chunk; EVICT: evict, then the kernel; BALLOON, RANGE: the
            # general path, as is.
            try_fast = status in (vk.CHUNK, vk.EVICT)
        if self.fast_path and status != vk.RANGE:
            rd, wr, keys = vk.dedup(reads, wr, keys, scratch)
        else:  # (a page out of range: numpy's indexing raises, or wraps as it always did)
            rd, wr, keys = vm_general.dedup(reads, wr, keys, n)
        if len(rd) + len(wr) <= cap:
            self._apply_chunk(mem, make_room, rd, wr, keys, try_fast, status == vk.EVICT)
            return
        # More distinct pages than the guest can hold at once: page ranges of <= cap.
        # rd and wr are sorted and disjoint: their union is a merge (np.union1d goes
        # through np.unique, pathologically slow on this numpy for large arrays).
        # The cap is taken again before each chunk: first touches and COW breaks of the
        # previous ones use up free frames + free swap slots (HostMemory.chunk_cap).
        touched = np.sort(np.concatenate([rd, wr]))
        lo = 0
        while lo < len(touched):
            hi = min(lo + cap, len(touched))
            first, last_p = touched[lo], touched[hi - 1]
            r0, r1 = np.searchsorted(rd, [first, last_p + 1])
            w0, w1 = np.searchsorted(wr, [first, last_p + 1])
            self._apply_chunk(mem, make_room, rd[r0:r1], wr[w0:w1], keys[w0:w1], try_fast)
            lo = hi
            cap = mem.chunk_cap(g.room)

    def _apply_chunk(
        self,
        mem: HostMemory,
        make_room: MakeRoom,
        rd: np.ndarray,
        wr: np.ndarray,
        keys: np.ndarray,
        try_fast: bool,
        must_evict: bool = False,
        evicted: bool = False,
    ) -> None:
        """Sorted, disjoint reads ``rd`` and writes ``wr`` (guest virtual pages).

        With ``try_fast``, a chunk that needs guest eviction gets it here (the general
        path's own eviction step) and then goes through the kernel after all;
        ``must_evict``: the kernel already said so for this chunk; ``evicted``: the guest
        has already evicted for it (the batched steps).
        """
        if try_fast:
            status = vk.EVICT if must_evict else self._apply_fast(mem, make_room, (rd, wr, keys))
            if status == vk.EVICT and not evicted:
                self.make_guest_room(mem, rd, wr)
                evicted = True
                status = self._apply_fast(mem, make_room, (rd, wr, keys))
            if status == vk.OK:
                return
        vm_general.apply_chunk(self, mem, make_room, rd, wr, keys, evicted)

    def make_guest_room(self, mem: HostMemory, rd: np.ndarray, wr: np.ndarray) -> None:
        """Evict (clock) as many guest pages as the chunk's misses need beyond the free
        ones, sparing the chunk's resident pages."""
        g = self.guest
        short, protect = gk.room_needed(g.vstate, g.v2p, rd, wr, g.n_free)
        if short > 0:
            self.guest_evict(mem, g.choose_victims(short, protect))

    def image_key_array(self) -> np.ndarray:
        """Content keys of this VM's image pages (``uint64[n_image]``, read-only;
        :func:`workloads.images.vm_image_keys`: seed, image and VM name only)."""
        if self._img is None:
            sp = self.spec
            self._img = vm_image_keys(sp.image, self.sim.seed, sp.name, self.layout.n_image)
        return self._img

    def _apply_fast(self, mem: HostMemory, make_room: MakeRoom, head: tuple) -> int:
        """One compiled call; return its status (nothing changed unless ``OK``).

        ``head``: ``(reads, writes, keys, scratch, cap)`` -- raw accesses, for
        :func:`hosts.vm_kernel.step` -- or ``(rd, wr, keys)`` -- one deduplicated
        chunk, for :func:`hosts.vm_kernel.apply_chunk`.  When the host is short of
        frames, ``make_room`` frees them and the kernel runs again, as the general path
        does.
        """
        kernel = vk.step if len(head) == 5 else vk.apply_chunk
        g, gs, pm, fr, sw = self.guest, self.guest.swap, self.pmap, mem.frames, mem.swap
        img_keys = self._img if self._img is not None else self.image_key_array()
        if self._fast is None or self._fast[0] is not fr.content:  # per host (migration)
            self._fast = (
                fr.content,
                vk.word_view(fr.content),
                word_table(-(-self.sim.content_bytes // 8)),
                np.empty(vk.N_RES, dtype=np.int64),
            )
        _, words, table, res = self._fast
        to_free = mem.step_buffers(self.spec.n_pages)[1]  # (one COW-freed frame per page)
        while True:
            kernel(
                *head,
                g.vstate, g.v2p, g.p2v, g.clean, g.pref, g.free_stack, g.n_free,
                gs.content, gs.free_stack, gs.n_free,
                pm.state, pm.loc, pm.counts, pm.bits,
                fr.content, words, fr.refcount, fr.owner_vm, fr.owner_ppn, fr.free_stack,
                fr.n_free,
                sw.content, sw.used, sw.free_stack, sw.n_free, sw.tier,
                mem.zero, table, self.vm_id,
                img_keys, to_free, res,
            )  # fmt: skip
            r = res.tolist()
            if r[vk.ST] != vk.FRAMES:
                break
            # make_room may VMM-swap pages of this very chunk: the kernel counts again.
            make_room(r[vk.NEED] - mem.n_free, self)
        if r[vk.ST] != vk.OK:
            return r[vk.ST]
        self.absorb(mem, r, to_free)
        if r[vk.IN_ZIP]:
            mem.settle_zip()  # decompressed pages leave their cache's frames
        return vk.OK

    def absorb(self, mem: HostMemory, r: list[int], to_free: np.ndarray) -> None:
        """Take in a kernel's results ``r`` (an applied chunk or step, ``res.tolist()``):
        this tick's counters, the free counts it changed, and the frames whose last
        reference it left in ``to_free`` (freed here, updating the sharing index).  The
        caller settles the compression caches (:meth:`HostMemory.settle_zip`) once its
        kernel's rows are all absorbed (a batched call's later rows carry the free-frame
        count the kernel left)."""
        c = self.tick
        c.disk += r[vk.DISK]
        c.guest_swapins += r[vk.GUEST_IN]
        c.minor += r[vk.MINOR]
        c.first_touch += r[vk.FIRST]
        c.cow += r[vk.COW]
        c.vmm_swapins += r[vk.VMM_IN]
        c.sample += r[vk.SAMPLE]
        if r[vk.IN_CACHE] or r[vk.IN_ZIP]:
            c.cache_swapins += r[vk.IN_CACHE]
            c.decompressions += r[vk.IN_ZIP]
        self.sampler.touched += r[vk.SAMPLE]
        g, gs = self.guest, self.guest.swap
        g.n_free = r[vk.G_FREE]
        gs.n_free = r[vk.GS_FREE]
        gs.n_used -= r[vk.GS_TAKEN]
        mem.frames.n_free = r[vk.F_FREE]  # (the swap's free counts: in swap.tier)
        self.pmap.n_zero_shared += r[vk.ZERO_D]
        if r[vk.N_FREE]:
            mem.decref(to_free[: r[vk.N_FREE]])  # last references of COW-broken frames

    def image_keys_of(self, vpns: np.ndarray) -> np.ndarray:
        return self.image_key_array()[np.asarray(vpns, dtype=np.int64)]

    def guest_evict(self, mem: HostMemory, victims: np.ndarray) -> None:
        """The guest pages out ``victims`` (physical pages): dirty ones to its swap, in one
        compiled call (:func:`hosts.guest_os_kernel.evict`; its numpy oracle is
        ``tests/oracles/guest_evict.py``)."""
        if not len(victims):
            return
        g = self.guest
        gs, res = g.swap, self._evict_res
        while True:
            gk.evict(
                victims, g.p2v, g.v2p, g.vstate, g.clean, g.pref, g.free_stack,
                g.n_free, gs.content, gs.free_stack, gs.n_free, self.pmap.state,
                self.pmap.loc, mem.frames.content, mem.swap.content, mem.swap.tier, res,
            )  # fmt: skip
            r = res.tolist()
            if r[gk.R_ST] != gk.SWAP_SLOTS:
                break
            gs.reserve(r[gk.R_NEED])
        self.absorb_eviction(
            r[gk.R_ST] == gk.BALLOONED,
            r[gk.R_G_FREE], r[gk.R_GS_FREE], r[gk.R_SWAPPED], r[gk.R_VMM_IN],
            r[gk.R_IN_CACHE], r[gk.R_IN_ZIP],
        )  # fmt: skip

    def absorb_eviction(
        self,
        ballooned: bool,
        g_free: int,
        gs_free: int,
        swapped: int,
        vmm_in: int,
        in_cache: int,
        in_zip: int,
    ) -> None:
        """Take in a guest eviction's outcome (:func:`hosts.guest_os_kernel.evict`, here
        or in the batched steps): free counts after it, dirty pages written to the guest's
        swap, victims read back from the VMM's swap first (double paging; ``in_cache`` /
        ``in_zip`` of them from a fast tier, not the disk).  ``ballooned``: the eviction
        stopped at a victim the balloon holds -- a guest never reads one (an invariant
        broken, raised here for both callers)."""
        if ballooned:
            raise InvariantError("reading a ballooned page")
        g, gs = self.guest, self.guest.swap
        g.n_free, gs.n_free = g_free, gs_free
        gs.n_used += swapped
        fast = in_cache + in_zip
        self.tick.disk += vmm_in - fast + swapped
        self.tick.vmm_swapins += vmm_in - fast
        if fast:
            self.tick.cache_swapins += in_cache
            self.tick.decompressions += in_zip
        self.stats.guest_swapouts += swapped

    # ------------------------------------------------------------------ reclamation
    def inflate_balloon(self, mem: HostMemory, k: int) -> int:
        """Take ``k`` pages from the guest (:func:`hosts.balloon.inflate`)."""
        evict = lambda victims: self.guest_evict(mem, victims)  # noqa: E731
        return balloon.inflate(self.guest, mem, self.vm_id, k, self.balloon_cap, evict)

    def deflate_balloon(self, mem: HostMemory, k: int) -> int:
        """Give ``k`` ballooned pages back (:func:`hosts.balloon.deflate`)."""
        return balloon.deflate(self.guest, mem, self.vm_id, k)

    def swap_out_random(self, mem: HostMemory, k: int, frames_first: bool = False) -> int:
        """VMM swapping: ``k`` random resident, unpinned pages (ESX picks at random); fewer
        if the host's swap has fewer free slots.  Each page is first offered to page
        sharing (:meth:`HostMemory.page_out`); returns the frames freed.

        ``frames_first`` (emergency swapping, which needs frames): pick among privately
        mapped pages first -- swapping out one page of a shared frame uses a slot but
        frees no frame, which with swap nearly full could use up the slots the frames
        must come from -- and only then among shared ones.
        """
        st = self.pmap.state
        unpinned = ~self.guest.pinned
        if frames_first:
            own = np.flatnonzero((st == ps.MAPPED) & unpinned)
            k = min(k, mem.swap.n_free)
            if k <= 0:
                return 0
            if len(own) >= k:
                pick = np.sort(own[self.vmm_rng.choice(len(own), size=k, replace=False)])
                return self._page_out(mem, pick)
            n = self._page_out(mem, own) if len(own) else 0
            return n + self.swap_out_random(mem, k - n)
        cand = np.flatnonzero(((st == ps.MAPPED) | (st == ps.SHARED)) & unpinned)
        k = min(k, len(cand), mem.swap.n_free)  # never ask swap for more than it has free
        if k <= 0:
            return 0
        pick = np.sort(cand[self.vmm_rng.choice(len(cand), size=k, replace=False)])
        return self._page_out(mem, pick)

    def _page_out(self, mem: HostMemory, pick: np.ndarray) -> int:
        """Page ``pick`` out, sharing first; count what sharing took; frames freed."""
        n, s = mem.page_out(self.vm_id, pick)
        self.stats.swap_shared += s.merged + s.hint_hits
        return n

    def scan_candidates(self, n: int) -> np.ndarray:
        """The next ``n`` pages of this VM's random scan order (an affine permutation).

        Each pass over the VM uses a fresh permutation ``p(i) = (a i + b) mod P`` with
        ``gcd(a, P) = 1``: random order, no per-page memory.
        """
        P = self.spec.n_pages
        out = []
        while n > 0:
            if self.scan_pos >= P:
                a = int(self.vmm_rng.integers(1, max(P, 2)))
                while gcd(a, P) != 1:
                    a = int(self.vmm_rng.integers(1, max(P, 2)))
                self.scan_a, self.scan_b = a, int(self.vmm_rng.integers(0, P))
                self.scan_pos = 0
            take = min(n, P - self.scan_pos)
            i = np.arange(self.scan_pos, self.scan_pos + take, dtype=np.int64)
            out.append((self.scan_a * i + self.scan_b) % P)
            self.scan_pos += take
            n -= take
        if not out:
            return _EMPTY
        # A batch that runs into the next pass may meet a page twice: scan it once (the
        # sharing scan wants unique pages), in order of first appearance.
        cand = np.concatenate(out)
        if len(out) > 1:
            seen = np.zeros(P, dtype=bool)
            first = np.ones(len(cand), dtype=bool)
            # keep the first appearance of each page (the passes are permutations, so a
            # page repeats only across parts: mark parts in order)
            pos = 0
            for part in out:
                first[pos : pos + len(part)] = ~seen[part]
                seen[part] = True
                pos += len(part)
            cand = cand[first]
        return cand

    # ------------------------------------------------------------------ reporting
    @property
    def resident(self) -> int:
        return self.pmap.resident

    def check_invariants(self) -> None:
        self.guest.check_invariants()
        g, pm = self.guest, self.pmap
        bal = g.p2v == gos.BALLOON
        if not np.array_equal(bal, pm.state == ps.BALLOONED):
            raise AssertionError(f"{self.name}: guest balloon != VMM ballooned pages")
        if (pm.state[g.pinned] == ps.VMM_SWAPPED).any():
            raise AssertionError(f"{self.name}: a pinned page was VMM-swapped")
        if self.balloon_cap < g.n_ballooned:
            raise AssertionError(f"{self.name}: balloon above its cap")


def vm_page_contents(
    vm: VirtualMachine, mem: HostMemory, vpns: np.ndarray | None = None
) -> np.ndarray:
    """What the guest would read at every *virtual* page right now, or only at the
    virtual pages ``vpns`` (no side effects; tests, the replay digest, the page checker).

    Resident pages read through the VMM; swapped pages from the guest swap disk; dropped
    image pages from the image; never-touched pages are zeros.
    """
    g = vm.guest
    v = np.arange(g.n_pages, dtype=np.int64) if vpns is None else np.asarray(vpns, np.int64)
    vs = g.vstate[v]
    out = np.zeros((len(v), vm.sim.content_bytes), dtype=np.uint8)
    res = np.flatnonzero(vs == gos.RESIDENT)
    out[res] = mem.read_bytes(vm.vm_id, g.v2p[v[res]].astype(np.int64))
    sw = np.flatnonzero(vs == gos.SWAPPED)
    out[sw] = g.swap.content[g.slots_of(v[sw])]
    dr = np.flatnonzero(vs == gos.DROPPED)
    out[dr] = page_bytes(vm.image_keys_of(v[dr]), vm.sim.content_bytes)
    return out


def vm_page_hashes(vm: VirtualMachine, mem: HostMemory, vpns: np.ndarray) -> np.ndarray:
    """xxh3-64 of what the guest would read at the virtual pages ``vpns`` -- of each row
    :func:`vm_page_contents` gives -- hashed where the bytes are (frames, VMM swap, guest
    swap disk) without copying them (the per-tick digests of recording and replay)."""
    g, pm = vm.guest, vm.pmap
    v = np.asarray(vpns, dtype=np.int64)
    cb = vm.sim.content_bytes
    out = np.full(len(v), np.uint64(xxhash.xxh3_64_intdigest(bytes(cb))), dtype=np.uint64)
    vs = g.vstate[v]
    res = np.flatnonzero(vs == gos.RESIDENT)
    if len(res):
        ppn = g.v2p[v[res]].astype(np.int64)
        st, loc = pm.state[ppn], pm.loc[ppn].astype(np.int64)
        if (st == ps.BALLOONED).any():
            raise InvariantError("reading a ballooned page")
        fr = np.flatnonzero((st == ps.MAPPED) | (st == ps.SHARED))
        order = fr[np.argsort(loc[fr], kind="stable")]  # frames in address order: fewer misses
        out[res[order]] = hash_pages(mem.frames.content, loc[order])
        sw = st == ps.VMM_SWAPPED
        out[res[sw]] = hash_pages(mem.swap.content, loc[sw])
    sw = np.flatnonzero(vs == gos.SWAPPED)
    if len(sw):
        out[sw] = hash_pages(g.swap.content, g.slots_of(v[sw]))
    dr = np.flatnonzero(vs == gos.DROPPED)
    if len(dr):
        out[dr] = hash_pages(page_bytes(vm.image_keys_of(v[dr]), cb), np.arange(len(dr)))
    return out
