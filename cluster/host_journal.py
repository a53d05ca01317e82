"""The host side of recording and replay: what a host adds to its round report.

Scope: a :class:`HostMode` fixed when the host runtime is built -- ``record`` (return
each round's accesses of every VM step and a digest after every tick), ``replay`` (VMs
take their accesses from the coordinator instead of their generators) and
``tick_digests`` (a digest after every tick, for a verified replay) -- and the few
functions :class:`cluster.host_pool.HostRuntime` calls to honour it.  Plain data in and
out (numpy arrays, :class:`workloads.replay.AccessRows`), so both transports carry it.

Not covered: files (``cluster/recording.py``), which steps to feed
(``cluster/replay.py``), checkpoints (``hosts/snapshot.py``, ``cluster/checkpoint.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.workloads.replay import AccessRows, ReplayWorkload


@dataclass(frozen=True)
class HostMode:
    record: bool = False  # report accesses per VM step and a digest per tick
    replay: bool = False  # VMs run ReplayWorkloads fed by the coordinator
    tick_digests: bool = False  # a digest per tick (implied by record)
    accesses: bool = False  # report accesses per VM step (the page checker, check mode)


def apply_mode(host: HostMemoryManager, mode: HostMode) -> None:
    """Switch a (new or restored) host's recording hooks on as ``mode`` says."""
    host.digest_every_tick = mode.record or mode.tick_digests
    host.tick_digests = []
    host.access_log = [] if mode.record or mode.accesses else None


def new_workload(mode: HostMode) -> ReplayWorkload | None:
    """The workload a VM boots with: a replay stream in replay mode, else its generator."""
    return ReplayWorkload() if mode.replay else None


def feed(host: HostMemoryManager, rows: AccessRows) -> None:
    """Give each VM in ``rows`` its next recorded steps (replacing what it had left)."""
    which: dict[str, list[int]] = {name: [] for name in host.order}
    for i, name in enumerate(rows.vm):
        which[name].append(i)
    for name, idx in which.items():
        vm = host.vms[name]
        if not isinstance(vm.workload, ReplayWorkload):  # e.g. arrived by migration
            vm.workload = ReplayWorkload()
        vm.workload.feed(rows, idx)


def round_extras(host: HostMemoryManager) -> dict[str, Any]:
    """What a round report carries besides metrics: VM step counts, and when recording,
    the per-tick digests and the round's accesses (then cleared)."""
    out: dict[str, Any] = {"steps": {n: host.vms[n].steps for n in host.order}}
    if host.digest_every_tick:
        out["tick_digests"], host.tick_digests = host.tick_digests, []
    if host.access_log is not None:
        out["accesses"], host.access_log = AccessRows.pack(host.access_log), []
    return out
