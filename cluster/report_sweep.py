"""The figure a sweep reproduces (``vmmsim report SWEEP_DIR``), from ``sweep.parquet``.

Which figure follows from the swept paths (``sweep.json``), first match wins:

* a ``...count`` path -> ``sharing_vs_vms.png`` (ESX fig. 4): memory in shared pages and
  memory saved against the number of VMs, in MB and as % of all VM memory;
* a ``...tax_rate`` path -> ``memory_vs_tax.png`` (ESX fig. 7): per VM group, memory
  held and throughput against the idle memory tax rate;
* a ``...memory_mb`` path -> ``throughput_vs_memory.png`` (ESX fig. 2): per VM group,
  throughput against the (first linked) memory size, as grouped bars;

and always ``sweep.png``: throughput and resident memory of every VM group against the
first swept key's value (one line per value of the other keys; y-axes from zero).  Rows
that differ only in ``simulation.seed`` are drawn as their mean with the min..max range
as error bars.  Per-group values are the sweep table's second-half means
(:func:`cluster.sweep.headline`).  With ``points=True`` each point's own plots are drawn
too (:func:`cluster.report_plots.run_plots` into ``DIR/<point>/plots/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from vmmsim.cluster.config import sweep_paths


def _groups(rows: list[dict[str, Any]], metric: str) -> list[str]:
    pre = metric + "."
    return sorted({k[len(pre) :] for r in rows for k in r if k.startswith(pre)})


def _col(rows: list[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)


def _x(rows: list[dict[str, Any]], path: str) -> tuple[np.ndarray, list[str]]:
    """Numeric x values of a swept path (positions if not numeric) and tick labels."""
    vals = [r.get(path) for r in rows]
    labels = [f"{v:g}" if isinstance(v, int | float) else str(v) for v in vals]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        return np.array(vals, dtype=float), labels
    return np.arange(len(vals), dtype=float), labels


SEED_PATH = "simulation.seed"


def sweep_report(
    path: Path,
    rows: list[dict[str, Any]],
    meta: dict[str, Any],
    out: Path,
    points: bool = False,
) -> str:
    """Write the sweep's figures into ``out`` (and with ``points`` each point's plots into
    its directory); return the text summary."""
    out.mkdir(parents=True, exist_ok=True)
    keys = [str(k) for k in meta.get("keys", [])]
    paths = [p for k in keys for p in sweep_paths(k)]
    written = []
    if any(p.endswith(".count") for p in paths):
        written.append(_fig4(rows, keys, out / "sharing_vs_vms.png"))
    elif any(p.endswith("tax_rate") for p in paths):
        tax = next(p for p in paths if p.endswith("tax_rate"))
        written.append(_fig7(rows, keys, tax, out / "memory_vs_tax.png"))
    elif any(p.endswith("memory_mb") for p in paths):
        mem = next(p for p in paths if p.endswith("memory_mb"))
        written.append(_fig2(rows, mem, out / "throughput_vs_memory.png"))
    written.append(_save(generic_figure(rows, keys), out / "sweep.png"))
    text = _table(path, rows, paths) + _seed_table(path)
    text += "\nplots: " + ", ".join(str(p) for p in written)
    return text + "\n" + _point_plots(path, meta, points)


def _point_plots(path: Path, meta: dict[str, Any], draw: bool) -> str:
    """Draw each point's plots (``draw``) or say how to; the summary line."""
    names = [str(p["name"]) for p in meta.get("points", []) if "name" in p]
    if not draw:
        return f"per-point plots: vmmsim report {path} --points (or vmmsim report {path}/<point>)"
    from vmmsim.cluster.report_plots import run_plots
    from vmmsim.cluster.run_data import load_run

    done = 0
    for name in names:
        d = path / name
        if (d / "metrics.parquet").exists():
            run_plots(load_run(d), d / "plots")
            done += 1
    return f"per-point plots: {done} of {len(names)} points, in {path}/<point>/plots/"


