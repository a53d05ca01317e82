"""Running again from files: resuming a checkpoint, replaying a record log.

Scope: the entry points behind ``vmmsim resume`` and ``vmmsim replay``.  Both verify
their input in the driver first (:class:`cluster.sealed_stream.LogError` before any Ray
start-up or output; for a checkpoint, also every restored host's invariants), then run
through :func:`cluster.runner.run` with the matching :class:`cluster.session.RunOptions`,
so outputs are ordinary run directories.

Not covered: the formats (``recording.py``, ``checkpoint.py``), the CLI (``cli.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmmsim.cluster.checkpoint import Checkpoint, read_checkpoint, resume_config
from vmmsim.cluster.config import ConfigError
from vmmsim.cluster.recording import RecordLog
from vmmsim.cluster.replay import policy_unchanged, replay_config
from vmmsim.cluster.runner import run
from vmmsim.cluster.sealed_stream import LogError
from vmmsim.cluster.session import RunOptions
from vmmsim.cluster.specs import host_policy, host_specs, sim_params, vm_spec
from vmmsim.hosts.snapshot import restore_host


def resume(
    checkpoint: str | Path,
    out: Path,
    *,
    checkpoint_every_s: float = 0.0,
    checkpoint_compression: str = "none",
    overrides: Sequence[str] = (),
    **run_kw: Any,
) -> dict[str, Any]:
    """Continue the run checkpointed in ``checkpoint`` into ``out``; return its summary.

    ``out`` holds the metrics from the checkpoint's tick on; its final digest equals the
    uninterrupted run's.  Every host is first restored here and must pass its
    ``check_invariants()`` (:func:`check_restored`): a checkpoint whose checksums hold but
    whose state is inconsistent is refused before anything runs.  ``overrides``: only
    keys that leave the past unchanged (:func:`cluster.checkpoint.resume_config`: a
    longer ``simulation.duration_s`` extends the run)."""
    _check_is_checkpoint(Path(checkpoint))
    ckpt = read_checkpoint(checkpoint)
    cfg = resume_config(ckpt, overrides)
    check_restored(ckpt)
    opts = RunOptions(
        resume_from=str(ckpt.path),
        checkpoint_every_s=checkpoint_every_s,
        checkpoint_compression=checkpoint_compression,
    )
    return run(cfg, out, opts=opts, **run_kw)


def _check_is_checkpoint(path: Path) -> None:
    """:class:`LogError` naming the checkpoints that exist when ``path`` is not one (a run
    directory, its ``checkpoints/``): a checkpoint holds ``manifest.json``."""
    if (path / "manifest.json").exists() or not path.is_dir():
        return  # read_checkpoint judges it
    folder = path if path.name == "checkpoints" else path / "checkpoints"
    found = sorted(
        (p for p in folder.glob("t*") if (p / "manifest.json").is_file()),
        key=lambda p: (len(p.name), p.name),
    )
    if found:
        listed = ", ".join(str(p) for p in found[-5:])
        more = f" (the last {min(5, len(found))} of {len(found)})" if len(found) > 5 else ""
        what = f"not a checkpoint; the checkpoints of this run are{more}: {listed}"
    else:
        what = (
            "not a checkpoint, and it holds no checkpoints/: write some with "
            "`vmmsim run CONFIG --out DIR --checkpoint-every SECONDS`, then "
            "`vmmsim resume DIR/checkpoints/tNNN --out NEW`"
        )
    raise LogError(path, what)


def _check_is_recorded(path: Path) -> None:
    """:class:`LogError` saying how to record when ``path`` is a run directory written
    without ``--record`` (no ``record/`` folder)."""
    if path.is_dir() and not (path / "record").exists() and not any(path.glob("*.arrows")):
        raise LogError(
            path,
            "this run was not recorded (no record/ folder): run it again with --record "
            "(`vmmsim run CONFIG --out DIR --record`), then `vmmsim replay DIR`",
        )


def check_restored(ckpt: Checkpoint) -> None:
    """Restore each host of ``ckpt`` in turn (as :func:`cluster.checkpoint.restore` does)
    and run its ``check_invariants()``; :class:`LogError` (bad input) naming the
    checkpoint and the host at the first one that fails or cannot be restored.  One host
    at a time, dropped after its check: the driver never holds two hosts' state."""
    cfg = ckpt.cfg
    sim, policy = sim_params(cfg), host_policy(cfg)
    for spec in host_specs(cfg):
        arrays, meta = ckpt.hosts[spec.name]
        try:
            vms = {v: vm_spec(cfg, v) for v in meta["vms"]}
            restore_host(spec, sim, policy, vms, arrays, meta).check_invariants()
        except Exception as e:  # noqa: BLE001 - whatever inconsistent state makes it raise
            what = str(e).splitlines()[0] if str(e) else ""
            raise LogError(
                ckpt.path,
                f"host {spec.name}: restored state fails check_invariants "
                f"({type(e).__name__}: {what})",
            ) from None


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
    _check_is_recorded(Path(log_dir))
    log = RecordLog.open(log_dir)
    cfg = replay_config(log.cfg, overrides)
    verify = policy_unchanged(log.cfg, cfg)
    if out is None and not verify:
        raise ConfigError("--out", "a replay with --set needs --out (where to write the run)")
    opts = RunOptions(replay_dir=str(log.path), verify=verify)
    summary = run(cfg, out, opts=opts, **run_kw)
    ticks = summary["replay"]["verified_ticks"] or 0
    return ReplayResult(verify, ticks if verify else cfg.simulation.n_ticks, summary)
