"""Working-set estimation by sampling (ESX sec. 5.3): accuracy, fast rise, slow fall."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hostkit import make_host, vm_spec
from vmmsim.hosts.working_set import FAST_GAIN, SLOW_GAIN, WorkingSetSampler
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
    host.run_ticks(host.tick, 1)  # one tick into the new period: the partial estimate
    assert vm.sampler.estimate >= 0.8 - 3 * se(0.8)
    run_periods(host, 1)
    assert vm.sampler.estimate >= 0.8 - 3 * se(0.8)


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
    s = WorkingSetSampler(100, 10)
    rng = np.random.default_rng(0)
    allocated = np.arange(100, dtype=np.int64)
    assert s.estimate == 1.0  # nothing measured yet
    fast = slow = None
    for touched in (4, 10, 0, 6):
        s.start_period(allocated, rng)
        marked = np.flatnonzero(s.marks)
        assert len(marked) == 10 and s.sampled == 10
        assert s.on_access(marked[:touched]) == touched
        assert s.on_access(marked[:touched]) == 0  # each marked page faults once
        assert s.partial == touched / 10
        s.end_period(active_true=0.0)
        f = touched / 10
        if fast is None:
            fast = slow = f
        else:
            fast += FAST_GAIN * (f - fast)
            slow += SLOW_GAIN * (f - slow)
        assert s.fast == pytest.approx(fast) and s.slow == pytest.approx(slow)
    s.start_period(allocated, rng)
    assert s.estimate == pytest.approx(max(fast, slow))


def test_sampler_never_samples_more_than_allocated():
    s = WorkingSetSampler(50, 100)
    s.start_period(np.arange(7, dtype=np.int64), np.random.default_rng(1))
    assert s.sampled == 7 and s.marks.sum() == 7 and s.marks[:7].all()
