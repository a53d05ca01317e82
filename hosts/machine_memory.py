"""Machine memory: frame contents, reference counts and the free stack of one host.

Scope: allocating and releasing frames and keeping their bookkeeping consistent.  A frame
is *used* when its refcount is > 0; a private frame has refcount 1 and remembers its owner
(vm id, guest page) so page sharing can turn a hint into a shared frame; a shared frame may
have any refcount >= 1 and is marked ``shared``.  Contents are ``uint8[n_frames,
content_bytes]``; accounting is always in whole pages, whatever ``content_bytes`` is.

Not covered: which guest page maps which frame (:mod:`hosts.phys_map`), the sharing index
(:mod:`hosts.sharing.index`).
"""

from __future__ import annotations

import numpy as np
from vmmsim.hosts.errors import InvariantError, OutOfFrames

NO_OWNER = -1


class MachineMemory:
    """Frames of one host.  ``np.zeros`` backs contents, so untouched frames cost no RSS."""

    def __init__(self, n_frames: int, content_bytes: int) -> None:
        if n_frames <= 0:
            raise ValueError(f"n_frames must be > 0 (got {n_frames})")
        self.n_frames = n_frames
        self.content_bytes = content_bytes
        self.content = np.zeros((n_frames, content_bytes), dtype=np.uint8)
        self.refcount = np.zeros(n_frames, dtype=np.int32)
        self.shared = np.zeros(n_frames, dtype=bool)
        self.owner_vm = np.full(n_frames, NO_OWNER, dtype=np.int32)
        self.owner_ppn = np.full(n_frames, NO_OWNER, dtype=np.int32)
        # Free stack: free_stack[:n_free] are free; popping from the end gives low frame
        # numbers first (the stack starts reversed), which keeps small runs readable.
        self.free_stack = np.arange(n_frames - 1, -1, -1, dtype=np.int32)
        self.n_free = n_frames

    @property
    def n_used(self) -> int:
        return self.n_frames - self.n_free

    def alloc(self, n: int, *, zero: bool = True) -> np.ndarray:
        """Pop ``n`` free frames (refcount 1, no owner yet); zero their contents if asked."""
        if n > self.n_free:
            raise OutOfFrames(f"need {n} frames, {self.n_free} free of {self.n_frames}")
        frames = self.free_stack[self.n_free - n : self.n_free][::-1].copy()
        self.n_free -= n
        self.refcount[frames] = 1
        if zero and n:
            self.content[frames] = 0
        return frames

    def decref(self, frames: np.ndarray) -> np.ndarray:
        """Drop one reference per entry (duplicates allowed); return the frames now free."""
        if len(frames) == 0:
            return frames.astype(np.int32)
        frames = np.asarray(frames, dtype=np.int64)
        np.subtract.at(self.refcount, frames, np.int32(1))  # same dtype: fast path
        s = np.sort(frames)
        uniq = s[np.concatenate(([True], s[1:] != s[:-1]))]
        if (self.refcount[uniq] < 0).any():
            raise InvariantError("frame refcount went negative")
        freed = uniq[self.refcount[uniq] == 0].astype(np.int32)
        self._push_free(freed)
        return freed

    def _push_free(self, frames: np.ndarray) -> None:
        n = len(frames)
        if n == 0:
            return
        self.shared[frames] = False
        self.owner_vm[frames] = NO_OWNER
        self.owner_ppn[frames] = NO_OWNER
        # Push in descending order so the next pops return them ascending.
        self.free_stack[self.n_free : self.n_free + n] = np.sort(frames)[::-1]
        self.n_free += n

    def check_invariants(self, mapped_refs: np.ndarray) -> None:
        """``mapped_refs[f]`` = number of references the maps (and overheads) hold to ``f``."""
        if not np.array_equal(mapped_refs, self.refcount):
            bad = np.flatnonzero(mapped_refs != self.refcount)[:5]
            raise InvariantError(
                f"refcount != mappings for frames {bad.tolist()}: "
                f"refcount {self.refcount[bad].tolist()} mappings {mapped_refs[bad].tolist()}"
            )
        free = self.free_stack[: self.n_free]
        if len(np.unique(free)) != self.n_free:
            raise InvariantError("free stack holds a frame twice")
        if (self.refcount[free] != 0).any():
            raise InvariantError("a frame on the free stack has references")
        if int((self.refcount == 0).sum()) != self.n_free:
            raise InvariantError("free + used != total frames")
        if (self.shared & (self.refcount == 0)).any():
            raise InvariantError("a free frame is marked shared")