def x_path(keys: list[str]) -> str:
    """The path sweep.png puts on the x-axis: the first path of the first swept key that
    is not the seed (the seed only if nothing else is swept)."""
    firsts = [sweep_paths(k)[0] for k in keys]
    return next((p for p in firsts if p != SEED_PATH), firsts[0] if firsts else "point")


def other_paths(keys: list[str], x: str) -> list[str]:
    """The first paths of the swept keys other than the one on the x-axis and the seed:
    one line per combination of their values."""
    firsts = [sweep_paths(k)[0] for k in keys]
    return [p for p in firsts if p not in (x, SEED_PATH)]


def sweep_lines(
    rows: list[dict[str, Any]], x: str, others: list[str], col: str
) -> list[tuple[str, np.ndarray, list[str], np.ndarray, np.ndarray, np.ndarray]]:
    """(label, x, x labels, mean, min, max) of column ``col``: one line per combination of
    the ``others`` values (label ``path=value, ...``, empty without others), one point
    per distinct ``x`` value in order (numeric x sorted; else positions 0, 1, ... in sweep
    order), averaged over the rows that share both (repeated seeds)."""
    xs = [r.get(x) for r in rows]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in xs)
    order = sorted(set(xs)) if numeric else list(dict.fromkeys(map(str, xs)))
    lines: dict[tuple, dict[Any, list[float]]] = {}
    for r in rows:
        key = tuple(str(r.get(p)) for p in others)
        v = r.get(x) if numeric else str(r.get(x))
        y = r.get(col)
        lines.setdefault(key, {}).setdefault(v, []).append(np.nan if y is None else float(y))
    out = []
    for key, by_x in lines.items():
        vals = [v for v in order if v in by_x]
        ys = [np.array(by_x[v], dtype=float) for v in vals]
        xv = np.array(vals if numeric else [order.index(v) for v in vals], dtype=float)
        label = ", ".join(f"{_short(p)}={k}" for p, k in zip(others, key, strict=True))
        out.append(
            (
                label,
                xv,
                [f"{v:g}" if numeric else str(v) for v in vals],
                np.array([y.mean() for y in ys]),
                np.array([y.min() for y in ys]),
                np.array([y.max() for y in ys]),
            )
        )
    return out


