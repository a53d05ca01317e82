"""Large pages (``policy.large_pages``, :mod:`hosts.large_pages`): guest memory in 2 MB
pages that never share, swap or balloon while intact, broken under pressure (the sharing
scan from ``policy.large_page_break_state`` on) or to reclaim one of their pages.

Units run on tiny maps with 8-page regions (``LargePages`` set on the map by hand);
hosts use 64 KiB pages (32-page regions); runs use the small configs of ``runkit``."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace

import numpy as np
import pyarrow.parquet as pq
import pytest
import test_host_memory_properties as prop
from hostkit import CB, TEST_IMAGE, apply, keyed, make_mem, make_policy, pages, vm_spec, write_keys
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from runkit import small_config, summary_of, write_config
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import ConfigError, parse_config
from vmmsim.cluster.host_pool import InProcessPool
from vmmsim.cluster.migration_transfer import admit, precopy_round, stop_and_copy
from vmmsim.cluster.report import run_summary
from vmmsim.cluster.run_data import load_run
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.free_memory import MemState
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.large_pages import LargePages, breaks_at, region_pages, state_names
from vmmsim.hosts.phys_map import PhysMap
from vmmsim.hosts.snapshot import host_state, restore_host
from vmmsim.hosts.specs import HostSpec, SimParams
from vmmsim.hosts.vm import vm_page_contents

import vmmsim

R = 8  # pages per large page in the unit tests


def lp_vm(mem, n_pages: int = 32, *, large: bool = True, group: int = 0):
    pmap = PhysMap(n_pages)
    if large:
        pmap.large = LargePages(n_pages, R)
    return mem.attach(pmap, group, True, 0), pmap


def backed_vm(mem, keys, *, group: int = 0):
    """A VM whose first len(keys) pages are written with ``keys`` and backed by large
    pages (whole regions, as the host backs them at first touch)."""
    vm, pmap = lp_vm(mem, group=group)
    write_keys(mem, vm, np.arange(len(keys)), keys)
    regions, _ = pmap.large.to_back(pmap.state)
    mem.back_large(vm, regions)
    return vm, pmap


def shared_in_intact(pmap) -> int:
    lp = pmap.large
    st = pmap.state[: lp.n_regions * R].reshape(lp.n_regions, R)
    return int((st[lp.intact] == ps.SHARED).sum())


# ---------------------------------------------------------------------------- units
def test_region_size_and_state_order():
    assert region_pages(4096) == 512 and region_pages(65536) == 32 and region_pages(512) == 4096
    assert state_names() == ("high", "clear", "soft", "hard", "low")  # pressure order
    assert not breaks_at(MemState.HIGH, "soft") and breaks_at(MemState.SOFT, "soft")
    # vSphere 6's CLEAR (value 4, after LOW) sits between HIGH and SOFT by pressure
    assert not breaks_at(MemState.CLEAR, "soft") and breaks_at(MemState.CLEAR, "clear")
    assert breaks_at(MemState.SOFT, "clear") and not breaks_at(MemState.HIGH, "clear")
    assert breaks_at(MemState.LOW, "soft") and breaks_at(MemState.HIGH, "high")
    assert not breaks_at(MemState.HARD, "low")


def test_first_touch_backs_the_whole_large_page_with_zeros():
    mem = make_mem(64, 16)
    vm, pmap = lp_vm(mem)
    write_keys(mem, vm, pages(9), [5])  # one page of region 1
    regions, need = pmap.large.to_back(pmap.state)
    assert regions.tolist() == [1] and need.tolist() == [R - 1]
    assert mem.back_large(vm, regions) == R - 1
    assert (pmap.state[R : 2 * R] == ps.MAPPED).all() and pmap.resident == R
    assert pmap.large.counts() == (1, 0, 0)
    got = mem.read_bytes(vm, np.arange(R, 2 * R))
    assert np.array_equal(got[1], keyed([5])[0]) and not got[[0, 2, 3, 4, 5, 6, 7]].any()
    mem.check_invariants()


def test_intact_large_pages_never_share():
    mem = make_mem(96, 16)
    keys = [0, 0, 7, 7, 8, 9, 7, 0] * 2
    a, pa_ = backed_vm(mem, keys)
    b, pb = lp_vm(mem, large=False)
    write_keys(mem, b, np.arange(16), keys)
    for _ in range(2):
        for vm in (a, b):
            mem.scan(vm, np.arange(32))
    assert pa_.counts[ps.SHARED] == 0 and pb.counts[ps.SHARED] > 0  # b shares with itself
    assert (mem.index.kind[pa_.loc[:16]] == 0).all()  # never even a hint
    mem.check_invariants()


def test_a_broken_large_page_shares_on_a_following_scan():
    mem = make_mem(96, 16)
    keys = [7] * R + [8] * R
    a, pa_ = backed_vm(mem, keys)
    b, pb = lp_vm(mem, large=False)
    write_keys(mem, b, pages(0), [7])
    mem.scan(b, pages(0))
    before = vm_bytes = mem.read_bytes(a, np.arange(32))
    st = mem.break_large(a, np.array([0]), scan=False)  # nothing hashed: nothing at once
    assert st.merged == 0 and pa_.counts[ps.SHARED] == 0
    assert pa_.large.counts() == (1, 1, 0) and pa_.large.tick_broken == 1
    mem.scan(a, np.arange(32))
    assert (pa_.state[:R] == ps.SHARED).all()  # region 0 shares (with b's page too)
    assert (pa_.state[R : 2 * R] == ps.MAPPED).all()  # region 1 is still intact
    assert shared_in_intact(pa_) == 0
    assert np.array_equal(mem.read_bytes(a, np.arange(32)), vm_bytes)
    assert np.array_equal(before, vm_bytes)
    mem.check_invariants()


def test_pages_the_scanner_hashed_share_at_once_when_broken():
    mem = make_mem(96, 16)
    a, pa_ = backed_vm(mem, [3] * (2 * R))
    pa_.large.mark_seen(np.array([0, 1, 2, 9]))  # hashed inside intact large pages
    mem.scan(a, np.arange(32))
    assert pa_.counts[ps.SHARED] == 0  # still intact: no sharing
    s = mem.break_large(a, np.array([0, 1]))
    assert s.merged + s.hint_hits == 3  # pages 0, 1, 2, 9 -> one shared frame
    assert pa_.counts[ps.SHARED] == 4 and pa_.large.shared_at_break == 3
    assert not pa_.large.seen.any()
    mem.check_invariants()


def test_swapping_a_page_breaks_its_large_page_first_and_keeps_contents():
    mem = make_mem(64, 16)
    a, pa_ = backed_vm(mem, list(range(100, 100 + 2 * R)))
    before = mem.read_bytes(a, np.arange(32))
    freed, _ = mem.page_out(a, pages(3, 4))
    assert freed == 2 and pa_.large.intact.tolist() == [False, True, True, True]
    assert pa_.state[3] == pa_.state[4] == ps.VMM_SWAPPED
    mem.swap_out(a, pages(12))
    assert not pa_.large.intact[1] and pa_.large.counts() == (0, 2, 0)
    assert np.array_equal(mem.read_bytes(a, np.arange(32)), before)
    mem.check_invariants()


def test_ballooning_a_page_breaks_its_large_page_first():
    mem = make_mem(64, 16)
    a, pa_ = backed_vm(mem, list(range(1, 1 + R)))
    assert mem.release(a, pages(5), ps.BALLOONED) == 1
    assert not pa_.large.intact[0] and pa_.state[5] == ps.BALLOONED
    mem.check_invariants()


def test_invariants_catch_sharing_or_hints_inside_an_intact_large_page():
    mem = make_mem(96, 16)
    a, pa_ = backed_vm(mem, [4] * (2 * R))
    mem.break_large(a, np.array([0]), scan=False)
    mem.scan(a, np.arange(R))
    assert pa_.counts[ps.SHARED] == R
    pa_.large.intact[0] = True  # pretend region 0 were still intact
    with pytest.raises(InvariantError):
        mem.check_invariants()
    pa_.large.intact[0] = False
    pa_.large.n_intact += 1  # counts that disagree with the arrays
    with pytest.raises(InvariantError, match="large-page counts"):
        mem.check_invariants()
    pa_.large.n_intact -= 1
    pa_.large.seen[0] = True  # a hash kept for a page of a broken large page
    with pytest.raises(InvariantError, match="seen"):
        mem.check_invariants()
    pa_.large.seen[0] = False
    mem.check_invariants()
    with pytest.raises(InvariantError, match="intact large page"):
        mem.install_shared(a, pages(2 * R + 1), pa_.loc[pages(0)])


# ---------------------------------------------------------------------------- host
SIM = SimParams(seed=5, tick_s=1.0, page_size=65536, content_bytes=CB)  # 32-page regions
N = 128  # pages per VM: 4 large pages


def lp_host(n_frames: int = 1024) -> HostMemoryManager:
    pol = make_policy(large_pages=True, scan_vm_pages_per_s=64.0, scan_host_pages_per_s=256.0)
    return HostMemoryManager(HostSpec("h", n_frames, 4 * n_frames), SIM, pol)


def boot_two(host: HostMemoryManager) -> None:
    for name in ("a", "b"):
        host.boot_vm(vm_spec(name, N, image=TEST_IMAGE))


def test_host_backs_large_pages_shares_nothing_until_the_break_state():
    host = lp_host()
    boot_two(host)
    host.run_ticks(0, 10)
    host.check_invariants()
    for vm in host.vms.values():
        lp = vm.pmap.large
        assert lp.n_intact >= 1 and vm.resident == 32 * lp.n_intact  # whole large pages
        assert vm.pmap.counts[ps.SHARED] == 0 and lp.seen.any()
    assert host.large_first_break is None
    n_large = sum(vm.pmap.large.n_intact for vm in host.vms.values())
    # The break state reached (here: by moving it to "high", where the host is).
    host.set_policy(replace(host.policy, large_page_break_state="high"))
    cols = host.run_ticks(10, 10)
    host.check_invariants()
    assert host.large_first_break == 10 and cols["large_broken_tick"][:2].sum() > 0
    assert cols["host_large_broken"][-1] == n_large and cols["host_large_pages"][-1] == 0
    assert host.saved_pages() > 0
    assert host.summary()["large_pages"]["broken"] == n_large


def test_no_large_page_when_the_host_is_in_the_break_state_or_short_of_frames():
    for n_frames, state in ((1024, MemState.SOFT), (20, MemState.HIGH)):
        host = lp_host(n_frames)
        host.mstate = state  # (as if the last tick's reclamation had said so)
        vm = host.boot_vm(vm_spec("a", N))
        apply(vm, host.mem, writes=[0, 40], keys=[1, 2], make_room=host.make_room)
        host.back_large_pages()
        lp = vm.pmap.large
        assert lp.n_intact == 0 and lp.n_small >= 1 and vm.resident == 2, n_frames
        assert lp.intact.sum() == 4 - lp.n_small  # untouched ones may get a large page later
        host.check_invariants()


def test_snapshot_roundtrip_keeps_large_pages():
    host = lp_host()
    boot_two(host)
    host.run_ticks(0, 6)
    host.vms["a"].swap_out_random(host.mem, 5)  # breaks some of a's large pages
    arrays, meta = host_state(host)
    specs = {n: v.spec for n, v in host.vms.items()}
    again = restore_host(host.spec, SIM, host.policy, specs, arrays, json.loads(json.dumps(meta)))
    again.check_invariants()
    assert again.digest(full=True) == host.digest(full=True)
    host.run_ticks(6, 5)
    again.run_ticks(6, 5)
    assert again.digest(full=True) == host.digest(full=True)


def test_migration_backs_the_vm_with_large_pages_again():
    pol = make_policy(large_pages=True)
    pool = InProcessPool([(HostSpec(h, 1024, 2048), SIM, pol) for h in ("a", "b")])
    pool.runtimes["a"].boot([vm_spec("mover", N, image=TEST_IMAGE)])
    pool.runtimes["b"].boot([vm_spec("there", N, image=TEST_IMAGE)])
    a, b = pool.runtimes["a"].host, pool.runtimes["b"].host
    for h in (a, b):
        h.run_ticks(0, 3)
    vm = a.vms["mover"]
    vm.swap_out_random(a.mem, 3)
    vm.inflate_balloon(a.mem, 4)
    broken = vm.pmap.large.n_broken
    assert broken > 0
    spec = vm.spec
    _, refused = admit(pool, spec, "a", "b")
    assert refused is None
    precopy_round(pool, "mover", "a", "b", N, True, vm.pmap.allocated, CB)
    before = vm_page_contents(vm, a.mem)
    stop_and_copy(pool, spec, "a", "b", vm.pmap.allocated, 0.0)
    moved = b.vms["mover"]
    assert np.array_equal(vm_page_contents(moved, b.mem), before)
    lp = moved.pmap.large
    ball = np.flatnonzero(moved.pmap.state == ps.BALLOONED) // 32
    assert not lp.intact[ball].any() and lp.intact.sum() == lp.n_regions - len(np.unique(ball))
    b.check_invariants()
    b.run_ticks(3, 2)  # the rest of each intact large page is backed again
    touched = (moved.pmap.state.reshape(-1, 32) != ps.UNTOUCHED).any(axis=1)
    assert lp.n_intact == (lp.intact & touched).sum() > 0
    assert (lp.backed == lp.intact & touched).all()
    assert np.array_equal(vm_page_contents(moved, b.mem), before)
    b.check_invariants()
    a.check_invariants()


# ---------------------------------------------------------------------------- runs
PRESSED = small_config(1, 2, duration_s=20, host_mb=40, policy="large_pages = true")


def run_lp(text: str = PRESSED, *overrides: str):
    return vmmsim.run(
        tomllib.loads(text), overrides=list(overrides), backend="inprocess", check_invariants=True
    )


def test_runs_are_deterministic_and_differ_from_small_pages():
    r1, r2 = run_lp(), run_lp()
    off = run_lp(PRESSED, "policy.large_pages=false")
    assert r1.summary["final_digest"] == r2.summary["final_digest"]
    assert r1.summary["final_digest"] != off.summary["final_digest"]
    m = r1.metrics
    assert m["large_pages"].to_numpy().max() > 0
    assert "large_pages" in next(iter(r1.summary["hosts"].values()))
    assert off.metrics["large_pages"].to_numpy().max() == 0
    assert "large_pages" not in next(iter(off.summary["hosts"].values()))


def test_roomy_host_shares_nothing_until_pages_break():
    roomy = small_config(1, 4, duration_s=20, host_mb=256, policy="large_pages = true")
    on, off = run_lp(roomy), run_lp(roomy, "policy.large_pages=false")
    assert off.summary["totals"]["saved_mb"] > 8 and on.summary["totals"]["saved_mb"] == 0
    brk = run_lp(roomy, "policy.large_page_break_state=high")
    assert brk.summary["totals"]["saved_mb"] > 0.8 * off.summary["totals"]["saved_mb"]


OVERCOMMITTED = small_config(duration_s=20, host_mb=18, policy="large_pages = true")


def test_checkpoint_resume_with_large_pages(tmp_path):
    cfg = write_config(tmp_path, OVERCOMMITTED)
    base = tmp_path / "run"
    args = ["run", str(cfg), "--out", str(base), "--checkpoint-every", "8", "--inprocess"]
    assert main([*args, "--quiet"]) == 0
    out = tmp_path / "resumed"
    ck = str(base / "checkpoints/t10")
    assert main(["resume", ck, "--out", str(out), "--inprocess", "--quiet"]) == 0
    assert summary_of(out)["final_digest"] == summary_of(base)["final_digest"]
    full = pq.read_table(base / "metrics.parquet")
    assert full["host_large_broken"].to_numpy().max() > 0  # pages broke in this run
    assert "    large pages: " in run_summary(load_run(base))  # vmmsim report's text


def test_record_replay_with_large_pages(tmp_path, capsys):
    cfg = write_config(tmp_path, OVERCOMMITTED)
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--record", "--inprocess", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["replay", str(out), "--inprocess", "--quiet"]) == 0
    assert "digests identical" in capsys.readouterr().out


def test_bad_values_and_events_are_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"policy.large_page_break_state: must be one of"):
        parse_config(tomllib.loads(small_config(policy='large_page_break_state = "medium"')))
    with pytest.raises(ConfigError, match=r"policy.large_pages: .*boolean"):
        parse_config(tomllib.loads(small_config(policy="large_pages = 1")))
    ev = '[[events]]\ntime_s = 5\nset = { "policy.large_pages" = true }\n'
    with pytest.raises(ConfigError, match="cannot change during a run: guest memory is backed"):
        parse_config(tomllib.loads(small_config(extra=ev)))
    ok = '[[events]]\ntime_s = 5\nset = { "policy.large_page_break_state" = "high" }\n'
    parse_config(tomllib.loads(small_config(policy="large_pages = true", extra=ok)))


# ---------------------------------------------------------------------------- properties
LP_OP = st.one_of(
    prop.op,
    st.tuples(st.just("back"), prop.vm_ids, prop.page_sets),
    st.tuples(st.just("seen"), prop.vm_ids, prop.page_sets),
    st.tuples(st.just("break"), prop.vm_ids, prop.page_sets),
)


class LargeDriver(prop.Driver):
    """The property driver of ``test_host_memory_properties`` with 4-page large pages on
    VMs 0 and 1: first-touch backing, scanner visits and breaks in between the ops."""

    def __init__(self, sharing_vm2: bool) -> None:
        super().__init__(sharing_vm2)
        for pm in self.pmaps[:2]:
            pm.large = LargePages(prop.N_PAGES, 4)

    def step(self, o) -> None:
        kind, vm = o[0], o[1]
        lp = self.pmaps[vm].large
        if kind not in ("back", "seen", "break"):
            super().step(o)
        elif lp is None:
            return
        elif kind == "back":  # as the host: back what fits, the rest gets 4 KB pages
            regions, need = lp.to_back(self.pmaps[vm].state)
            fit = int(np.searchsorted(np.cumsum(need), self.mem.n_free, side="right"))
            self.mem.back_large(vm, regions[:fit])
            self.mem.break_large(vm, regions[fit:], scan=False)
        elif kind == "seen":
            lp.mark_seen(np.asarray(o[2], dtype=np.int64))
        else:
            regions = lp.regions_of(np.asarray(o[2], dtype=np.int64))
            self.mem.break_large(vm, regions[lp.backed[regions]])

    def check(self) -> None:
        super().check()
        for pm in self.pmaps[:2]:
            assert shared_in_intact_n(pm) == 0


def shared_in_intact_n(pmap) -> int:
    lp = pmap.large
    st_ = pmap.state[: lp.n_regions * lp.region_pages].reshape(lp.n_regions, lp.region_pages)
    return int((st_[lp.intact] == ps.SHARED).sum())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(LP_OP, max_size=40), sharing_vm2=st.booleans())
def test_large_pages_never_lose_or_leak_content(ops, sharing_vm2):
    d = LargeDriver(sharing_vm2)
    for o in ops:
        d.step(o)
        d.check()
    for vm in range(prop.N_VMS):  # scans after everything: still nothing intact shares
        d.mem.scan(vm, np.arange(prop.N_PAGES))
        d.check()
