"""Initial placement of VMs whose config names no host (placement policies and packing).

Scope: a pure, deterministic function from the config to {vm: host}.  Pinned VMs stay
where the config puts them; every host must then pass ESX admission control
(:mod:`hosts.admission`, the paper's sec. 6: minimum -- at least pinned -- plus overhead
in memory, configured size less minimum in swap; and a page beyond pinned memory, two
pages of memory + swap over) for the VMs it gets.  A policy ranks the hosts a VM would
go to, from each host's *committed* memory (sum of memory_mb + overhead of the VMs
placed so far):

* ``most_free``: the most uncommitted memory first (ties: name order);
* ``image_affinity``: hosts where its max fits in memory first, the one already running
  the most VMs of the same image (so page sharing can find the image's pages) first, then
  most free; the other hosts after them, as ``most_free``;
* ``round_robin``: name order, starting after the host chosen last.

These are the built-in ``placement`` policies of :mod:`vmmsim.policies` (``[policy]
placement`` selects one, or a user's ``module:attr``).  Protocol: a function
``(PlacementView) -> sequence of host names``, the hosts to try for one VM, best first
(hosts left out are not tried); unknown or repeated names are a
:class:`vmmsim.policies.PolicyError`.  Admission is checked here, not by the policy: a
ranked host that would refuse the VM is skipped, never chosen, and a VM whose ranked
hosts all refuse it (when some host left out would admit it) is a
:class:`PlacementError` (``policy.placement: ...``) naming the policy, the VM, the
refusal and a host left out.  ``PlacementHost.admits`` tells a policy which hosts would
take the VM now.

Packing, in three passes (the first that places every VM wins):

1. greedy in config order: each VM to the policy's first admissible host (the
   placement of every config this always placed, unchanged);
2. greedy largest first (memory_mb + overhead, then config order);
3. a depth-first search over the largest-first order, hosts in the policy's order,
   pruned on the total room left and on hosts in identical states, bounded by
   :data:`SEARCH_WORK` host visits (each node costs one visit per host).

When nothing is found, a :class:`PlacementError` names a VM the largest-first greedy
could not place, the host closest to taking it and the figure it lacks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmmsim.cluster.config import SimConfig, VMConfig, vm_claim
from vmmsim.hosts import admission
from vmmsim.hosts.admission import Claim

from vmmsim.policies import PolicyError, register, resolve_callable

SEARCH_WORK = 300_000  # host visits of the fallback search before giving up (a few s)


class PlacementError(ValueError):
    pass


@dataclass
class _Hosts:
    """Per-host state of a (partial) placement: claims summed and image counts."""

    cfg: SimConfig
    used: dict[str, Claim]
    images: dict[str, dict[str, int]]

    def copy(self) -> _Hosts:
        return _Hosts(self.cfg, dict(self.used), {h: dict(c) for h, c in self.images.items()})

    def admits(self, host: str, c: Claim) -> bool:
        return self.refusal(host, c) is None

    def refusal(self, host: str, c: Claim) -> admission.Refusal | None:
        h = self.cfg.host(host)
        return admission.check(
            self.used[host] + c, memory=h.memory_mb, swap=h.swap_mb, page=_page_mb(self.cfg)
        )

    def add(self, host: str, vm: VMConfig, c: Claim) -> None:
        self.used[host] = self.used[host] + c
        self.images[host][vm.image] = self.images[host].get(vm.image, 0) + 1

    def remove(self, host: str, vm: VMConfig, c: Claim) -> None:
        self.used[host] = self.used[host] - c
        self.images[host][vm.image] -= 1

    def free(self, host: str) -> float:
        return self.cfg.host(host).memory_mb - self.used[host].commit


@dataclass(frozen=True)
class PlacementHost:
    """One host as a placement policy sees it."""

    name: str
    free_mb: float  # memory_mb less the commitments (memory_mb + overhead) placed so far
    same_image: int  # VMs of the VM's image already placed here
    admits: bool = True  # admission control would let the VM on now (hosts.admission)


@dataclass(frozen=True)
class PlacementView:
    """What a placement policy sees when one VM is placed (read-only)."""

    vm: str
    image: str
    commit_mb: float  # the VM's memory_mb + overhead
    hosts: tuple[PlacementHost, ...]  # config order
    next_index: int  # index into ``hosts`` after the host chosen last (round robin)


Policy = Callable[[PlacementView], Sequence[str]]


def _by_name(h: str) -> list[int]:
    return [-ord(c) for c in h]  # in a max(): ties go to the first name


@register("placement", "most_free")
def most_free(view: PlacementView) -> list[str]:
    """The most uncommitted memory first (ties: name order)."""
    ranked = sorted(view.hosts, key=lambda h: (h.free_mb, _by_name(h.name)), reverse=True)
    return [h.name for h in ranked]


@register("placement", "image_affinity")
def image_affinity(view: PlacementView) -> list[str]:
    """Hosts where the VM fits in memory, most VMs of its image first; then most free."""
    # Prefer hosts where the VM's max fits in *memory* (swap is for overcommit, not for
    # packing); among those, the one running the most VMs of the same image.
    fits = [h for h in view.hosts if h.free_mb >= view.commit_mb]
    fits.sort(key=lambda h: (h.same_image, h.free_mb, _by_name(h.name)), reverse=True)
    in_mem = [h.name for h in fits]
    return in_mem + [h for h in most_free(view) if h not in in_mem]


@register("placement", "round_robin")
def round_robin(view: PlacementView) -> list[str]:
    """Config order, starting after the host chosen last."""
    n = len(view.hosts)
    return [view.hosts[(view.next_index + i) % n].name for i in range(n)]


def _ranker(cfg: SimConfig) -> Callable[[VMConfig, Claim, _Hosts, list], list[str]]:
    """The configured placement policy as a host ranking over the packing state."""
    spec = cfg.policy.placement
    policy = resolve_callable("placement", spec)
    names = cfg.host_names()

    def rank(vm: VMConfig, c: Claim, st: _Hosts, rr: list) -> list[str]:
        view = PlacementView(
            vm.name,
            vm.image,
            c.commit,
            tuple(
                PlacementHost(h, st.free(h), st.images[h].get(vm.image, 0), st.admits(h, c))
                for h in names
            ),
            rr[0] if rr else 0,
        )
        try:
            ranked = list(policy(view))
        except Exception as e:
            raise PolicyError(
                f"placement policy {spec!r} failed for VM {vm.name}: {type(e).__name__}: {e}"
            ) from None
        if len(set(ranked)) != len(ranked) or not set(ranked) <= set(names):
            raise PolicyError(
                f"placement policy {spec!r} for VM {vm.name}: expected distinct host names, "
                f"got {ranked[:5]!r}"
            )
        return ranked

    return rank


def _page_mb(cfg: SimConfig) -> float:
    return cfg.simulation.page_size / 2**20


def _claim(cfg: SimConfig, vm: VMConfig) -> Claim:
    return vm_claim(vm, cfg.policy.vm_overhead_mb)


def _greedy(
    cfg: SimConfig, order: Sequence[VMConfig], st: _Hosts
) -> tuple[dict[str, str], VMConfig | None]:
    """Each VM of ``order`` to the policy's first admissible host; stops at the first VM
    that fits nowhere (returned).  Changes ``st``."""
    policy = _ranker(cfg)
    names = cfg.host_names()
    rr: list = []
    out: dict[str, str] = {}
    for vm in order:
        c = _claim(cfg, vm)
        host = next((h for h in policy(vm, c, st, rr) if st.admits(h, c)), None)
        if host is None:
            return out, vm
        out[vm.name] = host
        st.add(host, vm, c)
        rr[:] = [(names.index(host) + 1) % len(names)]
    return out, None


def _search(cfg: SimConfig, order: Sequence[VMConfig], st: _Hosts) -> dict[str, str] | None:
    """Depth-first search for an admissible assignment of ``order`` (largest first),
    hosts in the policy's order; None if there is none or the work budget runs out."""
    policy = _ranker(cfg)
    names = cfg.host_names()
    claims = [_claim(cfg, vm) for vm in order]
    # Room still needed by the VMs from position i on (for pruning).
    need = [Claim()] * (len(order) + 1)
    for i in range(len(order) - 1, -1, -1):
        need[i] = need[i + 1] + claims[i]

    def room() -> tuple[float, float, float]:
        mem = swap = commit = 0.0
        for h in names:
            hc, u = cfg.host(h), st.used[h]
            mem += max(0.0, hc.memory_mb - u.reserve)
            swap += max(0.0, hc.swap_mb - u.swap)
            commit += max(0.0, hc.memory_mb + hc.swap_mb - u.commit)
        return mem, swap, commit

    out: dict[str, str] = {}
    budget = [SEARCH_WORK]
    rr: list = []

    def dfs(i: int) -> bool:
        if i == len(order):
            return True
        budget[0] -= len(names)
        if budget[0] < 0:
            return False
        mem, swap, commit = room()
        if (
            need[i].reserve > mem + 1e-9
            or need[i].swap > swap + 1e-9
            or need[i].commit > commit + 1e-9
        ):
            return False
        vm, c = order[i], claims[i]
        seen: set[tuple] = set()
        for h in policy(vm, c, st, rr):
            hc, u = cfg.host(h), st.used[h]
            state = (hc.memory_mb, hc.swap_mb, u.reserve, u.pinned, u.swap, u.commit)
            if state in seen or not st.admits(h, c):
                continue  # a host like one tried already leads to the same outcomes
            seen.add(state)
            st.add(h, vm, c)
            out[vm.name] = h
            saved = list(rr)
            rr[:] = [(names.index(h) + 1) % len(names)]
            if dfs(i + 1):
                return True
            rr[:] = saved
            del out[vm.name]
            st.remove(h, vm, c)
        return False

    return dict(out) if dfs(0) else None


