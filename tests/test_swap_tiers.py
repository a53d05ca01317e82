"""Swap tiers (issue 18): the host swap cache (``policy.swap_cache_mb``, vSphere 5+) filled
before the regular swap, and memory compression (``policy.compression`` = esx / zswap)
keeping compressible pages in host memory; per-tier swap-in counts and costs, frame
accounting, caps, migration, checkpoint/resume, record/replay and determinism."""

from __future__ import annotations

import tomllib

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hostkit import apply, attach, keyed, make_mem, make_policy, pages, sim_params, write_keys
from runkit import small_config, summary_of, write_config
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import ConfigError, parse_config
from vmmsim.cluster.host_pool import InProcessPool
from vmmsim.cluster.migration_transfer import admit, precopy_round
from vmmsim.hosts import compression as zc
from vmmsim.hosts.host_memory import HostMemory
from vmmsim.hosts.specs import HostSpec
from vmmsim.hosts.vm import FaultCosts, TickCounters, vm_page_contents
from vmmsim.hosts.vmm_swap import SwapStore

import vmmsim

CB = 64


# ---------------------------------------------------------------------------- the store
def test_one_tier_store_is_the_old_single_stack():
    s = SwapStore(6, CB)
    assert s.put(keyed([1, 2, 3])).tolist() == [0, 1, 2]
    s.free(np.array([2, 0]))
    assert s.put(keyed([4, 5, 6])).tolist() == [0, 2, 3]
    assert s.n_free == 2 and s.cache_slots == 0
    s.check_invariants(np.array([0, 1, 2, 3]))


def test_put_uses_cache_slots_before_disk_slots_whatever_the_order_of_frees():
    s = SwapStore(4, CB, cache_slots=3)  # slots 0..2 cache, 3..6 disk
    a = s.put(keyed(range(1, 6)))
    assert a.tolist() == [0, 1, 2, 3, 4]
    s.free(np.array([1, 4]))  # a disk slot freed last: still a cache slot comes first
    assert s.put(keyed([9])).tolist() == [1]
    assert s.put(keyed([9, 9])).tolist() == [4, 5]
    assert s.n_cache_used == 3 and s.n_free == 1
    s.check_invariants(np.array([0, 1, 2, 3, 4, 5]))
    assert s.tier_of(np.array([0, 2, 3, 6])).tolist() == [0, 0, 1, 1]


def test_compression_tier_grows_and_keeps_its_own_free_stack():
    s = SwapStore(2, CB)
    z = s.put_zip(keyed(range(1, 71)), np.ones(70, np.int8), 0, np.arange(70))
    assert (z >= 2).all() and len(np.unique(z)) == 70 and s.n_zip_used == 70
    assert s.n_free == 2  # the regular swap is untouched
    s.free(z[:5])
    assert s.put(keyed([1])).tolist() == [0]  # a disk slot, not a freed compression slot
    s.check_invariants(np.concatenate([[0], z[5:]]))


def test_kernel_push_equals_the_store_free():
    from vmmsim.hosts.vm_kernel import push_slots

    a, b = SwapStore(5, CB, cache_slots=3), SwapStore(5, CB, cache_slots=3)
    for s in (a, b):
        s.put(keyed(range(1, 9)))
        s.put_zip(keyed([1, 2]), np.array([1, 2], np.int8), 0, np.arange(2))
    slots = np.array([7, 1, 8, 4, 0], dtype=np.int32)
    a.free(slots)
    b.used[slots] = False
    assert push_slots(b.free_stack, b.tier, slots) == (2, 1)
    assert np.array_equal(a.tier, b.tier) and np.array_equal(a.free_stack, b.free_stack)


# ---------------------------------------------------------------------------- sizes
def test_size_classes_come_from_the_bytes():
    data = keyed(range(1, 4001))
    u = zc.size_units(data, np.arange(4000))
    assert np.array_equal(u, zc.size_units(data.copy(), np.arange(4000)))  # same bytes
    frac = [np.mean(u == k) for k in (1, 2, 0)]
    assert abs(frac[0] - 0.4) < 0.03 and abs(frac[1] - 0.3) < 0.03 and abs(frac[2] - 0.3) < 0.03
    zeros = np.zeros((3, CB), np.uint8)
    assert zc.size_units(zeros, np.arange(3)).tolist() == [1, 1, 1]  # zero pages: smallest


# ---------------------------------------------------------------------------- compression
def _compressing_mem(n_frames=64, mode="esx", pct=50.0, accept=100.0) -> HostMemory:
    mem = make_mem(n_frames, 64)
    mem.configure_compression(mode, pct, accept)
    return mem


