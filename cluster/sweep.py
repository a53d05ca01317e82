"""Parameter sweeps: one run per combination of the ``[sweep]`` values, and an index table.

Scope: ``vmmsim run CONFIG --out DIR`` for a config with a ``[sweep]`` table.  Every
combination (:func:`cluster.config.sweep_points`) is loaded from the *file* with its
overrides (so ``count`` can change: hosts and VMs are re-expanded) and run as an ordinary
run into ``DIR/<point>/``, where ``<point>`` is a readable, filesystem-safe name built
from the values (``tax_rate=0.75``, ``count=4``).  Then:

* ``DIR/sweep.parquet``: one row per point, in sweep order -- ``point``, each swept path's
  value (a column named by the path), ``final_digest`` and headline figures
  (:func:`headline`);
* ``DIR/sweep_summary.parquet`` when ``simulation.seed`` is swept: one row per point of
  the other keys, with the mean, std, min and max of every numeric column over the seeds
  (:func:`seed_summary`);
* ``DIR/sweep.json``: the config path, the sweep keys and each point's overrides.

The whole directory is written aside (``.DIR.partial-<pid>``) and moved into place only
when every point has finished, like a single run (:mod:`cluster.outputs`).  Points are
independent and run ``jobs`` at a time (:func:`run_points`): in-process, in this process
and ``jobs - 1`` worker processes (:mod:`cluster.sweep_pool`); on Ray, each from a driver
thread with its own coordinator and host actors on the one Ray instance (embedded or
``address``).  The results do not depend on ``jobs``: rows are kept in sweep order and
each point is the same deterministic run.  A failing point stops the sweep
(:class:`SweepPointFailed` names it; points not started are not started, in-process
workers are ended) and nothing is written to ``DIR``.

Not covered: plotting (:mod:`cluster.report`).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from vmmsim.cluster.config import (
    ConfigError,
    SimConfig,
    load_config,
    page_state_bytes,
    sweep_paths,
    sweep_points,
)
from vmmsim.cluster.outputs import AsideDir, write_json
from vmmsim.cluster.placement import place
from vmmsim.cluster.sweep_pool import one_line

_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")  # in names and values; "=" and "," join them
# Per-VM-group metrics in sweep.parquet: "<metric>.<group>" (means over the second half).
GROUP_METRICS = (
    "throughput",
    "resident_mb",
    "shared_mb",
    "ballooned_mb",
    "swapped_mb",
    "guest_swapped_mb",
    "target_mb",
    "active_est",
)


# The totals of headline(), before its per-group "<metric>.<group>" columns.
HEADLINE_TOTALS = (
    "n_vms",
    "vm_mb_total",
    "shared_mb",
    "saved_mb",
    "swap_used_mb",
    "shared_pct",
    "saved_pct",
    "zero_shared_mb",
)


def point_name(overrides: Sequence[str], keys: Sequence[str]) -> str:
    """``tax_rate=0.75``: per sweep key, the shortest unique tail of its (first) path and
    the value as TOML text, joined by ``,``; unsafe characters become ``_``."""
    firsts = [sweep_paths(k)[0] for k in keys]
    tails = [_tail(path, firsts) for path in firsts]
    by_path = dict(o.split("=", 1) for o in overrides)
    parts = []
    for tail, path in zip(tails, firsts, strict=True):
        value = _SAFE.sub("_", by_path[path].strip().replace('"', "")).strip("_") or "_"
        parts.append(f"{_SAFE.sub('_', tail)}={value}")
    return ",".join(parts).lstrip(".") or "point"


def _tail(path: str, paths: Sequence[str]) -> str:
    """The shortest dotted tail of ``path`` that no other of ``paths`` ends with."""
    parts = path.split(".")
    for n in range(1, len(parts) + 1):
        tail = ".".join(parts[-n:])
        if sum(p == tail or p.endswith("." + tail) for p in paths) <= 1:
            return tail
    return path


def _plain(v: Any) -> Any:
    return v if isinstance(v, bool | int | float | str) else json.dumps(v)


def headline(cfg: SimConfig, summary: dict[str, Any], metrics: pa.Table) -> dict[str, Any]:
    """One point's figures: totals at the end of the run and, per VM group (``base_name``:
    the VM's name before ``count`` expansion), means over the second half of the run."""
    totals = summary["totals"]
    vm_mb = sum(v.memory_mb for v in cfg.vms)
    row: dict[str, Any] = {
        "n_vms": len(cfg.vms),
        "vm_mb_total": vm_mb,
        "shared_mb": totals["shared_mb"],
        "saved_mb": totals["saved_mb"],
        "swap_used_mb": totals["swap_used_mb"],
        "shared_pct": 100.0 * totals["shared_mb"] / vm_mb if vm_mb else 0.0,
        "saved_pct": 100.0 * totals["saved_mb"] / vm_mb if vm_mb else 0.0,
    }
    cols = {n: metrics.column(n).to_numpy(zero_copy_only=False) for n in metrics.column_names}
    tick = cols["tick"]
    last = tick == tick.max() if len(tick) else tick.astype(bool)
    row["zero_shared_mb"] = float(cols["zero_shared_mb"][last].sum()) if len(tick) else 0.0
    late = tick >= (int(tick.max()) + 1) // 2 if len(tick) else last
    group_of = {v.name: v.base_name or v.name for v in cfg.vms}
    vm_col = cols["vm"]
    for g in sorted(set(group_of.values())):
        members = [n for n, b in group_of.items() if b == g]
        m = late & np.isin(vm_col, members)
        for k in GROUP_METRICS:
            row[f"{k}.{g}"] = float(cols[k][m].mean()) if m.any() else float("nan")
    return row


