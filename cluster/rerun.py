"""Running again from files: resuming a checkpoint, replaying a record log.

Scope: the entry points behind ``vmmsim resume`` and ``vmmsim replay``.  Both verify
their input in the driver first (:class:`cluster.sealed_stream.LogError` before any Ray
start-up or output), then run through :func:`cluster.runner.run` with the matching
:class:`cluster.session.RunOptions`, so outputs are ordinary run directories.

Not covered: the formats (``recording.py``, ``checkpoint.py``), the CLI (``cli.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cluster.checkpoint import read_checkpoint
from cluster.config import ConfigError
from cluster.recording import RecordLog
from cluster.replay import policy_unchanged, replay_config
from cluster.runner import run
from cluster.session import RunOptions


def resume(
    checkpoint: str | Path, out: Path, *, checkpoint_every_s: float = 0.0, **run_kw: Any
) -> dict[str, Any]:
    """Continue the run checkpointed in ``checkpoint`` into ``out``; return its summary.

    ``out`` holds the metrics from the checkpoint's tick on; its final digest equals the
    uninterrupted run's."""
    ckpt = read_checkpoint(checkpoint)
    opts = RunOptions(resume_from=str(ckpt.path), checkpoint_every_s=checkpoint_every_s)
    return run(ckpt.cfg, out, opts=opts, **run_kw)


@dataclass(frozen=True)
class ReplayResult:
    verified: bool  # digests were checked (the config was unchanged)
    ticks: int
    summary: dict[str, Any]


def replay(
    log_dir: str | Path,
    out: Path | None = None,
    overrides: Sequence[str] = (),
    **run_kw: Any,
) -> ReplayResult:
    """Re-execute a recorded run from its log (no workload generators).

    With the recorded config: every host's digest after every tick is checked
    (:class:`cluster.replay.ReplayDiverged` at the first difference) and the recorded
    decisions are reused; ``out`` is optional.  With ``overrides`` (policy, migration,
    hosts, VM allocation keys): a counterfactual run of the same inputs into ``out``."""
    log = RecordLog.open(log_dir)
    cfg = replay_config(log.cfg, overrides)
    verify = policy_unchanged(log.cfg, cfg)
    if out is None and not verify:
        raise ConfigError("--out", "a replay with --set needs --out (where to write the run)")
    opts = RunOptions(replay_dir=str(log.path), verify=verify)
    summary = run(cfg, out, opts=opts, **run_kw)
    ticks = summary["replay"]["verified_ticks"] or 0
    return ReplayResult(verify, ticks if verify else cfg.simulation.n_ticks, summary)
