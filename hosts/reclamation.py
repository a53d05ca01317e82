"""Reclamation: taking memory back from VMs, by free-memory state (ESX, Waldspurger 2002).

Scope: what one host does each tick, after its VMs' steps and the sharing scan, to keep
free memory at the HIGH margin, and the emergency swap when a VM needs frames now.  The
order of the mechanisms follows the free-memory state (:mod:`hosts.free_memory`):

====== =====================================================================
state  what runs (cheapest first; each only while the reclaim goal is unmet)
====== =====================================================================
HIGH   page sharing only (the background scan, :mod:`hosts.sharing`);
       balloons of VMs now below target deflate (memory given back)
SOFT   sharing; balloon the victims (at most ``excess``, the balloon rate and
       the goal each); VMM-swap only victims that cannot balloon further
       (no driver, or at the balloon cap).  With the goal met while still in
       SOFT (uncommitted memory + swap cap the free target below high +
       margin), balloons of VMs below target deflate by at most the free
       frames above the target, so deflating never starts reclamation again
HARD   sharing; VMM-swap the victims (a random page choice, pages that free
       a frame first), at the swap rate -- no ballooning
LOW    as HARD, and VMs above target are blocked on the next tick
====== =====================================================================

With ``policy.free_states = "vsphere6"`` (:mod:`hosts.min_free`) the states and goal are
vSphere 6's: CLEAR acts as HIGH does (no ballooning or swapping; the sharing scan at
``share_scan_clear_factor`` times its rates) but deflates balloons only into the surplus
above the free target, as SOFT with its goal met does; SOFT, HARD and LOW are as above.
The actions come from the state model (``host.thresholds.actions``, kept in
``host.actions``), so ``break_large`` and ``compress`` are visible to other mechanisms.

As in Waldspurger 2002, sec. 6.3: in the soft state ESX reclaims by ballooning and pages
only where ballooning is not possible; in the hard state it relies on paging; in the low
state it also blocks the VMs above their targets.  Every VMM swap-out
first offers the page to the sharing index (sec. 4.3: ESX always tries to share a page
before paging it out): a page whose bytes match a shared or hinted frame is shared
instead of swapped (:meth:`HostMemory.page_out`).  With large pages
(:mod:`hosts.large_pages`), ballooning or swapping a page breaks its large page first.

The reclaim goal is ``free_target - free frames`` (:meth:`HostMemoryManager.free_target`);
a VM's ``excess`` is its resident pages above its allocation target.

*Which* VMs are reclaimed from is a policy (kind ``reclamation`` in
:mod:`vmmsim.policies`, ``[policy] reclamation``): a function ``(ReclaimView) ->
Victims`` -- the VMs to balloon and the VMs to swap from, each in order.  The built-in
``esx`` takes VMs above target, largest excess first (ties by name), and, in HARD/LOW
with none above target, the largest VM.  The mechanism here carries the choice out: the
amounts (excess, rates, goal), the SOFT rule above, and which pages (random, from the
VM's VMM generator).  A policy runs inside the host (actor), so it must be a
deterministic function of its view; names it returns that are not VMs of the view are a
:class:`vmmsim.policies.PolicyError` (the host fails, exit 1).

Not covered: the state machine itself (:mod:`hosts.free_memory`), the page mechanics of
ballooning and swapping (:mod:`hosts.vm`, :mod:`hosts.vmm_swap`), the targets
(:mod:`hosts.allocation`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vmmsim.hosts.errors import SwapFull
from vmmsim.hosts.free_memory import MemState

from vmmsim.policies import PolicyError, register
from vmmsim.policies import call as call_policy

__all__ = ["ReclaimView", "Victims", "VictimView", "esx", "make_room", "reclaim"]


@dataclass(frozen=True)
class VictimView:
    """One VM as a reclamation policy sees it (pages)."""

    name: str
    resident: int  # guest pages backed by host memory now
    target: int  # its allocation target
    ballooned: int  # pages its balloon holds
    balloon_cap: int  # most pages its balloon may hold (0: no balloon driver)


@dataclass(frozen=True)
class ReclaimView:
    """What a reclamation policy sees of one host at one tick (read-only)."""

    host: str
    tick: int
    state: str  # "soft", "hard" or "low" (never called in "high" or "clear")
    goal_pages: int  # frames to free this tick (> 0)
    vms: tuple[VictimView, ...]  # name order


@dataclass(frozen=True)
class Victims:
    """A reclamation decision: VM names to balloon and to swap from, in order."""

    balloon: tuple[str, ...] = ()
    swap: tuple[str, ...] = ()


@register("reclamation", "esx")
def esx(view: ReclaimView) -> Victims:
    """ESX: VMs above target, largest excess first (ties by name); the largest VM when
    none is above target (swapped from only in HARD/LOW)."""
    over = sorted(
        (v for v in view.vms if v.resident > v.target),
        key=lambda v: (v.target - v.resident, v.name),
    )
    names = tuple(v.name for v in over)
    if names or not view.vms:
        return Victims(names, names)
    largest = sorted(view.vms, key=lambda v: -v.resident)[0]  # stable: name order on ties
    return Victims((), (largest.name,))


def _view(host: Any, goal: int) -> ReclaimView:
    vms = tuple(
        VictimView(n, v.resident, v.target, v.guest.n_ballooned, v.balloon_cap)
        for n, v in ((n, host.vms[n]) for n in host.order)
    )
    return ReclaimView(host.name, host.tick, host.mstate.name.lower(), goal, vms)


def _checked(view: ReclaimView, decision: Any, name: str) -> Victims:
    known = {v.name for v in view.vms}
    if not isinstance(decision, Victims):
        raise PolicyError(
            f"reclamation policy {name!r} on host {view.host}: must return Victims, "
            f"got {type(decision).__name__}"
        )
    for part in (decision.balloon, decision.swap):
        bad = [n for n in part if n not in known]
        if bad or len(set(part)) != len(part):
            raise PolicyError(
                f"reclamation policy {name!r} on host {view.host} at tick {view.tick}: "
                f"unknown or repeated VMs {sorted(map(str, bad or part))[:5]}"
            )
    return decision


def reclaim(host: Any, policy: Callable[[ReclaimView], Victims] = esx, name: str = "esx") -> None:
    """One tick of reclamation on ``host`` (a :class:`hosts.host_manager.HostMemoryManager`):
    next free-memory state, then the actions of that state (module docstring)."""
    p, mem, th = host.policy, host.mem, host.thresholds
    free = mem.n_free / host.spec.n_frames
    host.mstate = th.next_state(host.mstate, free)
    host.actions = acts = th.actions(host.mstate, free)
    tick_s = host.sim.tick_s
    target = host.free_target()
    goal = max(0, target - mem.n_free)  # reclaim_goal_pages(n_free, ...)
    vms = [host.vms[n] for n in host.order]
    if host.mstate == MemState.HIGH:
        for vm in vms:  # give memory back to VMs below target
            room = vm.target - vm.resident
            if room > 0 and vm.guest.n_ballooned:
                vm.deflate_balloon(mem, min(room, int(p.balloon_rate_pages_per_s * tick_s)))
    elif (host.mstate == MemState.SOFT and goal <= 0) or host.mstate == MemState.CLEAR:
        # SOFT with the goal met: only when what memory + swap leave over caps the
        # free target below the exit point of SOFT (high + margin).  Deflate only into
        # the surplus above the target, so the host does not sit in SOFT with balloons
        # it no longer needs and deflating never starts reclamation again.  vSphere 6's
        # CLEAR (hosts.min_free) deflates the same way: free is near minFree there.
        surplus = mem.n_free - target
        for vm in vms:
            if surplus <= 0:
                break
            room = vm.target - vm.resident
            if room > 0 and vm.guest.n_ballooned:
                n = min(room, int(p.balloon_rate_pages_per_s * tick_s), surplus)
                surplus -= vm.deflate_balloon(mem, n)
    host.blocked = set()
    if goal <= 0:
        return
    if not acts & {"balloon", "swap"}:  # HIGH (and CLEAR): free below the margin it
        return  # may shrink to, no actions
    view = _view(host, goal)
    decision = call_policy("reclamation", name, policy, view, where=f" on host {host.name}")
    victims = _checked(view, decision, name)
    left = goal
    swap_rate = int(p.swap_rate_pages_per_s * tick_s)
    if "balloon" in acts:  # SOFT only
        rate = int(p.balloon_rate_pages_per_s * tick_s)
        for vm in (host.vms[n] for n in victims.balloon):
            if left <= 0:
                break
            excess = vm.resident - vm.target
            if excess > 0:
                left -= vm.inflate_balloon(mem, min(excess, rate, left))
        # Swap only VMs that cannot be ballooned (no driver, or at the cap).
        for vm in (host.vms[n] for n in victims.swap):
            if left <= 0:
                break
            excess = vm.resident - vm.target
            if excess > 0 and vm.guest.n_ballooned >= vm.balloon_cap:
                left -= vm.swap_out_random(mem, min(excess, swap_rate, left))
    elif "swap" in acts:  # HARD and LOW: paging only
        for vm in (host.vms[n] for n in victims.swap):
            if left <= 0:
                break
            excess = max(vm.resident - vm.target, 0) or max(vm.resident - vm.spec.min_pages, 0)
            if excess > 0:  # never below a VM's reservation (min)
                left -= vm.swap_out_random(mem, min(excess, swap_rate, left))
    if "block" in acts:
        host.blocked = {vm.name for vm in vms if vm.resident > vm.target}


def make_room(host: Any, k: int, requester: Any) -> None:
    """Free ``k`` frames of ``host`` now by VMM-swapping random victims (over-target VMs
    first, most over first; then ``requester``; then the rest by name), pages that free a
    frame first, each offered to page sharing before it is written to swap; whatever the
    policy's rates, which pace only :func:`reclaim` (a rate of 0 turns that off).

    Other VMs' consumed reservations (``min``) are spared: a second pass takes from them
    only when the first could not free ``k`` frames (a chunk of the requester larger than
    free frames, its own pages and the others' unreserved ones: failing the host would be
    the alternative).

    With memory compression, each pass ends, when the VMs have nothing left to page out
    (their pages pinned, reserved, compressed or swapped), by writing the compression
    caches' oldest pages to swap until ``k`` frames are free, caches in the same VM order
    (:meth:`HostMemory.zip_evict`): the caches are a best-effort tier in front of swap,
    and their frames are host memory like any other.  So reclamation does not give up
    while swap has free slots for them.  Not a policy: a VM
    that needs a frame must get one or the host is out of memory and swap
    (:class:`hosts.errors.SwapFull`)."""
    freed = 0
    over = sorted(
        (v for v in host.vms.values() if v.resident > v.target),
        key=lambda v: (v.target - v.resident, v.name),
    )
    rest = [requester] + [host.vms[n] for n in host.order if host.vms[n] is not requester]
    for spare in (True, False):
        for vm in over + rest:
            floor = vm.spec.min_pages if spare and vm is not requester else 0
            while freed < k and vm.resident > floor:
                before = vm.resident
                want = min(k - freed, vm.resident - floor)
                n = vm.swap_out_random(host.mem, want, frames_first=True)
                freed += n
                host.emergency_swaps += before - vm.resident  # pages swapped (not shared)
                if vm.resident == before and n == 0:
                    break  # nothing left to swap in this VM (all pinned or swapped)
            if freed >= k:
                return
        if host.mem.zip_mode:  # (off by default: nothing changes then)
            for vm in over + rest:
                freed += host.mem.zip_evict(vm.vm_id, k - freed)
                if freed >= k:
                    return
    if freed < k:  # the caller needs all k: never return short (it would loop)
        raise SwapFull(
            f"host {host.name}: out of memory and swap at tick {host.tick} "
            f"(needed {k} frames; swap {host.mem.swap.n_used}/{host.mem.swap.n_slots})"
        )
