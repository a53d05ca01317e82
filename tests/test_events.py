"""Scheduled policy changes (``[[events]]``): one-line refusals of bad events, the change
applied at its tick (in-process and on Ray alike), recorded as a decision that a verified
replay reuses, and a resume before or after the event ending where the uninterrupted run
does."""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from runkit import small_config, write_config
from runkit import summary_of as _summary
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import ConfigError, config_from_dict, load_config, parse_config
from vmmsim.cluster.coordinator import Coordinator
from vmmsim.cluster.host_pool import InProcessPool
from vmmsim.cluster.recording import RecordLog
from vmmsim.cluster.runner import run
from vmmsim.cluster.session import RunOptions
from vmmsim.cluster.specs import host_policy, host_specs, sim_params

TICKS = 30  # rounds of 5 ticks; --checkpoint-every 8 -> checkpoints at ticks 10, 20, 25
EVENT_S = 12  # inside a round: the round [10, 15) is cut at tick 12
# Sharing scans stop at once (the state differs from that tick on); the others act later.
CHANGES = (
    '"policy.tax_rate" = 0.0, "policy.sample_period_s" = 3, "policy.disk_latency_ms" = 40, '
    '"policy.share_scan_vm_pages_per_s" = 0'
)


def config_text(events: str = "", policy: str = "") -> str:
    """Two overcommitted hosts, a busy and an idle VM on each (ballooning and swapping
    happen); the idle memory tax starts at 0.75."""
    return small_config(duration_s=TICKS, host_mb=18, seed=11, policy=policy, extra=events)


def event(time_s: float, changes: str = CHANGES) -> str:
    return f"\n[[events]]\ntime_s = {time_s}\nset = {{ {changes} }}\n"


