"""Compiled kernels' foundation: numba, and xxh3 from the ``xxhash`` package's own C library.

Scope: the one place that binds compiled code to xxh3.  The ``xxhash`` Python package is a
C extension that exports the reference library's symbols (``XXH3_64bits`` ...); we load
that very shared object into LLVM's symbol table and declare the functions as numba
externals, so a kernel hashes a page with the *same* C code ``xxhash.xxh3_64_intdigest``
runs -- no re-implementation, no per-page Python call.  Kernels elsewhere in ``hosts/`` use
:data:`xxh3_64`, :data:`xxh3_64_seeded` and the C library's :data:`memcmp` and
:data:`memcpy`, view per-VM arrays from address tables (:func:`view_of`), and compile with
:data:`JIT` (cached on disk, so each process loads machine code instead of compiling).

Not covered: the kernels themselves (they live beside the state they change).
"""

from __future__ import annotations

import llvmlite.binding as _llvm
import numba
import numpy as np
import xxhash
import xxhash._xxhash as _xxhash_c
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

_llvm.load_library_permanently(_xxhash_c.__file__)

#: ``uint64 XXH3_64bits(const void *data, size_t len)``
xxh3_64 = types.ExternalFunction("XXH3_64bits", types.uint64(types.voidptr, types.uintp))
#: ``uint64 XXH3_64bits_withSeed(const void *data, size_t len, uint64 seed)``
xxh3_64_seeded = types.ExternalFunction(
    "XXH3_64bits_withSeed", types.uint64(types.voidptr, types.uintp, types.uint64)
)

#: ``int memcmp(const void *a, const void *b, size_t n)`` from the C library (already in the
#: process): the byte-exact compare of two pages that decides whether they may share.
memcmp = types.ExternalFunction("memcmp", types.intc(types.voidptr, types.voidptr, types.uintp))
#: ``void *memcpy(void *dst, const void *src, size_t n)`` from the C library: a page copy
#: (numba's own slice copy of ``uint8`` rows runs a byte loop, several times slower).
memcpy = types.ExternalFunction("memcpy", types.voidptr(types.voidptr, types.voidptr, types.uintp))

#: Options every kernel compiles with: no Python objects, cached machine code, GIL released.
JIT = {"cache": True, "nogil": True}


@intrinsic
def voidptr(typingctx, addr):  # type: ignore[no-untyped-def]
    """An integer address as ``void *`` (for ``numba.carray``)."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return builder.inttoptr(args[0], ir.IntType(8).as_pointer())

    return types.voidptr(types.int64), codegen


@numba.njit(**JIT)
def view_of(a: np.ndarray, n: np.ndarray, i: int, dtype):  # type: ignore[no-untyped-def]  # noqa: ANN001, ANN202
    """Array ``i`` of one row of an address table (address ``a[i]``, ``n[i]`` items) as a
    numpy view: how kernels take a variable number of per-VM arrays (the caller keeps
    them alive)."""
    return numba.carray(voidptr(a[i]), (n[i],), dtype)


@numba.njit(**JIT)
def hash_rows(content: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = xxh3_64(content[rows[i]])`` for a C-contiguous ``uint8[n, width]``."""
    width = content.shape[1]
    for i in range(rows.shape[0]):
        out[i] = xxh3_64(content[rows[i]].ctypes.data, width)


def hash_pages(content: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """xxh3-64 of the given rows of a frame table, as ``uint64[len(rows)]``."""
    out = np.empty(len(rows), dtype=np.uint64)
    if len(rows):
        hash_rows(content, np.ascontiguousarray(rows, dtype=np.int64), out)
    return out


def warm() -> None:
    """Load (or compile once) the kernels every host uses, before forking many workers.

    Called by the driver before it starts host actors: they then load machine code from
    the on-disk cache instead of each compiling the same kernels at once.
    """
    probe = np.zeros((1, 8), dtype=np.uint8)
    got = hash_pages(probe, np.zeros(1, dtype=np.int64))
    if int(got[0]) != xxhash.xxh3_64_intdigest(probe[0].tobytes()):
        raise RuntimeError("compiled xxh3 disagrees with the xxhash package")
