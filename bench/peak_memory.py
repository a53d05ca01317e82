"""Run a command and report its wall time and the peak memory of its whole process tree.

Memory is the sum of PSS (proportional set size, from ``/proc/<pid>/smaps_rollup``) over
the command and every descendant -- Ray's daemons and actor processes included.  The
tree's RSS is sampled every 2 s and its PSS read whenever that RSS is 2% above its last
high (reading smaps of dozens of processes is not free: ~0.2 core for a 64-actor run when
read every 2 s).  PSS splits shared pages (Ray's object store,
shared libraries) among the processes that map them, so the sum is what the tree really
costs the machine.

Where the CPU went: each process's CPU seconds (user + system, ``/proc/<pid>/stat``) are
read at every sample and the last reading kept, then summed by role -- the command
itself (the driver), the host actors, the coordinator actor, Ray's daemons (GCS, raylet,
log monitor, dashboard agents, idle workers) -- so the run's CPU-seconds add up to a whole
(a process that exits loses at most its last 2 s).

Memory over time (``--series FILE --every S``): every ``S`` seconds the PSS of each role
-- Ray's GCS and raylet apart from its other daemons -- is appended to ``FILE`` as one JSON
line, and the growth of each role over the second half of the run (a least-squares slope,
MB per wall minute) is added to the report: what a long run's "memory stays flat" is
checked with.  Each line also holds the machine's ``Shmem`` (``/proc/meminfo``): the
resident pages of Ray's object store, whoever maps them -- a store that keeps touching
new pages grows there even when no process's own memory does.

How fast the machine was (``--reference``): a shared VM's speed drifts -- the same large
hour took 272-362 s within one hour of 2026-12-07.  With ``--reference`` the plain
two-process CPU job of ``bench_scaling.py`` (xxh3 over pages plus a numpy sort, no Ray, no
simulator; ~4.5 s here) runs on all of this process's CPUs just before and just after the
command, and its two wall times are reported (``reference_s``): runs compare fairly only
at similar reference times.

Run: ``python bench/peak_memory.py [--series FILE [--every S]] [--reference] -- vmmsim run
configs/scale_laptop.toml --out runs/s``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from typing import NoReturn

from benchkit import rss_bytes


def _fail(why: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2 (as vmmsim's CLI)."""
    print(f"peak_memory.py: {why}", file=sys.stderr)
    sys.exit(2)


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


def pss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    except (OSError, IndexError, ValueError):
        return 0.0


def role(pid: int, root: int, *, ray_apart: bool = False) -> str:
    """What a process of the tree is: the driver, a host actor, the coordinator, Ray
    (with ``ray_apart``: Ray's GCS and raylet told apart from its other daemons)."""
    if pid == root:
        return "driver"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return "ray daemons"
    cmd = b" ".join(argv).decode(errors="replace")
    if "HostActor" in cmd:
        return "host actors"
    if "Coordinator" in cmd:
        return "coordinator"
    if not ray_apart:
        return "ray daemons"
    for name in ("gcs_server", "raylet"):
        if argv[0].endswith(name.encode()):
            return f"ray {name}"
    return "ray other"


def pss_by_role(pids: list[int], root: int) -> dict[str, float]:
    """MB of PSS per :func:`role` (Ray's daemons apart) over ``pids``."""
    out: dict[str, float] = {}
    for p in pids:
        r = role(p, root, ray_apart=True)
        out[r] = out.get(r, 0.0) + pss_bytes(p) / 2**20
    return {r: round(v, 1) for r, v in sorted(out.items())}


