"""Content-based page sharing as in ESX (Waldspurger 2002, fig. 3): the sharing index.

Scope: the index itself and its compiled table kernels (look-up, insert, delete, check).

The index holds, per sharing group, xxh3-64 hash -> *shared* frame and hash -> *hint*
frame (an unshared page seen earlier, ESX's hint entries).  It is one numpy
open-addressing hash table per host: ``slots`` (``int32``, -1 empty, capacity a power of
two >= 1.5 x frames, fixed since a frame is in at most one entry) holds frame numbers,
and the key of a slot is read from the per-frame records ``kind`` (NONE/HINT/SHARED),
``key`` (the hash) and ``group`` -- so an entry costs 4 bytes and a record and its entry
can never disagree.  Linear probing; deletion shifts later entries back (no tombstones).
A look-up names the kind it wants: shared entries and hint entries of one hash are
distinct, and the scan asks for a shared frame first, then a hint.

:func:`hosts.sharing.scan.scan_batch` is the ESX scan of one batch (hash, classify,
verify, update the index); :meth:`hosts.host_memory.HostMemory.scan` applies its result to
the VMs' maps.

Sharing groups: pages are only ever shared within one group (``sharing_group`` in the
config); the group is part of every key.  The zero page is nothing special: a page of
zeros hashes like any other and merges with the group's zero frame.

Not covered: scan rates and order (:mod:`hosts.host_manager`), the VMs' maps.
"""

from __future__ import annotations

import numba
import numpy as np
import xxhash
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.native import JIT, xxh3_64

NONE, HINT, SHARED = 0, 1, 2
#: A shared frame no look-up may find (KSM's ``max_page_sharing``: it has as many sharers
#: as it may take, :mod:`hosts.sharing.ksm`): a record without a table entry.  Never used
#: by the ESX scan.
FULL = 3
EMPTY = -1

#: xxh3-64 of a page's bytes, in Python (what the compiled kernels compute with ``mask``
#: all ones).
hash_page = xxhash.xxh3_64_intdigest

ALL_BITS = np.uint64(0xFFFF_FFFF_FFFF_FFFF)
MIX_G = np.uint64(0x9E37_79B9_7F4A_7C15)
MIX = np.uint64(0xBF58_476D_1CE4_E5B9)


# ---------------------------------------------------------------------------- table kernels
@numba.njit(**JIT)
def home(h: np.uint64, g: np.int32, shift: np.uint64) -> int:
    """Home slot of key (group, hash): the top bits of a multiplicative mix."""
    x = (h ^ (np.uint64(g) * MIX_G)) * MIX
    return np.int64(x >> shift)


@numba.njit(**JIT)
def lookup(slots, kind, key, grp, shift, g, h, k) -> int:
    """Frame of the entry (group ``g``, hash ``h``, kind ``k``), or -1."""
    m = slots.shape[0] - 1
    i = home(h, g, shift)
    while True:
        f = slots[i]
        if f < 0:
            return -1
        if key[f] == h and grp[f] == g and kind[f] == k:
            return f
        i = (i + 1) & m


@numba.njit(**JIT)
def insert(slots, kind, key, grp, shift, f) -> int:
    """Enter frame ``f`` under its record; return the frame it displaced (same key), or -1.

    ``f`` must not be in the table already.  The displaced frame's record is untouched:
    the caller decides what it becomes."""
    m = slots.shape[0] - 1
    h, g, k = key[f], grp[f], kind[f]
    i = home(h, g, shift)
    while True:
        o = slots[i]
        if o < 0:
            slots[i] = f
            return -1
        if key[o] == h and grp[o] == g and kind[o] == k:
            slots[i] = f
            return o
        i = (i + 1) & m


@numba.njit(**JIT)
def delete(slots, kind, key, grp, shift, f) -> bool:
    """Remove frame ``f``'s entry (found through its record); False if it has none.

    Backward-shift deletion: later entries of the probe run move up so every remaining
    entry stays reachable from its home slot without tombstones."""
    m = slots.shape[0] - 1
    i = home(key[f], grp[f], shift)
    while slots[i] != f:
        if slots[i] < 0:
            return False
        i = (i + 1) & m
    j = i
    while True:
        j = (j + 1) & m
        o = slots[j]
        if o < 0:
            break
        k = home(key[o], grp[o], shift)
        # The entry at j may move to the hole at i unless its home lies in (i, j].
        if i <= j:
            if i < k <= j:
                continue
        elif k > i or k <= j:
            continue
        slots[i] = o
        i = j
    slots[i] = EMPTY
    return True


