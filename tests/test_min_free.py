"""vSphere 6's five free-memory states with a sliding minFree (``policy.free_states =
"vsphere6"``, :mod:`hosts.min_free`): the rule and state machine as pure functions, the
actions of each state in a host, and runs (invariants, checkpoint/resume, record/replay,
determinism, bad input)."""

from __future__ import annotations

import tomllib
from fractions import Fraction

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hostkit import apply, make_host, sim_params, vm_spec
from runkit import small_config, summary_of, write_config
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import ConfigError, parse_config
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.free_memory import MemState, Thresholds, next_state, pressure
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.min_free import MinFreeThresholds, min_free_mb
from vmmsim.hosts.specs import HostSpec

import vmmsim

H, C, S, D, L = MemState.HIGH, MemState.CLEAR, MemState.SOFT, MemState.HARD, MemState.LOW
GB = 1024


# ---------------------------------------------------------------------------- the rule
@pytest.mark.parametrize(
    ("memory_mb", "by_hand"),
    [
        (2 * GB, 0.06 * 2048),  # 122.88: all in the first band
        (8 * GB, 0.06 * 4096 + 0.04 * 4096),  # 409.6
        (28 * GB, 0.06 * 4096 + 0.04 * 8192 + 0.02 * 16384),  # 901.12 (write-ups: 899)
        (64 * GB, 901.12 + 0.01 * (65536 - 28672)),  # 1269.76
        (256 * GB, 901.12 + 0.01 * (262144 - 28672)),  # 3235.84
    ],
)
def test_min_free_is_the_sliding_scale(memory_mb: float, by_hand: float) -> None:
    assert float(min_free_mb(memory_mb)) == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize(
    ("memory_mb", "fraction"),
    [(2 * GB, 0.06), (8 * GB, 0.05), (64 * GB, 0.019375), (256 * GB, 0.01234375)],
)
def test_thresholds_of_2_8_64_256_gb_hosts(memory_mb: float, fraction: float) -> None:
    t = MinFreeThresholds.for_memory(memory_mb)
    assert float(t.min_free) == pytest.approx(fraction, rel=1e-12)
    got = [t.level(s) for s in (H, C, S, D, L)]
    assert got == pytest.approx([x * fraction for x in (4, 1, 0.64, 0.32, 0.16)], rel=1e-12)
    assert t.up_margin == pytest.approx(0.16 * fraction, rel=1e-12)
    assert t.reserve == t.level(C)
    # a larger host keeps a smaller fraction free
    assert (memory_mb <= 4 * GB) == (float(t.min_free) == pytest.approx(0.06))


def test_min_free_exact_and_bad_memory() -> None:
    assert min_free_mb(28 * GB) == Fraction(90112, 100)
    with pytest.raises(ValueError, match="memory_mb"):
        min_free_mb(0)


def test_goal_is_116_percent_of_min_free_exactly() -> None:
    t = MinFreeThresholds.for_memory(2 * GB)  # 6 %: goal 6.96 % of memory
    assert t.goal_pages(0, 1000) == 70  # ceil(69.6)
    assert t.goal_pages(0, 500) == 35  # 34.8 -> 35 (exact, not 34.800000000000004)
    assert t.goal_pages(70, 1000) == 0 and t.goal_pages(60, 1000) == 10
    with pytest.raises(ValueError):
        t.goal_pages(-1, 10)


# ---------------------------------------------------------------------------- state machine
T = MinFreeThresholds(Fraction(1, 10))  # minFree 10 %: high 40, clear 10, 6.4, 3.2, 1.6 %
# margin 1.6 %


@pytest.mark.parametrize(
    ("prev", "free", "want"),
    [
        # down: as soon as free < a threshold, any number of levels
        (H, 0.5, H),
        (H, 0.2, H),  # below 400 %: still HIGH (large pages break there)
        (H, 0.099, C),
        (H, 0.063, S),
        (H, 0.031, D),
        (H, 0.015, L),
        (C, 0.015, L),
        (S, 0.02, D),
        # hysteresis: inside a band the state holds
        (C, 0.3, C),  # 400 % + margin = 0.416 needed to leave CLEAR
        (S, 0.11, S),  # 10 % + 1.6 % needed to leave SOFT
        (D, 0.07, D),
        (L, 0.04, L),
        # up: one level, once free >= the next threshold + margin
        (C, 0.417, H),
        (S, 0.117, C),
        (S, 0.9, C),  # one level only
        (D, 0.9, S),
        (L, 0.9, D),
        (D, 0.081, S),
        (L, 0.049, D),
    ],
)
def test_transitions(prev: MemState, free: float, want: MemState) -> None:
    assert T.next_state(prev, free) == want


