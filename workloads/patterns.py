"""Access patterns: which guest pages a VM touches each tick, and what it writes.

Scope: the per-tick access stream of one guest, as numpy arrays of guest page numbers.
Each pattern is a small class with a frozen ``Params`` dataclass (the keys of its
``[vms.workload]`` table, with help text) and its own ``numpy.random.Generator``.  The
stream depends only on the VM's step count, never on what the host did (an *open-loop*
model: faults slow a VM down, they do not change what it asks for), so a recorded stream
can be replayed under any policy.

Step 0 is the guest's boot: it writes the image and zero regions (:mod:`workloads.images`).

Not covered: guest page tables, faults and costs (``hosts/guest_os.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
from vmmsim.workloads import patterns_kernel
from vmmsim.workloads.content import nonzero_keys
from vmmsim.workloads.images import BootLayout, ImageSpec, boot_writes

EMPTY_I = np.zeros(0, dtype=np.int64)
EMPTY_K = np.zeros(0, dtype=np.uint64)


@dataclass(frozen=True)
class Accesses:
    """One tick of guest accesses: reads and writes of guest pages, writes with content keys.

    ``disk_reads`` counts file reads the guest must serve from disk *because its memory is
    too small for the file set the workload models* (e.g. a VM configured smaller than
    its file server's hot files): I/O that touches no page of its own, which a host should
    charge as disk stalls.  0 for every pattern except :mod:`workloads.fileserver`.
    """

    reads: np.ndarray = field(default_factory=lambda: EMPTY_I)
    writes: np.ndarray = field(default_factory=lambda: EMPTY_I)
    write_keys: np.ndarray = field(default_factory=lambda: EMPTY_K)
    disk_reads: int = 0

    @property
    def count(self) -> int:
        return len(self.reads) + len(self.writes)

    @staticmethod
    def concat(a: Accesses, b: Accesses) -> Accesses:
        return Accesses(
            np.concatenate([a.reads, b.reads]),
            np.concatenate([a.writes, b.writes]),
            np.concatenate([a.write_keys, b.write_keys]),
            a.disk_reads + b.disk_reads,
        )


class SplitPlan(NamedTuple):
    """A step whose counts are drawn and whose pages and keys are not yet: ``n_r`` reads
    from ``pool_r[:len_r]``, then ``n_w`` writes from ``pool_w[:len_w]`` and their keys --
    exactly :func:`workloads.patterns_kernel.draw_split` of those pools, left to the caller
    (:mod:`hosts.tick_steps` draws them inside one compiled call for many VMs).  The pools
    are whole arrays the workload keeps (prefixes by length), so a caller may keep
    references to them across steps."""

    pool_r: np.ndarray
    len_r: int
    n_r: int
    pool_w: np.ndarray
    len_w: int
    n_w: int

    def draw(self, rng: np.random.Generator) -> Accesses:
        """The accesses this plan stands for (numpy's stream, as if never split)."""
        pr, pw = self.pool_r[: self.len_r], self.pool_w[: self.len_w]
        return Accesses(*patterns_kernel.draw_split(rng, pr, self.n_r, pw, self.n_w))


@dataclass(frozen=True)
class WorkloadEnv:
    """What a pattern may know about its VM."""

    n_pages: int
    page_size: int
    tick_s: float
    seed: int
    image: ImageSpec
    layout: BootLayout
    vm_name: str = ""  # the VM's identity: its image and program pages' private content

    def pages(self, mb: float) -> int:
        return min(self.n_pages, int(mb * 2**20) // self.page_size)


class Workload:
    """Base class: boot at step 0, then the pattern's own accesses.

    Subclasses set ``kind`` and ``Params`` and implement :meth:`_accesses`.
    """

    kind: ClassVar[str] = ""
    Params: ClassVar[type] = object

    def __init__(self, params: Any, env: WorkloadEnv, rng: np.random.Generator) -> None:
        self.params = params
        self.env = env
        self.rng = rng

    def step(self, step: int) -> Accesses:
        acc = self._accesses(step)
        if step == 0:
            e = self.env
            pages, keys = boot_writes(e.image, e.layout, e.seed, e.vm_name)
            acc = Accesses.concat(Accesses(writes=pages, write_keys=keys), acc)
        return acc

    def plan(self, step: int) -> SplitPlan | None:
        """Step ``step`` as a :class:`SplitPlan` (its counts drawn now, its pages and keys
        by the caller, from this generator), or None: the pattern's step is not one split
        draw (or it is the boot), so the caller must use :meth:`step`.  Either way the
        generator's stream is the same."""
        return None if step == 0 else self._plan(step)

    def _plan(self, step: int) -> SplitPlan | None:
        return None

    def _accesses(self, step: int) -> Accesses:  # pragma: no cover - abstract
        raise NotImplementedError

    # --- state that travels with a VM (migration, checkpoints); JSON-able, no pickle ---
    def get_state(self) -> dict:
        return {"rng": self.rng.bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]

    def _draw(self, pool: np.ndarray, n: int) -> np.ndarray:
        """``pool[rng.integers(0, len(pool), size=n)]`` (compiled, same stream)."""
        return patterns_kernel.draw(self.rng, pool, n)

    def _split_plan(self, pool: np.ndarray, n: int, write_fraction: float) -> SplitPlan:
        """``n`` accesses to ``pool``, each a write with probability ``write_fraction``."""
        n_w = int(self.rng.binomial(n, write_fraction)) if n > 0 else 0
        return SplitPlan(pool, len(pool), n - n_w, pool, len(pool), n_w)


def _rate(n: int, per_s: float, tick_s: float, rng: np.random.Generator) -> int:
    """Accesses this tick for a mean rate; Poisson so fractional rates work at any tick."""
    return int(rng.poisson(per_s * tick_s)) if per_s > 0 else 0


def check_range(
    params: Any, key: str, lo: float, hi: float | None = None, *, lo_open: bool = False
) -> list[str]:
    """``["key: must be in [lo, hi] (got v)"]`` if ``params.key`` is out of range, else []."""
    v = getattr(params, key)
    ok = (v > lo if lo_open else v >= lo) and (hi is None or v <= hi)
    if ok:
        return []
    left = "(" if lo_open else "["
    want = f"in {left}{lo:g}, {hi:g}]" if hi is not None else f"{'>' if lo_open else '>='} {lo:g}"
    return [f"{key}: must be {want} (got {v:g})"]


@dataclass(frozen=True)
class IdleParams:
    background_fraction: float = field(
        default=0.01, metadata={"help": "fraction of memory in the housekeeping set"}
    )
    accesses_per_s: float = field(
        default=20.0, metadata={"help": "mean accesses per second to the housekeeping set"}
    )
    write_fraction: float = field(
        default=0.05, metadata={"help": "fraction of accesses that write"}
    )

    def validate(self) -> list[str]:
        return (
            check_range(self, "background_fraction", 0.0, 1.0)
            + check_range(self, "accesses_per_s", 0.0)
            + check_range(self, "write_fraction", 0.0, 1.0)
        )


class Idle(Workload):
    """An idle guest: a little housekeeping in a small background set."""

    kind = "idle"
    Params = IdleParams

    def __init__(self, params: IdleParams, env: WorkloadEnv, rng: np.random.Generator) -> None:
        super().__init__(params, env, rng)
        n = max(1, int(params.background_fraction * env.n_pages))
        # Housekeeping lives among the image and zeroed pages (kernel, daemons).
        lo = 0
        hi = max(env.layout.data_start, n)
        self.background = np.arange(lo, min(hi, env.n_pages), dtype=np.int64)[:n]

    def _plan(self, step: int) -> SplitPlan:
        n = _rate(len(self.background), self.params.accesses_per_s, self.env.tick_s, self.rng)
        return self._split_plan(self.background, n, self.params.write_fraction)

    def _accesses(self, step: int) -> Accesses:
        return self._plan(step).draw(self.rng)


@dataclass(frozen=True)
class SteadyParams:
    wss_mb: float = field(default=16.0, metadata={"help": "working-set size in MB"})
    write_fraction: float = field(default=0.1, metadata={"help": "fraction of accesses that write"})
    accesses_per_s: float = field(
        default=0.0,
        metadata={"help": "mean accesses per second (0: one per working-set page per second)"},
    )
    hot_fraction: float = field(
        default=1.0,
        metadata={"help": "fraction of the working set that is hot (1: no skew, uniform accesses)"},
    )
    hot_weight: float = field(
        default=1.0,
        metadata={
            "help": "fraction of accesses that go to the hot pages (e.g. 0.8 with "
            "hot_fraction 0.2: the 80/20 rule); unused when hot_fraction is 1"
        },
    )

    def validate(self) -> list[str]:
        return (
            check_range(self, "wss_mb", 0.0)
            + check_range(self, "write_fraction", 0.0, 1.0)
            + check_range(self, "accesses_per_s", 0.0)
            + check_range(self, "hot_fraction", 0.0, 1.0, lo_open=True)
            + check_range(self, "hot_weight", 0.0, 1.0)
        )


class Steady(Workload):
    """A fixed working set, touched at a steady rate, optionally with a hot/cold skew.

    The working set is a fixed random set of guest pages drawn at boot from the VM's
    generator; writes go to its private-data pages when it has any.  With
    ``hot_fraction < 1`` the first ``hot_fraction`` of that draw (random pages) is hot and
    receives ``hot_weight`` of the accesses, the rest the remainder; with the default
    ``hot_fraction = 1`` the stream is uniform and makes exactly the draws it always did.
    """

    kind = "steady"
    Params = SteadyParams

    def __init__(self, params: SteadyParams, env: WorkloadEnv, rng: np.random.Generator) -> None:
        super().__init__(params, env, rng)
        wss = max(1, env.pages(params.wss_mb))
        drawn = rng.choice(env.n_pages, size=wss, replace=False).astype(np.int64)
        self.wss = np.sort(drawn)
        data = self.wss[self.wss >= env.layout.data_start]
        self.write_pool = data if len(data) else self.wss
        self.rate = params.accesses_per_s or float(wss)
        self.skewed = params.hot_fraction < 1.0
        if self.skewed:
            # The draw is in random order: its first part is a random hot subset.
            n_hot = max(1, int(round(params.hot_fraction * wss)))
            self.hot, self.cold = np.sort(drawn[:n_hot]), np.sort(drawn[n_hot:])
            start = env.layout.data_start
            self.hot_w = self.hot[self.hot >= start]
            self.cold_w = self.cold[self.cold >= start]

    def _plan(self, step: int) -> SplitPlan | None:
        if self.skewed:
            return None
        n = _rate(len(self.wss), self.rate, self.env.tick_s, self.rng)
        n_w = int(self.rng.binomial(n, self.params.write_fraction)) if n else 0
        wp = self.write_pool
        return SplitPlan(self.wss, len(self.wss), n - n_w, wp, len(wp), n_w)

    def _accesses(self, step: int) -> Accesses:
        if not self.skewed:  # reads, writes and keys in one compiled call
            plan = self._plan(step)
            assert plan is not None
            return plan.draw(self.rng)
        n = _rate(len(self.wss), self.rate, self.env.tick_s, self.rng)
        n_w = int(self.rng.binomial(n, self.params.write_fraction)) if n else 0
        reads = self._skewed(self.hot, self.cold, n - n_w)
        writes = self._skewed(self.hot_w, self.cold_w, n_w)
        if n_w and not len(writes):  # no data pages in the set: write anywhere in it
            writes = self._skewed(self.hot, self.cold, n_w)
        return Accesses(reads, writes, nonzero_keys(self.rng, len(writes)))

    def _skewed(self, hot: np.ndarray, cold: np.ndarray, n: int) -> np.ndarray:
        """``n`` pages: ``hot_weight`` of them (binomially) from ``hot``, the rest ``cold``."""
        if n <= 0:
            return EMPTY_I
        w = self.params.hot_weight if len(cold) else 1.0
        w = w if len(hot) else 0.0
        n_hot = int(self.rng.binomial(n, w))
        return np.concatenate([self._draw(hot, n_hot), self._draw(cold, n - n_hot)])
