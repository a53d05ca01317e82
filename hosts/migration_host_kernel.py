"""Compiled kernels of live migration: gather page rows and hash them in one pass.

Scope: the per-page loops of :mod:`hosts.migration_host` -- reading a batch of pages out
of the frame table or the host swap store into one contiguous array while hashing each
page from the copy just made (still in cache), the strong digest of chosen rows, and
row-by-row byte compares.  Hashes come from the ``xxhash`` package's own C xxh3 through
:mod:`hosts.native`, so they equal ``xxhash.xxh3_64_intdigest(page)`` and
``xxhash.xxh3_64_intdigest(page, seed=s)``.

Digests.  A page's *hash* is xxh3-64 (unseeded: the sharing index's key).  Its *strong
digest* -- what lets a destination take a page it already holds without the page being
sent, where no byte compare is possible -- is the pair of xxh3-64 values under the two
fixed seeds :data:`STRONG_SEEDS`: 128 bits, computed in compiled code (numba cannot call
``XXH3_128bits``, which returns a struct).  For inputs over 240 bytes seeded xxh3-64
derives a different secret from each seed, so for non-adversarial contents the hash and
the two halves behave as independent 64-bit values: two different pages whose hashes are
equal also have equal strong digests with probability about 2**-128 (per pair of pages
compared), as with xxh3-128.  Like xxh3-128 it is not cryptographic: a guest crafting
collisions is out of scope.  (Pages of at most 240 bytes -- small ``content_bytes`` in
tests -- are hashed by xxh3's short-input paths, where the seed is mixed in directly;
collisions among different contents remain ~2**-64 per half.)

Threads: a large gather (:data:`PARALLEL_BYTES`) is split into row ranges hashed by up to
:data:`MAX_THREADS` threads of this process (the kernels release the GIL); results do not
depend on the split.

Not covered: which pages are sent, and the protocol (:mod:`hosts.migration_host`).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from vmmsim.hosts import native

#: Seeds of the strong digest's two xxh3-64 halves (fixed: part of the wire format).
STRONG_SEEDS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)
_S0, _S1 = STRONG_SEEDS


@numba.njit(**native.JIT)
def _gather_hash(
    frames: np.ndarray,
    swap: np.ndarray,
    loc: np.ndarray,
    in_swap: np.ndarray,
    out: np.ndarray,
    h64: np.ndarray,
) -> None:
    width = out.shape[1]
    for i in range(loc.shape[0]):
        src = swap[loc[i]] if in_swap[i] else frames[loc[i]]
        dst = out[i].ctypes.data
        native.memcpy(dst, src.ctypes.data, width)
        h64[i] = native.xxh3_64(dst, width)


@numba.njit(**native.JIT)
def _strong(rows: np.ndarray, sel: np.ndarray, out: np.ndarray) -> None:
    width = rows.shape[1]
    for i in range(sel.shape[0]):
        p = rows[sel[i]].ctypes.data
        out[i, 0] = native.xxh3_64_seeded(p, width, _S0)
        out[i, 1] = native.xxh3_64_seeded(p, width, _S1)


@numba.njit(**native.JIT)
def _gather_hash_strong(
    content: np.ndarray, rows: np.ndarray, out: np.ndarray, h64: np.ndarray, strong: np.ndarray
) -> None:
    width = out.shape[1]
    for i in range(rows.shape[0]):
        dst = out[i].ctypes.data
        native.memcpy(dst, content[rows[i]].ctypes.data, width)
        h64[i] = native.xxh3_64(dst, width)
        strong[i, 0] = native.xxh3_64_seeded(dst, width, _S0)
        strong[i, 1] = native.xxh3_64_seeded(dst, width, _S1)


@numba.njit(**native.JIT)
def _rows_equal(a: np.ndarray, ra: np.ndarray, b: np.ndarray, rb: np.ndarray, out: np.ndarray):
    width = a.shape[1]
    for i in range(ra.shape[0]):
        out[i] = native.memcmp(a[ra[i]].ctypes.data, b[rb[i]].ctypes.data, width) == 0


#: Batches of at least this many bytes are gathered and hashed by several threads.
PARALLEL_BYTES = 8 * 2**20
#: At most this many threads per process (a migration source is busy for a short burst;
#: Ray itself copies large results into the object store with several threads).
MAX_THREADS = 2
_POOL: list[ThreadPoolExecutor] = []


def _threads() -> int:
    return max(1, min(MAX_THREADS, len(os.sched_getaffinity(0))))


def _pool() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(_threads(), thread_name_prefix="mig-kernel"))
    return _POOL[0]


def _split(n: int, nbytes: int) -> list[tuple[int, int]]:
    """Row ranges of one batch, one per thread (results do not depend on the split)."""
    k = _threads() if nbytes >= PARALLEL_BYTES else 1
    bounds = [n * i // k for i in range(k + 1)]
    return list(zip(bounds, bounds[1:], strict=False))


def _rows(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.int64)


def gather_hash(
    frames: np.ndarray,
    swap: np.ndarray,
    loc: np.ndarray,
    in_swap: np.ndarray,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(data, h64)``: ``data[i]`` is row ``loc[i]`` of ``swap`` if ``in_swap[i]`` else of
    ``frames`` (both C-contiguous ``uint8[:, width]``); ``h64[i]`` its xxh3-64.  ``data``
    is ``out`` if given (C-contiguous ``uint8[len(loc), width]``), else a new array."""
    n = len(loc)
    if out is None:
        out = np.empty((n, frames.shape[1]), dtype=np.uint8)
    elif out.shape != (n, frames.shape[1]) or not out.flags.c_contiguous:
        raise ValueError("gather_hash: out must be a C-contiguous uint8[len(loc), width]")
    h64 = np.empty(n, dtype=np.uint64)
    if n:
        loc, in_swap = _rows(loc), np.ascontiguousarray(in_swap, dtype=np.bool_)
        parts = _split(n, out.nbytes)
        if len(parts) == 1:
            _gather_hash(frames, swap, loc, in_swap, out, h64)
        else:  # the kernel releases the GIL: the parts run in parallel
            jobs = [
                _pool().submit(
                    _gather_hash, frames, swap, loc[a:b], in_swap[a:b], out[a:b], h64[a:b]
                )
                for a, b in parts
            ]
            for j in jobs:
                j.result()
    return out, h64