def test_climbs_one_level_per_evaluation() -> None:
    s, seen = L, []
    for _ in range(5):
        s = T.next_state(s, 1.0)
        seen.append(s)
    assert seen == [D, S, C, H, H]


def test_nan_and_unknown_states() -> None:
    with pytest.raises(ValueError, match="NaN"):
        T.next_state(H, float("nan"))
    with pytest.raises(ValueError, match="CLEAR"):
        next_state(C, 0.5, Thresholds())  # the paper's model has no CLEAR


def test_state_values_of_the_paper_are_unchanged_and_pressure_orders_clear() -> None:
    assert [int(s) for s in (H, S, D, L)] == [0, 1, 2, 3] and int(C) == 4
    assert [pressure(s) for s in (H, C, S, D, L)] == [0, 1, 2, 3, 4]
    assert Thresholds().states == (H, S, D, L)
    assert T.states == (H, C, S, D, L)


def test_actions_per_state() -> None:
    assert "break_large" in T.actions(H, 0.3)  # below 400 % of minFree
    assert "break_large" not in T.actions(H, 0.5)
    assert {"break_large", "share_active"} <= T.actions(C, 0.05)
    assert "balloon" in T.actions(S, 0.05) and "swap" not in T.actions(S, 0.05)
    hard = T.actions(D, 0.02)
    assert {"compress", "swap"} <= hard and "balloon" not in hard  # ballooning stops
    assert {"compress", "swap", "block"} <= T.actions(L, 0.01)
    paper = Thresholds()
    assert "break_large" not in paper.actions(H, 0.0) and "compress" not in paper.actions(D, 0)


# ---------------------------------------------------------------------------- in a host
def v6_host(used: int, *, memory_mb: float = 0.0, target: int = 500, **policy):
    """A 1000-frame vsphere6 host (``memory_mb`` 0: its 3.9 MB, minFree 6 %: clear
    below 60 free frames, soft below 38.4, hard 19.2, low 9.6; goal 70), one quiet VM
    holding ``used`` private pages, target ``target``."""
    kw = {"balloon_rate_pages_per_s": 2.0, "swap_rate_pages_per_s": 64.0, **policy}
    host = make_host(1000, 2048, free_states="vsphere6", **kw)
    if memory_mb:
        host = HostMemoryManager(
            HostSpec("host0", 1000, 2048, memory_mb), sim_params(), host.policy
        )
    vm = host.boot_vm(vm_spec("a", 1000, sharing=False))
    apply(
        vm,
        host.mem,
        writes=np.arange(used),
        keys=np.arange(used, dtype=np.uint64) + 1,
        make_room=host.make_room,
    )
    host.set_targets({"a": target})
    return host, vm


def test_clear_neither_balloons_nor_swaps():
    host, vm = v6_host(950)  # free 50 < 60
    host.run_ticks(0, 1)
    assert host.mstate == C and host.state_ticks[C] == 1 and len(host.state_ticks) == 5
    assert {"share_active", "break_large"} <= host.actions
    assert vm.pmap.counts[ps.BALLOONED] == 0 and vm.pmap.counts[ps.VMM_SWAPPED] == 0
    host.check_invariants()


def test_soft_balloons_hard_swaps_low_blocks():
    host, vm = v6_host(970)  # free 30: SOFT
    host.run_ticks(0, 1)
    assert host.mstate == S and vm.pmap.counts[ps.BALLOONED] == 2
    assert vm.pmap.counts[ps.VMM_SWAPPED] == 0
    host, vm = v6_host(985)  # free 15: HARD
    host.run_ticks(0, 1)
    assert host.mstate == D and vm.pmap.counts[ps.BALLOONED] == 0
    assert vm.pmap.counts[ps.VMM_SWAPPED] == 55 and host.mem.n_free == 70  # the goal
    host, vm = v6_host(995, swap_rate_pages_per_s=0.0, balloon_rate_pages_per_s=0.0)
    host.run_ticks(0, 1)  # free 5: LOW, nothing reclaimed, the VM above target blocked
    assert host.mstate == L and host.blocked == {"a"}
    host.check_invariants()


