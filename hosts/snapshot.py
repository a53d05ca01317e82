"""Host and VM state as plain data: named numpy arrays plus a JSON-able ``meta`` dict.

Scope: the complete, exact state of a :class:`hosts.host_manager.HostMemoryManager` (for
checkpoints) and of one :class:`hosts.vm.VirtualMachine` without its host-specific map
(for migration: frame numbers mean nothing on another host).  Restoring and continuing is
bit-for-bit the same as never having stopped.  No pickle: arrays and JSON only, so a
snapshot from an untrusted file can never run code.

The VM's static description (:class:`hosts.specs.VMSpec`) is *not* part of a snapshot --
it comes from the config, which checkpoints store and hash separately.

Not covered: file formats (``cluster/checkpoint.py``), page transfer (migration).
"""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
from vmmsim.hosts.free_memory import MemState
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.host_memory import VMSlot
from vmmsim.hosts.large_pages import LargePages, region_pages
from vmmsim.hosts.page_state import N_STATES
from vmmsim.hosts.phys_map import pack
from vmmsim.hosts.sharing.index import SharingIndex
from vmmsim.hosts.specs import HostPolicy, HostSpec, SimParams, VMSpec
from vmmsim.hosts.vm import VirtualMachine, VMStats
from vmmsim.workloads.replay import ReplayWorkload

Arrays = dict[str, np.ndarray]

#: The guest's arrays as stored: ``v2p`` and ``vslot`` apart (the page table with -1 for a
#: swapped page, and the slots), as before the slots moved into ``v2p`` (GuestOS.set_tables).
_GUEST = ("v2p", "vstate", "vslot", "clean", "p2v", "pref", "pinned", "free_stack")
_GUEST_SPLIT = ("v2p", "vslot")
_FRAMES = ("content", "refcount", "shared", "owner_vm", "owner_ppn", "free_stack")
_SWAP = ("content", "used", "free_stack")
#: The swap store's tiers and compression records (absent from older snapshots).
_SWAP_TIERS = ("tier", "zip_units", "zip_owner", "zip_ppn", "zip_seq")
_INDEX = ("kind", "key", "group")


# ---------------------------------------------------------------------------- VMs
def vm_state(vm: VirtualMachine, *, with_map: bool) -> tuple[Arrays, dict[str, Any]]:
    """Everything that defines ``vm``; with ``with_map`` also its VMM map (same host)."""
    g = vm.guest
    a: Arrays = {f"guest.{k}": getattr(g, k) for k in _GUEST if k not in _GUEST_SPLIT}
    a["guest.v2p"], a["guest.vslot"] = g.page_table(), g.vslot
    a["guest.swap.content"] = g.swap.content
    a["guest.swap.free_stack"] = g.swap.free_stack
    # The map's flag bits as the three bool arrays they were before they were packed
    # (hosts.phys_map): the same schema and bytes.
    a["sampler.marks"] = vm.pmap.sampled
    a["pmap.accessed"] = vm.pmap.accessed
    if with_map:
        a["pmap.state"] = vm.pmap.state
        a["pmap.loc"] = vm.pmap.loc
        a["pmap.dirty"] = vm.pmap.dirty
    large = None
    if with_map and vm.pmap.large is not None:  # (a migrating VM gets new large pages)
        la, large = vm.pmap.large.state()
        a.update({f"pmap.{k}": v for k, v in la.items()})
    s = vm.sampler
    meta = {
        "name": vm.name,
        "steps": vm.steps,
        "target": vm.target,
        "stats": vm.stats.as_dict(),
        "scan": [vm.scan_credit, vm.scan_a, vm.scan_b, vm.scan_pos],
        "guest": {
            "n_free": g.n_free,
            "hand": g.hand,
            "n_ballooned": g.n_ballooned,
            "swap_n_free": g.swap.n_free,
            "swap_n_used": g.swap.n_used,
        },
        "sampler": {
            "sampled": s.sampled,
            "touched": s.touched,
            "fast": s.fast,
            "slow": s.slow,
            "periods": s.periods,
            "active_true": s.active_true,
            "ran": s.ran,
        },
        "workload": vm.workload.get_state(),
        "vmm_rng": vm.vmm_rng.bit_generator.state,
        "n_zero_shared": vm.pmap.n_zero_shared,
        "vm_id": vm.vm_id,
        "group_id": vm.group_id,
    }
    if large is not None:
        meta["large"] = large
    return a, meta


