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

__all__ = ["ReportError", "RunData", "load_run", "plural", "report", "run_summary", "state_shares"]


def report(path: Path, points: bool = False) -> str:
    """Write ``path/plots/*.png``; return the text summary.  For a sweep directory,
    ``points`` also draws each point's plots into ``path/<point>/plots/``."""
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
        return sweep_report(path, table.to_pylist(), meta, path / "plots", points=points)
    if not (path / "metrics.parquet").exists():
        raise ReportError(
            f"{path}: not a run directory (no metrics.parquet) or sweep directory "
            "(no sweep.parquet)"
        )
    from vmmsim.cluster.report_plots import run_plots

    data = load_run(path)
    written = run_plots(data, path / "plots")
    return run_summary(data) + "\nplots: " + ", ".join(str(p) for p in written)


# free-memory states, calm to severe ("clear": vSphere 6's five-state model only)
STATE_ORDER = ("high", "clear", "soft", "hard", "low")


def plural(n: int, word: str) -> str:
    """``1 host``, ``2 hosts``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def state_shares(state_ticks: dict[str, int]) -> str:
    """``high 83% soft 11% hard 5% low 1%``: each state's share of the ticks, in the order
    high, clear, soft, hard, low (any other state after them), states never entered left
    out."""
    total = sum(state_ticks.values()) or 1
    order = [k for k in STATE_ORDER if k in state_ticks]
    order += sorted(k for k in state_ticks if k not in STATE_ORDER)
    shares = [(k, 100 * state_ticks[k] / total) for k in order if state_ticks[k]]
    return " ".join(f"{k} {f'{p:.0f}' if p >= 0.5 else '<1'}%" for k, p in shares)


def run_summary(d: RunData) -> str:
    """The terminal summary of one run: hosts (at the end, and their time in each state
    over the whole run), VM groups (means over the second half), migrations."""
    s = d.summary
    n_hosts, n_vms = len(s.get("hosts", {})), len(s.get("vms", {}))
    lines = [
        f"{d.path}: {plural(int(s.get('n_ticks') or 0), 'tick')} "
        f"({s.get('duration_s', 0):g} s simulated), {plural(n_hosts, 'host')}, "
        f"{plural(n_vms, 'VM')}, seed {s.get('seed')}",
        "  hosts (memory at the end of the run; states: share of the run in each):",
    ]
    for name, h in s.get("hosts", {}).items():
        lines.append(
            f"  host {name}: {h['memory_mb']:g} MB, free {h['free_mb']:.1f} MB, "
            f"shared {h['shared_mb']:.1f} MB, saved {h['saved_mb']:.1f} MB, "
            f"swap {h['swap_used_mb']:.1f} MB; states {state_shares(h.get('state_ticks', {}))}"
        )
        if "large_pages" in h:  # policy.large_pages (hosts/large_pages.py)
            lp = h["large_pages"]
            first = lp["first_break_s"]
            lines.append(
                f"    large pages: {lp['intact']} intact, {lp['broken']} broken, "
                f"{lp['small']} regions in 4 KB pages; first broken "
                + ("never" if first is None else f"at {first:g} s")
            )
    tick = d.cols["tick"]
    half = (int(tick.max()) + 1) // 2
    late = tick >= half
    tick_s = float(s.get("tick_s", 1.0))
    lines.append(
        f"  VM groups: means per VM over the second half of the run "
        f"({half * tick_s:g}-{(int(tick.max()) + 1) * tick_s:g} s; MB, active: "
        "estimated fraction)"
    )
    lines.append("  group (n VMs)        resident  shared  balloon  swapped  active  throughput")
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