@numba.njit(**JIT)
def forget(slots, kind, key, grp, shift, counts, frames) -> int:
    """Drop the entries of ``frames`` (records become NONE); -1, or a frame not found."""
    for x in range(frames.shape[0]):
        f = frames[x]
        k = kind[f]
        if k == NONE:
            continue
        if k != FULL and not delete(slots, kind, key, grp, shift, f):
            return f
        counts[k] -= 1
        kind[f] = NONE
    return -1


@numba.njit(**JIT)
def _find(slots, kind, key, grp, shift, g, hashes, want_hint, out) -> None:
    """``out[i]``: shared frame under ``hashes[i]``, else (if asked) hint frame, else -1."""
    for i in range(hashes.shape[0]):
        f = lookup(slots, kind, key, grp, shift, g, hashes[i], SHARED)
        if f < 0 and want_hint:
            f = lookup(slots, kind, key, grp, shift, g, hashes[i], HINT)
        out[i] = f


@numba.njit(**JIT)
def _rebuild(slots, kind, key, grp, shift, counts) -> None:
    """Refill the table from the per-frame records (a later duplicate key wins)."""
    slots[:] = EMPTY
    counts[:] = 0
    for f in range(kind.shape[0]):
        k = kind[f]
        if k == NONE:
            continue
        if k == FULL:
            counts[k] += 1
            continue
        d = insert(slots, kind, key, grp, shift, f)
        if d >= 0:
            kind[d] = NONE
            counts[k] -= 1
        counts[k] += 1


# Codes check_invariants' kernel returns (with the frame concerned).
_CHECKS = {
    1: "index slot holds an out-of-range frame",
    2: "index slot holds a frame whose record has no entry",
    3: "frame appears twice in the index",
    4: "index entry not reachable from its home slot, or a duplicate key",
    5: "index entry is shared but its frame is not",
    6: "shared frame no longer hashes to its key",
    7: "frame record has an entry kind but no index entry",
    8: "a shared frame is missing from the sharing index",
    9: "unknown entry kind in a frame record",
    10: "entry counters disagree with the table",
    11: "a full (KSM) record on a frame that is not shared, or not hashing to its key",
}


@numba.njit(**JIT)
def _check(slots, kind, key, grp, shift, counts, content, shared_flag, mask):
    """Every slot <-> every record, both ways; (code, frame), code 0 if all hold."""
    n = kind.shape[0]
    cb = content.shape[1]
    seen = np.zeros(n, dtype=np.bool_)
    got = np.zeros(4, dtype=np.int64)
    for i in range(slots.shape[0]):
        f = slots[i]
        if f < 0:
            continue
        if f >= n:
            return 1, f
        k = kind[f]
        if k != HINT and k != SHARED:
            return 2, f
        if seen[f]:
            return 3, f
        seen[f] = True
        got[k] += 1
        if lookup(slots, kind, key, grp, shift, grp[f], key[f], k) != f:
            return 4, f
        if k == SHARED:
            if not shared_flag[f]:
                return 5, f
            if (xxh3_64(content[f].ctypes.data, cb) & mask) != key[f]:
                return 6, f
    for f in range(n):
        k = kind[f]
        if k < NONE or k > FULL:
            return 9, f
        if k == FULL:
            got[FULL] += 1
            if not shared_flag[f] or (xxh3_64(content[f].ctypes.data, cb) & mask) != key[f]:
                return 11, f
            continue
        if k != NONE and not seen[f]:
            return 7, f
        if shared_flag[f] and k != SHARED:
            return 8, f
    if got[HINT] != counts[HINT] or got[SHARED] != counts[SHARED] or got[FULL] != counts[FULL]:
        return 10, -1
    return 0, -1


