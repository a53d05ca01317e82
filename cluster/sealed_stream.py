"""Append-only Arrow IPC streams whose every byte is covered by a sha256 chain.

Scope: the file layer of the record log (``cluster/recording.py``).  A stream is an
ordinary Arrow IPC *stream* (any Arrow reader opens it) written in *segments*: data
batches, then a *seal* -- an empty batch whose custom metadata holds the sha256 of every
byte of the file before the seal (schema message included), the segment's tick and a
sequence number.  Each segment is flushed when sealed, so a crash leaves a readable,
verifiable prefix.  :func:`read_sealed` hashes the bytes as Arrow consumes them and
checks each seal before it accepts the segment's batches: one flipped byte anywhere
(data, padding, metadata) fails the next seal, a cut file ends without its end-of-stream
marker, and nothing past the damage is returned.  Errors are :class:`LogError`.

Compression: when the schema metadata holds ``vmmsim.compression`` (``zstd`` or ``lz4``)
the writer compresses every batch's buffers with it (Arrow IPC body compression, which
any Arrow reader undoes); the seals still cover the bytes as written, so checking a
compressed stream is the same as checking a plain one.  Without the key: uncompressed
(files written before compression existed).

Not covered: what the streams contain (``cluster/recording.py``).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
from vmmsim.cluster.outputs import writing

SEAL = b"vmmsim.seal"
SEAL_TICK = b"vmmsim.tick"
SEAL_SHA = b"vmmsim.sha256"
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # Arrow's end-of-stream marker
COMPRESSION = b"vmmsim.compression"
CODECS = ("none", "zstd", "lz4")  # what ``vmmsim.compression`` may name


class LogError(ValueError):
    """A record log or checkpoint that must not be used: ``<path>: <what is wrong>``."""

    def __init__(self, path: str | Path, what: str) -> None:
        super().__init__(f"{path}: {what}")
        self.path, self.what = str(path), what

    def __reduce__(self):  # survives Ray's exception transport intact
        return (type(self), (self.path, self.what))


def write_options(schema: pa.Schema) -> pa.ipc.IpcWriteOptions:
    """The IPC options of a stream with ``schema``: its ``vmmsim.compression`` codec."""
    codec = (schema.metadata or {}).get(COMPRESSION, b"none").decode(errors="replace")
    if codec not in CODECS:
        raise ValueError(f"unknown compression {codec!r} (one of {', '.join(CODECS)})")
    return pa.ipc.IpcWriteOptions(compression=None if codec == "none" else codec)


class _HashingSink(io.RawIOBase):
    """A write-only file that hashes what passes through it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f, self.h, self.n = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        m = memoryview(b)
        self.h.update(m)
        self.n += m.nbytes
        return self.f.write(m)


class SealedStreamWriter:
    """Writes one sealed stream; call :meth:`seal` after each round, :meth:`close` once."""

    def __init__(self, path: Path, schema: pa.Schema) -> None:
        self.path = Path(path)
        options = write_options(schema)
        with writing(self.path):
            self._file = open(self.path, "wb")  # noqa: SIM115 - closed in close()
            self._sink = _HashingSink(self._file)
            self._writer = pa.ipc.new_stream(
                pa.PythonFile(self._sink, mode="w"), schema, options=options
            )
        self.schema = schema
        self._empty = pa.RecordBatch.from_pylist([], schema=schema)
        self.n_seals = 0

    def write(self, batch: pa.RecordBatch) -> None:
        """Append ``batch``; a failed write (disk full) raises
        :class:`cluster.outputs.OutputWriteError` naming this file."""
        if batch.num_rows:
            with writing(self.path):
                self._writer.write_batch(batch)

    def seal(self, tick: int) -> None:
        """Close the current segment (everything written so far is now verifiable)."""
        meta = {
            SEAL: str(self.n_seals).encode(),
            SEAL_TICK: str(tick).encode(),
            SEAL_SHA: self._sink.h.hexdigest().encode(),
        }
        with writing(self.path):
            self._writer.write_batch(self._empty, custom_metadata=meta)
            self.n_seals += 1
            self._file.flush()

    def close(self) -> None:
        try:
            with writing(self.path):
                self._writer.close()  # writes the end-of-stream marker
        finally:
            with writing(self.path):
                self._file.close()


class _HashingSource(io.RawIOBase):
    """A read-only file that hashes what Arrow reads (Arrow reads one message at a time).
    Reads never ask for more than the file holds: a damaged length cannot make it
    allocate more than the file's size."""

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f, self.h, self.n, self.size = f, hashlib.sha256(), 0, size

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        left = self.size - self.n
        b = self.f.read(left if size < 0 or size > left else size)
        self.h.update(b)
        self.n += len(b)
        return b

    def readinto(self, buf: Any) -> int:
        b = self.read(len(buf))
        buf[: len(b)] = b
        return len(b)


