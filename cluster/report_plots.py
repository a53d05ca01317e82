"""The plots of one run (``vmmsim report RUN_DIR``), one PNG each, into ``RUN_DIR/plots/``.

* ``memory.png``: per VM, memory over time stacked by state -- private (resident minus
  shared), shared, ballooned, VMM-swapped -- with the allocation target dashed;
* ``hosts.png``: free memory per host and the free-memory state (high/soft/hard/low);
* ``active.png``: per VM, the sampler's active-memory estimate against the truth
  (fractions times allocated memory, MB);
* ``throughput.png``: per VM and per VM group, throughput over time;
* ``sharing.png``: per host, memory in shared pages and zero pages over time, and the
  memory saved at the end (``summary.json``: the metrics have no per-tick frame count);
* ``migrations.png``: migrations on a timeline (only if ``migrations.parquet`` has rows);
* ``events.png``: memory (resident) and throughput per VM over time with the scheduled
  policy changes (``[[events]]``) marked -- the paper's fig. 7 when the run is its
  tax switch (only if the run has events).

With more than 12 VMs, the per-VM figures show VM groups (sums) instead.  Uses the
object-oriented matplotlib API with the Agg canvas.  Not covered: sweeps
(:mod:`cluster.report_sweep`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from vmmsim.cluster.run_data import RunData

MAX_PANELS = 12
STATE_COLORS = {"high": "#7fc97f", "soft": "#fdc086", "hard": "#f0027f", "low": "#386cb0"}
MEM_COLORS = ("#4c72b0", "#55a868", "#ccb974", "#c44e52")


def run_plots(d: RunData, out: Path) -> list[Path]:
    """Write every plot of a run; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = [
        _memory(d, out / "memory.png"),
        _hosts(d, out / "hosts.png"),
        _active(d, out / "active.png"),
        _throughput(d, out / "throughput.png"),
        _sharing(d, out / "sharing.png"),
    ]
    if d.migrations:
        written.append(_migrations(d, out / "migrations.png"))
    if d.events:
        written.append(_events(d, out / "events.png"))
    return written


def _units(d: RunData) -> list[tuple[str, list[str]]]:
    """Panels: one per VM, or one per VM group when there are too many VMs."""
    if len(d.vms) <= MAX_PANELS:
        return [(v, [v]) for v in d.vms]
    return list(d.groups.items())[:MAX_PANELS]


def _series(d: RunData, members: list[str], col: str) -> tuple[np.ndarray, np.ndarray]:
    """(time, sum over ``members`` of ``col``) on the run's tick grid."""
    tick_s = float(d.summary.get("tick_s", 1.0))
    n = int(d.cols["tick"].max()) + 1
    total = np.zeros(n)
    for v in members:
        t, y = d.vm_series(v, col)
        total[np.rint(t / tick_s).astype(int)] += y
    return np.arange(n) * tick_s, total


