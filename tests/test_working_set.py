"""Working-set estimation by sampling (ESX sec. 5.3): accuracy, fast rise, slow fall, the
three averages, and periods in each VM's execution time (pauses, blocking, snapshots)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hostkit import make_host, vm_spec
from vmmsim.hosts.phys_map import ACCESSED, DIRTY, SAMPLED
from vmmsim.hosts.snapshot import host_state, restore_host, restore_vm, vm_state
from vmmsim.hosts.working_set import (
    FAST_GAIN,
    SLOW_GAIN,
    WorkingSetSampler,
    WorkingSetView,
    esx_sampler,
)
from vmmsim.workloads.patterns import Accesses

N_PAGES = 400
SAMPLE = 100
PERIOD = 4  # ticks (sample_period_s 4, tick_s 1)


def se(p: float, n: int = SAMPLE) -> float:
    """Binomial standard error of a sampled fraction."""
    return math.sqrt(p * (1 - p) / n)


class Activity:
    """A VM workload that writes all its pages at boot, then every tick reads a fixed
    fraction ``p`` of them (a fixed set: a prefix of one random permutation)."""

    def __init__(self, vm, seed: int) -> None:
        self.n = vm.spec.n_pages
        self.order = np.random.default_rng(seed).permutation(self.n).astype(np.int64)
        self.p = 0.0
        vm.workload.step = self.step
        vm.workload.plan = lambda i: None  # this step is not the idle workload's plan

    def step(self, i: int) -> Accesses:
        if i == 0:
            every = np.arange(self.n, dtype=np.int64)
            return Accesses(writes=every, write_keys=(every + 1).astype(np.uint64))
        return Accesses(reads=self.order[: round(self.p * self.n)])


def busy_vm(seed: int = 0, sample: int = SAMPLE):
    host = make_host(2 * N_PAGES, 16, seed=seed, sample_pages=sample, sample_period_s=float(PERIOD))
    vm = host.boot_vm(vm_spec("w", N_PAGES, sharing=False))
    return host, vm, Activity(vm, seed)


def run_periods(host, k: int) -> None:
    """Run ``k`` periods' ticks.  From a boundary, the last of them is still open: its
    measurement is the partial estimate until the next tick closes it."""
    host.run_ticks(host.tick, k * PERIOD)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("p", [0.1, 0.3, 0.7])
def test_estimate_is_within_three_standard_errors(seed, p):
    host, vm, act = busy_vm(seed)
    act.p = p
    run_periods(host, 5)
    s = vm.sampler
    assert s.periods == 3 and s.sampled == SAMPLE  # periods 1-3 ended, 4 is running
    assert s.active_true == pytest.approx(p)  # the accessed bits see exactly the set
    assert abs(s.estimate - p) <= 3 * se(p), (s.fast, s.slow, s.partial)
    host.check_invariants()


def test_boot_period_without_allocated_pages_does_not_count():
    """Nothing was allocated when the first sample was drawn (the VM was just booting):
    that period carries no information and must not pull the averages to 0."""
    host, vm, act = busy_vm()
    act.p = 0.8
    run_periods(host, 2)  # period 0 (empty sample) closed at tick 4, period 1 running
    assert vm.sampler.estimate >= 0.8 - 3 * se(0.8) and vm.sampler.periods == 0
    host.run_ticks(host.tick, 1)  # closes period 1
    assert vm.sampler.periods == 1 and vm.sampler.slow == vm.sampler.fast
    assert abs(vm.sampler.slow - 0.8) <= 3 * se(0.8)


def test_estimate_rises_quickly_when_activity_steps_up():
    host, vm, act = busy_vm()
    act.p = 0.1
    run_periods(host, 6)
    assert vm.sampler.estimate < 0.1 + 3 * se(0.1)
    act.p = 0.8
    host.run_ticks(host.tick, 1)  # one tick into the new period: its counts so far
    s = vm.sampler
    assert s.partial >= 0.8 - 3 * se(0.8)
    # The third average is the fast one updated with the partial fraction (paper, 5.3):
    # about 0.1 + 0.5 * 0.7 = 0.45 -- risen within the period, but not the raw partial.
    assert s.estimate == pytest.approx(s.fast + FAST_GAIN * (s.partial - s.fast))
    assert 0.1 + 3 * se(0.1) < s.estimate < 0.8 - 3 * se(0.8)
    run_periods(host, 1)  # the high period ended (fast ~0.45), the next one is running
    assert s.estimate >= 0.45 + FAST_GAIN * 0.35 - 3 * se(0.8)  # ~0.625


def test_estimate_falls_slowly_when_activity_steps_down():
    host, vm, act = busy_vm()
    act.p = 0.8
    run_periods(host, 6)
    assert abs(vm.sampler.estimate - 0.8) <= 3 * se(0.8)
    act.p = 0.1
    run_periods(host, 1)
    host.run_ticks(host.tick, 1)  # one low period has ended
    # The slow average moves by SLOW_GAIN of the step per period: 0.8 -> about 0.73.
    assert vm.sampler.estimate >= 0.8 - SLOW_GAIN * 0.7 - 3 * se(0.8)
    run_periods(host, 2)  # three low periods have ended
    assert vm.sampler.slow > 0.5  # ~0.1 + 0.7 * 0.9**3 = 0.61
    assert vm.sampler.fast < 0.3  # ~0.1 + 0.7 * 0.5**3 = 0.19: already followed
    assert vm.sampler.estimate == vm.sampler.slow
    run_periods(host, 40)
    assert abs(vm.sampler.estimate - 0.1) <= 3 * se(0.1) + 0.7 * 0.9**40


def test_sampler_averages_exactly():
    s = WorkingSetSampler(10)
    bits = np.full(100, ACCESSED | DIRTY, dtype=np.uint8)  # a VM's PhysMap.bits
    rng = np.random.default_rng(0)
    allocated = np.arange(100, dtype=np.int64)
    assert s.estimate == 1.0  # nothing measured yet
    fast = slow = None
    for touched in (4, 10, 0, 6):
        s.start_period(bits, allocated, rng)
        marked = np.flatnonzero(bits & SAMPLED)
        assert len(marked) == 10 and s.sampled == 10
        assert s.on_access(bits, marked[:touched]) == touched
        assert s.on_access(bits, marked[:touched]) == 0  # each marked page faults once
        assert ((bits & ~np.uint8(SAMPLED)) == ACCESSED | DIRTY).all()  # other bits kept
        assert s.partial == touched / 10
        s.end_period(active_true=0.0)
        f = touched / 10
        if fast is None:
            fast = slow = f
        else:
            fast += FAST_GAIN * (f - fast)
            slow += SLOW_GAIN * (f - slow)
        assert s.fast == pytest.approx(fast) and s.slow == pytest.approx(slow)
    s.start_period(bits, allocated, rng)
    assert s.estimate == pytest.approx(max(fast, slow))


def test_sampler_never_samples_more_than_allocated():
    s = WorkingSetSampler(100)
    bits = np.zeros(50, dtype=np.uint8)
    s.start_period(bits, np.arange(7, dtype=np.int64), np.random.default_rng(1))
    assert s.sampled == 7 and (bits[:7] == SAMPLED).all() and not bits[7:].any()


def test_third_average_is_the_fast_one_updated_with_the_current_counts():
    s = WorkingSetSampler(10)
    bits = np.zeros(100, dtype=np.uint8)
    rng = np.random.default_rng(3)
    allocated = np.arange(100, dtype=np.int64)
    s.start_period(bits, allocated, rng)
    s.on_access(bits, np.flatnonzero(bits & SAMPLED)[:2])
    s.end_period(active_true=0.0)  # f = 0.2: fast = slow = 0.2
    s.start_period(bits, allocated, rng)
    assert s.estimate == pytest.approx(0.2)  # nothing touched yet: fast_now = 0.1
    s.on_access(bits, np.flatnonzero(bits & SAMPLED)[:8])  # partial 0.8
    want = 0.2 + FAST_GAIN * (0.8 - 0.2)
    assert s.estimate == pytest.approx(want) and want < s.partial  # not max(.., 0.8)
    view = WorkingSetView(s.periods, s.fast, s.slow, s.sampled, s.touched)
    assert view.fast_now == pytest.approx(want) and esx_sampler(view) == s.estimate
    # No sample this period (nothing allocated when it was drawn): no information.
    empty = WorkingSetView(3, 0.4, 0.3, 0, 0)
    assert empty.fast_now == 0.4 and esx_sampler(empty) == 0.4


def two_vms(seed: int = 0):
    """Two busy VMs (half of their pages active) on one host: ``a`` and ``b``."""
    host = make_host(3 * N_PAGES, 16, seed=seed, sample_pages=SAMPLE, sample_period_s=PERIOD)
    vms = [host.boot_vm(vm_spec(n, N_PAGES, sharing=False)) for n in ("a", "b")]
    for i, vm in enumerate(vms):
        Activity(vm, seed + i).p = 0.5
    return host, vms


def stop(host, how: str, ticks: int) -> None:
    """Keep VM ``a`` from running for ``ticks`` ticks: paused, or blocked (as in the LOW
    state; reclamation clears ``host.blocked`` every tick, so set it for each)."""
    if how == "paused":
        host.paused["a"] = float(ticks)
        host.run_ticks(host.tick, ticks)
        return
    for _ in range(ticks):
        host.blocked.add("a")
        host.run_ticks(host.tick, 1)


@pytest.mark.parametrize("how", ["paused", "blocked"])
def test_period_advances_only_while_the_vm_runs(how):
    host, (a, b) = two_vms()
    host.run_ticks(0, 2 * PERIOD + 1)  # both closed the boot period (at 4) and one more (8)
    assert a.sampler.periods == b.sampler.periods == 1
    stop(host, how, 3)  # ticks 9-11: a does not run
    assert a.stats.paused_ticks + a.stats.blocked_ticks == 3 and a.steps == b.steps - 3
    host.run_ticks(host.tick, 1)  # tick 12: b has run a whole period, a only 1 tick of it
    assert b.sampler.periods == 2 and a.sampler.periods == 1
    host.run_ticks(host.tick, 2)  # ticks 13, 14: a's period has its 4 ticks now
    assert a.sampler.periods == 1
    host.run_ticks(host.tick, 1)  # tick 15: a's own boundary
    assert a.sampler.periods == 2 and b.sampler.periods == 2
    assert a.sampler.active_true == pytest.approx(0.5)  # measured over a's own 4 ticks


def _restore(host, seed: int = 0):
    arrays, meta = host_state(host)
    specs = {n: v.spec for n, v in host.vms.items()}
    twin = restore_host(host.spec, host.sim, host.policy, specs, arrays, meta)
    for i, n in enumerate(("a", "b")):  # the test workload is code, not state: reattach
        Activity(twin.vms[n], seed + i).p = 0.5
    return twin, arrays, meta


def test_snapshot_carries_each_vms_period_clock():
    host, (a, _) = two_vms()
    host.run_ticks(0, PERIOD + 1)
    stop(host, "paused", 2)  # a's clock is now 2 ticks behind the host's
    twin, _, _ = _restore(host)
    assert twin.vms["a"].sampler.ran == a.sampler.ran != twin.vms["b"].sampler.ran
    for h in (host, twin):
        h.run_ticks(h.tick, 2 * PERIOD + 1)
    assert twin.digest(full=True) == host.digest(full=True)
    for n in ("a", "b"):
        x, y = host.vms[n].sampler, twin.vms[n].sampler
        assert (x.periods, x.ran, x.fast, x.slow) == (y.periods, y.ran, y.fast, y.slow)


@pytest.mark.parametrize("ticks", [PERIOD + 3, 2 * PERIOD])
def test_state_saved_before_per_vm_clocks_restores_the_host_wide_clock(ticks):
    """A snapshot without ``ran`` (periods were host-wide: boundaries at multiples of the
    period) resumes with each VM's clock where the host-wide one was."""
    host, _ = two_vms()
    host.run_ticks(0, ticks)  # nobody stopped: the per-VM clocks equal the host-wide one
    arrays, meta = host_state(host)
    for v in meta["vms"].values():
        del v["meta"]["sampler"]["ran"]
    twin = restore_host(
        host.spec, host.sim, host.policy, {n: v.spec for n, v in host.vms.items()}, arrays, meta
    )
    for i, n in enumerate(("a", "b")):
        Activity(twin.vms[n], i).p = 0.5
        assert twin.vms[n].sampler.ran == host.vms[n].sampler.ran
    for h in (host, twin):
        h.run_ticks(h.tick, PERIOD + 1)
    assert twin.digest(full=True) == host.digest(full=True)