SEED_KEY = "simulation.seed"
STATS = ("mean", "std", "min", "max")


class SweepPointFailed(RuntimeError):
    """One point of a sweep failed; names the point and says why (one line)."""

    def __init__(self, point: str, reason: str) -> None:
        super().__init__(f"sweep point {point} failed: {reason}")
        self.point, self.reason = point, reason

    def __reduce__(self):
        return (SweepPointFailed, (self.point, self.reason))


@dataclass(frozen=True)
class PointJob:
    """One point to run: its config, its run directory and how to run it."""

    index: int
    name: str
    cfg: SimConfig
    out: Path
    backend: str = "ray"
    address: str | None = None
    quiet: bool = True
    check_invariants: bool = False
    timeout_s: float = 600.0
    cluster_share: float = 1.0  # of the Ray cluster's CPUs (RunOptions.cluster_share)


def run_point(job: PointJob) -> tuple[dict[str, Any], float]:
    """Run one point into ``job.out``; return its summary and wall time (s)."""
    from vmmsim.cluster.runner import run
    from vmmsim.cluster.session import RunOptions

    t0 = time.perf_counter()
    summary = run(
        job.cfg,
        job.out,
        backend=job.backend,
        address=job.address,
        quiet=job.quiet,
        check_invariants=job.check_invariants,
        timeout_s=job.timeout_s,
        opts=RunOptions(cluster_share=job.cluster_share),
    )
    return summary, time.perf_counter() - t0


def check_jobs(jobs: int | None, where: str = "jobs") -> None:
    """``jobs`` must be ``None`` (the default) or an int >= 1."""
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(where, "must be an integer >= 1 (1: one point at a time)", jobs)


def jobs_arg(text: str) -> int:
    """An argparse type for ``--jobs``: an integer >= 1."""
    import argparse

    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1 (got {text!r})") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1 (1: one point at a time; got {text!r})")
    return v


