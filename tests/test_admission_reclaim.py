"""Issue 14, items 1-3, 5, 6: reclamation within swap, pinned pages, balloon cap,
placement packing and one admission rule (hosts.admission) everywhere.

Each end-to-end case is the issue's config, run in process with invariants checked
after every round (a traceback, an InvariantError or SwapFull fails the test)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
from hostkit import apply, make_host, make_policy, make_vm, vm_spec
from vmmsim.cluster.config import ConfigError, parse_config
from vmmsim.cluster.placement import PlacementError, place
from vmmsim.cluster.runner import run
from vmmsim.hosts import admission
from vmmsim.hosts import migration_host as mh
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.admission import Claim
from vmmsim.hosts.free_memory import Thresholds

from vmmsim.policies import resolve_callable

# --------------------------------------------------------------------- the configs
SWAP_FULL = {  # item 1: passes the paper's admission exactly (min 200 MB in 223 MB of
    # memory, the other 56 MB in 56 MB of swap; no overhead): the 33 MB HIGH margin is more
    # than memory + swap leave over (23 MB)
    "simulation": {"duration_s": 30, "content_bytes": 64},
    "policy": {"free_high": 0.15, "vm_overhead_mb": 0},
    "hosts": [{"name": "h", "memory_mb": 223, "swap_mb": 56}],
    "vms": [
        {
            "name": "v",
            "memory_mb": 256,
            "sharing": False,  # swap capacity is the point: no page shared instead
            "min_mb": 200,
            "balloon": False,
            "workload": {"kind": "steady", "wss_mb": 228},
        }
    ],
}
PINNED_BOOT = {  # item 2: 70 MB pinned on a 100 MB host, a boot step larger than the rest
    "simulation": {"duration_s": 5, "content_bytes": 64},
    "policy": {"vm_overhead_mb": 0},
    "hosts": [{"name": "h", "memory_mb": 100, "swap_mb": 400}],
    "images": [{"name": "custom", "zero_fraction": 0.35}],
    "vms": [{"name": "v", "memory_mb": 256, "image": "custom", "pinned_mb": 70}],
}
BALLOON_PINNED = {  # item 3: a balloon that took every unpinned page of fs
    "simulation": {"duration_s": 20, "content_bytes": 64},
    "policy": {
        "balloon_max_fraction": 0.83,
        "free_high": 0.17,
        "free_soft": 0.16,
        "vm_overhead_mb": 3.5,
    },
    "hosts": [{"name": "h", "memory_mb": 403, "swap_mb": 520}],  # swap: 514.6 MB beyond mins
    "vms": [
        {
            "name": "fs",
            "memory_mb": 123,
            "shares": 77,
            "pinned_mb": 29.4,
            "workload": {"kind": "fileserver", "warmup_s": 12},
        },
        {
            "name": "st",
            "memory_mb": 94,
            "balloon": False,
            "workload": {"kind": "steady", "wss_mb": 102},
        },
        {
            "name": "ph",
            "memory_mb": 142,
            "shares": 2100,
            "workload": {"kind": "phased", "phases": [[17, 25], [3, 18]]},
        },
        {
            "name": "bt",
            "memory_mb": 185,
            "shares": 4700,
            "max_mb": 156,
            "workload": {"kind": "batch"},
        },
    ],
}


def run_checked(data: dict, tmp_path: Path) -> dict:
    cfg = parse_config(data)
    return run(cfg, tmp_path / "out", backend="inprocess", quiet=True, check_invariants=True)


# ----------------------------------------------------------------- 1: swap never overfilled
def test_item1_reclaim_within_swap_runs(tmp_path: Path) -> None:
    summary = run_checked(SWAP_FULL, tmp_path)
    assert summary["n_ticks"] == 30
    h = summary["hosts"]["h"]
    assert 0 < h["swap_used_mb"] <= 56
    # The VM is not blocked for the rest of the run: it keeps working.
    assert summary["vms"]["v"]["counters"]["blocked_ticks"] < 15


def test_swap_out_random_never_asks_for_more_than_swap_has() -> None:
    vm, mem = make_vm(32, n_frames=64, swap=5)
    every = np.arange(32)
    apply(vm, mem, writes=every, keys=every + 1)
    assert vm.swap_out_random(mem, 20) == 5  # was SwapFull: need 20 slots, 5 free
    assert mem.swap.n_free == 0 and vm.pmap.counts[ps.VMM_SWAPPED] == 5
    assert vm.swap_out_random(mem, 3) == 0
    mem.check_invariants()


def test_free_target_never_exceeds_what_swap_can_cover() -> None:
    # 100 frames + 20 slots; HIGH margin 30 frames (free_high 0.3, no up margin).
    th = Thresholds(high=0.3, soft=0.2, hard=0.1, low=0.05, up_margin=0.0)
    pol = make_policy(thresholds=th)
    host = make_host(100, 20, policy=pol)
    assert host.free_target() == 30  # no VMs: the margin as configured
    host.boot_vm(vm_spec("a", 110))  # 110 of 120 committed: 10 left over
    assert host.free_target() == 10
    base = int(100 * (1 - 0.3))
    assert host.available_pages() == base + 20  # targets grow by what the margin lost
    host.boot_vm(vm_spec("b", 20))  # over-committed (no admission here): margin 0
    assert host.free_target() == 0


# ------------------------------------------------------------- 2: pinned + a big boot step
def test_item2_pinned_pages_and_big_boot_step_run(tmp_path: Path) -> None:
    summary = run_checked(PINNED_BOOT, tmp_path)
    assert summary["n_ticks"] == 5
    assert summary["vms"]["v"]["resident_mb"] >= 70  # the pinned pages stay in memory


def test_chunk_cap_counts_locked_frames() -> None:
    host = make_host(100, 400)
    host.boot_vm(vm_spec("p", 200, pinned_pages=70, overhead_pages=4))
    assert host.mem.n_locked == 74
    assert host.mem.chunk_cap(1000) == (100 - 74) // 2
    assert host.mem.chunk_cap(10) == 5


def test_pinned_memory_must_leave_room_in_machine_memory() -> None:
    data = {
        "policy": {"vm_overhead_mb": 0},
        "hosts": [{"name": "h", "memory_mb": 100, "swap_mb": 400}],
        "vms": [{"name": "v", "memory_mb": 256, "pinned_mb": 100, "host": "h"}],
    }
    with pytest.raises(ConfigError, match="sum of pinned_mb \\+ vm_overhead_mb over its 1"):
        parse_config(data)
    data["vms"][0].pop("host")
    with pytest.raises(PlacementError, match="pinned_mb \\+ overhead\\) and a page more"):
        place(parse_config(data))


# ------------------------------------------------------------------ 3: balloon and pinned
def test_item3_ballooned_guest_with_pinned_pages_runs(tmp_path: Path) -> None:
    summary = run_checked(BALLOON_PINNED, tmp_path)
    assert summary["n_ticks"] == 20


def test_balloon_cap_counts_pinned_pages() -> None:
    vm, _ = make_vm(100, pinned_pages=30, balloon_max_fraction=0.83)
    assert vm.balloon_cap == 83 - 30  # balloon + pinned <= 83 % of the VM
    vm, _ = make_vm(100, balloon_max_fraction=1.0)
    assert vm.balloon_cap == 99  # the guest keeps a page to run in


def test_fully_ballooned_guest_with_pinned_pages_evicts() -> None:
    vm, mem = make_vm(64, pinned_pages=16, balloon_max_fraction=1.0)
    every = np.arange(64)
    apply(vm, mem, writes=every, keys=every + 1)
    assert vm.inflate_balloon(mem, 64) == vm.balloon_cap == 47
    apply(vm, mem, reads=np.arange(16, 64))  # one guest page left: evicts, does not fail
    vm.check_invariants()
    mem.check_invariants()


# --------------------------------------------------------------------- 5: placement packing
def _cfg(hosts: list[tuple[float, float]], vms: list[float], **vm_kw) -> dict:
    """Hosts (memory, swap), VMs of these sizes (min 0: each needs its size in swap), no
    overhead: packing on the paper's swap rule."""
    return {
        "policy": {"vm_overhead_mb": 0},
        "hosts": [
            {"name": f"h{i}", "memory_mb": m, "swap_mb": s} for i, (m, s) in enumerate(hosts)
        ],
        "vms": [{"name": f"v{i}", "memory_mb": x, **vm_kw} for i, x in enumerate(vms)],
    }


