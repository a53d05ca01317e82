"""The checkpoint file format: named numpy arrays as memory-mappable Arrow IPC files.

Scope: turning a host's state arrays (:func:`hosts.snapshot.host_state`) into one Arrow
IPC *file* and back, checksums, and the manifest.  One record batch of one row; each
array is a column of type ``large_list<T>`` holding the whole array: 1-D numeric arrays
as ``T`` = that Arrow type (``bool`` as ``uint8``), 2-D arrays (frame, swap and guest-swap
contents) as ``T`` = ``fixed_size_binary(row bytes)`` -- one value per frame.  Each field
carries ``numpy.dtype`` and ``numpy.shape`` metadata; the schema metadata holds the
format version, host, tick, config hash and the host's JSON meta.  Read with
``pa.memory_map``, every array is a zero-copy numpy view of the mapped file.  Only
numeric dtypes are accepted on read (no objects, no pickle).

Compression (``compression="zstd"`` or ``"lz4"``): Arrow IPC body compression of every
buffer; the reader detects it (arrays are then decompressed into memory, not mapped).
The default is none, the zero-copy case.  Checksums are over the file as written.

Writes are deterministic: one batch, columns in the given order, metadata in a fixed
order, so the same state gives the same bytes.

File checksums are block checksums: sha256 over the digests of consecutive 8 MiB
blocks, hashed in parallel threads.  The default block digest is sha256
(``sha256_blocks``); ``xxh3_128_blocks`` is several times faster (sha256 runs at
~1.5 GB/s per core, below what reading a file from the page cache costs) and detects
damage as well -- neither protects against someone who rewrites the manifest too.  The
manifest names its algorithm, is canonical JSON (sorted keys) and holds a sha256 of
itself.

Not covered: what a checkpoint holds and when one is taken (``cluster/checkpoint.py``).
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash
from vmmsim.cluster.sealed_stream import LogError
from vmmsim.cluster.write_errors import writing

FORMAT = "vmmsim-checkpoint/1"
BLOCK = 8 * 2**20
_KINDS = "biuf"  # numpy kinds a checkpoint may hold
COMPRESSIONS = ("none", "zstd", "lz4")

Arrays = dict[str, np.ndarray]


# ---------------------------------------------------------------------------- arrays
def _values(a: np.ndarray) -> pa.Array:
    """``a`` as an Arrow array over the same memory (no copy)."""
    a = np.ascontiguousarray(a)
    buf = pa.py_buffer(a.view(np.uint8).reshape(-1) if a.size else np.zeros(0, np.uint8))
    if a.ndim == 1 and a.dtype.kind in "iuf":
        typ = pa.from_numpy_dtype(a.dtype)
    elif a.ndim == 1 and a.dtype.kind == "b":
        typ = pa.uint8()
    else:
        typ = pa.binary(max(1, a.itemsize * int(np.prod(a.shape[1:]))))
    return pa.Array.from_buffers(typ, a.shape[0], [None, buf])


def arrays_to_batch(arrays: Arrays) -> pa.RecordBatch:
    """One row; column ``name`` holds ``arrays[name]`` whole (see module docstring)."""
    fields, cols = [], []
    for name, a in arrays.items():
        if a.dtype.kind not in _KINDS or a.ndim < 1 or a.dtype.byteorder == ">":
            raise TypeError(f"{name}: cannot checkpoint a {a.dtype} array of shape {a.shape}")
        vals = _values(a)
        cols.append(pa.LargeListArray.from_arrays(pa.array([0, len(vals)], pa.int64()), vals))
        meta = {"numpy.dtype": a.dtype.str, "numpy.shape": json.dumps(list(a.shape))}
        fields.append(pa.field(name, cols[-1].type, nullable=False, metadata=meta))
    return pa.RecordBatch.from_arrays(cols, schema=pa.schema(fields))


def batch_to_arrays(batch: pa.RecordBatch) -> Arrays:
    """The inverse of :func:`arrays_to_batch`: read-only numpy views (no copies)."""
    out: Arrays = {}
    for i, f in enumerate(batch.schema):
        meta = f.metadata or {}
        try:
            dtype = np.dtype(meta[b"numpy.dtype"].decode())
            shape = tuple(int(x) for x in json.loads(meta[b"numpy.shape"]))
        except (KeyError, ValueError, TypeError) as e:
            raise ValueError(f"column {f.name}: bad numpy metadata ({e})") from None
        if dtype.kind not in _KINDS or not shape or min(shape) < 0:
            raise ValueError(f"column {f.name}: unsupported array {dtype} {shape}")
        vals = batch.column(i).values
        nbytes = int(np.prod(shape)) * dtype.itemsize
        width = vals.type.byte_width if pa.types.is_fixed_size_binary(vals.type) else None
        width = width or vals.type.bit_width // 8
        if len(vals) != shape[0] or len(vals) * width != nbytes:
            raise ValueError(f"column {f.name}: {len(vals)} values do not make {shape}")
        buf = vals.buffers()[1]
        raw = np.frombuffer(buf, np.uint8, count=nbytes, offset=vals.offset * width)
        out[f.name] = raw.view(dtype).reshape(shape)
    return out


def write_arrays_file(
    path: Path,
    arrays: Arrays,
    meta: dict[str, str],
    compression: str = "none",
    use_threads: bool = True,
) -> None:
    """``arrays`` as an Arrow IPC file with ``meta`` (in this order) as schema metadata,
    its buffers compressed with ``compression`` (one of :data:`COMPRESSIONS`), on Arrow's
    thread pool if ``use_threads`` (the bytes are the same either way)."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r}: one of {', '.join(COMPRESSIONS)}")
    batch = arrays_to_batch(arrays)
    schema = batch.schema.with_metadata(meta)
    opts = pa.ipc.IpcWriteOptions(
        compression=None if compression == "none" else compression, use_threads=use_threads
    )
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema, options=opts) as w:
        w.write_batch(batch)


