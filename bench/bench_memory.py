"""Simulator memory per resident guest page, against the page's own ``content_bytes``.

Builds one host whose VMs have touched every page (no sharing, so every guest page has its
own frame) and lets the sharing scanner visit every page once (so each holds a hint entry,
as on a host that has run for a while), then counts the bytes of every numpy array the
host holds -- frames, maps, guest OS, sampler, sharing index, swap -- and, as a physical
cross-check, the growth of the process's resident set while building it.  ``--breakdown``
lists the bytes per page of each component.  Prints bytes per resident page, the
overhead on top of ``content_bytes`` (target: <= 64 bytes), and the ratio to the content
itself.

Run: ``python bench/bench_memory.py [--content-bytes N] [--json]``.
"""

from __future__ import annotations

import argparse
import gc
import json

import numpy as np
from benchkit import rss_bytes
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.specs import HostPolicy, HostSpec, SimParams, VMSpec
from vmmsim.workloads.patterns import Accesses


def array_bytes(obj: object, seen: set[int] | None = None, depth: int = 0) -> int:
    """Bytes of numpy arrays reachable from ``obj``'s attributes (each array once)."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        return obj.nbytes if obj.base is None else 0
    total = 0
    items: list = []
    if isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    elif hasattr(obj, "__dict__"):
        items = list(vars(obj).values())
    for v in items:
        if isinstance(v, (np.ndarray, dict, list, tuple)) or hasattr(v, "__dict__"):
            total += array_bytes(v, seen, depth + 1)
    return total


def measure(content_bytes: int, n_vms: int = 4, vm_pages: int = 1 << 16) -> dict:
    gc.collect()
    rss0 = rss_bytes()
    sim = SimParams(seed=0, tick_s=1.0, page_size=4096, content_bytes=content_bytes)
    n = n_vms * vm_pages
    host = HostMemoryManager(HostSpec("h", n_frames=n, n_swap_slots=0), sim, HostPolicy())
    rng = np.random.default_rng(0)
    for i in range(n_vms):
        vm = host.boot_vm(VMSpec(f"vm{i}", n_pages=vm_pages))
        pages = np.arange(vm_pages, dtype=np.int64)
        keys = rng.integers(1, 1 << 62, vm_pages).astype(np.uint64)  # all distinct
        vm.apply(host.mem, host._make_room, Accesses(writes=pages, write_keys=keys))
        host.mem.scan(vm.vm_id, pages)
    resident = sum(v.resident for v in host.vms.values())
    arrays = array_bytes(host)
    rss = rss_bytes() - rss0
    per_page = arrays / resident
    return {
        "name": f"memory per resident page (content_bytes={content_bytes})",
        "value": per_page,
        "unit": "bytes/page",
        "reference": float(content_bytes),
        "reference_name": "content_bytes",
        "ratio": per_page / content_bytes,
        "overhead_bytes": per_page - content_bytes,
        "rss_per_page": rss / resident,
        "target": "overhead <= 64 bytes",
        "breakdown": breakdown(host, resident),
    }


def breakdown(host: HostMemoryManager, resident: int) -> dict[str, float]:
    """Bytes per resident page of each array, keyed by its attribute path (VMs summed)."""
    out: dict[str, float] = {}

    def walk(obj: object, path: str, seen: set[int], depth: int) -> None:
        if id(obj) in seen or depth > 6:
            return
        seen.add(id(obj))
        if isinstance(obj, np.ndarray):
            if obj.base is None and obj.nbytes:
                out[path] = out.get(path, 0.0) + obj.nbytes / resident
            return
        if isinstance(obj, dict):
            items = [("*", v) for v in obj.values()]  # VMs: one key for all of them
        elif isinstance(obj, (list, tuple)):
            items = [("*", v) for v in obj]
        elif hasattr(obj, "__dict__"):
            items = list(vars(obj).items())
        else:
            return
        for k, v in items:
            walk(v, f"{path}.{k}" if path else k, seen, depth + 1)

    walk(host, "", set(), 0)
    return {k: round(v, 2) for k, v in sorted(out.items(), key=lambda kv: -kv[1]) if v >= 0.01}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--content-bytes", type=int, nargs="*", default=[64, 4096])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--breakdown", action="store_true", help="bytes per page of each array")
    a = ap.parse_args()
    for cb in a.content_bytes:
        r = measure(cb)
        if a.json:
            print(json.dumps(r))
        else:
            print(
                f"{r['name']:<46} {r['value']:>8.1f} B/page (overhead {r['overhead_bytes']:.1f} B, "
                f"RSS {r['rss_per_page']:.1f} B/page)  target {r['target']}"
            )
            if a.breakdown:
                for k, v in r["breakdown"].items():
                    print(f"    {k:<40} {v:6.2f} B/page")


if __name__ == "__main__":
    main()
