"""Host pools: how the coordinator reaches its hosts, in-process or as Ray actors.

Scope: one narrow interface -- :meth:`HostPool.call` runs a method on a set of hosts and
returns the results *in the order asked* (never arrival order), plus
:meth:`HostPool.submit` / :meth:`HostPool.gather` for chains of calls whose data flows
host to host (migration) -- with two transports:
:class:`InProcessPool` (plain objects; for tests, debugging and the bit-for-bit reference)
and ``cluster.ray_runtime.RayPool`` (actors).  Every host method the coordinator uses is
a method of :class:`HostRuntime`, so both transports run exactly the same code.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from vmmsim.cluster import host_journal as hj
from vmmsim.cluster.write_errors import OutputWriteError
from vmmsim.hosts import migration_host as mh
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.snapshot import host_state, restore_host
from vmmsim.hosts.specs import HostPolicy, HostSpec, SimParams, VMSpec


class HostFailure(RuntimeError):
    """A host could not be reached or died; names the host and the tick."""

    def __init__(self, host: str, tick: int, cause: str) -> None:
        super().__init__(f"host {host} failed at tick {tick}: {cause}")
        self.host, self.tick, self.cause = host, tick, cause

    def __reduce__(self):  # survives Ray's exception transport intact
        return (HostFailure, (self.host, self.tick, self.cause))


class HostRuntime:
    """What the coordinator may ask of a host.  Plain data in, plain data out."""

    def __init__(
        self, spec: HostSpec, sim: SimParams, policy: HostPolicy, mode: hj.HostMode | None = None
    ) -> None:
        self.host = HostMemoryManager(spec, sim, policy)
        self.mode = mode or hj.HostMode()
        hj.apply_mode(self.host, self.mode)

    def boot(self, specs: list[VMSpec]) -> None:
        for s in specs:
            self.host.boot_vm(s, hj.new_workload(self.mode))

    def run_round(
        self, start: int, n: int, targets: dict[str, int] | None, feed: Any = None
    ) -> dict[str, Any]:
        """Set targets, run ``n`` ticks, report metrics, allocation inputs and a digest
        (``feed``: replayed accesses, :class:`workloads.replay.AccessRows`)."""
        t0, c0 = time.perf_counter(), time.thread_time()
        if self._trim_due:  # the last checkpoint's copies are freed by now
            self._trim_due = False
            release_free_heap()
        if targets:
            self.host.set_targets(targets)
        if feed is not None:
            hj.feed(self.host, feed)
        cols = self.host.run_ticks(start, n)
        busy = time.perf_counter() - t0  # wall-clock: timing.json only
        return {
            "busy_s": busy,
            "cpu_s": time.thread_time() - c0,  # this call's CPU (timing.json only)
            "metrics": cols,
            "alloc": alloc_report(self.host),
            "digest": self.host.digest(),
            "state": int(self.host.mstate),
            "free_pages": self.host.mem.n_free,
            "vm_pages": mh.page_counts(self.host),
            **hj.round_extras(self.host),
        }

    def alloc_report(self) -> dict[str, Any]:
        return alloc_report(self.host)

    def set_policy(self, policy: HostPolicy) -> None:
        """New policy knobs from the coordinator (a scheduled ``[[events]]`` change)."""
        self.host.set_policy(policy)

    def cpu_seconds(self) -> float:
        """CPU seconds of this host's whole process so far (its runtime's share included)."""
        return time.process_time()

    def phase_seconds(self) -> dict[str, float]:
        """CPU seconds this host spent in each part of its ticks (timing.json only)."""
        return dict(self.host.phase_s)

    def summary(self) -> dict[str, Any]:
        return {
            "host": self.host.summary(),
            "vms": {n: vm_summary(self.host, n) for n in self.host.order},
            "digest": self.host.digest(full=True),
        }

    def check_invariants(self) -> bool:
        self.host.check_invariants()
        return True

    def check_pages(self, shadows: Any) -> list[str]:
        """Check mode: this host's VMs read back ``shadows`` (cluster/page_check.py)."""
        from vmmsim.cluster.page_check import check_pages

        return check_pages(self.host, shadows)

    def ping(self) -> str:
        return self.host.name

    def pid(self) -> int:
        return os.getpid()

    # --- checkpoints and recovery (cluster/checkpoint.py writes the files) -------------
    def checkpoint(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """The host's complete state: named numpy arrays and JSON-able meta."""
        self._trim_due = True
        return host_state(self.host)

    def write_checkpoint(self, path: str, file_meta: dict[str, str], compression: str) -> int:
        """Write this host's checkpoint file at ``path`` itself (its state never leaves
        this process); return its size in bytes.  ``file_meta``: the file's metadata
        (:func:`cluster.checkpoint_format.host_file_meta`).  A failed write raises
        :class:`cluster.write_errors.OutputWriteError` naming the file."""
        # (imported here: a host that never checkpoints does not load Arrow's IPC writer)
        from vmmsim.cluster import checkpoint_format as cf

        self._trim_due = True
        arrays, meta = host_state(self.host)
        # (one thread: hosts write side by side, and Arrow's pool threads would each keep
        # the pages they compressed into)
        cf.write_host_file(Path(path), arrays, meta, file_meta, compression, False)
        cf.release_arrow_memory()
        return os.path.getsize(path)

    def restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], specs: list) -> None:
        """Replace this host's state by a checkpointed one (``specs``: its VMs' specs)."""
        h = self.host
        self.host = restore_host(h.spec, h.sim, h.policy, {s.name: s for s in specs}, arrays, meta)
        hj.apply_mode(self.host, self.mode)

    # --- live migration: thin wrappers around hosts.migration_host ---------------------
    def mig_allocated(self, vm: str) -> int:
        return mh.allocated_pages(self.host, vm)

    def mig_accept(self, spec: VMSpec, allocated: int) -> str | None:
        """Admission; if admitted, the VM's staging buffer is created here."""
        reason = mh.can_accept(self.host, spec, allocated)
        if reason is None:
            mh.begin_incoming(self.host, spec, allocated)
        return reason

    #: Whether a call's result is copied before this host's next call runs (Ray: into the
    #: object store), so that the source may reuse its page buffers (in process: no).
    reuse_send_buffers = False
    #: A checkpoint was taken: hand the heap its copies left free back to the OS first
    #: thing in the next round (:func:`release_free_heap`).
    _trim_due = False
    _send_buffers: mh.SendBuffers | None = None

    def _buffers(self) -> mh.SendBuffers | None:
        if self.reuse_send_buffers and self._send_buffers is None:
            self._send_buffers = mh.SendBuffers()
        return self._send_buffers

    def mig_collect(self, vm: str, first_round: bool, lo: int, hi: int) -> mh.PageBatch:
        return mh.collect_pages(self.host, vm, first_round, lo, hi, self._buffers())

    def mig_known(self, vm: str, batch: mh.PageBatch) -> mh.Offer:
        return mh.known_pages(self.host, vm, batch)

    def mig_page_bytes(self, vm: str, batch: mh.PageBatch, offer: mh.Offer) -> mh.Shipment:
        return mh.ship_pages(self.host, vm, batch, offer, self._buffers())

    def mig_stage(self, vm: str, batch: mh.PageBatch, shipment: mh.Shipment) -> tuple[int, int]:
        """Stage a range; return (pages sent as bytes, pages sent as references)."""
        return mh.stage(self.host, vm, batch, shipment)

    def mig_final_check(self, vm: str, allocated: int) -> str | None:
        return mh.final_check(self.host, vm, allocated)

    def mig_abort(self, vm: str) -> None:
        mh.abort_incoming(self.host, vm)

    def mig_detach(self, vm: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        self._send_buffers = None
        return mh.detach_for_migration(self.host, vm)

    def mig_attach(
        self, spec: VMSpec, payload: tuple[dict[str, np.ndarray], dict[str, Any]], pause: float
    ) -> dict[str, int]:
        return mh.attach_migrated(self.host, spec, payload[0], payload[1], pause)


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
    from vmmsim.hosts import page_state as ps

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

    def submit(self, name: str, method: str, *args: Any) -> Any:
        """Start ``method`` on host ``name``; return a handle.  Handles may be passed as
        arguments to later submits (resolved on the receiving host: data goes host to
        host, not through the caller).  Calls to one host run in submission order."""
        raise NotImplementedError

    def gather(self, handles: Sequence[Any]) -> list:
        """The results of submitted calls, in the order given."""
        raise NotImplementedError

    def kill(self, name: str, tick: int | None = None) -> None:
        """Kill host ``name`` (fault injection: its next call raises HostFailure, which
        names ``tick``, the tick the failure was injected at, if given)."""
        raise NotImplementedError

    def restart(self) -> None:
        """Replace every host by a fresh, empty one (recovery from a checkpoint)."""
        raise NotImplementedError

    def file_writers(self) -> set[str]:
        """Hosts whose files land where this process reads them (on this machine): they
        write their own checkpoint files (``HostRuntime.write_checkpoint``)."""
        return set(self.names)

    def write_width(self) -> int:
        """How many hosts write their checkpoint files at once."""
        return 1

    def close(self) -> None:
        pass


class InProcessPool(HostPool):
    """Hosts as plain objects in this process (sequential; the reference transport).

    An exception raised inside a host method becomes :class:`HostFailure` (chained to the
    original), as it does with Ray (``RayPool``): both transports fail the same way.  So
    does :class:`OutputWriteError` (a host writing its checkpoint file): it passes through
    unchanged, a full disk is not a host failure to recover from."""

    def __init__(
        self,
        hosts: list[tuple[HostSpec, SimParams, HostPolicy]],
        mode: hj.HostMode | None = None,
    ) -> None:
        self._hosts, self.mode = hosts, mode
        self.names = [spec.name for spec, _, _ in hosts]
        self.tick = 0  # for error messages (set by the caller)
        self.restart()

    def call(self, method: str, args: Sequence[tuple], names: Sequence[str] | None = None) -> list:
        names = list(names if names is not None else self.names)
        for n in names:
            if n in self.dead:
                tick = self.dead[n] if self.dead[n] is not None else self.tick
                raise HostFailure(n, tick, "host killed (fault injection)")
        return [self._run(n, method, a) for n, a in zip(names, args, strict=True)]

    def _run(self, name: str, method: str, args: tuple) -> Any:
        try:
            return getattr(self.runtimes[name], method)(*args)
        except OutputWriteError:  # the disk, not the host: the run stops (no recovery)
            raise
        except Exception as e:  # noqa: BLE001 - as a Ray actor's failure would surface
            raise HostFailure(name, self.tick, f"{type(e).__name__}: {e}") from e

    def kill(self, name: str, tick: int | None = None) -> None:
        self.dead[name] = tick

    def restart(self) -> None:
        self.dead: dict[str, int | None] = {}
        self.runtimes = {
            spec.name: HostRuntime(spec, sim, pol, self.mode) for spec, sim, pol in self._hosts
        }

    def submit(self, name: str, method: str, *args: Any) -> Any:
        return self._run(name, method, args)  # runs now: the handle is the value

    def gather(self, handles: Sequence[Any]) -> list:
        return list(handles)


_LIBC_NAME = ctypes.util.find_library("c")
_MALLOC_TRIM = getattr(ctypes.CDLL(_LIBC_NAME), "malloc_trim", None) if _LIBC_NAME else None
# (glibc only: not musl, not macOS)


def release_free_heap() -> None:
    """Return the C heap's free pages to the OS (glibc ``malloc_trim(0)``; elsewhere
    nothing).  A checkpoint copies a host's state into temporaries (tens of MB) that are
    freed once the result is sent, and glibc keeps that memory in its heap.  On the 8-host
    day with hourly checkpoints the host actors' PSS grew 21.6 MB per wall minute without
    this, 15.2 with it (docs/performance.md: the rest is object-store pages)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