def test_compressed_pages_take_a_fraction_of_a_frame_and_read_back_exactly():
    mem = _compressing_mem()
    vm, pm = attach(mem, 40)
    keys = list(range(1, 41))
    write_keys(mem, vm, range(40), keys)
    before = mem.read_bytes(vm, pages(*range(40)))
    free0 = mem.n_free
    n, _ = mem.page_out(vm, pages(*range(40)))
    units = zc.size_units(before, np.arange(40))
    zipped = int(np.count_nonzero(units))
    assert mem.zip_pages(vm) == zipped and 0 < zipped < 40
    assert mem.n_zip_frames == zc.frames_for(int(units.sum())) < zipped
    assert n == 40 - mem.n_zip_frames and mem.n_free == free0 + n
    assert mem.swap.n_used == 40 - zipped  # the rest went to disk
    mem.check_invariants()
    assert np.array_equal(mem.read_bytes(vm, pages(*range(40))), before)
    f = mem.read(vm, pages(*range(40)))
    assert (f.zip_in, f.vmm_swapin) == (zipped, 40 - zipped)
    assert mem.n_zip_frames == 0 and mem.zip_pages(vm) == 0  # the cache gave its frames back
    assert np.array_equal(mem.read_bytes(vm, pages(*range(40))), before)
    mem.check_invariants()


def test_esx_cache_is_capped_per_vm_and_the_rest_goes_to_swap():
    mem = _compressing_mem(pct=10.0)  # 40 pages: 4 frames = 16 quarter pages per VM
    a, _ = attach(mem, 40, sharing=False)  # (else the zero pages would share, not swap)
    b, _ = attach(mem, 40, sharing=False)
    zero = [0] * 20  # zero pages: a quarter page each
    write_keys(mem, a, range(20), zero)
    write_keys(mem, b, range(20), zero)
    mem.page_out(a, pages(*range(20)))
    mem.page_out(b, pages(*range(20)))
    assert mem.zip_pages(a) == mem.zip_pages(b) == 16  # each VM its own cap
    assert mem.n_zip_frames == 8 and mem.swap.n_used == 8
    mem.check_invariants()


def test_zswap_at_its_cap_refuses_and_writes_back_its_oldest_below_the_threshold():
    mem = _compressing_mem(n_frames=100, mode="zswap", pct=4.0, accept=50.0)  # 4 frames
    vm, pm = attach(mem, 60, sharing=False)
    write_keys(mem, vm, range(60), [0] * 60)  # zero pages: a quarter page each
    before = mem.read_bytes(vm, pages(*range(60)))
    mem.page_out(vm, pages(*range(20)))  # 16 fit (the cap), 4 refused; the pool is full:
    assert mem.zip_full and mem.zip_pages(vm) == 7  # written back to < 50 % of 16
    zipped = np.flatnonzero(pm.loc[:20] >= mem.swap.zip_base)
    assert zipped.tolist() == list(range(9, 16))  # the oldest (first compressed) left first
    assert mem.swap.n_used == 13 and mem.n_zip_frames == 2
    mem.check_invariants()
    mem.page_out(vm, pages(*range(20, 24)))  # below the threshold: accepts again
    assert mem.zip_pages(vm) == 11 and not mem.zip_full
    mem.check_invariants()
    assert np.array_equal(mem.read_bytes(vm, pages(*range(60))), before)


def test_zswap_pool_that_takes_none_of_a_batch_still_shrinks():
    """A store that finds the pool at its limit queues the shrinker even when the pool took
    none of the pages (Linux zswap): a pool one quarter page short of its cap, offered a
    half-page page, refuses it and writes back below its accept threshold at once."""
    mem = _compressing_mem(n_frames=100, mode="zswap", pct=4.0, accept=50.0)  # 16 quarters
    vm, pm = attach(mem, 60, sharing=False)
    write_keys(mem, vm, range(15), [0] * 15)  # zero pages: a quarter page each
    half = np.arange(1, 4000, dtype=np.uint64)
    half = half[zc.size_units(keyed(half), np.arange(len(half))) == 2][:1]
    write_keys(mem, vm, [15], half)
    before = mem.read_bytes(vm, pages(*range(16)))
    mem.page_out(vm, pages(*range(15)))
    assert mem.zip_pages(vm) == 15 and not mem.zip_full  # one quarter page left
    mem.page_out(vm, pages(15))  # needs two: refused, the pool is full -> shrinks
    assert mem.zip_full and mem.zip_pages(vm) == 7  # below 50 % of 16 quarter pages
    assert pm.loc[15] < mem.swap.zip_base  # the refused page went to disk
    mem.check_invariants()
    assert np.array_equal(mem.read_bytes(vm, pages(*range(16))), before)


