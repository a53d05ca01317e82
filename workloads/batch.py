"""The ``batch`` pattern: a SPEC-like program, the same in many VMs.

Model.  The program's text and input data (``program_mb``) are loaded over the first
``load_s`` seconds into the private-data region, page ``i`` of the program written with
a content key derived from (run seed, ``program``, ``i``) -- so every VM that runs the
same program holds the same bytes there, whatever its size or image, and page sharing can
merge them (ESX fig. 4).  The program then reads its pages and reads and rewrites a
private heap (``heap_mb``, after the program's pages) with fresh content.

Loading is a function of the step count (step ``k`` writes the pages whose load time falls
in it), so the only state is the generator.  Program pages are never written after
loading; heap pages may start as zero-filled first touches.

Not covered: program phases (compose with ``phased`` if needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from vmmsim.workloads.content import derived_keys, nonzero_keys, stable_hash64
from vmmsim.workloads.patterns import (
    EMPTY_I,
    EMPTY_K,
    Accesses,
    Workload,
    WorkloadEnv,
    check_range,
)


@dataclass(frozen=True)
class BatchParams:
    program: str = field(
        default="gcc",
        metadata={"help": "program name: VMs running the same program hold identical data"},
    )
    program_mb: float = field(
        default=8.0, metadata={"help": "program text + input data, identical across VMs, MB"}
    )
    heap_mb: float = field(default=8.0, metadata={"help": "private heap rewritten by the run, MB"})
    load_s: float = field(
        default=10.0, metadata={"help": "seconds to load the program's pages (0: at boot)"}
    )
    program_weight: float = field(
        default=0.5, metadata={"help": "fraction of accesses that read program pages"}
    )
    write_fraction: float = field(
        default=0.3, metadata={"help": "fraction of heap accesses that write"}
    )
    accesses_per_s: float = field(
        default=0.0,
        metadata={"help": "mean accesses per second (0: one per program + heap page per second)"},
    )

    def validate(self) -> list[str]:
        errs = []
        if not self.program or any(c.isspace() for c in self.program):
            errs.append(f"program: must be a non-empty name without spaces (got {self.program!r})")
        return (
            errs
            + check_range(self, "program_mb", 0.0)
            + check_range(self, "heap_mb", 0.0)
            + check_range(self, "load_s", 0.0)
            + check_range(self, "program_weight", 0.0, 1.0)
            + check_range(self, "write_fraction", 0.0, 1.0)
            + check_range(self, "accesses_per_s", 0.0)
        )


class Batch(Workload):
    """A SPEC-like batch program: identical program data in every VM that runs it."""

    kind = "batch"
    Params = BatchParams

    def __init__(self, params: BatchParams, env: WorkloadEnv, rng: np.random.Generator) -> None:
        super().__init__(params, env, rng)
        start = min(env.layout.data_start, env.n_pages)
        room = env.n_pages - start
        self.n_prog = min(room, env.pages(params.program_mb))
        n_heap = min(room - self.n_prog, env.pages(params.heap_mb))
        self.prog_start = start
        self.heap = np.arange(start + self.n_prog, start + self.n_prog + n_heap, dtype=np.int64)
        self.key_base = stable_hash64("program", env.seed, params.program)
        self.rate = params.accesses_per_s or float(self.n_prog + n_heap)

    def loaded(self, step: int) -> int:
        """Program pages loaded by the end of step ``step``."""
        if self.params.load_s <= 0:
            return self.n_prog
        frac = min(1.0, (step + 1) * self.env.tick_s / self.params.load_s)
        return int(self.n_prog * frac)

    def program_keys(self, index: np.ndarray) -> np.ndarray:
        """Content keys of program pages ``index`` (the same in every VM)."""
        return derived_keys(self.key_base, index)

    def _accesses(self, step: int) -> Accesses:
        lo, hi = (self.loaded(step - 1) if step else 0), self.loaded(step)
        idx = np.arange(lo, hi, dtype=np.int64)
        load = Accesses(writes=self.prog_start + idx, write_keys=self.program_keys(idx))
        p = self.params
        n = int(self.rng.poisson(self.rate * self.env.tick_s)) if self.rate > 0 else 0
        if n == 0:
            return load
        n_prog = int(self.rng.binomial(n, p.program_weight)) if hi else 0
        n_heap = n - n_prog
        n_w = int(self.rng.binomial(n_heap, p.write_fraction)) if len(self.heap) else 0
        prog_reads = self.prog_start + self.rng.integers(0, hi, size=n_prog) if n_prog else EMPTY_I
        heap_reads = self._draw(self.heap, n_heap - n_w)
        writes = self._draw(self.heap, n_w)
        keys = nonzero_keys(self.rng, len(writes)) if len(writes) else EMPTY_K
        run = Accesses(np.concatenate([prog_reads, heap_reads]), writes, keys)
        return Accesses.concat(load, run)
