"""Parameter sweeps: one run per combination of the ``[sweep]`` values, and an index table.

Scope: ``vmmsim run CONFIG --out DIR`` for a config with a ``[sweep]`` table.  Every
combination (:func:`cluster.config.sweep_points`) is loaded from the *file* with its
overrides (so ``count`` can change: hosts and VMs are re-expanded) and run as an ordinary
run into ``DIR/<point>/``, where ``<point>`` is a readable, filesystem-safe name built
from the values (``tax_rate=0.75``, ``count=4``).  Then:

* ``DIR/sweep.parquet``: one row per point, in sweep order -- ``point``, each swept path's
  value (a column named by the path), and headline figures (:func:`headline`);
* ``DIR/sweep.json``: the config path, the sweep keys and each point's overrides.

The whole directory is written aside (``.DIR.partial-<pid>``) and moved into place only
when every point has finished, like a single run (:mod:`cluster.outputs`).  Points run
one after the other; on Ray, one Ray instance serves them all.

Not covered: plotting (:mod:`cluster.report`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from vmmsim.cluster.config import SimConfig, load_config, sweep_paths, sweep_points
from vmmsim.cluster.outputs import AsideDir, write_json
from vmmsim.cluster.placement import place

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
    log: Callable[[str], None] | None = None,
) -> pa.Table:
    """Run every point of ``config``'s sweep into ``out``; return the sweep table."""
    from vmmsim.cluster.runner import run

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
        rows = []
        for i, (p, name, cfg) in enumerate(zip(points, names, cfgs, strict=True)):
            if not quiet:
                log(f"vmmsim: sweep point {i + 1}/{len(points)}: {name}")
            summary = run(
                cfg,
                sweep_dir.tmp / name,
                backend=backend,
                address=address,
                quiet=quiet,
                check_invariants=check_invariants,
                timeout_s=timeout_s,
            )
            metrics = pq.read_table(sweep_dir.tmp / name / "metrics.parquet")
            row: dict[str, Any] = {"point": name}
            for k, v in zip(keys, _point_values(p, keys), strict=True):
                for path, x in zip(sweep_paths(k), v, strict=True):
                    row[path] = _plain(x)
            row.update(headline(cfg, summary, metrics))
            rows.append(row)
        table = pa.Table.from_pylist(rows)
        pq.write_table(table, sweep_dir.tmp / "sweep.parquet", compression="zstd")
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
