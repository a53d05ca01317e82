"""Recorded access streams: many steps' accesses as flat arrays, and a workload fed by them.

Scope: :class:`AccessRows` is the columnar form of "VM *v* made accesses *a* in its step
*k*, at tick *t*" -- the row layout of the record log (``cluster/recording.py``), kept as
numpy arrays with Arrow-style offsets so it converts to and from Arrow list columns
without per-row Python objects and travels through Ray's object store as plain arrays.
:class:`ReplayWorkload` stands in for a VM's generator during a replay: the coordinator
feeds it the VM's next steps each round, keyed by *step*, not tick, so a VM that is
blocked or paused at other times (under another policy) still sees its own stream in
order.

Not covered: reading or writing files (``cluster/recording.py``), choosing which steps
to feed (``cluster/replay.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from vmmsim.workloads.patterns import Accesses

_I64 = np.zeros(0, dtype=np.int64)
_U64 = np.zeros(0, dtype=np.uint64)
_OFF0 = np.zeros(1, dtype=np.int64)


@dataclass(frozen=True)
class AccessRows:
    """Rows (vm, step, tick, accesses), flat: row ``i`` reads
    ``reads[read_off[i]:read_off[i+1]]`` and writes ``writes[write_off[i]:write_off[i+1]]``
    with content keys ``write_keys`` (aligned with ``writes``)."""

    vm: tuple[str, ...] = ()
    step: np.ndarray = field(default_factory=lambda: _I64)
    tick: np.ndarray = field(default_factory=lambda: _I64)
    read_off: np.ndarray = field(default_factory=lambda: _OFF0)
    reads: np.ndarray = field(default_factory=lambda: _I64)
    write_off: np.ndarray = field(default_factory=lambda: _OFF0)
    writes: np.ndarray = field(default_factory=lambda: _I64)
    write_keys: np.ndarray = field(default_factory=lambda: _U64)

    def __len__(self) -> int:
        return len(self.vm)

    def accesses(self, i: int) -> Accesses:
        """Row ``i`` as the :class:`Accesses` the workload produced (views, no copies)."""
        r0, r1 = int(self.read_off[i]), int(self.read_off[i + 1])
        w0, w1 = int(self.write_off[i]), int(self.write_off[i + 1])
        return Accesses(self.reads[r0:r1], self.writes[w0:w1], self.write_keys[w0:w1])

    @staticmethod
    def pack(rows: Sequence[tuple[str, int, int, Accesses]]) -> AccessRows:
        """Rows ``(vm, step, tick, accesses)`` -> one flat :class:`AccessRows`."""
        if not rows:
            return AccessRows()
        n_r = np.fromiter((len(a.reads) for *_, a in rows), np.int64, len(rows))
        n_w = np.fromiter((len(a.writes) for *_, a in rows), np.int64, len(rows))
        return AccessRows(
            vm=tuple(r[0] for r in rows),
            step=np.fromiter((r[1] for r in rows), np.int64, len(rows)),
            tick=np.fromiter((r[2] for r in rows), np.int64, len(rows)),
            read_off=np.concatenate([_OFF0, np.cumsum(n_r)]),
            reads=np.concatenate([np.asarray(a.reads, np.int64) for *_, a in rows]),
            write_off=np.concatenate([_OFF0, np.cumsum(n_w)]),
            writes=np.concatenate([np.asarray(a.writes, np.int64) for *_, a in rows]),
            write_keys=np.concatenate([np.asarray(a.write_keys, np.uint64) for *_, a in rows]),
        )

    @staticmethod
    def concat(parts: Sequence[AccessRows]) -> AccessRows:
        """Rows of ``parts`` one after the other."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return AccessRows()
        if len(parts) == 1:
            return parts[0]

        def offsets(name: str) -> np.ndarray:
            out, base = [_OFF0], 0
            for p in parts:
                off = getattr(p, name)
                out.append(off[1:] - off[0] + base)
                base += int(off[-1] - off[0])
            return np.concatenate(out)

        def values(name: str, off: str) -> np.ndarray:
            return np.concatenate(
                [getattr(p, name)[getattr(p, off)[0] : getattr(p, off)[-1]] for p in parts]
            )

        return AccessRows(
            vm=tuple(v for p in parts for v in p.vm),
            step=np.concatenate([p.step for p in parts]),
            tick=np.concatenate([p.tick for p in parts]),
            read_off=offsets("read_off"),
            reads=values("reads", "read_off"),
            write_off=offsets("write_off"),
            writes=values("writes", "write_off"),
            write_keys=values("write_keys", "write_off"),
        )

    def take(self, idx: np.ndarray) -> AccessRows:
        """The rows ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)

        def gather(off: np.ndarray, *vals: np.ndarray) -> tuple[np.ndarray, ...]:
            lo, hi = off[idx], off[idx + 1]
            n = hi - lo
            new_off = np.concatenate([_OFF0, np.cumsum(n)])
            # Positions of every kept element: each row's range, concatenated.
            pos = np.repeat(lo - new_off[:-1], n) + np.arange(int(new_off[-1]), dtype=np.int64)
            return (new_off, *(v[pos] for v in vals))

        r_off, reads = gather(self.read_off, self.reads)
        w_off, writes, keys = gather(self.write_off, self.writes, self.write_keys)
        return AccessRows(
            vm=tuple(self.vm[i] for i in idx.tolist()),
            step=self.step[idx],
            tick=self.tick[idx],
            read_off=r_off,
            reads=reads,
            write_off=w_off,
            writes=writes,
            write_keys=keys,
        )


class ReplayWorkload:
    """A VM's workload during a replay: the recorded :class:`Accesses` of each step.

    Same interface as :class:`workloads.patterns.Workload` (``step``, ``plan``,
    ``get_state``, ``set_state``) but no generator.  A step with no recorded input -- a VM
    that runs more steps under a counterfactual policy than it did in the recorded run --
    makes no accesses; :attr:`missing` counts such steps.
    """

    kind = "replay"

    def __init__(self) -> None:
        self.pending: dict[int, Accesses] = {}
        self.missing = 0

    def feed(self, rows: AccessRows, which: Sequence[int]) -> None:
        """Replace the pending input with rows ``which`` of ``rows`` (this VM's steps)."""
        self.pending = {int(rows.step[i]): rows.accesses(i) for i in which}

    def step(self, step: int) -> Accesses:
        acc = self.pending.pop(step, None)
        if acc is None:
            self.missing += 1
            return Accesses()
        return acc

    def plan(self, step: int) -> None:
        """Never a plan: recorded accesses are applied as they are (:meth:`step`)."""
        del step

    def get_state(self) -> dict:
        return {"kind": self.kind}  # the input comes anew each round: nothing to carry

    def set_state(self, state: dict) -> None:
        del state