def _grid(n: int, title: str, w: float = 3.6, h: float = 2.4) -> tuple[Figure, list]:
    if n <= 2:  # few panels: make them readable on their own
        w, h = 7.0 / max(1, n) + 1.5, 3.6
    cols = min(4, max(1, n))
    rows = -(-n // cols)
    fig = Figure(figsize=(w * cols, h * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    return path


def _memory(d: RunData, path: Path) -> Path:
    units = _units(d)
    fig, axes = _grid(len(units), "Memory by state (MB)")
    for ax, (name, members) in zip(axes, units, strict=True):
        t, res = _series(d, members, "resident_mb")
        _, sh = _series(d, members, "shared_mb")
        _, bal = _series(d, members, "ballooned_mb")
        _, sw = _series(d, members, "swapped_mb")
        labels = ("private", "shared", "ballooned", "swapped")
        ax.stackplot(t, np.maximum(res - sh, 0), sh, bal, sw, labels=labels, colors=MEM_COLORS)
        _, tgt = _series(d, members, "target_mb")
        ax.plot(t, tgt, "k--", lw=0.8, label="target")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("time (s)", fontsize=8)
    axes[0].legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _hosts(d: RunData, path: Path) -> Path:
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    hosts = d.hosts
    codes = {k: i for i, k in enumerate(STATE_COLORS)}
    img = []
    for h in hosts:
        t, free = d.host_series(h, "host_free_mb")
        ax.plot(t, free, lw=1, label=h)
        _, st = d.host_series(h, "host_state")
        img.append([codes.get(s, 0) for s in st.tolist()])
    ax.set_ylabel("free memory (MB)")
    ax.set_title("Host free memory and state")
    if len(hosts) <= 10:
        ax.legend(fontsize=7)
    from matplotlib.colors import ListedColormap

    width = max(len(r) for r in img)
    grid = np.array([r + [r[-1]] * (width - len(r)) for r in img], dtype=float)
    t_end = float(d.cols["time_s"].max())
    ax2.imshow(
        grid,
        aspect="auto",
        interpolation="nearest",
        cmap=ListedColormap(list(STATE_COLORS.values())),
        vmin=0,
        vmax=len(STATE_COLORS) - 1,
        extent=(0, t_end, len(hosts) - 0.5, -0.5),
    )
    ax2.set_yticks(range(len(hosts)), hosts if len(hosts) <= 10 else [""] * len(hosts))
    ax2.set_xlabel("time (s)")
    ax2.set_title(
        "state: "
        + ", ".join(
            f"{k} = {c}"
            for k, c in zip(STATE_COLORS, ("green", "orange", "pink", "blue"), strict=True)
        ),
        fontsize=8,
    )
    return _save(fig, path)


def _active(d: RunData, path: Path) -> Path:
    units = _units(d)
    fig, axes = _grid(len(units), "Active memory: sampler estimate vs truth (MB)")
    for ax, (name, members) in zip(axes, units, strict=True):
        est = true = 0.0
        for v in members:
            t, f_est = d.vm_series(v, "active_est")
            _, f_true = d.vm_series(v, "active_true")
            _, res = d.vm_series(v, "resident_mb")
            _, sw = d.vm_series(v, "swapped_mb")
            est = est + f_est * (res + sw)
            true = true + f_true * (res + sw)
        ax.plot(t, true, color="0.5", lw=1.5, label="true (last period)")
        ax.plot(t, est, color="C3", lw=1, label="estimate")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("time (s)", fontsize=8)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def _throughput(d: RunData, path: Path) -> Path:
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    tick_s = float(d.summary.get("tick_s", 1.0))
    win = max(1, int(round(30.0 / tick_s)))  # 30 s moving average
    kernel = np.ones(win) / win
    for i, (g, members) in enumerate(d.groups.items()):
        t, tp = _series(d, members, "throughput")
        tp = tp / max(1, len(members))
        if len(tp) >= win:
            tp = np.convolve(tp, kernel, mode="same")
        ax.plot(t, tp, lw=1.5, color=f"C{i % 10}", label=f"{g} (mean of {len(members)})")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"throughput ({win * tick_s:g} s moving mean)")
    ax.set_title("Throughput per VM group (1 = no stalls)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def _sharing(d: RunData, path: Path) -> Path:
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    hosts = d.summary.get("hosts", {})
    for i, h in enumerate(d.hosts[:10]):
        t, sh = d.host_sum(h, "shared_mb")
        _, z = d.host_sum(h, "zero_shared_mb")
        ax.plot(t, sh, color=f"C{i}", lw=1.5, label=f"{h}: in shared pages")
        ax.plot(t, z, color=f"C{i}", lw=1, ls=":", label=f"{h}: zero pages")
        if h in hosts:
            ax.plot(
                [t[-1]],
                [hosts[h]["saved_mb"]],
                marker="*",
                ms=12,
                color=f"C{i}",
                ls="none",
                label=f"{h}: saved at end",
            )
    ax.set_xlabel("time (s)")
    ax.set_ylabel("MB")
    ax.set_title("Page sharing per host")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def _migrations(d: RunData, path: Path) -> Path:
    rows = sorted(d.migrations, key=lambda r: (r["start_tick"], r["vm"]))
    tick_s = float(d.summary.get("tick_s", 1.0))
    fig = Figure(figsize=(9, 1.2 + 0.35 * len(rows)), layout="constrained")
    ax = fig.subplots()
    colors = {"completed": "C2", "refused": "C7", "aborted": "C3"}
    for i, r in enumerate(rows):
        t0 = r["start_tick"] * tick_s
        t1 = max(r["end_tick"], r["start_tick"] + 1) * tick_s
        ax.barh(i, t1 - t0, left=t0, color=colors.get(r["status"], "C1"), height=0.6)
        ax.text(
            t1,
            i,
            f" {r['vm']}: {r['source']}->{r['destination']} ({r['status']}, "
            f"{r['downtime_ms']:.0f} ms)",
            va="center",
            fontsize=7,
        )
    ax.set_yticks(range(len(rows)), [r["vm"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, float(d.cols["time_s"].max()) * 1.25)
    ax.set_xlabel("time (s)")
    ax.set_title("Migrations (bar: pre-copy start to switch-over)")
    return _save(fig, path)


def event_label(changes: dict) -> str:
    """``tax_rate = 0.75`` for ``{"policy.tax_rate": 0.75}`` (section dropped)."""
    return ", ".join(
        f"{p.split('.', 1)[-1]} = {v:g}" if isinstance(v, float) else f"{p.split('.', 1)[-1]} = {v}"
        for p, v in sorted(changes.items())
    )


def _events(d: RunData, path: Path) -> Path:
    """Memory and throughput over time, one line per VM (or group), events marked."""
    units = list(d.groups.items())[:10] if len(d.vms) > 10 else [(v, [v]) for v in d.vms]
    fig = Figure(figsize=(9, 6), layout="constrained")
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    tick_s = float(d.summary.get("tick_s", 1.0))
    win = max(1, int(round(30.0 / tick_s)))  # 30 s moving mean, as throughput.png
    kernel = np.ones(win) / win
    for i, (name, members) in enumerate(units):
        t, res = _series(d, members, "resident_mb")
        _, tgt = _series(d, members, "target_mb")
        _, tp = _series(d, members, "throughput")
        n = max(1, len(members))
        label = name if n == 1 else f"{name} (mean of {n})"
        ax.plot(t, res / n, color=f"C{i}", lw=1.5, label=f"{label}: resident")
        ax.plot(t, tgt / n, color=f"C{i}", lw=0.8, ls="--", label=f"{label}: target")
        tp = tp / n
        if len(tp) >= win:  # a trailing mean: nothing after an event shows before it
            tp = (
                np.convolve(tp, kernel)[: len(tp)]
                * win
                / np.minimum(np.arange(1, len(tp) + 1), win)
            )
        ax2.plot(t, tp, color=f"C{i}", lw=1.5, label=label)
    t_end = float(d.cols["time_s"].max())
    for k, (at, changes) in enumerate(d.events):
        for a in (ax, ax2):
            a.axvline(at, color="k", lw=0.8, ls=":")
        left = at < 0.6 * t_end  # the label on the side with room
        ax.annotate(
            f"event {k}: {event_label(changes)}",
            (at, 1.0 - 0.06 * (k % 3)),
            xycoords=("data", "axes fraction"),
            xytext=(3 if left else -3, -3),
            textcoords="offset points",
            ha="left" if left else "right",
            va="top",
            fontsize=7,
        )
    ax.set_ylabel("memory (MB)")
    ax.set_title("Memory per VM over time (scheduled policy changes dotted)")
    ax.legend(fontsize=7, loc="center left")
    ax2.set_ylim(0, 1.05)
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel(f"throughput ({win * tick_s:g} s trailing mean)")
    ax2.legend(fontsize=7, loc="lower left")
    return _save(fig, path)
