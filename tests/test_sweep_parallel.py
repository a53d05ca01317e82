"""Sweeps in parallel (``--jobs``, ``vmmsim.sweep(jobs=)``) and repeated seeds summarised
(``sweep_summary.parquet``, ``vmmsim.sweep_summary``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
import tomllib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from runkit import small_config, write_config
from vmmsim.cluster import sweep
from vmmsim.cluster.cli import main

import vmmsim

SWEEP = '\n[sweep]\n"policy.tax_rate" = [0.0, 0.75]\n"simulation.seed" = [1, 2, 3]\n'
_REAL_RUN_POINT = sweep.run_point


def _config(tmp, extra: str = SWEEP):
    return write_config(tmp, small_config(n_hosts=1, n_vms=2, duration_s=6) + extra)


@pytest.fixture(scope="module")
def serial_and_parallel(tmp_path_factory):
    """The same 6-point sweep run with --jobs 1 and --jobs 2 (and the stderr of each)."""
    tmp = tmp_path_factory.mktemp("sweeps")
    cfg = _config(tmp)
    out, err = {}, {}
    for jobs in (1, 2):
        out[jobs] = tmp / f"jobs{jobs}"
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(io.StringIO()) as f:
            if jobs > 1:
                _share_points(mp, tmp / "workers")
            rc = main(["run", str(cfg), "--out", str(out[jobs]), "--inprocess", f"--jobs={jobs}"])
        assert rc == 0
        err[jobs] = f.getvalue()
    # Both the vmmsim process and its worker ran points.
    assert 0 < len(list((tmp / "workers").iterdir())) < 6
    return out, err


def _share_points(mp, workers: Path) -> None:
    """Make run_point mark the points a worker runs in ``workers``, and the parent wait with
    its first point until a worker has one (tiny points: it could run them all first)."""
    workers.mkdir()
    mp.setattr(sweep, "run_point", _shared_point)
    mp.setenv("VMMSIM_TEST_PARENT", str(os.getpid()))
    mp.setenv("VMMSIM_TEST_WORKERS", str(workers))


def _shared_point(job):
    workers = Path(os.environ["VMMSIM_TEST_WORKERS"])
    if os.getpid() != int(os.environ["VMMSIM_TEST_PARENT"]):
        (workers / job.name).write_text(str(os.getpid()))
    else:
        for _ in range(600):
            if any(workers.iterdir()):
                break
            time.sleep(0.1)
    return _REAL_RUN_POINT(job)


def test_parallel_sweep_gives_the_serial_results(serial_and_parallel) -> None:
    out, _ = serial_and_parallel
    assert (out[1] / "sweep.parquet").read_bytes() == (out[2] / "sweep.parquet").read_bytes()
    assert (out[1] / "sweep_summary.parquet").read_bytes() == (
        out[2] / "sweep_summary.parquet"
    ).read_bytes()
    rows = pq.read_table(out[2] / "sweep.parquet").to_pylist()
    assert [(r["policy.tax_rate"], r["simulation.seed"]) for r in rows] == [
        (t, s) for t in (0.0, 0.75) for s in (1, 2, 3)
    ]
    for r in rows:
        for jobs in (1, 2):
            summary = json.loads((out[jobs] / r["point"] / "summary.json").read_text())
            assert summary["final_digest"] == r["final_digest"]
        a, b = (out[j] / r["point"] / "metrics.parquet" for j in (1, 2))
        assert a.read_bytes() == b.read_bytes()
    assert len({r["final_digest"] for r in rows}) > 1


def test_each_finished_point_prints_a_line_with_its_time_and_digest(serial_and_parallel) -> None:
    out, err = serial_and_parallel
    rows = pq.read_table(out[1] / "sweep.parquet").to_pylist()
    for jobs in (1, 2):
        done = re.findall(
            r"sweep point (\d)/6 done: (\S+)  ([\d.]+) s  digest ([0-9a-f]{16})", err[jobs]
        )
        assert sorted(int(k) for k, *_ in done) == list(range(1, 7)), err[jobs]
        got = {name: digest for _, name, _, digest in done}
        assert got == {r["point"]: r["final_digest"][:16] for r in rows}
    assert "6 points, 2 at a time" in err[2]


def test_seed_summary_is_the_mean_and_spread_over_the_seeds(serial_and_parallel) -> None:
    out, _ = serial_and_parallel
    rows = pq.read_table(out[1] / "sweep.parquet").to_pylist()
    summ = pq.read_table(out[1] / "sweep_summary.parquet").to_pylist()
    assert [s["point"] for s in summ] == ["tax_rate=0.0", "tax_rate=0.75"]
    for s in summ:
        members = [r for r in rows if r["policy.tax_rate"] == s["policy.tax_rate"]]
        assert s["n_seeds"] == 3 and s["seeds"] == "1,2,3"
        assert "simulation.seed.mean" not in s and "final_digest.mean" not in s
        for col in ("saved_mb", "swap_used_mb", "throughput.busy", "resident_mb.lazy"):
            v = np.array([m[col] for m in members], dtype=float)
            assert s[f"{col}.mean"] == pytest.approx(v.mean())
            assert s[f"{col}.std"] == pytest.approx(v.std(ddof=1))
            assert (s[f"{col}.min"], s[f"{col}.max"]) == (v.min(), v.max())
    spread = [s["resident_mb.busy.max"] - s["resident_mb.busy.min"] for s in summ]
    assert max(spread) > 0  # the seeds really differ
    # The API's summary of the same table agrees.
    api = vmmsim.sweep_summary(pq.read_table(out[1] / "sweep.parquet")).to_pylist()
    assert [{k: v for k, v in a.items() if k != "point"} for a in api] == [
        {k: v for k, v in s.items() if k != "point"} for s in summ
    ]


def test_a_sweep_without_seeds_writes_no_summary(tmp_path) -> None:
    cfg = _config(tmp_path, '\n[sweep]\n"policy.tax_rate" = [0.0]\n')
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--inprocess", "--quiet"]) == 0
    assert not (tmp_path / "o" / "sweep_summary.parquet").exists()


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_jobs_must_be_a_positive_integer(tmp_path, capsys, value) -> None:
    cfg = _config(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["run", str(cfg), "--out", str(tmp_path / "o"), "--inprocess", f"--jobs={value}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("vmmsim: error: run: argument --jobs:") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    with pytest.raises(vmmsim.ConfigError, match="jobs"):
        vmmsim.sweep(tomllib.loads(small_config()), {"simulation.seed": [1]}, jobs=0)


def _fail_second_point(job):
    """A stand-in for sweep.run_point: the second point fails (top level: picklable)."""
    if job.index == 1:
        raise RuntimeError("boom\nin point two")
    return _REAL_RUN_POINT(job)


def _die_in_a_worker(job):
    """The worker process running a point dies; the parent's own first point waits until
    then (so a worker surely gets a point)."""
    flag = Path(os.environ["VMMSIM_TEST_FLAG"])
    if os.getpid() != int(os.environ["VMMSIM_TEST_PARENT"]):
        flag.write_text(job.name)
        os._exit(3)
    for _ in range(600):
        if flag.exists():
            break
        time.sleep(0.1)
    return _REAL_RUN_POINT(job)


@pytest.mark.parametrize(
    ("jobs", "runner", "reason"),
    [
        ("1", _fail_second_point, "boom in point two"),
        ("2", _fail_second_point, "boom in point two"),
        ("2", _die_in_a_worker, "its worker process died (exit code 3)"),
    ],
    ids=["serial", "parallel", "worker-died"],
)
def test_a_failing_point_is_named_and_nothing_is_written(
    tmp_path, capsys, monkeypatch, jobs, runner, reason
) -> None:
    monkeypatch.setattr(sweep, "run_point", runner)
    monkeypatch.setenv("VMMSIM_TEST_PARENT", str(os.getpid()))
    monkeypatch.setenv("VMMSIM_TEST_FLAG", str(tmp_path / "died"))
    cfg = _config(tmp_path, '\n[sweep]\n"policy.tax_rate" = [0.0, 0.25, 0.5]\n')
    out = tmp_path / "sub" / "o"
    rc = main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet", "--jobs", jobs])
    err = capsys.readouterr().err
    assert rc == 1
    point = (tmp_path / "died").read_text() if runner is _die_in_a_worker else "tax_rate=0.25"
    assert err == f"vmmsim: error: sweep point {point} failed: {reason}\n"
    assert not (tmp_path / "sub").exists()  # as the serial sweep: the whole sweep removed


def test_api_sweep_in_parallel_matches_serial(tmp_path) -> None:
    cfg = tomllib.loads(small_config(n_hosts=1, n_vms=2, duration_s=6))
    grid = {"simulation.seed": [4, 5]}
    one = vmmsim.sweep(cfg, grid, backend="inprocess", jobs=1)
    with pytest.MonkeyPatch.context() as mp:
        _share_points(mp, tmp_path / "workers")
        two = vmmsim.sweep(cfg, grid, backend="inprocess", jobs=2, out=tmp_path / "s")
    assert len(list((tmp_path / "workers").iterdir())) == 1
    assert one.equals(two)
    summ = pq.read_table(tmp_path / "s" / "sweep_summary.parquet").to_pylist()
    assert len(summ) == 1 and summ[0]["point"] == "all" and summ[0]["seeds"] == "4,5"
    assert summ[0]["saved_mb.mean"] == pytest.approx(np.mean(one.column("saved_mb").to_numpy()))


@pytest.mark.ray
def test_ray_sweep_in_parallel_gives_the_inprocess_digests(ray_session) -> None:
    cfg = tomllib.loads(small_config(n_hosts=2, n_vms=2, duration_s=4))
    grid = {"policy.tax_rate": [0.0, 0.75]}
    ray_rows = vmmsim.sweep(cfg, grid, backend="ray", jobs=2).to_pylist()
    local = vmmsim.sweep(cfg, grid, backend="inprocess", jobs=1).to_pylist()
    assert [r["final_digest"] for r in ray_rows] == [r["final_digest"] for r in local]


def test_pool_workers_start_without_warnings(capfd) -> None:
    """Workers start with ``python -c``, not ``-m``: running the pool module as
    ``__main__`` beside the copy the package imports printed a RuntimeWarning."""
    from vmmsim.cluster.sweep_pool import run_all

    done: dict[int, int] = {}
    run_all(abs, [-1, -2, -3, -4], 2, done.__setitem__)
    assert sorted(done.values()) == [1, 2, 3, 4]
    assert "Warning" not in capfd.readouterr().err


def test_report_prints_the_seed_summary(serial_and_parallel, capsys) -> None:
    """``vmmsim report`` of a seed sweep shows sweep_summary.parquet: per point of the
    other keys, mean +- std [min..max] over the seeds of the headline figures."""
    out, _ = serial_and_parallel
    summ = pq.read_table(out[1] / "sweep_summary.parquet").to_pylist()
    assert main(["report", str(out[1])]) == 0
    text = capsys.readouterr().out
    assert "over seeds" in text
    for s in summ:
        line = next(x for x in text.splitlines() if x.strip().startswith(s["point"] + " "))
        want = f"saved_mb={s['saved_mb.mean']:.1f}+-{s['saved_mb.std']:.1f}"
        assert "n=3" in line and want in line
        busy = f"tp.busy={s['throughput.busy.mean']:.3f}"
        assert busy in line and f"..{s['throughput.busy.max']:.3f}]" in line


@pytest.mark.parametrize(("jobs", "share"), [(2, 0.5), (3, 1 / 3), (8, 1 / 3)])
def test_ray_points_run_at_once_share_the_cluster(tmp_path, monkeypatch, jobs, share) -> None:
    """Each of the Ray points a sweep runs at once asks for its share of the cluster's
    CPUs (``jobs`` at a time, at most one per point), so their hosts all fit together."""
    seen = []

    def record(job):
        seen.append(job.cluster_share)
        return {"final_digest": job.name}, 0.0

    monkeypatch.setattr(sweep, "run_point", record)
    cfg = sweep.load_config(write_config(tmp_path, small_config(n_hosts=2, n_vms=2)))
    todo = [sweep.PointJob(i, f"p{i}", cfg, tmp_path / f"p{i}") for i in range(3)]
    assert all(job.backend == "ray" and job.cluster_share == 1.0 for job in todo)
    summaries = sweep.run_points(todo, jobs)
    assert [s["final_digest"] for s in summaries] == ["p0", "p1", "p2"]
    assert seen == [pytest.approx(share)] * 3
