"""Replaying a record log: verified reruns, counterfactual runs, trace export.

Scope: the coordinator-side pieces of ``vmmsim replay``.

* :class:`ReplayFeeder` gives every host, each round, the recorded accesses of its VMs'
  next steps -- keyed by each VM's *step* count (reported by the hosts), so a VM blocked
  or paused at other ticks under another policy still sees its own stream in order.  The
  hosts run :class:`workloads.replay.ReplayWorkload` instead of the generators.
* :class:`DigestChecker` compares every host's digest after every tick with the log and
  stops at the first difference (:class:`ReplayDiverged`).
* :func:`replay_config`: the recorded config with ``--set`` overrides; only keys that do
  not change the workload's inputs may change (policy, migration, hosts, VM allocation
  keys).  With an unchanged config the coordinator reuses the recorded decisions.
* :func:`export_trace`: one VM's recorded stream as an Arrow trace file.

A VM that runs more steps under a counterfactual policy than it did in the recorded run
has no input for the extra steps: it makes no accesses then, and the summary says so.

Not covered: the file format (``cluster/recording.py``), running (``cluster/session.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vmmsim.cluster.config import ConfigError, SimConfig, with_overrides
from vmmsim.cluster.recording import RecordLog
from vmmsim.workloads.replay import AccessRows
from vmmsim.workloads.trace import write_trace

# Keys that shape a VM's access stream (or the simulation itself): fixed in a replay.
_VM_WORKLOAD_KEYS = ("memory_mb", "image", "workload", "name", "count", "base_name")


class ReplayDiverged(RuntimeError):
    """A verified replay reached a state other than the recorded one."""

    def __init__(self, tick: int, host: str, recorded: str, replayed: str) -> None:
        super().__init__(
            f"replay diverged at tick {tick} on host {host}: "
            f"digest {replayed[:16]} != recorded {recorded[:16]}"
        )
        self.tick, self.host, self.recorded, self.replayed = tick, host, recorded, replayed

    def __reduce__(self):  # survives Ray's exception transport intact
        return (ReplayDiverged, (self.tick, self.host, self.recorded, self.replayed))


class ReplayConfigError(ConfigError):
    """An override that a replay cannot honour (it would change the recorded inputs)."""


def replay_config(recorded: SimConfig, overrides: Sequence[str]) -> SimConfig:
    """``recorded`` with ``overrides``; refuse any change to the workload's inputs."""
    for o in overrides:
        path = o.split("=", 1)[0].strip()
        parts = path.split(".")
        if parts[0] in ("simulation", "images") or (
            parts[0] == "vms" and len(parts) > 2 and parts[2] in _VM_WORKLOAD_KEYS
        ):
            raise ReplayConfigError(
                f"--set {path}",
                "cannot change in a replay: the log holds the workload inputs of the recorded "
                "config (policy, migration, hosts and VM allocation keys may change)",
            )
    cfg = with_overrides(recorded, overrides)
    if _workload_view(cfg) != _workload_view(recorded):
        raise ReplayConfigError("--set", "the overrides change the recorded workload inputs")
    return cfg


def _workload_view(cfg: SimConfig) -> Any:
    d = cfg.to_dict()
    vms = [{k: v[k] for k in ("name", "memory_mb", "image", "workload")} for v in d["vms"]]
    return d["simulation"], d["images"], vms


def policy_unchanged(a: SimConfig, b: SimConfig) -> bool:
    """True when recorded decisions are valid for ``b`` (same config as recorded)."""
    return a.config_hash() == b.config_hash()


class ReplayFeeder:
    """``coord.feeder``: each host's VMs' next recorded steps, by step count."""

    def __init__(self, log: RecordLog) -> None:
        self.streams = log.vm_streams()

    def __call__(self, coord: Any, host: str, n: int) -> AccessRows:
        parts = []
        migrator = getattr(coord, "migrator", None)  # where VMs are now (after migrations)
        where = migrator.where if migrator is not None else coord.placement
        for vm in sorted(v for v, h in where.items() if h == host):
            rows = self.streams.get(vm)
            if rows is None:
                continue
            s = coord.vm_steps[vm]
            idx = np.arange(s, min(s + n, len(rows)), dtype=np.int64)
            if len(idx):
                parts.append(rows.take(idx))
        return AccessRows.concat(parts)

    def exhausted(self, vm_steps: dict[str, int]) -> dict[str, int]:
        """VMs that ran steps with no recorded input: {vm: number of such steps}."""
        out = {}
        for vm, steps in sorted(vm_steps.items()):
            have = len(self.streams.get(vm, ()))
            if steps > have:
                out[vm] = steps - have
        return out


class DigestChecker:
    """A coordinator observer: every host digest after every tick equals the log's."""

    def __init__(self, log: RecordLog) -> None:
        self.expected = log.tick_digests()
        self.ticks = 0

    def on_round(self, coord: Any, start: int, n: int, results: list[dict[str, Any]]) -> None:
        for i, t in enumerate(range(start, start + n)):
            for h, r in zip(coord.hosts, results, strict=True):
                want, got = self.expected.get((t, h), "<none>"), r["tick_digests"][i]
                if got != want:
                    raise ReplayDiverged(t, h, want, got)
            self.ticks += 1


# ---------------------------------------------------------------------------- traces
def export_trace(record_dir: str | Path, vm: str, path: str | Path) -> int:
    """Write VM ``vm``'s recorded stream as a trace file for ``kind = "trace"``
    (:mod:`workloads.trace`: ``tick, ppn, is_write, key``); return its number of rows.

    ``tick`` is the VM's *step* (ticks it was blocked or paused are not gaps), per step
    the reads come first (key 0), then the writes in order, so each step gives back
    exactly the recorded accesses.  Step 0 includes the boot writes: use the trace with
    ``boot = false``."""
    log = RecordLog.open(record_dir)
    streams = log.vm_streams()
    if vm not in streams:
        raise KeyError(f"no VM {vm!r} in {log.path} (VMs: {', '.join(sorted(streams))})")
    rows = streams[vm]
    n_r, n_w = np.diff(rows.read_off), np.diff(rows.write_off)
    step_of = np.concatenate([np.repeat(rows.step, n_r), np.repeat(rows.step, n_w)])
    is_write = np.concatenate([np.zeros(n_r.sum(), bool), np.ones(n_w.sum(), bool)])
    ppn = np.concatenate([rows.reads, rows.writes])
    key = np.concatenate([np.zeros(len(rows.reads), np.uint64), rows.write_keys])
    order = np.lexsort((is_write, step_of))  # stable: keeps the order within a step
    cfg = log.cfg
    write_trace(
        str(path),
        step_of[order],
        ppn[order],
        is_write[order],
        key[order],
        {
            "vmmsim.source": f"record {cfg.config_hash()[:16]} vm {vm}",
            "vmmsim.vm_pages": str(cfg.pages(cfg.vm(vm).memory_mb)),
            "vmmsim.page_size": str(cfg.simulation.page_size),
            "vmmsim.tick_s": str(cfg.simulation.tick_s),
        },
    )
    return len(order)
