"""A log numbered from its first item whose oldest items can be forgotten.

Scope: :class:`TrailingLog`, what the coordinator keeps of a long run's decisions and
round digests.  Items are numbered from 0 in the order appended; :meth:`TrailingLog.drop`
forgets the oldest once nothing can read them again (they are on disk, or older than the
last checkpoint), and the numbering goes on: item ``i`` is still item ``i``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, TypeVar

T = TypeVar("T")


class TrailingLog(Generic[T]):
    """Items ``dropped ..`` of a log whose first ``dropped`` items are forgotten."""

    def __init__(self, kept: Iterable[T] = (), dropped: int = 0) -> None:
        self.kept: list[T] = list(kept)
        self.dropped = dropped

    @property
    def total(self) -> int:
        """Items appended so far, forgotten ones included."""
        return self.dropped + len(self.kept)

    def append(self, item: T) -> None:
        self.kept.append(item)

    def since(self, n: int) -> list[T]:
        """Items ``n ..`` (``n`` >= :attr:`dropped`: none of them forgotten)."""
        if n < self.dropped:
            raise IndexError(f"item {n} is forgotten (the first {self.dropped} are)")
        return self.kept[n - self.dropped :]

    def drop(self, upto: int) -> None:
        """Forget items ``.. upto - 1`` (those already forgotten stay so)."""
        k = upto - self.dropped
        if k > 0:
            del self.kept[:k]
            self.dropped += k

    def truncate(self, n: int) -> None:
        """Keep items ``.. n - 1`` only: the log as it stood after ``n`` appends (a
        recovery going back to a checkpoint)."""
        del self.kept[max(0, n - self.dropped) :]

    def tail(self, n: int) -> TrailingLog[T]:
        """A copy holding only the last ``n`` items kept, numbered as here."""
        k = max(0, len(self.kept) - n)
        return TrailingLog(self.kept[k:], self.dropped + k)
