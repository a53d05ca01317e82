"""``vmmsim report DIR``: plots and a short text summary of a run or a sweep directory.

Scope: reading a finished run directory (``metrics.parquet``, ``summary.json``,
``config.json``, optional ``migrations.parquet``) or a sweep directory (``sweep.parquet``,
``sweep.json``), writing PNGs into ``DIR/plots/`` (matplotlib's Agg canvas through the
object-oriented API: no display, no global pyplot state) and returning the text summary.
Reading a run lives in :mod:`cluster.run_data`, the plots in :mod:`cluster.report_plots`
(one run) and :mod:`cluster.report_sweep` (the figure a sweep reproduces).

Anything that is not a readable run or sweep directory raises :class:`ReportError` (the
CLI prints it as one line and exits 2).  Not covered: running anything.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from vmmsim.cluster.run_data import ReportError, RunData, load_run, read_json, read_parquet

__all__ = ["ReportError", "RunData", "load_run", "report", "run_summary"]


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

        table = read_parquet(path / "sweep.parquet")
        meta = read_json(path / "sweep.json")
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
    lines += event_lines(d)
    return "\n".join(lines)


def event_lines(d: RunData) -> list[str]:
    """Per scheduled policy change: each VM group's mean resident memory and throughput
    before -> after it, each over the second half of the span between events (the run's
    start and end bounding the first and last), so both sides are settled states."""
    from vmmsim.cluster.report_plots import event_label

    events = d.events
    if not events:
        return []
    tick, vm = d.cols["tick"], d.cols["vm"]
    tick_s = float(d.summary.get("tick_s", 1.0))
    at_ticks = [math.ceil(at / tick_s - 1e-9) for at, _ in events]  # where each applied
    bounds = [0, *at_ticks, int(tick.max()) + 1]
    out = ["  events (means per VM over the second half before -> after each):"]
    for k, (at, changes) in enumerate(events):
        spans = [(bounds[k], bounds[k + 1]), (bounds[k + 1], bounds[k + 2])]
        out.append(f"  event {k} at {at:g} s: {event_label(changes)}")
        for g, members in d.groups.items():
            sel = np.isin(vm, members)
            res, tp = [], []
            for lo, hi in spans:  # ticks [lo, hi): their second half
                m = sel & (tick >= (lo + hi) / 2) & (tick < hi)
                res.append(float(d.cols["resident_mb"][m].mean()) if m.any() else float("nan"))
                tp.append(float(d.cols["throughput"][m].mean()) if m.any() else float("nan"))
            gain = f" ({100 * (tp[1] / tp[0] - 1):+.0f}%)" if tp[0] > 0 else ""
            out.append(
                f"    {g[:20]:<20} resident {res[0]:7.1f} -> {res[1]:7.1f} MB   "
                f"throughput {tp[0]:.3f} -> {tp[1]:.3f}{gain}"
            )
    return out
