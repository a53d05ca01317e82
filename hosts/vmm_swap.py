"""The VMM's swap store: real page bytes in numbered slots, slots reused.

Scope: storage only.  Victim choice (random, as ESX does) is the host manager's; the
store raises :class:`hosts.errors.SwapFull` rather than ever dropping a page.
"""

from __future__ import annotations

import numpy as np
from vmmsim.hosts.errors import InvariantError, SwapFull


class SwapStore:
    """``n_slots`` pages of ``content_bytes`` each, with a free stack of slots."""

    def __init__(self, n_slots: int, content_bytes: int) -> None:
        self.n_slots = n_slots
        self.content = np.zeros((n_slots, content_bytes), dtype=np.uint8)
        self.used = np.zeros(n_slots, dtype=bool)
        self.free_stack = np.arange(n_slots - 1, -1, -1, dtype=np.int32)
        self.n_free = n_slots

    @property
    def n_used(self) -> int:
        return self.n_slots - self.n_free

    def put(self, data: np.ndarray) -> np.ndarray:
        """Store pages (``uint8[n, content_bytes]``); return their slots."""
        n = len(data)
        if n > self.n_free:
            raise SwapFull(f"swap full: need {n} slots, {self.n_free} free of {self.n_slots}")
        slots = self.free_stack[self.n_free - n : self.n_free][::-1].copy()
        self.n_free -= n
        self.used[slots] = True
        self.content[slots] = data
        return slots

    def take(self, slots: np.ndarray) -> np.ndarray:
        """Read pages back and free their slots."""
        data = self.content[slots]
        self.free(slots)
        return data

    def free(self, slots: np.ndarray) -> None:
        n = len(slots)
        if n == 0:
            return
        if not self.used[slots].all():
            raise InvariantError("freeing a swap slot that is not in use")
        self.used[slots] = False
        self.free_stack[self.n_free : self.n_free + n] = np.sort(slots)[::-1]
        self.n_free += n

    def check_invariants(self, referenced: np.ndarray) -> None:
        """``referenced`` = slots the VMs' maps point at; each must be used, once."""
        if len(np.unique(referenced)) != len(referenced):
            raise InvariantError("a swap slot is referenced twice")
        mask = np.zeros(self.n_slots, dtype=bool)
        mask[referenced] = True
        if not np.array_equal(mask, self.used):
            raise InvariantError("swap slots in use != slots referenced by maps")
        if self.n_used != int(self.used.sum()):
            raise InvariantError("swap free count is off")
