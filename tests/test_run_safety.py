"""``vmmsim run`` is safe on every exit path: bad ``--out``, failed hosts, signals, disk full.

Every case checks: the exit status, ONE line on stderr (no traceback), no partial
directory left, and a finished run already in ``--out`` untouched.  Processes are real
subprocesses and signals are real signals; "disk full" is a real full filesystem (a
small tmpfs mounted for the test: this suite runs as root in CI) and "read-only" a
read-only tmpfs mount.  Where mounting is impossible the disk-full cases fall back to
injecting ``OSError(ENOSPC)`` at the file-write layer (``_enospc_fallback``), so they never
skip.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runkit import small_config, write_config
from vmmsim.cluster.cli import main

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def vmmsim(
    *args: str, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vmmsim.cluster.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=ENV,
    )


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def partials(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name)


def finished_run(tmp_path: Path, cfg: Path) -> tuple[Path, dict[str, bytes]]:
    """A finished run in ``tmp_path/keep`` and its files' bytes (to check it stays)."""
    keep = tmp_path / "keep"
    assert main(["run", str(cfg), "--out", str(keep), "--inprocess", "--quiet"]) == 0
    return keep, {p.name: p.read_bytes() for p in keep.iterdir()}


def unchanged(keep: Path, before: dict[str, bytes]) -> bool:
    return {p.name: p.read_bytes() for p in keep.iterdir()} == before


# ---------------------------------------------------------------- --out checked up front
@pytest.mark.parametrize("out", [".", "..", "/", "afile/sub", "/proc/vmmsim-x"])
def test_bad_out_refused_before_running(tmp_path, out):
    """``--out`` that cannot become a run directory: exit 2, one line, nothing written,
    and nothing simulated (a run of 10^6 ticks would time out if it started)."""
    work = tmp_path / "work"
    work.mkdir()
    write_config(work, small_config(duration_s=1_000_000))
    (work / "afile").write_text("x")
    before = sorted(os.listdir(work))
    t0 = time.perf_counter()
    r = vmmsim("run", "exp.toml", "--out", out, "--inprocess", "--quiet", "--force", cwd=work)
    assert r.returncode == 2, r.stderr
    line = one_line(r.stderr)
    assert line.startswith(f"vmmsim: error: --out {out}:"), line
    assert time.perf_counter() - t0 < 60
    assert sorted(os.listdir(work)) == before
    assert sorted(os.listdir(tmp_path)) == ["work"]


@pytest.fixture
def mount_dir(tmp_path):
    """Mount a tmpfs (``opts``) on a fresh directory; unmounted after the test.  Returns
    None where mounting is not possible."""
    mounted = []

    def mount(opts: str) -> Path | None:
        d = tmp_path / f"mnt{len(mounted)}"
        d.mkdir()
        try:
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True
            )
        except OSError:  # no mount command
            return None
        if r.returncode != 0 or os.environ.get("VMMSIM_TEST_NO_MOUNT"):
            if r.returncode == 0:
                subprocess.run(["umount", "-l", str(d)], capture_output=True)
            return None
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_out_on_read_only_filesystem(tmp_path, mount_dir):
    cfg = write_config(tmp_path, small_config(duration_s=1_000_000))
    ro = mount_dir("ro,size=1m")
    if ro is None:  # no mount: a directory whose parent is a file is unwritable too
        ro = tmp_path / "afile"
        ro.write_text("x")
    r = vmmsim("run", str(cfg), "--out", str(ro / "run"), "--inprocess", "--quiet")
    assert r.returncode == 2, r.stderr
    line = one_line(r.stderr)
    assert f"--out {ro / 'run'}" in line