def test_esx_full_cache_writes_its_oldest_pages_to_swap():
    mem = _compressing_mem(pct=10.0)  # 40 pages: 16 quarter pages
    vm, pm = attach(mem, 40, sharing=False)
    write_keys(mem, vm, range(40), [0] * 40)
    mem.page_out(vm, pages(*range(16)))
    assert mem.zip_pages(vm) == 16 and mem.swap.n_used == 0
    mem.page_out(vm, pages(*range(16, 20)))  # room for 4: pages 0..3 go to swap
    assert mem.zip_pages(vm) == 16 and mem.swap.n_used == 4
    assert (pm.loc[:4] < mem.swap.zip_base).all() and (pm.loc[4:20] >= mem.swap.zip_base).all()
    mem.check_invariants()


def _quarter_keys(n: int) -> np.ndarray:
    """``n`` distinct non-zero content keys whose pages compress to a quarter page."""
    keys = np.arange(1, 40 * n + 1, dtype=np.uint64)
    return keys[zc.size_units(keyed(keys), np.arange(len(keys))) == 1][:n]


def test_a_page_whose_compression_would_free_no_frame_goes_to_swap():
    mem = _compressing_mem()
    vm, pm = attach(mem, 40, sharing=False)
    keys = _quarter_keys(8)
    write_keys(mem, vm, range(8), keys)
    assert mem.page_out(vm, pages(0, 1, 2, 3))[0] == 3  # 4 pages into one cache frame
    assert mem.n_zip_frames == 1 and mem.zip_pages(vm) == 4
    free0 = mem.n_free
    # One more page would open a second cache frame: compressing it frees nothing net.
    assert mem.page_out(vm, pages(4))[0] == 1 and mem.n_free == free0 + 1
    assert mem.zip_pages(vm) == 4 and mem.n_zip_frames == 1 and mem.swap.n_used == 1
    assert pm.loc[4] < mem.swap.zip_base  # on disk
    # Two pages fill half of a new frame: compressed (two frames freed, one taken).
    assert mem.page_out(vm, pages(5, 6))[0] == 1
    assert mem.zip_pages(vm) == 6 and mem.n_zip_frames == 2 and mem.swap.n_used == 1
    mem.check_invariants()
    assert np.array_equal(mem.read_bytes(vm, pages(*range(8))), keyed(keys))


def test_zip_evict_writes_the_oldest_compressed_pages_to_swap_while_it_has_slots():
    mem = HostMemory(64, 6, CB)
    mem.configure_compression("esx", 50.0)
    vm, pm = attach(mem, 40, sharing=False)
    keys = _quarter_keys(16)
    write_keys(mem, vm, range(16), keys)
    mem.page_out(vm, pages(*range(16)))
    assert mem.n_zip_frames == 4 and mem.swap.n_used == 0
    free0 = mem.n_free
    assert mem.zip_evict(vm, 1) == 1 and mem.n_free == free0 + 1  # four quarter pages
    assert (pm.loc[:4] < mem.swap.zip_base).all() and (pm.loc[4:16] >= mem.swap.zip_base).all()
    assert mem.swap.n_used == 4 and mem.zip_pages(vm) == 12 and mem.n_zip_frames == 3
    # Two slots left: two pages go to disk, not enough to free a frame; then none.
    assert mem.zip_evict(vm, 2) == 0 and mem.swap.n_free == 0 and mem.zip_pages(vm) == 10
    assert mem.zip_evict(vm, 2) == 0 and mem.zip_pages(vm) == 10
    mem.check_invariants()
    assert np.array_equal(mem.read_bytes(vm, pages(*range(16))), keyed(keys))


