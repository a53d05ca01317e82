"""The ``phased`` pattern: a working set that steps through a list of sizes over time.

Like the "toucher" program of the ESX paper (fig. 6): for ``duration_s`` seconds the
guest touches a working set of ``wss_mb``, then moves to the next ``[duration_s, wss_mb]``
pair.  The working sets are nested -- each is a prefix of one fixed random order of the
guest's pages (private-data pages first, then the image and zero pages), drawn at boot
from the VM's generator -- so growing touches new pages and shrinking leaves pages cold.
Every working-set page is touched ``touch_rate`` times per second on average, so the
access rate scales with the working set, as for a program that sweeps its memory.

After the last phase the list starts again (``repeat = true``, the default) or the last
phase holds for the rest of the run (``repeat = false``).  The phase at step ``k`` is a
function of ``k`` alone, so the only state is the generator.

Not covered: estimating the working set (``hosts/working_set.py``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from itertools import accumulate

import numpy as np
from vmmsim.workloads.patterns import Accesses, SplitPlan, Workload, WorkloadEnv, check_range


@dataclass(frozen=True)
class PhasedParams:
    phases: tuple[tuple[float, float], ...] = field(
        default=((60.0, 8.0), (60.0, 32.0)),
        metadata={
            "help": "list of [duration_s, wss_mb] pairs: touch wss_mb for duration_s, "
            "then the next pair"
        },
    )
    repeat: bool = field(
        default=True,
        metadata={"help": "start the list again after the last phase (false: hold the last)"},
    )
    touch_rate: float = field(
        default=1.0, metadata={"help": "mean accesses per working-set page per second"}
    )
    write_fraction: float = field(default=0.1, metadata={"help": "fraction of accesses that write"})

    def validate(self) -> list[str]:
        if not self.phases:
            return ["phases: must hold at least one [duration_s, wss_mb] pair (got [])"]
        for i, (dur, mb) in enumerate(self.phases):
            if dur <= 0 or mb < 0:
                return [
                    f"phases: phase {i} needs duration_s > 0 and wss_mb >= 0 "
                    f"(got [{dur:g}, {mb:g}])"
                ]
        return check_range(self, "touch_rate", 0.0) + check_range(self, "write_fraction", 0.0, 1.0)


class Phased(Workload):
    """A working set that steps through a list of sizes (the paper's toucher)."""

    kind = "phased"
    Params = PhasedParams

    def __init__(self, params: PhasedParams, env: WorkloadEnv, rng: np.random.Generator) -> None:
        super().__init__(params, env, rng)
        start = min(env.layout.data_start, env.n_pages)
        data = start + rng.permutation(env.n_pages - start)
        boot = rng.permutation(start)
        self.order = np.concatenate([data, boot]).astype(np.int64)
        self.n_data = len(data)
        self.ends = list(accumulate(d for d, _ in params.phases))
        self.sizes = [env.pages(mb) for _, mb in params.phases]

    def phase_at(self, step: int) -> int:
        """Index of the phase that step ``step`` falls in."""
        t = step * self.env.tick_s
        total = self.ends[-1]
        if self.params.repeat:
            t = t % total
        elif t >= total:
            return len(self.ends) - 1
        return min(bisect.bisect_right(self.ends, t), len(self.ends) - 1)

    def wss_pages(self, step: int) -> int:
        """Working-set size, in pages, at step ``step``."""
        return self.sizes[self.phase_at(step)]

    def _plan(self, step: int) -> SplitPlan:
        wss = self.wss_pages(step)
        rate = self.params.touch_rate * wss * self.env.tick_s
        n = int(self.rng.poisson(rate)) if rate > 0 else 0
        n_w = int(self.rng.binomial(n, self.params.write_fraction)) if n else 0
        # reads from the first wss pages of the order, writes from its data pages among them
        return SplitPlan(self.order, wss, n - n_w, self.order, max(1, min(wss, self.n_data)), n_w)

    def _accesses(self, step: int) -> Accesses:
        return self._plan(step).draw(self.rng)