def test_item5_packing_finds_an_assignment_greedy_misses() -> None:
    # Config-order greedy (most free memory) puts v0 on h1, v1 on h0, v2 on h1: v3 fits
    # nowhere; h0 = {v0, v2} (500 of 507 MB of swap), h1 = {v1, v3} (750 of 751) fits.
    cfg = parse_config(_cfg([(254, 507), (352, 751)], [300, 450, 200, 300]))
    where = place(cfg)
    for h in cfg.host_names():
        hc = cfg.host(h)
        used = sum(cfg.vm(v).memory_mb for v, x in where.items() if x == h)
        assert used <= hc.swap_mb
    assert sorted(where) == ["v0", "v1", "v2", "v3"]


def test_placement_of_configs_greedy_places_is_unchanged() -> None:
    cfg = parse_config(_cfg([(100, 200), (120, 120), (80, 130)], [60, 50, 40, 30, 20]))
    # As the config-order greedy placed it before the fallback search existed.
    assert place(cfg) == {"v0": "h1", "v1": "h0", "v2": "h2", "v3": "h1", "v4": "h0"}


def test_refusal_names_the_closest_host_and_its_swap() -> None:
    # No assignment exists.  Largest first: v0 -> h0, v1 -> h1; v2 then lacks 79 MB of
    # swap on h0 (the host with the most free memory) but only 10 MB on h1.
    cfg = parse_config(_cfg([(101, 101), (60, 150)], [100, 80, 80]))
    with pytest.raises(PlacementError) as e:
        place(cfg)
    msg = str(e.value)
    assert "vms (v2): cannot be placed: needs 80 MB of swap (memory_mb less min_mb" in msg
    assert "the closest host h1 has 70 MB of swap not reserved" in msg


