"""The command line as a new user meets it (issue 17): a closed pipe, ``--version`` and a
bare ``vmmsim``, replay/resume of a run that has no record log or checkpoint, the
migrations and warnings among a run's last lines, what ``validate`` says about each host.
In-process runs only (no Ray)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest
from runkit import run_inprocess, small_config, write_config
from vmmsim.cluster.cli import main


def cli(*args: str, close_stdout: bool = False) -> tuple[int, str, str]:
    """Run ``vmmsim ARGS`` in a subprocess; ``close_stdout``: its reader is gone at once
    (``vmmsim ... | head`` once head has exited)."""
    p = subprocess.Popen(
        [sys.executable, "-m", "vmmsim.cluster.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if close_stdout:
        p.stdout.close()
        err = p.stderr.read()
        return p.wait(timeout=120), "", err
    out, err = p.communicate(timeout=120)
    return p.returncode, out, err


@pytest.mark.parametrize("args", [["schema"], ["schema", "--markdown"], ["validate", "CFG"]])
def test_output_to_a_closed_pipe_exits_quietly(tmp_path, args):
    cfg = write_config(tmp_path, small_config())
    code, _, err = cli(*[str(cfg) if a == "CFG" else a for a in args], close_stdout=True)
    assert err == "", err  # no BrokenPipeError traceback, no "Exception ignored"
    assert code == 141  # 128 + SIGPIPE, as a filter killed by the signal


def test_version():
    code, out, err = cli("--version")
    assert code == 0 and out.strip() == f"vmmsim {importlib.metadata.version('vmmsim')}", err


@pytest.mark.parametrize("args", [[], ["trace"]])
def test_bare_command_prints_the_usage_with_the_commands(args):
    code, out, err = cli(*args)
    assert code == 2 and out == ""
    assert "required" not in err and err.startswith("usage: vmmsim")
    names = ("convert", "export") if args else ("run", "validate", "replay", "resume", "report")
    for name in names:
        assert f"\n    {name} " in err, err


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """A run written without --record and without --checkpoint-every."""
    return run_inprocess(tmp_path_factory.mktemp("plain"), small_config(duration_s=10))


def test_replay_of_a_run_without_record_says_how_to_record(plain_run, tmp_path, capsys):
    _, run = plain_run
    assert main(["replay", str(run), "--inprocess", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" not in err
    assert "not recorded" in err and "--record" in err and "vmmsim run" in err, err


def test_resume_of_a_run_directory_lists_its_checkpoints(plain_run, tmp_path, capsys):
    _, plain = plain_run
    assert main(["resume", str(plain), "--out", str(tmp_path / "x"), "--inprocess"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "manifest.json" not in err
    assert "no checkpoints" in err and "--checkpoint-every" in err, err

    ck, cfg = tmp_path / "ck", write_config(tmp_path, small_config(duration_s=16))
    args = ["run", str(cfg), "--out", str(ck), "--inprocess", "--quiet", "--checkpoint-every", "4"]
    assert main(args) == 0
    capsys.readouterr()
    found = sorted(p.name for p in (ck / "checkpoints").iterdir())
    assert len(found) >= 2, found  # every 5 s: a reallocation round
    for where in (ck, ck / "checkpoints"):
        assert main(["resume", str(where), "--out", str(tmp_path / "x"), "--inprocess"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "manifest.json" not in err, err
        for name in found:
            assert str(ck / "checkpoints" / name) in err, err
    assert not (tmp_path / "x").exists()


MIGRATING = """
[simulation]
seed = 7
duration_s = 12
content_bytes = 128

[policy]
vm_overhead_mb = 0

[[hosts]]
name = "h"
count = 2
memory_mb = 24
swap_mb = 40

[[hosts]]
name = "big"
memory_mb = 96
swap_mb = 64

[[vms]]
name = "a"
memory_mb = 16
host = "h-0"

[[vms]]
name = "b"
count = 2
memory_mb = 16
host = "h-1"
[vms.workload]
kind = "steady"
wss_mb = 20

[[vms]]
name = "c"
memory_mb = 8
host = "h-0"

[[migrations]]
time_s = 3
vm = "c"
to = "big"

[[migrations]]
time_s = 6
vm = "a"
to = "h-1"
"""


def test_last_lines_summarise_migrations_and_warnings(tmp_path, capsys):
    """A refused scheduled migration is no longer silent: counts, then each migration
    with the refusal's reason; the config's warnings come again at the end."""
    cfg = write_config(tmp_path, MIGRATING)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet"]) == 0
    res = capsys.readouterr()
    lines = res.out.splitlines()
    assert lines[1] == f"vmmsim: migrations: 1 completed, 1 refused ({out}/migrations.parquet)"
    refused = next(ln for ln in lines if " a h-0 -> h-1 " in ln)
    assert "scheduled a h-0 -> h-1 at 6 s: refused: not enough free memory" in refused
    assert any("scheduled c h-0 -> big at 3 s: completed in" in ln for ln in lines)
    warnings = [ln for ln in res.err.splitlines() if ln.startswith("vmmsim: warning:")]
    assert any("vms.b.workload.wss_mb" in w for w in warnings)
    assert any("hosts.h-1" in w and "working sets" in w for w in warnings)
    assert warnings[-1].endswith("(repeated)")  # the last lines, after the run


def test_run_without_migrations_prints_no_migration_line(plain_run, capsys):
    cfg, _ = plain_run
    out = cfg.parent / "again"
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet"]) == 0
    assert "migrations" not in capsys.readouterr().out


OVERFULL = """
[simulation]
duration_s = 4

[policy]
vm_overhead_mb = 0

[[hosts]]
name = "h"
memory_mb = 64
swap_mb = 2

[[vms]]
name = "v"
count = 2
memory_mb = 32
min_mb = 31
host = "h"
[vms.workload]
kind = "steady"
wss_mb = 40
"""


def test_validate_shows_each_hosts_commitment_and_warnings(tmp_path, capsys):
    cfg = write_config(tmp_path, MIGRATING)
    assert main(["validate", str(cfg)]) == 0
    res = capsys.readouterr()
    doc = json.loads(res.out)
    h1 = doc["hosts"]["h-1"]
    assert h1["committed_mb"] == 32 and h1["overcommit"] == pytest.approx(32 / 24, abs=1e-4)
    assert h1["working_set_mb"] == 32  # 2 x wss 20 MB, clamped to the 16 MB VMs
    assert len(h1["warnings"]) == 1 and "working sets" in h1["warnings"][0]
    assert doc["hosts"]["big"]["warnings"] == []
    assert "vms.b.workload.wss_mb: 20 MB is larger than the VM's memory_mb" in doc["warnings"][0]
    assert "vmmsim: h-1: 2 VMs, committed 32 MB on 24 MB memory (overcommit 1.33x)" in res.err
    assert f"vmmsim: warning: {h1['warnings'][0]}" in res.err

    # Admitted (reservations fit, swap covers the rest) but no room for the free reserve.
    cfg = write_config(tmp_path, OVERFULL, "overfull.toml")
    assert main(["validate", str(cfg)]) == 0
    h = json.loads(capsys.readouterr().out)["hosts"]["h"]
    assert h["committed_mb"] == 64 and len(h["warnings"]) == 1
    assert "exceed what it holds in practice (62.16 MB" in h["warnings"][0], h["warnings"]
