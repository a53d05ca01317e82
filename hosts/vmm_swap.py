"""The VMM's swap store: real page bytes in numbered slots, slots reused, in three tiers.

Scope: storage only.  Victim choice (random, as ESX does) is the host manager's; the
store raises :class:`hosts.errors.SwapFull` rather than ever dropping a page.

Tiers, by slot number (one ``content`` array, so every reader -- the compiled kernels,
migration, digests -- reads a swapped page the same way, ``content[slot]``):

* ``[0, C)`` the **host swap cache** (vSphere 5+ "swap to host cache": swap space on a
  host-local SSD, used before the VMs' regular swap files; ``policy.swap_cache_mb``);
* ``[C, C + D)`` the regular swap (disk);
* ``[C + D, C + D + Z)`` the **compression cache**'s slots (ESX 4.1+ memory compression,
  KVM's zswap): pages kept in host memory compressed (:mod:`hosts.compression`); this
  tier grows on demand, its memory is charged in frames by :class:`HostMemory`.

Each tier has its own free stack, kept inside one ``free_stack`` array: tier ``t``'s free
slots are ``free_stack[base_t : base_t + n_free_t]`` (top = last).  :meth:`put` takes the
swap cache's slots first and disk slots only when no cache slot is free (strictly: the
tiers are separate stacks, so the order of frees cannot hide a free cache slot).  The
compiled kernels free slots with :func:`hosts.vm_kernel.push_slots`, which pushes each
slot onto its own tier's stack exactly as :meth:`free` does.

``tier`` (int64[8]) holds the bounds and free counts the kernels need (``T_*`` below).
With no cache and no compression (the defaults) the store is exactly the single stack of
before: tier 1 from slot 0, slots used lowest first.
"""

from __future__ import annotations

import numpy as np
from vmmsim.hosts.errors import InvariantError, SwapFull

#: ``tier`` entries: end of the swap cache (C), end of the disk tier (C + D: the
#: compression tier's base), free slots of tiers 0 / 1 / 2, the compression tier's free
#: count when the host last settled its cache frames (:meth:`HostMemory.settle_zip`), the
#: compression tier's size, and the number of pages ever compressed (their ages).
T_B1, T_B2, T_NF0, T_NF1, T_NF2, T_SEEN2, T_ZCAP, T_SEQ = range(8)


