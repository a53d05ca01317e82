"""Parallel speed-up: the same Ray cluster run on 1 core vs 2 cores.

Method (repeatable on any machine): run one config with N host actors on Ray, once with
the whole process tree (driver, Ray's daemons, every actor) pinned to one CPU and once
pinned to two CPUs (``os.sched_setaffinity`` before Ray starts; every Ray process inherits
it).  Same actors, same work, same results (the digests are compared); only the cores
differ.  Speed-up = wall(1 core) / wall(2 cores); the target on this 2-core machine is
>= 1.7x.  On a bigger machine, pass ``--cores 1 2 4 8`` and a config with more hosts; on
a Ray cluster, compare node counts instead.

The physical reference, measured in the same run: two plain processes doing a fixed
CPU-bound job (xxh3 over pages plus a numpy sort, no Ray, no simulator) under the same
two affinities.  Its speed-up is what this machine gives two busy processes at best
(vCPUs that are hyperthreads, a noisy host or memory bandwidth hold it below 2.0x); the
simulator's speed-up is printed beside it and as a fraction of it.

A second reference, for diagnosis only (the target stays the one above): two plain
processes doing *memory-bound* work -- random single-byte gathers from a 512 MB array
each (allocated before the clock starts), the access pattern of the compiled VM steps
(whose per-page arrays do not fit in the caches).  Where two vCPUs share caches or
memory bandwidth, this job scales worse than the CPU-bound one; vmmsim's ratio to it
(``ratio_memory_bound``) says how much of the gap is the machine's memory system and
how much is vmmsim's serial part.

The speed-up is of the run after its actors have started (``wall - ray_startup_s``): it
still holds ``ray.init``, the final summary and Ray's shutdown, one-time costs.  Measured
on 2 cores: ``ray.init`` 1.5-2.0 s (3.2-3.7 s on one core: Ray's agents start side by
side), the rounds 0.7-1.0 s, the summary and shutdown 0.4-0.8 s, of a ~3.2 s whole.  The
speed-up of the rounds alone (``simulate_s`` of ``timing.json``: every round and the
driver writing its metrics) is reported beside it (``rounds_speedup``,
``rounds_ratio``): what a longer run tends to.

Repeats, interleaved (``--repeat N``, default 3): each repeat runs the simulator on every
core count and then the reference job on every core count, and its ratio compares the two
taken seconds apart.  The figure is the median of the repeats' ratios (and of their
speed-ups); every repeat's figures are printed too (``samples``).  A single repeat is a
~3-second measurement on 2 cores, and the reference job alone moved between 1.55x and
2.10x from one minute to the next on this VM (measured), so one sample says more about
the machine's neighbours than about the simulator.

Run: ``python bench/bench_scaling.py [--config FILE] [--cores 1 2] [--repeat 3] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, os, sys, time
from pathlib import Path
os.sched_setaffinity(0, set(range(int(sys.argv[3]))))
from vmmsim.cluster.config import load_config
from vmmsim.cluster.runner import run
cfg = load_config(sys.argv[1])
t = time.perf_counter()
s = run(cfg, Path(sys.argv[2]), backend="ray", quiet=True, force=True)
wall = time.perf_counter() - t
timing = json.loads((Path(sys.argv[2]) / "timing.json").read_text())
print(json.dumps({"wall_s": wall, "startup_s": timing.get("ray_startup_s", 0.0),
                  "simulate_s": timing["simulate_s"], "digest": s["final_digest"]}))
"""

DEFAULT_CONFIG = """
[simulation]
seed = 1
duration_s = 120
tick_s = 1.0
content_bytes = 512

[[hosts]]
name = "h"
count = 2
memory_mb = 1024
swap_mb = 1024

[[vms]]
name = "vm"
count = 8
memory_mb = 192
[vms.workload]
kind = "steady"
wss_mb = 128
write_fraction = 0.05
"""


REFERENCE = r"""
import os, sys, time
import multiprocessing as mp
import numpy as np
import xxhash

def job(seed):
    rng = np.random.default_rng(seed)
    pages = [rng.integers(0, 256, 512, dtype=np.uint8).tobytes() for _ in range(20000)]
    keys = rng.integers(0, 1 << 62, 400000)
    h = xxhash.xxh3_64_intdigest
    for _ in range(int(sys.argv[2])):
        for p in pages:
            h(p)
        np.sort(keys)

os.sched_setaffinity(0, set(range(int(sys.argv[1]))))
t = time.perf_counter()
procs = [mp.get_context("fork").Process(target=job, args=(i,)) for i in range(2)]
for p in procs:
    p.start()
for p in procs:
    p.join()
print(time.perf_counter() - t)
"""


