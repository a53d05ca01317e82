"""One run directory read into memory (:class:`RunData`), for the report and its plots.

Scope: reading and checking ``metrics.parquet``, ``migrations.parquet``, ``summary.json``
and ``config.json``; anything unreadable raises :class:`ReportError` (one line, the path
and what is wrong).  Not covered: the text report (:mod:`vmmsim.cluster.report`), the plots
(:mod:`vmmsim.cluster.report_plots`), sweeps (:mod:`vmmsim.cluster.report_sweep`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


class ReportError(ValueError):
    """``DIR`` is not a readable run or sweep directory."""


@dataclass
class RunData:
    """One run directory in memory: metric columns as numpy arrays plus the JSON files."""

    path: Path
    cols: dict[str, np.ndarray]
    summary: dict[str, Any]
    config: dict[str, Any]
    migrations: list[dict[str, Any]] = field(default_factory=list)

    @property
    def vms(self) -> list[str]:
        return sorted(set(self.cols["vm"].tolist()))

    @property
    def hosts(self) -> list[str]:
        return sorted(set(self.cols["host"].tolist()))

    @property
    def groups(self) -> dict[str, list[str]]:
        """VM group (name before ``count`` expansion) -> its VMs, both sorted."""
        out: dict[str, list[str]] = {}
        for v in self.config.get("vms", []):
            out.setdefault(v.get("base_name") or v["name"], []).append(v["name"])
        return {g: sorted(n) for g, n in sorted(out.items())}

    @property
    def events(self) -> list[tuple[float, dict[str, Any]]]:
        """The run's scheduled policy changes (``[[events]]``): (time_s, {path: value})."""
        return [(float(e["time_s"]), dict(e["set"])) for e in self.config.get("events", [])]

    def vm_series(self, vm: str, col: str) -> tuple[np.ndarray, np.ndarray]:
        """(time_s, values) of one VM, one value per tick (the last row of a tick)."""
        m = self.cols["vm"] == vm
        return _per_tick(self.cols["tick"][m], self.cols["time_s"][m], self.cols[col][m])

    def host_series(self, host: str, col: str) -> tuple[np.ndarray, np.ndarray]:
        m = self.cols["host"] == host
        return _per_tick(self.cols["tick"][m], self.cols["time_s"][m], self.cols[col][m])

    def host_sum(self, host: str, col: str) -> tuple[np.ndarray, np.ndarray]:
        """(time_s, sum over the host's VMs of ``col``) per tick."""
        m = self.cols["host"] == host
        tick = self.cols["tick"][m]
        u, inv = np.unique(tick, return_inverse=True)
        sums = np.bincount(inv, weights=self.cols[col][m].astype(np.float64), minlength=len(u))
        return u * float(self.summary.get("tick_s", 1.0)), sums


def _per_tick(tick: np.ndarray, t: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    _, last = np.unique(tick[::-1], return_index=True)
    idx = len(tick) - 1 - last
    return t[idx], v[idx]


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: unreadable ({e})") from None


def read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ReportError(f"{path}: not a readable parquet file ({e})") from None


def load_run(path: Path) -> RunData:
    """Read a run directory; raises :class:`ReportError`."""
    t = read_parquet(path / "metrics.parquet")
    need = {"tick", "time_s", "host", "vm", "resident_mb", "shared_mb", "throughput"}
    if not need <= set(t.column_names):
        raise ReportError(
            f"{path / 'metrics.parquet'}: missing columns {sorted(need - set(t.column_names))}"
        )
    if t.num_rows == 0:
        raise ReportError(f"{path / 'metrics.parquet'}: no rows")
    cols = {n: t.column(n).to_numpy(zero_copy_only=False) for n in t.column_names}
    migrations: list[dict[str, Any]] = []
    if (path / "migrations.parquet").exists():
        migrations = read_parquet(path / "migrations.parquet").to_pylist()
    return RunData(
        path,
        cols,
        read_json(path / "summary.json"),
        read_json(path / "config.json"),
        migrations,
    )
