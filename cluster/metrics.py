"""The metrics table: Arrow schema of ``metrics.parquet`` and merging host reports.

Scope: one row per (tick, host, vm), columns as :data:`hosts.metrics_rows.COLUMNS`,
rows sorted by tick, then host, then VM, so the file is the same whatever order hosts
answered in.  Row groups are one coordinator round each, which fixes the file's layout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
from vmmsim.hosts.metrics_rows import COLUMNS

_ARROW = {"int64": pa.int64(), "float64": pa.float64(), "str": pa.string(), "bool": pa.bool_()}

SCHEMA = pa.schema([pa.field(k, _ARROW[t], nullable=False) for k, t in COLUMNS.items()])


def merge_rounds(reports: Sequence[dict[str, np.ndarray]]) -> pa.Table:
    """Host reports (already in host-name order) -> one table sorted by tick."""
    cols = {k: np.concatenate([r[k] for r in reports]) for k in COLUMNS}
    order = np.argsort(cols["tick"], kind="stable")
    arrays = [pa.array(cols[k][order], type=SCHEMA.field(k).type) for k in COLUMNS]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)
