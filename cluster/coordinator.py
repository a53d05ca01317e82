"""The coordinator: owns simulated time and applies cluster-wide policy.

Scope: placing VMs at start, then rounds.  A round is the ticks up to the next allocation
point (``realloc_period_s``); every host runs it in parallel (one call each, carrying the
targets computed after the previous round), the coordinator gathers the reports in
host-name order, computes new targets with the allocation policy (``[policy] allocation``,
default :func:`hosts.allocation.share_idle_tax`: each host's memory shared among its VMs
by shares and the idle memory tax), and moves on.  Nothing depends on which host answers
first.

Coordinator-side policies (placement, allocation, migration choice; :mod:`vmmsim.policies`)
run only inside :meth:`Coordinator.decide`, which checks and records what they return, so a
recorded run replays with the same decisions whatever the policy's code does; a policy
that fails or returns an invalid decision is a :class:`cluster.config.ConfigError` naming
it (exit 2).

Scheduled policy changes (``[[events]]``): at its tick boundary (a round is cut there)
an event is a recorded decision (``policy``, payload ``{path: value}``), applied to the
coordinator's live policy (:attr:`Coordinator.policy`, :attr:`Coordinator.migration`) and
pushed to every host (``set_policy``) before anything else happens at that boundary; a
reallocation due there already uses it.  The number of events applied is coordinator
state, so a resume or a recovery sets the policy of its tick again.

Live migration (:mod:`cluster.migration`): while one is in flight, a round is run as
several shorter steps that end when a pre-copy round does (still one ``run_round`` per
host per step); starting migrations is a recorded decision (``migrations``).

The coordinator is transport-agnostic: it talks to a :class:`cluster.host_pool.HostPool`,
so the same code runs in-process or inside a Ray actor (``cluster/ray_runtime.py``).

Not covered: writing files (``cluster/outputs.py``), the Ray transport.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
from vmmsim.cluster.config import ConfigError, MigrationConfig, PolicyConfig, SimConfig, event_tick
from vmmsim.cluster.host_pool import HostPool
from vmmsim.cluster.metrics import merge_rounds
from vmmsim.cluster.migration import Migrator
from vmmsim.cluster.page_check import PageChecker
from vmmsim.cluster.placement import place
from vmmsim.cluster.specs import host_policy, vm_spec
from vmmsim.cluster.trailing_log import TrailingLog
from vmmsim.hosts.allocation import AllocationView, check_targets, share_idle_tax

from vmmsim.policies import PolicyError, resolve_callable
from vmmsim.policies import call as call_policy


def allocation_view(rep: dict[str, Any], tax_rate: float, host: str = "") -> AllocationView:
    """One host's allocation report as the read-only view an allocation policy gets."""
    return AllocationView(
        host=host,
        vms=tuple(rep["vms"]),
        shares=tuple(np.asarray(rep["shares"], dtype=np.float64).tolist()),
        pages=tuple(np.asarray(rep["pages"], dtype=np.float64).tolist()),
        active=tuple(np.asarray(rep["active"], dtype=np.float64).tolist()),
        min_pages=tuple(np.asarray(rep["min_pages"], dtype=np.int64).tolist()),
        max_pages=tuple(np.asarray(rep["max_pages"], dtype=np.int64).tolist()),
        available_pages=int(rep["available_pages"]),
        tax_rate=float(tax_rate),
    )


def targets_from_report(
    rep: dict[str, Any],
    tax_rate: float,
    policy: Callable[[AllocationView], Any] = share_idle_tax,
    name: str = "share_idle_tax",
    host: str = "",
) -> dict[str, int]:
    """One host's allocation report -> {vm: target pages}, from ``policy`` (checked by
    :func:`hosts.allocation.check_targets`; :class:`PolicyError` naming ``name``)."""
    if not rep["vms"]:
        return {}
    view = allocation_view(rep, tax_rate, host)
    decision = call_policy("allocation", name, policy, view, where=f" on host {host}")
    return check_targets(view, decision, name)


