"""The record log: a run's inputs, decisions and per-tick digests as Arrow IPC streams.

Scope: the format of ``DIR/record/`` (written by :class:`Recorder` as the run goes, read
back and verified by :class:`RecordLog`).  Three sealed streams
(:mod:`cluster.sealed_stream`), one segment per coordinator round, all with
``vmmsim.format = vmmsim-record/1``, ``vmmsim.stream`` and ``vmmsim.config_hash`` in
their schema metadata:

* ``decisions.arrows`` (written first; its schema metadata also holds the resolved
  config as canonical JSON, ``vmmsim.config``): ``tick int64, kind string, payload
  string`` -- one row per coordinator decision (``placement`` at tick 0, ``targets``
  after every round, and any kind added later, e.g. migrations) with a JSON payload;
* ``accesses.arrows``: ``vm string, step int64, tick int64, reads list<int64>,
  writes list<int64>, write_keys list<uint64>`` -- every workload step of every VM, rows
  sorted by (tick, vm); content keys regenerate the written bytes
  (:func:`workloads.content.page_bytes`);
* ``digests.arrows``: ``tick int64, host string, digest string`` -- each host's state
  digest after every tick.

The hosts produce the accesses and digests (the workloads run there) and return them in
their round reports only when recording.  The writer is deterministic: one batch per
stream per round, metadata in a fixed order.

Compression (``--record-compression zstd`` or ``lz4``): Arrow IPC body compression,
named by ``vmmsim.compression`` in the schema metadata (zstd: ~3x smaller).  Not the
default: it costs ~20% of an in-process run's time (docs/running.md has the numbers).
Reading detects it; plain logs (and logs from before the option) read as before.

Not covered: using a log (``cluster/replay.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from vmmsim.cluster.config import ConfigError, SimConfig, config_from_dict
from vmmsim.cluster.sealed_stream import (
    CODECS,
    COMPRESSION,
    LogError,
    SealedStreamWriter,
    read_sealed,
)
from vmmsim.workloads.replay import AccessRows

FORMAT = "vmmsim-record/1"

ACCESSES = pa.schema(
    [
        ("vm", pa.string()),
        ("step", pa.int64()),
        ("tick", pa.int64()),
        ("reads", pa.list_(pa.int64())),
        ("writes", pa.list_(pa.int64())),
        ("write_keys", pa.list_(pa.uint64())),
    ]
)
DIGESTS = pa.schema([("tick", pa.int64()), ("host", pa.string()), ("digest", pa.string())])
DECISIONS = pa.schema([("tick", pa.int64()), ("kind", pa.string()), ("payload", pa.string())])
STREAMS = {"decisions": DECISIONS, "accesses": ACCESSES, "digests": DIGESTS}  # file order
DEFAULT_COMPRESSION = "none"


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# ---------------------------------------------------------------------------- rows <-> Arrow
def rows_to_batch(rows: AccessRows) -> pa.RecordBatch:
    """:class:`AccessRows` as an ``accesses`` batch (offsets and values, no row loop)."""

    def lists(off: np.ndarray, values: np.ndarray, typ: pa.DataType) -> pa.Array:
        if off[-1] >= 2**31:
            raise ValueError("a round's accesses exceed 2**31 entries; use shorter rounds")
        return pa.ListArray.from_arrays(pa.array(off.astype(np.int32)), pa.array(values, typ))

    return pa.RecordBatch.from_arrays(
        [
            pa.array(rows.vm, pa.string()),
            pa.array(rows.step, pa.int64()),
            pa.array(rows.tick, pa.int64()),
            lists(rows.read_off, rows.reads, pa.int64()),
            lists(rows.write_off, rows.writes, pa.int64()),
            lists(rows.write_off, rows.write_keys, pa.uint64()),
        ],
        schema=ACCESSES,
    )


def table_to_rows(table: pa.Table) -> AccessRows:
    """An ``accesses`` table (any chunking) as :class:`AccessRows`."""
    if table.num_rows == 0:
        return AccessRows()
    t = table.combine_chunks()

    def lists(name: str, dtype: Any) -> tuple[np.ndarray, np.ndarray]:
        col = t.column(name).chunk(0)
        off = col.offsets.to_numpy().astype(np.int64)
        vals = col.values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
        return off - off[0], vals[off[0] : off[-1]]

    r_off, reads = lists("reads", np.int64)
    w_off, writes = lists("writes", np.int64)
    k_off, keys = lists("write_keys", np.uint64)
    if not np.array_equal(w_off, k_off):
        raise ValueError("writes and write_keys differ in length")
    return AccessRows(
        vm=tuple(t.column("vm").to_pylist()),
        step=t.column("step").to_numpy(),
        tick=t.column("tick").to_numpy(),
        read_off=r_off,
        reads=reads,
        write_off=w_off,
        writes=writes,
        write_keys=keys,
    )


# ---------------------------------------------------------------------------- writing
class Recorder:
    """Appends each round to ``DIR/record/`` (a coordinator observer)."""

    def __init__(self, root: Path, cfg: SimConfig, compression: str = DEFAULT_COMPRESSION) -> None:
        if compression not in CODECS:
            raise ValueError(f"compression {compression!r}: one of {', '.join(CODECS)}")
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.writers: dict[str, SealedStreamWriter] = {}
        for name, schema in STREAMS.items():
            meta = {
                "vmmsim.format": FORMAT,
                "vmmsim.stream": name,
                "vmmsim.config_hash": cfg.config_hash(),
            }
            if name == "decisions":
                meta["vmmsim.config"] = canonical_json(cfg.to_dict())
            if compression != "none":
                meta[COMPRESSION.decode()] = compression
            path = root / f"{name}.arrows"
            self.writers[name] = SealedStreamWriter(path, schema.with_metadata(meta))
        self.ticks_written = 0
        self.n_decisions = 0

    def on_round(self, coord: Any, start: int, n: int, results: list[dict[str, Any]]) -> None:
        end = start + n
        if end <= self.ticks_written:
            return  # a round re-executed after a recovery: already in the log
        rows = AccessRows.concat([r["accesses"] for r in results])
        order = np.lexsort((np.asarray(rows.vm, dtype=str), rows.tick)) if len(rows) else []
        self.writers["accesses"].write(rows_to_batch(rows.take(np.asarray(order, np.int64))))
        ticks, hosts, digests = [], [], []
        for i, t in enumerate(range(start, end)):
            for h, r in zip(coord.hosts, results, strict=True):
                ticks.append(t)
                hosts.append(h)
                digests.append(r["tick_digests"][i])
        self.writers["digests"].write(
            pa.RecordBatch.from_arrays(
                [pa.array(ticks, pa.int64()), pa.array(hosts), pa.array(digests)], schema=DIGESTS
            )
        )
        new = coord.decision_log.since(self.n_decisions)
        self.writers["decisions"].write(
            pa.RecordBatch.from_arrays(
                [
                    pa.array([d[0] for d in new], pa.int64()),
                    pa.array([d[1] for d in new], pa.string()),
                    pa.array([canonical_json(d[2]) for d in new], pa.string()),
                ],
                schema=DECISIONS,
            )
        )
        self.n_decisions += len(new)
        for w in self.writers.values():
            w.seal(end)
        self.ticks_written = end

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


# ---------------------------------------------------------------------------- reading
@dataclass
class RecordLog:
    """A verified record log: its config and the three streams as tables."""

    path: Path
    cfg: SimConfig
    decisions: pa.Table
    accesses: pa.Table
    digests: pa.Table
    last_tick: int
    complete: bool

    @classmethod
    def open(cls, path: str | Path, *, partial: bool = False) -> RecordLog:
        """Read and verify ``path`` (a run directory or its ``record/``).  Anything
        damaged, foreign, of another version or -- unless ``partial`` -- incomplete is
        refused with :class:`LogError`."""
        path = Path(path)
        root = path / "record" if (path / "record").is_dir() else path
        if not root.is_dir():
            raise LogError(path, "no record log here (run with --record)")
        streams = {n: read_sealed(root / f"{n}.arrows", s, FORMAT) for n, s in STREAMS.items()}
        hashes = set()
        for name, st in streams.items():
            meta = st.schema.metadata
            if meta.get(b"vmmsim.stream") != name.encode():
                raise LogError(root / f"{name}.arrows", "holds another stream")
            hashes.add(meta.get(b"vmmsim.config_hash", b"").decode())
        first = root / "decisions.arrows"
        try:
            text = streams["decisions"].schema.metadata[b"vmmsim.config"].decode()
            cfg = config_from_dict(json.loads(text), source=str(first))
        except (KeyError, UnicodeDecodeError, json.JSONDecodeError, ConfigError) as e:
            raise LogError(first, f"no valid config in the log ({e})") from None
        if hashes != {cfg.config_hash()}:
            raise LogError(root, "config hash mismatch between the streams and the config")
        ticks = {n: st.ticks for n, st in streams.items()}
        if len({tuple(t) for t in ticks.values()}) != 1:
            short = min(ticks, key=lambda n: len(ticks[n]))
            raise LogError(root / f"{short}.arrows", "truncated: shorter than the other streams")
        last = streams["decisions"].last_tick
        complete = all(st.ended for st in streams.values()) and last == cfg.simulation.n_ticks
        if not complete and not partial:
            ended = "" if all(st.ended for st in streams.values()) else " (no end-of-stream)"
            raise LogError(
                root, f"truncated: ends at tick {last} of {cfg.simulation.n_ticks}{ended}"
            )
        return cls(
            root,
            cfg,
            streams["decisions"].table(),
            streams["accesses"].table(),
            streams["digests"].table(),
            last,
            complete,
        )

    def decision_queue(self) -> dict[tuple[int, str], list[Any]]:
        """Decisions by (tick, kind), in log order (for :meth:`Coordinator.decide`)."""
        out: dict[tuple[int, str], list[Any]] = {}
        d = self.decisions.to_pydict()
        for t, k, p in zip(d["tick"], d["kind"], d["payload"], strict=True):
            out.setdefault((int(t), k), []).append(json.loads(p))
        return out

    def tick_digests(self) -> dict[tuple[int, str], str]:
        d = self.digests.to_pydict()
        return dict(zip(zip(d["tick"], d["host"], strict=True), d["digest"], strict=True))

    def vm_streams(self) -> dict[str, AccessRows]:
        """Each VM's recorded steps, in step order (``rows[k]`` is step ``k``)."""
        rows = table_to_rows(self.accesses)
        vm = np.asarray(rows.vm, dtype=str)
        out = {}
        for name in sorted(set(rows.vm)):
            idx = np.flatnonzero(vm == name)
            idx = idx[np.argsort(rows.step[idx], kind="stable")]
            if not np.array_equal(rows.step[idx], np.arange(len(idx))):
                raise LogError(self.path, f"VM {name}: recorded steps are not 0..{len(idx) - 1}")
            out[name] = rows.take(idx)
        return out
