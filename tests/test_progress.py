"""The progress bar (cluster/progress.py): a recent rate, start-up shown apart, one final
line.  A fake clock drives it: no sleeping, no terminal."""

from __future__ import annotations

import io
import re
import tomllib

import pytest
from vmmsim.cluster.progress import Progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def bar(total: int = 300) -> tuple[Progress, Clock, io.StringIO]:
    clock, out = Clock(), io.StringIO()
    return Progress(total, 1.0, enabled=True, stream=out, clock=clock), clock, out


def lines(out: io.StringIO) -> list[str]:
    """What the terminal shows, one entry per redraw (``\\r``) or line."""
    return [s.rstrip() for s in re.split(r"[\r\n]", out.getvalue()) if s.strip()]


def test_eta_follows_the_recent_rate_not_the_average_since_start():
    p, clock, out = bar()
    clock.t = 50.0  # a slow start-up: nothing for 50 s
    p.started("Ray start-up")
    tick = 0
    for _ in range(30):  # then 2 ticks/s for 30 s
        clock.t += 1.0
        tick += 2
        p.update(tick)
    last = lines(out)[-1]
    assert "2.0 ticks/s" in last, last
    # 240 ticks left at 2 ticks/s; the average since the start (60/80 s) would say 320 s.
    assert "ETA 120 s" in last, last
    for _ in range(20):  # it speeds up to 10 ticks/s: the ETA follows within the window
        clock.t += 1.0
        tick += 10
        p.update(tick)
    last = lines(out)[-1]
    assert "10.0 ticks/s" in last and f"ETA {(300 - tick) // 10} s" in last, last


def test_startup_is_shown_apart_and_left_out_of_the_rate():
    p, clock, out = bar(100)
    clock.t = 7.5
    p.started("Ray start-up")
    for k in range(1, 11):
        clock.t += 0.5
        p.update(k * 5)
    last = lines(out)[-1]
    assert "(Ray start-up 7.5 s)" in last and "10.0 ticks/s" in last, last


def test_the_final_line_is_written_once():
    p, clock, out = bar(100)
    p.started()
    for k in range(1, 101):  # the runner reports the last tick, then closes
        clock.t += 0.5
        p.update(k)
    p.close()
    p.close()
    shown = lines(out)
    assert sum("100/100 s simulated" in s for s in shown) == 1, shown
    assert shown[-1].startswith("[" + "#" * 20 + "] 100/100 s simulated  in 50.0 s")
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1


def test_a_shorter_line_clears_the_longer_one_before_it():
    p, clock, out = bar(1000)
    p.started()
    clock.t = 1.0
    p.update(1)
    clock.t = 2.0
    p.update(500)  # "ETA ?" -> a number: line lengths differ
    clock.t = 3.0
    p.update(999)
    draws = out.getvalue().split("\r")[1:]
    for before, after in zip(draws, draws[1:], strict=False):
        assert len(after) >= len(before.rstrip()), (before, after)


def test_quiet_writes_nothing():
    clock, out = Clock(), io.StringIO()
    p = Progress(10, 1.0, enabled=False, stream=out, clock=clock)
    p.started("Ray start-up")
    p.update(5)
    p.close()
    assert out.getvalue() == ""


def test_a_failed_run_ends_the_bar_line_once():
    p, clock, out = bar(100)
    p.started()
    clock.t = 1.0
    p.update(10)
    p.abandon()
    p.abandon()
    p.close()  # nothing more after a failure
    assert out.getvalue().endswith("\n") and out.getvalue().count("\n") == 1
    assert "100/100" not in out.getvalue()


@pytest.mark.ray
def test_ray_run_shows_its_startup_apart(ray_session, tmp_path, monkeypatch):
    """The runner tells the bar when ticks start: on Ray, labelled "Ray start-up"."""
    from runkit import small_config
    from vmmsim.cluster import runner
    from vmmsim.cluster.config import parse_config

    shown: list[str] = []

    class Recording(Progress):
        def __init__(self, total_ticks, tick_s, enabled=None, stream=None):
            super().__init__(total_ticks, tick_s, enabled=True, stream=io.StringIO())

        def close(self) -> None:
            super().close()
            shown.append(self.stream.getvalue())

    monkeypatch.setattr(runner, "Progress", Recording)
    cfg = parse_config(tomllib.loads(small_config(n_hosts=1, n_vms=2, duration_s=5)))
    runner.run(cfg, tmp_path / "ray", backend="ray")
    runner.run(cfg, tmp_path / "inproc", backend="inprocess")
    ray_line, inproc_line = (lines(io.StringIO(s))[-1] for s in shown)
    assert re.search(r"\(Ray start-up \d+\.\d s\)$", ray_line), ray_line
    assert "start-up" not in inproc_line and "5/5 s simulated  in" in inproc_line
