"""``vmmsim report DIR``: plots and a short text summary of a run or a sweep directory.

Scope: reading a finished run directory (``metrics.parquet``, ``summary.json``,
``config.json``, optional ``migrations.parquet``) or a sweep directory (``sweep.parquet``,
``sweep.json``), writing PNGs into ``DIR/plots/`` (matplotlib's Agg canvas through the
object-oriented API: no display, no global pyplot state) and returning the text summary.
The plots themselves live in :mod:`cluster.report_plots` (one run) and
:mod:`cluster.report_sweep` (the figure a sweep reproduces).

Anything that is not a readable run or sweep directory raises :class:`ReportError` (the
CLI prints it as one line and exits 2).  Not covered: running anything.
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


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"{path}: missing") from None
    except (OSError, ValueError) as e:
        raise ReportError(f"{path}: unreadable ({e})") from None


def _read_parquet(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as e:
        raise ReportError(f"{path}: not a readable parquet file ({e})") from None


def load_run(path: Path) -> RunData:
    """Read a run directory; raises :class:`ReportError`."""
    t = _read_parquet(path / "metrics.parquet")
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
        migrations = _read_parquet(path / "migrations.parquet").to_pylist()
    return RunData(
        path,
        cols,
        _read_json(path / "summary.json"),
        _read_json(path / "config.json"),
        migrations,
    )


def report(path: Path) -> str:
    """Write ``path/plots/*.png``; return the text summary."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"{path}: not a directory")
    try:
        import matplotlib  # noqa: F401 - an optional dependency: vmmsim[plots]
    except ImportError:
        raise ReportError("plots need matplotlib: pip install 'vmmsim[plots]'") from None
    if (path / "sweep.parquet").exists():
        from vmmsim.cluster.report_sweep import sweep_report

        table = _read_parquet(path / "sweep.parquet")
        meta = _read_json(path / "sweep.json")
        if table.num_rows == 0:
            raise ReportError(f"{path / 'sweep.parquet'}: no rows")
        return sweep_report(path, table.to_pylist(), meta, path / "plots")
    if not (path / "metrics.parquet").exists():
        raise ReportError(
            f"{path}: not a run directory (no metrics.parquet) or sweep directory "
            "(no sweep.parquet)"
        )
    from vmmsim.cluster.report_plots import run_plots

    data = load_run(path)
    written = run_plots(data, path / "plots")
    return run_summary(data) + "\nplots: " + ", ".join(str(p) for p in written)


def run_summary(d: RunData) -> str:
    """The terminal summary of one run: hosts, VM groups (second-half means), migrations."""
    s = d.summary
    lines = [
        f"{d.path}: {s.get('n_ticks')} ticks ({s.get('duration_s', 0):g} s simulated), "
        f"{len(s.get('hosts', {}))} hosts, {len(s.get('vms', {}))} VMs, seed {s.get('seed')}",
    ]
    for name, h in s.get("hosts", {}).items():
        st = h.get("state_ticks", {})
        total = sum(st.values()) or 1
        states = " ".join(f"{k} {100 * v / total:.0f}%" for k, v in st.items() if v)
        lines.append(
            f"  host {name}: {h['memory_mb']:g} MB, free at end {h['free_mb']:.1f} MB, "
            f"shared {h['shared_mb']:.1f} MB, saved {h['saved_mb']:.1f} MB, "
            f"swap {h['swap_used_mb']:.1f} MB; states {states}"
        )
    tick = d.cols["tick"]
    late = tick >= (int(tick.max()) + 1) // 2
    lines.append(
        "  group (n VMs)        resident  shared  balloon  swapped  active  throughput"
        "   [MB, means per VM over the second half]"
    )
    for g, members in d.groups.items():
        m = late & np.isin(d.cols["vm"], members)
        if not m.any():
            continue
        c = d.cols

        def mean(k: str, c=c, m=m) -> float:
            return float(c[k][m].mean())

        lines.append(
            f"  {g[:14] + f' ({len(members)})':<20} {mean('resident_mb'):8.1f} "
            f"{mean('shared_mb'):7.1f} {mean('ballooned_mb'):8.1f} {mean('swapped_mb'):8.1f} "
            f"{mean('active_est'):7.2f} {mean('throughput'):11.3f}"
        )
    if d.migrations:
        done = sum(r.get("status") == "completed" for r in d.migrations)
        lines.append(f"  migrations: {len(d.migrations)} ({done} completed)")
    return "\n".join(lines)
