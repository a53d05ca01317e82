"""The coordinator: owns simulated time and applies cluster-wide policy.

Scope: placing VMs at start, then rounds.  A round is the ticks up to the next allocation
point (``realloc_period_s``); every host runs it in parallel (one call each, carrying the
targets computed after the previous round), the coordinator gathers the reports in
host-name order, computes new targets with the same pure policy a host uses
(:func:`hosts.allocation.allocate`, each host's memory shared among its VMs by shares and
the idle memory tax), and moves on.  Nothing depends on which host answers first.

The coordinator is transport-agnostic: it talks to a :class:`cluster.host_pool.HostPool`,
so the same code runs in-process or inside a Ray actor (``cluster/ray_runtime.py``).

Not covered: writing files (``cluster/outputs.py``), the Ray transport.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pyarrow as pa

from cluster.config import SimConfig
from cluster.host_pool import HostPool
from cluster.metrics import merge_rounds
from cluster.placement import place
from cluster.specs import vm_spec
from hosts.allocation import AllocationInput, allocate


def targets_from_report(rep: dict[str, Any], tax_rate: float) -> dict[str, int]:
    """One host's allocation report -> {vm: target pages}."""
    if not rep["vms"]:
        return {}
    inp = AllocationInput(
        shares=np.asarray(rep["shares"]),
        pages=np.asarray(rep["pages"]),
        active=np.asarray(rep["active"]),
        min_pages=np.asarray(rep["min_pages"]),
        max_pages=np.asarray(rep["max_pages"]),
        available_pages=int(rep["available_pages"]),
        tax_rate=tax_rate,
    )
    return dict(zip(rep["vms"], allocate(inp).tolist(), strict=True))


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
        self.placement = place(cfg)
        self.targets: dict[str, dict[str, int]] = {}
        self.round_digests: list[dict[str, str]] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        by_host: dict[str, list] = {h: [] for h in self.hosts}
        for v in self.cfg.vms:
            by_host[self.placement[v.name]].append(vm_spec(self.cfg, v.name))
        self.pool.call("boot", [(by_host[h],) for h in self.hosts], self.hosts)
        reports = self.pool.call("alloc_report", [()] * len(self.hosts), self.hosts)
        self._reallocate(reports)

    @property
    def done(self) -> bool:
        return self.tick >= self.n_ticks

    def advance(self) -> pa.Table:
        """Run one round on every host; return its metrics rows."""
        n = min(self.round_ticks - self.tick % self.round_ticks, self.n_ticks - self.tick)
        args = [(self.tick, n, self.targets.get(h)) for h in self.hosts]
        results = self.pool.call("run_round", args, self.hosts)
        self.tick += n
        self.round_digests.append(
            {h: r["digest"] for h, r in zip(self.hosts, results, strict=True)}
        )
        self._reallocate([r["alloc"] for r in results])
        return merge_rounds([r["metrics"] for r in results])

    def _reallocate(self, reports: list[dict[str, Any]]) -> None:
        tau = self.cfg.policy.tax_rate
        self.targets = {
            h: targets_from_report(rep, tau) for h, rep in zip(self.hosts, reports, strict=True)
        }

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
        }

    def check_invariants(self) -> None:
        self.pool.call("check_invariants", [()] * len(self.hosts), self.hosts)