def test_a_large_host_enters_clear_at_a_smaller_free_fraction():
    # 64 GB configured: minFree 1.9375 % -> clear below 19.4 frames of 1000
    small, _ = v6_host(970)
    large, _ = v6_host(970, memory_mb=64 * GB)  # same pages, same 3 % free
    small.run_ticks(0, 1)
    large.run_ticks(0, 1)
    assert small.mstate == S and large.mstate == H
    assert "break_large" in large.actions  # 3 % < 400 % of minFree (7.75 %)


def test_clear_deflates_only_into_the_surplus_above_the_goal():
    host, vm = v6_host(940, balloon_rate_pages_per_s=64.0)  # free 60: HIGH
    vm.inflate_balloon(host.mem, 10)  # free 70
    host.set_targets({"a": 990})  # room to deflate
    host.mstate = C
    host.run_ticks(0, 1)  # CLEAR (70 < 249.6 + margin): at most 0 frames above the goal
    assert host.mstate == C and vm.guest.n_ballooned == 10
    host2, vm2 = v6_host(900, balloon_rate_pages_per_s=64.0)  # free 100
    vm2.inflate_balloon(host2.mem, 10)  # free 110
    host2.set_targets({"a": 990})
    host2.mstate = C
    host2.run_ticks(0, 1)
    assert host2.mstate == C and vm2.guest.n_ballooned == 0 and host2.mem.n_free >= 70
    host.check_invariants()
    host2.check_invariants()


def test_share_scan_clear_factor_speeds_the_scan_in_clear_only():
    def scanned(factor: float, used: int) -> int:
        host = make_host(1000, 2048, free_states="vsphere6", share_scan_clear_factor=factor)
        vm = host.boot_vm(vm_spec("a", 1000))
        apply(vm, host.mem, writes=np.arange(used), keys=np.arange(used, dtype=np.uint64) + 1)
        host.set_targets({"a": used})
        host.run_ticks(0, 2)  # tick 0 enters the state, tick 1 scans in it
        return vm.stats.scanned, host.mstate

    assert scanned(1.0, 950) == (64, C) and scanned(2.0, 950) == (32 + 64, C)
    assert scanned(2.0, 500) == (64, H)  # HIGH: the usual rate


# ---------------------------------------------------------------------------- runs
V6 = 'free_states = "vsphere6"'
TICKS = 30


