"""Does the simulator's own memory grow with simulated time?  One process, no Ray.

Runs a config in-process (every host in this process, so nothing of Ray's is counted)
and samples the process's resident set and glibc's bytes in use (``mallinfo2``: small
blocks plus ``mmap``ed ones) every ``--every`` seconds while ticks run (not during
start-up, nor while the final tables are read back).  ``--scale F`` multiplies every host
and VM count by F (at least 1 each) and drops the scheduled migrations, which name hosts
that may no longer exist -- the same cluster density at a size one process runs quickly;
the default is ``configs/scale_day.toml`` at 1/16 (4 hosts, 62 VMs, 24 simulated hours,
about two minutes).  Prints, for each quarter of the samples, the least and most of both
figures, and the growth from the second quarter's most to the last's (the first quarter
holds the boot storm): a state that grows per tick shows there whatever the workload's
own cycles.

Run: ``python bench/memory_over_time.py [CONFIG] [--scale F] [--every S] [--json]``.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from benchkit import rss_bytes

ROOT = Path(__file__).resolve().parent.parent


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
        ).split()
    ]


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    """glibc's ``mallinfo2`` (loaded once), or None off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return libc.mallinfo2


def _heap_in_use_mb() -> float | None:
    """glibc's bytes handed out (small blocks + mmapped blocks), or None off glibc."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return None
    m = mallinfo2()
    return (m.uordblks + m.hblkhd) / 2**20


def _fail(why: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2 (as the CLI)."""
    print(f"memory_over_time.py: {why}", file=sys.stderr)
    sys.exit(2)


def scaled(config: dict, scale: float) -> dict:
    """``config`` with every host and VM count times ``scale`` (at least 1), no migrations."""
    if scale == 1:
        return config
    out = dict(config)
    out["hosts"] = [
        {**h, "count": max(1, round(h.get("count", 1) * scale))} for h in config["hosts"]
    ]
    out["vms"] = [{**v, "count": max(1, round(v.get("count", 1) * scale))} for v in config["vms"]]
    out.pop("migrations", None)
    return out


def quarters(samples: list[tuple[float, float, float | None]]) -> list[dict]:
    """Least and most RSS and heap in use in each quarter of the samples."""
    n = len(samples)
    out = []
    for q in range(4):
        part = samples[q * n // 4 : max((q + 1) * n // 4, q * n // 4 + 1)]
        rss = [s[1] for s in part]
        heap = [s[2] for s in part if s[2] is not None]
        out.append(
            {
                "from_s": part[0][0],
                "rss_mb": [round(min(rss), 1), round(max(rss), 1)],
                "heap_mb": [round(min(heap), 1), round(max(heap), 1)] if heap else None,
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", default=str(ROOT / "configs" / "scale_day.toml"))
    ap.add_argument("--scale", type=float, default=1 / 16, help="host and VM counts times F")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not 0 < args.scale <= 1 or not args.every > 0:
        _fail("--scale must be in (0, 1] and --every above 0")

    import tomllib

    import vmmsim

    try:
        with open(args.config, "rb") as f:
            config = scaled(tomllib.load(f), args.scale)
    except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as e:
        _fail(f"{args.config}: {e}")

    # Only samples taken while ticks run count: the run's start-up and its final tables
    # (read back into this process) are not the simulation's state.  Progress.update is
    # the runner's one per-round call on this side; the sampler reads the tick it last saw.
    from vmmsim.cluster.progress import Progress

    seen = {"tick": 0, "closed": False}
    update, close = Progress.update, Progress.close

    def on_update(self: Progress, tick: int, force: bool = False) -> None:
        seen["tick"] = tick
        update(self, tick, force)

    def on_close(self: Progress) -> None:
        seen["closed"] = True
        close(self)

    samples: list[tuple[float, float, float | None]] = []
    done = threading.Event()
    t0 = time.perf_counter()

    def sample() -> None:
        while not done.is_set():
            if seen["tick"] > 0 and not seen["closed"]:
                rss = rss_bytes() / 2**20
                samples.append((round(time.perf_counter() - t0, 2), rss, _heap_in_use_mb()))
            done.wait(args.every)

    sampler = threading.Thread(target=sample, daemon=True)
    Progress.update, Progress.close = on_update, on_close
    sampler.start()
    try:
        run = vmmsim.run(config, overrides=args.set, backend="inprocess")
    except (vmmsim.ConfigError, vmmsim.PlacementError) as e:
        _fail(str(e))
    finally:
        done.set()
        sampler.join()
        Progress.update, Progress.close = update, close
    if len(samples) < 4:
        _fail(f"{len(samples)} samples: run longer or sample more often")
    qs = quarters(samples)
    growth = {
        "rss_mb": round(qs[3]["rss_mb"][1] - qs[1]["rss_mb"][1], 1),
        "heap_mb": round(qs[3]["heap_mb"][1] - qs[1]["heap_mb"][1], 1)
        if qs[1]["heap_mb"]
        else None,
    }
    result = {
        "config": args.config,
        "scale": args.scale,
        "hosts": sum(h.get("count", 1) for h in config["hosts"]),
        "vms": sum(v.get("count", 1) for v in config["vms"]),
        "wall_s": round(time.perf_counter() - t0, 1),
        "samples": len(samples),
        "final_digest": run.summary["final_digest"],
        "quarters": qs,
        "growth_q2_to_q4_max": growth,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"{result['hosts']} hosts, {result['vms']} VMs in-process: {result['wall_s']} s, "
        f"{len(samples)} samples, digest {result['final_digest']}"
    )
    for i, q in enumerate(qs, 1):
        rss, heap = q["rss_mb"], q["heap_mb"]
        print(f"  quarter {i} (from {q['from_s']} s): RSS {rss} MB, heap in use {heap} MB")
    print(f"  growth, most of quarter 2 -> most of quarter 4: {growth}")


if __name__ == "__main__":
    main()
