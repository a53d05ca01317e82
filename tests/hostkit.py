"""Builders for tests of ``hosts/`` (no Ray): tiny hosts, maps and VMs with small pages.

Import from test modules as ``from hostkit import make_mem, ...`` (pytest puts ``tests/``
on ``sys.path``).  Nothing here checks invariants by itself; the tests call
``check_invariants()`` where they mean to (see also the ``checked_mem`` fixture in
``conftest.py``).
"""

from __future__ import annotations

import numpy as np
from vmmsim.hosts.free_memory import Thresholds
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.host_memory import HostMemory
from vmmsim.hosts.phys_map import PhysMap
from vmmsim.hosts.specs import HostPolicy, HostSpec, SimParams, VMSpec
from vmmsim.hosts.vm import VirtualMachine
from vmmsim.workloads.content import page_bytes
from vmmsim.workloads.images import ImageSpec
from vmmsim.workloads.patterns import Accesses, IdleParams

CB = 64  # content bytes per page: small, the tests are not about 4 KiB pages


def make_mem(n_frames: int = 64, swap: int = 64, cb: int = CB) -> HostMemory:
    return HostMemory(n_frames, swap, cb)


def attach(
    mem: HostMemory,
    n_pages: int,
    *,
    group: int = 0,
    sharing: bool = True,
    overhead: int = 0,
) -> tuple[int, PhysMap]:
    """Attach a fresh map of ``n_pages`` pages; return (vm id, map)."""
    pmap = PhysMap(n_pages)
    return mem.attach(pmap, group, sharing, overhead), pmap


def pages(*ppns: int) -> np.ndarray:
    return np.asarray(ppns, dtype=np.int64)


def keyed(keys, cb: int = CB) -> np.ndarray:
    """Bytes of pages named by content keys (key 0 = zeros)."""
    return page_bytes(np.asarray(keys, dtype=np.uint64), cb)


def write_keys(mem: HostMemory, vm: int, ppns, keys, cb: int | None = None):
    """``mem.write`` of whole pages named by keys; returns the Faults."""
    ppns = np.asarray(ppns, dtype=np.int64)
    return mem.write(vm, ppns, keyed(keys, cb or mem.content_bytes))


def hinted_pair(
    n_frames: int, n_pages: int, key: int, *, ppn_a: int = 0, ppn_b: int = 0, swap: int = 8
) -> tuple[HostMemory, tuple[int, PhysMap], tuple[int, PhysMap]]:
    """Two sharing VMs ``a`` and ``b`` of ``n_pages`` on a fresh HostMemory, with the same
    bytes (content ``key``) at ``a``'s page ``ppn_a`` and ``b``'s page ``ppn_b``, ``a``'s
    page scanned once (a hint, not yet shared).  Returns (mem, (a, map), (b, map))."""
    mem = make_mem(n_frames, swap)
    a, b = attach(mem, n_pages), attach(mem, n_pages)
    write_keys(mem, a[0], pages(ppn_a), [key])
    write_keys(mem, b[0], pages(ppn_b), [key])
    mem.scan(a[0], pages(ppn_a))
    return mem, a, b


def sim_params(cb: int = CB, seed: int = 7, tick_s: float = 1.0) -> SimParams:
    return SimParams(seed=seed, tick_s=tick_s, page_size=4096, content_bytes=cb)


def quiet_idle_params() -> IdleParams:
    """Idle workload parameters that make no accesses at all (tests drive the VM)."""
    return IdleParams(accesses_per_s=0.0)


def vm_spec(name: str = "vm0", n_pages: int = 64, **kw) -> VMSpec:
    """A VMSpec whose workload does nothing unless ``workload_*`` is given."""
    kw.setdefault("workload_kind", "idle")
    if kw["workload_kind"] == "idle":
        kw.setdefault("workload_params", quiet_idle_params())
    return VMSpec(name=name, n_pages=n_pages, **kw)


def make_vm(
    n_pages: int = 64,
    *,
    mem: HostMemory | None = None,
    n_frames: int | None = None,
    swap: int | None = None,
    cb: int = CB,
    seed: int = 7,
    name: str = "vm0",
    group: int = 0,
    sample_pages: int = 100,
    balloon_max_fraction: float = 0.65,
    **spec_kw,
) -> tuple[VirtualMachine, HostMemory]:
    """A VM attached to ``mem`` (a fresh roomy HostMemory if none is given)."""
    if mem is None:
        mem = make_mem(n_frames or 2 * n_pages + 8, swap or 2 * n_pages, cb)
    spec = vm_spec(name, n_pages, **spec_kw)
    vm = VirtualMachine(spec, sim_params(cb, seed), sample_pages, balloon_max_fraction)
    vm.group_id = group
    vm.vm_id = mem.attach(vm.pmap, group, spec.sharing, spec.overhead_pages)
    return vm, mem


def no_room(k: int, vm: VirtualMachine) -> None:
    """A ``make_room`` for tests that must never run short of frames."""
    raise AssertionError(f"make_room({k}) called for {vm.name}")


def apply(vm: VirtualMachine, mem: HostMemory, reads=(), writes=(), keys=(), make_room=no_room):
    """Drive one step of accesses through guest and VMM (``keys``: content keys of writes)."""
    acc = Accesses(
        np.asarray(reads, dtype=np.int64),
        np.asarray(writes, dtype=np.int64),
        np.asarray(keys, dtype=np.uint64),
    )
    vm.apply(mem, make_room, acc)


def make_policy(**kw) -> HostPolicy:
    """A host policy for tiny hosts: fast balloon/swap/scan, short sample periods."""
    base = dict(
        scan_vm_pages_per_s=32.0,
        scan_host_pages_per_s=64.0,
        sample_period_s=4.0,
        sample_pages=16,
        balloon_rate_pages_per_s=32.0,
        swap_rate_pages_per_s=32.0,
        thresholds=Thresholds(high=0.12, soft=0.08, hard=0.04, low=0.02),
    )
    base.update(kw)
    return HostPolicy(**base)


def make_host(
    n_frames: int = 256,
    swap: int = 1024,
    *,
    cb: int = CB,
    seed: int = 7,
    name: str = "host0",
    policy: HostPolicy | None = None,
    **policy_kw,
) -> HostMemoryManager:
    return HostMemoryManager(
        HostSpec(name, n_frames, swap),
        sim_params(cb, seed),
        policy or make_policy(**policy_kw),
    )


#: (no guest kernel pages: tests count pages exactly; CLASS_IMAGE has the default ones)
TEST_IMAGE = ImageSpec("testimg", shared_fraction=0.5, zero_fraction=0.0, kernel_fraction=0.0)
#: An image whose pages are identical across VMs only with each class's probability (and a
#: few duplicated within a VM): every VM has its own image keys.
CLASS_IMAGE = ImageSpec(
    "classimg",
    shared_fraction=0.5,
    zero_fraction=0.05,
    family="fam",
    classes=(
        ("kernel", 0.3, 0.9, 0.0, "family"),
        ("libs", 0.4, 0.5, 0.1, "image"),
        ("data", 0.3, 0.2, 0.05, "image"),
    ),
)