def gather_hash_strong(
    content: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(data, h64, strong)``: a copy of ``content[rows]`` (C-contiguous
    ``uint8[:, width]``), each row's xxh3-64 (``uint64[n]``) and strong digest
    (``uint64[n, 2]``), hashed from the copy."""
    n = len(rows)
    out = np.empty((n, content.shape[1]), dtype=np.uint8)
    h64 = np.empty(n, dtype=np.uint64)
    strong = np.empty((n, 2), dtype=np.uint64)
    if n:
        _gather_hash_strong(content, _rows(rows), out, h64, strong)
    return out, h64, strong


def strong_digest(rows: np.ndarray, sel: np.ndarray) -> np.ndarray:
    """``uint64[len(sel), 2]``: the strong digest of ``rows[sel]`` (C-contiguous
    ``uint8[n, width]``)."""
    out = np.empty((len(sel), 2), dtype=np.uint64)
    if len(sel):
        _strong(np.ascontiguousarray(rows), _rows(sel), out)
    return out


def rows_equal(a: np.ndarray, ra: np.ndarray, b: np.ndarray, rb: np.ndarray) -> np.ndarray:
    """``bool[n]``: ``a[ra[i]]`` and ``b[rb[i]]`` hold the same bytes (no temporaries)."""
    out = np.empty(len(ra), dtype=np.bool_)
    if len(ra):
        _rows_equal(np.ascontiguousarray(a), _rows(ra), np.ascontiguousarray(b), _rows(rb), out)
    return out


def warm() -> None:
    """Load (or compile once) these kernels and check them against ``xxhash``."""
    import xxhash

    page = (np.arange(512) % 251).astype(np.uint8).reshape(2, 256)
    data, h, s = gather_hash_strong(page, np.array([1, 0]))
    d2, h2 = gather_hash(page, page, np.array([1]), np.array([True]))
    row = page[1].tobytes()
    want = [xxhash.xxh3_64_intdigest(row, seed=x) for x in STRONG_SEEDS]
    if (
        int(h[0]) != xxhash.xxh3_64_intdigest(row)
        or s[0].tolist() != want
        or strong_digest(page, np.array([1]))[0].tolist() != want
        or int(h2[0]) != int(h[0])
        or not np.array_equal(d2[0], page[1])
        or rows_equal(page, np.array([0, 1]), data, np.array([1, 1])).tolist() != [True, False]
    ):
        raise RuntimeError("migration kernels disagree with the xxhash package")
