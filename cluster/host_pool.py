"""Host pools: how the coordinator reaches its hosts, in-process or as Ray actors.

Scope: one narrow interface -- :meth:`HostPool.call` runs a method on a set of hosts and
returns the results *in the order asked* (never arrival order) -- with two transports:
:class:`InProcessPool` (plain objects; for tests, debugging and the bit-for-bit reference)
and ``cluster.ray_runtime.RayPool`` (actors).  Every host method the coordinator uses is
a method of :class:`HostRuntime`, so both transports run exactly the same code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from hosts.host_manager import HostMemoryManager
from hosts.specs import HostPolicy, HostSpec, SimParams, VMSpec


class HostFailure(RuntimeError):
    """A host could not be reached or died; names the host and the tick."""

    def __init__(self, host: str, tick: int, cause: str) -> None:
        super().__init__(f"host {host} failed at tick {tick}: {cause}")
        self.host, self.tick, self.cause = host, tick, cause

    def __reduce__(self):  # survives Ray's exception transport intact
        return (HostFailure, (self.host, self.tick, self.cause))


class HostRuntime:
    """What the coordinator may ask of a host.  Plain data in, plain data out."""

    def __init__(self, spec: HostSpec, sim: SimParams, policy: HostPolicy) -> None:
        self.host = HostMemoryManager(spec, sim, policy)

    def boot(self, specs: list[VMSpec]) -> None:
        for s in specs:
            self.host.boot_vm(s)

    def run_round(self, start: int, n: int, targets: dict[str, int] | None) -> dict[str, Any]:
        """Set targets, run ``n`` ticks, report metrics, allocation inputs and a digest."""
        if targets:
            self.host.set_targets(targets)
        cols = self.host.run_ticks(start, n)
        return {
            "metrics": cols,
            "alloc": alloc_report(self.host),
            "digest": self.host.digest(),
            "state": int(self.host.mstate),
            "free_pages": self.host.mem.n_free,
        }

    def alloc_report(self) -> dict[str, Any]:
        return alloc_report(self.host)

    def summary(self) -> dict[str, Any]:
        return {
            "host": self.host.summary(),
            "vms": {n: vm_summary(self.host, n) for n in self.host.order},
            "digest": self.host.digest(full=True),
        }

    def check_invariants(self) -> bool:
        self.host.check_invariants()
        return True

    def ping(self) -> str:
        return self.host.name

    def pid(self) -> int:
        return os.getpid()


def alloc_report(host: HostMemoryManager) -> dict[str, Any]:
    inp = host.allocation_input()
    return {
        "vms": list(host.order),
        "shares": inp.shares,
        "pages": inp.pages,
        "active": inp.active,
        "min_pages": inp.min_pages,
        "max_pages": inp.max_pages,
        "available_pages": inp.available_pages,
    }


def vm_summary(host: HostMemoryManager, name: str) -> dict[str, Any]:
    from hosts import page_state as ps

    vm = host.vms[name]
    mb = host.sim.page_size / 2**20
    st = vm.stats
    return {
        "host": host.name,
        "resident_mb": vm.resident * mb,
        "shared_mb": int(vm.pmap.counts[ps.SHARED]) * mb,
        "zero_shared_mb": vm.pmap.n_zero_shared * mb,
        "ballooned_mb": int(vm.pmap.counts[ps.BALLOONED]) * mb,
        "swapped_mb": int(vm.pmap.counts[ps.VMM_SWAPPED]) * mb,
        "guest_swapped_mb": vm.guest.n_swapped * mb,
        "mean_throughput": st.work_done / st.ticks if st.ticks else 0.0,
        "counters": st.as_dict(),
    }


class HostPool:
    """Calls host methods; results come back in the order of ``names``."""

    names: list[str]

    def call(self, method: str, args: Sequence[tuple], names: Sequence[str] | None = None) -> list:
        raise NotImplementedError

    def close(self) -> None:
        pass


class InProcessPool(HostPool):
    """Hosts as plain objects in this process (sequential; the reference transport)."""

    def __init__(self, hosts: list[tuple[HostSpec, SimParams, HostPolicy]]) -> None:
        self.runtimes = {spec.name: HostRuntime(spec, sim, pol) for spec, sim, pol in hosts}
        self.names = [spec.name for spec, _, _ in hosts]

    def call(self, method: str, args: Sequence[tuple], names: Sequence[str] | None = None) -> list:
        names = list(names if names is not None else self.names)
        return [getattr(self.runtimes[n], method)(*a) for n, a in zip(names, args, strict=True)]
