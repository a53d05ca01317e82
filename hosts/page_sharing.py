"""Content-based page sharing as in ESX (Waldspurger 2002, fig. 3): the sharing index.

Scope: the index itself -- per sharing group, xxh3-64 hash -> shared frame, and hash ->
*hint* frame (an unshared page seen earlier, ESX's hint entries) -- and the per-frame
record of what the index holds for each frame, so freed frames leave the index at once.
The scan step that uses it (hash, look up, byte compare, remap) is
:meth:`hosts.host_memory.HostMemory.scan`, since it needs the VMs' maps.

Sharing groups: pages are only ever shared within one group (``sharing_group`` in the
config); each group has its own dictionaries.  The zero page is nothing special: a page of
zeros hashes like any other and merges with the group's zero frame.

Not covered: scan rates and order (:mod:`hosts.host_manager`).
"""

from __future__ import annotations

import numpy as np
import xxhash

from hosts.errors import InvariantError

NONE, HINT, SHARED = 0, 1, 2

hash_page = xxhash.xxh3_64_intdigest


class SharingIndex:
    """hash -> frame maps per sharing group, plus per-frame ``kind``/``key``/``group``."""

    def __init__(self, n_frames: int) -> None:
        self.shared: dict[int, dict[int, int]] = {}
        self.hints: dict[int, dict[int, int]] = {}
        self.kind = np.zeros(n_frames, dtype=np.int8)
        self.key = np.zeros(n_frames, dtype=np.uint64)
        self.group = np.zeros(n_frames, dtype=np.int32)

    def tables(self, group: int) -> tuple[dict[int, int], dict[int, int]]:
        if group not in self.shared:
            self.shared[group] = {}
            self.hints[group] = {}
        return self.shared[group], self.hints[group]

    def find_shared(self, group: int, hashes: np.ndarray) -> np.ndarray:
        """Shared frame indexed under each hash in ``group`` (int64, -1 where none)."""
        shared, _ = self.tables(group)
        return np.array([shared.get(h, -1) for h in hashes.tolist()], dtype=np.int64)

    def find(self, group: int, hashes: np.ndarray) -> np.ndarray:
        """Shared frame, else hint frame, under each hash (int64, -1 where none).

        A hint frame may have changed since it was indexed: callers compare bytes."""
        shared, hints = self.tables(group)
        return np.array([shared.get(h, hints.get(h, -1)) for h in hashes.tolist()], dtype=np.int64)

    def drop_entry(self, frame: int) -> None:
        """Remove whatever the index holds for ``frame``."""
        kind = self.kind[frame]
        if kind == NONE:
            return
        shared, hints = self.tables(int(self.group[frame]))
        table = shared if kind == SHARED else hints
        h = int(self.key[frame])
        if table.get(h) == frame:
            del table[h]
        self.kind[frame] = NONE

    def forget(self, frames: np.ndarray) -> None:
        """Frames just freed: drop their entries (a short loop over indexed frames only)."""
        if len(frames) == 0:
            return
        for f in frames[self.kind[frames] != NONE].tolist():
            self.drop_entry(f)

    def n_shared_frames(self) -> int:
        return sum(len(t) for t in self.shared.values())

    def check_invariants(self, content: np.ndarray, shared_flag: np.ndarray) -> None:
        """Every shared entry points at a live shared frame whose bytes hash to its key."""
        seen = np.zeros(len(self.kind), dtype=bool)
        for group, table in self.shared.items():
            for h, f in table.items():
                if not shared_flag[f]:
                    raise InvariantError(f"index entry {h:#x} -> frame {f} is not shared")
                if self.kind[f] != SHARED or int(self.key[f]) != h or self.group[f] != group:
                    raise InvariantError(f"frame {f}: per-frame record disagrees with index")
                if hash_page(content[f]) != h:
                    raise InvariantError(f"shared frame {f} no longer hashes to its key")
                seen[f] = True
        if not np.array_equal(seen, shared_flag):
            raise InvariantError("a shared frame is missing from the sharing index")
        for group, table in self.hints.items():
            for h, f in table.items():
                if self.kind[f] != HINT or int(self.key[f]) != h or self.group[f] != group:
                    raise InvariantError(f"hint {h:#x} -> frame {f}: record disagrees")