MEMORY_BOUND = r"""
import os, sys, time
import multiprocessing as mp
import numpy as np

def job(seed, ready):
    rng = np.random.default_rng(seed)
    table = np.ones(512 * 2**20, np.uint8)  # (allocated and touched before the clock)
    idx = rng.integers(0, len(table), 4_000_000)
    ready.wait()
    for _ in range(int(sys.argv[2])):
        table[idx].sum()

os.sched_setaffinity(0, set(range(int(sys.argv[1]))))
ctx = mp.get_context("fork")
ready = ctx.Barrier(3)
procs = [ctx.Process(target=job, args=(i, ready)) for i in range(2)]
for p in procs:
    p.start()
ready.wait()
t = time.perf_counter()
for p in procs:
    p.join()
print(time.perf_counter() - t)
"""


def reference_speedup(cores: list[int], rounds: int = 60, job: str = REFERENCE) -> dict[int, float]:
    """Wall seconds of a plain two-process job (``job``) under each core count."""
    out = {}
    for c in cores:
        r = subprocess.run(
            [sys.executable, "-c", job, str(c), str(rounds)],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if r.returncode != 0:
            raise SystemExit(f"reference job failed on {c} core(s): {r.stderr[-2000:]}")
        out[c] = float(r.stdout.strip().splitlines()[-1])
    return out


def run_with_cores(config: Path, cores: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(
            [sys.executable, "-c", CHILD, str(config), str(Path(tmp) / "out"), str(cores)],
            capture_output=True,
            text=True,
            env={**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"},
            timeout=1800,
        )
    if r.returncode != 0:
        raise SystemExit(f"bench run failed on {cores} core(s): {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats (median)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    with tempfile.TemporaryDirectory() as tmp:
        config = a.config
        if config is None:
            config = Path(tmp) / "scaling.toml"
            config.write_text(DEFAULT_CONFIG)
        t0 = time.perf_counter()
        reps = []
        for _ in range(a.repeat):
            res = {c: run_with_cores(config, c) for c in a.cores}
            reps.append((res, reference_speedup(a.cores)))
        mem_ref = reference_speedup(a.cores, 20, MEMORY_BOUND)
    digests = {r["digest"] for res, _ in reps for r in res.values()}
    c0 = a.cores[0]
    for c in a.cores[1:]:
        samples = [_sample(res, ref, c0, c) for res, ref in reps]

        def med(key: str, samples: list[dict] = samples) -> float:
            return statistics.median(s[key] for s in samples)

        mem_x = mem_ref[c0] / mem_ref[c]
        out = {
            "name": f"parallel speed-up, {c0} -> {c} cores",
            "value": med("speedup"),
            "unit": "x",
            "reference": med("reference"),
            "reference_name": "the same two-process CPU job without Ray or simulator",
            "ratio": med("ratio"),
            "rounds_speedup": med("rounds_speedup"),
            "rounds_ratio": med("rounds_ratio"),
            "reference_memory_bound": mem_x,
            "ratio_memory_bound": med("speedup") / mem_x,
            "repeats": a.repeat,
            "samples": samples,
            "same_digest": len(digests) == 1,
            "target": ">= 1.7x",
            "bench_s": round(time.perf_counter() - t0, 1),
        }
        if a.json:
            print(json.dumps(out))
        else:
            each = ", ".join(f"{s['ratio']:.2f}" for s in samples)
            print(
                f"{out['name']:<34} {out['value']:.2f}x  (plain 2-process job: "
                f"{out['reference']:.2f}x, ratio {out['ratio']:.2f} [median of {a.repeat}: "
                f"{each}]; memory-bound job: {mem_x:.2f}x, ratio "
                f"{out['ratio_memory_bound']:.2f})  rounds alone: {out['rounds_speedup']:.2f}x, "
                f"ratio {out['rounds_ratio']:.2f}  same digest: {out['same_digest']}  "
                f"target {out['target']}"
            )


def _sample(res: dict[int, dict], ref: dict[int, float], c0: int, c: int) -> dict:
    """One repeat's figures for ``c0`` -> ``c`` cores.  Ray start-up (actors up, VMs
    booted) is excluded: it is paid once per session, not per simulated second."""
    base, run_c = res[c0], res[c]
    speedup = (base["wall_s"] - base["startup_s"]) / (run_c["wall_s"] - run_c["startup_s"])
    ref_x = ref[c0] / ref[c]
    rounds = base["simulate_s"] / run_c["simulate_s"]
    return {
        "speedup": speedup,
        "reference": ref_x,
        "ratio": speedup / ref_x,
        "rounds_speedup": rounds,
        "rounds_ratio": rounds / ref_x,
        "walls_s": {k: round(v["wall_s"], 2) for k, v in res.items()},
    }


if __name__ == "__main__":
    main()
