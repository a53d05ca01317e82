"""The metrics table: Arrow schema of ``metrics.parquet`` and merging host reports.

Scope: one row per (tick, host, vm), columns as :data:`hosts.metrics_rows.COLUMNS`,
rows sorted by tick, then host, then VM, so the file is the same whatever order hosts
answered in.  Row groups are one coordinator round each, which fixes the file's layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from vmmsim.hosts.metrics_rows import COLUMNS, OPTIONAL_COLUMNS

_ARROW = {"int64": pa.int64(), "float64": pa.float64(), "str": pa.string(), "bool": pa.bool_()}

SCHEMA = pa.schema([pa.field(k, _ARROW[t], nullable=False) for k, t in COLUMNS.items()])


def merge_rounds(reports: Sequence[dict[str, np.ndarray]]) -> pa.Table:
    """Host reports (already in host-name order) -> one table sorted by tick.

    Optional columns (:data:`hosts.metrics_rows.OPTIONAL_COLUMNS`: KSM, free page
    reporting) follow when the hosts report them (all hosts share one policy)."""
    extra = [k for k in OPTIONAL_COLUMNS if reports and k in reports[0]]
    if not extra:
        cols = {k: np.concatenate([r[k] for r in reports]) for k in COLUMNS}
        order = np.argsort(cols["tick"], kind="stable")
        arrays = [pa.array(cols[k][order], type=SCHEMA.field(k).type) for k in COLUMNS]
        return pa.Table.from_arrays(arrays, schema=SCHEMA)
    names = [*COLUMNS, *extra]
    schema = pa.schema(
        [*SCHEMA, *(pa.field(k, _ARROW[OPTIONAL_COLUMNS[k]], nullable=False) for k in extra)]
    )
    cols = {k: np.concatenate([r[k] for r in reports]) for k in names}
    order = np.argsort(cols["tick"], kind="stable")
    arrays = [pa.array(cols[k][order], type=schema.field(k).type) for k in names]
    return pa.Table.from_arrays(arrays, schema=schema)