@pytest.mark.parametrize("mode", ["esx", "zswap"])
def test_make_room_writes_the_compression_cache_to_swap_when_only_pinned_pages_are_left(mode):
    from hostkit import make_host, vm_spec
    from vmmsim.hosts.errors import SwapFull

    # 40 frames: 24 pinned pages, 16 zero pages compressed into 4 cache frames, 12 free.
    pct = {"compression_cache_pct": 50.0, "zswap_max_pool_percent": 50.0}
    host = make_host(40, 256, compression=mode, **pct)
    a = host.boot_vm(vm_spec("a", 64, pinned_pages=24, sharing=False))
    mem = host.mem
    keys = np.r_[np.arange(1, 25), np.zeros(16)].astype(np.uint64)
    apply(a, mem, writes=range(40), keys=keys, make_room=host.make_room)
    a.swap_out_random(mem, 40)
    assert a.resident == 24 and mem.n_zip_frames == 4 and mem.zip_pages(a.vm_id) == 16
    assert mem.n_free == 12 and mem.swap.n_used == 0 and mem.n_locked == 24
    before, free0 = vm_page_contents(a, mem), mem.n_free
    host.make_room(3, a)  # nothing left to page out: the cache gives 3 of its 4 frames
    assert mem.n_free == free0 + 3 and mem.n_zip_frames == 1 and mem.zip_pages(a.vm_id) == 4
    assert mem.swap.n_used == 12 and a.resident == 24
    assert np.array_equal(vm_page_contents(a, mem), before)
    mem.check_invariants()
    host.make_room(1, a)
    assert mem.n_zip_frames == 0 and mem.swap.n_used == 16
    with pytest.raises(SwapFull):  # now only pinned pages: really out of memory
        host.make_room(1, a)
    assert np.array_equal(vm_page_contents(a, mem), before)
    host.check_invariants()


def test_a_fault_costs_its_tier_latency():
    costs = FaultCosts(disk_s=5e-3, minor_s=0.0, cache_s=1e-4, decompress_s=1e-5)
    assert costs.throughput(1.0, TickCounters(disk=100)) == pytest.approx(1 / 1.5)
    assert costs.throughput(1.0, TickCounters(cache_swapins=100)) == pytest.approx(1 / 1.01)
    assert costs.throughput(1.0, TickCounters(decompressions=100)) == pytest.approx(1 / 1.001)


@pytest.mark.parametrize("fast", [True, False])
def test_kernel_and_general_paths_count_tiers_alike(fast):
    from hostkit import make_vm

    mem = HostMemory(200, 16, CB, cache_slots=8)
    mem.configure_compression("esx", 50.0)
    vm, _ = make_vm(64, mem=mem)
    vm.fast_path = fast
    apply(vm, mem, writes=range(40), keys=list(range(1, 41)))
    vm.swap_out_random(mem, 30)
    before = vm_page_contents(vm, mem)
    z, c = mem.zip_pages(vm.vm_id), mem.swap.n_cache_used
    d = mem.swap.n_used - c
    assert z and c == 8 and d
    apply(vm, mem, reads=range(40))
    t = vm.tick
    assert (t.decompressions, t.cache_swapins, t.vmm_swapins) == (z, c, d)
    assert np.array_equal(vm_page_contents(vm, mem), before)
    mem.check_invariants()


# ---------------------------------------------------------------------------- migration
def test_migration_of_compressed_and_swap_cache_pages():
    from test_migration import N, assert_source_holds_nothing, boot_scene, final, host

    sim = sim_params(CB)
    pol = make_policy(swap_cache_pages=6, compression="esx", compression_cache_pct=25.0)
    pool = InProcessPool([(HostSpec(h, 256, 512), sim, pol) for h in ("a", "b")])
    spec = boot_scene(pool)
    a, b = host(pool, "a"), host(pool, "b")
    vm = a.vms["mover"]
    apply(vm, a.mem, writes=range(30, 46), keys=list(range(100, 116)), make_room=a._make_room)
    vm.swap_out_random(a.mem, 30)
    assert a.mem.zip_pages(vm.vm_id) and a.mem.swap.n_cache_used
    assert admit(pool, spec, "a", "b")[1] is None
    precopy_round(pool, "mover", "a", "b", N, True, vm.pmap.allocated, CB)
    before, old_id = vm_page_contents(vm, a.mem), vm.vm_id
    final(pool, spec)
    assert np.array_equal(vm_page_contents(b.vms["mover"], b.mem), before)
    assert_source_holds_nothing(a, old_id)
    assert a.mem.zip_pages(old_id) == 0 and a.mem.swap.n_cache_used == 0
    b.check_invariants()


# ---------------------------------------------------------------------------- runs
ON = ["policy.compression=esx", "policy.swap_cache_mb=2"]
CFG = small_config(1, 4, duration_s=30, host_mb=24)


def _run(*overrides: str):
    return vmmsim.run(
        tomllib.loads(CFG), overrides=list(overrides), backend="inprocess", check_invariants=True
    )