def test_replay_resume_and_sweep_check_out_first(tmp_path):
    cfg = write_config(tmp_path, small_config(duration_s=20))
    rec = tmp_path / "rec"
    args = ["--inprocess", "--quiet", "--record", "--checkpoint-every", "10"]
    assert main(["run", str(cfg), "--out", str(rec), *args]) == 0
    (tmp_path / "afile").write_text("x")
    bad = str(tmp_path / "afile" / "sub")
    ckpt = next((rec / "checkpoints").iterdir())
    sweep_cfg = write_config(
        tmp_path,
        small_config(duration_s=20) + "\n[sweep]\n'policy.tax_rate' = [0.0, 0.5]\n",
        "s.toml",
    )
    for cmd in (
        ["replay", str(rec), "--out", bad, "--set", "policy.tax_rate=0.5"],
        ["resume", str(ckpt), "--out", bad],
        ["run", str(sweep_cfg), "--out", bad],
        ["run", str(sweep_cfg), "--out", "."],
    ):
        r = vmmsim(*cmd, "--inprocess", "--quiet", cwd=tmp_path / "rec")
        assert r.returncode == 2, (cmd, r.stderr)
        assert "--out" in one_line(r.stderr)
    assert partials(tmp_path) == [] and partials(rec) == []


# ---------------------------------------------------------------- failed hosts
def test_inprocess_host_failure_is_one_line_with_the_injected_tick(tmp_path):
    """--kill-host-at h-0:22 (mid-round: rounds are 5 ticks) names tick 22, not the
    round's first tick; exit 1; the finished run in --out is untouched."""
    cfg = write_config(tmp_path, small_config())
    keep, before = finished_run(tmp_path, cfg)
    r = vmmsim(
        "run",
        str(cfg),
        "--out",
        str(keep),
        "--force",
        "--inprocess",
        "--quiet",
        "--kill-host-at",
        "h-0:22",
    )
    assert r.returncode == 1, r.stderr
    assert one_line(r.stderr) == (
        "vmmsim: error: host h-0 failed at tick 22: host killed (fault injection)"
    )
    assert unchanged(keep, before) and partials(tmp_path) == []


@pytest.mark.ray
def test_ray_host_failure_is_the_same_line(tmp_path):
    cfg = write_config(tmp_path, small_config())
    keep, before = finished_run(tmp_path, cfg)
    r = vmmsim(
        "run", str(cfg), "--out", str(keep), "--force", "--quiet", "--kill-host-at", "h-0:22"
    )
    assert r.returncode == 1, r.stderr
    assert one_line(r.stderr) == (
        "vmmsim: error: host h-0 failed at tick 22: host killed (fault injection)"
    )
    assert unchanged(keep, before) and partials(tmp_path) == []


def test_exception_inside_a_host_is_a_host_failure(tmp_path, monkeypatch):
    """An error raised inside a host method (in-process) is the same one line and exit 1
    as with Ray, where the actor's exception becomes a HostFailure."""
    from vmmsim.hosts.host_manager import HostMemoryManager

    cfg = write_config(tmp_path, small_config())
    keep, before = finished_run(tmp_path, cfg)
    real = HostMemoryManager.run_ticks

    def broken(self, start, n):
        if start >= 10:
            raise ValueError("boom inside the host")
        return real(self, start, n)

    monkeypatch.setattr(HostMemoryManager, "run_ticks", broken)
    rc = main(["run", str(cfg), "--out", str(keep), "--force", "--inprocess", "--quiet"])
    assert rc == 1
    assert unchanged(keep, before) and partials(tmp_path) == []


