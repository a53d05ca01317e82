"""Compiled draws from a ``numpy.random.Generator`` that are bit-identical to numpy's own.

Scope: the two draws every access pattern makes each step -- uniform picks from a page pool
(``pool[rng.integers(0, len(pool), size=n)]``) and fresh non-zero content keys
(:func:`workloads.content.nonzero_keys`) -- done in one compiled call instead of several
numpy calls with their Python overhead.  The kernels call the generator's *own* C
functions through the pointers numpy publishes (``BitGenerator.ctypes``), on the
generator's own state, and port numpy's bounded-integer algorithm (Lemire's rejection,
``random_bounded_uint64_fill`` in numpy's ``distributions.c``) line for line, so the stream
and the generator's state afterwards are exactly what the numpy calls would give.

Not covered: other distributions (Poisson and binomial counts stay numpy calls: they cost
well under a microsecond each).
"""

from __future__ import annotations

import ctypes

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: Compile options of every kernel here (as :data:`hosts.native.JIT`; ``workloads`` does not
#: import ``hosts``).
JIT = {"cache": True, "nogil": True}

_EMPTY_I = np.zeros(0, dtype=np.int64)
_EMPTY_K = np.zeros(0, dtype=np.uint64)


@intrinsic
def _next_u32(typingctx, fn, state):  # type: ignore[no-untyped-def]
    """Call ``uint32 fn(void *state)`` given both as integer addresses."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        vp = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.IntType(32), [vp])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(f, [builder.inttoptr(args[1], vp)])

    return types.uint32(types.uintp, types.uintp), codegen


@intrinsic
def _next_u64(typingctx, fn, state):  # type: ignore[no-untyped-def]
    """Call ``uint64 fn(void *state)`` given both as integer addresses."""

    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        vp = ir.IntType(8).as_pointer()
        fnty = ir.FunctionType(ir.IntType(64), [vp])
        f = builder.inttoptr(args[0], fnty.as_pointer())
        return builder.call(f, [builder.inttoptr(args[1], vp)])

    return types.uint64(types.uintp, types.uintp), codegen


@numba.njit(**JIT)
def _pick(f32: int, f64: int, st: int, pool: np.ndarray, out: np.ndarray) -> None:
    """``out[:] = pool[rng.integers(0, len(pool), size=len(out))]`` (numpy's int64 path)."""
    n = out.shape[0]
    if n == 0:
        return
    rng = np.uint64(pool.shape[0] - 1)
    if rng == 0:
        for i in range(n):
            out[i] = pool[0]
    elif rng < np.uint64(0xFFFFFFFF):
        # buffered_bounded_lemire_uint32: rejection on the low 32 bits of next_uint32 * excl
        excl = np.uint64(rng + np.uint64(1))
        threshold = np.uint64((np.uint64(0xFFFFFFFF) - rng) % excl)
        for i in range(n):
            m = np.uint64(_next_u32(f32, st)) * excl
            left = m & np.uint64(0xFFFFFFFF)
            if left < excl:
                while left < threshold:
                    m = np.uint64(_next_u32(f32, st)) * excl
                    left = m & np.uint64(0xFFFFFFFF)
            out[i] = np.int64(m >> np.uint64(32))
        for i in range(n):  # a separate gather: independent loads overlap (cold pools)
            out[i] = pool[out[i]]
    else:  # pragma: no cover - pools of 2**32 pages do not exist
        raise ValueError("pool too large")


@numba.njit(**JIT)
def _keys(f64: int, st: int, out: np.ndarray) -> None:
    """``out[:] = rng.integers(1, 2**64 - 1, endpoint=True, dtype=uint64)``.

    numpy's ``bounded_lemire_uint64`` with ``rng = 2**64 - 2``: ``m = x (2**64 - 1)`` has
    high word ``x - 1`` and low word ``2**64 - x`` (``x > 0``), rejected only when ``x ==
    0``; the result ``1 + (x - 1)`` is ``x`` itself.  So: raw 64-bit outputs, zeros redrawn.
    """
    for i in range(out.shape[0]):
        x = _next_u64(f64, st)
        while x == 0:
            x = _next_u64(f64, st)
        out[i] = x


@numba.njit(**JIT)
def split_draw(
    f32: int,
    f64: int,
    st: int,
    pool_r: np.ndarray,
    pool_w: np.ndarray,
    reads: np.ndarray,
    writes: np.ndarray,
    keys: np.ndarray,
) -> None:
    """Reads, then writes, then the writes' keys (the numpy call order)."""
    _pick(f32, f64, st, pool_r, reads)
    _pick(f32, f64, st, pool_w, writes)
    _keys(f64, st, keys)


_FNS: dict[type, tuple[int, int]] = {}


def rng_pointers(rng: np.random.Generator) -> tuple[int, int, int]:
    """(next_uint32, next_uint64, state) addresses of the generator's bit generator."""
    bg = rng.bit_generator
    c = bg.ctypes  # numpy caches this interface on the bit generator
    fns = _FNS.get(type(bg))
    if fns is None:  # the same C functions for every instance of one bit generator type
        fns = _FNS[type(bg)] = (
            ctypes.cast(c.next_uint32, ctypes.c_void_p).value or 0,
            ctypes.cast(c.next_uint64, ctypes.c_void_p).value or 0,
        )
    return fns[0], fns[1], c.state_address


def draw_split(
    rng: np.random.Generator, pool_r: np.ndarray, n_r: int, pool_w: np.ndarray, n_w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(reads, writes, keys)``, bit-identical to the numpy sequence

    ``reads = pool_r[rng.integers(0, len(pool_r), n_r)]`` (empty, no draw, if ``n_r <= 0``
    or the pool is empty), the same for ``writes`` from ``pool_w``, then
    ``keys = nonzero_keys(rng, len(writes))`` -- in one compiled call.
    """
    n_r = n_r if n_r > 0 and len(pool_r) else 0
    n_w = n_w if n_w > 0 and len(pool_w) else 0
    if n_r == 0 and n_w == 0:
        return _EMPTY_I, _EMPTY_I, _EMPTY_K
    reads = np.empty(n_r, dtype=np.int64)
    writes = np.empty(n_w, dtype=np.int64)
    keys = np.empty(n_w, dtype=np.uint64)
    f32, f64, st = rng_pointers(rng)
    split_draw(f32, f64, st, _pool(pool_r), _pool(pool_w), reads, writes, keys)
    return reads, writes, keys


def draw(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
    """``pool[rng.integers(0, len(pool), size=n)]`` exactly (empty, no draw, if none)."""
    if n <= 0 or len(pool) == 0:
        return _EMPTY_I
    out = np.empty(n, dtype=np.int64)
    f32, f64, st = rng_pointers(rng)
    _pick(f32, f64, st, _pool(pool), out)
    return out


def nonzero_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """``rng.integers(1, 2**64 - 1, size=n, dtype=uint64, endpoint=True)`` exactly."""
    out = np.empty(max(n, 0), dtype=np.uint64)
    if n > 0:
        f32, f64, st = rng_pointers(rng)
        _keys(f64, st, out)
    return out


def _pool(pool: np.ndarray) -> np.ndarray:
    if pool.dtype == np.int64 and pool.flags.c_contiguous:
        return pool
    return np.ascontiguousarray(pool, dtype=np.int64)