def place(cfg: SimConfig) -> dict[str, str]:
    """{vm name: host name} for every VM, pinned ones as configured (module docstring).
    A placement policy that fails or returns unknown hosts is a :class:`PlacementError`."""
    try:
        return _place(cfg)
    except PolicyError as e:
        raise PlacementError(f"{cfg.source}: policy.placement: {e}") from None


def _place(cfg: SimConfig) -> dict[str, str]:
    st = _Hosts(cfg, {h: Claim() for h in cfg.host_names()}, {h: {} for h in cfg.host_names()})
    pinned: dict[str, str] = {}
    for v in cfg.vms:
        if v.host is not None:
            c = _claim(cfg, v)
            refused = st.refusal(v.host, c)
            if refused is not None:  # config validation refuses these first
                mine = [x.name for x in cfg.vms if x.host == v.host]
                raise PlacementError(
                    f"{cfg.source}: hosts ({v.host}): "
                    + refused.message(f"its {len(mine)} pinned VMs ({', '.join(mine[:5])})")
                )
            pinned[v.name] = v.host
            st.add(v.host, v, c)
    free = [v for v in cfg.vms if v.host is None]
    done, _ = _greedy(cfg, free, st.copy())
    if len(done) < len(free):
        largest = sorted(free, key=lambda v: -_claim(cfg, v).commit)  # stable: config order
        trial = st.copy()
        done, stuck = _greedy(cfg, largest, trial)
        if stuck is not None:
            found = _search(cfg, largest, st.copy())
            if found is None:
                raise PlacementError(_left_out(cfg, stuck, trial) or _refusal(cfg, stuck, trial))
            done = found
    out = {**pinned, **done}
    return {v.name: out[v.name] for v in cfg.vms}