def test_exception_inside_a_host_cli_line(tmp_path, capsys, monkeypatch):
    from vmmsim.hosts.host_manager import HostMemoryManager

    cfg = write_config(tmp_path, small_config())

    def broken(self, start, n):
        raise ValueError("boom inside the host")

    monkeypatch.setattr(HostMemoryManager, "run_ticks", broken)
    assert main(["run", str(cfg), "--out", str(tmp_path / "o"), "--inprocess", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert one_line(err) == (
        "vmmsim: error: host h-0 failed at tick 0: ValueError: boom inside the host"
    )
    assert not (tmp_path / "o").exists() and partials(tmp_path) == []


# ---------------------------------------------------------------- signals
def _start(cfg: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vmmsim.cluster.cli",
            "run",
            str(cfg),
            "--out",
            str(out),
            "--force",
            "--quiet",
            *extra,
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )


def _wait_partial(parent: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not partials(parent):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_inprocess_removes_partial_and_exits(tmp_path, sig, code):
    cfg = write_config(tmp_path, small_config())
    keep, before = finished_run(tmp_path, cfg)
    long_cfg = write_config(tmp_path, small_config(duration_s=100_000), "long.toml")
    p = _start(long_cfg, keep, "--inprocess")
    _wait_partial(tmp_path, p)
    time.sleep(1.0)  # well inside the simulation
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == code, err
    word = "terminated" if sig == signal.SIGTERM else "interrupted"
    assert one_line(err) == (
        f"vmmsim: {word} ({signal.Signals(sig).name}); nothing was written to --out"
    )
    assert partials(tmp_path) == []
    assert unchanged(keep, before)


def _ray_descendants(pid: int) -> set[int]:
    from vmmsim.cluster.ray_runtime import _proc_table

    table = _proc_table()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for q, (ppid, _, cmd) in table.items():
            if ppid == p:
                todo.append(q)
                if "ray" in cmd:
                    found.add(q)
    return found


def _alive(pids: set[int]) -> set[int]:
    from vmmsim.cluster.ray_runtime import _proc_table

    table = _proc_table()
    return {p for p in pids if p in table}


@pytest.mark.ray
@pytest.mark.parametrize("when", ["startup", "running"])
def test_sigterm_with_ray_shuts_down_everything(tmp_path, when):
    """SIGTERM with embedded Ray, during start-up (the raylet and its agents exist, the
    run has not begun) or mid-run: exit 143, one line, partial removed, and every Ray
    process vmmsim started -- the dashboard and runtime-env agents included -- gone
    within a few seconds of the exit."""
    cfg = write_config(tmp_path, small_config(duration_s=100_000))
    out = tmp_path / "run"
    p = _start(cfg, out)
    _wait_partial(tmp_path, p)
    deadline = time.monotonic() + 120
    seen: set[int] = set()
    while True:  # wait for the agents (start-up) or for the host actors (running)
        seen |= _ray_descendants(p.pid)
        names = " ".join(_cmdline(q) for q in seen)
        ready = "agent" in names if when == "startup" else "HostActor" in names or len(seen) > 8
        if ready:
            break
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, names
        time.sleep(0.05)
    if when == "running":
        time.sleep(3)
        seen |= _ray_descendants(p.pid)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert one_line(err) == "vmmsim: terminated (SIGTERM); nothing was written to --out"
    assert partials(tmp_path) == [] and not out.exists()
    deadline = time.monotonic() + 10
    while _alive(seen) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(seen), {q: _cmdline(q) for q in _alive(seen)}


SHUTDOWN_ORDER = r"""
import ray
from vmmsim.cluster import ray_runtime as rr
rr.init_ray(num_cpus=1)
node = ray._private.worker._global_node
monitor = node.all_processes["monitor"][0].process
raylet = node.all_processes["raylet"][0].process
real = ray.shutdown
def shutdown(*a, **k):
    print("at ray.shutdown: monitor", "gone" if monitor.poll() is not None else "alive",
          "raylet", "gone" if raylet.poll() is not None else "alive")
    return real(*a, **k)
ray.shutdown = shutdown
rr.shutdown_ray()
print("after: monitor", monitor.poll() is not None, "raylet", raylet.poll() is not None)
"""


def _python(script: str, env: dict[str, str] = ENV) -> subprocess.CompletedProcess:
    """Run ``script`` with ``python -c`` (its own process, its own Ray); it must succeed."""
    r = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.mark.ray
def test_shutdown_ends_the_autoscaler_monitor_first():
    """Ray stops its daemons one by one, SIGTERM then up to 1 s each; the monitor never
    goes within that second, so vmmsim ends it before ``ray.shutdown`` (the rest of Ray
    still running then), and everything is gone after."""
    r = _python(SHUTDOWN_ORDER)
    lines = r.stdout.splitlines()
    assert "at ray.shutdown: monitor gone raylet alive" in lines, r.stdout
    assert lines[-1] == "after: monitor True raylet True", r.stdout


LEAN_START = r"""
import os, ray
from ray._private.node import Node
from vmmsim.cluster import ray_runtime as rr
from ray._private import services
before = (Node.start_api_server, services.get_node)
with rr._lean_embedded_start(False):
    print("inactive patch leaves Ray alone:", (Node.start_api_server, services.get_node) == before)
polled = []
real_wait = rr._wait_until_registered
def spy(address, node_id, wait_s=10.0):
    polled.append((node_id, real_wait(address, node_id, wait_s)))
    return polled[-1][1]
rr._wait_until_registered = spy
rr.init_ray(num_cpus=1)
print("restored after init:", (Node.start_api_server, services.get_node) == before)
print("node seen by polling:", polled == [(ray.get_runtime_context().get_node_id(), True)])
gcs = rr._global_node().gcs_address
print("an unknown node is not seen:", real_wait(gcs, "ab" * 28, wait_s=0.2))
print("gpus:", ray.cluster_resources().get("GPU", 0))
node = ray._private.worker._global_node
print("process types:", " ".join(sorted(node.all_processes)))
kids = [open(f"/proc/{p}/cmdline", "rb").read() for p in rr._ray_descendants()]
print("dashboard head running:", any(b"dashboard/dashboard.py" in k for k in kids))
raylet = node.all_processes["raylet"][0].process.pid
env = open(f"/proc/{raylet}/environ", "rb").read().split(b"\0")
print("raylet retry:", sorted(e.decode() for e in env if e.startswith(b"RAY_raylet_client_")))
@ray.remote
def f():
    return 42
print("a task runs:", ray.get(f.remote()))
rr.shutdown_ray()
"""


@pytest.mark.ray
def test_embedded_ray_starts_lean():
    """Embedded Ray starts no dashboard head (Ray starts one even with
    ``include_dashboard=False`` and waits for it before the raylet), the driver waits for
    its raylet by polling every 20 ms (Ray's own wait sleeps 1 s), Ray's functions are
    left as they were, the raylet retries its object-store connection every 50 ms, not
    1 s, and no GPU is probed for."""
    env = {k: v for k, v in ENV.items() if not k.startswith("RAY_raylet_client_")}
    r = _python(LEAN_START, env)
    out = r.stdout.splitlines()
    assert "inactive patch leaves Ray alone: True" in out, r.stdout
    assert "restored after init: True" in out, r.stdout
    assert "node seen by polling: True" in out, r.stdout
    assert "an unknown node is not seen: False" in out, r.stdout
    assert "gpus: 0" in out, r.stdout
    types = next(x for x in out if x.startswith("process types:")).split()[2:]
    assert "raylet" in types and "gcs_server" in types and "dashboard" not in types, r.stdout
    assert "dashboard head running: False" in out, r.stdout
    assert (
        "raylet retry: ['RAY_raylet_client_connect_timeout_milliseconds=50', "
        "'RAY_raylet_client_num_connect_attempts=200']" in out
    ), r.stdout
    assert "a task runs: 42" in out, r.stdout


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_stale_partial_of_a_killed_run_is_removed_by_the_next_run(tmp_path):
    """SIGKILL cannot be cleaned up after; the next run into the same parent removes the
    ``.NAME.partial-PID`` directories of dead PIDs -- and nothing else."""
    cfg = write_config(tmp_path, small_config())
    long_cfg = write_config(tmp_path, small_config(duration_s=100_000), "long.toml")
    p = _start(long_cfg, tmp_path / "a", "--inprocess")
    _wait_partial(tmp_path, p)
    p.kill()
    p.wait()
    stale = partials(tmp_path)
    assert stale == [f".a.partial-{p.pid}"]
    live = tmp_path / f".b.partial-{os.getppid()}"  # a live PID: kept
    live.mkdir()
    other = tmp_path / ".c.partial-x"  # not vmmsim's pattern: kept
    other.mkdir()
    lookalike = tmp_path / ".d.partial-999999999"  # a file, not a directory: kept
    lookalike.write_text("x")
    assert main(["run", str(cfg), "--out", str(tmp_path / "new"), "--inprocess", "--quiet"]) == 0
    assert not (tmp_path / stale[0]).exists()
    assert live.is_dir() and other.is_dir() and lookalike.is_file()


# ---------------------------------------------------------------- disk full
def _fill_case(tmp_path: Path, mount_dir, monkeypatch, size: str, extra: list[str], name: str):
    cfg = write_config(tmp_path, small_config())
    full = mount_dir(f"size={size}")
    if full is None:
        _enospc_fallback(tmp_path, monkeypatch, cfg, extra, name)
        return
    keep = full / "keep"
    keep.mkdir()
    (keep / "summary.json").write_text("{}")  # a "finished run" that must stay
    r = vmmsim("run", str(cfg), "--out", str(keep), "--force", "--inprocess", "--quiet", *extra)
    assert r.returncode == 1, r.stderr
    line = one_line(r.stderr)
    assert line.startswith("vmmsim: error: cannot write ") and name in line, line
    assert "no space left on device" in line
    assert partials(full) == []
    assert sorted(os.listdir(keep)) == ["summary.json"]


def _enospc_fallback(tmp_path: Path, monkeypatch, cfg: Path, extra: list[str], name: str):
    """No tmpfs (mount not permitted): inject ``OSError(ENOSPC)`` where ``name`` is
    written (the file-write layer: pyarrow's writers, ``open``)."""
    import builtins

    import vmmsim.cluster.checkpoint as ck
    import vmmsim.cluster.outputs as outputs

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    if name == "metrics.parquet":
        monkeypatch.setattr(outputs.pq, "ParquetWriter", full)
    elif name == ".arrow":
        monkeypatch.setattr(ck.cf, "write_arrays_file", full)
    else:
        real_open = builtins.open

        def fake_open(path, mode="r", *a, **k):
            if name in str(path) and "w" in mode:
                full()
            return real_open(path, mode, *a, **k)

        monkeypatch.setattr(builtins, "open", fake_open)
    out = tmp_path / "o"
    rc = main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet", *extra])
    monkeypatch.undo()
    assert rc == 1 and partials(tmp_path) == [] and not out.exists()


def test_disk_full_writing_metrics(tmp_path, mount_dir, monkeypatch):
    _fill_case(tmp_path, mount_dir, monkeypatch, "16k", [], "metrics.parquet")


def test_disk_full_writing_record_log(tmp_path, mount_dir, monkeypatch):
    _fill_case(tmp_path, mount_dir, monkeypatch, "256k", ["--record"], "record/accesses.arrows")


def test_disk_full_writing_checkpoint(tmp_path, mount_dir, monkeypatch):
    _fill_case(tmp_path, mount_dir, monkeypatch, "256k", ["--checkpoint-every", "10"], ".arrow")


def test_failed_run_removes_the_parent_directories_it_created(tmp_path):
    """``--out new/deeper/run`` creates ``new/deeper``; a failed run removes them again
    (nothing written), a directory that existed before stays."""
    cfg = write_config(tmp_path, small_config())
    out = tmp_path / "new" / "deeper" / "run"
    args = ["--inprocess", "--quiet", "--kill-host-at", "h-0:3"]
    assert main(["run", str(cfg), "--out", str(out), *args]) == 1
    assert sorted(os.listdir(tmp_path)) == ["exp.toml"]


def test_signal_during_commit_is_held_until_the_run_is_in_place(tmp_path, monkeypatch):
    """SIGTERM between the two renames of a commit (old run aside, new run in) arrives
    only once the new run is in place and the old one removed: never a missing --out."""
    from vmmsim.cluster.outputs import AsideDir
    from vmmsim.cluster.runner import Terminated, signals_as_exceptions

    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("old")
    d = AsideDir(out, force=True)
    (d.tmp / "summary.json").write_text("new")
    real = Path.rename

    def rename(self, target):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(Terminated), signals_as_exceptions():
        d.commit()
    monkeypatch.undo()
    assert (out / "summary.json").read_text() == "new"
    assert sorted(os.listdir(tmp_path)) == ["out"]
