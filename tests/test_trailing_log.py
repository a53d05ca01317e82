"""``cluster.trailing_log.TrailingLog``: numbering survives forgetting, and what is
forgotten cannot be read back by mistake."""

from __future__ import annotations

import pytest
from vmmsim.cluster.trailing_log import TrailingLog


def test_items_keep_their_numbers_when_the_oldest_are_forgotten():
    log: TrailingLog[str] = TrailingLog()
    for c in "abcdef":
        log.append(c)
    log.drop(2)
    assert (log.total, log.dropped, log.kept) == (6, 2, list("cdef"))
    assert log.since(4) == ["e", "f"] and log.since(6) == []
    log.drop(1)  # already forgotten: no change
    assert log.dropped == 2
    with pytest.raises(IndexError, match="item 1 is forgotten"):
        log.since(1)
    last = log.tail(1)
    assert (last.kept, last.dropped, last.total) == (["f"], 5, 6)
    assert log.kept == list("cdef")  # (a copy)


def test_truncate_goes_back_to_an_earlier_length():
    log = TrailingLog(list("xyz"), dropped=3)  # items 3, 4, 5
    log.truncate(4)
    assert (log.kept, log.total) == (["x"], 4)
    log.truncate(2)  # before the first kept item: none left, numbering as before
    assert (log.kept, log.total, log.dropped) == ([], 3, 3)
    log.append("w")
    assert log.since(3) == ["w"]
