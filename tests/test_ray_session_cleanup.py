"""An embedded Ray run leaves no ``session_*`` folder behind (a subprocess: the test
session's shared Ray is not one vmmsim started, so it is not cleaned)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from runkit import small_config, write_config


def test_embedded_run_removes_its_ray_session_folder(tmp_path):
    cfg = write_config(tmp_path, small_config(duration_s=5))
    # A short folder of its own for Ray (socket paths must stay under ~100 characters).
    ray_tmp = Path(tempfile.mkdtemp(prefix="vr", dir="/tmp"))
    try:
        env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "RAY_ADDRESS": ""}
        env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
        out = tmp_path / "run"
        args = ["run", str(cfg), "--out", str(out), "--quiet"]
        r = subprocess.run(
            [sys.executable, "-m", "vmmsim.cluster.cli", *args],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        assert (out / "summary.json").is_file()
        root = ray_tmp / "ray"
        assert root.is_dir()  # Ray ran there (so the check below means something)
        left = sorted(p.name for p in root.iterdir() if p.name.startswith("session_"))
        assert left == [], left
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_simulator_actors_report_no_task_events():
    """The host and coordinator actors are created with Ray's task events off: the GCS
    would otherwise keep every call's events (hundreds per simulated minute), growing
    a long run's memory up to its cap, for a dashboard no run starts."""
    from vmmsim.cluster.host_actor import HostActor
    from vmmsim.cluster.ray_runtime import CoordinatorActor

    for actor in (HostActor, CoordinatorActor):
        assert actor._default_options.get("enable_task_events") is False
