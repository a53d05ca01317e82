"""Pre-copy live migration between hosts, driven by the coordinator.

Semantics (time is whole ticks; MB = 2**20 bytes; ``bw`` = ``migration.bandwidth_mb_s``):

* A migration starts at a coordinator step (a scheduled ``[[migrations]]`` entry at the
  first step at or after ``time_s``; the step before it is cut short to end there), or
  when the ``pressure`` policy proposes it (:mod:`cluster.migration_policy`; only with
  ``migration.enabled``).  A host counts as under pressure once it has spent
  ``pressure_s`` seconds in HARD or LOW; brief recoveries do not reset the count, a whole
  reallocation period without a HARD/LOW tick does (so does a migration off the host, or
  a refusal of one).  The destination checks admission first
  (:func:`hosts.migration_host.can_accept`); a refusal moves nothing, the VM keeps running
  on the source, and a ``refused`` row is reported.
* Pre-copy round *i* (round 0: every allocated page; later: the pages dirtied since) is
  sent at once at the start of a step, content-aware: pages the destination already holds
  go as references.  On the wire a page costs ``page_size`` bytes, a reference 16 (the
  hashes exchanged first are not counted).  The round lasts ``ceil(bytes / bw)`` ticks, at
  least 1, and the VM keeps running on the source meanwhile, dirtying pages.  While a
  migration is in flight the coordinator's steps are cut to end when a round does.
* After a round, stop and copy when the remainder (pages dirtied during the round) fits:
  ``remainder * page_size / bw <= max_downtime`` ("downtime"); or after ``max_rounds``
  rounds ("max_rounds"); or when the round sent fewer than ``min_round_pages`` pages
  ("small_round"); or when the dirty set stops shrinking, ``remainder >= 0.9 * pages of
  the round`` ("not_converging": the VM writes faster than the link).  Otherwise the next
  round sends the remainder.
* Stop-and-copy happens at the start of a step: the destination re-checks that its free
  frames can take the VM (else the migration is ``aborted``, the VM stays on the source);
  the source sends the remainder as bytes plus the VM's state and releases everything;
  the destination installs the pages and pauses the VM for the downtime
  ``remainder * page_size / bw`` (``host.paused``, in ticks; a fraction of a tick slows the
  VM's next tick, longer pauses skip whole ticks).  That tick is the row's ``end_tick``.
* Page bytes go source -> destination through :meth:`cluster.host_pool.HostPool.submit`
  chains (Ray object store on Ray, in-memory in process); the coordinator only gathers
  counts.  (:mod:`cluster.migration_transfer`).

Targets are still recomputed only at reallocation boundaries; a VM that moves keeps its
last target until then.  Runs without migrations take exactly the steps they always did.

Not covered: the per-host mechanism (:mod:`hosts.migration_host`), the policy
(:mod:`cluster.migration_policy`), the report's columns (:mod:`cluster.migration_report`).
Checkpoints of a run with a migration in flight are not supported.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from vmmsim.cluster.config import SimConfig
from vmmsim.cluster.host_pool import HostPool
from vmmsim.cluster.migration_policy import HostView, VMView, choose
from vmmsim.cluster.migration_transfer import admit, precopy_round, stop_and_copy
from vmmsim.cluster.specs import host_policy, host_specs, vm_spec
from vmmsim.hosts import admission
from vmmsim.hosts.migration_host import vm_claim
from vmmsim.hosts.min_free import thresholds_for
from vmmsim.workloads.images import BootLayout

REF_BYTES = 16  # a reference on the wire: the page's 128-bit strong digest
NOT_SHRINKING = 0.9  # stop when the remainder is >= this fraction of the last round
_EPS = 1e-9


@dataclass
class Migration:
    """One migration, in flight or finished (the coordinator's record)."""

    vm: str
    source: str
    dest: str
    trigger: str
    start_tick: int
    status: str = "running"
    reason: str = ""
    end_tick: int = -1
    round_pages: list[int] = field(default_factory=list)
    round_refs: list[int] = field(default_factory=list)
    round_bytes: list[int] = field(default_factory=list)
    final_pages: int = 0
    pages_migrated: int = 0
    downtime_s: float = 0.0
    ticks_left: int = 0  # ticks until the current round's transfer has finished
    allocated: int = 0  # the VM's allocated pages on the source (latest report)
    pending: int = 0  # its allocated pages dirtied since the last collect (latest report)
    window_end: int | None = None  # last tick of the throughput window (None: open)
    tp: list[float] = field(default_factory=list)

    def row(self, page_size: int) -> dict[str, Any]:
        refs = sum(self.round_refs)
        return {
            "vm": self.vm,
            "source": self.source,
            "destination": self.dest,
            "trigger": self.trigger,
            "status": self.status,
            "reason": self.reason,
            "start_tick": self.start_tick,
            "end_tick": self.end_tick,
            "rounds": len(self.round_pages),
            "pages_sent": sum(self.round_pages) - refs + self.final_pages,
            "ref_pages": refs,
            "bytes_sent": sum(self.round_bytes) + self.final_pages * page_size,
            "final_pages": self.final_pages,
            "pages_migrated": self.pages_migrated,
            "downtime_ms": self.downtime_s * 1e3,
            "mean_throughput_during": math.fsum(self.tp) / len(self.tp) if self.tp else None,
            "round_pages": list(self.round_pages),
            "round_refs": list(self.round_refs),
            "round_bytes": list(self.round_bytes),
        }


class Migrator:
    """The migration engine: the coordinator calls :meth:`before_step`,
    :meth:`step_ticks` and :meth:`after_step` around every step, :meth:`rows` at the end."""

    def __init__(self, cfg: SimConfig, pool: HostPool, placement: dict[str, str]) -> None:
        self.pool = pool
        self.mc = cfg.migration
        sim = cfg.simulation
        self.tick_s, self.page_size, self.cb = sim.tick_s, sim.page_size, sim.content_bytes
        self.bw = self.mc.bandwidth_mb_s * 2**20  # bytes per second
        self.hosts = list(cfg.host_names())
        self.specs = {v.name: vm_spec(cfg, v.name) for v in cfg.vms}
        self.images = {v.name: v.image for v in cfg.vms}
        self.image_pages = {  # as the host lays the guest out (image_mb in this page size)
            n: BootLayout.for_image(s.image, s.n_pages, self.page_size).n_image
            for n, s in self.specs.items()
        }
        self.where = dict(placement)
        hp = host_policy(cfg)
        hs = host_specs(cfg)
        self.reserve = {
            s.name: thresholds_for(hp, s.memory_mb).goal_pages(0, s.n_frames) for s in hs
        }
        self.capacity = {s.name: s.n_frames + s.n_swap_slots for s in hs}
        self.frames = {s.name: s.n_frames for s in hs}
        self.schedule = sorted(
            (math.ceil(m.time_s / self.tick_s - _EPS), i, m.vm, m.to)
            for i, m in enumerate(cfg.migrations)
        )
        self.active: list[Migration] = []
        self.finished: list[Migration] = []
        self.free: dict[str, int] = {}
        self.pages: dict[str, tuple[int, int, int]] = {}  # vm -> resident, allocated, dirty
        # Pressure: ticks in HARD/LOW, and ticks since the last one (see _pressure).
        self.hot = {h: 0 for h in self.hosts}
        self.calm = {h: 0 for h in self.hosts}
        self.calm_ticks = max(1, round(cfg.policy.realloc_period_s / self.tick_s))

    def retune(self, cfg: SimConfig) -> None:
        """Take the live ``[policy]`` / ``[migration]`` keys of ``cfg`` (a scheduled
        ``[[events]]`` change): bandwidth, limits, free-memory reserves, calm period."""
        self.mc = cfg.migration
        self.bw = self.mc.bandwidth_mb_s * 2**20
        hp = host_policy(cfg)
        self.reserve = {
            s.name: thresholds_for(hp, s.memory_mb).goal_pages(0, s.n_frames)
            for s in host_specs(cfg)
        }
        self.calm_ticks = max(1, round(cfg.policy.realloc_period_s / self.tick_s))

    # ------------------------------------------------------------------ steps
    def propose(self, tick: int) -> list[list[str]]:
        """Migrations to start now, ``[vm, destination, trigger]`` (JSON-able: the
        coordinator records it as a decision): scheduled ones due, then the policy's."""
        out = [[vm, to, "scheduled"] for t, _, vm, to in self.schedule if t <= tick]
        if self.mc.enabled:
            proposals = choose(self.mc.policy, *self._views(tick))
            out += [[p.vm, p.dest, p.trigger] for p in proposals]
        return out

    def before_step(self, tick: int, starts: list[list[str]]) -> list[tuple[str, str]]:
        """Start ``starts`` (from :meth:`propose`), advance migrations whose round has
        ended; return the (vm, old host) of VMs that switched hosts."""
        self.schedule = [e for e in self.schedule if e[0] > tick]
        for vm, dest, trigger in starts:
            self._start(vm, dest, trigger, tick)
        moved = []
        for m in list(self.active):
            if m.ticks_left > 0:
                continue
            stop = self._stop_reason(m) if m.round_pages else None
            if stop is None:
                self._round(m)
            elif self._switch(m, tick, stop):
                moved.append((m.vm, m.source))
        return moved

    def step_ticks(self, tick: int, n: int) -> int:
        """Cut a step of ``n`` ticks to end with the current rounds and at the next
        scheduled migration."""
        for m in self.active:
            n = min(n, m.ticks_left)
        if self.schedule and self.schedule[0][0] > tick:
            n = min(n, self.schedule[0][0] - tick)
        return n

    def after_step(self, start: int, n: int, results: list[dict[str, Any]]) -> None:
        """Take in the hosts' reports of the step ``start .. start+n-1``."""
        for h, r in zip(self.hosts, results, strict=True):
            self.free[h] = int(r["free_pages"])
            vp = r["vm_pages"]
            for i, v in enumerate(vp["vms"]):
                self.pages[v] = (
                    int(vp["resident"][i]),
                    int(vp["allocated"][i]),
                    int(vp["dirty"][i]),
                )
            cols = r["metrics"]
            self._pressure(h, cols["tick"], cols["host_state"])
            self._throughput(start, cols)
        for m in self.active:
            m.ticks_left -= n
            _, m.allocated, m.pending = self.pages[m.vm]

    def state(self) -> dict[str, Any]:
        """The engine's state, JSON-able (coordinator checkpoints).  Staging buffers of
        migrations in flight live on the hosts and are not part of host checkpoints."""
        return {
            "where": self.where,
            "schedule": [list(e) for e in self.schedule],
            "active": [asdict(m) for m in self.active],
            "finished": [asdict(m) for m in self.finished],
            "free": self.free,
            "pages": {v: list(p) for v, p in self.pages.items()},
            "hot": self.hot,
            "calm": self.calm,
        }

    def load_state(self, st: dict[str, Any]) -> None:
        self.where = dict(st["where"])
        self.schedule = [tuple(e) for e in st["schedule"]]
        self.active = [Migration(**m) for m in st["active"]]
        self.finished = [Migration(**m) for m in st["finished"]]
        self.free = dict(st["free"])
        self.pages = {v: tuple(p) for v, p in st["pages"].items()}
        self.hot, self.calm = dict(st["hot"]), dict(st["calm"])

    def rows(self, tick: int) -> list[dict[str, Any]]:
        """One report row per migration (in-flight ones as ``unfinished``)."""
        out = list(self.finished)
        out += [
            replace(m, status="unfinished", reason="run ended", end_tick=tick) for m in self.active
        ]
        out.sort(key=lambda m: (m.start_tick, m.vm, m.dest))
        return [m.row(self.page_size) for m in out]

    # ------------------------------------------------------------------ actions
    def _start(self, vm: str, dest: str, trigger: str, tick: int) -> None:
        src = self.where[vm]
        m = Migration(vm, src, dest, trigger, tick)
        pool = self.pool
        if dest == src:
            reason: str | None = f"{vm} is already on {dest}"
        elif any(a.vm == vm for a in self.active):
            reason = f"{vm} is already migrating"
        else:
            m.allocated, reason = admit(pool, self.specs[vm], src, dest)
        if reason is None:
            self.active.append(m)
            return
        m.status, m.reason, m.end_tick = "refused", reason, tick
        self.finished.append(m)
        if trigger == "pressure":
            self.hot[src] = 0  # wait pressure_s again before the next try

    def _round(self, m: Migration) -> None:
        first = not m.round_pages
        expect = m.allocated if first else m.pending
        n_pages = self.specs[m.vm].n_pages
        sent, refs = precopy_round(
            self.pool, m.vm, m.source, m.dest, n_pages, first, expect, self.cb
        )
        nbytes = sent * self.page_size + refs * REF_BYTES
        m.round_pages.append(sent + refs)
        m.round_refs.append(refs)
        m.round_bytes.append(nbytes)
        m.ticks_left = max(1, math.ceil(nbytes / self.bw / self.tick_s - _EPS))

    def _stop_reason(self, m: Migration) -> str | None:
        last, rem = m.round_pages[-1], m.pending
        if rem * self.page_size / self.bw <= self.mc.max_downtime_ms / 1e3 + _EPS:
            return "downtime"
        if len(m.round_pages) >= self.mc.max_rounds:
            return "max_rounds"
        if last < self.mc.min_round_pages:
            return "small_round"
        if rem >= NOT_SHRINKING * last:
            return "not_converging"
        return None

    def _switch(self, m: Migration, tick: int, stop: str) -> bool:
        """Stop and copy; True if the VM now runs on the destination."""
        pool = self.pool
        self.active.remove(m)
        self.finished.append(m)
        m.end_tick = tick
        downtime_s = m.pending * self.page_size / self.bw
        pause = downtime_s / self.tick_s
        res = stop_and_copy(pool, self.specs[m.vm], m.source, m.dest, m.allocated, pause)
        if isinstance(res, str):
            m.status, m.reason, m.window_end = "aborted", res, tick - 1
            return False
        m.downtime_s = downtime_s
        if res["final_pages"] != m.pending:
            raise RuntimeError(
                f"migration of {m.vm}: {res['final_pages']} pages at stop-and-copy, "
                f"expected {m.pending}"
            )
        m.final_pages, m.pages_migrated = m.pending, res["pages_migrated"]
        m.status, m.reason = "completed", stop
        m.window_end = tick + max(0, math.ceil(pause - _EPS) - 1)  # the tick it runs again
        self.where[m.vm] = m.dest
        self.hot[m.source] = 0
        return True

    # ------------------------------------------------------------------ observations
    def _pressure(self, host: str, ticks: np.ndarray, states: np.ndarray) -> None:
        """Count ``host``'s ticks in HARD or LOW; a whole reallocation period without one
        resets the count (brief recoveries -- swap out, drift back down -- do not)."""
        if not len(ticks):
            self.hot[host], self.calm[host] = 0, 0
            return
        _, first = np.unique(ticks, return_index=True)
        s = states[first]
        for hot in ((s == "hard") | (s == "low")).tolist():
            if hot:
                self.hot[host] += 1
                self.calm[host] = 0
            else:
                self.calm[host] += 1
                if self.calm[host] >= self.calm_ticks:
                    self.hot[host] = 0

    def _throughput(self, start: int, cols: dict[str, np.ndarray]) -> None:
        """Collect the throughput rows of migrating VMs within their windows."""
        open_ = self.active + [
            m for m in self.finished if m.window_end is not None and m.window_end >= start
        ]
        for m in open_:
            sel = (cols["vm"] == m.vm) & (cols["tick"] >= m.start_tick)
            if m.window_end is not None:
                sel &= cols["tick"] <= m.window_end
            m.tp.extend(cols["throughput"][sel].tolist())

    def _views(self, tick: int) -> tuple[list[HostView], list[VMView]]:
        """What the policy sees: the latest reports plus the migrations in flight."""
        if not self.free:
            return [], []
        busy = {m.source for m in self.active}
        arriving: dict[str, list[str]] = {h: [] for h in self.hosts}
        for m in self.active:
            arriving[m.dest].append(m.vm)
        placed: dict[str, list[str]] = {h: [] for h in self.hosts}  # one pass, not one per host
        for v, w in self.where.items():
            placed[w].append(v)
        ps = self.mc.pressure_s
        hosts = []
        for h in self.hosts:
            mine = placed[h] + arriving[h]
            hosts.append(
                HostView(
                    name=h,
                    pressured=self.hot[h] * self.tick_s >= ps - _EPS,
                    busy=h in busy,
                    free_pages=self.free[h]
                    - sum(self._pages(v)[1] + self.specs[v].overhead_pages for v in arriving[h]),
                    reserve_pages=self.reserve[h],
                    claims=admission.totals(vm_claim(self.specs[v]) for v in mine),
                    memory_pages=self.frames[h],
                    swap_pages=self.capacity[h] - self.frames[h],
                    images=frozenset(self.images[v] for v in mine),
                )
            )
        migrating = {m.vm for m in self.active}
        vms = [
            VMView(
                name=v,
                host=h,
                image=self.images[v],
                resident=self._pages(v)[0],
                allocated=self._pages(v)[1],
                image_pages=self.image_pages[v],
                overhead=self.specs[v].overhead_pages,
                claim=vm_claim(self.specs[v]),
                migrating=v in migrating,
            )
            for v, h in sorted(self.where.items())
        ]
        return hosts, vms

    def _pages(self, vm: str) -> tuple[int, int, int]:
        return self.pages.get(vm, (0, 0, 0))
