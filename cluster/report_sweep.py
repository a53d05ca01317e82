"""The figure a sweep reproduces (``vmmsim report SWEEP_DIR``), from ``sweep.parquet``.

Which figure follows from the swept paths (``sweep.json``), first match wins:

* a ``...count`` path -> ``sharing_vs_vms.png`` (ESX fig. 4): memory in shared pages and
  memory saved against the number of VMs, in MB and as % of all VM memory;
* a ``...tax_rate`` path -> ``memory_vs_tax.png`` (ESX fig. 7): per VM group, memory
  held and throughput against the idle memory tax rate;
* a ``...memory_mb`` path -> ``throughput_vs_memory.png`` (ESX fig. 2): per VM group,
  throughput against the (first linked) memory size, as grouped bars;

and always ``sweep.png``: throughput and resident memory of every VM group against the
first swept value.  Per-group values are the sweep table's second-half means
(:func:`cluster.sweep.headline`).  Not covered: plots of one point (report its directory).
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


def sweep_report(path: Path, rows: list[dict[str, Any]], meta: dict[str, Any], out: Path) -> str:
    """Write the sweep's figures into ``out``; return the text summary."""
    out.mkdir(parents=True, exist_ok=True)
    keys = [str(k) for k in meta.get("keys", [])]
    paths = [p for k in keys for p in sweep_paths(k)]
    first = sweep_paths(keys[0])[0] if keys else "point"
    written = []
    if any(p.endswith(".count") for p in paths):
        written.append(_fig4(rows, out / "sharing_vs_vms.png"))
    elif any(p.endswith("tax_rate") for p in paths):
        tax = next(p for p in paths if p.endswith("tax_rate"))
        written.append(_fig7(rows, tax, out / "memory_vs_tax.png"))
    elif any(p.endswith("memory_mb") for p in paths):
        mem = next(p for p in paths if p.endswith("memory_mb"))
        written.append(_fig2(rows, mem, out / "throughput_vs_memory.png"))
    written.append(_generic(rows, first, out / "sweep.png"))
    return _table(path, rows, paths) + "\nplots: " + ", ".join(str(p) for p in written)


def _table(path: Path, rows: list[dict[str, Any]], paths: list[str]) -> str:
    groups = _groups(rows, "throughput")
    head = ["point", "shared_mb", "saved_mb", "saved_pct"] + [f"tp.{g}" for g in groups]
    head += [f"mb.{g}" for g in groups]
    lines = [f"{path}: sweep of {len(rows)} points over {', '.join(paths)}"]
    width = max(len(h) for h in head) + 1
    width = max(width, max(len(str(r["point"])) for r in rows) + 1)
    lines.append("  " + "".join(f"{h:>{width}}" for h in head))
    for r in rows:
        cells = [str(r["point"])] + [
            f"{r.get(k, float('nan')):.1f}" for k in ("shared_mb", "saved_mb", "saved_pct")
        ]
        cells += [f"{r.get(f'throughput.{g}', float('nan')):.3f}" for g in groups]
        cells += [f"{r.get(f'resident_mb.{g}', float('nan')):.1f}" for g in groups]
        lines.append("  " + "".join(f"{c:>{width}}" for c in cells))
    lines.append("  (tp: mean throughput, mb: mean resident MB per VM; second half of each run)")
    return "\n".join(lines)


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=90)
    return path


