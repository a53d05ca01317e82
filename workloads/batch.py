"""The ``batch`` pattern: a SPEC-like program, the same in many VMs.

Model.  The program's text and input data (``program_mb``) are loaded over the first
``load_s`` seconds into the private-data region.  Its pages come in *classes*
(:mod:`workloads.page_classes`, scope ``program``): a page of a class holds, with the
class's probability ``p``, the program's canonical content (a key derived from the run
seed, ``program``, the class and the page) -- the same bytes in every VM that runs the
program, whatever its size or image, which page sharing can merge (ESX fig. 4) -- else
content private to the VM (drawn from the VM's name).  The program then reads its pages
and reads and rewrites a private heap (``heap_mb``, after the program's pages) with fresh
content.

Default classes (:data:`SPEC_CLASSES`, labelled estimates for a SPEC95-like run, used
with the built-in linux image for ESX fig. 4): program text p 0.99; input data read from
the shared disk image p 0.9; initialised data and buffers the program filled from its
input p 0.6, 3% duplicated within the VM.

Loading is a function of the step count (step ``k`` writes the pages whose load time falls
in it), so the only state is the generator.  Program pages are never written after
loading; heap pages may start as zero-filled first touches.

Not covered: program phases (compose with ``phased`` if needed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from vmmsim.workloads.content import nonzero_keys, stable_hash64
from vmmsim.workloads.page_classes import ClassTable, check_classes, class_keys
from vmmsim.workloads.patterns import (
    EMPTY_I,
    EMPTY_K,
    Accesses,
    Workload,
    WorkloadEnv,
    check_range,
)

#: A SPEC95-like program's pages (fractions of ``program_mb``; see the module docstring).
SPEC_CLASSES: ClassTable = (
    ("text", 0.3, 0.99, 0.0, "program"),
    ("input", 0.4, 0.9, 0.0, "program"),
    ("data", 0.3, 0.6, 0.03, "program"),
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
    classes: ClassTable = field(
        default=SPEC_CLASSES,
        metadata={
            "help": "page classes of the program's pages, each [name, fraction, p identical "
            'in another VM running the program, p duplicate within the VM, "program"]'
        },
    )

    def validate(self) -> list[str]:
        errs = check_classes(self.classes, ("program",))
        if not self.classes:
            errs.append("classes: give at least one class")
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
        scopes = {"program": stable_hash64("program", env.seed, params.program)}
        own = stable_hash64("program-private", env.seed, params.program, env.vm_name)
        self.keys = class_keys(params.classes, self.n_prog, scopes, own)
        self.rate = params.accesses_per_s or float(self.n_prog + n_heap)

    def loaded(self, step: int) -> int:
        """Program pages loaded by the end of step ``step``."""
        if self.params.load_s <= 0:
            return self.n_prog
        frac = min(1.0, (step + 1) * self.env.tick_s / self.params.load_s)
        return int(self.n_prog * frac)

    def program_keys(self, index: np.ndarray) -> np.ndarray:
        """Content keys of program pages ``index`` of this VM."""
        return self.keys[index]

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
