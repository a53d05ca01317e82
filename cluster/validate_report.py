"""What ``vmmsim validate`` prints: the placement and, per host, what it commits.

Scope: per host, the committed memory and overcommit ratio (:func:`host_commitments`), the
VMs' working sets (estimated from the config: steady ``wss_mb``, the largest phased phase,
batch program + heap, a fileserver's dirty set; other kinds count 0), and warnings: a VM
whose working set is larger than the VM (:func:`config_warnings`), a host whose VMs'
working sets do not fit its memory (it reclaims all the time), a host whose VMs cannot all
be held in practice (committed memory beyond memory less the ``free_high`` reserve --
vSphere 6's minFree with ``free_states = "vsphere6"`` -- plus swap).  Deterministic
(config order); no simulation.
"""

from __future__ import annotations

from typing import Any

from vmmsim.cluster.config import (
    SimConfig,
    VMConfig,
    config_warnings,
    host_commitments,
    workload_working_sets,
)
from vmmsim.hosts.min_free import min_free_mb


def working_set_mb(vm: VMConfig) -> float:
    """The largest working set ``vm``'s workload touches, MB, at most the VM's memory."""
    mb = max((mb for _, mb in workload_working_sets(vm)), default=0.0)
    return min(float(mb), vm.memory_mb)


def host_report(cfg: SimConfig, placement: dict[str, str]) -> dict[str, dict[str, Any]]:
    """:func:`host_commitments` plus ``working_set_mb`` (the sum over its VMs) and
    ``warnings`` (one line each, ``hosts.NAME: what``)."""
    hosts = host_commitments(cfg, placement)
    ovh = cfg.policy.vm_overhead_mb
    for name, h in hosts.items():
        vms = [v for v in cfg.vms if placement.get(v.name) == name]
        ws = sum(working_set_mb(v) for v in vms)
        h["working_set_mb"] = round(ws, 6)
        warn = []
        if vms and ws + len(vms) * ovh > h["memory_mb"]:
            warn.append(
                f"hosts.{name}: the working sets of its {len(vms)} VMs ({ws:g} MB) + VMM "
                f"overheads ({len(vms) * ovh:g} MB) exceed its memory_mb {h['memory_mb']:g} MB: "
                "it will balloon or swap all the time"
            )
        reserve, what = cfg.policy.free_high, "free_high"
        if cfg.policy.free_states == "vsphere6":  # the allocation keeps minFree free
            reserve = float(min_free_mb(h["memory_mb"])) / h["memory_mb"]
            what = "vSphere 6 minFree"
        holds = h["memory_mb"] * (1 - reserve) + h["swap_mb"]
        if h["committed_mb"] > holds:
            warn.append(
                f"hosts.{name}: its VMs' memory + overheads ({h['committed_mb']:g} MB) exceed "
                f"what it holds in practice ({holds:g} MB: memory_mb less the {what} "
                f"reserve of {reserve:g}, plus swap_mb): if the guests touch all "
                "their memory, only page sharing can keep them running"
            )
        h["warnings"] = warn
    return hosts


def validate_doc(cfg: SimConfig, placement: dict[str, str]) -> dict[str, Any]:
    """The JSON that ``vmmsim validate`` prints on stdout."""
    hosts = host_report(cfg, placement)
    return {
        "config_hash": cfg.config_hash(),
        "placement": placement,
        "hosts": hosts,
        "warnings": config_warnings(cfg) + [w for h in hosts.values() for w in h["warnings"]],
    }


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """One line per host for a reader (stderr), then the warnings."""
    out = []
    for name, h in doc["hosts"].items():
        vms = f"{h['vms']} VM{'' if h['vms'] == 1 else 's'}"
        out.append(
            f"vmmsim: {name}: {vms}, committed {h['committed_mb']:g} MB on "
            f"{h['memory_mb']:g} MB memory (overcommit {h['overcommit']:.2f}x), swap "
            f"{h['swap_mb']:g} MB, working sets {h['working_set_mb']:g} MB"
        )
    out += [f"vmmsim: warning: {w}" for w in doc["warnings"]]
    return out
