"""Migration policies: which VM to move off a host under memory pressure, and where to.

Scope: pure functions over small frozen records (no Ray, no host calls).  A policy
*proposes* migrations; the coordinator's migration engine (:mod:`cluster.migration`)
asks the destination for admission and carries them out.  Policies are chosen by
``[migration] policy`` from :mod:`vmmsim.policies` (kind ``migration``; built in:
``pressure``).  Protocol: ``(hosts: Sequence[HostView], vms: Sequence[VMView]) ->
list[Proposal]`` (name order in both); :func:`choose` runs the configured one and checks
its proposals (a known VM, not migrating, on ``source``; a known ``dest`` other than
``source``; at most one per VM), else :class:`vmmsim.policies.PolicyError`.

``pressure`` rule: a host that has been in the HARD or LOW free-memory state for
``migration.pressure_s`` seconds (counted by :mod:`cluster.migration`: short recoveries
do not reset the count), with no migration off it in flight, gives up the VM
whose move relieves the most pressure at the least cost::

    score = resident pages / (pages to send - pages the destination already holds + 1)

"Pages to send" is the VM's allocated pages (resident + VMM-swapped); "already holds" is
estimated as the VM's image pages when the destination runs (or is receiving) a VM of the
same image, else 0.  Destinations must pass admission
(:func:`hosts.migration_host.admission_reason`) on the coordinator's latest figures and
must not be under pressure themselves.  Ties go to the VM name, then the destination
name; sources are considered in name order, at most one proposal each, and each proposal
reserves its room on the destination before the next is made.

Not covered: carrying proposals out, refusals, timing (:mod:`cluster.migration`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmmsim.hosts.admission import Claim
from vmmsim.hosts.migration_host import admission_reason

from vmmsim.policies import PolicyError, register, resolve_callable
from vmmsim.policies import call as call_policy


@dataclass(frozen=True)
class HostView:
    name: str
    pressured: bool  # in HARD/LOW for at least pressure_s
    busy: bool  # a migration off this host is in flight
    free_pages: int  # free frames, less what VMs arriving here will take
    reserve_pages: int  # free frames to keep (the HIGH threshold)
    claims: Claim  # summed admission claims of its VMs (arriving ones included), pages
    memory_pages: int  # frames
    swap_pages: int  # swap slots
    images: frozenset[str]  # images of the VMs on (or arriving at) the host


@dataclass(frozen=True)
class VMView:
    name: str
    host: str
    image: str
    resident: int
    allocated: int
    image_pages: int
    overhead: int
    claim: Claim  # admission claim (min/pinned/max + overhead), pages
    migrating: bool


@dataclass(frozen=True)
class Proposal:
    vm: str
    source: str
    dest: str
    trigger: str
    score: float


@register("migration", "pressure")
def pressure_rule(hosts: Sequence[HostView], vms: Sequence[VMView]) -> list[Proposal]:
    """Proposals of the ``pressure`` rule (see the module docstring)."""
    by_name = {h.name: h for h in hosts}
    free = {h.name: h.free_pages for h in hosts}
    claims = {h.name: h.claims for h in hosts}
    out: list[Proposal] = []
    for src in sorted((h for h in hosts if h.pressured and not h.busy), key=lambda h: h.name):
        best: tuple[tuple[float, str, str], VMView, HostView] | None = None
        mine = sorted(
            (v for v in vms if v.host == src.name and not v.migrating and v.resident > 0),
            key=lambda v: v.name,
        )
        for vm in mine:
            for dst in sorted(by_name.values(), key=lambda h: h.name):
                if dst.name == src.name or dst.pressured:
                    continue
                refused = admission_reason(
                    free_pages=free[dst.name],
                    reserve_pages=dst.reserve_pages,
                    need_pages=vm.allocated + vm.overhead,
                    host=claims[dst.name],
                    vm=vm.claim,
                    memory_pages=dst.memory_pages,
                    swap_pages=dst.swap_pages,
                )
                if refused is not None:
                    continue
                held = vm.image_pages if vm.image in dst.images else 0
                score = vm.resident / (max(vm.allocated - held, 0) + 1)
                key = (-score, vm.name, dst.name)
                if best is None or key < best[0]:
                    best = (key, vm, dst)
        if best is not None:
            key, vm, dst = best
            free[dst.name] -= vm.allocated + vm.overhead
            claims[dst.name] = claims[dst.name] + vm.claim
            out.append(Proposal(vm.name, src.name, dst.name, "pressure", -key[0]))
    return out


POLICIES: dict[str, Callable[[Sequence[HostView], Sequence[VMView]], list[Proposal]]] = {
    "pressure": pressure_rule,
}


def choose(spec: str, hosts: Sequence[HostView], vms: Sequence[VMView]) -> list[Proposal]:
    """The proposals of migration policy ``spec``, checked (module docstring)."""
    policy = resolve_callable("migration", spec)
    out = list(call_policy("migration", spec, policy, hosts, vms))
    by_vm, names, seen = {v.name: v for v in vms}, {h.name for h in hosts}, set()
    for p in out:
        vm = by_vm.get(getattr(p, "vm", None))
        bad = (
            not isinstance(p, Proposal)
            or vm is None
            or vm.migrating
            or vm.host != p.source
            or p.dest not in names
            or p.dest == p.source
            or p.vm in seen
        )
        if bad:
            raise PolicyError(f"migration policy {spec!r} returned an invalid proposal {p!r}")
        seen.add(p.vm)
    return out
