"""A run session: the coordinator with recording, replay, checkpoints and recovery.

Scope: wiring the optional pieces around :class:`cluster.coordinator.Coordinator` the
same way for both transports (``cluster/runner.py`` in-process, the coordinator actor in
``cluster/ray_runtime.py``), from one plain :class:`RunOptions`:

* ``record``: a :class:`cluster.recording.Recorder` writes ``<out>/record/``
  (``record_compression``: none, zstd, lz4);
* ``checkpoint_every_s``: a :class:`cluster.checkpoint.Checkpointer` writes
  ``<out>/checkpoints/`` (``checkpoint_compression``, none by default);
* ``replay_dir``: hosts run replay workloads fed from the log; ``verify`` adds the
  per-tick digest check and reuses the recorded decisions;
* ``resume_from``: start from a checkpoint instead of booting (the run's config may
  differ from the checkpoint's in what :func:`cluster.checkpoint.check_resumable`
  allows: a longer ``duration_s``);
* recovery: when a host fails and a checkpoint exists, every host is replaced
  (``pool.restart()``), the last checkpoint restored, and the rounds since then
  re-executed -- deterministically, the workload generators' states being part of the
  checkpoint -- with each re-executed round's digests checked against the ones seen
  before the failure (and, when recording, nothing written twice).  Then the run goes on.
  At most :data:`MAX_RECOVERIES` per run; without a checkpoint the failure propagates.
* ``kill_host_at``: fault injection for tests -- kill host NAME before the round that
  runs tick TICK (once).

Not covered: writing ``metrics.parquet`` and the run directory (the driver does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from vmmsim.cluster.checkpoint import (
    Checkpointer,
    check_resumable,
    every_ticks,
    read_checkpoint,
    restore,
)
from vmmsim.cluster.config import ConfigError, SimConfig
from vmmsim.cluster.coordinator import Coordinator
from vmmsim.cluster.host_journal import HostMode
from vmmsim.cluster.host_pool import HostFailure, HostPool
from vmmsim.cluster.outputs import OutputWriteError
from vmmsim.cluster.recording import DEFAULT_COMPRESSION, Recorder, RecordLog
from vmmsim.cluster.replay import DigestChecker, ReplayDiverged, ReplayFeeder
from vmmsim.cluster.sealed_stream import LogError

MAX_RECOVERIES = 3


class RecoveryFailed(RuntimeError):
    """Re-executing from a checkpoint did not reproduce the lost rounds."""


# Errors the Ray driver re-raises as they are (not as a remote traceback).
PASSED_THROUGH = (LogError, ReplayDiverged, RecoveryFailed, OutputWriteError, ConfigError)


@dataclass(frozen=True)
class RunOptions:
    """What a run does besides simulating (all off by default).  Plain data: it travels
    to the coordinator actor."""

    record: bool = False
    checkpoint_every_s: float = 0.0
    checkpoint_compression: str = "none"  # none, zstd, lz4
    record_compression: str = DEFAULT_COMPRESSION  # none, zstd, lz4
    replay_dir: str | None = None
    verify: bool = False
    resume_from: str | None = None
    kill_host_at: tuple[str, int] | None = None
    check_pages: bool = False  # the page checker of --check-invariants (cluster/page_check.py)
    #: The fraction of the Ray cluster's CPUs this run's host actors ask for, all together.
    #: A parallel sweep runs ``jobs`` points on one cluster at once, 1/jobs each, so every
    #: point's hosts fit at the same time and no point waits for another's to finish.
    cluster_share: float = 1.0

    def host_mode(self) -> HostMode:
        return HostMode(
            record=self.record,
            replay=self.replay_dir is not None,
            tick_digests=self.verify,
            accesses=self.check_pages,
        )


class Session:
    """A coordinator plus the optional pieces of :class:`RunOptions`, over ``pool``."""

    def __init__(
        self, cfg: SimConfig, pool: HostPool, opts: RunOptions, out: str | Path | None
    ) -> None:
        self.cfg, self.pool, self.opts = cfg, pool, opts
        self.coord = Coordinator(cfg, pool)
        self.recorder: Recorder | None = None
        self.checkpointer: Checkpointer | None = None
        self.feeder: ReplayFeeder | None = None
        self.checker: DigestChecker | None = None
        self.recoveries: list[dict[str, Any]] = []
        self.recorded_hash: str | None = None
        self.start_tick = 0
        self._catch_up_to = 0
        self._round_start = 0
        self._seen_digests: dict[int, dict[str, str]] = {}  # round -> digests, at failures
        self._kill = opts.kill_host_at
        if opts.replay_dir is not None:
            log = RecordLog.open(opts.replay_dir)
            self.recorded_hash = log.cfg.config_hash()
            self.feeder = ReplayFeeder(log)
            self.coord.feeder = self.feeder
            if opts.verify:
                self.checker = DigestChecker(log)
                self.coord.recorded = log.decision_queue()
                self.coord.observers.append(self.checker)
        if opts.record:
            self.recorder = Recorder(Path(out) / "record", cfg, opts.record_compression)
            self.coord.observers.append(self.recorder)
        if opts.check_pages:
            self.coord.enable_page_check()
        if opts.checkpoint_every_s > 0:
            every = every_ticks(cfg, opts.checkpoint_every_s)
            self.checkpointer = Checkpointer(
                Path(out) / "checkpoints", cfg, every, compression=opts.checkpoint_compression
            )
            self.coord.observers.append(self.checkpointer)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.opts.resume_from is None:
            self.coord.start()
            return
        ckpt = read_checkpoint(self.opts.resume_from)
        why = check_resumable(ckpt.cfg, self.cfg, ckpt.tick)  # (a longer run may continue it)
        if why is not None:
            raise LogError(ckpt.path, why)
        restore(self.coord, ckpt)
        self.start_tick = ckpt.tick
        if self.checkpointer is not None:
            self.checkpointer.next_due = (ckpt.tick // self.checkpointer.every + 1) * (
                self.checkpointer.every
            )

    @property
    def done(self) -> bool:
        return self.coord.done

    @property
    def tick(self) -> int:
        return self.coord.tick

    def advance(self) -> list[pa.Table]:
        """One new round's metrics (recovering from host failures on the way)."""
        while True:
            try:
                self._catch_up()
                self._inject_fault()
                self._set_pool_tick()
                self._round_start = self.coord.tick
                table = self.coord.advance()
                self._drop_history()
                return [table]
            except HostFailure as e:
                self._recover(e)

    def _drop_history(self) -> None:
        """Let the coordinator forget what nothing can read again, so a long run's memory
        does not grow with its rounds: decisions the record log has written and, when
        checkpoints are kept, made before the last one (a recovery goes back to it and
        decides again from there); without checkpoints (no recovery) every round's
        digests (with them, the checkpointer drops those older than each checkpoint
        once it is written)."""
        keep = self.coord.decision_log.total
        if self.recorder is not None:
            keep = min(keep, self.recorder.n_decisions)
        if self.checkpointer is not None:
            keep = min(keep, self.checkpointer.last_decisions)
        else:
            self.coord.round_log.drop(self.coord.round_log.total)
        self.coord.decision_log.drop(keep)

    def finish(self) -> dict[str, Any]:
        final = self.coord.finish()
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        if self.recoveries:
            final["recoveries"] = self.recoveries
        if self.opts.resume_from is not None:
            final["resumed_from"] = {"checkpoint": self.opts.resume_from, "tick": self.start_tick}
        if self.feeder is not None:
            final["replay"] = {
                "log": self.opts.replay_dir,
                "recorded_config_hash": self.recorded_hash,
                "verified_ticks": self.checker.ticks if self.checker else None,
                "vm_steps_without_input": self.feeder.exhausted(self.coord.vm_steps),
            }
        return final

    def close(self) -> None:
        """Release what is open (after :meth:`finish`, nothing; on a failure path, the
        record log, whose own errors must not hide the run's)."""
        if self.recorder is not None:
            rec, self.recorder = self.recorder, None
            try:
                rec.close()
            except Exception:  # noqa: BLE001 - the run is failing anyway
                pass

    # ------------------------------------------------------------------ recovery
    def _set_pool_tick(self) -> None:
        if hasattr(self.pool, "tick"):
            self.pool.tick = self.coord.tick

    def _inject_fault(self) -> None:
        if self._kill is None:
            return
        name, tick = self._kill
        c = self.coord
        n = min(c.round_ticks - c.tick % c.round_ticks, c.n_ticks - c.tick)
        if c.tick <= tick < c.tick + n:
            self._kill = None
            self.pool.kill(name, tick)

    def _recover(self, err: HostFailure) -> None:
        ck = self.checkpointer
        if ck is None or ck.last is None or len(self.recoveries) >= MAX_RECOVERIES:
            raise err
        # The failed round's metrics never reached the driver: re-execute it too (its
        # record segment, if written, is not written again).
        failed_at = max(self._round_start, self._catch_up_to)
        log = self.coord.round_log
        for i, d in enumerate(log.kept, log.dropped):  # (the first run of each round)
            self._seen_digests.setdefault(i, d)
        ckpt = read_checkpoint(ck.last, self.cfg.config_hash())
        self.pool.restart()
        restore(self.coord, ckpt)
        self._catch_up_to = failed_at
        self.recoveries.append(
            {
                "host": err.host,
                "tick": failed_at,
                "cause": err.cause,
                "checkpoint": f"checkpoints/{ck.last.name}",
                "checkpoint_tick": ckpt.tick,
                "reexecuted_ticks": failed_at - ckpt.tick,
            }
        )

    def _catch_up(self) -> None:
        """Re-execute the rounds lost to a failure; their outputs were delivered already."""
        while self.coord.tick < self._catch_up_to:
            self._set_pool_tick()
            self._round_start = self.coord.tick
            self.coord.advance()
            log = self.coord.round_log
            if log.kept[-1] != self._seen_digests[log.total - 1]:
                raise RecoveryFailed(
                    f"re-execution after the failure of host {self.recoveries[-1]['host']} "
                    f"differs at tick {self.coord.tick}"
                )
