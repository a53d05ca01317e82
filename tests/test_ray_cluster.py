"""Integration tests of the Ray transport: real actors, real clusters, real failures.

All but the external-cluster tests share the session's local Ray instance
(``ray_session``).  ``ray start --head`` and the two-node ``ray.cluster_utils.Cluster``
run in their own process groups and are killed as a group afterwards, so they never touch
the session's instance.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from runkit import small_config, write_config
from vmmsim.cluster.config import load_config
from vmmsim.cluster.runner import run

pytestmark = pytest.mark.ray

ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _inprocess(cfg_path: Path, out: Path) -> dict:
    return run(load_config(cfg_path), out, backend="inprocess", quiet=True)


def test_four_hosts_on_ray_equal_inprocess(ray_session, tmp_path):
    cfg = write_config(tmp_path, small_config(n_hosts=4, n_vms=8, host_mb=20))
    a = _inprocess(cfg, tmp_path / "inproc")
    b = run(load_config(cfg), tmp_path / "ray", backend="ray", quiet=True)
    assert a["final_digest"] == b["final_digest"]
    assert (tmp_path / "inproc" / "metrics.parquet").read_bytes() == (
        tmp_path / "ray" / "metrics.parquet"
    ).read_bytes()
    timing = json.loads((tmp_path / "ray" / "timing.json").read_text())
    assert timing["backend"] == "ray" and len(timing["host_nodes"]) == 4
    # Rounds ran with one host call per CPU at a time (2 here: the windowed path).
    assert timing["round_window"] == 2
    assert 0 < timing["round_bound_s"] <= timing["round_wall_s"] <= timing["simulate_s"]
    assert timing["slowest_host_s"] <= timing["round_bound_s"]
    assert timing["rounds"] > 0 and timing["host_busy_s"] >= timing["slowest_host_s"] > 0
    # The host processes' CPU, split: start-up, inside the run_round calls, the rest.
    start, calls = timing["host_startup_cpu_s"], timing["host_round_call_cpu_s"]
    assert start > 0 and calls > 0 and timing["host_other_cpu_s"] >= 0
    assert abs(start + calls + timing["host_other_cpu_s"] - timing["host_process_cpu_s"]) < 1e-6
    assert calls >= 0.5 * sum(timing["host_phase_s"].values())  # the phases are in the calls
    assert timing["rounds_linked"] == timing["rounds"]  # every round over the local link
    assert ray_session.is_initialized(), "a run must not shut down a Ray it did not start"


def _pool_session(cfg):
    from vmmsim.cluster.ray_runtime import RayPool
    from vmmsim.cluster.session import RunOptions, Session

    pool = RayPool(cfg.to_dict(), 60)
    return pool, Session(cfg, pool, RunOptions(), None)


def test_rounds_over_the_link_or_ray_calls_give_the_same_run(ray_session, tmp_path, monkeypatch):
    """With every host on this node, rounds go over ``cluster.round_link`` (the hosts wait
    inside one task); ``VMMSIM_ROUND_LINK=0`` sends them as Ray calls.  Same state.  Over
    the link a round runs one call per CPU at a time even where hosts crowd the CPUs."""
    from vmmsim.cluster import ray_runtime

    monkeypatch.setattr(ray_runtime, "WINDOW_MAX_HOSTS_PER_CPU", 1)  # 3 hosts crowd 2 CPUs
    monkeypatch.delenv("VMMSIM_ROUND_WINDOW", raising=False)
    cfg = load_config(write_config(tmp_path, small_config(n_hosts=3, n_vms=6, duration_s=20)))
    got, windows = {}, {}
    for flag in ("1", "0"):
        monkeypatch.setenv("VMMSIM_ROUND_LINK", flag)
        pool, session = _pool_session(cfg)
        try:
            session.start()
            tables = []
            while not session.coord.done:
                tables.extend(session.advance())
            final = session.finish()
            got[flag] = (final["final_digest"], tables, pool.linked_rounds, pool.rounds.n)
            windows[flag] = pool.window
        finally:
            pool.close()
    (d1, t1, linked1, n1), (d0, t0, linked0, n0) = got["1"], got["0"]
    assert d1 == d0 and len(t1) == len(t0) and all(a.equals(b) for a, b in zip(t1, t0, strict=True))
    assert linked1 == n1 == n0 > 0 and linked0 == 0
    assert windows == {"1": 2, "0": 3}


def test_a_host_process_dying_during_linked_rounds_is_named(ray_session, tmp_path):
    from vmmsim.cluster.host_pool import HostFailure

    cfg = load_config(write_config(tmp_path, small_config(n_hosts=2, duration_s=20)))
    pool, session = _pool_session(cfg)
    try:
        session.start()
        pids = pool.pids()
        session.coord.advance()  # the link is up now, the hosts waiting inside their task
        assert pool.linked_rounds == 1
        os.kill(pids["h-1"], signal.SIGKILL)
        with pytest.raises(HostFailure) as err:
            session.coord.advance()
        assert err.value.host == "h-1" and "actor died" in str(err.value)
    finally:
        pool.close()


def test_round_timing_sums_each_rounds_bound():
    """A round's bound is its busiest host, or the hosts' summed busy time over the calls
    that run at once, whichever is longer; the totals are sums over rounds."""
    from vmmsim.cluster.ray_runtime import RoundTiming

    t = RoundTiming()
    t.add(1.0, [0.5, 0.2], width=2)  # bound: the busiest host, 0.5
    t.add(2.0, [0.5, 0.5, 0.5], width=1, cpu_s=[0.25, 0.5, 0.25])  # bound: 1.5 on one CPU
    assert t.n == 2 and t.wall_s == 3.0 and t.host_busy_s == 2.2 and t.host_cpu_s == 1.0
    assert t.slowest_host_s == 1.0 and abs(t.bound_s - 2.0) < 1e-12


@pytest.mark.parametrize("n_hosts", [2, 4], ids=["all-at-once", "windowed"])
def test_killed_host_actor_is_named_with_its_tick(ray_session, tmp_path, n_hosts):
    from vmmsim.cluster.host_pool import HostFailure
    from vmmsim.cluster.ray_runtime import start_coordinator

    cfg = load_config(write_config(tmp_path, small_config(n_hosts=n_hosts, duration_s=20)))
    coord = start_coordinator(cfg.to_dict(), timeout_s=60)
    try:
        ray_session.get(coord.start.remote(), timeout=60)
        _, tick, _ = ray_session.get(coord.advance.remote(1), timeout=60)
        assert tick == 5
        ray_session.get(coord.kill_host.remote("h-1"), timeout=60)
        with pytest.raises(HostFailure) as err:
            try:
                ray_session.get(coord.advance.remote(1), timeout=120)
            except ray_session.exceptions.RayTaskError as e:
                raise e.cause from None
        assert err.value.host == "h-1" and err.value.tick == 5
        assert "h-1" in str(err.value) and "tick 5" in str(err.value)
    finally:
        ray_session.kill(coord)


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_round_window_override_must_be_a_positive_integer(monkeypatch, bad):
    from vmmsim.cluster.ray_runtime import _round_window

    monkeypatch.setenv("VMMSIM_ROUND_WINDOW", bad)
    with pytest.raises(ValueError, match="VMMSIM_ROUND_WINDOW must be a positive integer"):
        _round_window(8, 2.0)
    monkeypatch.setenv("VMMSIM_ROUND_WINDOW", "3")
    assert _round_window(8, 2.0) == 3


def test_round_window_is_one_call_per_cpu_unless_hosts_crowd_the_cpus(monkeypatch):
    from vmmsim.cluster.ray_runtime import WINDOW_MAX_HOSTS_PER_CPU, _round_window

    monkeypatch.delenv("VMMSIM_ROUND_WINDOW", raising=False)
    assert _round_window(16, 2.0) == 2  # 8 hosts per CPU: one call per CPU
    assert _round_window(2 * WINDOW_MAX_HOSTS_PER_CPU, 2.0) == 2
    assert _round_window(64, 2.0) == 64  # 32 hosts per CPU: every call at once
    assert _round_window(64, 2.0, linked=True) == 2  # over the link: one per CPU always
    assert _round_window(64, 8.0) == 8


def test_host_cpus_all_fit_at_once():
    """Every host's CPU request, rounded down to Ray's unit, fits in the CPUs given for
    them all -- a run whose hosts do not all fit would wait until its timeout."""
    from vmmsim.cluster.ray_runtime import RESOURCE_UNITS, host_cpus

    assert host_cpus(2.0, 1) == 1.0 and host_cpus(2.0, 2) == 1.0  # at most one CPU each
    for cpus, n in [(2.0, 3), (2.0, 7), (2.0, 64), (2.0, 300), (1.0, 9999), (0.5, 2)]:
        each = host_cpus(cpus, n)
        assert each * RESOURCE_UNITS == int(each * RESOURCE_UNITS)  # whole Ray units
        assert round(each * RESOURCE_UNITS) * n <= cpus * RESOURCE_UNITS, (cpus, n)
        assert each > cpus / n - 1 / RESOURCE_UNITS  # and no less than needed
    assert host_cpus(2.0, 300) == 0.0066  # the old floor of 0.01 each asked for 3 CPUs
    assert host_cpus(1.0, 10**6) == 1 / RESOURCE_UNITS  # the smallest Ray can express


def test_two_runs_sharing_the_cluster_get_their_hosts_at_once(ray_session, tmp_path):
    """A parallel sweep runs ``jobs`` points on one cluster; each asks for its share, so
    two 2-host points on 2 CPUs both start (at a whole CPU per host the second point's
    hosts could not be placed until the first had finished -- or, with one host of each
    placed, never: each waited for its timeout)."""
    from vmmsim.cluster.ray_runtime import RayPool

    cfg = load_config(write_config(tmp_path, small_config(n_hosts=2, n_vms=2))).to_dict()
    cpus = ray_session.cluster_resources()["CPU"]
    deadline = time.monotonic() + 30  # actors of earlier tests may still be going
    while ray_session.available_resources().get("CPU", 0.0) < cpus and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray_session.available_resources()["CPU"] == cpus  # nothing else holds CPUs
    pools = []
    try:
        for _ in range(2):  # each constructor waits for its hosts to answer a ping
            pools.append(RayPool(cfg, timeout_s=20, cluster_share=0.5))
        assert all(p.cpus == cpus / 2 for p in pools)
        assert ray_session.available_resources().get("CPU", 0.0) < 1e-3  # all in use
    finally:
        for p in pools:
            p.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def test_address_joins_a_ray_start_head_cluster(tmp_path):
    cfg = write_config(tmp_path, small_config(n_hosts=2, duration_s=15))
    ref = _inprocess(cfg, tmp_path / "ref")
    port = _free_port()
    head = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("ray")),
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir=/tmp/vmmsim-head-{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=ENV,
        start_new_session=True,
    )
    try:
        out = tmp_path / "joined"
        deadline = time.monotonic() + 90
        while True:  # the head takes a few seconds to accept drivers
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "vmmsim.cluster.cli",
                    "run",
                    str(cfg),
                    "--out",
                    str(out),
                    "--address",
                    f"127.0.0.1:{port}",
                    "--quiet",
                    "--force",
                ],
                capture_output=True,
                text=True,
                env=ENV,
                timeout=240,
            )
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert r.returncode == 0, r.stderr[-2000:]
        s = json.loads((out / "summary.json").read_text())
        assert s["final_digest"] == ref["final_digest"]
        assert head.poll() is None, "the external cluster must outlive the run"
    finally:
        _kill_group(head)


TWO_NODES = r"""
import json, os, sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from vmmsim.cluster.config import load_config
from vmmsim.cluster.runner import run
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
try:
    s = run(load_config(sys.argv[1]), Path(sys.argv[2]), backend="ray", quiet=True)
    print(json.dumps({"digest": s["final_digest"],
                      "nodes": len(ray.nodes())}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_two_node_cluster_gives_the_same_result(tmp_path):
    cfg = write_config(tmp_path, small_config(n_hosts=4, n_vms=8, duration_s=15))
    ref = _inprocess(cfg, tmp_path / "ref")
    script = tmp_path / "two_nodes.py"
    script.write_text(TWO_NODES)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(cfg), str(tmp_path / "two")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=280)
    finally:
        _kill_group(proc)
    assert proc.returncode == 0, stderr[-3000:]
    res = json.loads(stdout.strip().splitlines()[-1])
    assert res["nodes"] == 2
    assert res["digest"] == ref["final_digest"]
    timing = json.loads((tmp_path / "two" / "timing.json").read_text())
    assert timing["n_nodes"] == 2, "host actors should spread over both nodes"
    assert (tmp_path / "two" / "metrics.parquet").read_bytes() == (
        tmp_path / "ref" / "metrics.parquet"
    ).read_bytes()