def test_snapshot_stores_the_flag_bits_as_the_bool_arrays_they_were():
    """``PhysMap.bits`` (accessed, dirty, sampled) is saved as the three bool arrays of the
    format (``pmap.accessed``, ``pmap.dirty``, ``sampler.marks``) and packed back on
    restore; a VM's state without its map (migration) has no dirty bits."""
    host, (a, _) = two_vms()
    host.run_ticks(0, PERIOD + 2)
    bits = a.pmap.bits
    bits[::3] &= ~np.uint8(DIRTY)  # (as a migration collect would: every page was written)
    for bit in (ACCESSED, DIRTY, SAMPLED):  # every flag is in use
        assert (bits & bit).any() and not (bits & bit).all()
    twin, arrays, _ = _restore(host)
    for key, bit in (
        ("pmap.accessed", ACCESSED),
        ("pmap.dirty", DIRTY),
        ("sampler.marks", SAMPLED),
    ):
        got = arrays[f"vm/a/{key}"]
        assert got.dtype == np.bool_ and np.array_equal(got, (bits & bit) != 0), key
    assert twin.vms["a"].pmap.bits.dtype == np.uint8
    assert np.array_equal(twin.vms["a"].pmap.bits, bits)
    moved = vm_state(a, with_map=False)[0]
    assert "pmap.dirty" not in moved
    again = restore_vm(a.spec, host.sim, host.policy, moved, vm_state(a, with_map=False)[1])
    assert np.array_equal(again.pmap.bits, bits & (ACCESSED | SAMPLED))