def _short(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _table(path: Path, rows: list[dict[str, Any]], paths: list[str]) -> str:
    groups = _groups(rows, "throughput")
    head = ["point", "shared_mb", "saved_mb", "saved_pct"] + [f"tp.{g}" for g in groups]
    head += [f"mb.{g}" for g in groups]
    lines = [f"{path}: sweep of {len(rows)} points over {', '.join(paths)}"]
    first = max(len(head[0]), max(len(str(r["point"])) for r in rows))
    width = max(len(h) for h in head[1:]) + 2
    lines.append("  " + f"{head[0]:<{first}}" + "".join(f"{h:>{width}}" for h in head[1:]))
    for r in rows:
        cells = [str(r["point"])] + [
            f"{r.get(k, float('nan')):.1f}" for k in ("shared_mb", "saved_mb", "saved_pct")
        ]
        cells += [f"{r.get(f'throughput.{g}', float('nan')):.3f}" for g in groups]
        cells += [f"{r.get(f'resident_mb.{g}', float('nan')):.1f}" for g in groups]
        lines.append("  " + f"{cells[0]:<{first}}" + "".join(f"{c:>{width}}" for c in cells[1:]))
    lines.append("  (tp: mean throughput, mb: mean resident MB per VM; second half of each run)")
    return "\n".join(lines)


def _seed_table(path: Path) -> str:
    """``sweep_summary.parquet`` (seeds swept) as text: per point of the other keys, the
    headline figures' mean +- std over the seeds and their range; empty without it."""
    f = path / "sweep_summary.parquet"
    if not f.exists():
        return ""
    import pyarrow.parquet as pq

    rows = pq.read_table(f).to_pylist()
    if not rows:
        return ""
    groups = sorted(g[: -len(".mean")] for g in _groups(rows, "throughput") if g.endswith(".mean"))
    cols = ["saved_mb", "saved_pct"] + [f"throughput.{g}" for g in groups]
    lines = [f"\nover seeds ({path / 'sweep_summary.parquet'}): mean +- std [min..max]"]
    first = max(len("point"), max(len(str(r["point"])) for r in rows))
    for r in rows:
        cells = []
        for c in cols:
            if f"{c}.mean" not in r:
                continue
            d = 3 if c.startswith("throughput") else 1
            m, sd, lo, hi = (r[f"{c}.{x}"] for x in ("mean", "std", "min", "max"))
            label = c.replace("throughput.", "tp.")
            cells.append(f"{label}={m:.{d}f}+-{sd:.{d}f}")
            cells[-1] += f" [{lo:.{d}f}..{hi:.{d}f}]"
        lines.append(f"  {str(r['point']):<{first}}  n={r['n_seeds']}  " + "  ".join(cells))
    return "\n".join(lines)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    return path


def _plot_lines(
    ax: Any,
    rows: list[dict[str, Any]],
    x: str,
    others: list[str],
    col: str,
    fmt: str,
    label: str,
    color: str | None = None,
) -> None:
    """``col`` against ``x`` (:func:`sweep_lines`): one line per value of ``others``,
    repeated seeds as their mean with min..max bars."""
    for j, (what, xv, _, mean, lo, hi) in enumerate(sweep_lines(rows, x, others, col)):
        ax.errorbar(
            xv,
            mean,
            yerr=(mean - lo, hi - mean) if (hi > lo).any() else None,
            fmt=fmt,
            color=color,
            alpha=1.0 if j == 0 else 0.6,
            capsize=3,
            label=f"{label}: {what}" if what else label,
        )


def _fig4(rows: list[dict[str, Any]], keys: list[str], path: Path) -> Path:
    count = next(
        sweep_paths(k)[0] for k in keys if any(p.endswith(".count") for p in sweep_paths(k))
    )
    others = other_paths(keys, count)
    fig = Figure(figsize=(6, 7), layout="constrained")
    top, bot = fig.subplots(2, 1, sharex=True)
    for key, label, style in (
        ("shared_mb", "shared", "o-"),
        ("saved_mb", "saved (reclaimed)", "s-"),
        ("zero_shared_mb", "shared zero pages", "^:"),
    ):
        _plot_lines(top, rows, "n_vms", others, key, style, label)
    top.set_ylim(bottom=0)
    top.set_ylabel("memory (MB)")
    top.set_title("Page sharing vs number of identical VMs")
    top.legend(fontsize=8)
    _plot_lines(bot, rows, "n_vms", others, "shared_pct", "o-", "shared")
    _plot_lines(bot, rows, "n_vms", others, "saved_pct", "s-", "saved (reclaimed)")
    n = _col(rows, "n_vms")
    bot.axhline(67, color="0.6", ls="--", lw=0.8)
    bot.axhline(60, color="0.6", ls=":", lw=0.8)
    bot.text(np.nanmin(n), 72, "paper: 67% shared, ~60% saved at 10 VMs", fontsize=7, color="0.4")
    bot.set_ylim(0, 100)
    bot.set_ylabel("% of all VM memory")
    bot.set_xlabel("number of VMs")
    bot.legend(fontsize=8)
    return _save(fig, path)


def _fig7(rows: list[dict[str, Any]], keys: list[str], key: str, path: Path) -> Path:
    others = other_paths(keys, key)
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, g in enumerate(_groups(rows, "resident_mb")):
        c = f"C{i % 10}"
        _plot_lines(left, rows, key, others, f"resident_mb.{g}", "o-", f"{g}: held", c)
        _plot_lines(left, rows, key, others, f"target_mb.{g}", "x:", f"{g}: target", c)
        _plot_lines(right, rows, key, others, f"throughput.{g}", "o-", g, c)
    left.set_xlabel("idle memory tax rate")
    left.set_ylabel("memory per VM (MB)")
    left.set_ylim(bottom=0)
    left.set_title("Memory held vs tax rate")
    left.legend(fontsize=7)
    right.set_xlabel("idle memory tax rate")
    right.set_ylabel("mean throughput")
    right.set_ylim(0, 1.05)
    right.set_title("Throughput vs tax rate")
    right.legend(fontsize=7)
    x, labels = _x(rows, key)
    uniq = dict(zip(x.tolist(), labels, strict=True))
    for ax in (left, right):
        ax.set_xticks(sorted(uniq), [uniq[v] for v in sorted(uniq)])
    return _save(fig, path)


def _fig2(rows: list[dict[str, Any]], key: str, path: Path) -> Path:
    # The paper's bars first, in its colours: configured black, ballooned gray.
    known = {"configured": "black", "ballooned": "0.6", "swapped": "C3"}
    found = _groups(rows, "throughput")
    groups = [g for g in known if g in found] + [g for g in found if g not in known]
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    w = 0.8 / max(1, len(groups))
    xl: list[str] = []
    for i, g in enumerate(groups):
        # one bar per memory size: the mean over rows sharing it (repeated seeds)
        ((_, _, xl, mean, lo, hi),) = sweep_lines(rows, key, [], f"throughput.{g}")
        ax.bar(
            np.arange(len(xl)) + (i - (len(groups) - 1) / 2) * w,
            mean,
            w,
            yerr=(mean - lo, hi - mean) if (hi > lo).any() else None,
            label=g,
            color=known.get(g, f"C{i % 10}"),
        )
    ax.set_xticks(np.arange(len(xl)), xl)
    ax.set_xlabel(f"memory size (MB): {key}")
    ax.set_ylabel("mean throughput (1 = no stalls)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Throughput vs memory size")
    ax.legend(fontsize=8)
    return _save(fig, path)


def generic_figure(rows: list[dict[str, Any]], keys: list[str]) -> Figure:
    """sweep.png: per VM group, throughput and resident memory per VM against the first
    swept key; y-axes from zero, tick labels upright and readable."""
    x = x_path(keys)
    others = other_paths(keys, x)
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    groups = _groups(rows, "throughput")
    styles = ("o-", "s--", "^-.", "v:", "D-")
    ticks: dict[float, str] = {}
    for i, g in enumerate(groups):
        c = f"C{i % 10}"
        for ax, col in ((left, f"throughput.{g}"), (right, f"resident_mb.{g}")):
            for j, (label, xv, xl, mean, lo, hi) in enumerate(sweep_lines(rows, x, others, col)):
                name = f"{g}: {label}" if label else g
                ax.errorbar(
                    xv,
                    mean,
                    yerr=(mean - lo, hi - mean) if (hi > lo).any() else None,
                    fmt=styles[j % len(styles)],
                    color=c,
                    capsize=3,
                    label=name,
                )
                ticks.update(zip(xv.tolist(), xl, strict=True))
    left.set_ylim(0, 1.05)
    left.set_ylabel("mean throughput (1 = no stalls)")
    right.set_ylim(bottom=0)
    right.set_ylabel("resident memory per VM (MB)")
    pos = sorted(ticks)
    step = max(1, -(-len(pos) // 12))  # at most 12 labels
    for ax in (left, right):
        ax.set_xlabel(x)
        ax.set_xticks(pos[::step], [ticks[p] for p in pos[::step]])
        ax.tick_params(axis="x", labelsize=9, labelrotation=0)
        ax.legend(fontsize=8)
    seeds = " (mean over seeds, bars: min..max)" if any(SEED_PATH in k for k in keys) else ""
    fig.suptitle(f"Sweep over {', '.join(keys)}: second-half means per VM group{seeds}")
    return fig
