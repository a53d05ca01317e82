"""The ``trace`` pattern: a VM driven by an access trace in an Arrow IPC file.

Trace file format (Arrow IPC *file*, ``.arrow``), one row per page access:

==========  ========  ===============================================================
column      type      meaning
==========  ========  ===============================================================
tick        int64     the VM's step (tick) the access belongs to; rows sorted by tick
ppn         int64     guest page number (the workload's page, ``0 <= ppn < VM pages``)
is_write    bool      true: the page is overwritten with content ``key``
key         uint64    content key of a write (:mod:`workloads.content`; 0 = zero
                      page); ignored for reads
==========  ========  ===============================================================

Schema metadata (optional, informative): ``vmmsim.trace`` (format version, "1"),
``vmmsim.vm_pages``, ``vmmsim.page_size``, ``vmmsim.tick_s``, ``vmmsim.source``.
:func:`write_trace` writes this layout deterministically (fixed batch size, metadata
order).  ``vmmsim trace convert`` (:mod:`workloads.bitbrains`) makes one from a public
VM-utilisation trace.

At step ``k`` the VM replays the rows with ``tick == k``; after the last tick it makes no
accesses.  The guest still boots from its image at step 0 unless ``boot = false`` (for a
trace that already contains the boot).  The path is checked when the config is loaded
(file, schema, sort order) and against the VM's size; a relative path in a config file
resolves from that file's folder (``cluster/config.py`` makes it absolute) -- on a
multi-node Ray cluster, give a path every node sees.

Not covered: recording a run (``cluster/record.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from vmmsim.workloads.patterns import Accesses, Workload, WorkloadEnv

# pyarrow is imported where a trace is read or written: every host actor imports this
# module (the workload registry), and pyarrow costs each process ~25 ms and ~5 MB of
# private memory it would not otherwise use (64 actors: ~350 MB).
BATCH_ROWS = 1 << 16


def trace_schema():  # -> pa.Schema
    """The trace file's columns (:mod:`module docstring <workloads.trace>`)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("tick", pa.int64(), nullable=False),
            pa.field("ppn", pa.int64(), nullable=False),
            pa.field("is_write", pa.bool_(), nullable=False),
            pa.field("key", pa.uint64(), nullable=False),
        ]
    )


class TraceError(ValueError):
    """A trace file that cannot be used; the message names the file and the problem."""


@dataclass(frozen=True)
class TraceData:
    """A trace in memory: the columns plus where each tick's rows start."""

    tick: np.ndarray
    ppn: np.ndarray
    is_write: np.ndarray
    key: np.ndarray
    meta: dict[str, str]

    @property
    def n_ticks(self) -> int:
        return int(self.tick[-1]) + 1 if len(self.tick) else 0

    @property
    def max_ppn(self) -> int:
        return int(self.ppn.max()) if len(self.ppn) else -1

    def rows(self, tick: int) -> slice:
        lo, hi = np.searchsorted(self.tick, [tick, tick + 1])
        return slice(int(lo), int(hi))


_CACHE: dict[tuple[str, int, int], TraceData] = {}


def read_trace(path: str) -> TraceData:
    """Read and check a trace file (cached per path, size and mtime); raises TraceError."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise TraceError(f"{path}: cannot read ({e.strerror})") from None
    ck = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
    if ck in _CACHE:
        return _CACHE[ck]
    import pyarrow as pa

    schema = trace_schema()
    try:
        with pa.memory_map(path) as src:
            table = pa.ipc.open_file(src).read_all()
    except (pa.ArrowInvalid, OSError) as e:
        raise TraceError(f"{path}: not an Arrow IPC file ({e})") from None
    names = [f.name for f in schema]
    got = {f.name: f.type for f in table.schema}
    for f in schema:
        if got.get(f.name) != f.type:
            have = got.get(f.name, "missing")
            raise TraceError(f"{path}: column {f.name} must be {f.type} (got {have})")
    if table.schema.names != names:
        raise TraceError(f"{path}: columns must be {', '.join(names)} in this order")
    cols = {n: table.column(n).to_numpy() for n in names}
    tick = cols["tick"]
    if len(tick) and (tick[0] < 0 or np.any(np.diff(tick) < 0)):
        raise TraceError(f"{path}: tick must be >= 0 and sorted ascending")
    if len(tick) and cols["ppn"].min() < 0:
        raise TraceError(f"{path}: ppn must be >= 0")
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    data = TraceData(tick, cols["ppn"], cols["is_write"].astype(bool), cols["key"], meta)
    _CACHE.clear()  # keep one trace per process: VMs of a run share it
    _CACHE[ck] = data
    return data


def write_trace(
    path: str,
    tick: np.ndarray,
    ppn: np.ndarray,
    is_write: np.ndarray,
    key: np.ndarray,
    meta: dict[str, str] | None = None,
) -> None:
    """Write a trace (rows must be sorted by tick); byte-identical for equal input."""
    import pyarrow as pa

    arrays = [
        pa.array(np.asarray(tick, np.int64)),
        pa.array(np.asarray(ppn, np.int64)),
        pa.array(np.asarray(is_write, bool)),
        pa.array(np.asarray(key, np.uint64)),
    ]
    md = {"vmmsim.trace": "1", **(meta or {})}
    schema = trace_schema().with_metadata({k: str(md[k]) for k in sorted(md)})
    table = pa.Table.from_arrays(arrays, schema=schema)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        w.write_table(table, max_chunksize=BATCH_ROWS)


@dataclass(frozen=True)
class TraceParams:
    path: str = field(
        default="",
        metadata={"help": "Arrow IPC trace file (schema: tick, ppn, is_write, key; see docs)"},
    )
    boot: bool = field(
        default=True, metadata={"help": "boot the image at step 0 before the trace's rows"}
    )

    def validate(self) -> list[str]:
        if not self.path:
            return ['path: a trace file is required (got "")']
        try:
            read_trace(self.path)
        except TraceError as e:
            return [f"path: {e}"]
        return []

    def check_vm(self, n_pages: int) -> list[str]:
        """Problems running this trace in a VM of ``n_pages`` pages (config-time check)."""
        top = read_trace(self.path).max_ppn
        if top >= n_pages:
            return [f"path: {self.path}: ppn {top} >= the VM's {n_pages} pages (VM too small)"]
        return []


class Trace(Workload):
    """Replays an access trace (Arrow IPC file): at step k, the rows of tick k."""

    kind = "trace"
    Params = TraceParams

    def __init__(self, params: TraceParams, env: WorkloadEnv, rng: np.random.Generator) -> None:
        super().__init__(params, env, rng)
        self.data = read_trace(params.path)
        errs = params.check_vm(env.n_pages)
        if errs:
            raise TraceError(errs[0].partition(": ")[2])

    def step(self, step: int) -> Accesses:
        if self.params.boot:
            return super().step(step)
        return self._accesses(step)

    def _accesses(self, step: int) -> Accesses:
        d = self.data
        sl = d.rows(step)
        w = d.is_write[sl]
        ppn = d.ppn[sl]
        return Accesses(ppn[~w], ppn[w], d.key[sl][w])
