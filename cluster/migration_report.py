"""The migration report: ``migrations.parquet`` and the ``summary.json`` block.

Scope: one row per migration (completed, refused at admission, aborted at stop-and-copy,
or unfinished when the run ended), its Arrow schema, writing it (always, an empty table
with the schema when nothing migrated) and the totals for ``summary.json``.

Columns: ``vm``, ``source``, ``destination``, ``trigger`` (``scheduled`` / ``pressure``),
``status``, ``reason`` (refusal reason, or the rule that stopped pre-copy: ``downtime``,
``max_rounds``, ``small_round``, ``not_converging``), ``start_tick``, ``end_tick`` (the
switch-over tick: the VM's first tick on the destination), ``rounds`` (pre-copy rounds),
``pages_sent`` (as bytes, stop-and-copy included), ``ref_pages`` (sent as references),
``bytes_sent`` (page_size per page, 16 per reference), ``final_pages`` (stop-and-copy),
``pages_migrated`` (installed on the destination), ``downtime_ms``,
``mean_throughput_during`` (the VM's mean throughput from ``start_tick`` to the tick it
runs again; null if refused), and per pre-copy round ``round_pages`` (bytes + references),
``round_refs`` and ``round_bytes``.

Not covered: how the figures arise (:mod:`cluster.migration`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

_I, _F, _S = pa.int64(), pa.float64(), pa.string()
SCHEMA = pa.schema(
    [
        pa.field("vm", _S, nullable=False),
        pa.field("source", _S, nullable=False),
        pa.field("destination", _S, nullable=False),
        pa.field("trigger", _S, nullable=False),
        pa.field("status", _S, nullable=False),
        pa.field("reason", _S, nullable=False),
        pa.field("start_tick", _I, nullable=False),
        pa.field("end_tick", _I, nullable=False),
        pa.field("rounds", _I, nullable=False),
        pa.field("pages_sent", _I, nullable=False),
        pa.field("ref_pages", _I, nullable=False),
        pa.field("bytes_sent", _I, nullable=False),
        pa.field("final_pages", _I, nullable=False),
        pa.field("pages_migrated", _I, nullable=False),
        pa.field("downtime_ms", _F, nullable=False),
        pa.field("mean_throughput_during", _F, nullable=True),
        pa.field("round_pages", pa.list_(_I), nullable=False),
        pa.field("round_refs", pa.list_(_I), nullable=False),
        pa.field("round_bytes", pa.list_(_I), nullable=False),
    ]
)


def migrations_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with the schema's keys) -> a table in row order."""
    cols = [pa.array([r[f.name] for r in rows], type=f.type) for f in SCHEMA]
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def write_migrations(path: Path, rows: list[dict[str, Any]]) -> None:
    """``migrations.parquet``: one row group, fixed layout (byte-identical per content)."""
    pq.write_table(migrations_table(rows), path, compression="zstd", row_group_size=None)


def summary_block(rows: list[dict[str, Any]], page_size: int) -> dict[str, Any]:
    """Counts and totals for ``summary.json``."""
    done = [r for r in rows if r["status"] == "completed"]
    pages = sum(r["pages_migrated"] for r in done)
    sent = sum(r["bytes_sent"] for r in done)
    downs = [r["downtime_ms"] for r in done]
    return {
        "count": len(rows),
        **{s: sum(r["status"] == s for r in rows) for s in _STATUSES},
        "pages_migrated": pages,
        "pages_sent": sum(r["pages_sent"] for r in done),
        "ref_pages": sum(r["ref_pages"] for r in done),
        "bytes_sent": sent,
        # bytes on the wire per byte of migrated memory (1.0: no page was known)
        "bytes_ratio": sent / (pages * page_size) if pages else None,
        "downtime_ms_total": float(sum(downs)),
        "downtime_ms_max": max(downs, default=0.0),
    }


_STATUSES = ("completed", "refused", "aborted", "unfinished")
