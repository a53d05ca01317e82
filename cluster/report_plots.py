"""The plots of one run (``vmmsim report RUN_DIR``), one PNG each, into ``RUN_DIR/plots/``.

* ``memory.png``: per VM, its memory (``memory_mb``) over time stacked by state --
  private (resident minus shared), shared, ballooned, VMM-swapped and untouched (never
  backed: the rest of ``memory_mb``) -- with the allocation target dashed and migrations
  marked; panels ordered by host, one y-scale per host;
* ``hosts.png``: free memory per host and the free-memory state (high/soft/hard/low,
  calm to alarming colours);
* ``active.png``: per VM, the sampler's active-memory estimate against the truth
  (fractions times allocated memory, MB); the truth only once a sampling period closed;
* ``throughput.png``: per VM group, mean throughput per VM over time (30 s centred
  moving mean, the window shrinking at the run's edges);
* ``sharing.png``: per host, memory in shared pages, in shared zero pages and memory
  saved over time (or "no sharing");
* ``migrations.png``: migrations on a timeline (only if ``migrations.parquet`` has rows);
* ``events.png``: memory (resident) and throughput per VM over time with the scheduled
  policy changes (``[[events]]``) marked -- the paper's fig. 7 when the run is its
  tax switch (only if the run has events).

The data each plot draws comes from small public functions (:func:`moving_mean`,
:func:`throughput_lines`, :func:`active_lines`, :func:`memory_stack`,
:func:`sharing_lines`, ...) so that it can be tested without pixels.  With more than 12
VMs, the per-VM figures show VM groups (sums) instead.  Uses the object-oriented
matplotlib API with the Agg canvas.  Not covered: sweeps (:mod:`cluster.report_sweep`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from vmmsim.cluster.run_data import RunData

MAX_PANELS = 12
MEAN_WINDOW_S = 30.0  # the moving mean of throughput.png and events.png
# Free-memory states, calmest first: the most severe (low) gets the most alarming colour.
STATES = ("high", "soft", "hard", "low")
STATE_COLORS = {"high": "#91cf60", "soft": "#fee08b", "hard": "#fc8d59", "low": "#d73027"}
# vSphere 6's five states (policy.free_states = "vsphere6"): used when a run has "clear"
STATES5 = ("high", "clear", "soft", "hard", "low")
STATE_COLORS["clear"] = "#d9ef8b"


def state_names(states: Any) -> tuple[str, ...]:
    """The state scale of a run: :data:`STATES5` if any state is "clear", else
    :data:`STATES` (the paper's four, so its plots stay as they were)."""
    return STATES5 if "clear" in set(np.asarray(states).tolist()) else STATES


MEM_LAYERS = ("private", "shared", "ballooned", "swapped", "untouched")
MEM_COLORS = ("#4c72b0", "#55a868", "#ccb974", "#c44e52", "#e4e4e4")
LINE_STYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "v", "D", "P", "X")


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


# ---------------------------------------------------------------- the data drawn