class SwapStore:
    """``n_slots`` regular swap slots (plus ``cache_slots`` swap-cache slots in front) of
    ``content_bytes`` each, with one free stack per tier."""

    def __init__(self, n_slots: int, content_bytes: int, cache_slots: int = 0) -> None:
        c, d = int(cache_slots), int(n_slots)
        self.n_slots = c + d  # slots put() may use (cache + disk)
        self.content = np.zeros((c + d, content_bytes), dtype=np.uint8)
        self.used = np.zeros(c + d, dtype=bool)
        self.free_stack = np.empty(c + d, dtype=np.int32)
        self.free_stack[:c] = np.arange(c - 1, -1, -1, dtype=np.int32)
        self.free_stack[c:] = np.arange(c + d - 1, c - 1, -1, dtype=np.int32)
        self.tier = np.zeros(8, dtype=np.int64)
        self.tier[[T_B1, T_B2, T_NF0, T_NF1]] = c, c + d, c, d
        # Per compression-tier slot (index: slot - base): the page's compressed size in
        # quarter pages (1 or 2), the VM (host-local id) and guest page it belongs to, and
        # when it was compressed (a sequence number: the oldest are written back first).
        self.zip_units = np.zeros(0, dtype=np.int8)
        self.zip_owner = np.zeros(0, dtype=np.int32)
        self.zip_ppn = np.zeros(0, dtype=np.int64)
        self.zip_seq = np.zeros(0, dtype=np.int64)

    # ------------------------------------------------------------------ counts
    @property
    def n_free(self) -> int:
        """Free slots :meth:`put` may use (swap cache + disk)."""
        t = self.tier
        return int(t[T_NF0] + t[T_NF1])

    @n_free.setter
    def n_free(self, value: int) -> None:
        if value != self.n_free:  # (the kernels update ``tier`` in place)
            raise InvariantError(f"swap free count {value} != tiers' {self.n_free}")

    @property
    def n_used(self) -> int:
        return self.n_slots - self.n_free

    @property
    def cache_slots(self) -> int:
        return int(self.tier[T_B1])

    @property
    def n_cache_used(self) -> int:
        return int(self.tier[T_B1] - self.tier[T_NF0])

    @property
    def zip_base(self) -> int:
        return int(self.tier[T_B2])

    @property
    def n_zip_used(self) -> int:
        t = self.tier
        return int(t[T_ZCAP] - t[T_NF2])

    # ------------------------------------------------------------------ slots
    def put(self, data: np.ndarray) -> np.ndarray:
        """Store pages (``uint8[n, content_bytes]``) in the swap cache first, then on
        disk; return their slots."""
        n = len(data)
        if n > self.n_free:
            raise SwapFull(f"swap full: need {n} slots, {self.n_free} free of {self.n_slots}")
        t = self.tier
        a = min(n, int(t[T_NF0]))
        if a:
            nf0 = int(t[T_NF0])
            fast = self.free_stack[nf0 - a : nf0][::-1].copy()
            t[T_NF0] = nf0 - a
        top = int(t[T_B1] + t[T_NF1])
        slots = self.free_stack[top - (n - a) : top][::-1].copy()
        t[T_NF1] -= n - a
        if a:
            slots = np.concatenate([fast, slots]) if n > a else fast
        self.used[slots] = True
        self.content[slots] = data
        return slots

    def put_zip(
        self, data: np.ndarray, units: np.ndarray, owner: int, ppns: np.ndarray
    ) -> np.ndarray:
        """Store the pages ``ppns`` of VM ``owner`` in the compression tier (growing it
        if needed); return their slots."""
        n = len(data)
        t = self.tier
        if n > t[T_NF2]:
            self._grow_zip(n - int(t[T_NF2]))
        base, nf2 = int(t[T_B2]), int(t[T_NF2])
        slots = self.free_stack[base + nf2 - n : base + nf2][::-1].copy()
        t[T_NF2] = nf2 - n
        t[T_SEEN2] = t[T_NF2]
        self.used[slots] = True
        self.content[slots] = data
        z = slots - base
        self.zip_units[z] = units
        self.zip_owner[z] = owner
        self.zip_ppn[z] = ppns
        self.zip_seq[z] = np.arange(t[T_SEQ], t[T_SEQ] + n)
        t[T_SEQ] += n
        return slots

    def _grow_zip(self, need: int) -> None:
        """Add at least ``need`` free compression slots (capacity doubles)."""
        t = self.tier
        base, cap, nf2 = int(t[T_B2]), int(t[T_ZCAP]), int(t[T_NF2])
        new_cap = max(cap + need, 2 * cap, 64)
        add = new_cap - cap
        total = base + new_cap
        content = np.zeros((total, self.content.shape[1]), dtype=np.uint8)
        content[: base + cap] = self.content
        used = np.zeros(total, dtype=bool)
        used[: base + cap] = self.used
        stack = np.empty(total, dtype=np.int32)
        stack[: base + cap] = self.free_stack
        # New slots under the free ones, lowest on top of them (so the old free stay on top).
        fresh = np.arange(base + new_cap - 1, base + cap - 1, -1, dtype=np.int32)
        old_free = stack[base : base + nf2].copy()
        stack[base : base + add] = fresh
        stack[base + add : base + add + nf2] = old_free
        self.content, self.used, self.free_stack = content, used, stack
        self.zip_units = np.concatenate([self.zip_units, np.zeros(add, dtype=np.int8)])
        self.zip_owner = np.concatenate([self.zip_owner, np.full(add, -1, dtype=np.int32)])
        self.zip_ppn = np.concatenate([self.zip_ppn, np.full(add, -1, dtype=np.int64)])
        self.zip_seq = np.concatenate([self.zip_seq, np.zeros(add, dtype=np.int64)])
        t[T_ZCAP] = new_cap
        t[T_NF2] = nf2 + add
        t[T_SEEN2] = t[T_SEEN2] + add

    def take(self, slots: np.ndarray) -> np.ndarray:
        """Read pages back and free their slots."""
        data = self.content[slots]
        self.free(slots)
        return data

    def free(self, slots: np.ndarray) -> None:
        """Free slots, each onto its tier's stack (descending: lowest on top)."""
        n = len(slots)
        if n == 0:
            return
        if not self.used[slots].all():
            raise InvariantError("freeing a swap slot that is not in use")
        self.used[slots] = False
        t = self.tier
        s = np.sort(slots)[::-1]
        if t[T_B1] == 0 and t[T_ZCAP] == 0:  # one tier (the default)
            nf = int(t[T_NF1])
            self.free_stack[nf : nf + n] = s
            t[T_NF1] = nf + n
            return
        b1, b2 = int(t[T_B1]), int(t[T_B2])
        for k, part in ((0, s[s < b1]), (1, s[(s >= b1) & (s < b2)]), (2, s[s >= b2])):
            if len(part):
                base = (0, b1, b2)[k]
                nf = int(t[T_NF0 + k])
                self.free_stack[base + nf : base + nf + len(part)] = part
                t[T_NF0 + k] = nf + len(part)

    def tier_of(self, slots: np.ndarray) -> np.ndarray:
        """Tier (0 cache, 1 disk, 2 compression) of each slot."""
        t = self.tier
        return (slots >= t[T_B1]).astype(np.int8) + (slots >= t[T_B2]).astype(np.int8)

    def check_invariants(self, referenced: np.ndarray) -> None:
        """``referenced`` = slots the VMs' maps point at; each must be used, once; each
        tier's free stack holds exactly that tier's unused slots."""
        if len(np.unique(referenced)) != len(referenced):
            raise InvariantError("a swap slot is referenced twice")
        mask = np.zeros(len(self.used), dtype=bool)
        mask[referenced] = True
        if not np.array_equal(mask, self.used):
            raise InvariantError("swap slots in use != slots referenced by maps")
        t = self.tier
        b1, b2, zc = int(t[T_B1]), int(t[T_B2]), int(t[T_ZCAP])
        if len(self.used) != b2 + zc or self.n_slots != b2:
            raise InvariantError("swap tiers do not add up to the store's slots")
        for k, (lo, hi) in enumerate(((0, b1), (b1, b2), (b2, b2 + zc))):
            nf = int(t[T_NF0 + k])
            if nf != hi - lo - int(self.used[lo:hi].sum()):
                raise InvariantError(f"swap tier {k}: free count is off")
            free = np.sort(self.free_stack[lo : lo + nf])
            if not np.array_equal(free, np.flatnonzero(~self.used[lo:hi]) + lo):
                raise InvariantError(f"swap tier {k}: free stack != its unused slots")
