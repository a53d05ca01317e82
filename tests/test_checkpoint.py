"""Checkpoints, resume and recovery: identical files, resume == uninterrupted, damaged
checkpoints refused, a killed host recovered (in-process; one Ray test)."""

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
from runkit import summary_of as _summary
from vmmsim.cluster import checkpoint_format as cf
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import load_config
from vmmsim.cluster.host_pool import HostFailure, InProcessPool
from vmmsim.cluster.runner import run
from vmmsim.cluster.session import RunOptions, Session
from vmmsim.cluster.specs import host_policy, host_specs, sim_params

TICKS = 30  # rounds of 5 ticks; --checkpoint-every 8 -> checkpoints at ticks 10, 20, 25
HOST_MB = 18  # overcommitted: balloons and swap are part of the checkpointed state


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """An uninterrupted, checkpointed in-process run (read-only for the tests)."""
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = write_config(tmp, small_config(duration_s=TICKS, host_mb=HOST_MB))
    out = tmp / "run"
    args = ["run", str(cfg), "--out", str(out), "--checkpoint-every", "8", "--inprocess"]
    assert main([*args, "--quiet"]) == 0
    return out


# ---------------------------------------------------------------------------- format
def test_arrays_roundtrip_memory_mapped_without_copies(tmp_path):
    arrays = {
        "content": np.arange(6 * 16, dtype=np.uint8).reshape(6, 16),
        "refcount": np.array([1, 0, 2], np.int32),
        "flags": np.array([True, False, True]),
        "keys": np.array([2**63 + 5], np.uint64),
        "empty": np.zeros(0, np.int32),
    }
    p = tmp_path / "a.arrow"
    cf.write_arrays_file(p, arrays, {"vmmsim.format": cf.FORMAT})
    back, meta = cf.read_arrays_file(p)
    assert meta[b"vmmsim.format"] == cf.FORMAT.encode()
    for k, a in arrays.items():
        assert back[k].dtype == a.dtype and np.array_equal(back[k], a), k
        assert not back[k].flags.owndata and not back[k].flags.writeable  # views of the map
    b = cf.arrays_to_batch(arrays)
    assert str(b.schema.field("content").type) == "large_list<item: fixed_size_binary[16]>"


def test_checkpoints_are_written_where_documented_and_identically(base, tmp_path):
    names = sorted(p.name for p in (base / "checkpoints").iterdir())
    # The first round boundary (every 5 ticks) at or after 8, 16, 24; none at the end.
    assert names == ["t10", "t20", "t25"]
    man = json.loads((base / "checkpoints/t10/manifest.json").read_text())
    assert man["tick"] == 10 and man["config_hash"] == _summary(base)["config_hash"]
    assert set(man["coordinator"]) >= {"tick", "targets", "placement", "round_digests"}
    cfg = write_config(tmp_path, small_config(duration_s=TICKS, host_mb=HOST_MB))
    again = tmp_path / "again"
    run(
        load_config(cfg),
        again,
        backend="inprocess",
        quiet=True,
        opts=RunOptions(checkpoint_every_s=8.0),
    )
    for p in sorted((base / "checkpoints").rglob("*")):
        if p.is_file():
            assert p.read_bytes() == (again / p.relative_to(base)).read_bytes(), p
    assert (base / "metrics.parquet").read_bytes() == (again / "metrics.parquet").read_bytes()


# ---------------------------------------------------------------------------- resume
@pytest.mark.parametrize("tick", ["t10", "t20"])
def test_resume_equals_uninterrupted(base, tmp_path, capsys, tick):
    out = tmp_path / "resumed"
    ck = base / "checkpoints" / tick
    assert main(["resume", str(ck), "--out", str(out), "--inprocess", "--quiet"]) == 0
    assert f"resumed at tick {int(tick[1:])}" in capsys.readouterr().out
    s = _summary(out)
    assert s["final_digest"] == _summary(base)["final_digest"]
    assert s["resumed_from"]["tick"] == int(tick[1:])
    full, part = pq.read_table(base / "metrics.parquet"), pq.read_table(out / "metrics.parquet")
    assert part.equals(full.filter(pc.greater_equal(full["tick"], int(tick[1:]))))