def test_refusal_names_the_closest_host_and_its_memory_plus_swap() -> None:
    # The simulator's two-page margin: memory and swap both (nearly) exactly reserved,
    # as the paper's rules allow, is refused; one page more of swap is admitted.
    page = 4096 / 2**20
    cfg = parse_config(_cfg([(100, page)], [100], min_mb=100 - page))
    with pytest.raises(PlacementError) as e:
        place(cfg)
    msg = str(e.value)
    assert "vms (v0): cannot be placed: needs 100 MB (memory_mb + overhead)" in msg
    assert "the closest host h0 has 99.9961 MB of memory + swap (less two pages)" in msg
    assert place(parse_config(_cfg([(100, 2 * page)], [100], min_mb=100 - page))) == {"v0": "h0"}


def _brute_force(cfg) -> bool:
    page = cfg.simulation.page_size / 2**20
    claims = [
        admission.claim(
            min=v.min_mb, pinned=v.pinned_mb, size=v.memory_mb, overhead=cfg.policy.vm_overhead_mb
        )
        for v in cfg.vms
    ]
    for assign in itertools.product(range(len(cfg.hosts)), repeat=len(cfg.vms)):
        ok = True
        for i, h in enumerate(cfg.hosts):
            total = admission.totals(c for c, a in zip(claims, assign, strict=True) if a == i)
            if admission.check(total, memory=h.memory_mb, swap=h.swap_mb, page=page):
                ok = False
                break
        if ok:
            return True
    return False


