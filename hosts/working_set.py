"""Working-set estimation by sampling (ESX, Waldspurger 2002, section 5.3).

Scope: every sampling period the VMM picks ``n`` random pages of a VM (among the pages it
has allocated) and invalidates them; the first touch of each costs a minor fault and is
counted.  At the end of a period ``f = touched / n``.  The estimate is the maximum of a
fast and a slow exponentially weighted moving average of ``f`` and of the current
period's partial estimate -- respond quickly to increases, slowly to decreases.

Gains are per period: fast 0.5, slow 0.1 (documented defaults).  The true active fraction
(pages touched during the period / pages allocated, from the VMM's accessed bits) is kept
beside the estimate so estimation error is visible.

Not covered: what the estimate is used for (:mod:`hosts.allocation`).
"""

from __future__ import annotations

import numpy as np

FAST_GAIN = 0.5
SLOW_GAIN = 0.1


class WorkingSetSampler:
    """Per-VM sampler state: the marked sample, touched count and the two averages."""

    def __init__(self, n_pages: int, n_sample: int) -> None:
        self.n_sample = n_sample
        self.marks = np.zeros(n_pages, dtype=bool)
        self.sampled = 0
        self.touched = 0
        self.fast = 0.0
        self.slow = 0.0
        self.periods = 0
        self.active_true = 0.0

    def start_period(self, allocated_pages: np.ndarray, rng: np.random.Generator) -> None:
        self.marks[:] = False
        n = min(self.n_sample, len(allocated_pages))
        if n:
            pick = rng.choice(len(allocated_pages), size=n, replace=False)
            self.marks[allocated_pages[pick]] = True
        self.sampled = n
        self.touched = 0

    def on_access(self, ppns: np.ndarray) -> int:
        """Count first touches of marked pages (each a minor fault); unmark them."""
        hit = ppns[self.marks[ppns]]
        if len(hit):
            self.marks[hit] = False
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
        """max(fast, slow, current partial); 1.0 until the first period ends."""
        if self.periods == 0:
            return 1.0  # nothing measured yet: assume fully active (no tax)
        return max(self.fast, self.slow, self.partial)