# ---------------------------------------------------------------------------- the index
def _capacity(n_frames: int) -> int:
    """Slots for ``n_frames`` frames: a power of two >= 1.5 x frames (load <= 2/3)."""
    need = max(2, -(-3 * n_frames // 2))
    return 1 << (need - 1).bit_length()


class SharingIndex:
    """(group, hash) -> frame, shared and hint entries, over per-frame ``kind``/``key``/``group``.

    ``hash_mask`` is and-ed into every hash the kernels compute (all ones; tests set 0 so
    every page collides and only byte compares keep contents apart).
    """

    hash_mask: np.uint64 = ALL_BITS

    def __init__(self, n_frames: int) -> None:
        self.kind = np.zeros(n_frames, dtype=np.int8)
        self.key = np.zeros(n_frames, dtype=np.uint64)
        self.group = np.zeros(n_frames, dtype=np.int32)
        cap = _capacity(n_frames)
        self.slots = np.full(cap, EMPTY, dtype=np.int32)
        self.shift = np.uint64(64 - (cap.bit_length() - 1))
        self.counts = np.zeros(4, dtype=np.int64)  # records by kind (NONE unused)

    @property
    def mask(self) -> np.uint64:
        return np.uint64(self.hash_mask)

    def table_args(self) -> tuple:
        """The arrays the table kernels take, in their order."""
        return self.slots, self.kind, self.key, self.group, self.shift

    def find_shared(self, group: int, hashes: np.ndarray) -> np.ndarray:
        """Shared frame indexed under each hash in ``group`` (int64, -1 where none)."""
        return self._find(group, hashes, want_hint=False)

    def find(self, group: int, hashes: np.ndarray) -> np.ndarray:
        """Shared frame, else hint frame, under each hash (int64, -1 where none).

        A hint frame may have changed since it was indexed: callers compare bytes."""
        return self._find(group, hashes, want_hint=True)

    def _find(self, group: int, hashes: np.ndarray, *, want_hint: bool) -> np.ndarray:
        h = np.ascontiguousarray(hashes, dtype=np.uint64)
        out = np.empty(len(h), dtype=np.int64)
        if len(h):
            _find(*self.table_args(), np.int32(group), h, want_hint, out)
        return out

    def forget(self, frames: np.ndarray) -> None:
        """Frames just freed: drop their entries."""
        if len(frames) == 0:
            return
        f = np.ascontiguousarray(frames, dtype=np.int64)
        bad = forget(*self.table_args(), self.counts, f)
        if bad >= 0:
            raise InvariantError(f"frame {bad}: record has an entry the index does not hold")

    def rebuild(self) -> None:
        """Refill the table from ``kind``/``key``/``group`` (after a restore)."""
        n = len(self.kind)
        if len(self.slots) != _capacity(n):
            cap = _capacity(n)
            self.slots = np.full(cap, EMPTY, dtype=np.int32)
            self.shift = np.uint64(64 - (cap.bit_length() - 1))
        _rebuild(*self.table_args(), self.counts)

    def n_shared_frames(self) -> int:
        """Shared frames in the index, full ones (KSM) included (a counter: O(1))."""
        return int(self.counts[SHARED] + self.counts[FULL])

    def n_hints(self) -> int:
        """Hint entries in the index (a counter: O(1))."""
        return int(self.counts[HINT])

    def nbytes(self) -> int:
        """Bytes the index takes (table plus per-frame records)."""
        return self.slots.nbytes + self.kind.nbytes + self.key.nbytes + self.group.nbytes

    def check_invariants(self, content: np.ndarray, shared_flag: np.ndarray) -> None:
        """Every entry <-> its frame's record, both ways; shared frames hash to their key.

        Checks each slot (a frame with an entry kind, reachable from its home slot, the
        only one under its key, shared entries on shared frames that still hash to their
        key), then each record (an entry kind implies a slot; a shared frame has a shared
        entry), then the counters."""
        code, f = _check(
            *self.table_args(), self.counts, content, shared_flag, np.uint64(self.mask)
        )
        if code:
            raise InvariantError(f"{_CHECKS[int(code)]} (frame {int(f)})")
