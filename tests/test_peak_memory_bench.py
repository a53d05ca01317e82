"""``bench/peak_memory.py``'s memory-over-time series, kept honest on a small command
whose memory grows at a known rate and one whose memory stays put (the day run's "memory
flat" is measured with it; the run itself is minutes, not a CI test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GROW = (
    "import time\nx = []\nfor _ in range({n}):\n"
    "    x.append(bytearray({mb} * 2**20))\n    x[-1][::4096] = b'x' * len(x[-1][::4096])\n"
    "    time.sleep(0.05)\n"
)


def _measure(tmp_path: Path, mb: int) -> tuple[dict, list[dict]]:
    series = tmp_path / f"series{mb}.jsonl"
    cmd = [sys.executable, str(ROOT / "bench" / "peak_memory.py"), "--series", str(series)]
    cmd += ["--every", "0.1", "--", sys.executable, "-c", GROW.format(n=40, mb=mb)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    report = json.loads(r.stderr.strip().splitlines()[-1])
    return report, [json.loads(line) for line in series.read_text().splitlines()]


def test_series_and_growth_of_a_growing_and_a_flat_process(tmp_path: Path) -> None:
    grows, samples = _measure(tmp_path, 2)  # +2 MB every ~0.05 s: ~1,000+ MB per minute
    assert len(samples) >= 5 and all("driver" in s["pss_mb"] for s in samples)
    ts = [s["t"] for s in samples]
    assert ts == sorted(ts)
    assert samples[-1]["pss_mb"]["driver"] > samples[0]["pss_mb"]["driver"] + 10
    assert grows["pss_growth_mb_per_min"]["driver"] > 300
    flat, _ = _measure(tmp_path, 0)
    assert abs(flat["pss_growth_mb_per_min"]["driver"]) < 30


SHM = (
    "import mmap, os, tempfile, time\n"
    "fd, path = tempfile.mkstemp(dir='/dev/shm'); os.unlink(path)\n"
    "os.ftruncate(fd, 160 * 2**20); m = mmap.mmap(fd, 160 * 2**20)\n"
    "for i in range(40):\n"
    "    m[i * 4 * 2**20 : (i + 1) * 4 * 2**20 : 4096] = b'x' * 1024\n"
    "    time.sleep(0.05)\n"
)


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm (Linux only)")
def test_series_follow_the_machines_shared_memory(tmp_path: Path) -> None:
    """Pages written into a shared-memory file (as Ray's object store is) show in the
    series' ``machine shmem``, whoever maps them."""
    series = tmp_path / "shm.jsonl"
    cmd = [sys.executable, str(ROOT / "bench" / "peak_memory.py"), "--series", str(series)]
    cmd += ["--every", "0.1", "--", sys.executable, "-c", SHM]
    subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True)
    shm = [json.loads(line)["pss_mb"]["machine shmem"] for line in series.read_text().splitlines()]
    assert len(shm) >= 5 and max(shm) - shm[0] >= 100  # 160 MB written over ~2 s


def test_reference_job_runs_before_and_after_the_command(tmp_path: Path) -> None:
    """``--reference`` times the plain CPU job just before and after the command (outside
    the command's wall time) and reports both."""
    cmd = [sys.executable, str(ROOT / "bench" / "peak_memory.py"), "--reference"]
    cmd += ["--every", "0.05", "--"]  # (samples every 0.05 s: the wall is close to 0.3 s)
    cmd += [sys.executable, "-c", "import time; time.sleep(0.3)"]
    env = {**os.environ, "PEAK_MEMORY_REFERENCE_ROUNDS": "10"}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True, env=env)
    total = time.perf_counter() - t0
    report = json.loads(r.stderr.strip().splitlines()[-1])
    before, after = report["reference_s"]
    assert before > 0 and after > 0
    assert 0.3 <= report["wall_s"] < 0.3 + before + after  # the job ran outside the wall
    assert total >= report["wall_s"] + before + after


def _memory_over_time(monkeypatch: pytest.MonkeyPatch) -> object:
    import importlib.util

    monkeypatch.syspath_prepend(str(ROOT / "bench"))  # its `from benchkit import ...`

    spec = importlib.util.spec_from_file_location("mot", ROOT / "bench" / "memory_over_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_over_time_quarters_show_growth_and_its_absence(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``bench/memory_over_time.py``'s summary: a series that grows per sample shows as
    quarter 4 above quarter 2, a cycling one does not."""
    mot = _memory_over_time(monkeypatch)
    grows = [(t, 100.0 + t, 50.0 + 2 * t) for t in range(40)]
    cycles = [(t, 100.0 + t % 5, 50.0 + t % 5) for t in range(40)]
    g = mot.quarters(grows)
    assert [q["from_s"] for q in g] == [0, 10, 20, 30]
    assert g[3]["rss_mb"] == [130.0, 139.0] and g[3]["heap_mb"] == [110.0, 128.0]
    assert g[3]["rss_mb"][1] - g[1]["rss_mb"][1] == 20
    c = mot.quarters(cycles)
    assert c[3]["rss_mb"][1] == c[1]["rss_mb"][1] and c[3]["heap_mb"] == c[1]["heap_mb"]


def test_memory_over_time_runs_the_simulation_it_measures(tmp_path: Path) -> None:
    """The script samples a real in-process run (same digest as vmmsim.run) and names a
    bad config in one line."""
    import vmmsim

    sets = ["simulation.duration_s=900"]
    cmd = [sys.executable, str(ROOT / "bench" / "memory_over_time.py")]
    cmd += [str(ROOT / "configs" / "quickstart.toml"), "--scale", "1", "--every", "0.02"]
    r = subprocess.run(
        [*cmd, "--json", *[f"--set={s}" for s in sets]],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    out = json.loads(r.stdout)
    assert out["hosts"] == 2 and out["samples"] >= 8
    expect = vmmsim.run(ROOT / "configs" / "quickstart.toml", overrides=sets, backend="inprocess")
    assert out["final_digest"] == expect.summary["final_digest"]
    for q in out["quarters"]:
        assert 0 < q["rss_mb"][0] <= q["rss_mb"][1]
    bad = subprocess.run([*cmd, "--set=policy.nope=1"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "policy.nope" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--every", "soon", "--", "true"], "--every takes seconds"),
        (["--", "no-such-command-here"], "no such command: no-such-command-here"),
    ],
)
def test_peak_memory_bad_input_is_one_line_and_status_2(args: list[str], says: str) -> None:
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "peak_memory.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"peak_memory.py: {says}")