@dataclass
class SealedStream:
    """The verified content of a sealed stream."""

    schema: pa.Schema
    batches: list[pa.RecordBatch] = field(default_factory=list)
    ticks: list[int] = field(default_factory=list)  # the tick of every seal, in order
    ended: bool = False  # closed normally (end-of-stream marker, nothing after it)

    @property
    def last_tick(self) -> int:
        return self.ticks[-1] if self.ticks else 0

    def table(self) -> pa.Table:
        return pa.Table.from_batches(self.batches, schema=self.schema)


def read_sealed(path: Path, expected: pa.Schema, fmt: str) -> SealedStream:
    """Read and verify a sealed stream whose schema must be ``expected`` and whose
    ``vmmsim.format`` metadata must be ``fmt``; refuse anything else with LogError."""
    path = Path(path)
    if not path.is_file():
        raise LogError(path, "missing")
    try:
        return _read_sealed(path, expected, fmt)
    except LogError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a damaged file makes Arrow raise
        raise LogError(path, f"damaged ({type(e).__name__}: {_short(e)})") from None


def _read_sealed(path: Path, expected: pa.Schema, fmt: str) -> SealedStream:
    size = path.stat().st_size
    with open(path, "rb") as f:
        src = _HashingSource(f, size)
        try:
            reader = pa.ipc.open_stream(pa.PythonFile(src, mode="r"))
        except (pa.ArrowException, OSError, ValueError) as e:
            raise LogError(path, f"not an Arrow IPC stream ({_short(e)})") from None
        schema = reader.schema
        _check_schema(path, schema, expected, fmt)
        try:
            options = write_options(schema)
        except ValueError as e:
            raise LogError(path, str(e)) from None
        head = src.n  # the schema message
        out = SealedStream(schema)
        pending: list[pa.RecordBatch] = []
        while True:
            before, start = src.h.hexdigest(), src.n
            try:
                batch, meta = reader.read_next_batch_with_custom_metadata()
            except StopIteration:
                break
            except (pa.ArrowException, OSError, ValueError) as e:
                raise LogError(path, f"damaged after tick {out.last_tick} ({_short(e)})") from None
            if meta is None or SEAL not in meta:
                pending.append(batch)
                continue
            # The seal covers every byte before it; its own bytes must be exactly what the
            # writer makes of its metadata (so nothing in the file is left unchecked).
            if (
                meta[SEAL] != str(len(out.ticks)).encode()
                or meta[SEAL_SHA] != before.encode()
                or _seal_bytes(schema, meta, head, options) != _pread(f, start, src.n - start)
            ):
                raise LogError(path, f"checksum mismatch after tick {out.last_tick}")
            out.batches += pending
            out.ticks.append(int(meta[SEAL_TICK]))
            pending = []
        if src.n != size:
            raise LogError(path, f"unreadable bytes at offset {src.n} (after tick {out.last_tick})")
        if pending:
            raise LogError(path, f"truncated: unsealed data after tick {out.last_tick}")
        f.seek(max(0, size - len(_EOS)))
        out.ended = size >= len(_EOS) and f.read() == _EOS
    return out


def _seal_bytes(
    schema: pa.Schema, meta: Any, head: int, options: pa.ipc.IpcWriteOptions
) -> bytes | None:
    """The bytes a writer produces for a seal with ``meta`` (None if the schema message
    would not be ``head`` bytes long)."""
    sink = pa.BufferOutputStream()
    w = pa.ipc.new_stream(sink, schema, options=options)
    ordered = {k: meta[k] for k in (SEAL, SEAL_TICK, SEAL_SHA)}
    w.write_batch(pa.RecordBatch.from_pylist([], schema=schema), custom_metadata=ordered)
    data = sink.getvalue().to_pybytes()
    return data[head:] if head < len(data) else None


def _pread(f: BinaryIO, offset: int, n: int) -> bytes:
    pos = f.tell()
    f.seek(offset)
    try:
        return f.read(n)
    finally:
        f.seek(pos)


def _check_schema(path: Path, schema: pa.Schema, expected: pa.Schema, fmt: str) -> None:
    meta = schema.metadata or {}
    got = meta.get(b"vmmsim.format", b"").decode(errors="replace")
    if not got:
        raise LogError(path, "not a vmmsim file (no vmmsim.format in its schema)")
    if got != fmt:
        raise LogError(path, f"format {got!r}; this vmmsim reads {fmt!r}")
    if not schema.remove_metadata().equals(expected.remove_metadata()):
        raise LogError(path, f"unexpected columns for {fmt}: {schema.names}")


def _short(e: Exception) -> str:
    return str(e).splitlines()[0][:160] if str(e) else type(e).__name__
