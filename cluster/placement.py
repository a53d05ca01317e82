"""Initial placement of VMs whose config names no host (a small policy registry).

Scope: a pure function from the config to {vm: host}.  Pinned VMs stay where the config
puts them; the others are placed in config order by the chosen policy, using each host's
*committed* memory (sum of max_mb + overhead of the VMs placed so far) against its memory
plus swap (ESX admission: a VM is only placed where its max fits, so no host can ever run
out of both memory and swap):

* ``most_free``: the host with the most uncommitted memory (ties: name order);
* ``image_affinity``: among hosts where its max fits in memory, the one already running
  the most VMs of the same image (so page sharing can find the image's pages), then most
  free; if it fits in no host's memory, as ``most_free``;
* ``round_robin``: the next host in name order where it fits.

A VM that fits nowhere is a :class:`PlacementError` naming the VM and the best host.
"""

from __future__ import annotations

from collections.abc import Callable

from cluster.config import SimConfig


class PlacementError(ValueError):
    pass


Policy = Callable[[SimConfig, str, dict[str, float], dict[str, dict[str, int]], list], str | None]


def _fits(cfg: SimConfig, host: str, need: float, committed: dict[str, float]) -> bool:
    h = cfg.host(host)
    return committed[host] + need <= h.memory_mb + h.swap_mb + 1e-9


def _free(cfg: SimConfig, host: str, committed: dict[str, float]) -> float:
    return cfg.host(host).memory_mb - committed[host]


def most_free(cfg, vm, committed, images, state) -> str | None:
    need = _need(cfg, vm)
    ok = [h for h in cfg.host_names() if _fits(cfg, h, need, committed)]
    return max(ok, key=lambda h: (_free(cfg, h, committed), [-ord(c) for c in h]), default=None)


def image_affinity(cfg, vm, committed, images, state) -> str | None:
    need = _need(cfg, vm)
    img = cfg.vm(vm).image
    # Prefer hosts where the VM's max fits in *memory* (swap is for overcommit, not for
    # packing); among those, the one running the most VMs of the same image.
    in_mem = [h for h in cfg.host_names() if _free(cfg, h, committed) >= need]
    if not in_mem:
        return most_free(cfg, vm, committed, images, state)
    return max(
        in_mem,
        key=lambda h: (images[h].get(img, 0), _free(cfg, h, committed), [-ord(c) for c in h]),
    )


def round_robin(cfg, vm, committed, images, state) -> str | None:
    names = cfg.host_names()
    start = state[0] if state else 0
    need = _need(cfg, vm)
    for i in range(len(names)):
        h = names[(start + i) % len(names)]
        if _fits(cfg, h, need, committed):
            state[:] = [(start + i + 1) % len(names)]
            return h
    return None


PLACEMENTS: dict[str, Policy] = {
    "most_free": most_free,
    "image_affinity": image_affinity,
    "round_robin": round_robin,
}


def _need(cfg: SimConfig, vm: str) -> float:
    v = cfg.vm(vm)
    return v.effective_max_mb + cfg.policy.vm_overhead_mb


def place(cfg: SimConfig) -> dict[str, str]:
    """{vm name: host name} for every VM, pinned ones as configured."""
    committed = {h: 0.0 for h in cfg.host_names()}
    images: dict[str, dict[str, int]] = {h: {} for h in cfg.host_names()}
    out: dict[str, str] = {}
    for v in cfg.vms:
        if v.host is not None:
            out[v.name] = v.host
            committed[v.host] += _need(cfg, v.name)
            images[v.host][v.image] = images[v.host].get(v.image, 0) + 1
    policy = PLACEMENTS[cfg.policy.placement]
    state: list = []
    for v in cfg.vms:
        if v.host is not None:
            continue
        host = policy(cfg, v.name, committed, images, state)
        if host is None:
            best = max(cfg.host_names(), key=lambda h: _free(cfg, h, committed))
            raise PlacementError(
                f"{cfg.source}: vms ({v.name}): cannot be placed: needs {_need(cfg, v.name):g} MB "
                f"(max_mb + overhead); the emptiest host {best} has "
                f"{cfg.host(best).memory_mb + cfg.host(best).swap_mb - committed[best]:g} MB of "
                "memory + swap uncommitted"
            )
        out[v.name] = host
        committed[host] += _need(cfg, v.name)
        images[host][v.image] = images[host].get(v.image, 0) + 1
    return out