def host_file_meta(host: str, tick: int, config_hash: str) -> dict[str, str]:
    """The schema metadata of a host's checkpoint file, before the host's own meta (the
    order is part of the bytes)."""
    return {
        "vmmsim.format": FORMAT,
        "vmmsim.host": host,
        "vmmsim.tick": str(tick),
        "vmmsim.config_hash": config_hash,
    }


def write_host_file(
    path: Path,
    arrays: Arrays,
    meta: dict[str, Any],
    file_meta: dict[str, str],
    compression: str = "none",
    use_threads: bool = True,
) -> None:
    """A host's checkpoint file: its state ``arrays`` with ``file_meta``
    (:func:`host_file_meta`) and its JSON ``meta`` as schema metadata.  Whoever writes it
    -- the coordinator with a state it fetched, or the host itself -- the bytes are the
    same, and a failed write raises :class:`cluster.write_errors.OutputWriteError`
    naming ``path``."""
    host_meta = json.dumps(meta, sort_keys=True, separators=(",", ":"))
    meta = {**file_meta, "vmmsim.host_meta": host_meta}
    with writing(path):
        write_arrays_file(path, arrays, meta, compression, use_threads)


def release_arrow_memory() -> None:
    """Hand the calling thread's free Arrow memory back to the OS.  Arrow allocates from
    its own pool (mimalloc or jemalloc), which keeps freed pages for reuse: ~10 MB a
    process after writing a compressed checkpoint file.  (Buffers compressed on Arrow's
    thread pool stay in those threads' heaps: a host writes with ``use_threads=False``,
    which leaves ~5 MB a process after its first file, measured, against ~25 MB.)"""
    pa.default_memory_pool().release_unused()


def read_arrays_file(path: Path) -> tuple[Arrays, dict[bytes, bytes]]:
    """Memory-map an arrays file: (zero-copy views, schema metadata)."""
    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    if reader.num_record_batches != 1:
        raise ValueError(f"{reader.num_record_batches} record batches, expected 1")
    return batch_to_arrays(reader.get_batch(0)), dict(reader.schema.metadata or {})


# ---------------------------------------------------------------------------- checksums
# Block checksums a manifest may name (a fixed table: a manifest cannot pick code).
BLOCK_HASHES: dict[str, Callable[[Any], bytes]] = {
    "sha256_blocks": lambda b: hashlib.sha256(b).digest(),
    "xxh3_128_blocks": lambda b: xxhash.xxh3_128(b).digest(),
}
# xxh3-128 per block: as good as sha256 at catching damage and truncation (neither stops
# someone who also rewrites the manifest), and fast enough that verifying a checkpoint
# costs less than reading it.  Readers accept both.
DEFAULT_CHECKSUM = "xxh3_128_blocks"


def file_checksum(
    path: Path, algo: str = DEFAULT_CHECKSUM, pool: ThreadPoolExecutor | None = None
) -> str:
    """sha256 over the ``algo`` digests of the file's 8 MiB blocks (hashed in parallel)."""
    digest = BLOCK_HASHES[algo]
    size = os.path.getsize(path)
    top = hashlib.sha256(f"{algo}:{BLOCK}:{size}:".encode())
    if size == 0:
        return top.hexdigest()
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:

        def block(offset: int) -> bytes:
            with memoryview(m)[offset : offset + BLOCK] as b:  # released before m closes
                return digest(b)

        offsets = range(0, size, BLOCK)
        for d in pool.map(block, offsets) if pool is not None else map(block, offsets):
            top.update(d)
    return top.hexdigest()


def hash_pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)))


# ---------------------------------------------------------------------------- manifest
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=1) + "\n"


def manifest_text(body: dict[str, Any]) -> str:
    """The manifest file's text: ``body`` plus ``manifest_sha256`` of ``body``."""
    digest = hashlib.sha256(_canonical(body).encode()).hexdigest()
    return _canonical({**body, "manifest_sha256": digest})


def parse_manifest(path: Path) -> dict[str, Any]:
    """Read and verify a manifest (canonical text, self-checksum, format version)."""
    if not path.is_file():
        raise LogError(path, "missing")
    try:
        text = path.read_text(encoding="utf-8")
        obj = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LogError(path, f"not valid JSON ({e})") from None
    if not isinstance(obj, dict) or "manifest_sha256" not in obj:
        raise LogError(path, "not a vmmsim checkpoint manifest")
    body = {k: v for k, v in obj.items() if k != "manifest_sha256"}
    if body.get("vmmsim.format") != FORMAT:
        raise LogError(path, f"format {body.get('vmmsim.format')!r}; this vmmsim reads {FORMAT!r}")
    if text != manifest_text(body):  # canonical text with the checksum of its body
        raise LogError(path, "checksum mismatch (the manifest was modified)")
    return body


def check_files(root: Path, files: dict[str, Any], algo: str, pool: ThreadPoolExecutor) -> None:
    """Every listed file exists with its size and ``algo`` checksum (else LogError)."""
    if algo not in BLOCK_HASHES:
        raise LogError(root / "manifest.json", f"unknown checksum {algo!r}")
    for name, info in sorted(files.items()):
        p = root / name
        if "/" in name or name.startswith("."):
            raise LogError(root / "manifest.json", f"bad file name {name!r}")
        if not p.is_file():
            raise LogError(p, "missing")
        size = p.stat().st_size
        if size != info["bytes"]:
            raise LogError(p, f"truncated or extended: {size} bytes, manifest says {info['bytes']}")
        if file_checksum(p, algo, pool) != info["checksum"]:
            raise LogError(p, "checksum mismatch")
