"""Record logs and replay (in-process, no Ray): determinism, verified replay, damaged
logs refused, counterfactual replay, trace export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from runkit import error_line as _error_line
from runkit import small_config, write_config
from vmmsim.cluster.cli import main
from vmmsim.cluster.recording import STREAMS, RecordLog, rows_to_batch, table_to_rows
from vmmsim.cluster.replay import export_trace
from vmmsim.cluster.sealed_stream import LogError, SealedStreamWriter, read_sealed
from vmmsim.workloads.patterns import Accesses
from vmmsim.workloads.replay import AccessRows, ReplayWorkload

TICKS = 30  # rounds of 5 ticks (small_config: realloc_period_s = 5)
HOST_MB = 18  # two 16 MB VMs a host, one busy, one idle: overcommitted


def _config(tmp: Path, name: str = "exp.toml") -> Path:
    return write_config(tmp, small_config(duration_s=TICKS, host_mb=HOST_MB), name)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """A recorded in-process run (read-only for the tests: copy before damaging)."""
    tmp = tmp_path_factory.mktemp("rec")
    cfg = _config(tmp)
    out = tmp / "run"
    assert main(["run", str(cfg), "--out", str(out), "--record", "--inprocess", "--quiet"]) == 0
    return out


def _copy(run: Path, tmp: Path) -> Path:
    dst = tmp / "copy"
    shutil.copytree(run, dst)
    return dst


# ---------------------------------------------------------------------------- units
def test_access_rows_pack_take_concat_and_arrow_roundtrip():
    a = Accesses(np.array([3, 1]), np.array([4]), np.array([9], np.uint64))
    b = Accesses(np.array([], np.int64), np.array([2, 2]), np.array([5, 6], np.uint64))
    rows = AccessRows.pack([("x", 0, 0, a), ("y", 0, 0, b), ("x", 1, 1, b)])
    both = AccessRows.concat([rows, rows.take(np.array([2, 0]))])
    back = table_to_rows(pa.Table.from_batches([rows_to_batch(both)]))
    assert back.vm == ("x", "y", "x", "x", "x")
    got = back.accesses(3)
    assert got.writes.tolist() == [2, 2] and got.write_keys.tolist() == [5, 6]
    assert back.accesses(4).reads.tolist() == [3, 1]
    w = ReplayWorkload()
    w.feed(back, [0, 2])
    assert w.step(1).writes.tolist() == [2, 2] and w.step(0).reads.tolist() == [3, 1]
    assert w.step(2).count == 0 and w.missing == 1  # no input for step 2: no accesses


def test_record_twice_gives_identical_files(recorded, tmp_path):
    cfg = _config(tmp_path)
    out = tmp_path / "again"
    assert main(["run", str(cfg), "--out", str(out), "--record", "--inprocess", "--quiet"]) == 0
    for name in ["metrics.parquet", *(f"record/{s}.arrows" for s in STREAMS)]:
        assert (out / name).read_bytes() == (recorded / name).read_bytes(), name


def test_log_holds_config_every_step_and_every_tick_digest(recorded):
    log = RecordLog.open(recorded)
    assert log.complete and log.last_tick == TICKS
    assert (
        log.cfg.config_hash() == json.loads((recorded / "summary.json").read_text())["config_hash"]
    )
    assert log.digests.num_rows == TICKS * 2  # ticks x hosts
    streams = log.vm_streams()
    assert set(streams) == {"busy-0", "busy-1", "lazy-0", "lazy-1"}
    kinds = set(log.decisions.column("kind").to_pylist())
    assert {"placement", "targets"} <= kinds
    meta = read_sealed(recorded / "record/accesses.arrows", STREAMS["accesses"], "vmmsim-record/1")
    assert meta.ticks == list(range(5, TICKS + 1, 5))  # one sealed segment per round


# ---------------------------------------------------------------------------- replay
def test_replay_verifies_every_tick(recorded, capsys):
    assert main(["replay", str(recorded), "--inprocess", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"replay verified: {TICKS} ticks, digests identical"


def test_replay_names_first_differing_tick_and_host(recorded, tmp_path, capsys):
    run = _copy(recorded, tmp_path)
    path = run / "record/digests.arrows"
    st = read_sealed(path, STREAMS["digests"], "vmmsim-record/1")
    t = st.table().to_pydict()
    i = t["tick"].index(7) + 1  # tick 7, second host
    t["digest"][i] = "0" * 32
    w = SealedStreamWriter(path, st.schema)  # a valid log that records another state
    for end in st.ticks:
        sel = [k for k, tick in enumerate(t["tick"]) if end - 5 <= tick < end]
        w.write(pa.RecordBatch.from_pydict({c: [t[c][k] for k in sel] for c in t}, st.schema))
        w.seal(end)
    w.close()
    assert main(["replay", str(run), "--inprocess", "--quiet"]) == 1
    line = _error_line(capsys)
    assert "tick 7" in line and "host h-1" in line


@pytest.mark.parametrize("stream", list(STREAMS))
@pytest.mark.parametrize("where", [0.02, 0.5, 0.97])
def test_one_flipped_byte_is_refused(recorded, tmp_path, capsys, stream, where):
    run = _copy(recorded, tmp_path)
    p = run / f"record/{stream}.arrows"
    raw = bytearray(p.read_bytes())
    raw[int(len(raw) * where)] ^= 0x01
    p.write_bytes(bytes(raw))
    out = tmp_path / "out"
    assert main(["replay", str(run), "--out", str(out), "--inprocess", "--quiet"]) == 2
    assert str(p) in _error_line(capsys)
    assert not out.exists()


def test_a_flipped_byte_anywhere_in_a_stream_is_detected(recorded, tmp_path):
    """Schema, data, padding, seals, end marker: every 11th byte of a whole stream."""
    raw = (recorded / "record/digests.arrows").read_bytes()
    p = tmp_path / "d.arrows"
    for i in range(0, len(raw), 11):
        bad = bytearray(raw)
        bad[i] ^= 0x04
        p.write_bytes(bytes(bad))
        try:
            st = read_sealed(p, STREAMS["digests"], "vmmsim-record/1")
        except LogError:
            continue
        assert not st.ended or st.last_tick < TICKS, f"flip at byte {i} went unnoticed"


@pytest.mark.parametrize("cut", [0.5, 0.999])
def test_truncated_log_is_refused(recorded, tmp_path, capsys, cut):
    run = _copy(recorded, tmp_path)
    p = run / "record/accesses.arrows"
    p.write_bytes(p.read_bytes()[: int(p.stat().st_size * cut)])
    assert main(["replay", str(run), "--inprocess", "--quiet"]) == 2
    line = _error_line(capsys)
    assert "accesses.arrows" in line or "truncated" in line


def test_missing_stream_and_foreign_version_are_refused(recorded, tmp_path, capsys):
    run = _copy(recorded, tmp_path)
    (run / "record/digests.arrows").unlink()
    assert main(["replay", str(run), "--inprocess", "--quiet"]) == 2
    assert "digests.arrows: missing" in _error_line(capsys)
    shutil.rmtree(run)
    run = _copy(recorded, tmp_path)
    p = run / "record/digests.arrows"
    st = read_sealed(p, STREAMS["digests"], "vmmsim-record/1")
    meta = {**st.schema.metadata, b"vmmsim.format": b"vmmsim-record/99"}
    w = SealedStreamWriter(p, st.schema.with_metadata(meta))
    w.write(st.table().combine_chunks().to_batches()[0])
    w.seal(TICKS)
    w.close()
    assert main(["replay", str(run), "--inprocess", "--quiet"]) == 2
    assert "vmmsim-record/99" in _error_line(capsys)


# ---------------------------------------------------------------------------- counterfactual
def test_counterfactual_replay_equals_a_fresh_run_of_that_policy(recorded, tmp_path, capsys):
    cf, fresh = tmp_path / "cf", tmp_path / "fresh"
    args = ["--set", "policy.tax_rate=0.0", "--inprocess", "--quiet"]
    assert main(["replay", str(recorded), "--out", str(cf), *args]) == 0
    assert "counterfactual replay" in capsys.readouterr().out
    s = json.loads((cf / "summary.json").read_text())
    orig = json.loads((recorded / "summary.json").read_text())
    assert s["replay"]["recorded_config_hash"] == orig["config_hash"] != s["config_hash"]
    assert s["replay"]["vm_steps_without_input"] == {}
    assert json.loads((cf / "config.json").read_text())["policy"]["tax_rate"] == 0.0
    # The tax charges idle memory only: identical while every VM's estimate is 1 (fully
    # active), different once an idle VM is recognised as such.
    assert s["final_digest"] != orig["final_digest"]
    a, b = pq.read_table(cf / "metrics.parquet"), pq.read_table(recorded / "metrics.parquet")
    idle = pc.less(b["active_est"], 1.0)
    t0 = pc.min(pc.filter(b["tick"], idle)).as_py()
    assert t0 is not None and t0 < TICKS - 1
    until, after = pc.less_equal(b["tick"], t0), pc.greater(b["tick"], t0)
    assert a.filter(until).equals(b.filter(until))
    assert not a.filter(after).column("target_mb").equals(b.filter(after).column("target_mb"))
    # ...not what the guests ask for: the same as generating the inputs afresh.
    cfg = _config(tmp_path)
    assert main(["run", str(cfg), "--out", str(fresh), *args]) == 0
    assert json.loads((fresh / "summary.json").read_text())["final_digest"] == s["final_digest"]
    assert (fresh / "metrics.parquet").read_bytes() == (cf / "metrics.parquet").read_bytes()


@pytest.mark.parametrize(
    "key",
    [
        "simulation.seed=3",
        "vms.busy.memory_mb=8",
        "vms.busy-0.workload.wss_mb=2",
        "vms.*.image=blank",
    ],
)
def test_workload_keys_cannot_change_in_a_replay(recorded, tmp_path, capsys, key):
    out = tmp_path / "cf"
    rc = main(["replay", str(recorded), "--out", str(out), "--set", key, "--inprocess", "--quiet"])
    assert rc == 2
    assert "cannot change in a replay" in _error_line(capsys)
    assert not out.exists()


def test_exported_trace_drives_a_vm_exactly_as_recorded(tmp_path):
    one_vm = """
[simulation]
seed = 3
duration_s = 12
content_bytes = 64
[policy]
realloc_period_s = 4
vm_overhead_mb = 0
[[hosts]]
name = "h"
memory_mb = 12
swap_mb = 8
[[vms]]
name = "a"
memory_mb = 8
[vms.workload]
kind = "steady"
wss_mb = 3
"""
    rec = tmp_path / "rec"
    cfg = write_config(tmp_path, one_vm)
    assert main(["run", str(cfg), "--out", str(rec), "--record", "--inprocess", "--quiet"]) == 0
    trace = tmp_path / "a.arrow"
    assert export_trace(rec, "a", trace) > 0
    traced = one_vm.replace('kind = "steady"\nwss_mb = 3', f'kind = "trace"\npath = "{trace}"')
    cfg2 = write_config(tmp_path, traced + "boot = false\n", "traced.toml")
    out = tmp_path / "traced"
    assert main(["run", str(cfg2), "--out", str(out), "--inprocess", "--quiet"]) == 0
    digest = [json.loads((d / "summary.json").read_text())["final_digest"] for d in (rec, out)]
    assert digest[0] == digest[1]
