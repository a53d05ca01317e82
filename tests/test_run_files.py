"""Run files: compressed checkpoints and record logs (smaller, still verified, old plain
files still read), resuming a checkpoint into a longer run, the metrics columns the docs
list (in-process, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from runkit import error_line as _error_line
from runkit import small_config, trace_config, write_config
from runkit import summary_of as _summary
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import load_config
from vmmsim.cluster.recording import STREAMS, RecordLog
from vmmsim.cluster.runner import run
from vmmsim.cluster.sealed_stream import SealedStreamWriter, read_sealed
from vmmsim.cluster.session import RunOptions
from vmmsim.hosts.metrics_rows import COLUMNS

HOST_MB = 18  # overcommitted: balloons and swap are part of the state
DOCS = Path(__file__).resolve().parents[1] / "docs" / "running.md"


def _run(tmp: Path, name: str, duration: int, *extra: str) -> Path:
    (tmp / name).mkdir()
    cfg = write_config(tmp / name, small_config(duration_s=duration, host_mb=HOST_MB))
    out = tmp / name / "run"
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet", *extra]) == 0
    return out


@pytest.fixture(scope="module")
def short(tmp_path_factory) -> Path:
    """20 s, checkpointed every 8 s (at ticks 10, 20 -> only t10: none at the end), zstd."""
    tmp = tmp_path_factory.mktemp("short")
    return _run(tmp, "a", 20, "--checkpoint-every", "8", "--checkpoint-compression", "zstd")


@pytest.fixture(scope="module")
def long(tmp_path_factory) -> Path:
    """The same config run straight for 40 s, recorded with zstd and with plain
    checkpoints."""
    tmp = tmp_path_factory.mktemp("long")
    return _run(tmp, "b", 40, "--record", "--record-compression", "zstd", "--checkpoint-every", "8")


# ---------------------------------------------------------------------------- resume
def test_resume_with_a_longer_duration_equals_a_straight_longer_run(short, long, tmp_path):
    out = tmp_path / "extended"
    ck = short / "checkpoints" / "t10"
    args = ["resume", str(ck), "--out", str(out), "--inprocess", "--quiet"]
    assert main([*args, "--set", "simulation.duration_s=40"]) == 0
    s = _summary(out)
    assert s["n_ticks"] == 40 and s["resumed_from"]["tick"] == 10
    assert s["final_digest"] == _summary(long)["final_digest"]
    assert s["config_hash"] == _summary(long)["config_hash"]
    full, part = pq.read_table(long / "metrics.parquet"), pq.read_table(out / "metrics.parquet")
    assert part.equals(full.filter(pc.greater_equal(full["tick"], 10)))


@pytest.mark.parametrize(
    ("setting", "where"),
    [
        ("policy.tax_rate=0", "--set policy.tax_rate"),
        ("simulation.seed=7", "--set simulation.seed"),
        ("simulation.duration_s=10", "--set simulation.duration_s"),
    ],
)
def test_resume_refuses_overrides_that_change_the_past(short, tmp_path, capsys, setting, where):
    ck = short / "checkpoints" / "t10"
    args = ["resume", str(ck), "--out", str(tmp_path / "x"), "--inprocess", "--quiet"]
    assert main([*args, "--set", setting]) == 2
    line = _error_line(capsys)
    assert where in line
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------- compression
def test_compressed_checkpoint_is_smaller_verified_and_resumes(short, long, tmp_path, capsys):
    ck, plain = short / "checkpoints" / "t10", long / "checkpoints" / "t10"
    man = json.loads((ck / "manifest.json").read_text())
    assert man["compression"] == "zstd" and "compression" not in json.loads(
        (plain / "manifest.json").read_text()
    )
    for f in ("host0000.arrow", "host0001.arrow"):
        assert (ck / f).stat().st_size * 2 < (plain / f).stat().st_size
    # The plain (old-style) checkpoint of the longer run still resumes.
    out = tmp_path / "from_plain"
    assert main(["resume", str(plain), "--out", str(out), "--inprocess", "--quiet"]) == 0
    assert _summary(out)["final_digest"] == _summary(long)["final_digest"]
    # One flipped byte of a compressed host file is refused.
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for p in ck.iterdir():
        (damaged / p.name).write_bytes(p.read_bytes())
    raw = bytearray((damaged / "host0001.arrow").read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (damaged / "host0001.arrow").write_bytes(bytes(raw))
    assert main(["resume", str(damaged), "--out", str(tmp_path / "y"), "--inprocess"]) == 2
    assert "host0001.arrow: checksum mismatch" in _error_line(capsys)


def test_zstd_record_log_is_verified(long, tmp_path, capsys):
    for name, schema in STREAMS.items():
        st = read_sealed(long / "record" / f"{name}.arrows", schema, "vmmsim-record/1")
        assert st.schema.metadata[b"vmmsim.compression"] == b"zstd", name
    assert main(["replay", str(long), "--inprocess", "--quiet"]) == 0
    assert "replay verified: 40 ticks" in capsys.readouterr().out
    # A flipped byte in the compressed accesses stream fails its seal.
    rec = tmp_path / "rec"
    rec.mkdir()
    for p in (long / "record").iterdir():
        (rec / p.name).write_bytes(p.read_bytes())
    p = rec / "accesses.arrows"
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    p.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="accesses.arrows: (checksum mismatch|damaged)"):
        RecordLog.open(rec)


def test_plain_record_log_is_the_default_and_reads_like_a_compressed_one(long, tmp_path):
    """A log written plain (the default, as before compression existed) holds what the
    compressed one holds and replays."""
    cfg = write_config(tmp_path, small_config(duration_s=40, host_mb=HOST_MB))
    out = tmp_path / "plain"
    opts = RunOptions(record=True)
    run(load_config(cfg), out, backend="inprocess", quiet=True, opts=opts)
    st = read_sealed(out / "record/accesses.arrows", STREAMS["accesses"], "vmmsim-record/1")
    assert b"vmmsim.compression" not in st.schema.metadata
    zipped = long / "record" / "accesses.arrows"
    assert zipped.stat().st_size * 2 < (out / "record/accesses.arrows").stat().st_size
    a, b = RecordLog.open(out), RecordLog.open(long)
    assert a.accesses.equals(b.accesses) and a.digests.equals(b.digests)
    assert main(["replay", str(out), "--inprocess", "--quiet"]) == 0


# ---------------------------------------------------------------------------- docs
def test_docs_list_every_metrics_column():
    text = DOCS.read_text()
    table = text[text.index("`metrics.parquet` columns:") :].split("\n\n")[1]
    for col in COLUMNS:
        assert f"`{col}`" in table, col
    assert "tick 0 has `time_s` 0" in table  # time_s is the tick's start


# ---------------------------------------------------------------------------- trace paths


def test_relative_trace_path_resolves_from_the_config_file(tmp_path, monkeypatch, capsys):
    sample = Path(__file__).parent / "data" / "bitbrains_sample.csv"
    conf = tmp_path / "exp"
    (conf / "traces").mkdir(parents=True)
    trace = conf / "traces" / "t.arrow"
    assert main(["trace", "convert", str(sample), "--out", str(trace), "--vm-mb", "4"]) == 0
    cfg = conf / "c.toml"
    cfg.write_text(trace_config("traces/t.arrow"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the config's folder
    capsys.readouterr()
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet"]) == 0
    resolved = json.loads((out / "config.json").read_text())["vms"][0]["workload"]["path"]
    assert resolved == str(conf / "traces" / "t.arrow")
    # Missing: one line naming the key and where it looked.
    cfg.write_text(trace_config("traces/missing.arrow"))
    assert main(["validate", str(cfg)]) == 2
    line = _error_line(capsys)
    assert "workload.path" in line
    assert f"looked for {conf / 'traces' / 'missing.arrow'}" in line
    assert "config file's folder" in line


@pytest.mark.parametrize("codec", ["lz4", "zstd"])
def test_compressed_sealed_stream_detects_truncation_and_unknown_codecs(tmp_path, codec):
    schema = STREAMS["digests"].with_metadata(
        {"vmmsim.format": "vmmsim-record/1", "vmmsim.compression": codec}
    )
    p = tmp_path / "d.arrows"
    w = SealedStreamWriter(p, schema)
    for t in range(3):
        rows = {"tick": [t] * 50, "host": ["h"] * 50, "digest": ["ab" * 16] * 50}
        w.write(pa.RecordBatch.from_pydict(rows, schema=schema))
        w.seal(t + 1)
    w.close()
    st = read_sealed(p, STREAMS["digests"], "vmmsim-record/1")
    assert st.ended and st.ticks == [1, 2, 3] and st.table().num_rows == 150
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(ValueError, match="d.arrows: "):
        read_sealed(p, STREAMS["digests"], "vmmsim-record/1")
    bad = schema.with_metadata({**schema.metadata, b"vmmsim.compression": b"brotli9"})
    with pytest.raises(ValueError, match="unknown compression"):
        SealedStreamWriter(tmp_path / "e.arrows", bad)


# ---------------------------------------------------------------------------- metrics
def test_metrics_rounds_are_gathered_into_row_groups(long, tmp_path, monkeypatch):
    """``metrics.parquet`` holds whole rounds in row groups of at least
    ``METRICS_ROW_GROUP_ROWS`` rows (the last one smaller) -- not a row group per round,
    whose metadata the writer keeps until it closes -- with the same rows in the same
    order whatever the grouping."""
    import vmmsim.cluster.outputs as outputs

    rounds = pq.read_table(long / "metrics.parquet")
    default = pq.ParquetFile(long / "metrics.parquet").metadata
    assert default.num_rows == rounds.num_rows > 0
    assert rounds.num_rows < outputs.METRICS_ROW_GROUP_ROWS and default.num_row_groups == 1
    group = max(1, rounds.num_rows // 8)
    monkeypatch.setattr(outputs, "METRICS_ROW_GROUP_ROWS", group)
    out = _run(tmp_path, "small_groups", 40)
    meta = pq.ParquetFile(out / "metrics.parquet").metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert len(sizes) > 3 and min(sizes[:-1]) >= group and sum(sizes) == rounds.num_rows
    ticks = pq.read_table(out / "metrics.parquet").column("tick").to_pylist()
    per_tick = len(ticks) // len(set(ticks))
    assert all(s % per_tick == 0 for s in sizes)  # whole rounds (a row per VM per tick)
    assert pq.read_table(out / "metrics.parquet").equals(rounds)