def restore_vm(
    spec: VMSpec, sim: SimParams, policy: HostPolicy, a: Arrays, meta: dict[str, Any]
) -> VirtualMachine:
    """A VM rebuilt from :func:`vm_state` (its map too, if the snapshot has one)."""
    # A VM of a replay keeps taking its accesses from the coordinator (no generator).
    workload = ReplayWorkload() if meta["workload"].get("kind") == ReplayWorkload.kind else None
    vm = VirtualMachine(spec, sim, policy.sample_pages, policy.balloon_max_fraction, workload)
    g = vm.guest
    for k in _GUEST:
        if k not in _GUEST_SPLIT:
            setattr(g, k, _own(a[f"guest.{k}"]))
    g.set_tables(a["guest.v2p"], a["guest.vslot"])
    g.swap.content = _own(a["guest.swap.content"])
    g.swap.free_stack = _own(a["guest.swap.free_stack"])
    gm = meta["guest"]
    g.n_free, g.hand, g.n_ballooned = gm["n_free"], gm["hand"], gm["n_ballooned"]
    g.swap.n_free, g.swap.n_used = gm["swap_n_free"], gm["swap_n_used"]
    for k, v in meta["sampler"].items():
        setattr(vm.sampler, k, v)
    # (without the map -- a migrating VM -- no page is dirty on its new host)
    dirty = a["pmap.dirty"] if "pmap.state" in a else None
    vm.pmap.bits = pack(a["pmap.accessed"], dirty, a["sampler.marks"])
    if "pmap.state" in a:
        vm.pmap.state = _own(a["pmap.state"])
        vm.pmap.loc = _own(a["pmap.loc"])
        vm.pmap.counts = np.bincount(vm.pmap.state, minlength=N_STATES).astype(np.int64)
        vm.pmap.n_zero_shared = meta["n_zero_shared"]
    if "pmap.large.intact" in a:
        la = {k[len("pmap.") :]: v for k, v in a.items() if k.startswith("pmap.large.")}
        rp = region_pages(sim.page_size)
        vm.pmap.large = LargePages.restore(spec.n_pages, rp, la, meta["large"])
    vm.steps, vm.target = meta["steps"], meta["target"]
    vm.stats = VMStats(**meta["stats"])
    vm.scan_credit, vm.scan_a, vm.scan_b, vm.scan_pos = meta["scan"]
    vm.workload.set_state(meta["workload"])
    vm.vmm_rng.bit_generator.state = meta["vmm_rng"]
    vm.vm_id, vm.group_id = meta["vm_id"], meta["group_id"]
    return vm


def _own(x: np.ndarray) -> np.ndarray:
    """A writable copy (snapshots may be read-only views of a memory-mapped file)."""
    return np.array(x, copy=True)


# ---------------------------------------------------------------------------- hosts
def host_state(host: HostMemoryManager) -> tuple[Arrays, dict[str, Any]]:
    """The complete state of a host, its VMs included (arrays may alias live state)."""
    mem = host.mem
    a: Arrays = {f"frames.{k}": getattr(mem.frames, k) for k in _FRAMES}
    a.update({f"swap.{k}": getattr(mem.swap, k) for k in _SWAP + _SWAP_TIERS})
    a["zip_frames"] = mem.zip_frames
    a.update({f"index.{k}": getattr(mem.index, k) for k in _INDEX})
    a["zero"] = mem.zero
    a["index_frames"] = mem.index_frames
    a["state_ticks"] = host.state_ticks
    a["shared_series"] = np.array(host.shared_series, dtype=np.int64)  # (a copy)
    vms = {}
    for name in host.order:
        vm = host.vms[name]
        slot = mem.vms[vm.vm_id]
        va, vmeta = vm_state(vm, with_map=True)
        a.update({f"vm/{name}/{k}": v for k, v in va.items()})
        a[f"vm/{name}/overhead"] = slot.overhead
        vms[name] = {"meta": vmeta, "group": slot.group, "sharing": slot.sharing}
    meta = {
        "name": host.name,
        "tick": host.tick,
        "mstate": int(host.mstate),
        "scan_credit": host.scan_credit,
        "groups": host.groups,
        "paused": host.paused,
        "blocked": sorted(host.blocked),
        "emergency_swaps": host.emergency_swaps,
        "frames_n_free": mem.frames.n_free,
        "swap_n_free": mem.swap.n_free,
        "zip_full": mem.zip_full,
        "next_id": mem.next_id,
        "vms": vms,
    }
    if host.policy.large_pages:
        meta["large_first_break"] = host.large_first_break
    # KVM-style host (only when on, so snapshots of other hosts are unchanged).
    if host.ksm is not None:
        ka, meta["ksm"] = host.ksm.state()
        a.update(ka)
    if host.reporter is not None:
        fa, meta["fpr"] = host.reporter.state()
        a.update(fa)
    return a, meta


