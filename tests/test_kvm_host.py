"""A KVM-style host end to end (in-process, no Ray): KSM (``policy.sharing_scanner =
"ksm"``) and virtio-balloon free page reporting (``policy.free_page_reporting``) in runs,
with invariants checked; their metrics columns and summary counters; determinism;
checkpoint/resume and record/replay round trips with both on; migration; bad input."""

from __future__ import annotations

import tomllib

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from runkit import run_inprocess, small_config, summary_of
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import ConfigError, parse_config
from vmmsim.hosts.free_page_reporting import FPR_COLUMNS
from vmmsim.hosts.metrics_rows import COLUMNS
from vmmsim.hosts.sharing.ksm import KSM_COLUMNS

import vmmsim

KVM = 'sharing_scanner = "ksm"\nksm_pages_to_scan = 40\nfree_page_reporting = true\n'
TICKS = 30


def kvm_config(policy: str = KVM, **kw) -> str:
    kw.setdefault("duration_s", TICKS)
    kw.setdefault("host_mb", 18)  # overcommitted: balloons and swap too
    return small_config(policy=policy, **kw)


@pytest.fixture(scope="module")
def kvm_run(tmp_path_factory):
    """A checkpointed, recorded KVM-style run (read-only for the tests)."""
    tmp = tmp_path_factory.mktemp("kvm")
    return run_inprocess(
        tmp, kvm_config(), "--record", "--checkpoint-every", "8", "--check-invariants"
    )


def test_a_kvm_host_merges_and_reports_with_its_columns(kvm_run) -> None:
    _, out = kvm_run
    t = pq.read_table(out / "metrics.parquet")
    assert t.column_names == [*COLUMNS, *KSM_COLUMNS, *FPR_COLUMNS]
    s = summary_of(out)
    for h in s["hosts"].values():
        k = h["ksm"]
        assert k["full_scans"] >= 1 and k["pages_shared"] > 0 and k["pages_sharing"] > 0
        assert h["saved_mb"] > 0
        # pages_sharing is the memory saved (no zero pages set apart by default)
        assert k["pages_sharing"] * 4096 / 2**20 == pytest.approx(h["saved_mb"])
    last = t.filter(pc.equal(t["tick"], TICKS - 1)).to_pydict()
    assert max(last["ksm_full_scans"]) >= 1


def test_default_runs_have_no_kvm_columns(tmp_path) -> None:
    _, out = run_inprocess(tmp_path, small_config(duration_s=5))
    assert pq.read_table(out / "metrics.parquet").column_names == list(COLUMNS)
    assert "ksm" not in next(iter(summary_of(out)["hosts"].values()))


def test_ksm_differs_from_the_esx_scan_and_is_deterministic() -> None:
    cfg = tomllib.loads(kvm_config(duration_s=12, host_mb=64))
    a = vmmsim.run(cfg, backend="inprocess", check_invariants=True)
    b = vmmsim.run(cfg, backend="inprocess")
    assert a.final_digest == b.final_digest
    esx = tomllib.loads(small_config(duration_s=12, host_mb=64))
    assert vmmsim.run(esx, backend="inprocess").final_digest != a.final_digest


@pytest.mark.parametrize("tick", ["t10", "t20"])
def test_resume_with_ksm_and_reporting_equals_uninterrupted(kvm_run, tmp_path, tick) -> None:
    _, base = kvm_run
    out = tmp_path / "resumed"
    ck = base / "checkpoints" / tick
    assert main(["resume", str(ck), "--out", str(out), "--inprocess", "--quiet"]) == 0
    assert summary_of(out)["final_digest"] == summary_of(base)["final_digest"]
    full, part = pq.read_table(base / "metrics.parquet"), pq.read_table(out / "metrics.parquet")
    assert part.equals(full.filter(pc.greater_equal(full["tick"], int(tick[1:]))))


def test_replay_of_a_kvm_run_verifies_every_tick(kvm_run, capsys) -> None:
    _, base = kvm_run
    capsys.readouterr()
    assert main(["replay", str(base), "--inprocess", "--quiet"]) == 0
    assert capsys.readouterr().out.strip() == f"replay verified: {TICKS} ticks, digests identical"


def test_a_vm_migrates_off_and_onto_ksm_hosts(tmp_path) -> None:
    move = '[[migrations]]\ntime_s = 8\nvm = "busy-0"\nto = "h-1"\n'
    text = kvm_config(host_mb=64, duration_s=20, extra=move)
    _, out = run_inprocess(tmp_path, text, "--check-invariants")
    s = summary_of(out)
    assert s["migrations"]["completed"] == 1
    assert "busy-0" in s["hosts"]["h-1"]["vms"]


def test_bad_values_are_refused_in_one_line() -> None:
    def parse(policy: str) -> None:
        parse_config(tomllib.loads(small_config(policy=policy)))

    with pytest.raises(ConfigError, match="policy.sharing_scanner: must be one of"):
        parse('sharing_scanner = "kvm"')
    with pytest.raises(ConfigError, match=r"policy.ksm_max_page_sharing: must be >= 2"):
        parse("ksm_max_page_sharing = 1")
    with pytest.raises(ConfigError, match="policy.ksm_sleep_millisecs: must be > 0"):
        parse("ksm_sleep_millisecs = 0")
    with pytest.raises(ConfigError, match="policy.ksm_pages_to_scan: too fast"):
        parse("ksm_pages_to_scan = 2000000000\nksm_sleep_millisecs = 0.001")
    with pytest.raises(ConfigError, match="policy.free_page_reporting: expected a boolean"):
        parse("free_page_reporting = 1")
    with pytest.raises(ConfigError, match=r"policy.free_page_reporting_order: must be in"):
        parse("free_page_reporting_order = 19")
    ev = '[[events]]\ntime_s = 5\nset = { "policy.sharing_scanner" = "ksm" }\n'
    with pytest.raises(ConfigError, match="cannot change during a run: the sharing scanner"):
        parse_config(tomllib.loads(small_config(extra=ev)))


def test_an_event_may_change_ksm_s_scan_rate() -> None:
    ev = '[[events]]\ntime_s = 5\nset = { "policy.ksm_pages_to_scan" = 0 }\n'
    cfg = tomllib.loads(kvm_config(duration_s=10, host_mb=64, extra=ev))
    r = vmmsim.run(cfg, backend="inprocess", check_invariants=True)
    m = r.metrics.to_pydict() if hasattr(r.metrics, "to_pydict") else r.metrics
    scanned = {}
    for t, n in zip(m["tick"], m["scanned_pages"], strict=True):
        scanned[t] = scanned.get(t, 0) + n
    assert scanned[2] > 0 and all(scanned[t] == 0 for t in range(6, 10))
