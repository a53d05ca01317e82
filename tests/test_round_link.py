"""The round link's transport, without Ray: real Unix sockets, hosts as threads.

``cluster.round_link`` carries ``run_round`` calls to host actors waiting inside one task;
here a thread plays each host (:func:`round_link.serve`), so framing, ordering, windows,
errors, a host that goes away and a host that never answers are checked on their own.
The same link under real Ray actors is in ``test_ray_cluster.py``.
"""

from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from vmmsim.cluster import round_link


class FakeHost:
    """A host whose rounds return their arguments (and a sizeable array)."""

    def __init__(self, name: str, delay_s: float = 0.0, fail_at: int | None = None) -> None:
        self.name, self.delay_s, self.fail_at = name, delay_s, fail_at
        self.order: list[int] = []

    def run_round(self, start: int, n: int, targets, feed) -> dict:
        time.sleep(self.delay_s)
        if start == self.fail_at:
            raise ValueError(f"{self.name} cannot run tick {start}")
        self.order.append(start)
        return {"host": self.name, "start": start, "n": n, "cols": np.arange(50_000) + start}


def _serve_all(
    link: round_link.RoundLink, hosts: list[FakeHost]
) -> tuple[list[threading.Thread], dict[str, int]]:
    """Each host serving the link on a thread; ``served``: rounds each ran, once it ended."""
    served: dict[str, int] = {}

    def serve(h: FakeHost) -> None:
        served[h.name] = round_link.serve(h.run_round, link.path, h.name)

    threads = [threading.Thread(target=serve, args=(h,), daemon=True) for h in hosts]
    for t in threads:
        t.start()
    link.accept([h.name for h in hosts], 10.0, lambda: None)
    return threads, served


@pytest.mark.parametrize("window", [1, 2, 8])
def test_rounds_come_back_in_host_order_whatever_the_window(window):
    # The first host is the slowest: answers arrive out of order and are put back in order.
    hosts = [FakeHost("a", 0.05), FakeHost("b"), FakeHost("c", 0.01)]
    link = round_link.RoundLink()
    threads, served = _serve_all(link, hosts)
    names = [h.name for h in hosts]
    for start in (0, 5):
        answers = link.rounds(names, [(start, 5, None, None)] * 3, window, 10.0)
        assert [a[0] for a in answers] == ["ok"] * 3
        assert [a[1]["host"] for a in answers] == names
        assert all(a[1]["start"] == start for a in answers)
        assert all(np.array_equal(a[1]["cols"], np.arange(50_000) + start) for a in answers)
    link.close()
    for t in threads:
        t.join(5)
    assert served == {"a": 2, "b": 2, "c": 2}  # closing ends every serve loop
    assert all(h.order == [0, 5] for h in hosts)


def test_a_failing_round_is_answered_not_fatal():
    hosts = [FakeHost("a"), FakeHost("b", fail_at=5)]
    link = round_link.RoundLink()
    _serve_all(link, hosts)
    answers = link.rounds(["a", "b"], [(5, 5, None, None)] * 2, 2, 10.0)
    assert answers[0][0] == "ok"
    status, err = answers[1]
    assert status == "err" and isinstance(err, ValueError) and "tick 5" in str(err)
    # The link is still up: the next round runs on both.
    assert [a[0] for a in link.rounds(["a", "b"], [(10, 5, None, None)] * 2, 2, 10.0)] == ["ok"] * 2
    link.close()


def test_an_exception_that_cannot_be_pickled_still_comes_back():
    class Odd(Exception):
        def __reduce__(self):
            raise TypeError("no")

    def run_round(*args):
        raise Odd("lost its class")

    link = round_link.RoundLink()
    t = threading.Thread(target=round_link.serve, args=(run_round, link.path, "a"), daemon=True)
    t.start()
    link.accept(["a"], 10.0, lambda: None)
    status, err = link.rounds(["a"], [(0, 1, None, None)], 1, 10.0)[0]
    assert status == "err" and isinstance(err, RuntimeError) and "Odd: lost its class" in str(err)
    link.close()


def test_a_host_that_goes_away_is_named():
    link = round_link.RoundLink()

    def dies_after_connecting() -> None:  # as a host process that dies: its end closes
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(link.path)
        round_link.send(s, "b")
        s.close()

    ta = threading.Thread(
        target=round_link.serve, args=(FakeHost("a").run_round, link.path, "a"), daemon=True
    )
    tb = threading.Thread(target=dies_after_connecting, daemon=True)
    ta.start()
    tb.start()
    link.accept(["a", "b"], 10.0, lambda: None)
    tb.join(5)
    with pytest.raises(round_link.LinkError) as err:
        link.rounds(["a", "b"], [(0, 1, None, None)] * 2, 2, 10.0)
    assert err.value.name == "b" and "closed" in err.value.why
    link.close()


def test_a_host_that_does_not_answer_in_time_is_named():
    link = round_link.RoundLink()
    _serve_all(link, [FakeHost("a"), FakeHost("slow", delay_s=2.0)])
    t = time.perf_counter()
    with pytest.raises(round_link.LinkError) as err:
        link.rounds(["a", "slow"], [(0, 1, None, None)] * 2, 2, 0.3)
    assert time.perf_counter() - t < 1.5
    assert err.value.name == "slow" and "within 0.3 s" in err.value.why
    link.close()


def test_a_host_that_never_connects_is_reported_by_the_failure_check():
    link = round_link.RoundLink()
    calls = []

    def failed():
        calls.append(1)
        if len(calls) >= 3:
            raise RuntimeError("h-1 died before connecting")

    with pytest.raises(RuntimeError, match="died before connecting"):
        link.accept(["h-1"], 10.0, failed)
    with pytest.raises(round_link.LinkError, match="did not connect within 0.2 s"):
        link.accept(["h-1"], 0.2, lambda: None)
    link.close()


def test_the_switch_is_on_unless_set_to_zero(monkeypatch):
    monkeypatch.delenv(round_link.ENV, raising=False)
    assert round_link.enabled()
    monkeypatch.setenv(round_link.ENV, "0")
    assert not round_link.enabled()