def _fig4(rows: list[dict[str, Any]], path: Path) -> Path:
    n = _col(rows, "n_vms")
    o = np.argsort(n, kind="stable")
    n = n[o]
    fig = Figure(figsize=(6, 7), layout="constrained")
    top, bot = fig.subplots(2, 1, sharex=True)
    for key, label, style in (
        ("shared_mb", "shared", "o-"),
        ("saved_mb", "saved (reclaimed)", "s-"),
        ("zero_shared_mb", "shared zero pages", "^:"),
    ):
        top.plot(n, _col(rows, key)[o], style, label=label)
    top.set_ylabel("memory (MB)")
    top.set_title("Page sharing vs number of identical VMs")
    top.legend(fontsize=8)
    bot.plot(n, _col(rows, "shared_pct")[o], "o-", label="shared")
    bot.plot(n, _col(rows, "saved_pct")[o], "s-", label="saved (reclaimed)")
    bot.axhline(67, color="0.6", ls="--", lw=0.8)
    bot.axhline(60, color="0.6", ls=":", lw=0.8)
    bot.text(n[0], 72, "paper: 67% shared, ~60% saved at 10 VMs", fontsize=7, color="0.4")
    bot.set_ylim(0, 100)
    bot.set_ylabel("% of all VM memory")
    bot.set_xlabel("number of VMs")
    bot.legend(fontsize=8)
    return _save(fig, path)


def _fig7(rows: list[dict[str, Any]], key: str, path: Path) -> Path:
    x, labels = _x(rows, key)
    o = np.argsort(x, kind="stable")
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, g in enumerate(_groups(rows, "resident_mb")):
        c = f"C{i % 10}"
        left.plot(x[o], _col(rows, f"resident_mb.{g}")[o], "o-", color=c, label=f"{g}: held")
        left.plot(x[o], _col(rows, f"target_mb.{g}")[o], "x:", color=c, label=f"{g}: target")
        right.plot(x[o], _col(rows, f"throughput.{g}")[o], "o-", color=c, label=g)
    left.set_xlabel("idle memory tax rate")
    left.set_ylabel("memory per VM (MB)")
    left.set_title("Memory held vs tax rate")
    left.legend(fontsize=7)
    right.set_xlabel("idle memory tax rate")
    right.set_ylabel("mean throughput")
    right.set_title("Throughput vs tax rate")
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.set_xticks(x[o], [labels[i] for i in o])
    return _save(fig, path)


def _fig2(rows: list[dict[str, Any]], key: str, path: Path) -> Path:
    x, labels = _x(rows, key)
    o = np.argsort(x, kind="stable")
    # The paper's bars first, in its colours: configured black, ballooned gray.
    known = {"configured": "black", "ballooned": "0.6", "swapped": "C3"}
    found = _groups(rows, "throughput")
    groups = [g for g in known if g in found] + [g for g in found if g not in known]
    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.subplots()
    w = 0.8 / max(1, len(groups))
    pos = np.arange(len(o), dtype=float)
    for i, g in enumerate(groups):
        ax.bar(
            pos + (i - (len(groups) - 1) / 2) * w,
            _col(rows, f"throughput.{g}")[o],
            w,
            label=g,
            color=known.get(g, f"C{i % 10}"),
        )
    ax.set_xticks(pos, [labels[i] for i in o])
    ax.set_xlabel(f"memory size (MB): {key}")
    ax.set_ylabel("mean throughput (1 = no stalls)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Throughput vs memory size")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _generic(rows: list[dict[str, Any]], key: str, path: Path) -> Path:
    x, labels = _x(rows, key)
    o = np.argsort(x, kind="stable")
    fig = Figure(figsize=(10, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    for i, g in enumerate(_groups(rows, "throughput")):
        c = f"C{i % 10}"
        left.plot(x[o], _col(rows, f"throughput.{g}")[o], "o-", color=c, label=g)
        right.plot(x[o], _col(rows, f"resident_mb.{g}")[o], "o-", color=c, label=g)
    left.set_ylabel("mean throughput")
    right.set_ylabel("resident memory per VM (MB)")
    for ax in (left, right):
        ax.set_xlabel(key)
        ax.set_xticks(x[o], [labels[i] for i in o], fontsize=7, rotation=30)
        ax.legend(fontsize=7)
    fig.suptitle(f"Sweep over {key} (second-half means per VM group)")
    return _save(fig, path)