def _damage_flip(ck: Path) -> str:
    p = ck / "host0001.arrow"
    raw = bytearray(p.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    p.write_bytes(bytes(raw))
    return "host0001.arrow: checksum mismatch"


def _damage_truncate(ck: Path) -> str:
    p = ck / "host0000.arrow"
    p.write_bytes(p.read_bytes()[:1000])
    return "host0000.arrow: truncated"


def _damage_missing(ck: Path) -> str:
    (ck / "host0000.arrow").unlink()
    return "host0000.arrow: missing"


def _damage_manifest(ck: Path) -> str:
    p = ck / "manifest.json"
    p.write_text(p.read_text().replace('"tick": 10', '"tick": 15'))
    return "manifest.json: checksum mismatch"


def _rewrite_manifest(ck: Path, change) -> None:
    body = json.loads((ck / "manifest.json").read_text())
    del body["manifest_sha256"]
    change(body)
    (ck / "manifest.json").write_text(cf.manifest_text(body))


def _damage_version(ck: Path) -> str:
    _rewrite_manifest(ck, lambda b: b.update({"vmmsim.format": "vmmsim-checkpoint/99"}))
    return "vmmsim-checkpoint/99"


def _damage_config(ck: Path) -> str:
    """Another run's config, with a manifest made consistent with the new file."""
    p = ck / "config.json"
    cfg = json.loads(p.read_text())
    cfg["policy"]["tax_rate"] = 0.5
    p.write_text(json.dumps(cfg))

    def fix(b):
        b["files"]["config.json"] = {
            "bytes": p.stat().st_size,
            "checksum": cf.file_checksum(p, b["checksum"]),
        }

    _rewrite_manifest(ck, fix)
    return "config hash mismatch"


@pytest.mark.parametrize(
    "damage",
    [
        _damage_flip,
        _damage_truncate,
        _damage_missing,
        _damage_manifest,
        _damage_version,
        _damage_config,
    ],
)
def test_damaged_checkpoint_is_refused_and_out_untouched(base, tmp_path, capsys, damage):
    ck = tmp_path / "t10"
    shutil.copytree(base / "checkpoints/t10", ck)
    expect = damage(ck)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = main(["resume", str(ck), "--out", str(out), "--force", "--inprocess", "--quiet"])
    assert rc == 2
    assert expect in _error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_manifest_names_its_checksum(base, tmp_path, capsys):
    """xxh3-128 block checksums are accepted too; an unknown algorithm is refused."""
    ck = tmp_path / "t20"
    shutil.copytree(base / "checkpoints/t20", ck)

    def to_xxh3(b):
        b["checksum"] = "xxh3_128_blocks"
        for f, info in b["files"].items():
            info["checksum"] = cf.file_checksum(ck / f, "xxh3_128_blocks")

    _rewrite_manifest(ck, to_xxh3)
    out = tmp_path / "out"
    assert main(["resume", str(ck), "--out", str(out), "--inprocess", "--quiet"]) == 0
    assert _summary(out)["final_digest"] == _summary(base)["final_digest"]
    _damage_flip(ck)
    assert main(["resume", str(ck), "--out", str(tmp_path / "o2"), "--inprocess"]) == 2
    assert "host0001.arrow: checksum mismatch" in _error_line(capsys)
    _rewrite_manifest(ck, lambda b: b.update({"checksum": "crc-of-my-own"}))
    assert main(["resume", str(ck), "--out", str(tmp_path / "o3"), "--inprocess"]) == 2
    assert "unknown checksum 'crc-of-my-own'" in _error_line(capsys)


# ---------------------------------------------------------------------------- recovery
def test_killed_host_recovers_from_last_checkpoint(base, tmp_path):
    cfg = write_config(tmp_path, small_config(duration_s=TICKS, host_mb=HOST_MB))
    out = tmp_path / "rec"
    args = ["--checkpoint-every", "8", "--kill-host-at", "h-1:23", "--inprocess", "--quiet"]
    assert main(["run", str(cfg), "--out", str(out), *args]) == 0
    s = _summary(out)
    assert s["final_digest"] == _summary(base)["final_digest"]
    (r,) = s["recoveries"]
    assert r["host"] == "h-1" and r["tick"] == 20 and r["checkpoint"] == "checkpoints/t20"
    assert (out / "metrics.parquet").read_bytes() == (base / "metrics.parquet").read_bytes()


def test_killed_host_without_checkpoint_fails_clearly(tmp_path, capsys):
    cfg = write_config(tmp_path, small_config(duration_s=TICKS, host_mb=HOST_MB))
    out = tmp_path / "rec"
    args = ["--kill-host-at", "h-1:12", "--inprocess", "--quiet"]
    assert main(["run", str(cfg), "--out", str(out), *args]) == 1
    assert "host h-1 failed at tick 12" in _error_line(capsys)  # the injected tick
    assert not out.exists()


def _run_checkpointed(tmp_path, pool_class) -> tuple[dict, list, InProcessPool]:
    """The base run's config, run in-process on ``pool_class`` with a checkpoint every
    8 s; returns (final, metrics tables, pool)."""
    cfg = load_config(write_config(tmp_path, small_config(duration_s=TICKS, host_mb=HOST_MB)))
    sim, pol = sim_params(cfg), host_policy(cfg)
    pool = pool_class([(s, sim, pol) for s in host_specs(cfg)])
    session = Session(cfg, pool, RunOptions(checkpoint_every_s=8.0), tmp_path / "out")
    session.start()
    tables = []
    while not session.done:
        tables += session.advance()
    return session.finish(), tables, pool


def test_hosts_release_free_heap_after_each_checkpoint(tmp_path, monkeypatch):
    """After a checkpoint (its state copies freed once sent), each host hands its free C
    heap back to the OS at the start of its next round -- once per checkpoint, not every
    round."""
    import vmmsim.cluster.host_pool as host_pool

    calls = []
    monkeypatch.setattr(host_pool, "release_free_heap", lambda: calls.append(1))
    _, _, pool = _run_checkpointed(tmp_path, InProcessPool)
    written = len(list((tmp_path / "out" / "checkpoints").glob("t*")))
    assert written >= 2 and len(calls) == written * len(pool.names)


class _FetchingPool(InProcessPool):
    """Hosts as if on another machine: none writes its own checkpoint file."""

    def file_writers(self):
        return set()


@pytest.mark.parametrize("fetch", [False, True], ids=["hosts-write", "fetched"])
def test_failure_while_checkpointing_loses_no_metrics(base, tmp_path, fetch):
    """A host lost during the checkpoint call, after its round ran: that round's rows are
    not lost (it is re-executed with the others since the last checkpoint) -- whether
    the hosts write their files or hand their state over."""
    method = "checkpoint" if fetch else "write_checkpoint"

    class FlakyPool(_FetchingPool if fetch else InProcessPool):
        failed = False

        def call(self, name, args, names=None):
            if name == method and self.tick >= 15 and not self.failed:
                self.failed = True
                raise HostFailure("h-0", self.tick, "lost while checkpointing")
            return super().call(name, args, names)

    final, tables, pool = _run_checkpointed(tmp_path, FlakyPool)
    assert pool.failed
    assert final["final_digest"] == _summary(base)["final_digest"]
    assert final["recoveries"][0]["checkpoint"] == "checkpoints/t10"
    assert pa.concat_tables(tables).equals(pq.read_table(base / "metrics.parquet"))


class _CountingPool(InProcessPool):
    def call(self, method, args, names=None):
        if method in ("checkpoint", "write_checkpoint"):
            self.sizes.setdefault(method, []).append(len(names))
        return super().call(method, args, names)


def _same_host_files(base: Path, out: Path) -> None:
    for t in ("t10", "t20", "t25"):
        files = sorted((base / "checkpoints" / t).glob("host*.arrow"))
        assert len(files) == 2
        for f in files:
            assert (out / "checkpoints" / t / f.name).read_bytes() == f.read_bytes(), f


def test_hosts_write_their_own_checkpoint_files(base, tmp_path):
    """Hosts on the coordinator's machine write their own files (their state does not
    pass through the coordinator), ``write_width()`` hosts at a time."""

    class Pool(_CountingPool):
        sizes: dict[str, list[int]] = {}

        def write_width(self):
            return 2

    _, _, pool = _run_checkpointed(tmp_path, Pool)
    assert pool.sizes == {"write_checkpoint": [2, 2, 2]}  # (2 hosts, 3 checkpoints)
    _same_host_files(base, tmp_path / "out")


def test_fetched_checkpoint_states_come_one_host_at_a_time(base, tmp_path):
    """Hosts elsewhere hand their state over one at a time, each written before the next
    is fetched (the coordinator never holds the whole cluster's state), and the files
    are byte for byte those the hosts write themselves."""

    class Pool(_CountingPool, _FetchingPool):
        sizes: dict[str, list[int]] = {}

    _, _, pool = _run_checkpointed(tmp_path, Pool)
    assert pool.sizes == {"checkpoint": [1] * (3 * len(pool.names))}
    _same_host_files(base, tmp_path / "out")


def test_decisions_are_dropped_once_nothing_can_read_them(tmp_path):
    """A long run's coordinator keeps only the decisions made since the last checkpoint
    (a recovery decides again from there); without checkpoints or a record log, none;
    the count goes on.  Round digests likewise: without checkpoints none are kept, with
    them only those from the round that ended at the last checkpoint on (a recovery
    re-executes from there and compares); the round count goes on."""
    cfg = load_config(write_config(tmp_path, small_config(duration_s=TICKS, host_mb=HOST_MB)))
    sim, pol = sim_params(cfg), host_policy(cfg)
    pool = InProcessPool([(s, sim, pol) for s in host_specs(cfg)])
    plain = Session(cfg, pool, RunOptions(), tmp_path / "plain")
    plain.start()
    kept, digests = [], []
    while not plain.done:
        plain.advance()
        kept.append(len(plain.coord.decision_log.kept))
        digests.append(len(plain.coord.round_log.kept))
    assert plain.coord.decision_log.total > 5 and max(kept) == 0  # nothing can read them again
    assert plain.coord.round_log.total == len(digests) > 5 and max(digests) == 0
    ck = Session(cfg, InProcessPool([(s, sim, pol) for s in host_specs(cfg)]),
                 RunOptions(checkpoint_every_s=8.0), tmp_path / "ck")  # fmt: skip
    ck.start()
    at_checkpoint = 1  # rounds advanced when the last checkpoint was written
    while not ck.done:
        ck.advance()
        # since the last checkpoint:
        assert ck.coord.decision_log.dropped == ck.checkpointer.last_decisions
        if ck.checkpointer.written and ck.checkpointer.written[-1] == ck.coord.tick:
            at_checkpoint = ck.coord.round_log.total
        assert ck.coord.round_log.dropped == at_checkpoint - 1
    assert len(ck.checkpointer.written) >= 2
    assert ck.coord.decision_log.total == plain.coord.decision_log.total
    assert ck.coord.round_log.total == plain.coord.round_log.total


@pytest.mark.ray
def test_killed_host_actor_recovers_on_ray(ray_session, base, tmp_path):
    """A host actor killed mid-run: new actors from the last checkpoint, lost rounds
    re-executed, the record log and the result as if nothing had happened."""
    cfg = load_config(write_config(tmp_path, small_config(duration_s=TICKS, host_mb=HOST_MB)))
    ref = tmp_path / "ref"
    run(cfg, ref, backend="inprocess", quiet=True, opts=RunOptions(record=True))
    out = tmp_path / "ray"
    opts = RunOptions(record=True, checkpoint_every_s=8.0, kill_host_at=("h-0", 14))
    s = run(cfg, out, backend="ray", quiet=True, timeout_s=120, opts=opts)
    assert s["final_digest"] == _summary(base)["final_digest"]
    (r,) = s["recoveries"]
    assert r["host"] == "h-0" and r["checkpoint"] == "checkpoints/t10"
    assert "killed" in r["cause"]
    for name in ("metrics.parquet", "record/accesses.arrows", "record/digests.arrows"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    _same_host_files(base, out)  # written by the host actors themselves


@pytest.mark.ray
def test_a_host_actor_that_cannot_write_its_file_names_the_file(ray_session, tmp_path):
    """A host actor whose checkpoint file cannot be written (here: its directory is
    missing) fails the write with the file named, as a full disk does -- not as a host
    failure to recover from."""
    from vmmsim.cluster.outputs import OutputWriteError
    from vmmsim.cluster.ray_runtime import RayPool

    cfg = load_config(write_config(tmp_path, small_config(duration_s=TICKS, host_mb=HOST_MB)))
    pool = RayPool(cfg.to_dict(), timeout_s=60)
    try:
        assert pool.file_writers() == set(pool.names)  # one machine: every host writes
        path = tmp_path / "missing" / "host0000.arrow"
        meta = cf.host_file_meta("h-0", 0, cfg.config_hash())
        with pytest.raises(OutputWriteError, match=r"cannot write .*host0000\.arrow"):
            pool.call("write_checkpoint", [(str(path), meta, "none")], ["h-0"])
        ok = tmp_path / "host0000.arrow"
        (n,) = pool.call("write_checkpoint", [(str(ok), meta, "zstd")], ["h-0"])
        arrays, file_meta = cf.read_arrays_file(ok)
        assert n == ok.stat().st_size and file_meta[b"vmmsim.host"] == b"h-0" and arrays
    finally:
        pool.close()
