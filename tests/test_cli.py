"""The command line end to end (in-process backend, no Ray): outputs, determinism, errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from runkit import small_config, write_config
from vmmsim.cluster.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmmsim.cluster.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_run_writes_metrics_and_summary(tmp_path):
    cfg = write_config(tmp_path, small_config())
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet"]) == 0
    t = pq.read_table(out / "metrics.parquet")
    for col in (
        "tick",
        "time_s",
        "host",
        "vm",
        "resident_mb",
        "shared_mb",
        "zero_shared_mb",
        "cow_breaks",
        "scanned_pages",
        "target_mb",
        "ballooned_mb",
        "swapped_mb",
        "guest_swapped_mb",
        "active_est",
        "active_true",
        "throughput",
        "faults_guest_swap",
        "faults_vmm_swap",
        "host_state",
    ):
        assert col in t.column_names
    assert t.num_rows == 30 * 4  # ticks x VMs
    s = json.loads((out / "summary.json").read_text())
    assert s["seed"] == 7 and len(s["config_hash"]) == 64 and len(s["final_digest"]) == 64
    assert set(s["vms"]) == {"busy-0", "busy-1", "lazy-0", "lazy-1"}
    assert s["totals"]["shared_mb"] > 0  # identical images share
    assert s["totals"]["saved_mb"] > 0


def test_same_seed_gives_byte_identical_outputs(tmp_path):
    cfg = write_config(tmp_path, small_config())
    a, b = tmp_path / "a", tmp_path / "b"
    for out in (a, b):
        assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet"]) == 0
    assert (a / "metrics.parquet").read_bytes() == (b / "metrics.parquet").read_bytes()
    assert (a / "summary.json").read_bytes() == (b / "summary.json").read_bytes()


def test_other_seed_differs(tmp_path):
    cfg = write_config(tmp_path, small_config())
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["run", str(cfg), "--out", str(a), "--inprocess", "--quiet"]) == 0
    assert (
        main(
            [
                "run",
                str(cfg),
                "--out",
                str(b),
                "--inprocess",
                "--quiet",
                "--set",
                "simulation.seed=8",
            ]
        )
        == 0
    )
    sa = json.loads((a / "summary.json").read_text())
    sb = json.loads((b / "summary.json").read_text())
    assert sa["final_digest"] != sb["final_digest"]
    assert sa["config_hash"] != sb["config_hash"]


def test_invariants_hold_through_a_pressured_run(tmp_path):
    cfg = write_config(tmp_path, small_config(host_mb=12))
    out = tmp_path / "run"
    assert (
        main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet", "--check-invariants"])
        == 0
    )
    t = pq.read_table(out / "metrics.parquet").to_pydict()
    assert max(t["ballooned_mb"]) > 0, "the overcommitted hosts should balloon"
    assert {"soft", "hard", "low"} & set(t["host_state"])


def test_refuses_to_overwrite_a_finished_run(tmp_path):
    cfg = write_config(tmp_path, small_config(duration_s=5))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet"]) == 0
    before = (out / "metrics.parquet").read_bytes()
    r = run_cli(
        "run", str(cfg), "--out", str(out), "--inprocess", "--quiet", "--set", "simulation.seed=99"
    )
    assert r.returncode == 2
    assert "--force" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert (out / "metrics.parquet").read_bytes() == before
    r = run_cli(
        "run",
        str(cfg),
        "--out",
        str(out),
        "--inprocess",
        "--quiet",
        "--force",
        "--set",
        "simulation.seed=99",
    )
    assert r.returncode == 0, r.stderr
    assert (out / "metrics.parquet").read_bytes() != before


@pytest.mark.parametrize(
    ("text_change", "expect"),
    [
        (("memory_mb = 24", "memory_mb = -1"), "memory_mb: must be > 0"),
        (("[policy]", "[policy]\nbogus_key = 1"), "policy.bogus_key: unknown key"),
        (("seed = 7", 'seed = "seven"'), "simulation.seed"),
        (('kind = "idle"', 'kind = "nope"'), "unknown workload kind"),
        (("count = 2\nmemory_mb = 24", "count = 2\nmemory_mb = 24\nmemory_mb = 3"), "exp.toml"),
    ],
)
def test_bad_config_is_one_line_exit_2(tmp_path, text_change, expect):
    text = small_config().replace(*text_change, 1)
    cfg = write_config(tmp_path, text)
    r = run_cli("run", str(cfg), "--out", str(tmp_path / "o"), "--inprocess", "--quiet")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmmsim: error: "), r.stderr
    assert expect in lines[0]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_impossible_placement_and_bad_override(tmp_path):
    cfg = write_config(tmp_path, small_config(vm_mb=16).replace("swap_mb = 64", "swap_mb = 0"))
    r = run_cli(
        "run",
        str(cfg),
        "--out",
        str(tmp_path / "o"),
        "--inprocess",
        "--set",
        "vms.busy.memory_mb=4000",
    )
    assert r.returncode == 2 and "busy" in r.stderr and "Traceback" not in r.stderr
    r = run_cli(
        "run", str(cfg), "--out", str(tmp_path / "o"), "--inprocess", "--set", "policy.tax_rate=1.5"
    )
    assert r.returncode == 2 and "tax_rate" in r.stderr
    r = run_cli("run", str(tmp_path / "missing.toml"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "missing.toml" in r.stderr


def test_validate_and_schema_commands(tmp_path, capsys):
    cfg = write_config(tmp_path, small_config())
    assert main(["validate", str(cfg)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["placement"].values()) == {"h-0", "h-1"}
    assert main(["schema"]) == 0
    assert "tax_rate" in capsys.readouterr().out


def test_trace_export_of_a_recorded_vm(tmp_path):
    import pyarrow as pa

    cfg = write_config(tmp_path, small_config(duration_s=5))
    out = tmp_path / "rec"
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet", "--record"]) == 0
    trace = tmp_path / "busy0.arrow"
    assert main(["trace", "export", str(out), "--vm", "busy-0", "--out", str(trace)]) == 0
    t = pa.ipc.open_file(pa.memory_map(str(trace))).read_all()
    assert t.column_names[:4] == ["tick", "ppn", "is_write", "key"]
    assert t.num_rows > 0 and set(t.column("tick").to_pylist()) == set(range(5))
    r = run_cli("trace", "export", str(out), "--vm", "nope", "--out", str(tmp_path / "x.arrow"))
    assert r.returncode == 2 and "nope" in r.stderr and len(r.stderr.strip().splitlines()) == 1
