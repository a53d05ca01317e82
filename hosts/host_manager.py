"""One host's VMM memory manager: the tick loop over its VMs and per-host policy.

Scope, per tick, in this fixed order (VMs always in name order):

1. working-set sampling: at each period boundary close the old period, mark a new sample;
2. each VM runs one workload step (unless blocked in the LOW state or paused); with large
   pages (``policy.large_pages``), the large pages first touched in the step are backed
   whole (:meth:`HostMemoryManager.back_large_pages`);
3. the page-sharing scanner visits pages at ``scan_vm_pages_per_s`` per VM, capped at
   ``scan_host_pages_per_s`` for the host (the VM order rotates each tick for fairness);
   then the index's own memory is charged to the host (:meth:`charge_index`); from the
   free-memory state ``policy.large_page_break_state`` on, it breaks the large pages it
   visits (:mod:`hosts.large_pages`); on a KVM-style host KSM scans instead
   (:mod:`hosts.sharing.ksm`), and free page reporting (:mod:`hosts.free_page_reporting`,
   if on) unbacks the pages guests report free;
4. reclamation by free-memory state (:mod:`hosts.reclamation`, victims chosen by the
   ``reclamation`` policy): balloon in SOFT (swap a VM only if it cannot be ballooned),
   swap (no ballooning) in HARD, and in LOW also block VMs above target on the next tick;
   in HIGH, balloons of VMs below target deflate; every page swapped is first offered to
   page sharing;
5. one metrics row per VM.

Targets come from the allocation policy -- set by the coordinator (:meth:`set_targets`)
or, for a host on its own, :meth:`self_allocate` (:func:`hosts.allocation.allocate`).
Host-side policies (:mod:`vmmsim.policies`: reclamation victims, the working-set
estimator) are resolved from :class:`hosts.specs.HostPolicy` when the host is built.

Not covered: migration transfer and time across hosts (``cluster/``).
"""

from __future__ import annotations

from array import array
from time import thread_time
from typing import Any

import numpy as np
import xxhash
from vmmsim.hosts import page_state as ps
from vmmsim.hosts import reclamation
from vmmsim.hosts.allocation import AllocationInput, allocate
from vmmsim.hosts.errors import OutOfFrames
from vmmsim.hosts.free_memory import MemState
from vmmsim.hosts.free_page_reporting import FPR_COLUMNS, FreePageReporter
from vmmsim.hosts.host_memory import HostMemory, ScanStats, index_frames_for
from vmmsim.hosts.large_pages import LargePages, breaks_at, region_pages
from vmmsim.hosts.metrics_rows import MetricRows
from vmmsim.hosts.min_free import thresholds_for
from vmmsim.hosts.phys_map import ACCESSED, clear, flag
from vmmsim.hosts.sharing import scan as sk
from vmmsim.hosts.sharing.ksm import KSM_COLUMNS, KsmParams, KsmScanner
from vmmsim.hosts.specs import HostPolicy, HostSpec, SimParams, VMSpec
from vmmsim.hosts.tick_steps import TickSteps
from vmmsim.hosts.vm import TickCounters, VirtualMachine, fault_costs, vm_page_hashes

from vmmsim.policies import resolve_callable

#: Parts of a tick whose wall time ``HostMemoryManager.phase_s`` adds up.
PHASES = ("sampling", "vm_steps", "sharing_scan", "reclaim", "accounting")


