"""vmmsim from Python: run a config, load a run, sweep a grid -- results as Arrow tables.

Scope: the library entry points behind ``vmmsim run`` (and what a notebook needs):
:func:`run` returns a :class:`Run` whose ``metrics`` and ``migrations`` are
``pyarrow.Table`` objects (``.to_pandas()`` where pandas is installed; pandas is not a
dependency), :func:`load_run` reads a run directory written earlier, :func:`sweep` runs
every point of a grid and returns one row per point.  Errors are the exceptions the CLI
prints as one line (:class:`vmmsim.ConfigError`, :class:`vmmsim.RunDirError`, ...);
their messages never name CLI flags.

Not covered: replay, resume and reports (``vmmsim.cluster.rerun``,
``vmmsim.cluster.report``), the policy plug-ins (:mod:`vmmsim.policies`).
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vmmsim.cluster.config import (
    ConfigError,
    SimConfig,
    format_override,
    parse_config,
    with_overrides,
)
from vmmsim.cluster.config import load_config as _load_config_file
from vmmsim.cluster.outputs import RunDirError
from vmmsim.cluster.placement import place

Config = SimConfig
BACKENDS = ("ray", "inprocess")


@dataclass(frozen=True)
class Run:
    """One finished run: its summary and its tables (held in memory).

    ``out`` is the run directory, or ``None`` when the run kept no files."""

    summary: dict[str, Any]
    metrics: pa.Table
    migrations: pa.Table
    out: Path | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def final_digest(self) -> str:
        return str(self.summary["final_digest"])


def load_config(
    config: str | Path | Mapping[str, Any] | SimConfig, overrides: Sequence[str] = ()
) -> SimConfig:
    """A validated :class:`Config` from a TOML path, a dict (the TOML structure) or a
    ``Config``, with ``key=value`` overrides applied (the syntax of ``--set``)."""
    overrides = list(overrides)
    if isinstance(config, SimConfig):
        return with_overrides(config, overrides) if overrides else config
    if isinstance(config, Mapping):
        return parse_config(json.loads(json.dumps(config)), "<dict>", overrides)
    if isinstance(config, str | Path):
        return _load_config_file(config, overrides)
    raise ConfigError(
        "", f"expected a path, a dict or a vmmsim.Config, got {type(config).__name__}"
    )


def _read_tables(out: Path) -> tuple[pa.Table, pa.Table]:
    """Both tables read fully into memory (the directory may be removed after)."""
    metrics = pq.read_table(out / "metrics.parquet", memory_map=False)
    mig_path = out / "migrations.parquet"
    migrations = pq.read_table(mig_path, memory_map=False) if mig_path.exists() else pa.table({})
    return metrics.combine_chunks(), migrations.combine_chunks()


def run(
    config: str | Path | Mapping[str, Any] | SimConfig,
    *,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    backend: str = "ray",
    address: str | None = None,
    force: bool = False,
    quiet: bool = True,
    check_invariants: bool = False,
    timeout_s: float = 600.0,
) -> Run:
    """Run one simulation and return it as a :class:`Run`.

    ``out``: a run directory to write (as ``vmmsim run --out``; an existing finished run is
    replaced only with ``force``), or ``None`` to keep nothing on disk.  ``backend``:
    ``"ray"`` (embedded, or the cluster at ``address``) or ``"inprocess"``.  A config with
    a ``[sweep]`` table is refused here: use :func:`sweep`."""
    from vmmsim.cluster.runner import run as _run

    if backend not in BACKENDS:
        raise ConfigError("backend", f"must be one of {', '.join(BACKENDS)}", backend)
    cfg = load_config(config, overrides)
    if cfg.sweep:
        raise ConfigError("sweep", "this config is a sweep: use vmmsim.sweep(config, grid)")
    place(cfg)  # fail fast, before any Ray start-up
    scratch = Path(tempfile.mkdtemp(prefix="vmmsim-api-")) if out is None else None
    target = scratch / "run" if scratch else Path(out)
    try:
        summary = _run(
            cfg,
            target,
            backend=backend,
            address=address,
            force=force,
            quiet=quiet,
            check_invariants=check_invariants,
            timeout_s=timeout_s,
        )
        metrics, migrations = _read_tables(target)
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    return Run(summary, metrics, migrations, None if scratch else target, cfg.to_dict())


def load_run(path: str | Path) -> Run:
    """A run directory written by ``vmmsim run`` (or :func:`run` with ``out``)."""
    out = Path(path)
    for name in ("summary.json", "metrics.parquet"):
        if not (out / name).is_file():
            raise RunDirError(f"{out}: not a vmmsim run directory ({name} missing)")
    try:
        summary = json.loads((out / "summary.json").read_text())
        config = (
            json.loads((out / "config.json").read_text()) if (out / "config.json").is_file() else {}
        )
        metrics, migrations = _read_tables(out)
    except (OSError, ValueError, pa.ArrowException) as e:
        raise RunDirError(f"{out}: unreadable run directory ({e})") from None
    return Run(summary, metrics, migrations, out, config)


def sweep(
    config: str | Path | Mapping[str, Any] | SimConfig,
    grid: Mapping[str, Sequence[Any]],
    *,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    backend: str = "ray",
    address: str | None = None,
    force: bool = False,
    quiet: bool = True,
    timeout_s: float = 600.0,
    jobs: int | None = None,
) -> pa.Table:
    """Run ``config`` at every point of ``grid`` ({key: [values]}, the cross product, in
    the order given) and return one row per point: the point's values, its final digest
    and the headline figures of ``vmmsim run``'s sweep table.  ``out``: a directory that
    receives one run directory per point and ``sweep.parquet`` (``None``: nothing kept);
    with ``"simulation.seed"`` in ``grid`` also ``sweep_summary.parquet`` (mean, std, min,
    max over the seeds per point of the other keys; :func:`sweep_summary`).  ``jobs``:
    points run at a time (``None``: the CPUs, at most the points; ``1``: one after the
    other); the table does not depend on it.  ``quiet=False``: a line per finished point."""
    import sys

    from vmmsim.cluster.outputs import AsideDir
    from vmmsim.cluster.ray_runtime import init_ray, shutdown_ray
    from vmmsim.cluster.sweep import PointJob, check_jobs, default_jobs, headline, run_points

    if backend not in BACKENDS:
        raise ConfigError("backend", f"must be one of {', '.join(BACKENDS)}", backend)
    check_jobs(jobs)
    base = replace(load_config(config, overrides), sweep=())
    keys = list(grid)
    if not keys:
        raise ConfigError("grid", "needs at least one key with a list of values")
    for k in keys:
        if isinstance(grid[k], str | bytes) or not isinstance(grid[k], Sequence) or not grid[k]:
            raise ConfigError(f"grid.{k}", "must be a non-empty list of values", grid[k])
    points = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*grid.values())]
    cfgs = [with_overrides(base, [format_override(k, v) for k, v in p.items()]) for p in points]
    for cfg in cfgs:
        place(cfg)  # every point must be placeable before any runs
    scratch = Path(tempfile.mkdtemp(prefix="vmmsim-sweep-")) if out is None else None
    holder = AsideDir(scratch / "sweep" if scratch else Path(out), force)
    started = backend == "ray" and init_ray(address)
    try:
        n_jobs = jobs or default_jobs(cfgs, backend, address)
        todo = [
            PointJob(
                i,
                f"p{i:03d}",
                cfg,
                holder.tmp / f"p{i:03d}",
                backend=backend,
                address=address,
                quiet=quiet or n_jobs > 1,
                timeout_s=timeout_s,
            )
            for i, cfg in enumerate(cfgs)
        ]
        log = None if quiet else (lambda s: print(s, file=sys.stderr))
        summaries = run_points(todo, n_jobs, log=log)
        rows = []
        for job, p, cfg, summary in zip(todo, points, cfgs, summaries, strict=True):
            metrics = pq.read_table(job.out / "metrics.parquet")
            rows.append(
                {
                    "point": job.name,
                    **p,
                    "final_digest": summary["final_digest"],
                    **headline(cfg, summary, metrics),
                }
            )
        table = pa.Table.from_pylist(rows)
        pq.write_table(table, holder.tmp / "sweep.parquet", compression="zstd")
        if SEED in keys:
            pq.write_table(
                sweep_summary(table), holder.tmp / "sweep_summary.parquet", compression="zstd"
            )
        if scratch:
            holder.abort()
        else:
            holder.commit()
        return table
    except BaseException:
        holder.abort()
        raise
    finally:
        if started:
            shutdown_ray()
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


SEED = "simulation.seed"


def sweep_summary(table: pa.Table, seed: str = SEED) -> pa.Table:
    """A :func:`sweep` table over repeated seeds, one row per point of the other keys (in
    order of first appearance): their values, ``n_seeds``, ``seeds`` and, for every
    numeric column ``c``, ``c.mean``, ``c.std`` (sample, ``ddof=1``; 0 for one seed),
    ``c.min`` and ``c.max`` over that point's seeds.  ``point`` names the group
    (``key=value,...`` of the other keys, ``all`` when the seed is the only key)."""
    from vmmsim.cluster.sweep import headline_columns, seed_summary

    if seed not in table.column_names:
        raise ConfigError("table", f"has no {seed} column (not a sweep over seeds)")
    group_cols = [c for c in table.column_names if c not in headline_columns(table) | {seed}]
    rows = table.select(group_cols).to_pylist() if group_cols else [{}] * table.num_rows
    names = [",".join(f"{k}={v}" for k, v in r.items()) or "all" for r in rows]
    return seed_summary(table, seed, group_cols, names)