def moving_mean(y: np.ndarray, win: int, trailing: bool = False) -> np.ndarray:
    """Mean of ``y`` over a window of ``win`` samples: centred on each sample (the
    samples ``i - win // 2 .. i - win // 2 + win - 1``) or trailing (``i - win + 1 .. i``:
    nothing after a sample shows at it).  At the edges the window shrinks to the samples
    that exist -- no zero padding, so constant data stay constant."""
    y = np.asarray(y, dtype=float)
    n = len(y)
    if win <= 1 or n == 0:
        return y.copy()
    c = np.concatenate(([0.0], np.cumsum(y)))
    i = np.arange(n)
    if trailing:
        lo, hi = np.maximum(0, i - win + 1), i + 1
    else:
        lo = np.maximum(0, i - win // 2)
        hi = np.minimum(n, i - win // 2 + win)
    return (c[hi] - c[lo]) / (hi - lo)


def _tick_s(d: RunData) -> float:
    return float(d.summary.get("tick_s", 1.0))


def mean_window(d: RunData) -> int:
    """The moving mean's window in ticks (30 s)."""
    return max(1, int(round(MEAN_WINDOW_S / _tick_s(d))))


def _units(d: RunData) -> list[tuple[str, list[str]]]:
    """Panels: one per VM, or one per VM group when there are too many VMs; ordered by
    the (first) host, so that a host's VMs are next to each other."""
    if len(d.vms) <= MAX_PANELS:
        units = [(v, [v]) for v in d.vms]
    else:
        units = list(d.groups.items())[:MAX_PANELS]
    return sorted(units, key=lambda u: (unit_hosts(d, u[1])[:1], u[0]))


def unit_hosts(d: RunData, members: list[str]) -> list[str]:
    """The hosts ``members`` ran on, in the order first seen (a migrated VM has two)."""
    seen: dict[str, None] = {}
    for v in members:
        _, hosts = d.vm_series(v, "host")
        for h in hosts.tolist():
            seen.setdefault(h, None)
    return list(seen)


def _series(d: RunData, members: list[str], col: str) -> tuple[np.ndarray, np.ndarray]:
    """(time, sum over ``members`` of ``col``) on the run's tick grid."""
    tick_s = _tick_s(d)
    n = int(d.cols["tick"].max()) + 1
    total = np.zeros(n)
    for v in members:
        t, y = d.vm_series(v, col)
        total[np.rint(t / tick_s).astype(int)] += y
    return np.arange(n) * tick_s, total


def _vm_memory_mb(d: RunData) -> dict[str, float]:
    return {v["name"]: float(v["memory_mb"]) for v in d.config.get("vms", [])}


def memory_stack(d: RunData, members: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(time, layer -> MB) for memory.png, layers as :data:`MEM_LAYERS`: private
    (resident minus shared), shared, ballooned, VMM-swapped and untouched (the rest of
    the VMs' ``memory_mb``: pages never backed), so that the layers add up to
    ``memory_mb`` at every tick."""
    t, res = _series(d, members, "resident_mb")
    _, sh = _series(d, members, "shared_mb")
    _, bal = _series(d, members, "ballooned_mb")
    _, sw = _series(d, members, "swapped_mb")
    mem = _vm_memory_mb(d)
    total = sum(mem.get(v, 0.0) for v in members)
    return t, {
        "private": np.maximum(res - sh, 0.0),
        "shared": sh,
        "ballooned": bal,
        "swapped": sw,
        "untouched": np.maximum(total - res - bal - sw, 0.0),
    }


def migration_marks(d: RunData, members: list[str]) -> list[tuple[float, str, str]]:
    """(time_s, text, status) per migration of one of ``members``: a completed one at its
    switch-over, a refused or aborted one where it ended."""
    tick_s = _tick_s(d)
    out = []
    for r in sorted(d.migrations, key=lambda r: (r["start_tick"], r["vm"])):
        if r["vm"] not in members:
            continue
        status = str(r.get("status"))
        who = "" if len(members) == 1 else f"{r['vm']} "
        if status == "completed":
            text = f"{who}→ {r['destination']}"
        else:
            text = f"{who}{status} ({r['destination']})"
        out.append((float(r["end_tick"]) * tick_s, text, status))
    return out


def _period_ticks(d: RunData, n: int) -> np.ndarray:
    """The sampling period in ticks at each of ticks ``0 .. n-1``: ``sample_period_s``,
    changed by scheduled events (``[[events]]``) from the tick each applies at."""
    tick_s = _tick_s(d)
    period_s = float(d.config.get("policy", {}).get("sample_period_s", 30.0))
    out = np.full(n, max(1, round(period_s / tick_s)), dtype=int)
    for at, changes in d.events:
        if "policy.sample_period_s" in changes:
            k = math.ceil(at / tick_s - 1e-9)
            out[k:] = max(1, round(float(changes["policy.sample_period_s"]) / tick_s))
    return out


def true_active_defined(d: RunData, vm: str) -> np.ndarray:
    """Per tick of ``vm`` (as :meth:`RunData.vm_series`): whether its true active
    fraction is defined, i.e. its first sampling period has closed.  A period is
    ``sample_period_s`` of the VM's own execution: ticks it was blocked do not count
    (those it was paused for a whole tick are not in the metrics and are missed); it
    closes at the start of the tick after its last one."""
    t, _ = d.vm_series(vm, "time_s")
    if "blocked" in d.cols:
        ran = (~d.vm_series(vm, "blocked")[1].astype(bool)).astype(int)
    else:
        ran = np.ones(len(t), dtype=int)
    ran_before = np.concatenate(([0], np.cumsum(ran)[:-1]))
    k = np.rint(t / _tick_s(d)).astype(int)
    period = _period_ticks(d, int(k.max()) + 1)[k]
    return np.maximum.accumulate(ran_before >= period)


def active_lines(d: RunData, members: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(time, true, estimate) in MB summed over ``members`` (fractions times allocated
    memory); ``true`` is NaN at ticks where a member's first sampling period has not
    closed (the metric is 0 there: nothing has been measured yet)."""
    tick_s = _tick_s(d)
    n = int(d.cols["tick"].max()) + 1
    est, true = np.zeros(n), np.zeros(n)
    defined = np.ones(n, dtype=bool)
    for v in members:
        t, f_est = d.vm_series(v, "active_est")
        _, f_true = d.vm_series(v, "active_true")
        _, res = d.vm_series(v, "resident_mb")
        _, sw = d.vm_series(v, "swapped_mb")
        k = np.rint(t / tick_s).astype(int)
        est[k] += f_est * (res + sw)
        true[k] += f_true * (res + sw)
        ok = true_active_defined(d, v)
        seen = np.zeros(n, dtype=bool)
        seen[k] = ok
        seen[: k.min()] = True  # before the VM exists it adds nothing
        defined &= seen
    return np.arange(n) * tick_s, np.where(defined, true, np.nan), est


def group_label(name: str, n: int) -> str:
    """A VM group's legend label: its name, and how many VMs when more than one."""
    return name if n == 1 else f"{name} ({n} VMs)"


def throughput_lines(d: RunData) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(label, time, throughput) per VM group for throughput.png: the mean per VM at each
    tick, then a 30 s centred moving mean (:func:`moving_mean`)."""
    out = []
    for g, members in d.groups.items():
        t, tp = _series(d, members, "throughput")
        n = max(1, len(members))
        out.append((group_label(g, n), t, moving_mean(tp / n, mean_window(d))))
    return out


def sharing_lines(d: RunData) -> list[tuple[str, np.ndarray, dict[str, np.ndarray]]]:
    """(host, time, {"shared", "zero", "saved"} -> MB) per host for sharing.png: memory in
    shared pages and in shared zero pages (sums over the host's VMs) and memory saved
    (``host_saved_mb``; absent in older runs)."""
    out = []
    for h in d.hosts:
        t, sh = d.host_sum(h, "shared_mb")
        _, z = d.host_sum(h, "zero_shared_mb")
        lines = {"shared": sh, "zero": z}
        if "host_saved_mb" in d.cols:
            lines["saved"] = d.host_series(h, "host_saved_mb")[1].astype(float)
        out.append((h, t, lines))
    return out


def has_sharing(d: RunData) -> bool:
    """Whether any page was shared in the run (else sharing.png says "no sharing")."""
    if any(float(np.max(y, initial=0.0)) > 0 for _, _, ys in sharing_lines(d) for y in ys.values()):
        return True
    return any(
        h.get("shared_mb", 0) or h.get("saved_mb", 0) for h in d.summary.get("hosts", {}).values()
    )


def host_line_styles(n: int, n_points: int) -> list[dict[str, Any]]:
    """Matplotlib keywords for ``n`` host lines that stay distinguishable when the lines
    are identical: each a different (line style, marker) pair, the earlier lines wider
    (under the later ones), markers staggered so identical lines show each one's."""
    if n == 1:  # nothing to tell apart
        return [{"ls": "-", "marker": "", "markevery": None, "lw": 1.2}]
    every = max(1, n_points // 8)
    out = []
    for i in range(n):
        out.append(
            {
                "ls": LINE_STYLES[i % len(LINE_STYLES)],
                "marker": MARKERS[i % len(MARKERS)],
                "markevery": (int(i * every / max(1, n)) % every, every),
                "lw": 1.0 + 1.5 * (n - 1 - i) / max(1, n - 1),
                "ms": 4,
            }
        )
    return out


def state_codes(states: list[str], names: tuple[str, ...] = STATES) -> list[int]:
    """Free-memory states as indices into ``names`` (calm 0 .. severe 3, or 4 with
    :data:`STATES5`)."""
    return [names.index(s) if s in names else 0 for s in states]


# ---------------------------------------------------------------- the figures


def _grid(
    n: int, title: str, w: float = 3.6, h: float = 2.4, sharey: bool = False
) -> tuple[Figure, list]:
    if n <= 2:  # few panels: make them readable on their own
        w, h = 7.0 / max(1, n) + 1.5, 3.6
    cols = min(4, max(1, n))
    rows = -(-n // cols)
    fig = Figure(figsize=(w * cols, h * rows + 1.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False, sharey=sharey)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    return path


def _panel_title(name: str, members: list[str], hosts: list[str]) -> str:
    who = name if len(members) == 1 else f"{name} ({len(members)} VMs)"
    if len(hosts) > 3:
        return f"{who} on {len(hosts)} hosts"
    return f"{who} @ {' → '.join(hosts)}" if len(members) == 1 else f"{who} @ {', '.join(hosts)}"


def _mark_migrations(ax: Any, marks: list[tuple[float, str, str]]) -> None:
    for k, (at, text, status) in enumerate(marks):
        done = status == "completed"
        ax.axvline(at, color="k" if done else "0.4", lw=1.0, ls="-" if done else ":")
        ax.annotate(
            text,
            (at, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(2, -2 - 9 * (k % 3)),
            textcoords="offset points",
            va="top",
            fontsize=7,
            bbox={"fc": "white", "ec": "none", "alpha": 0.8, "pad": 1},
        )


def memory_ylims(d: RunData, units: list[tuple[str, list[str]]]) -> tuple[list[float], str]:
    """The top of each memory.png panel and how the panels share it: one scale for all
    panels (the largest panel's ``memory_mb``) unless the panels differ more than 4x in
    size, then one per (first) host."""
    mem = _vm_memory_mb(d)
    size = [sum(mem.get(v, 0.0) for v in members) or 1.0 for _, members in units]
    if max(size) <= 4 * min(size):
        return [max(size)] * len(size), "one y-scale for all panels"
    first = [(unit_hosts(d, members) or [""])[0] for _, members in units]
    top = {h: max(s for s, f in zip(size, first, strict=True) if f == h) for h in first}
    return [top[h] for h in first], "one y-scale per host"


def _memory(d: RunData, path: Path) -> Path:
    units = _units(d)
    tops, scale = memory_ylims(d, units)
    fig, axes = _grid(
        len(units), f"Memory by state (MB; the stack is each VM's memory_mb, {scale})"
    )
    for ax, (name, members), ymax in zip(axes, units, tops, strict=True):
        t, layers = memory_stack(d, members)
        ax.stackplot(t, *layers.values(), labels=MEM_LAYERS, colors=MEM_COLORS)
        _, tgt = _series(d, members, "target_mb")
        ax.plot(t, tgt, "k--", lw=0.8, label="target")
        _mark_migrations(ax, migration_marks(d, members))
        ax.set_ylim(0, 1.05 * ymax)
        ax.set_xlim(t[0], t[-1])
        ax.set_title(_panel_title(name, members, unit_hosts(d, members)), fontsize=9)
        ax.set_xlabel("time (s)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    if d.migrations:
        handles.append(axes[0].plot([], [], color="k", lw=1.0)[0])
        labels.append("migration (switch-over)")
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    return _save(fig, path)


def _hosts(d: RunData, path: Path) -> Path:
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    hosts = d.hosts
    names = state_names(d.cols["host_state"])
    img = []
    n_points = int(d.cols["tick"].max()) + 1
    for h, style in zip(hosts, host_line_styles(len(hosts), n_points), strict=True):
        t, free = d.host_series(h, "host_free_mb")
        ax.plot(t, free, label=h, **style)
        _, st = d.host_series(h, "host_state")
        img.append(state_codes(st.tolist(), names))
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
        cmap=ListedColormap([STATE_COLORS[s] for s in names]),
        vmin=0,
        vmax=len(names) - 1,
        extent=(0, t_end, len(hosts) - 0.5, -0.5),
    )
    ax2.set_yticks(range(len(hosts)), hosts if len(hosts) <= 10 else [""] * len(hosts))
    ax2.set_xlabel("time (s)")
    ax2.set_title("free-memory state", fontsize=8)
    ax2.legend(
        [Patch(color=STATE_COLORS[s]) for s in names],
        names,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        title="state",
        title_fontsize=7,
    )
    return _save(fig, path)


def _active(d: RunData, path: Path) -> Path:
    units = _units(d)
    fig, axes = _grid(len(units), "Active memory: sampler estimate vs truth (MB)")
    for ax, (name, members) in zip(axes, units, strict=True):
        t, true, est = active_lines(d, members)
        ax.plot(t, true, color="0.5", lw=1.5, label="true (accessed in the last period)")
        ax.plot(t, est, color="C3", lw=1, label="estimate")
        undefined = np.flatnonzero(np.isnan(true))
        if len(undefined):  # the first sampling period: nothing measured yet
            ax.axvspan(t[0], t[undefined[-1]], color="0.92", label="first sampling period")
        ax.set_xlim(t[0], t[-1])
        ax.set_ylim(bottom=0)
        ax.set_title(_panel_title(name, members, unit_hosts(d, members)), fontsize=9)
        ax.set_xlabel("time (s)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=8)
    return _save(fig, path)


def _throughput(d: RunData, path: Path) -> Path:
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    for i, (label, t, tp) in enumerate(throughput_lines(d)):
        ax.plot(t, tp, lw=1.5, color=f"C{i % 10}", label=label)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("time (s)")
    ax.set_ylabel(f"throughput per VM\n({mean_window(d) * _tick_s(d):g} s centred moving mean)")
    ax.set_title("Throughput per VM group (1 = no stalls)")
    ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _sharing(d: RunData, path: Path) -> Path:
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    ax.set_title("Page sharing per host")
    ax.set_xlabel("time (s)")
    if not has_sharing(d):
        ax.text(
            0.5,
            0.5,
            "no sharing: no page was shared in this run",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_yticks([])
        ax.set_xlim(0, float(d.cols["time_s"].max()) or 1.0)
        return _save(fig, path)
    hosts = d.summary.get("hosts", {})
    lines_by_host = sharing_lines(d)
    few = len(lines_by_host) <= 4  # else: no per-host legend, the line styles explained
    styles = (("shared", "-", 1.5, "in shared pages"), ("zero", ":", 1.0, "in zero pages"))
    styles += (("saved", "--", 1.2, "saved"),)
    for i, (h, t, lines) in enumerate(lines_by_host):
        c = f"C{i % 10}"
        for key, ls, lw, what in styles:
            if key in lines:
                ax.plot(t, lines[key], color=c, lw=lw, ls=ls, label=f"{h}: {what}" if few else None)
        if "saved" not in lines and h in hosts:  # older runs: only the end value
            ax.plot([t[-1]], [hosts[h]["saved_mb"]], marker="*", ms=12, color=c, ls="none")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("MB")
    if few:
        fig.legend(fontsize=7, ncol=len(lines_by_host), loc="outside lower center")
    else:
        ax.set_title(f"Page sharing per host ({len(lines_by_host)} hosts, a colour each)")
        proxies = [ax.plot([], [], color="0.3", lw=lw, ls=ls)[0] for _, ls, lw, _ in styles]
        fig.legend(proxies, [w for *_, w in styles], fontsize=8, ncol=3, loc="outside lower center")
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
    tick_s = _tick_s(d)
    win = mean_window(d)  # 30 s, as throughput.png, but trailing
    for i, (name, members) in enumerate(units):
        t, res = _series(d, members, "resident_mb")
        _, tgt = _series(d, members, "target_mb")
        _, tp = _series(d, members, "throughput")
        n = max(1, len(members))
        label = name if n == 1 else f"{name} (mean of {n} VMs)"
        ax.plot(t, res / n, color=f"C{i}", lw=1.5, label=f"{label}: resident")
        ax.plot(t, tgt / n, color=f"C{i}", lw=0.8, ls="--", label=f"{label}: target")
        # a trailing mean: nothing after an event shows before it
        ax2.plot(t, moving_mean(tp / n, win, trailing=True), color=f"C{i}", lw=1.5, label=label)
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