class HostMemoryManager:
    """The memory manager of one physical host.

    ``batch_steps`` (default on) runs a tick's planned VM steps through
    :mod:`hosts.tick_steps` (many VMs per compiled call); off, every VM steps on its own
    (the reference the tests compare with).  Both give the same state, bit for bit.
    """

    batch_steps: bool = True

    def __init__(self, spec: HostSpec, sim: SimParams, policy: HostPolicy) -> None:
        self.spec = spec
        self.name = spec.name
        self.sim = sim
        self.policy = policy
        self.mem = HostMemory(
            spec.n_frames, spec.n_swap_slots, sim.content_bytes, policy.swap_cache_pages
        )
        if policy.compression != "off":
            zswap = policy.compression == "zswap"
            self.mem.configure_compression(
                policy.compression,
                policy.zswap_max_pool_percent if zswap else policy.compression_cache_pct,
                policy.zswap_accept_threshold_percent if zswap else 100.0,
            )
        self.vms: dict[str, VirtualMachine] = {}
        self.order: list[str] = []
        self.groups: dict[str, int] = {}
        self.mstate = MemState.HIGH
        self.tick = 0
        self.scan_credit = 0.0
        self.period_ticks = max(1, round(policy.sample_period_s / sim.tick_s))
        self.costs = fault_costs(policy)
        # The free-memory state model: the paper's thresholds, or vSphere 6's five states
        # from this host's configured memory (hosts.min_free; fixed for the run).
        self.memory_mb = spec.memory_mb or spec.n_frames * sim.page_size / 2**20
        self.thresholds = thresholds_for(policy, self.memory_mb)
        # Free pages at the high threshold: the reclaim goal is max(0, this - free), so
        # reclaim_goal_pages (exact decimal arithmetic, slow) runs once, not every tick.
        self._free_target = self.thresholds.goal_pages(0, spec.n_frames)
        self.actions: frozenset[str] = frozenset()  # the last reclaim's actions (min_free)
        self.paused: dict[str, float] = {}
        # CPU seconds of this thread per part of a tick: timing.json's profile (CPU, not
        # wall time, so a host that waits for a core is not charged); never in results.
        self.phase_s = dict.fromkeys(PHASES, 0.0)
        self.blocked: set[str] = set()
        # Live migration (hosts.migration_host): staging of VMs arriving here, and page
        # bytes read ahead for VMs leaving (kept only within one pre-copy round).
        self.incoming: dict[str, Any] = {}
        self.outgoing: dict[tuple[str, int], Any] = {}
        self.emergency_swaps = 0
        # ticks per state, indexed by state value (4 for the paper's model, 5 with CLEAR)
        self.state_ticks = np.zeros(max(self.thresholds.states) + 1, dtype=np.int64)
        # shared pages after each tick (the summary's time to 90% of peak sharing): packed
        # int64s, 8 bytes a tick instead of a list's ~36
        self.shared_series = array("q")
        self.tick_saved = 0  # saved pages at the end of the last tick (metrics)
        self.large_first_break: int | None = None  # first tick a large page broke here
        # Recording (cluster/recording.py): off unless asked, so normal runs pay nothing.
        self.digest_every_tick = False  # append digest() to tick_digests after each tick
        self.tick_digests: list[str] = []
        self.access_log: list[tuple[str, int, int, Any]] | None = None  # (vm, step, tick, acc)
        self.tick_steps = TickSteps()  # the tick's VM steps, batched (hosts.tick_steps)
        # Host-side policies (vmmsim.policies); the built-in estimator runs inline (None).
        self.reclaim_policy = resolve_callable("reclamation", policy.reclamation)
        self.estimator = (
            None
            if policy.working_set == "esx_sampler"
            else (resolve_callable("working_set", policy.working_set), policy.working_set)
        )
        # KVM-style host (issue 18 item 6): KSM in place of the ESX scan, free page
        # reporting; both None (off) by default.
        self.ksm: KsmScanner | None = None
        if policy.sharing_scanner == "ksm":
            self.ksm = KsmScanner(ksm_params(policy), spec.n_frames)
            self.mem.share_before_swap = False
        self.reporter: FreePageReporter | None = None
        if policy.free_page_reporting:
            self.reporter = free_page_reporter(policy, sim)

    def extra_columns(self) -> dict[str, str]:
        """Metrics columns beyond :data:`hosts.metrics_rows.COLUMNS` (KSM, reporting)."""
        extra: dict[str, str] = {}
        if self.ksm is not None:
            extra.update(KSM_COLUMNS)
        if self.reporter is not None:
            extra.update(FPR_COLUMNS)
        return extra

    # ------------------------------------------------------------------ VMs
    def boot_vm(self, spec: VMSpec, workload: Any = None) -> VirtualMachine:
        """Boot a VM (``workload``: instead of its generator, e.g. a replayed stream)."""
        vm = VirtualMachine(
            spec, self.sim, self.policy.sample_pages, self.policy.balloon_max_fraction, workload
        )
        self.attach(vm)
        return vm

    def attach(self, vm: VirtualMachine) -> None:
        if vm.name in self.vms:
            raise ValueError(f"{self.name}: VM {vm.name} is already here")
        if vm.overhead_pages > self.mem.n_free:
            raise OutOfFrames(f"{self.name}: no room for the overhead of {vm.name}")
        group = self.groups.setdefault(vm.spec.sharing_group, len(self.groups))
        vm.group_id = group
        if self.policy.large_pages and vm.pmap.large is None:  # booted, or arriving
            vm.pmap.large = LargePages(vm.spec.n_pages, region_pages(self.sim.page_size))
        vm.vm_id = self.mem.attach(vm.pmap, group, vm.spec.sharing, vm.overhead_pages)
        vm.sampler.estimator = self.estimator
        self.vms[vm.name] = vm
        self.order = sorted(self.vms)

    def detach(self, name: str) -> VirtualMachine:
        """Remove a VM whose pages have all been released (after migrating away)."""
        vm = self.vms.pop(name)
        self.mem.detach(vm.vm_id)
        self.order = sorted(self.vms)
        vm.vm_id = -1
        if self.ksm is not None:
            self.ksm.forget(name)
        if self.reporter is not None:
            self.reporter.forget(name)
        self.paused.pop(name, None)
        self.blocked.discard(name)
        return vm

    # ------------------------------------------------------------------ allocation
    def available_pages(self) -> int:
        """Guest pages the VMs may hold: all frames but overheads and the HIGH free
        margin (the state model's ``reserve``: ``free_high``, or vSphere 6's minFree),
        plus what page sharing saves (a shared frame backs several guest pages, and
        targets are in guest pages, so sharing savings raise everyone's targets).
        The frames of the compression caches are taken off like overheads: compressed
        pages are not resident, their memory is nobody's target."""
        n = self.spec.n_frames
        overhead = sum(vm.overhead_pages for vm in self.vms.values()) + self.mem.n_index_frames
        overhead += self.mem.n_zip_frames  # compressed pages' frames (0 unless compressing)
        kept = int(n * (1.0 - self.thresholds.reserve))  # n less the HIGH margin
        kept += self._free_target - self.free_target()  # the part of it swap cannot cover
        return max(0, kept - overhead + self.saved_pages())

    def free_target(self) -> int:
        """Free frames reclamation aims for: the HIGH margin, but never more than the
        host's memory + swap leave over after every VM's configured size + overhead.

        Admission promises that memory + swap hold every page of every VM (its configured
        size, whatever its ``max_mb``); a margin larger than what is left over could only
        be kept by swapping more than swap holds (with ``free_high`` large and VMs that
        fit exactly), so the margin shrinks instead.
        """
        slack = self._uncommitted() - self.mem.n_index_frames
        return max(0, min(self._free_target, slack))

    def _uncommitted(self) -> int:
        """Frames + swap slots left after every VM's configured size and overhead."""
        committed = sum(v.spec.n_pages + v.overhead_pages for v in self.vms.values())
        return self.spec.n_frames + self.spec.n_swap_slots - committed

    def charge_index(self) -> None:
        """Charge the sharing index's memory to this host (after each tick's scan): 16
        bytes (``policy.index_entry_bytes``) per shared or hint entry, in whole frames
        (:func:`hosts.host_memory.index_frames_for`).  Never more than memory + swap leave
        over after every VM's configured size + overhead, less admission's two spare
        pages, so the charge can never break admission's promise that every page fits
        (a host committed to the last page charges less than its index takes)."""
        ix = self.mem.index
        want = index_frames_for(
            ix.n_shared_frames() + ix.n_hints(), self.policy.index_entry_bytes, self.sim.page_size
        )
        self.mem.charge_index(max(0, min(want, self._uncommitted() - 2)))

    def shared_pages(self) -> int:
        """Guest pages backed by shared frames, over all VMs."""
        return sum(int(v.pmap.counts[ps.SHARED]) for v in self.vms.values())

    def saved_pages(self) -> int:
        """Guest pages backed by shared frames minus those frames (what sharing saves)."""
        return self.shared_pages() - self.mem.index.n_shared_frames()

    def allocation_input(self) -> AllocationInput:
        vms = [self.vms[n] for n in self.order]
        return AllocationInput(
            shares=np.array([v.spec.shares for v in vms], dtype=np.float64),
            pages=np.array([v.resident for v in vms], dtype=np.float64),
            active=np.array([v.sampler.estimate for v in vms], dtype=np.float64),
            min_pages=np.array(
                [max(v.spec.min_pages, v.spec.pinned_pages) for v in vms], dtype=np.int64
            ),
            max_pages=np.array([v.spec.max_resident for v in vms], dtype=np.int64),
            available_pages=self.available_pages(),
            tax_rate=self.policy.tax_rate,
        )

    def set_targets(self, targets: dict[str, int]) -> None:
        for name, t in targets.items():
            self.vms[name].target = int(t)

    def self_allocate(self) -> dict[str, int]:
        """Targets for this host's VMs from its own memory alone."""
        if not self.vms:
            return {}
        t = allocate(self.allocation_input())
        targets = dict(zip(self.order, t.tolist(), strict=True))
        self.set_targets(targets)
        return targets

    def set_policy(self, policy: HostPolicy) -> None:
        """Replace the policy knobs between ticks (a scheduled change, ``[[events]]``):
        everything derived from them is derived again, as in ``__init__``; the VMs take
        the new sample size and balloon limit.  Takes effect from the next tick."""
        self.policy = policy
        self.period_ticks = max(1, round(policy.sample_period_s / self.sim.tick_s))
        self.costs = fault_costs(policy)
        self.thresholds = thresholds_for(policy, self.memory_mb)
        self._free_target = self.thresholds.goal_pages(0, self.spec.n_frames)
        self.reclaim_policy = resolve_callable("reclamation", policy.reclamation)
        self.estimator = (
            None
            if policy.working_set == "esx_sampler"
            else (resolve_callable("working_set", policy.working_set), policy.working_set)
        )
        if self.ksm is not None:  # (the scanner kind and the cap are fixed at boot)
            self.ksm.params = ksm_params(policy)
        for vm in self.vms.values():
            vm.sampler.n_sample = policy.sample_pages
            vm.sampler.estimator = self.estimator
            vm.balloon_max_fraction = policy.balloon_max_fraction

    # ------------------------------------------------------------------ time
    def run_ticks(self, start: int, n: int, self_allocate_every: int = 0) -> dict:
        """Run ticks ``start .. start+n-1``; return their metrics as numpy columns."""
        if start != self.tick:
            raise ValueError(f"{self.name}: asked to run tick {start}, next is {self.tick}")
        rows = MetricRows(self.extra_columns())
        for t in range(start, start + n):
            if self_allocate_every and t % self_allocate_every == 0:
                self.self_allocate()
            self._tick(t, rows)
        return rows.columns()

    def _tick(self, t: int, rows: MetricRows) -> None:
        mem = self.mem
        ph = self.phase_s
        t0 = thread_time()
        self._sample_boundary()
        t1 = thread_time()
        ph["sampling"] += t1 - t0
        stepping: list[VirtualMachine] = []  # in the host's order
        for name in self.order:
            vm = self.vms[name]
            vm.tick = c = TickCounters()
            if vm.pmap.large is not None:
                vm.pmap.large.tick_broken = 0
            pause = self.paused.pop(name, 0.0)
            if name in self.blocked:
                c.paused = 1.0
                c.blocked = True
                vm.stats.blocked_ticks += 1
                if pause:
                    self.paused[name] = pause  # a blocked tick does not use up a pause
            elif pause >= 1.0:
                c.paused = 1.0
                vm.stats.paused_ticks += 1
                if pause > 1.0:
                    self.paused[name] = pause - 1.0  # longer pauses carry over
            else:
                c.paused = pause
                stepping.append(vm)
                vm.sampler.ran += 1  # the period clock counts ticks the VM runs
        written: list[tuple[str, Any]] = []  # (vm, pages written) for the tick's digest
        if self.access_log is None and not self.digest_every_tick and self.batch_steps:
            self.tick_steps.run(mem, stepping, self._make_room)  # planned steps batched
        else:  # one VM at a time (recording, replay: every step's accesses are known)
            for vm in stepping:
                acc = vm.run_step(mem, self._make_room)
                if self.access_log is not None:
                    self.access_log.append((vm.name, vm.steps - 1, t, acc))
                written.append((vm.name, acc.writes))
        if self.policy.large_pages:
            self.back_large_pages()
        t2 = thread_time()
        ph["vm_steps"] += t2 - t1
        if self.ksm is None:
            self._scan(t)
        else:
            self.ksm.run(self)
        self.charge_index()
        if self.reporter is not None:
            self.reporter.report(self, t)
        t3 = thread_time()
        ph["sharing_scan"] += t3 - t2
        self._reclaim()
        t4 = thread_time()
        ph["reclaim"] += t4 - t3
        self.state_ticks[self.mstate] += 1
        if self.large_first_break is None and self.policy.large_pages:
            if any(v.pmap.large.tick_broken for v in self.vms.values() if v.pmap.large):
                self.large_first_break = t
        shared = self.shared_pages()
        self.shared_series.append(shared)
        self.tick_saved = shared - self.mem.index.n_shared_frames()
        self.tick = t + 1
        host_part = rows.host_part(self, t)
        if self.ksm is not None:
            self.ksm_row = self.ksm.stats(self)
        for name in self.order:
            self._account(self.vms[name], t, rows, host_part)
            if rows.extra:
                rows.add_extra(self, self.vms[name])
        if self.digest_every_tick:
            self.tick_digests.append(self.digest(written=written))
        ph["accounting"] += thread_time() - t4

    def _sample_boundary(self) -> None:
        """Close the sampling period of each VM that has run ``period_ticks`` ticks in it
        and mark a new sample; a VM's first period starts at its first tick here.
        Periods are in VM execution time (``sampler.ran``, one per tick the VM steps): a
        blocked VM's clock, or a VM's paused for a whole tick, stands still, so each VM
        has its own boundary."""
        for name in self.order:
            vm = self.vms[name]
            s = vm.sampler
            if 0 <= s.ran < self.period_ticks:
                continue
            st = vm.pmap.state
            alloc = np.flatnonzero((st == ps.MAPPED) | (st == ps.SHARED) | (st == ps.VMM_SWAPPED))
            bits = vm.pmap.bits
            if s.ran >= 0:
                s.end_period(float(flag(bits[alloc], ACCESSED).mean()) if len(alloc) else 0.0)
            s.start_period(bits, alloc, vm.vmm_rng)  # the clock restarts at 0
            clear(bits, ACCESSED)

    def make_room(self, k: int, requester: VirtualMachine) -> None:
        """Free ``k`` frames now (:func:`hosts.reclamation.make_room`)."""
        reclamation.make_room(self, k, requester)

    _make_room = make_room  # the name the VM steps and older tests use

    def _scan(self, t: int) -> None:
        p = self.policy
        # vSphere 6's CLEAR "actively calls TPS" (hosts.min_free): the scan rates times
        # share_scan_clear_factor there (the state of the last reclaim; x * 1.0 == x)
        boost = p.share_scan_clear_factor if self.mstate == MemState.CLEAR else 1.0
        tick_s = self.sim.tick_s * boost
        host_rate = p.scan_host_pages_per_s * tick_s
        self.scan_credit = min(self.scan_credit + host_rate, host_rate + 1.0)
        names = [n for n in self.order if self.vms[n].spec.sharing]
        if not names:
            return
        breaking = self.policy.large_pages and breaks_at(self.mstate, p.large_page_break_state)
        r = t % len(names)
        vm_rate = p.scan_vm_pages_per_s * tick_s
        batch: list[tuple[VirtualMachine, int, np.ndarray]] = []  # (vm, n, candidates)
        for name in names[r:] + names[:r]:
            vm = self.vms[name]
            vm.scan_credit = min(vm.scan_credit + vm_rate, vm_rate + 1.0)
            n = int(min(vm.scan_credit, self.scan_credit))
            if n <= 0:
                continue
            vm.scan_credit -= n
            self.scan_credit -= n
            batch.append((vm, n, vm.scan_candidates(n)))
        if not p.large_pages:  # all VMs' batches in one compiled call
            res = self.mem.scan_many([vm.vm_id for vm, _, _ in batch], [c for _, _, c in batch])
            for (vm, n, _), row in zip(batch, res.tolist(), strict=True):
                vm.tick.scanned += n
                vm.stats.scanned += n
                _count_row(vm, row)
            return
        for vm, n, cand in batch:
            if vm.pmap.large is not None and vm.pmap.large.n_intact:
                vm.pmap.large.mark_seen(cand)  # hashed: hints kept for when they break
                if breaking:
                    cand = self._break_scanned(vm, cand)
            s = self.mem.scan(vm.vm_id, cand)
            vm.tick.scanned += n
            vm.stats.scanned += n
            _count_scan(vm, s)

    def _break_scanned(self, vm: VirtualMachine, cand: np.ndarray) -> np.ndarray:
        """Break the intact large pages among the scan's candidates ``cand`` (their pages
        the scanner has hashed, ``cand`` among them, are scanned at once,
        :meth:`HostMemory.break_large`); return the candidates outside them, left for the
        ordinary scan."""
        lp = vm.pmap.large
        regions = lp.regions_of(cand)
        regions = regions[lp.backed[regions]]  # (a region not backed yet has nothing)
        if not len(regions):
            return cand
        _count_scan(vm, self.mem.break_large(vm.vm_id, regions))
        return cand[~np.isin(cand // lp.region_pages, regions)]

    def back_large_pages(self) -> None:
        """Back the large pages the tick's steps touched first (:mod:`hosts.large_pages`):
        ESX backs a whole 2 MB page at the first touch of any 4 KB page in it (the
        zeroed rest is memory the guest has not asked for: large-page bloat).  VMs in
        name order, regions in address order, each while the host has the frames for it
        and is not in the break state or beyond (``policy.large_page_break_state``);
        the others are backed by 4 KB pages for good (ESX falls back to small pages when
        it cannot get a large page, and never promotes them later)."""
        pressure = breaks_at(self.mstate, self.policy.large_page_break_state)
        for name in self.order:
            vm = self.vms[name]
            lp = vm.pmap.large
            if lp is None:
                continue
            regions, need = lp.to_back(vm.pmap.state)
            if not len(regions):
                continue
            fit = 0
            if not pressure:
                fit = int(np.searchsorted(np.cumsum(need), self.mem.n_free, side="right"))
            if fit:
                self.mem.back_large(vm.vm_id, regions[:fit])
            if fit < len(regions):
                self.mem.break_large(vm.vm_id, regions[fit:], scan=False)

    def _reclaim(self) -> None:
        reclamation.reclaim(self, self.reclaim_policy, self.policy.reclamation)

    def _account(self, vm: VirtualMachine, t: int, rows: MetricRows, host_part: tuple) -> None:
        c = vm.tick
        st = vm.stats
        st.first_touch += c.first_touch
        st.sample_faults += c.sample
        st.cow_breaks += c.cow
        st.vmm_swapins += c.vmm_swapins
        st.cache_swapins += c.cache_swapins
        st.decompressions += c.decompressions
        st.guest_swapins += c.guest_swapins
        st.accesses += c.accesses
        tp = self.costs.throughput(self.sim.tick_s, c)
        st.work_done += tp
        st.ticks += 1
        rows.add(self, vm, tp, host_part)

    # ------------------------------------------------------------------ reports
    def summary(self) -> dict:
        """Totals for ``summary.json`` (plain data)."""
        mb = self.sim.page_size / 2**20
        shared_pages = self.shared_pages()
        shared_frames = self.mem.index.n_shared_frames()
        series = np.array(self.shared_series, dtype=np.int64)
        peak = int(series.max()) if len(series) else 0
        t90 = None
        if peak > 0:
            t90 = (int(np.argmax(series >= 0.9 * peak)) + 1) * self.sim.tick_s
        return {
            "memory_mb": self.spec.n_frames * mb,
            "free_mb": self.mem.n_free * mb,
            "shared_mb": shared_pages * mb,
            "shared_frames_mb": shared_frames * mb,
            "saved_mb": (shared_pages - shared_frames) * mb,
            "swap_used_mb": self.mem.swap.n_used * mb,
            "time_to_90pct_sharing_s": t90,
            "state_ticks": {
                s.name.lower(): int(self.state_ticks[s]) for s in self.thresholds.states
            },
            "emergency_swapped_pages": self.emergency_swaps,
            "vms": sorted(self.vms),
            **({"large_pages": self.large_page_summary()} if self.policy.large_pages else {}),
        } | self._kvm_summary()

    def _kvm_summary(self) -> dict:
        """KSM's counters and free page reporting's totals (only when on)."""
        out: dict = {}
        if self.ksm is not None:
            names = ("pages_shared", "pages_sharing", "pages_unshared", "pages_volatile")
            st = self.ksm.stats(self)
            out["ksm"] = dict(zip(names, st[:4], strict=True)) | {"full_scans": st[4]}
        if self.reporter is not None:
            mb = self.sim.page_size / 2**20
            out["reported_mb"] = self.reporter.reported * mb
            out["reported_frames_freed_mb"] = self.reporter.frames_freed * mb
        return out

    def large_page_summary(self) -> dict:
        """Large pages of this host now (:mod:`hosts.large_pages`): intact and broken
        large pages, regions never backed by one, pages shared at once when their large
        page broke, and when the first large page broke (the start of its tick, seconds;
        None: none yet)."""
        lps = [v.pmap.large for v in self.vms.values() if v.pmap.large is not None]
        t = self.large_first_break
        return {
            "intact": sum(lp.n_intact for lp in lps),
            "broken": sum(lp.n_broken for lp in lps),
            "small": sum(lp.n_small for lp in lps),
            "shared_at_break": sum(lp.shared_at_break for lp in lps),
            "first_break_s": None if t is None else t * self.sim.tick_s,
        }

    def digest(self, full: bool = False, written: list[tuple[str, Any]] | None = None) -> str:
        """A hash of this host's state; ``full`` adds every frame's and swap slot's bytes.

        ``written``: ``(vm, virtual pages written)`` of the tick just run (the per-tick
        digests of recording and replay): adds an xxh3 of what the guest now reads at each
        of those pages (:func:`hosts.vm.vm_page_hashes`, no bytes copied).  Writes --
        first touches and COW breaks among them -- are the only way page bytes change;
        sharing, swapping and ballooning move bytes without changing them, and the maps
        hashed here say where they are.  So a chain of per-tick digests covers every
        byte, at the cost of hashing the tick's written pages.
        """
        h = xxhash.xxh3_128()
        h.update(f"{self.name}|{self.tick}|{int(self.mstate)}".encode())
        fr = self.mem.frames
        h.update(fr.refcount.tobytes())
        h.update(fr.free_stack[: fr.n_free].tobytes())
        for name in self.order:
            vm = self.vms[name]
            h.update(name.encode())
            g = vm.guest  # (its page table as it was hashed before the slots moved in)
            for a in (vm.pmap.state, vm.pmap.loc, g.page_table(), g.vstate, vm.pmap.counts):
                h.update(a.tobytes())
            h.update(f"{vm.steps}|{vm.target}|{vm.guest.n_ballooned}".encode())
            if vm.pmap.large is not None:
                h.update(vm.pmap.large.intact.tobytes())
                h.update(vm.pmap.large.backed.tobytes())
                h.update(vm.pmap.large.seen.tobytes())
        for name, pages in written or ():
            vm = self.vms.get(name)
            if vm is None or not len(pages):
                continue
            vpns = np.asarray(pages, dtype=np.int64)  # (a page written twice: hashed twice)
            h.update(f"w|{name}|".encode())
            h.update(vpns.tobytes())
            h.update(vm_page_hashes(vm, self.mem, vpns).tobytes())
        if full:
            h.update(fr.content.tobytes())
            h.update(self.mem.swap.content[self.mem.swap.used].tobytes())
            for name in self.order:
                g = self.vms[name].guest
                slots = g.vslot
                h.update(g.swap.content[slots[slots >= 0]].tobytes())
        return h.hexdigest()

    def check_invariants(self) -> None:
        self.mem.check_invariants()
        for name in self.order:
            self.vms[name].check_invariants()
        if self.ksm is not None:
            self.ksm.check_invariants(self)
        if self.reporter is not None:
            self.reporter.check_invariants(self)


def ksm_params(policy: HostPolicy) -> KsmParams:
    """KSM's knobs from the host policy."""
    return KsmParams(
        policy.ksm_pages_to_scan,
        policy.ksm_sleep_millisecs,
        policy.ksm_max_page_sharing,
        policy.ksm_use_zero_pages,
    )


def free_page_reporter(policy: HostPolicy, sim: SimParams) -> FreePageReporter:
    """Free page reporting from the host policy: the delay in whole ticks (rounded up),
    blocks of ``2**order`` 4 KB pages in the simulation's pages (at least one)."""
    delay = int(np.ceil(policy.free_page_reporting_delay_s / sim.tick_s - 1e-9))
    block = max(1, (4096 << policy.free_page_reporting_order) // sim.page_size)
    return FreePageReporter(delay, block)


def _count_row(vm: VirtualMachine, row: list[int]) -> None:
    """Add a scan's outcome, a row of :meth:`HostMemory.scan_many`, to the VM's totals."""
    st = vm.stats
    st.merged += row[sk.R_MERGED]
    st.hint_hits += row[sk.R_HINT_HITS]
    st.hint_stale += row[sk.R_STALE]
    st.collisions += row[sk.R_COLL]


def _count_scan(vm: VirtualMachine, s: ScanStats) -> None:
    """Add a scan's outcome to the VM's totals."""
    _count_row(vm, [s.scanned, s.hint_hits, s.merged, s.hint_stale, s.collisions])
