"""Page bytes behind the checks (in-process, no Ray): a verified replay means the same
bytes, a resumed checkpoint must pass its hosts' invariants, and ``--check-invariants``
checks that every guest page reads back what it last wrote.

* a write key edited in ``accesses.arrows`` and re-sealed exactly as the recorder seals
  makes ``vmmsim replay`` fail at the tick of that write (the per-tick digest covers the
  bytes of the pages written in the tick);
* a checkpoint rewritten through the format's own writer (valid checksums) with one
  frame's refcount off by one is refused by ``vmmsim resume`` (exit 2, one line naming
  the checkpoint and the host);
* the page checker of check mode reports one corrupted frame byte that the structural
  invariants do not see, and finds nothing wrong in clean runs (with resume too).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import xxhash
from runkit import error_line as _error_line
from runkit import small_config, write_config
from runkit import summary_of as _summary
from vmmsim.cluster.checkpoint import read_checkpoint, write_checkpoint
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import load_config
from vmmsim.cluster.host_pool import HostFailure, InProcessPool
from vmmsim.cluster.recording import STREAMS, RecordLog, rows_to_batch, table_to_rows
from vmmsim.cluster.sealed_stream import SealedStreamWriter, read_sealed
from vmmsim.cluster.session import RunOptions, Session
from vmmsim.cluster.specs import host_policy, host_specs, sim_params
from vmmsim.hosts import guest_os as gos
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.sharing import index as page_sharing
from vmmsim.hosts.vm import vm_page_contents, vm_page_hashes

TICKS = 30  # rounds of 5 ticks (small_config: realloc_period_s = 5)
HOST_MB = 18  # overcommitted: balloons and swap happen
FMT = "vmmsim-record/1"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A recorded run and a checkpointed run of the same config (read-only: copy first)."""
    tmp = tmp_path_factory.mktemp("bytes")
    cfg = write_config(tmp, small_config(duration_s=TICKS, host_mb=HOST_MB))
    rec, ck = tmp / "rec", tmp / "ck"
    base = ["run", str(cfg), "--inprocess", "--quiet"]
    assert main([*base, "--out", str(rec), "--record"]) == 0
    assert main([*base, "--out", str(ck), "--checkpoint-every", "8"]) == 0
    return {"config": cfg, "rec": rec, "ck": ck}


# ---------------------------------------------------------------------------- replay
def _reseal_accesses(path: Path, rows) -> None:
    """Rewrite ``accesses.arrows`` holding ``rows`` the way the Recorder writes it: one
    batch per round (rows of ticks since the previous seal), sealed at the round's end."""
    st = read_sealed(path, STREAMS["accesses"], FMT)
    w = SealedStreamWriter(path, st.schema)
    prev = 0
    for end in st.ticks:
        idx = np.flatnonzero((rows.tick >= prev) & (rows.tick < end))
        if len(idx):
            w.write(rows_to_batch(rows.take(idx)))
        w.seal(end)
        prev = end
    w.close()


def _a_write_to_edit(rows) -> tuple[int, int]:
    """(row, position in ``rows.writes``) of a non-zero key written once in its step,
    by a busy VM, after the boot round."""
    for i in range(len(rows)):
        if not rows.vm[i].startswith("busy") or rows.tick[i] < 6:
            continue
        w0, w1 = int(rows.write_off[i]), int(rows.write_off[i + 1])
        pages = rows.writes[w0:w1]
        for j in range(w1 - 1, w0 - 1, -1):
            if rows.write_keys[j] != 0 and np.count_nonzero(pages == rows.writes[j]) == 1:
                return i, j
    raise AssertionError("no write to edit in the recorded run")


