"""``vmmsim trace convert``: Bitbrains GWA-T-12 CSV -> access trace, and running it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from runkit import trace_config
from vmmsim.cluster.cli import main
from vmmsim.workloads.bitbrains import HEADER, ConvertError, convert, read_usage
from vmmsim.workloads.trace import read_trace

SAMPLE = Path(__file__).parent / "data" / "bitbrains_sample.csv"


def test_sample_is_in_the_gwa_t_12_layout():
    usage = read_usage(str(SAMPLE))
    assert len(usage.time_s) == 48 and usage.interval_s == 300.0
    assert 0.2 < usage.fraction.min() < usage.fraction.max() < 1.0


def test_working_set_follows_recorded_usage(tmp_path):
    out = tmp_path / "t.arrow"
    info = convert(str(SAMPLE), str(out), vm_mb=4, seed=3)
    d = read_trace(str(out))
    assert info["ticks"] == d.n_ticks == 48 and info["vm_pages"] == 1024
    assert d.meta["vmmsim.tick_s"] == "300" and d.meta["vmmsim.vm_pages"] == "1024"
    want = np.rint(read_usage(str(SAMPLE)).fraction * 1024).astype(int)
    # one tick per row; every working-set page touched once per tick (touch_s < tick_s)
    per_tick = np.bincount(d.tick, minlength=48)
    assert per_tick.tolist() == want.tolist()
    for k in range(48):
        sl = d.rows(k)
        assert len(np.unique(d.ppn[sl])) == want[k]
    grew = np.flatnonzero(np.diff(want) > 0)[0] + 1  # a tick where the set grows
    sl = d.rows(int(grew))
    assert d.is_write[sl].sum() >= want[grew] - want[grew - 1]  # new pages are written
    assert (d.key[d.is_write] != 0).all() and (d.key[~d.is_write] == 0).all()


def test_tick_s_spreads_rows_over_ticks_and_output_is_deterministic(tmp_path):
    a, b = tmp_path / "a.arrow", tmp_path / "b.arrow"
    convert(str(SAMPLE), str(a), vm_mb=2, tick_s=60, seed=1)
    convert(str(SAMPLE), str(b), vm_mb=2, tick_s=60, seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert read_trace(str(a)).n_ticks == 48 * 5


def test_cli_convert_then_run_the_trace(tmp_path, capsys):
    trace = tmp_path / "t.arrow"
    assert main(["trace", "convert", str(SAMPLE), "--out", str(trace), "--vm-mb", "4"]) == 0
    assert "48 intervals -> 48 ticks" in capsys.readouterr().out
    cfg = tmp_path / "c.toml"
    cfg.write_text(trace_config(str(trace), duration_s=10))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet"]) == 0
    import pyarrow.parquet as pq

    t = pq.read_table(out / "metrics.parquet").to_pydict()
    want = np.rint(read_usage(str(SAMPLE)).fraction * 1024)
    # accesses per tick = the trace's rows (plus the boot at tick 0)
    assert t["accesses"][1:10] == want[1:10].astype(int).tolist()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmmsim.cluster.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("a;b;c\n1;2;3\n", "line 1: not a GWA-T-12 header"),
        (";".join(HEADER) + "\n1;2;3\n", "line 2: 3 fields, expected 11"),
        (
            ";".join(HEADER) + "\n" + ";".join(["1"] * 6 + ["x"] + ["1"] * 4) + "\n",
            "line 2: Memory usage [KB]: not a number (got 'x')",
        ),
        (";".join(HEADER) + "\n", "no data rows"),
        (
            ";".join(HEADER) + "\n" + ";".join(["5"] * 11) + "\n" + ";".join(["4"] * 11) + "\n",
            "line 3: timestamps must increase",
        ),
        (
            ";".join(HEADER) + "\n" + ";".join(["1"] * 5 + ["0"] + ["1"] * 5) + "\n",
            "need provisioned > 0",
        ),
    ],
)
def test_bad_csv_is_one_line_exit_2(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.csv"
    bad.write_text(content)
    with pytest.raises(ConvertError) as e:
        convert(str(bad), str(tmp_path / "o.arrow"))
    assert message in str(e.value)
    assert main(["trace", "convert", str(bad), "--out", str(tmp_path / "o.arrow")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmmsim: error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "o.arrow").exists()


def test_missing_csv_is_one_line_exit_2(tmp_path):
    r = _cli("trace", "convert", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "o.arrow"))
    assert r.returncode == 2 and "no such file" in r.stderr and r.stderr.count("\n") == 1
