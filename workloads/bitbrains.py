"""``vmmsim trace convert``: a Bitbrains GWA-T-12 VM-utilisation CSV -> an access trace.

Input: one VM's performance file in the GWA-T-12 ("Bitbrains") layout -- ``;``-separated,
header ``Timestamp [ms];CPU cores;CPU capacity provisioned [MHZ];CPU usage [MHZ];CPU usage
[%];Memory capacity provisioned [KB];Memory usage [KB];Disk read throughput [KB/s];Disk
write throughput [KB/s];Network received throughput [KB/s];Network transmitted throughput
[KB/s]``, one row per (usually 5-minute) interval.  Whitespace around fields is ignored.
Only the timestamp and the two memory columns are used.  (The published files hold epoch
*seconds* despite the "[ms]" header; the interval is taken from the median timestamp step,
read as milliseconds only if that step exceeds 10 000.)

Output: a trace (:mod:`workloads.trace`) for a VM of ``vm_mb`` whose working set follows
the recorded usage: in interval ``k`` it is ``round(usage_k / provisioned_k * pages)``
pages, a prefix of one random order of the VM's pages (``seed``), so it grows and shrinks
like a heap.  Each tick, pages new to the working set are written (fresh content), and
every working-set page is touched with probability ``min(1, tick_s / touch_s)`` -- a
``write_fraction`` of those touches write, the rest read.  Interval ``k`` spans
``max(1, round(interval_s / tick_s))`` ticks; by default ``tick_s`` is the interval, one
tick per row.

Not covered: CPU, disk and network columns; multi-VM directories (convert one file each).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np
from vmmsim.workloads.trace import write_trace

HEADER = (
    "Timestamp [ms]",
    "CPU cores",
    "CPU capacity provisioned [MHZ]",
    "CPU usage [MHZ]",
    "CPU usage [%]",
    "Memory capacity provisioned [KB]",
    "Memory usage [KB]",
    "Disk read throughput [KB/s]",
    "Disk write throughput [KB/s]",
    "Network received throughput [KB/s]",
    "Network transmitted throughput [KB/s]",
)
_TS, _PROV, _USED = 0, 5, 6


class ConvertError(ValueError):
    """A CSV that cannot be converted; the message names the file, line and problem."""


@dataclass(frozen=True)
class Usage:
    """The memory columns of a GWA-T-12 file: one entry per interval."""

    time_s: np.ndarray
    provisioned_kb: np.ndarray
    used_kb: np.ndarray

    @property
    def interval_s(self) -> float:
        return float(np.median(np.diff(self.time_s))) if len(self.time_s) > 1 else 300.0

    @property
    def fraction(self) -> np.ndarray:
        return np.clip(self.used_kb / self.provisioned_kb, 0.0, 1.0)


def read_usage(path: str) -> Usage:
    """Parse a GWA-T-12 CSV; raises :class:`ConvertError` on any malformed input."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=";"))
    except FileNotFoundError:
        raise ConvertError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConvertError(f"{path}: cannot read ({e})") from None
    if not rows:
        raise ConvertError(f"{path}: empty file")
    header = tuple(h.strip() for h in rows[0])
    if header != HEADER:
        raise ConvertError(
            f"{path}: line 1: not a GWA-T-12 header (expected {len(HEADER)} ';'-separated "
            f"columns starting {HEADER[0]!r}; got {';'.join(header)[:80]!r})"
        )
    values = []
    for line, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) != len(HEADER):
            raise ConvertError(f"{path}: line {line}: {len(row)} fields, expected {len(HEADER)}")
        try:
            values.append([float(row[i]) for i in (_TS, _PROV, _USED)])
        except ValueError:
            bad = next(i for i in (_TS, _PROV, _USED) if not _is_float(row[i]))
            raise ConvertError(
                f"{path}: line {line}: {HEADER[bad]}: not a number (got {row[bad].strip()!r})"
            ) from None
        ts, prov, used = values[-1]
        if not (np.isfinite(ts) and prov > 0 and used >= 0 and np.isfinite(used)):
            raise ConvertError(
                f"{path}: line {line}: need provisioned > 0 and usage >= 0 (got {prov:g}, {used:g})"
            )
    if not values:
        raise ConvertError(f"{path}: no data rows")
    a = np.asarray(values, dtype=np.float64)
    ts = a[:, 0]
    if np.any(np.diff(ts) <= 0):
        line = int(np.argmax(np.diff(ts) <= 0)) + 3
        raise ConvertError(f"{path}: line {line}: timestamps must increase")
    step = float(np.median(np.diff(ts))) if len(ts) > 1 else 300.0
    if step > 10_000:  # milliseconds, as the header claims
        ts = ts / 1000.0
    return Usage(ts - ts[0], a[:, 1], a[:, 2])


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def convert(
    src: str,
    out: str,
    *,
    vm_mb: float = 64.0,
    tick_s: float | None = None,
    seed: int = 0,
    page_size: int = 4096,
    touch_s: float = 10.0,
    write_fraction: float = 0.1,
) -> dict:
    """Convert ``src`` into the trace file ``out``; return a short summary (plain data)."""
    if vm_mb <= 0 or (tick_s is not None and tick_s <= 0) or touch_s <= 0:
        raise ConvertError("--vm-mb, --tick-s and --touch-s must be > 0")
    if not 0.0 <= write_fraction <= 1.0:
        raise ConvertError(f"--write-fraction must be in [0, 1] (got {write_fraction:g})")
    usage = read_usage(src)
    interval = usage.interval_s
    tick_s = interval if tick_s is None else tick_s
    per_row = max(1, round(interval / tick_s))
    n_pages = int(vm_mb * 2**20) // page_size
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed)))
    order = rng.permutation(n_pages).astype(np.int64)
    wss = np.rint(usage.fraction * n_pages).astype(np.int64)
    p_touch = min(1.0, tick_s / touch_s)
    cols: list[list[np.ndarray]] = [[], [], [], []]
    prev = 0
    tick = 0
    for w in np.repeat(wss, per_row):
        grown = order[prev:w] if w > prev else order[:0]
        old = order[: min(prev, w)]
        touched = old[rng.random(len(old)) < p_touch] if p_touch < 1.0 else old
        wr = rng.random(len(touched)) < write_fraction
        pages = np.concatenate([grown, touched])
        is_write = np.concatenate([np.ones(len(grown), bool), wr])
        keys = np.zeros(len(pages), dtype=np.uint64)
        n_w = int(is_write.sum())
        keys[is_write] = rng.integers(1, 2**64 - 1, size=n_w, dtype=np.uint64, endpoint=True)
        srt = np.argsort(pages, kind="stable")  # page order within a tick: easier to read
        for c, v in zip(cols, (np.full(len(pages), tick), pages, is_write, keys), strict=True):
            c.append(v[srt])
        prev = int(w)
        tick += 1
    tick_a, ppn, isw, key = (np.concatenate(c) for c in cols)
    meta = {
        "vmmsim.vm_pages": str(n_pages),
        "vmmsim.page_size": str(page_size),
        "vmmsim.tick_s": f"{tick_s:g}",
        "vmmsim.source": os.path.basename(src),
        "vmmsim.interval_s": f"{interval:g}",
    }
    write_trace(out, tick_a, ppn, isw, key, meta)
    return {
        "rows": len(tick_a),
        "ticks": tick,
        "intervals": len(wss),
        "vm_pages": n_pages,
        "tick_s": tick_s,
        "mean_wss_fraction": float(usage.fraction.mean()),
    }