def _run(tmp: Path, text: str, name: str, *args: str) -> Path:
    cfg = write_config(tmp, text, f"{name}.toml")
    out = tmp / name
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet", *args]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted in-process runs (read-only): with the event (recorded and
    checkpointed) and without it."""
    tmp = tmp_path_factory.mktemp("events")
    return {
        "event": _run(
            tmp, config_text(event(EVENT_S)), "event", "--record", "--checkpoint-every", "8"
        ),
        "none": _run(tmp, config_text(), "none", "--record"),
    }


# ---------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("events", "expect"),
    [
        (event(30), "events[0].time_s: must be < simulation.duration_s 30"),
        (event(-1), "events[0].time_s: must be >= 0"),
        (event(5) + event(4), "events[1].time_s: must fall on a later tick than events[0]"),
        (event(5) + event(5), "events[1].time_s: must fall on a later tick than events[0]"),
        (event(4.2) + event(4.7), "events[1].time_s: must fall on a later tick than events[0]"),
        (event(5, '"policy.tax_rate" = 1.5'), "events[0].set.policy.tax_rate: must be in [0, 1)"),
        (event(5, '"policy.tax_rate" = "x"'), "events[0].set.policy.tax_rate: expected a float"),
        (event(5, '"policy.tax_rat" = 0.5'), "events[0].set.policy.tax_rat: unknown key"),
        (event(5, '"simulation.seed" = 3'), "events[0].set.simulation.seed: cannot change"),
        (event(5, '"vms.busy.shares" = 3'), "events[0].set.vms.busy.shares: cannot change"),
        (event(5, '"hosts.h.memory_mb" = 64'), "events[0].set.hosts.h.memory_mb: cannot change"),
        (event(5, '"policy.placement" = "round_robin"'), "set.policy.placement: cannot change"),
        (event(5, '"policy.vm_overhead_mb" = 1'), "set.policy.vm_overhead_mb: cannot change"),
        (event(5, '"sweep" = 1'), "events[0].set.sweep: not a policy key"),
        (event(5, '"policy.free_soft" = 0.5'), "events[0].set: policy.free_high: must satisfy"),
        (event(5, '"policy.allocation" = "nope"'), "set.policy.allocation: no allocation policy"),
        (event(5, ""), "events[0].set: missing required key"),
        ("\n[[events]]\ntime_s = 5\n", "events[0].set: missing required key"),
        (event(5) + event(9, '"migration.bandwidth_mb_s" = 0'), "events[1].set.migration.band"),
    ],
)
def test_bad_events_are_refused_in_one_line(tmp_path, capsys, events, expect):
    cfg = write_config(tmp_path, config_text(events))
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vmmsim: error: "), err
    assert expect in err[0], err[0]


def test_events_hold_checked_values_and_round_trip():
    two = event(EVENT_S) + event(20.5, 'policy.tax_rate = 0, "migration.enabled" = false')
    cfg = parse_config(_raw(two))
    assert [e.time_s for e in cfg.events] == [EVENT_S, 20.5]
    later = dict(cfg.events[1].set)
    assert later == {"migration.enabled": False, "policy.tax_rate": 0.0}
    assert type(later["policy.tax_rate"]) is float  # checked and converted like the file's
    back = config_from_dict(cfg.to_dict())
    assert back == cfg and back.config_hash() == cfg.config_hash()
    # A config without events keeps the hash it had before events existed (no key).
    plain = parse_config(_raw(""))
    assert "events" not in plain.to_dict()
    assert plain.config_hash() != cfg.config_hash()
    with pytest.raises(ConfigError, match=r"^<config>: events\[1\]\.time_s"):
        parse_config(_raw(event(EVENT_S) + event(EVENT_S - 1)))


def _raw(events: str) -> dict:
    return tomllib.loads(config_text(events))


# ---------------------------------------------------------------------------- applying
def _decisions(run_dir: Path, kind: str) -> list[tuple[int, dict]]:
    d = RecordLog.open(run_dir).decisions.to_pydict()
    rows = zip(d["tick"], d["kind"], d["payload"], strict=True)
    return [(t, json.loads(p)) for t, k, p in rows if k == kind]


def test_event_is_a_decision_applied_at_its_tick(runs):
    """The change is recorded at tick 12 and the run is the event-free one up to there;
    the state differs from tick 12 on (no more sharing scans);
    reallocation keeps its 5-tick cadence although the round [10, 15) is cut at 12."""
    want = {
        "policy.disk_latency_ms": 40.0,
        "policy.sample_period_s": 3.0,
        "policy.share_scan_vm_pages_per_s": 0.0,
        "policy.tax_rate": 0.0,
    }
    assert _decisions(runs["event"], "policy") == [(EVENT_S, want)]
    assert _decisions(runs["none"], "policy") == []
    assert {t % 5 for t, _ in _decisions(runs["event"], "targets")} == {0}
    with_ev = RecordLog.open(runs["event"]).tick_digests()
    without = RecordLog.open(runs["none"]).tick_digests()
    differ = sorted({t for key, dg in with_ev.items() if without[key] != dg for t in key[:1]})
    assert differ and differ[0] == EVENT_S
    a, b = (
        pq.read_table(runs["event"] / "metrics.parquet"),
        pq.read_table(runs["none"] / "metrics.parquet"),
    )
    before = pc.less(a["tick"], EVENT_S)
    assert a.filter(before).equals(b.filter(pc.less(b["tick"], EVENT_S)))
    assert not a.equals(b)


POLICY_KEYS = {
    "policy.tax_rate": "0.2",
    "policy.sample_period_s": "3",
    "policy.sample_pages": "40",
    "policy.balloon_max_fraction": "0.3",
    "policy.balloon_rate_pages_per_s": "100",
    "policy.swap_rate_pages_per_s": "50",
    "policy.free_high": "0.12",
    "policy.free_soft": "0.08",
    "policy.free_hard": "0.05",
    "policy.free_low": "0.03",
    "policy.disk_latency_ms": "40",
    "policy.realloc_period_s": "3",
}
# A scheduled live migration to a spare host (the migrator's bandwidth and limits).
MOVE = """
[[hosts]]
name = "spare"
memory_mb = 40
swap_mb = 64