def _sum(r, col: str) -> int:
    return int(pc.sum(r.metrics[col]).as_py())


@pytest.mark.parametrize("mode", [["policy.compression=esx"], ["policy.compression=zswap"], ON])
def test_runs_keep_invariants_are_deterministic_and_cut_disk_faults(mode):
    off, on, again = _run(), _run(*mode), _run(*mode)
    assert on.final_digest == again.final_digest != off.final_digest
    assert _sum(on, "faults_vmm_swap") < _sum(off, "faults_vmm_swap")
    assert _sum(on, "decompressions") > 0
    assert _sum(off, "decompressions") == _sum(off, "faults_swap_cache") == 0
    assert max(on.metrics["host_compression_mb"].to_pylist()) > 0


#: Pinned VMs whose compression caches could take all the memory they do not pin (the
#: fuzzer's seeds 34 and 47): 9 of 12 MB pinned, caps of 50 % of 16 MB per VM.
PINNED = """
[simulation]
seed = 3
duration_s = 4
content_bytes = 64

[policy]
vm_overhead_mb = 0
compression_cache_pct = 50
zswap_max_pool_percent = 40

[[hosts]]
name = "h"
memory_mb = 12
swap_mb = 64

[[vms]]
name = "v"
count = 3
memory_mb = 16
pinned_mb = 3
balloon = false
[vms.workload]
kind = "steady"
wss_mb = 10
write_fraction = 0.5
"""


@pytest.mark.parametrize("mode", ["esx", "zswap"])
def test_pinned_vms_whose_caches_fill_memory_run_on_swap(mode):
    cfg = tomllib.loads(PINNED)
    r = vmmsim.run(
        cfg,
        overrides=[f"policy.compression={mode}"],
        backend="inprocess",
        check_invariants=True,
    )
    assert _sum(r, "decompressions") > 0 and _sum(r, "faults_vmm_swap") > 0
    assert max(r.metrics["host_compression_mb"].to_pylist()) > 0
    assert r.summary["hosts"]["h"]["emergency_swapped_pages"] > 0


def test_swap_cache_takes_swap_ins_off_the_disk():
    off, on = _run(), _run("policy.swap_cache_mb=4")
    assert _sum(on, "faults_swap_cache") > 0
    assert _sum(on, "faults_vmm_swap") < _sum(off, "faults_vmm_swap")
    assert _sum(on, "faults_vmm_swap") + _sum(on, "faults_swap_cache") > 0


def test_checkpoint_resume_with_compression_and_swap_cache(tmp_path, capsys):
    policy = 'compression = "esx"\nswap_cache_mb = 2'
    cfg = write_config(tmp_path, small_config(duration_s=30, host_mb=18, policy=policy))
    base = tmp_path / "base"
    args = ["--checkpoint-every", "8", "--inprocess", "--quiet"]
    assert main(["run", str(cfg), "--out", str(base), *args]) == 0
    full = pq.read_table(base / "metrics.parquet")
    assert pc.sum(full["decompressions"]).as_py() > 0
    out = tmp_path / "resumed"
    ck = base / "checkpoints" / "t20"
    assert main(["resume", str(ck), "--out", str(out), "--inprocess", "--quiet"]) == 0
    assert summary_of(out)["final_digest"] == summary_of(base)["final_digest"]
    part = pq.read_table(out / "metrics.parquet")
    assert part.equals(full.filter(pc.greater_equal(full["tick"], 20)))


def test_record_replay_with_compression_and_swap_cache(tmp_path, capsys):
    policy = 'compression = "zswap"\nswap_cache_mb = 2'
    cfg = write_config(tmp_path, small_config(duration_s=20, host_mb=18, policy=policy))
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--record", "--inprocess", "--quiet"]) == 0
    assert pc.sum(pq.read_table(out / "metrics.parquet")["decompressions"]).as_py() > 0
    capsys.readouterr()
    assert main(["replay", str(out), "--inprocess", "--quiet"]) == 0
    assert "digests identical" in capsys.readouterr().out


def test_bad_values_and_events_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="policy.compression: must be one of"):
        parse_config(tomllib.loads(small_config(policy='compression = "lz4"')))
    with pytest.raises(ConfigError, match="policy.swap_cache_mb"):
        parse_config(tomllib.loads(small_config(policy="swap_cache_mb = -1")))
    ev = '[[events]]\ntime_s = 5\nset = { "policy.compression" = "esx" }\n'
    with pytest.raises(ConfigError, match="cannot change during a run"):
        parse_config(tomllib.loads(small_config(extra=ev)))
