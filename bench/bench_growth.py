"""How the cost of a run grows with hosts, VMs per host and pages per VM.

Three sweeps around one base cluster (4 hosts x 8 VMs of 64 MB, 256 content bytes per
page, half steady / half idle VMs, 60 simulated seconds), each varying one dimension over
three sizes, run on Ray (embedded) with everything else fixed.  Prints wall time without
Ray start-up, ticks/s and microseconds per VM-tick.

Run: ``python bench/bench_growth.py [--json] [--backend ray|inprocess]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from vmmsim.cluster.config import parse_config
from vmmsim.cluster.runner import run


def config(hosts: int, vms_per_host: int, vm_mb: int, duration_s: int = 60) -> dict:
    n = hosts * vms_per_host
    return {
        "simulation": {"seed": 3, "duration_s": duration_s, "content_bytes": 256},
        "policy": {"vm_overhead_mb": 0},  # as measured before the 32 MB default
        "hosts": [
            {
                "name": "h",
                "count": hosts,
                "memory_mb": vms_per_host * vm_mb * 0.8,
                "swap_mb": vms_per_host * vm_mb,
            }
        ],
        "vms": [
            {
                "name": "busy",
                "count": n // 2,
                "memory_mb": vm_mb,
                "workload": {"kind": "steady", "wss_mb": vm_mb / 4, "write_fraction": 0.1},
            },
            {"name": "lazy", "count": n - n // 2, "memory_mb": vm_mb, "workload": {"kind": "idle"}},
        ],
    }


SWEEPS = {
    "hosts": [(h, 8, 64) for h in (2, 4, 8, 16)],
    "vms_per_host": [(4, v, 64) for v in (4, 8, 16, 32)],
    "vm_mb": [(4, 8, m) for m in (32, 64, 128, 256)],
}


def measure(hosts: int, vms: int, vm_mb: int, backend: str) -> dict:
    cfg = parse_config(config(hosts, vms, vm_mb), "<growth>")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run(cfg, Path(tmp) / "out", backend=backend, quiet=True)
        wall = time.perf_counter() - t
        timing = json.loads((Path(tmp) / "out" / "timing.json").read_text())
    sim_wall = wall - timing.get("ray_startup_s", 0.0)
    ticks = cfg.simulation.n_ticks
    return {
        "hosts": hosts,
        "vms_per_host": vms,
        "vm_mb": vm_mb,
        "wall_s": round(wall, 2),
        "sim_wall_s": round(sim_wall, 2),
        "ticks_per_s": round(ticks / sim_wall, 2),
        "us_per_vm_tick": round(1e6 * sim_wall / (ticks * hosts * vms), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="ray", choices=["ray", "inprocess"])
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.backend == "ray":
        from vmmsim.cluster.ray_runtime import init_ray

        init_ray(None)  # one Ray for all runs: start-up is not what this measures
    for dim, points in SWEEPS.items():
        for p in points:
            r = {"dimension": dim, **measure(*p, a.backend)}
            print(
                json.dumps(r)
                if a.json
                else f"{dim:<13} hosts={r['hosts']:<3} vms/host={r['vms_per_host']:<3} "
                f"vm_mb={r['vm_mb']:<4} wall {r['sim_wall_s']:>7.2f} s  "
                f"{r['ticks_per_s']:>7.2f} ticks/s  {r['us_per_vm_tick']:>8.1f} us/VM-tick",
                flush=True,
            )


if __name__ == "__main__":
    main()