def run_v6(tmp, *args: str, policy: str = V6, host_mb: int = 18):
    cfg = write_config(tmp, small_config(duration_s=TICKS, host_mb=host_mb, policy=policy))
    out = tmp / "run"
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet", *args]) == 0
    return out


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A checkpointed vsphere6 run (read-only)."""
    return run_v6(tmp_path_factory.mktemp("v6"), "--checkpoint-every", "8")


def test_run_reports_clear_and_is_deterministic(base, tmp_path):
    states = set(pq.read_table(base / "metrics.parquet")["host_state"].to_pylist())
    assert "clear" in states and states <= {"high", "clear", "soft", "hard", "low"}
    hosts = summary_of(base)["hosts"]
    assert all(
        set(h["state_ticks"]) == {"high", "clear", "soft", "hard", "low"} for h in hosts.values()
    )
    again = run_v6(tmp_path)
    assert summary_of(again)["final_digest"] == summary_of(base)["final_digest"]
    (tmp_path / "p").mkdir()
    paper = run_v6(tmp_path / "p", policy="")
    assert summary_of(paper)["final_digest"] != summary_of(base)["final_digest"]
    assert "clear" not in summary_of(paper)["hosts"]["h-0"]["state_ticks"]


@pytest.mark.parametrize(
    ("n_vms", "host_mb", "extra"),
    [(4, 18, ""), (2, 40, '[[migrations]]\ntime_s = 6\nvm = "busy"\nto = "h-1"\n')],
)
def test_invariants_hold_every_tick(n_vms: int, host_mb: int, extra: str) -> None:
    """Under pressure (clear, soft, hard), and across a live migration between hosts."""
    text = small_config(2, n_vms, duration_s=TICKS, host_mb=host_mb, policy=V6, extra=extra)
    r = vmmsim.run(tomllib.loads(text), backend="inprocess", check_invariants=True)
    assert r.summary["migrations"]["completed"] == (1 if extra else 0)


@pytest.mark.parametrize("tick", ["t10", "t20"])
def test_resume_restores_the_state(base, tmp_path, tick):
    t = int(tick[1:])
    full = pq.read_table(base / "metrics.parquet")
    before = full.filter(pc.equal(full["tick"], t - 1))["host_state"].to_pylist()
    if t == 10:  # the checkpoint holds CLEAR: a resume that lost it would restart in HIGH
        assert set(before) == {"clear"}, before
    out = tmp_path / "resumed"
    ck = base / "checkpoints" / tick
    assert main(["resume", str(ck), "--out", str(out), "--inprocess", "--quiet"]) == 0
    assert summary_of(out)["final_digest"] == summary_of(base)["final_digest"]
    part = pq.read_table(out / "metrics.parquet")
    assert part.equals(full.filter(pc.greater_equal(full["tick"], t)))
    assert summary_of(out)["hosts"] == summary_of(base)["hosts"]  # state_ticks too


def test_record_and_replay_round_trip(tmp_path, capsys):
    rec = run_v6(tmp_path, "--record")
    assert "clear" in set(pq.read_table(rec / "metrics.parquet")["host_state"].to_pylist())
    assert main(["replay", str(rec), "--inprocess", "--quiet"]) == 0


# ---------------------------------------------------------------------------- bad input
def _parse(policy: str = V6, extra: str = "") -> object:
    return parse_config(tomllib.loads(small_config(policy=policy, extra=extra)))


@pytest.mark.parametrize(
    "key", ["free_high", "free_soft", "free_hard", "free_low", "state_up_margin"]
)
def test_free_keys_with_vsphere6_are_refused_in_one_line(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"policy.{key}: not used with free_states = 'vsphere6'"):
        _parse(f"{V6}\n{key} = 0.003")


def test_other_bad_input() -> None:
    with pytest.raises(ConfigError, match="policy.free_states: must be one of"):
        _parse('free_states = "vsphere5"')
    with pytest.raises(ConfigError, match="policy.share_scan_clear_factor: only used with"):
        _parse("share_scan_clear_factor = 2.0")
    with pytest.raises(ConfigError, match=r"policy.share_scan_clear_factor: must be >= 1"):
        _parse(f"{V6}\nshare_scan_clear_factor = 0.5")
    ev = '[[events]]\ntime_s = 5\nset = { "policy.free_states" = "vsphere6" }\n'
    with pytest.raises(ConfigError, match="cannot change during a run: a host's state model"):
        _parse("", ev)
    assert _parse(f"{V6}\nshare_scan_clear_factor = 3.0").policy.share_scan_clear_factor == 3.0


def test_an_event_setting_a_free_key_under_vsphere6_is_refused() -> None:
    ev = '[[events]]\ntime_s = 5\nset = { "policy.free_high" = 0.1 }\n'
    with pytest.raises(ConfigError, match="free_high: not used with free_states"):
        _parse(V6, ev)


def test_reports_name_clear_in_order() -> None:
    from vmmsim.cluster import report_plots as rp
    from vmmsim.cluster.report import state_shares

    assert rp.state_names(np.array(["high", "soft"])) == rp.STATES  # the paper's plots as before
    names = rp.state_names(np.array(["high", "clear"]))
    assert names == rp.STATES5
    assert rp.state_codes(["low", "clear", "high"], names) == [4, 1, 0]
    assert state_shares({"soft": 1, "clear": 2, "high": 1}) == "high 25% clear 50% soft 25%"


def test_validate_counts_the_min_free_reserve() -> None:
    from vmmsim.cluster.validate_report import host_report

    def warnings(policy: str) -> list[str]:
        text = f"""
[simulation]
page_size = 65536
content_bytes = 16
[policy]
{policy}
[[hosts]]
name = "h"
memory_mb = 65536
swap_mb = 1000
[[vms]]
name = "v"
memory_mb = 64000
min_mb = 63000
"""
        return host_report(parse_config(tomllib.loads(text)), {"v": "h"})["h"]["warnings"]

    # committed 64032 MB > 65536 x 0.94 + 1000 but < 65536 x (1 - 0.019375) + 1000
    assert any("free_high reserve of 0.06" in w for w in warnings(""))
    assert not [w for w in warnings(V6) if "in practice" in w]
