"""Run a command and report its wall time and the peak memory of its whole process tree.

Memory is the sum of PSS (proportional set size, from ``/proc/<pid>/smaps_rollup``) over
the command and every descendant -- Ray's daemons and actor processes included.  The
tree's RSS is sampled every 2 s and its PSS read whenever that RSS is 2% above its last
high (reading smaps of dozens of processes is not free: ~0.2 core for a 64-actor run when
read every 2 s).  PSS splits shared pages (Ray's object store,
shared libraries) among the processes that map them, so the sum is what the tree really
costs the machine.

Run: ``python bench/peak_memory.py -- vmmsim run configs/scale_laptop.toml --out runs/s``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children(p))
    return out


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SystemExit(__doc__)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv)
    peak, peak_procs, peak_rss = 0, 0, 0
    while proc.poll() is None:
        pids = tree(proc.pid)
        # PSS (smaps_rollup) walks every mapping of every process: costly with dozens of
        # Ray workers, enough to slow the run it measures.  RSS (statm) is cheap and
        # bounds PSS from above, so PSS is read only when the tree's RSS is 2% above the
        # last high -- where a new PSS peak can be (a run whose RSS creeps up by a few
        # pages at a time would otherwise still be read every time).
        rss = sum(rss_bytes(p) for p in pids)
        if rss > peak_rss * 1.02:
            peak_rss = rss
            total = sum(pss_bytes(p) for p in pids)
            if total > peak:
                peak, peak_procs = total, len(pids)
        time.sleep(2.0)
    wall = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "command": " ".join(argv),
                "returncode": proc.returncode,
                "wall_s": round(wall, 1),
                "peak_pss_gib": round(peak / 2**30, 2),
                "peak_rss_sum_gib": round(peak_rss / 2**30, 2),
                "processes_at_peak": peak_procs,
            }
        ),
        file=sys.stderr,
    )
    sys.exit(proc.returncode)


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main()