def test_resealed_edit_of_one_write_key_fails_replay_at_its_tick(runs, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(runs["rec"], run)
    path = run / "record/accesses.arrows"
    rows = table_to_rows(RecordLog.open(run).accesses)
    _reseal_accesses(path, rows)  # the re-sealing is exact: same bytes when unchanged
    assert path.read_bytes() == (runs["rec"] / "record/accesses.arrows").read_bytes()

    i, j = _a_write_to_edit(rows)
    keys = rows.write_keys.copy()
    keys[j] ^= np.uint64(0x5DEECE66D)  # another page content, still not the zero page
    _reseal_accesses(path, dataclasses.replace(rows, write_keys=keys))
    RecordLog.open(run)  # still a valid, verified log: only the content of one write differs

    assert main(["replay", str(run), "--inprocess", "--quiet"]) == 1
    line = _error_line(capsys)
    m = re.search(r"replay diverged at tick (\d+) on host (\S+):", line)
    assert m, line
    assert int(m.group(1)) == int(rows.tick[i]), (line, int(rows.tick[i]))


def test_untampered_replay_still_verifies(runs, capsys):
    assert main(["replay", str(runs["rec"]), "--inprocess", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"replay verified: {TICKS} ticks, digests identical"


def test_recorded_tick_digest_is_the_state_digest_plus_written_bytes(runs):
    """After tick 9 (end of round 1) the recorded tick digest of each host differs from
    the state-only digest that run reported for that round (kept in the checkpoint at
    tick 10 of the same run): the tick's written pages' bytes are folded in."""
    log = RecordLog.open(runs["rec"])
    ticks = log.tick_digests()
    ck = read_checkpoint(runs["ck"] / "checkpoints" / "t10")
    state_only = ck.coordinator["round_digests"][-1]  # rounds of 5 ticks: 0-4, 5-9
    for h, d in state_only.items():
        assert ticks[(9, h)] != d, h


# ---------------------------------------------------------------------------- resume
def _tampered_checkpoint(src: Path, root: Path) -> tuple[Path, str]:
    """``src`` rewritten by the checkpoint writer with one used frame's refcount + 1 on
    the first host (checksums and manifest all valid); (its path, that host)."""
    ck = read_checkpoint(src)
    host = next(iter(ck.hosts))
    hosts = {h: ({k: np.array(v) for k, v in a.items()}, m) for h, (a, m) in ck.hosts.items()}
    rc = hosts[host][0]["frames.refcount"]
    f = int(np.flatnonzero(rc > 0)[0])
    rc[f] += 1
    return write_checkpoint(root, ck.cfg, ck.coordinator, hosts), host


def test_resume_refuses_a_checkpoint_that_fails_invariants(runs, tmp_path, capsys):
    src = sorted((runs["ck"] / "checkpoints").iterdir())[0]
    bad, host = _tampered_checkpoint(src, tmp_path / "checkpoints")
    read_checkpoint(bad)  # checksums hold: only the invariant check can refuse it
    out = tmp_path / "out"
    assert main(["resume", str(bad), "--out", str(out), "--inprocess", "--quiet"]) == 2
    line = _error_line(capsys)
    assert str(bad) in line and f"host {host}:" in line, line
    assert "check_invariants" in line and "refcount" in line, line
    assert not out.exists()


@pytest.mark.parametrize("check", [False, True])
def test_resume_with_and_without_check_invariants_equals_uninterrupted(
    runs, tmp_path, capsys, check
):
    src = sorted((runs["ck"] / "checkpoints").iterdir())[0]
    out = tmp_path / "out"
    args = ["resume", str(src), "--out", str(out), "--inprocess", "--quiet"]
    assert main([*args, *(["--check-invariants"] if check else [])]) == 0
    assert _summary(out)["final_digest"] == _summary(runs["ck"])["final_digest"]


# ---------------------------------------------------------------------------- page checker
def _check_session(cfg_path: Path) -> tuple[Session, InProcessPool]:
    """What ``run --inprocess --check-invariants`` builds (cluster/runner.py)."""
    cfg = load_config(cfg_path)
    opts = RunOptions(check_pages=True)
    sim, pol = sim_params(cfg), host_policy(cfg)
    pool = InProcessPool([(s, sim, pol) for s in host_specs(cfg)], opts.host_mode())
    session = Session(cfg, pool, opts, None)
    session.start()
    return session, pool


def test_page_checker_reports_a_corrupted_frame_byte(runs):
    session, pool = _check_session(runs["config"])
    for _ in range(2):
        session.advance()
        assert session.coord.check_invariants() == 4  # every VM's pages checked
    host = pool.runtimes["h-0"].host
    vm = host.vms[host.order[0]]
    g, pm = vm.guest, vm.pmap
    # A resident virtual page on a private frame (the structural checks cannot see it).
    private = (pm.state == ps.MAPPED) & (host.mem.index.kind[pm.loc] == page_sharing.NONE)
    vpn = next(v for v in np.flatnonzero(g.vstate == gos.RESIDENT).tolist() if private[g.v2p[v]])
    frame = int(pm.loc[g.v2p[vpn]])
    host.mem.frames.content[frame, 3] ^= 0x40
    pool.call("check_invariants", [()] * 2)  # structure intact: only the bytes are wrong
    with pytest.raises(HostFailure) as e:
        session.coord.check_invariants()
    msg = str(e.value)
    assert "host h-0" in msg and f"VM {vm.name}:" in msg, msg
    assert f"virtual pages [{vpn}]" in msg and "1 guest pages" in msg, msg


def test_check_mode_finds_nothing_and_gives_the_same_run(runs, tmp_path):
    out = tmp_path / "checked"
    args = ["run", str(runs["config"]), "--out", str(out), "--inprocess", "--quiet"]
    assert main([*args, "--check-invariants"]) == 0
    assert _summary(out)["final_digest"] == _summary(runs["ck"])["final_digest"]


def test_page_hashes_are_the_xxh3_of_what_the_guest_reads(runs):
    """vm_page_hashes (the per-tick digest's part) hashes exactly vm_page_contents's
    bytes, in every state a page can be in on an overcommitted host."""
    session, pool = _check_session(runs["config"])
    for _ in range(4):
        session.advance()
    states = set()
    for rt in pool.runtimes.values():
        host = rt.host
        for vm in host.vms.values():
            vpns = np.arange(vm.spec.n_pages, dtype=np.int64)
            got = vm_page_hashes(vm, host.mem, vpns[::-1])[::-1]
            rows = vm_page_contents(vm, host.mem)
            assert got.tolist() == [xxhash.xxh3_64_intdigest(r.tobytes()) for r in rows]
            states |= set(np.unique(vm.guest.vstate).tolist())
    assert {gos.NEVER, gos.RESIDENT} <= states, states