def restore_host(
    spec: HostSpec,
    sim: SimParams,
    policy: HostPolicy,
    vm_specs: dict[str, VMSpec],
    a: Arrays,
    meta: dict[str, Any],
) -> HostMemoryManager:
    """A host rebuilt from :func:`host_state`; continuing it equals never stopping."""
    host = HostMemoryManager(spec, sim, policy)
    mem = host.mem
    for k in _FRAMES:
        setattr(mem.frames, k, _own(a[f"frames.{k}"]))
    for k in _SWAP:
        setattr(mem.swap, k, _own(a[f"swap.{k}"]))
    for k in _INDEX:
        setattr(mem.index, k, _own(a[f"index.{k}"]))
    mem.zero = _own(a["zero"])
    if "index_frames" in a:  # (snapshots from before the index was charged have none)
        mem.index_frames = _own(a["index_frames"])
    for k in _SWAP_TIERS:
        if f"swap.{k}" in a:
            setattr(mem.swap, k, _own(a[f"swap.{k}"]))
        elif k == "tier":  # (one tier before the swap cache: the free count was all)
            mem.swap.tier[1 + 2] = meta["swap_n_free"]
    if "zip_frames" in a:
        mem.zip_frames = _own(a["zip_frames"])
        mem.zip_full = bool(meta["zip_full"])
    mem.frames.n_free = meta["frames_n_free"]
    mem.swap.n_free = meta["swap_n_free"]
    mem.next_id = meta["next_id"]
    _rebuild_index(mem.index)
    host.tick, host.mstate = meta["tick"], MemState(meta["mstate"])
    host.scan_credit = meta["scan_credit"]
    host.groups = dict(meta["groups"])
    host.paused = dict(meta["paused"])
    host.blocked = set(meta["blocked"])
    host.emergency_swaps = meta["emergency_swaps"]
    host.large_first_break = meta.get("large_first_break")
    host.state_ticks = _own(a["state_ticks"])
    host.shared_series = array("q", a["shared_series"].astype(np.int64).tobytes())
    for name, info in meta["vms"].items():
        prefix = f"vm/{name}/"
        va = {k[len(prefix) :]: v for k, v in a.items() if k.startswith(prefix)}
        vm = restore_vm(vm_specs[name], sim, policy, va, info["meta"])
        if "ran" not in info["meta"]["sampler"]:  # saved when periods were host-wide
            vm.sampler.ran = (host.tick - 1) % host.period_ticks + 1 if host.tick else -1
        mem.vms[vm.vm_id] = VMSlot(vm.pmap, info["group"], info["sharing"], _own(va["overhead"]))
        host.vms[name] = vm
    host.order = sorted(host.vms)
    if host.ksm is not None and "ksm" in meta:
        host.ksm.restore(a, meta["ksm"])
    if host.reporter is not None and "fpr" in meta:
        host.reporter.restore(a, meta["fpr"])
    mem.rebuild_zip_counts()
    return host


def _rebuild_index(index: SharingIndex) -> None:
    """The (group, hash) -> frame table follows from the per-frame records."""
    index.rebuild()