@pytest.mark.parametrize("policy", ["most_free", "image_affinity", "round_robin"])
def test_property_place_finds_an_assignment_when_one_exists(policy: str) -> None:
    rnd = random.Random(14)
    found = refused = 0
    for _ in range(150):
        hosts = [(rnd.randint(20, 120), rnd.choice([0, 40, 120, 240])) for _ in range(3)]
        vms = []
        for i in range(rnd.randint(2, 6)):
            mem = rnd.randint(8, 120)
            vms.append(
                {
                    "name": f"v{i}",
                    "memory_mb": mem,
                    "min_mb": rnd.choice([0, 0, rnd.randint(0, mem // 2)]),
                    "image": rnd.choice(["linux", "windows"]),
                }
            )
        data = {
            "policy": {"placement": policy, "vm_overhead_mb": rnd.choice([0, 4, 16])},
            "hosts": [
                {"name": f"h{i}", "memory_mb": m, "swap_mb": s} for i, (m, s) in enumerate(hosts)
            ],
            "vms": vms,
        }
        try:
            cfg = parse_config(data)
        except ConfigError:
            continue  # e.g. a min_mb larger than every host
        if _brute_force(cfg):
            where = place(cfg)  # must not raise
            for h in cfg.hosts:
                mine = [cfg.vm(v) for v, x in where.items() if x == h.name]
                total = admission.totals(
                    admission.claim(
                        min=v.min_mb,
                        pinned=v.pinned_mb,
                        size=v.memory_mb,
                        overhead=cfg.policy.vm_overhead_mb,
                    )
                    for v in mine
                )
                page = cfg.simulation.page_size / 2**20
                assert admission.check(total, memory=h.memory_mb, swap=h.swap_mb, page=page) is None
            assert place(cfg) == where  # deterministic
            found += 1
        else:
            with pytest.raises(PlacementError):
                place(cfg)
            refused += 1
    assert found > 30 and refused > 10  # both sides were exercised


# ---------------------------------------------------------------- 6: min_mb for every VM
def test_item6_min_mb_admission_holds_for_placed_vms() -> None:
    data = {
        "policy": {"vm_overhead_mb": 0},
        "hosts": [{"name": "h", "memory_mb": 64, "swap_mb": 512}],
        "vms": [{"name": "x", "memory_mb": 128, "min_mb": 60, "count": 3}],
    }
    with pytest.raises(PlacementError) as e:
        place(parse_config(data))
    assert "vms (x-1): cannot be placed: needs 60 MB of memory (min_mb" in str(e.value)
    assert "the closest host h has 4 MB of memory not reserved" in str(e.value)
    data["hosts"][0]["count"] = 3  # one per host: admitted
    assert sorted(place(parse_config(data)).values()) == ["h-0", "h-1", "h-2"]


def test_item6_migration_admission_checks_min_pages() -> None:
    host = make_host(256, 512)
    host.boot_vm(vm_spec("there", 64, min_pages=200))
    reason = mh.can_accept(host, vm_spec("mover", 64, min_pages=100), 0)
    assert reason is not None and "sum of min + overhead" in reason and "> memory 256" in reason
    assert mh.can_accept(host, vm_spec("small", 64, min_pages=50), 0) is None


def test_admission_rules() -> None:
    c = admission.claim(min=10, pinned=20, size=50, overhead=2)
    assert c == Claim(reserve=22, pinned=22, commit=52, swap=30)
    assert admission.check(c + c, memory=45, swap=100) is None
    assert admission.check(c + c, memory=43, swap=100).rule == "reserve"
    r = admission.check(c + c, memory=44, swap=100)
    assert r is not None and r.rule == "pinned"  # 44 pinned leaves no page
    r = admission.check(c + c, memory=100, swap=59)
    assert r is not None and (r.rule, r.total, r.limit) == ("swap", 60, 59)
    assert admission.check(c + c, memory=100, swap=60) is None
    # min (at least pinned) + overhead in memory and the rest in swap, exactly: the
    # paper's rules hold; the simulator's two-page margin refuses.
    assert admission.check(c + c, memory=44 + 1, swap=60 + 0.5).rule == "commit"
    assert admission.check(c + c, memory=44 + 1, swap=60 + 1) is None


def test_paper_rule_refuses_what_memory_plus_swap_admitted() -> None:
    """The old rule (sum of size + overhead <= memory + swap) admitted a VM whose size
    fits in memory when swap is small; the paper reserves swap for size - min."""
    data = {
        "hosts": [{"name": "h", "memory_mb": 1024, "swap_mb": 64}],
        "vms": [{"name": "v", "memory_mb": 256, "host": "h"}],
    }
    with pytest.raises(ConfigError, match=r"memory_mb - min_mb \(at least pinned_mb\) = 256 MB"):
        parse_config(data)
    data["vms"][0]["min_mb"] = 192  # 192 + 32 MB in memory, 64 MB in swap: admitted
    assert place(parse_config(data)) == {"v": "h"}
    data["vms"].append({"name": "w", "memory_mb": 64})  # unpinned: swap is taken
    data["hosts"].append({"name": "g", "memory_mb": 4096, "swap_mb": 32})
    with pytest.raises(PlacementError, match="needs 64 MB of swap") as e:
        place(parse_config(data))
    assert "the closest host g has 32 MB of swap not reserved" in str(e.value)


# ------------------------------- max_mb below memory_mb: admission counts memory_mb (14)
def _capped(
    swap_mb: float,
    memory_mb: float = 64,
    min_mb: float = 0,
    max_mb: float = 40,
    vm_mb: float = 128,
    **sim,
) -> dict:
    """A 128 MB VM capped at max_mb 40, no balloon, touching every page, on a 64 MB host
    (``vm_mb``: another VM size; the working set is the whole VM)."""
    return {
        "simulation": {"duration_s": 10, "content_bytes": 64, **sim},
        "hosts": [{"name": "h", "memory_mb": memory_mb, "swap_mb": swap_mb}],
        "vms": [
            {
                "name": "v",
                "memory_mb": vm_mb,
                "min_mb": min_mb,
                "max_mb": max_mb,
                "balloon": False,
                "sharing": False,  # every page to swap (none shared before paging out)
                "host": "h",
                "workload": {"kind": "steady", "wss_mb": vm_mb},
            }
        ],
    }


def test_admission_counts_memory_mb_not_max_mb() -> None:
    # max_mb 40 fits in 100 MB of swap, but the VM can touch all 128 MB: swap must hold
    # memory_mb - min_mb (the paper's max - min; it ran out of memory and swap before),
    # pinned or placed.
    for pinned in (True, False):
        data = _capped(100)
        if not pinned:
            data["vms"][0].pop("host")
        with pytest.raises(ConfigError) as e:
            parse_config(data)
        assert "memory_mb - min_mb (at least pinned_mb) = 128 MB > swap_mb 100 MB" in str(e.value)
    two = _capped(100, memory_mb=160, min_mb=40)  # 40 + 32 MB in memory, 88 MB in swap
    two["vms"].append(dict(two["vms"][0], name="w"))
    with pytest.raises(ConfigError) as e:
        parse_config(two)
    assert "sum of memory_mb - min_mb over its 2 pinned VMs (v, w) is 176 MB" in str(e.value)
    assert "> swap_mb 100 MB (over by 76 MB)" in str(e.value)
    assert parse_config(_capped(128)).vms[0].max_mb == 40
    assert admission.claim(min=0, pinned=0, size=128, overhead=1).commit == 129


def test_migration_admission_counts_configured_pages_not_max() -> None:
    host = make_host(256, 400)
    capped = vm_spec("capped", 401, max_pages=100)
    reason = mh.can_accept(host, capped, 0)
    assert reason is not None and "sum of size - min" in reason and "> swap 400" in reason
    assert mh.can_accept(host, vm_spec("fits", 400, max_pages=100), 0) is None


def test_migration_admission_reserves_swap_for_size_less_min() -> None:
    """The old rule (size + overhead within memory + swap) let a 300-page VM onto a host
    of 1024 frames and 100 slots; the paper's rule wants its 300 - min pages in swap."""
    host = make_host(1024, 100)
    reason = mh.can_accept(host, vm_spec("big", 300), 0)
    assert reason is not None and "sum of size - min over the host's VMs" in reason
    assert "is 300 pages > swap 100 pages" in reason
    assert mh.can_accept(host, vm_spec("big", 300, min_pages=200), 0) is None


@pytest.mark.parametrize(
    ("page_size", "overhead"), [(4096, 0.0), (1024, 0.0), (1024, 1.3)], ids=["4k", "1k", "1k+ovh"]
)
def test_capped_vm_touching_every_page_at_the_admission_limit_runs(
    page_size: int, overhead: float, tmp_path: Path
) -> None:
    """memory + swap exactly at the limit (memory_mb + overhead + two pages): every page
    touched, swap full; was SwapFull (a chunk of swapped-in pages needed more frames than
    free frames + free slots, and emergency swapping of shared pages used slots without
    freeing frames).  The paper's rules: min = max_mb (5/16 of the VM) + overhead in
    memory (two pages over), the rest in swap.  The VM has 32768 pages at every page size
    (128 MB of 4 KB, 32 MB of 1 KB): at the limit every access is its own chunk."""
    page = page_size / 2**20
    vm = 32768 * page
    mn = vm * 5 / 16
    data = _capped(
        vm - mn,
        memory_mb=mn + overhead + 2 * page,
        min_mb=mn,
        max_mb=mn,
        vm_mb=vm,
        page_size=page_size,
    )
    data["policy"] = {"vm_overhead_mb": overhead}
    summary = run_checked(data, tmp_path)
    assert summary["n_ticks"] == 10
    h = summary["hosts"]["h"]
    assert h["swap_used_mb"] > 0.45 * vm and h["emergency_swapped_pages"] > 0
    with pytest.raises(ConfigError, match="less two pages"):
        parse_config(
            _capped(
                vm - mn,
                memory_mb=mn + overhead + page,
                min_mb=mn,
                max_mb=mn,
                vm_mb=vm,
                page_size=page_size,
            )
            | {"policy": data["policy"]}
        )


SEED_87 = {  # bench/fuzz.py seed 87 after the rule change: SwapFull at tick 6, swap full
    "simulation": {"seed": 87, "duration_s": 30, "page_size": 1024, "content_bytes": 32},
    "policy": {
        "tax_rate": 0.015,
        "sample_period_s": 5.827,
        "balloon_max_fraction": 0.25,
        "balloon_rate_pages_per_s": 0.0,
        "vm_overhead_mb": 5.23,
    },
    "images": [
        {"name": "img0", "shared_fraction": 0.579, "zero_fraction": 0.015, "family": "other"},
    ],
    # swap 89.212 MB before the paper's rule (memory_mb - min_mb in swap)
    "hosts": [{"name": "h", "count": 4, "memory_mb": 9.679, "swap_mb": 91.65}],
    "vms": [
        {
            "name": "v0",
            "memory_mb": 91.641,
            "max_mb": 88.947,
            "sharing": False,
            "image": "img0",
            "workload": {
                "kind": "phased",
                "phases": [[6.185, 89.464], [1.758, 26.968]],
                "repeat": False,
                "touch_rate": 0.655,
                "write_fraction": 0.245,
            },
        }
    ],
}


def test_fuzz_seed87_swap_full_chunks_run(tmp_path: Path) -> None:
    summary = run_checked(SEED_87, tmp_path)
    assert summary["n_ticks"] == 30
    assert summary["hosts"]["h-0"]["emergency_swapped_pages"] > 0


def test_chunk_cap_counts_free_frames_and_free_swap_slots() -> None:
    host = make_host(64, 10)
    vm = host.boot_vm(vm_spec("v", 72))
    mem = host.mem
    apply(vm, mem, writes=np.arange(64), keys=np.arange(64) + 1)
    assert vm.swap_out_random(mem, 8) == 8
    assert (mem.n_free, mem.swap.n_free) == (8, 2)
    assert mem.chunk_cap(1000) == 10  # was 32: half the frames, whatever swap held
    # All 72 pages at once (8 swapped, 8 untouched: 16 frames, 8 free, 2 slots): served
    # in chunks, as the host does it.
    apply(vm, mem, reads=np.arange(72), make_room=host._make_room)
    assert vm.pmap.counts[ps.UNTOUCHED] == 0
    assert mem.n_free + mem.swap.n_free == 2
    mem.check_invariants()


def test_emergency_swap_prefers_pages_that_free_a_frame() -> None:
    vm, mem = make_vm(32, n_frames=64, swap=8)
    every = np.arange(32)
    apply(vm, mem, writes=every, keys=np.where(every < 16, 5, every + 1))
    for _ in range(2):  # hint, then merge: pages 0..15 share one frame
        mem.scan(vm.vm_id, every)
    assert vm.pmap.counts[ps.MAPPED] == 16 and vm.pmap.counts[ps.SHARED] == 16
    free = mem.n_free
    assert vm.swap_out_random(mem, 8, frames_first=True) == 8
    assert mem.n_free == free + 8  # eight frames for eight slots
    mem.check_invariants()


# ------------------------------- rates of 0: only background reclamation stops (14, b)
def test_zero_swap_and_balloon_rates_still_back_every_page(tmp_path: Path) -> None:
    data = {
        "simulation": {"duration_s": 10, "content_bytes": 64},
        "policy": {
            "swap_rate_pages_per_s": 0,
            "balloon_rate_pages_per_s": 0,
            "vm_overhead_mb": 0,
        },
        "hosts": [{"name": "h", "memory_mb": 64, "swap_mb": 128}],
        "vms": [
            {
                "name": "v",
                "memory_mb": 128,
                "sharing": False,  # pages go to swap, not to the zero page
                "workload": {"kind": "steady", "wss_mb": 120},
            }
        ],
    }
    summary = run_checked(data, tmp_path)
    assert summary["n_ticks"] == 10
    h = summary["hosts"]["h"]
    assert h["swap_used_mb"] > 20 and h["emergency_swapped_pages"] > 0
    assert summary["vms"]["v"]["counters"]["blocked_ticks"] < 10


# --------------------------------------------- placement policies and admission (issue 15)
POLICIES = """
SEEN = []

def first_only(view):
    return [view.hosts[0].name]

def record(view):
    SEEN.append((view.vm, tuple((h.name, h.admits) for h in view.hosts)))
    return [h.name for h in view.hosts]
"""


def test_placement_policy_ranking_only_refusing_hosts_is_refused(tmp_path: Path) -> None:
    (tmp_path / "pol.py").write_text(POLICIES)
    data = {
        "policy": {"placement": f"{tmp_path / 'pol.py'}:first_only"},
        "hosts": [
            {"name": "small", "memory_mb": 1024, "swap_mb": 64},  # 1 GB free, little swap
            {"name": "roomy", "memory_mb": 512, "swap_mb": 512},
        ],
        "vms": [{"name": "v", "memory_mb": 256}],
    }
    with pytest.raises(PlacementError) as e:
        place(parse_config(data))
    msg = str(e.value)
    assert "policy.placement: placement policy" in msg and "for VM v ranked only hosts" in msg
    assert "small refuses it: admission: sum of memory_mb - min_mb" in msg
    assert "is 256 MB > swap_mb 64 MB" in msg and "roomy, left out, would admit it" in msg
    # The built-in policies rank every host; admission skips the refusing one.
    data["policy"]["placement"] = "most_free"
    assert place(parse_config(data)) == {"v": "roomy"}


def test_placement_view_tells_which_hosts_admit(tmp_path: Path) -> None:
    (tmp_path / "pol2.py").write_text(POLICIES)
    spec = f"{tmp_path / 'pol2.py'}:record"
    data = {
        "policy": {"placement": spec},
        "hosts": [
            {"name": "a", "memory_mb": 1024, "swap_mb": 300},
            {"name": "b", "memory_mb": 1024, "swap_mb": 200},
        ],
        "vms": [{"name": "x", "memory_mb": 200}, {"name": "y", "memory_mb": 200}],
    }
    assert place(parse_config(data)) == {"x": "a", "y": "b"}
    seen = dict(resolve_callable("placement", spec).__globals__["SEEN"])
    assert seen["x"] == (("a", True), ("b", True))
    assert seen["y"] == (("a", False), ("b", True))  # a has 100 MB of swap left
