"""Sweeps (``[sweep]`` -> one run per point + sweep.parquet) and ``vmmsim report``."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from runkit import write_config
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import ConfigError, load_config, sweep_points
from vmmsim.cluster.sweep import point_name

PNG = b"\x89PNG\r\n\x1a\n"

TINY = """
[simulation]
seed = 3
duration_s = 12
content_bytes = 64

[policy]
realloc_period_s = 4
sample_period_s = 4
vm_overhead_mb = 0
share_scan_vm_pages_per_s = 500
share_scan_host_pages_per_s = 2000

[[hosts]]
name = "h"
memory_mb = 12
swap_mb = 32

[[vms]]
name = "busy"
count = 1
memory_mb = 6
[vms.workload]
kind = "batch"
program_mb = 1
heap_mb = 2
load_s = 0

[[vms]]
name = "lazy"
memory_mb = 6
[vms.workload]
kind = "idle"
"""


def run(*args: str) -> int:
    return main([*args, "--inprocess", "--quiet"])


def assert_png(path, min_bytes: int = 5000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) >= min_bytes, path


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sweep")
    cfg = write_config(tmp, TINY + '\n[sweep]\n"vms.busy.count" = [1, 2]\n')
    out = tmp / "out"
    assert run("run", str(cfg), "--out", str(out)) == 0
    return out


def test_sweep_writes_one_run_per_point_and_an_index(sweep_dir):
    assert sorted(p.name for p in sweep_dir.iterdir()) == [
        "count=1",
        "count=2",
        "sweep.json",
        "sweep.parquet",
    ]
    rows = pq.read_table(sweep_dir / "sweep.parquet").to_pylist()
    assert [r["point"] for r in rows] == ["count=1", "count=2"]
    assert [r["vms.busy.count"] for r in rows] == [1, 2]
    assert [r["n_vms"] for r in rows] == [2, 3]  # count re-expanded per point
    assert rows[1]["saved_mb"] > rows[0]["saved_mb"]  # two copies of the program share
    for r in rows:
        assert 0 < r["throughput.busy"] <= 1 and r["resident_mb.lazy"] > 0
    summary = json.loads((sweep_dir / "count=2" / "summary.json").read_text())
    assert set(summary["vms"]) == {"busy-0", "busy-1", "lazy"}
    meta = json.loads((sweep_dir / "sweep.json").read_text())
    assert meta["keys"] == ["vms.busy.count"]
    assert meta["points"][1]["overrides"] == ["vms.busy.count=2"]
    assert not list(sweep_dir.parent.glob(".out.partial-*"))  # moved into place


def test_report_of_a_sweep_draws_the_experiment_figure(sweep_dir, capsys):
    assert main(["report", str(sweep_dir)]) == 0
    text = capsys.readouterr().out
    assert "sweep of 2 points over vms.busy.count" in text and "count=2" in text
    assert f"vmmsim report {sweep_dir} --points" in text  # the hint; no point drawn
    assert not (sweep_dir / "count=1" / "plots").exists()
    assert_png(sweep_dir / "plots" / "sharing_vs_vms.png")
    assert_png(sweep_dir / "plots" / "sweep.png")


def test_report_points_draws_each_points_plots(sweep_dir, capsys):
    assert not (sweep_dir / "count=1" / "plots").exists()  # not without --points
    assert main(["report", str(sweep_dir), "--points"]) == 0
    assert "per-point plots: 2 of 2 points" in capsys.readouterr().out
    for point in ("count=1", "count=2"):
        for n in ("memory", "hosts", "active", "throughput", "sharing"):
            assert_png(sweep_dir / point / "plots" / f"{n}.png")


def test_report_of_a_run_writes_every_plot(sweep_dir, capsys):
    point = sweep_dir / "count=2"
    assert main(["report", str(point)]) == 0
    text = capsys.readouterr().out
    assert "busy (2)" in text and "host h:" in text
    names = ["memory", "hosts", "active", "throughput", "sharing"]
    for n in names:
        assert_png(point / "plots" / f"{n}.png")


def test_sweep_tax_rate_and_linked_keys(tmp_path, capsys):
    text = TINY + (
        '\n[sweep]\n"policy.tax_rate" = [0.0, 0.5]\n'
        '"vms.lazy.memory_mb,hosts.h.memory_mb" = [[4, 12], [5, 14]]\n'
    )
    cfg = write_config(tmp_path, text)
    assert sweep_points(load_config(cfg))[3] == (
        "policy.tax_rate=0.5",
        "vms.lazy.memory_mb=5",
        "hosts.h.memory_mb=14",
    )
    out = tmp_path / "out"
    assert run("run", str(cfg), "--out", str(out)) == 0
    rows = pq.read_table(out / "sweep.parquet").to_pylist()
    assert [r["point"] for r in rows] == [
        "tax_rate=0.0,memory_mb=4",
        "tax_rate=0.0,memory_mb=5",
        "tax_rate=0.5,memory_mb=4",
        "tax_rate=0.5,memory_mb=5",
    ]
    assert [r["hosts.h.memory_mb"] for r in rows] == [12, 14, 12, 14]
    assert main(["report", str(out)]) == 0
    assert_png(out / "plots" / "memory_vs_tax.png")


def test_bad_linked_sweep_value(tmp_path):
    cfg = write_config(tmp_path, TINY + '\n[sweep]\n"vms.lazy.memory_mb,hosts.h.memory_mb" = [4]\n')
    with pytest.raises(ConfigError, match=r"sweep\..*\[0\]: expected an array of 2 values"):
        load_config(cfg)


def test_sweep_refuses_a_finished_out_dir(sweep_dir, capsys):
    cfg = sweep_dir.parent / "exp.toml"
    assert run("run", str(cfg), "--out", str(sweep_dir)) == 2
    assert "pass --force" in capsys.readouterr().err


def test_point_names_are_readable_and_safe():
    keys = ["policy.tax_rate", "vms.web.workload.phases"]
    name = point_name(["policy.tax_rate=0.75", "vms.web.workload.phases=[[10, 4]]"], keys)
    assert name == "tax_rate=0.75,phases=10_4"
    keys = ["vms.a.memory_mb", "hosts.h.memory_mb"]
    name = point_name(["vms.a.memory_mb=128", "hosts.h.memory_mb=136"], keys)
    assert name == "a.memory_mb=128,h.memory_mb=136"
    assert point_name(['vms.a.workload.program="gcc"'], ["vms.a.workload.program"]) == (
        "program=gcc"
    )


@pytest.mark.parametrize("what", ["missing", "empty", "file"])
def test_report_of_a_bad_dir_is_one_line_exit_2(tmp_path, capsys, what):
    d = tmp_path / "d"
    if what == "empty":
        d.mkdir()
    elif what == "file":
        d.write_text("x")
    assert main(["report", str(d)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmmsim: error: ") and err.count("\n") == 1


def test_report_of_a_corrupt_run_dir(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "metrics.parquet").write_bytes(b"not parquet")
    assert main(["report", str(d)]) == 2
    assert "not a readable parquet file" in capsys.readouterr().err