def shmem_mb() -> float:
    """The machine's shared memory in MB (``Shmem`` of ``/proc/meminfo``; 0 elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("Shmem:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def slopes(samples: list[tuple[float, dict[str, float]]]) -> dict[str, float]:
    """Least-squares growth of each role's PSS over the second half of ``samples``, in MB
    per wall minute."""
    half = samples[len(samples) // 2 :]
    if len(half) < 3:
        return {}
    out = {}
    for r in sorted({k for _, d in half for k in d}):
        ts = [t for t, _ in half]
        ys = [d.get(r, 0.0) for _, d in half]
        mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
        var = sum((t - mt) ** 2 for t in ts)
        out[r] = round(60 * sum((t - mt) * (y - my) for t, y in zip(ts, ys, strict=True)) / var, 3)
    return out


#: Rounds of the reference job: ~4.5 s on this 2-vCPU machine (tests use fewer).
REFERENCE_ROUNDS = int(os.environ.get("PEAK_MEMORY_REFERENCE_ROUNDS", "200"))


def reference_s(rounds: int = REFERENCE_ROUNDS) -> float:
    """Wall seconds of ``bench_scaling.py``'s plain two-process CPU job, now, on all of
    this process's CPUs."""
    here = os.path.dirname(os.path.abspath(__file__))
    if here not in sys.path:  # (run as a script, it already is)
        sys.path.insert(0, here)
    from bench_scaling import reference_speedup

    cpus = len(os.sched_getaffinity(0))
    return round(reference_speedup([cpus], rounds)[cpus], 2)


def main() -> None:
    argv = sys.argv[1:]
    series_path, every, reference = None, 60.0, False
    while argv and argv[0] in ("--series", "--every", "--reference"):
        if argv[0] == "--reference":
            reference, argv = True, argv[1:]
            continue
        if len(argv) < 2:
            raise SystemExit(__doc__)
        if argv[0] == "--series":
            series_path = argv[1]
        else:
            try:
                every = float(argv[1])
            except ValueError:
                _fail(f"--every takes seconds (got {argv[1]!r})")
        argv = argv[2:]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        raise SystemExit(__doc__)
    if shutil.which(argv[0]) is None:
        _fail(f"no such command: {argv[0]}")
    before = reference_s() if reference else None
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv)
    peak, peak_procs, peak_rss = 0, 0, 0
    cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, CPU seconds at the last sample)
    samples: list[tuple[float, dict[str, float]]] = []
    series = open(series_path, "w") if series_path else None  # noqa: SIM115
    next_sample = t0 + every
    while proc.poll() is None:
        if series is not None and time.perf_counter() >= next_sample:
            next_sample += every
            t = round(time.perf_counter() - t0, 1)
            samples.append((t, pss_by_role(tree(proc.pid), proc.pid)))
            samples[-1][1]["machine shmem"] = shmem_mb()
            series.write(json.dumps({"t": t, "pss_mb": samples[-1][1]}) + "\n")
            series.flush()
        pids = tree(proc.pid)
        for p in pids:
            # (a Ray worker names itself after its actor once it has one)
            r = cpu[p][0] if p in cpu and cpu[p][0] != "ray daemons" else role(p, proc.pid)
            cpu[p] = (r, max(cpu_seconds(p), cpu.get(p, (r, 0.0))[1]))
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
        time.sleep(min(2.0, every))
    wall = time.perf_counter() - t0
    if series is not None:
        series.close()
    refs = {"reference_s": [before, reference_s()]} if reference else {}
    roles = sorted({r for r, _ in cpu.values()})
    print(
        json.dumps(
            {
                "command": " ".join(argv),
                "returncode": proc.returncode,
                "wall_s": round(wall, 1),
                "peak_pss_gib": round(peak / 2**30, 2),
                "peak_rss_sum_gib": round(peak_rss / 2**30, 2),
                "processes_at_peak": peak_procs,
                "cpu_s": {r: round(sum(c for q, c in cpu.values() if q == r), 1) for r in roles},
                "cpu_s_total": round(sum(c for _, c in cpu.values()), 1),
                **({"pss_growth_mb_per_min": slopes(samples)} if series is not None else {}),
                **refs,
            }
        ),
        file=sys.stderr,
    )
    sys.exit(proc.returncode)


if __name__ == "__main__":
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main()
