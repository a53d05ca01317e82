"""Content keys: 64-bit names that regenerate the exact bytes of a page.

Scope: turning keys into bytes (vectorised, platform independent) and deriving keys for
image pages.  Key 0 is the zero page.  Keys are mixed with SplitMix64, so every
(key, word) pair gives an independent-looking 64-bit word; the bytes are little-endian on
every platform, so a key means the same bytes on every machine of a Ray cluster.

Not covered: where pages live or how they are shared (``hosts/``).
"""

from __future__ import annotations

import hashlib

import numpy as np
from vmmsim.workloads import patterns_kernel

ZERO_KEY = 0

#: SplitMix64's constants: what a content key means (the compiled twin in
#: :mod:`hosts.vm_kernel` uses these same values).
GOLDEN = np.uint64(0x9E3779B97F4A7C15)
MIX_M1 = np.uint64(0xBF58476D1CE4E5B9)
MIX_M2 = np.uint64(0x94D049BB133111EB)


def mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser over a uint64 array (wrapping arithmetic, no copies kept)."""
    # Integer arrays wrap silently (no errstate needed: it costs more than the math on
    # the small arrays of one tick); atleast_1d keeps 0-d input an array.
    x = np.atleast_1d(np.asarray(x, dtype=np.uint64)).copy()
    x ^= x >> np.uint64(30)
    x *= MIX_M1
    x ^= x >> np.uint64(27)
    x *= MIX_M2
    x ^= x >> np.uint64(31)
    return x


def stable_hash64(*parts: object) -> int:
    """A 64-bit integer from strings/ints that is the same in every process and run.

    (Python's ``hash()`` of a str is salted per process, so it must never be used for
    anything that reaches results.)
    """
    h = hashlib.blake2b(digest_size=8)
    for p in parts:
        h.update(repr(p).encode())
        h.update(b"\x00")
    return int.from_bytes(h.digest(), "little")


def page_bytes(keys: np.ndarray, content_bytes: int) -> np.ndarray:
    """The bytes of pages named by ``keys``: ``uint8[len(keys), content_bytes]``.

    Word ``i`` of page ``k`` is ``mix64(k) XOR T[i]`` for a fixed table ``T`` of mixed
    words: one XOR per 8 bytes (memory-bandwidth speed), every page looks random, and two
    different keys differ in every word (so pages never collide by construction).
    """
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    n_words = -(-content_bytes // 8)
    table = word_table(n_words)
    out = (mix64(keys)[:, None] ^ table[None, :]).astype("<u8", copy=False)
    out = out.view(np.uint8).reshape(len(keys), n_words * 8)
    if n_words * 8 != content_bytes:
        out = np.ascontiguousarray(out[:, :content_bytes])
    out[keys == ZERO_KEY] = 0
    return out


_TABLES: dict[int, np.ndarray] = {}


def word_table(n_words: int) -> np.ndarray:
    """The fixed words ``T`` of :func:`page_bytes` (``uint64[n_words]``, do not modify)."""
    t = _TABLES.get(n_words)
    if t is None:
        t = mix64(np.arange(1, n_words + 1, dtype=np.uint64) * GOLDEN)
        _TABLES[n_words] = t
    return t


def nonzero_keys(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` fresh random content keys, never the zero key.

    The stream of ``rng.integers(1, 2**64 - 1, size=n, dtype=uint64, endpoint=True)``,
    drawn by a compiled kernel (:mod:`workloads.patterns_kernel`).
    """
    return patterns_kernel.nonzero_keys(rng, n)


def derived_keys(base: int, index: np.ndarray) -> np.ndarray:
    """Keys ``f(base, i)`` for an index array: deterministic, never zero."""
    index = np.atleast_1d(np.asarray(index, dtype=np.uint64))
    k = mix64(index * GOLDEN ^ np.uint64(base & 0xFFFFFFFFFFFFFFFF))
    k[k == 0] = 1
    return k
