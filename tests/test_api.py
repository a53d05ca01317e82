"""The Python API (``vmmsim.run``, ``load_run``, ``load_config``, ``sweep``) against the
CLI's own outputs: same digests, tables in memory, one-line exceptions."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pyarrow as pa
import pytest
from runkit import small_config, write_config
from vmmsim.cluster.cli import main as cli_main

import vmmsim


def _cfg_dict() -> dict:
    return tomllib.loads(small_config(duration_s=12))


def test_run_from_a_dict_keeps_nothing_and_matches_the_cli(tmp_path: Path) -> None:
    scratch = set(Path(tempfile.gettempdir()).glob("vmmsim-api-*"))
    r = vmmsim.run(_cfg_dict(), backend="inprocess")
    assert set(Path(tempfile.gettempdir()).glob("vmmsim-api-*")) == scratch  # nothing kept
    assert r.out is None
    assert isinstance(r.metrics, pa.Table) and isinstance(r.migrations, pa.Table)
    n_ticks, n_vms = 12, 4
    assert r.metrics.num_rows == n_ticks * n_vms
    assert set(r.metrics.column("vm").to_pylist()) == {"busy-0", "busy-1", "lazy-0", "lazy-1"}
    cfg = write_config(tmp_path, small_config(duration_s=12))
    assert (
        cli_main(["run", str(cfg), "--out", str(tmp_path / "cli"), "--inprocess", "--quiet"]) == 0
    )
    cli_summary = json.loads((tmp_path / "cli" / "summary.json").read_text())
    assert r.final_digest == cli_summary["final_digest"]
    assert r.summary == cli_summary


def test_run_with_out_writes_a_run_directory_that_load_run_reads(tmp_path: Path) -> None:
    out = tmp_path / "r"
    r = vmmsim.run(_cfg_dict(), out=out, backend="inprocess", overrides=["policy.tax_rate=0"])
    assert r.out == out and (out / "metrics.parquet").is_file()
    back = vmmsim.load_run(out)
    assert back.metrics.equals(r.metrics)
    assert back.summary == r.summary
    assert back.config["policy"]["tax_rate"] == 0
    with pytest.raises(vmmsim.RunDirError, match="finished run"):
        vmmsim.run(_cfg_dict(), out=out, backend="inprocess")


def test_overrides_change_the_run(tmp_path: Path) -> None:
    a = vmmsim.run(_cfg_dict(), backend="inprocess")
    b = vmmsim.run(_cfg_dict(), backend="inprocess", overrides=["simulation.seed=8"])
    assert a.final_digest != b.final_digest


def test_load_config_from_path_dict_and_config_agree(tmp_path: Path) -> None:
    path = write_config(tmp_path, small_config(duration_s=12))
    a = vmmsim.load_config(path)
    b = vmmsim.load_config(_cfg_dict())
    c = vmmsim.load_config(a)
    assert a.config_hash() == b.config_hash() == c.config_hash()
    d = vmmsim.load_config(a, ["policy.tax_rate=0.5"])
    assert d.policy.tax_rate == 0.5 and d.config_hash() != a.config_hash()
    assert isinstance(d, vmmsim.Config) and d.to_dict()["policy"]["tax_rate"] == 0.5


def test_sweep_returns_one_row_per_point_with_the_runs_digests(tmp_path: Path) -> None:
    grid = {"policy.tax_rate": [0.0, 0.75], "simulation.seed": [1, 2]}
    t = vmmsim.sweep(_cfg_dict(), grid, backend="inprocess", out=tmp_path / "sw")
    rows = t.to_pylist()
    assert [(r["policy.tax_rate"], r["simulation.seed"]) for r in rows] == [
        (0.0, 1),
        (0.0, 2),
        (0.75, 1),
        (0.75, 2),
    ]
    one = vmmsim.run(
        _cfg_dict(), backend="inprocess", overrides=["policy.tax_rate=0.75", "simulation.seed=2"]
    )
    assert rows[3]["final_digest"] == one.final_digest
    assert rows[0]["final_digest"] != rows[1]["final_digest"]  # seeds differ
    assert (tmp_path / "sw" / "sweep.parquet").is_file()
    assert (tmp_path / "sw" / "p003" / "summary.json").is_file()


@pytest.mark.parametrize(
    ("call", "exc", "needle"),
    [
        (lambda: vmmsim.load_config({"simulation": {"bogus": 1}}), vmmsim.ConfigError, "bogus"),
        (lambda: vmmsim.run(_cfg_dict(), backend="bogus"), vmmsim.ConfigError, "backend"),
        (lambda: vmmsim.load_run("/nonexistent/run"), vmmsim.RunDirError, "not a vmmsim run"),
        (lambda: vmmsim.load_config(42), vmmsim.ConfigError, "expected a path"),
        (lambda: vmmsim.sweep(_cfg_dict(), {}), vmmsim.ConfigError, "grid"),
        (
            lambda: vmmsim.run(_cfg_dict(), overrides=["hosts.h.swap_mb=20"]),
            vmmsim.PlacementError,
            "cannot be placed",
        ),
    ],
    ids=["unknown-key", "backend", "not-a-run", "bad-type", "empty-grid", "placement"],
)
def test_errors_are_one_line_exceptions_without_cli_flags(call, exc, needle) -> None:
    with pytest.raises(exc) as info:
        call()
    msg = str(info.value)
    assert needle in msg and "\n" not in msg and "--" not in msg


def test_only_vmmsim_is_installed_at_the_top_level(tmp_path: Path) -> None:
    """Outside the repository, ``import cluster`` fails and ``import vmmsim`` works."""
    code = (
        "import importlib.util as u, vmmsim.cluster, vmmsim.hosts, vmmsim.workloads;"
        "print([n for n in ('cluster', 'hosts', 'workloads') if u.find_spec(n)])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


@pytest.mark.ray
def test_ray_backend_gives_the_inprocess_digest(ray_session) -> None:
    a = vmmsim.run(_cfg_dict(), backend="inprocess")
    b = vmmsim.run(_cfg_dict(), backend="ray")
    assert a.final_digest == b.final_digest
    assert a.metrics.equals(b.metrics)


def test_the_example_script_runs() -> None:
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        [sys.executable, str(root / "examples" / "python_api.py")],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert "metric rows" in lines[0]
    taxes = [ln for ln in lines if ln.strip().startswith("tax ")]
    assert len(taxes) == 2 and taxes[0].split()[-1] != taxes[1].split()[-1]
