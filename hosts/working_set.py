"""Working-set estimation by sampling (ESX, Waldspurger 2002, sections 5.2-5.3).

Scope: every sampling period the VMM picks ``n`` random pages of a VM (among the pages it
has allocated) and invalidates them; the first touch of each costs a minor fault and is
counted.  At the end of a period ``f = touched / n``.  The estimate is the maximum of
three exponentially weighted moving averages (paper, sec. 5.3): a slow one and a fast one
of ``f``, and a version of the fast one that takes in the current period's counts -- the
fast average updated with the partial fraction ``touched / sampled`` so far (what it
would become if the period ended now).  So the estimate responds quickly to increases,
also within a period, and slowly to decreases.

Sampling periods are in VM *execution* time (as in the paper, sec. 5.3): a period ends
when its VM has run ``period_ticks`` ticks in it (:attr:`WorkingSetSampler.ran`, counted
by the host); ticks when the VM is blocked, paused or between hosts while migrating do
not count, so every VM has its own period boundary.

Where the numbers come from: ``n`` = 100 pages per 30 s period are the paper's defaults
(``[policy] sample_pages``, ``sample_period_s``).  The gains -- fast 0.5, slow 0.1 per
period (:data:`FAST_GAIN`, :data:`SLOW_GAIN`) -- are *not* given in the paper; they are
this simulator's choice.  The true active fraction (pages touched during the period /
pages allocated, from the VMM's accessed bits) is kept beside the estimate so estimation
error is visible.

The sample itself is not kept here: it is the :data:`hosts.phys_map.SAMPLED` bit of the
VM's map (``PhysMap.bits``, one byte per page beside the accessed and dirty bits), which
the compiled steps test and clear.  :meth:`WorkingSetSampler.start_period` and
:meth:`~WorkingSetSampler.on_access` take that array from the caller each time (a restored
or migrated VM has a new map: a reference kept here would go stale).

The estimator -- how ``f`` per period becomes the estimate -- is a policy (kind
``working_set`` in :mod:`vmmsim.policies`, ``[policy] working_set``): a function
``(WorkingSetView) -> float`` in [0, 1], called by the host whenever the estimate is read
(reallocation reports, metrics).  The built-in ``esx_sampler`` is the rule above.  The
sampling itself (which pages, the faults) is the mechanism and stays here.  A policy runs
inside the host (actor): it must be a deterministic function of its view; a value that is
not a finite number in [0, 1] is a :class:`vmmsim.policies.PolicyError` (the host fails).

Not covered: what the estimate is used for (:mod:`hosts.allocation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from vmmsim.hosts.phys_map import SAMPLED, clear, flag

from vmmsim.policies import PolicyError, register
from vmmsim.policies import call as call_policy

#: Per-period gains of the fast and slow averages: this simulator's choice (the paper
#: gives no values).
FAST_GAIN = 0.5
SLOW_GAIN = 0.1


@dataclass(frozen=True)
class WorkingSetView:
    """What a working-set estimator sees of one VM's sampler (read-only).

    ``periods``: sampling periods ended with a sample; ``fast`` / ``slow``: the EWMAs of
    the per-period fraction ``f`` (gains :data:`FAST_GAIN`, :data:`SLOW_GAIN`; equal to
    the first ``f`` after one period); ``sampled`` / ``touched``: the current period's
    sample size and its pages touched so far (``partial = touched / sampled``);
    ``fast_now``: the fast average updated with ``partial`` (the paper's third average).
    """

    periods: int
    fast: float
    slow: float
    sampled: int
    touched: int

    @property
    def partial(self) -> float:
        return self.touched / self.sampled if self.sampled else 0.0

    @property
    def fast_now(self) -> float:
        return fast_with_partial(self.fast, self.sampled, self.touched)


def fast_with_partial(fast: float, sampled: int, touched: int) -> float:
    """The fast average updated with the current period's counts so far (``fast`` when
    nothing was sampled this period: no information)."""
    if not sampled:
        return fast
    return fast + FAST_GAIN * (touched / sampled - fast)


@register("working_set", "esx_sampler")
def esx_sampler(view: WorkingSetView) -> float:
    """ESX: max(slow, fast, fast with the current period); 1.0 until a period ends."""
    if view.periods == 0:
        return 1.0  # nothing measured yet: assume fully active (no tax)
    return max(view.slow, view.fast, view.fast_now)


class WorkingSetSampler:
    """Per-VM sampler state: sample size, touched count, the two averages and the period
    clock ``ran`` (ticks the VM has run in the current period: the host adds one per tick
    the VM steps and ends the period when it reaches ``period_ticks``).  The marked sample
    is the :data:`~hosts.phys_map.SAMPLED` bit of the VM's ``PhysMap.bits`` (passed in).

    ``estimator`` (set by the host): a ``working_set`` policy and its name; None is the
    built-in ``esx_sampler`` computed inline."""

    estimator: tuple[Callable[[WorkingSetView], float], str] | None = None

    def __init__(self, n_sample: int) -> None:
        self.n_sample = n_sample
        self.sampled = 0
        self.touched = 0
        self.fast = 0.0
        self.slow = 0.0
        self.periods = 0
        self.active_true = 0.0
        # The period clock: ticks the VM has run in the current period; -1 until the host
        # starts the first period (at the VM's first tick).
        self.ran = -1

    def start_period(
        self, bits: np.ndarray, allocated_pages: np.ndarray, rng: np.random.Generator
    ) -> None:
        """Mark a new sample of ``allocated_pages`` in ``bits`` (the VM's ``PhysMap.bits``:
        its :data:`~hosts.phys_map.SAMPLED` bits, the old sample's cleared)."""
        clear(bits, SAMPLED)
        n = min(self.n_sample, len(allocated_pages))
        if n:
            pick = rng.choice(len(allocated_pages), size=n, replace=False)
            bits[allocated_pages[pick]] |= np.uint8(SAMPLED)
        self.sampled = n
        self.touched = 0
        self.ran = 0

    def on_access(self, bits: np.ndarray, ppns: np.ndarray) -> int:
        """Count first touches of marked pages (each a minor fault); unmark them (``bits``:
        the VM's ``PhysMap.bits``)."""
        hit = ppns[flag(bits[ppns], SAMPLED)]
        if len(hit):
            clear(bits, SAMPLED, hit)
            self.touched += len(hit)
        return len(hit)

    def end_period(self, active_true: float) -> None:
        self.active_true = active_true
        if not self.sampled:
            # Nothing was allocated when the sample was drawn (e.g. the boot period): no
            # information, so the averages are left alone rather than pulled towards 0.
            return
        f = self.touched / self.sampled
        if self.periods == 0:
            self.fast = self.slow = f
        else:
            self.fast += FAST_GAIN * (f - self.fast)
            self.slow += SLOW_GAIN * (f - self.slow)
        self.periods += 1

    @property
    def partial(self) -> float:
        return self.touched / self.sampled if self.sampled else 0.0

    @property
    def estimate(self) -> float:
        """The estimator's value (default: max(slow, fast, fast with the current period);
        1.0 until the first period ends)."""
        if self.estimator is not None:
            return self._estimate_with(*self.estimator)
        if self.periods == 0:
            return 1.0  # nothing measured yet: assume fully active (no tax)
        return max(self.slow, self.fast, fast_with_partial(self.fast, self.sampled, self.touched))

    def _estimate_with(self, fn: Callable[[WorkingSetView], float], name: str) -> float:
        view = WorkingSetView(self.periods, self.fast, self.slow, self.sampled, self.touched)
        f = call_policy("working-set", name, fn, view)
        if isinstance(f, bool) or not isinstance(f, (int, float, np.floating, np.integer)):
            raise PolicyError(f"working-set policy {name!r} returned {f!r}, not a number")
        if not (math.isfinite(float(f)) and 0.0 <= float(f) <= 1.0):
            raise PolicyError(f"working-set policy {name!r} returned {f!r}, not in [0, 1]")
        return float(f)