def _left_out(cfg: SimConfig, vm: VMConfig, st: _Hosts) -> str | None:
    """If the policy ranked only hosts that refuse ``vm`` (after the VMs placed in
    ``st``) while a host it left out would admit it: one line naming the policy, the VM,
    the first ranked host's refusal and a host that would admit it; else None."""
    c = _claim(cfg, vm)
    ranked = _ranker(cfg)(vm, c, st, [])
    if any(st.admits(h, c) for h in ranked):
        return None
    other = next((h for h in cfg.host_names() if h not in ranked and st.admits(h, c)), None)
    if other is None:
        return None
    if not ranked:
        why = "it ranked no host"
    else:
        refused = st.refusal(ranked[0], c)
        assert refused is not None
        why = f"{ranked[0]} refuses it: " + refused.message(f"{ranked[0]}'s VMs with {vm.name}")
    return (
        f"{cfg.source}: policy.placement: placement policy {cfg.policy.placement!r} for VM "
        f"{vm.name} ranked only hosts that refuse it ({why}); {other}, left out, would "
        "admit it"
    )


def _refusal(cfg: SimConfig, vm: VMConfig, st: _Hosts) -> str:
    """Why ``vm`` fits nowhere after the VMs placed in ``st``: the host closest to taking
    it (least shortfall over the admission limits) and the figure it lacks."""
    c, page = _claim(cfg, vm), _page_mb(cfg)

    def short(h: str) -> float:
        hc = cfg.host(h)
        return admission.shortfall(st.used[h] + c, memory=hc.memory_mb, swap=hc.swap_mb, page=page)

    best = min(cfg.host_names(), key=lambda h: (short(h), h))
    hc, u = cfg.host(best), st.used[best]
    refused = st.refusal(best, c)
    assert refused is not None
    if refused.rule == "commit":
        what = (
            f"needs {c.commit:g} MB (memory_mb + overhead); the closest host {best} has "
            f"{hc.memory_mb + hc.swap_mb - 2 * page - u.commit:g} MB of memory + swap "
            "(less two pages) uncommitted"
        )
    elif refused.rule == "swap":
        what = (
            f"needs {c.swap:g} MB of swap (memory_mb less min_mb, at least pinned_mb); "
            f"the closest host {best} has {hc.swap_mb - u.swap:g} MB of swap not reserved"
        )
    elif refused.rule == "reserve":
        what = (
            f"needs {c.reserve:g} MB of memory (min_mb, at least pinned_mb, + overhead); "
            f"the closest host {best} has {hc.memory_mb - u.reserve:g} MB of memory "
            "not reserved"
        )
    else:
        what = (
            f"needs {c.pinned:g} MB of memory (pinned_mb + overhead) and a page more; the "
            f"closest host {best} has {hc.memory_mb - u.pinned:g} MB of memory not pinned"
        )
    n = len([v for v in cfg.vms if v.host is None])
    return (
        f"{cfg.source}: vms ({vm.name}): cannot be placed: {what} (no admissible "
        f"assignment of the {n} unpinned VMs found)"
    )
