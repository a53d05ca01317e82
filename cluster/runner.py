"""Running a simulation end to end: hosts, coordinator, outputs, progress.

Scope: the two ways to run the same coordinator -- in-process (:func:`run_inprocess`,
hosts as plain objects; the reference and the debugging path) and on Ray (the default:
host actors and a coordinator actor, Ray embedded or an existing cluster) -- and writing
the run directory.  Both give byte-identical ``metrics.parquet`` and digests.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from cluster.config import SimConfig
from cluster.host_pool import HostFailure, InProcessPool
from cluster.migration_report import summary_block, write_migrations
from cluster.outputs import RunDir
from cluster.progress import Progress
from cluster.session import PASSED_THROUGH, RunOptions, Session
from cluster.specs import host_policy, host_specs, sim_params


def _version() -> str:
    try:
        return importlib.metadata.version("vmmsim")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "0+unknown"


def summary_doc(cfg: SimConfig, final: dict[str, Any]) -> dict[str, Any]:
    """``summary.json``: deterministic (no wall-clock values)."""
    s = cfg.simulation
    hosts = final["hosts"]
    migrations = final.get("migrations", [])  # report rows -> counts and totals here
    return {
        "vmmsim_version": _version(),
        "config_hash": cfg.config_hash(),
        "seed": s.seed,
        "n_ticks": s.n_ticks,
        "tick_s": s.tick_s,
        "duration_s": s.duration_s,
        "totals": {
            "shared_mb": sum(h["shared_mb"] for h in hosts.values()),
            "saved_mb": sum(h["saved_mb"] for h in hosts.values()),
            "swap_used_mb": sum(h["swap_used_mb"] for h in hosts.values()),
        },
        **final,
        "migrations": summary_block(migrations, s.page_size),
    }


def _drive(advance, out: RunDir, progress: Progress) -> None:
    """Pull rounds from ``advance()`` until done; write their metrics as they come."""
    done = False
    while not done:
        tables, tick, done = advance()
        for t in tables:
            out.write_metrics(t)
        progress.update(tick)
    progress.close()


def run(
    cfg: SimConfig,
    out: Path,
    *,
    backend: str = "ray",
    address: str | None = None,
    force: bool = False,
    quiet: bool = False,
    check_invariants: bool = False,
    timeout_s: float = 600.0,
    opts: RunOptions | None = None,
) -> dict[str, Any]:
    """Run ``cfg`` into ``out``; return the summary.  Raises on any failure, leaving
    ``out`` as it was.  ``opts``: recording, checkpoints, replay, resume
    (:class:`cluster.session.RunOptions`); ``out=None`` runs without keeping any files
    (a verified replay)."""
    opts = opts or RunOptions()
    scratch = tempfile.mkdtemp(prefix="vmmsim-") if out is None else None
    rundir = RunDir(Path(scratch or out) / "run" if scratch else Path(out), force)
    progress = Progress(
        cfg.simulation.n_ticks, cfg.simulation.tick_s, enabled=None if not quiet else False
    )
    t0 = time.perf_counter()
    try:
        if backend == "inprocess":
            final = _run_inprocess(cfg, rundir, progress, check_invariants, opts)
        elif backend == "ray":
            final = _run_ray(cfg, rundir, progress, address, timeout_s, opts)
        else:
            raise ValueError(f"unknown backend {backend!r}")
        wall = time.perf_counter() - t0
        timing = final.pop("timing", {})
        summary = summary_doc(cfg, final)
        write_migrations(rundir.path / "migrations.parquet", final.get("migrations", []))
        rundir.write_json("summary.json", summary)
        rundir.write_json("config.json", cfg.to_dict())
        rundir.write_json(
            "timing.json",
            {
                "backend": backend,
                "wall_s": wall,
                "ticks_per_s": cfg.simulation.n_ticks / wall if wall > 0 else None,
                "simulated_s_per_wall_s": cfg.simulation.duration_s / wall if wall > 0 else None,
                **timing,
            },
        )
        if scratch:
            rundir.abort()
        else:
            rundir.commit()
        return summary
    except BaseException:
        rundir.abort()
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _run_inprocess(
    cfg: SimConfig, rundir: RunDir, progress: Progress, check: bool, opts: RunOptions
) -> dict:
    sim, pol = sim_params(cfg), host_policy(cfg)
    pool = InProcessPool([(s, sim, pol) for s in host_specs(cfg)], opts.host_mode())
    session = Session(cfg, pool, opts, rundir.path)
    coord = session.coord
    try:
        session.start()

        def advance():
            t = session.advance()
            if check:
                coord.check_invariants()
            return t, coord.tick, coord.done

        _drive(advance, rundir, progress)
        return session.finish()
    finally:
        session.close()


def _run_ray(
    cfg: SimConfig,
    rundir: RunDir,
    progress: Progress,
    address: str | None,
    timeout_s: float,
    opts: RunOptions,
) -> dict:
    import ray

    from cluster.ray_runtime import init_ray, start_coordinator

    started = init_ray(address)
    coord = None

    def get(ref, timeout):
        """ray.get, with a failed host surfacing as HostFailure (not a remote traceback)."""
        try:
            return ray.get(ref, timeout=timeout)
        except ray.exceptions.RayTaskError as e:
            if isinstance(e.cause, (HostFailure, *PASSED_THROUGH)):
                raise e.cause from None
            raise
        except ray.exceptions.GetTimeoutError:
            raise HostFailure("coordinator", -1, f"no answer within {timeout:g} s") from None
        except ray.exceptions.RayActorError as e:
            raise HostFailure("coordinator", -1, f"actor died ({type(e).__name__})") from None

    try:
        t0 = time.perf_counter()
        coord = start_coordinator(cfg.to_dict(), timeout_s, opts, str(rundir.path))
        get(coord.start.remote(), timeout_s)
        t_start = time.perf_counter() - t0
        waited = 0.0

        def advance():
            nonlocal waited
            w0 = time.perf_counter()
            res = get(coord.advance.remote(4), timeout_s * 4)
            waited += time.perf_counter() - w0
            return res

        _drive(advance, rundir, progress)
        final = dict(get(coord.finish.remote(), timeout_s))
        nodes = get(coord.host_nodes.remote(), timeout_s)
        final["timing"] = {
            "ray_startup_s": t_start,
            "driver_wait_s": waited,
            "host_nodes": nodes,
            "n_nodes": len(set(nodes.values())),
            **get(coord.timing.remote(), timeout_s),
        }
        return final
    finally:
        if coord is not None:
            try:
                ray.get(coord.close.remote(), timeout=30)
            except Exception:  # noqa: BLE001 - the run's own error matters more
                pass
            ray.kill(coord)
        if started:
            ray.shutdown()
