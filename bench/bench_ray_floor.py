"""Ray's own per-actor costs on this machine: the floor under the large run.

Method: start Ray embedded (as ``vmmsim run`` does), then

1. spawn N bare actors (a class with one method, no vmmsim import) and time until all
   answer; sum their processes' CPU (start-up: Ray's worker, its threads, registration);
2. once all are up, leave them idle for a few seconds and sum the CPU they use meanwhile
   (an idle actor's main thread wakes every 10 ms to check for signals);
3. the same spawn with N vmmsim host actors of the given config (``RayPool``: the
   coordinator's kernel warm-up, then every actor imports vmmsim and builds its host).

The first two are the reference: what N actors cost before any simulation.  The third
shows what vmmsim adds per actor.  ``--hosts 64`` matches ``configs/scale_laptop.toml``.

Run: ``python bench/bench_ray_floor.py [--hosts 64] [--config FILE] [--idle-s 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _cpu() -> float:
    t = os.times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=64)
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "scale_laptop.toml")
    ap.add_argument("--idle-s", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import ray
    from vmmsim.cluster.config import load_config
    from vmmsim.cluster.ray_runtime import RayPool, init_ray

    init_ray(num_cpus=os.cpu_count() or 1)

    @ray.remote(num_cpus=0.01)
    class Bare:
        def cpu(self) -> float:
            return _cpu()

    t0 = time.perf_counter()
    bare = [Bare.remote() for _ in range(args.hosts)]
    start_cpu = sum(ray.get([a.cpu.remote() for a in bare]))
    spawn_s = time.perf_counter() - t0
    time.sleep(2.0)  # let the last actors' start-up settle
    t1 = time.perf_counter()
    before = sum(ray.get([a.cpu.remote() for a in bare]))
    time.sleep(args.idle_s)
    idle_cpu = sum(ray.get([a.cpu.remote() for a in bare])) - before
    idle_s = time.perf_counter() - t1
    for a in bare:
        ray.kill(a)

    cfg = load_config(args.config)
    t0 = time.perf_counter()
    pool = RayPool(cfg.to_dict())
    host_spawn_s = time.perf_counter() - t0
    host_cpu = sum(pool.call("cpu_seconds", [()] * len(pool.names)))
    n_hosts = len(pool.names)
    pool.close()

    out = {
        "bare_actors": args.hosts,
        "bare_spawn_s": round(spawn_s, 1),
        "bare_start_cpu_s_per_actor": round(start_cpu / args.hosts, 2),
        "idle_cpu_ms_per_s_per_actor": round(1000 * idle_cpu / idle_s / args.hosts, 1),
        "host_actors": n_hosts,
        "host_spawn_s": round(host_spawn_s, 1),
        "host_start_cpu_s_per_actor": round(host_cpu / n_hosts, 2),
    }
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"{args.hosts} bare actors: up in {out['bare_spawn_s']} s, "
        f"{out['bare_start_cpu_s_per_actor']} CPU-s each to start; idle, "
        f"{out['idle_cpu_ms_per_s_per_actor']} ms of CPU per second each"
    )
    print(
        f"{n_hosts} vmmsim host actors ({args.config.name}): up in {out['host_spawn_s']} s, "
        f"{out['host_start_cpu_s_per_actor']} CPU-s each to start"
    )


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