def default_jobs(cfgs: Sequence[SimConfig], backend: str, address: str | None) -> int:
    """The CPUs available (of the Ray cluster when joining one), at most one per point;
    when the points run on this machine, also no more than its available memory holds
    (the largest point's page state each, :func:`cluster.config.page_state_bytes`)."""
    joined = backend == "ray" and bool(address or os.environ.get("RAY_ADDRESS"))
    if joined:
        import ray

        cpus = int(ray.cluster_resources().get("CPU", 1)) if ray.is_initialized() else 1
    else:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = max(1, min(cpus or 1, len(cfgs)))
    avail = None if joined else _available_memory()
    need = max((sum(page_state_bytes(c).values()) for c in cfgs), default=0)
    if avail and need:
        n = max(1, min(n, avail // need))
    return n


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def run_points(
    jobs: Sequence[PointJob],
    n_jobs: int,
    *,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every job, ``n_jobs`` at a time; return the summaries in the jobs' order.

    ``n_jobs == 1``: one after the other in this process (a point's own progress bar
    unless ``quiet``).  Otherwise in-process points run here and in ``n_jobs - 1`` worker
    processes (:mod:`cluster.sweep_pool`) and Ray points from driver threads (their hosts are Ray
    actors).  ``log``: a line per
    point as it finishes (name, wall time, digest).  The first failure raises
    :class:`SweepPointFailed`: points not yet started are dropped, in-process workers
    still running are ended (Ray points already running finish first)."""
    n = len(jobs)
    results: list[dict[str, Any] | None] = [None] * n
    done = 0

    def finished(job: PointJob, summary: dict[str, Any], wall: float) -> None:
        nonlocal done
        done += 1
        results[job.index] = summary
        if log:
            log(
                f"vmmsim: sweep point {done}/{n} done: {job.name}  {wall:.1f} s"
                f"  digest {str(summary['final_digest'])[:16]}"
            )

    if n_jobs <= 1 or n <= 1:
        for job in jobs:
            if log and not job.quiet:
                log(f"vmmsim: sweep point {job.index + 1}/{n}: {job.name}")
            try:
                summary, wall = run_point(job)
            except Exception as e:
                raise SweepPointFailed(job.name, one_line(e)) from e
            finished(job, summary, wall)
        return [r for r in results if r is not None]
    runner = run_point  # looked up now, so a replacement (tests) reaches the workers
    if jobs[0].backend == "inprocess":
        from vmmsim.cluster.sweep_pool import WorkerFailed, run_all

        try:
            run_all(runner, jobs, min(n_jobs, n), lambda i, res: finished(jobs[i], *res))
        except WorkerFailed as e:
            raise SweepPointFailed(jobs[e.index].name, e.reason) from None
        return [r for r in results if r is not None]
    width = min(n_jobs, n)
    pool = cf.ThreadPoolExecutor(max_workers=width, thread_name_prefix="sweep")
    try:
        # Points running at once share the cluster: each one's hosts ask for 1/width of
        # its CPUs, so all fit together (RunOptions.cluster_share).
        shared = [replace(job, cluster_share=1.0 / width) for job in jobs]
        futures = {pool.submit(runner, job): job for job in shared}
        for fut in cf.as_completed(futures):
            job = futures[fut]
            try:
                summary, wall = fut.result()
            except Exception as e:
                raise SweepPointFailed(job.name, one_line(e)) from e
            finished(job, summary, wall)
    except BaseException as e:
        if not isinstance(e, Exception):  # interrupted: end the running points' actors
            from vmmsim.cluster.ray_runtime import shutdown_ray

            shutdown_ray()  # the Ray this process started or joined (else: a no-op)
        raise
    finally:  # otherwise Ray points already running finish first
        pool.shutdown(wait=True, cancel_futures=True)
    return [r for r in results if r is not None]


def seed_summary(
    table: pa.Table, seed_col: str, group_cols: Sequence[str], group_names: Sequence[str]
) -> pa.Table:
    """One row per group of ``table``'s rows (``group_names[i]``: row ``i``'s group, groups
    in order of first appearance): ``point`` (the group's name), the ``group_cols``
    values, ``n_seeds``, ``seeds`` (the ``seed_col`` values, comma-separated) and, for
    every other numeric column ``c``, ``c.mean``, ``c.std`` (sample standard deviation,
    ``ddof=1``; 0 for one seed), ``c.min`` and ``c.max`` over the group's rows."""
    skip = {"point", seed_col, *group_cols}
    stat_cols = [
        f.name
        for f in table.schema
        if f.name not in skip and (pa.types.is_integer(f.type) or pa.types.is_floating(f.type))
    ]
    rows = table.to_pylist()
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, row in zip(group_names, rows, strict=True):
        groups.setdefault(name, []).append(row)
    out = []
    for name, members in groups.items():
        row: dict[str, Any] = {"point": name}
        row.update({c: members[0][c] for c in group_cols})
        row["n_seeds"] = len(members)
        row["seeds"] = ",".join(str(m[seed_col]) for m in members)
        for c in stat_cols:
            v = np.array([np.nan if m[c] is None else m[c] for m in members], dtype=float)
            row[f"{c}.mean"] = float(v.mean())
            row[f"{c}.std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
            row[f"{c}.min"] = float(v.min())
            row[f"{c}.max"] = float(v.max())
        out.append(row)
    return pa.Table.from_pylist(out)


def headline_columns(table: pa.Table) -> set[str]:
    """The columns of a sweep table that are not swept values: ``point``,
    ``final_digest`` and :func:`headline`'s figures."""
    fixed = {"point", "final_digest", *HEADLINE_TOTALS}
    return {c for c in table.column_names if c in fixed or c.split(".", 1)[0] in GROUP_METRICS}


def run_sweep(
    config: Path,
    overrides: Sequence[str],
    out: Path,
    *,
    backend: str = "ray",
    address: str | None = None,
    force: bool = False,
    quiet: bool = False,
    check_invariants: bool = False,
    timeout_s: float = 600.0,
    jobs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> pa.Table:
    """Run every point of ``config``'s sweep into ``out``, ``jobs`` at a time (``None``:
    :func:`default_jobs`); return the sweep table (the same for any ``jobs``)."""
    check_jobs(jobs, "--jobs")
    log = log or (lambda s: print(s, file=sys.stderr))
    base = load_config(config, overrides)
    keys = [k for k, _ in base.sweep]
    points = sweep_points(base)
    cfgs = [replace(load_config(config, [*overrides, *p]), sweep=()) for p in points]
    for cfg in cfgs:
        place(cfg)  # fail fast, before any point runs
    names: list[str] = []
    for p in points:
        name = point_name(p, keys)
        names.append(name if name not in names else f"{name}-{len(names)}")
    sweep_dir = AsideDir(Path(out), force)
    started = False
    try:
        if backend == "ray":
            from vmmsim.cluster.ray_runtime import init_ray

            started = init_ray(address)
        n_jobs = jobs or default_jobs(cfgs, backend, address)
        if not quiet and n_jobs > 1:
            log(f"vmmsim: sweep of {len(points)} points, {n_jobs} at a time")
        todo = [
            PointJob(
                i,
                name,
                cfg,
                sweep_dir.tmp / name,
                backend=backend,
                address=address,
                quiet=quiet or n_jobs > 1,
                check_invariants=check_invariants,
                timeout_s=timeout_s,
            )
            for i, (name, cfg) in enumerate(zip(names, cfgs, strict=True))
        ]
        summaries = run_points(todo, n_jobs, log=None if quiet else log)
        rows = []
        for p, name, cfg, summary in zip(points, names, cfgs, summaries, strict=True):
            metrics = pq.read_table(sweep_dir.tmp / name / "metrics.parquet")
            row: dict[str, Any] = {"point": name}
            for k, v in zip(keys, _point_values(p, keys), strict=True):
                for path, x in zip(sweep_paths(k), v, strict=True):
                    row[path] = _plain(x)
            row["final_digest"] = summary["final_digest"]
            row.update(headline(cfg, summary, metrics))
            rows.append(row)
        table = pa.Table.from_pylist(rows)
        pq.write_table(table, sweep_dir.tmp / "sweep.parquet", compression="zstd")
        if SEED_KEY in keys:
            rest = [k for k in keys if k != SEED_KEY]
            groups = [
                point_name([o for o in p if not o.startswith(SEED_KEY + "=")], rest)
                if rest
                else "all"
                for p in points
            ]
            cols = [path for k in rest for path in sweep_paths(k)]
            pq.write_table(
                seed_summary(table, SEED_KEY, cols, groups),
                sweep_dir.tmp / "sweep_summary.parquet",
                compression="zstd",
            )
        write_json(
            sweep_dir.tmp / "sweep.json",
            {
                "config": str(config),
                "overrides": list(overrides),
                "keys": keys,
                "points": [
                    {"name": n, "overrides": list(p)} for n, p in zip(names, points, strict=True)
                ],
            },
        )
        sweep_dir.commit()
        return table
    except BaseException:
        sweep_dir.abort()
        raise
    finally:
        if started:
            from vmmsim.cluster.ray_runtime import shutdown_ray

            shutdown_ray()


def _point_values(point: Sequence[str], keys: Sequence[str]) -> list[tuple[Any, ...]]:
    """The parsed values of one point, per sweep key (a tuple per key: linked paths)."""
    import tomllib

    by_path = {}
    for o in point:
        path, _, text = o.partition("=")
        by_path[path] = tomllib.loads(f"v = {text}")["v"]
    return [tuple(by_path[p] for p in sweep_paths(k)) for k in keys]