[[migrations]]
time_s = 4
vm = "lazy-1"
to = "spare"
"""
MIGRATION_KEYS = {"migration.bandwidth_mb_s": "2", "migration.max_downtime_ms": "100"}


@pytest.mark.parametrize(("keys", "extra"), [(POLICY_KEYS, ""), (MIGRATION_KEYS, MOVE)])
def test_event_at_time_zero_equals_starting_with_its_values(tmp_path, keys, extra):
    """Everything an event changes is derived again exactly as at start-up: host knobs,
    the coordinator's reallocation period, the migrator's bandwidth and limits."""
    changes = ", ".join(f'"{k}" = {v}' for k, v in keys.items())
    ev = _run(tmp_path, config_text(event(0, changes) + extra), "ev")
    sets = [f"--set={k}={v}" for k, v in keys.items()]
    base = _run(tmp_path, config_text(extra), "base", *sets)
    assert _summary(ev)["final_digest"] == _summary(base)["final_digest"]
    for name in ("metrics.parquet", "migrations.parquet"):
        assert pq.read_table(ev / name).equals(pq.read_table(base / name)), name
    none = _run(tmp_path, config_text(extra), "none")
    assert _summary(none)["final_digest"] != _summary(ev)["final_digest"]
    if extra:
        assert _summary(ev)["migrations"]["completed"] == 1


def test_replay_verifies_and_reuses_the_recorded_event(runs, tmp_path):
    assert main(["replay", str(runs["event"]), "--inprocess", "--quiet"]) == 0
    # The coordinator takes the recorded decision, not the config's, when it has one.
    cfg = load_config(write_config(tmp_path, config_text(event(0, '"policy.tax_rate" = 0.0'))))
    pool = InProcessPool([(s, sim_params(cfg), host_policy(cfg)) for s in host_specs(cfg)])
    coord = Coordinator(cfg, pool)
    coord.recorded = {(0, "policy"): [{"policy.tax_rate": 0.5}]}
    coord.start()
    assert coord.policy.tax_rate == 0.5 and cfg.policy.tax_rate == 0.75
    assert all(r.host.policy.tax_rate == 0.5 for r in pool.runtimes.values())
    assert coord.decision_log.kept[-2][1:] == ("policy", {"policy.tax_rate": 0.5})


@pytest.mark.parametrize("tick", ["t10", "t20"])
def test_resume_before_and_after_the_event(runs, tmp_path, tick):
    """t10: the event is still to come (applied at 12); t20: its values are restored."""
    out = tmp_path / "resumed"
    ck = runs["event"] / "checkpoints" / tick
    assert main(["resume", str(ck), "--out", str(out), "--inprocess", "--quiet"]) == 0
    assert _summary(out)["final_digest"] == _summary(runs["event"])["final_digest"]
    full, part = (
        pq.read_table(runs["event"] / "metrics.parquet"),
        pq.read_table(out / "metrics.parquet"),
    )
    assert part.equals(full.filter(pc.greater_equal(full["tick"], int(tick[1:]))))


@pytest.mark.parametrize("kill_at", [14, 22])
def test_recovery_across_the_event(runs, tmp_path, kill_at):
    """A host killed after the event, recovered from a checkpoint before it (t10: the
    coordinator's policy goes back to the config's, the event applies again) or after
    it (t20)."""
    cfg = load_config(write_config(tmp_path, config_text(event(EVENT_S))))
    opts = RunOptions(checkpoint_every_s=8.0, kill_host_at=("h-1", kill_at))
    s = run(cfg, tmp_path / "out", backend="inprocess", quiet=True, opts=opts)
    assert s["recoveries"][0]["checkpoint"] == (
        "checkpoints/t10" if kill_at < 20 else "checkpoints/t20"
    )
    assert s["final_digest"] == _summary(runs["event"])["final_digest"]


@pytest.mark.ray
def test_ray_applies_the_event_like_inprocess(ray_session, runs, tmp_path):
    cfg = load_config(write_config(tmp_path, config_text(event(EVENT_S))))
    out = tmp_path / "ray"
    s = run(cfg, out, backend="ray", quiet=True, timeout_s=120, opts=RunOptions(record=True))
    assert s["final_digest"] == _summary(runs["event"])["final_digest"]
    for name in ("metrics.parquet", "record/decisions.arrows", "record/digests.arrows"):
        assert (out / name).read_bytes() == (runs["event"] / name).read_bytes(), name


def test_report_marks_the_events(runs, tmp_path, capsys):
    """``vmmsim report`` of a run with events: events.png and before -> after lines; a run
    without events has neither."""
    assert main(["report", str(runs["event"])]) == 0
    out = capsys.readouterr().out
    png = runs["event"] / "plots" / "events.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "event 0 at 12 s: disk_latency_ms = 40, sample_period_s = 3" in out
    lines = [ln for ln in out.splitlines() if "resident" in ln and "->" in ln]
    assert [ln.split()[0] for ln in lines] == ["busy", "lazy"], out
    plain = tmp_path / "plain"
    shutil.copytree(runs["none"], plain)
    assert main(["report", str(plain)]) == 0
    assert "event 0" not in capsys.readouterr().out
    assert not (plain / "plots" / "events.png").exists()