class Coordinator:
    """Simulated time and cluster-wide decisions over a pool of hosts."""

    def __init__(self, cfg: SimConfig, pool: HostPool) -> None:
        self.cfg = cfg
        self.pool = pool
        sim = cfg.simulation
        self.n_ticks = sim.n_ticks
        self.round_ticks = max(1, round(cfg.policy.realloc_period_s / sim.tick_s))
        self.tick = 0
        self.hosts = list(cfg.host_names())
        self.allocation = resolve_callable("allocation", cfg.policy.allocation)
        # The live policy ([[events]] change it; cfg keeps the run's starting values).
        self.policy: PolicyConfig = cfg.policy
        self.migration: MigrationConfig = cfg.migration
        self.events = [(event_tick(e.time_s, sim.tick_s), dict(e.set)) for e in cfg.events]
        self.events_applied = 0
        self.placement = self.decide("placement", lambda: place(cfg), record=False)
        self.targets: dict[str, dict[str, int]] = {}
        # Each round's host digests, for a recovery to check its re-execution against
        # (numbered by round; the session and the checkpointer drop the old ones).
        self.round_log: TrailingLog[dict[str, str]] = TrailingLog()
        self.vm_steps = {v.name: 0 for v in cfg.vms}  # workload steps each VM has run
        # Record / replay / checkpoint hooks, all optional (cluster/session.py sets them):
        # Every decision (tick, kind, payload), numbered; dropped once nothing can need
        # them (written to the record log, older than the last checkpoint).
        self.decision_log: TrailingLog[tuple[int, str, Any]] = TrailingLog()
        self.recorded: dict[tuple[int, str], list[Any]] | None = None  # decisions to reuse
        self.feeder: Callable[[Coordinator, str, int], Any] | None = None  # replayed inputs
        self.observers: list[Any] = []  # .on_round(coord, start, n, results) after each round
        self.migrator = Migrator(cfg, pool, self.placement)  # live migration (engine)
        self.page_checker: PageChecker | None = None  # check mode (enable_page_check)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.placement = self.decide("placement", lambda: self.placement)  # recorded here
        self.migrator.where = dict(self.placement)
        by_host: dict[str, list] = {h: [] for h in self.hosts}
        for v in self.cfg.vms:
            by_host[self.placement[v.name]].append(vm_spec(self.cfg, v.name))
        self.pool.call("boot", [(by_host[h],) for h in self.hosts], self.hosts)
        self._apply_events()
        reports = self.pool.call("alloc_report", [()] * len(self.hosts), self.hosts)
        self._reallocate(reports)

    @property
    def done(self) -> bool:
        return self.tick >= self.n_ticks

    def advance(self) -> pa.Table:
        """Run one round (or, while a migration is in flight, one step of it) on every
        host; return its metrics rows.  Targets go out and are recomputed only at
        reallocation boundaries, so migrations never change the allocation cadence."""
        start, feed = self.tick, self.feeder
        boundary = start % self.round_ticks == 0
        starts = self._compute(lambda: self.migrator.propose(start))  # recorded if any
        if starts:
            starts = self.decide("migrations", lambda: starts)
        for vm, src in self.migrator.before_step(start, starts):
            self.targets.get(src, {}).pop(vm, None)  # it keeps its target until the next
        n = min(self.round_ticks - start % self.round_ticks, self.n_ticks - start)
        n = self.migrator.step_ticks(start, n)
        if self.events_applied < len(self.events):  # end the step at the next event
            n = min(n, self.events[self.events_applied][0] - start)
        args = [
            (start, n, self.targets.get(h) if boundary else None, feed and feed(self, h, n))
            for h in self.hosts
        ]
        results = self.pool.call("run_round", args, self.hosts)
        self.tick += n
        self.round_log.append({h: r["digest"] for h, r in zip(self.hosts, results, strict=True)})
        for r in results:
            self.vm_steps.update(r.get("steps", {}))
        self._apply_events()  # before the reallocation at this boundary: it sees them
        if self.tick % self.round_ticks == 0 or self.done:
            self._reallocate([r["alloc"] for r in results])
        self.migrator.after_step(start, n, results)
        for obs in self.observers:
            obs.on_round(self, start, n, results)
        return merge_rounds([r["metrics"] for r in results])

    def _reallocate(self, reports: list[dict[str, Any]]) -> None:
        tau, name = self.policy.tax_rate, self.policy.allocation
        self.targets = self.decide(
            "targets",
            lambda: {
                h: targets_from_report(rep, tau, self.allocation, name, h)
                for h, rep in zip(self.hosts, reports, strict=True)
            },
        )

    def _apply_events(self) -> None:
        """Apply the events due at this tick: each a recorded ``policy`` decision."""
        while self.events_applied < len(self.events):
            tick, changes = self.events[self.events_applied]
            if tick > self.tick:
                return
            self._set_policy(self.decide("policy", lambda changes=changes: dict(changes)))
            self.events_applied += 1

    def _set_policy(self, changes: dict[str, Any], push: bool = True) -> None:
        """Change live policy keys (``{"policy.tax_rate": 0.75}``), recompute what derives
        from them here and in the migrator, and (``push``) send every host its new
        :class:`hosts.specs.HostPolicy`."""
        secs: dict[str, Any] = {"policy": self.policy, "migration": self.migration}
        for path, value in sorted(changes.items()):
            sec, key = path.split(".")
            secs[sec] = replace(secs[sec], **{key: value})
        self.policy, self.migration = secs["policy"], secs["migration"]
        live = replace(self.cfg, policy=self.policy, migration=self.migration)
        self.round_ticks = max(1, round(self.policy.realloc_period_s / live.simulation.tick_s))
        self.allocation = self._compute(
            lambda: resolve_callable("allocation", self.policy.allocation)
        )
        self.migrator.retune(live)
        if push:
            pol = host_policy(live)
            self.pool.call("set_policy", [(pol,)] * len(self.hosts), self.hosts)

    def decide(self, kind: str, compute: Callable[[], Any], record: bool = True) -> Any:
        """A decision of ``kind`` at this tick: the recorded one when replaying under an
        unchanged policy, else ``compute()`` (which runs the policy).  Every decision is
        appended to :attr:`decisions` (the record log's ``decisions`` stream): payloads
        must be JSON-able.  Use it for any new kind of decision (e.g. migrations).
        ``record=False``: compute only (a value recorded by a later ``decide``).  A
        :class:`vmmsim.policies.PolicyError` (missing policy, invalid decision) becomes a
        :class:`ConfigError` (one line, exit 2)."""
        if not record:
            return self._compute(compute)
        queue = self.recorded.get((self.tick, kind)) if self.recorded is not None else None
        value = queue.pop(0) if queue else self._compute(compute)
        self.decision_log.append((self.tick, kind, value))
        return value

    def _compute(self, compute: Callable[[], Any]) -> Any:
        try:
            return compute()
        except PolicyError as e:
            raise ConfigError("", str(e), source=self.cfg.source) from None

    def state(self) -> dict[str, Any]:
        """All the coordinator holds between rounds, JSON-able (checkpoints).  New
        coordinator state (e.g. migrations in flight) belongs here and in load_state."""
        return {
            "tick": self.tick,
            "targets": self.targets,
            "placement": self.placement,
            "round_digests": self.round_log.kept,
            "round_digests_dropped": self.round_log.dropped,
            "vm_steps": self.vm_steps,
            "n_decisions": self.decision_log.total,
            "migrations": self.migrator.state(),
            "events_applied": self.events_applied,
        }

    def load_state(self, st: dict[str, Any]) -> None:
        """The inverse of :meth:`state` (the hosts are restored separately)."""
        self.tick = int(st["tick"])
        self.targets = {h: dict(t) for h, t in st["targets"].items()}
        self.placement = dict(st["placement"])
        self.round_log = TrailingLog(
            [dict(d) for d in st["round_digests"]],
            int(st.get("round_digests_dropped", 0)),  # (absent in older checkpoints)
        )
        self.vm_steps = dict(st["vm_steps"])
        if "migrations" in st:
            self.migrator.load_state(st["migrations"])
        self.decision_log.truncate(st["n_decisions"])
        # The policy of that tick: the config's, then the events applied by then (the
        # hosts were restored with the config's policy: pushed again if it differs).
        self.events_applied = int(st.get("events_applied", 0))
        self.policy, self.migration = self.cfg.policy, self.cfg.migration
        changes = {p: v for _, ch in self.events[: self.events_applied] for p, v in ch.items()}
        self._set_policy(changes, push=bool(self.events))

    def finish(self) -> dict[str, Any]:
        """Final per-host and per-VM totals and the run's state digest."""
        sums = self.pool.call("summary", [()] * len(self.hosts), self.hosts)
        digest = hashlib.sha256()
        hosts, vms, host_digests = {}, {}, {}
        for h, s in zip(self.hosts, sums, strict=True):
            hosts[h] = s["host"]
            vms.update(s["vms"])
            host_digests[h] = s["digest"]
            digest.update(f"{h}:{s['digest']}\n".encode())
        return {
            "hosts": hosts,
            "vms": dict(sorted(vms.items())),
            "host_digests": host_digests,
            "final_digest": digest.hexdigest(),
            "placement": self.placement,
            "migrations": self.migrator.rows(self.tick),  # report rows (runner writes them)
        }

    def enable_page_check(self) -> None:
        """Check mode: keep every VM's written content keys (an observer), so that
        :meth:`check_invariants` also checks every guest page's bytes.  The hosts must
        report their accesses (``HostMode.accesses``); call before the first round."""
        self.page_checker = PageChecker(self.cfg)
        self.observers.append(self.page_checker)

    def check_invariants(self) -> int:
        """Every host's ``check_invariants()``, then (page checker on) every guest page's
        bytes; a failure is the host's (``HostFailure``).  Returns the VMs page-checked."""
        self.pool.call("check_invariants", [()] * len(self.hosts), self.hosts)
        return self.page_checker.check(self) if self.page_checker is not None else 0
