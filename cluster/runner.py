"""Running a simulation end to end: hosts, coordinator, outputs, progress.

Scope: the two ways to run the same coordinator -- in-process (:func:`run_inprocess`,
hosts as plain objects; the reference and the debugging path) and on Ray (the default:
host actors and a coordinator actor, Ray embedded or an existing cluster) -- and writing
the run directory.  Both give byte-identical ``metrics.parquet`` and digests.

Exit paths: any failure or interruption (:class:`Terminated` for SIGTERM/SIGINT once
:func:`signals_as_exceptions` is active; ``KeyboardInterrupt``) removes the partial run
directory and shuts down the Ray this process started; ``--out`` is left as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from vmmsim.cluster.config import SimConfig
from vmmsim.cluster.host_pool import HostFailure, InProcessPool
from vmmsim.cluster.migration_report import summary_block, write_migrations
from vmmsim.cluster.outputs import RunDir, writing
from vmmsim.cluster.progress import Progress
from vmmsim.cluster.session import PASSED_THROUGH, RunOptions, Session
from vmmsim.cluster.specs import host_policy, host_specs, sim_params


def _version() -> str:
    try:
        return importlib.metadata.version("vmmsim")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "0+unknown"


class Terminated(BaseException):
    """SIGTERM or SIGINT arrived (:func:`signals_as_exceptions`): unwinds like
    ``KeyboardInterrupt`` so that every ``finally`` runs.  Exit status ``128 + signum``."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def signals_as_exceptions():
    """While active (main thread only), SIGTERM and SIGINT raise :class:`Terminated` (also
    when the exception that reaches here is another one raised because of the signal); a
    second signal while the first is being cleaned up exits at once (``os._exit``)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[int] = []

    def handler(signum, frame):
        if hit:
            os._exit(128 + signum)
        hit.append(signum)
        raise Terminated(signum)

    prev = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except Terminated:
        raise
    except BaseException as e:
        # Raised inside C code (Ray's check_signals during ray.get), the handler's
        # exception can come out wrapped (SystemError): it is still the signal.
        if hit:
            raise Terminated(hit[0]) from e
        raise
    finally:
        for s, h in prev.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


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
    out.close_metrics()
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
        with writing(rundir.path / "migrations.parquet"):
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
        progress.abandon()
        rundir.abort()
        raise
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)


def _run_inprocess(
    cfg: SimConfig, rundir: RunDir, progress: Progress, check: bool, opts: RunOptions
) -> dict:
    sim, pol = sim_params(cfg), host_policy(cfg)
    if check:  # check mode also checks every guest page's bytes (cluster/page_check.py)
        opts = dataclasses.replace(opts, check_pages=True)
    pool = InProcessPool([(s, sim, pol) for s in host_specs(cfg)], opts.host_mode())
    session = Session(cfg, pool, opts, rundir.path)
    coord = session.coord
    try:
        session.start()
        progress.started()

        def advance():
            t = session.advance()
            if check:
                coord.check_invariants()
            return t, coord.tick, coord.done

        _drive(advance, rundir, progress)
        final = session.finish()
        # Where the hosts' compute went (CPU seconds, summed over hosts), as a Ray run's
        # timing.json reports it: in-process, this is the whole simulation's profile.
        phases = pool.call("phase_seconds", [()] * len(pool.names))
        final["timing"] = {
            "host_phase_s": {k: sum(p[k] for p in phases) for k in (phases[0] if phases else {})}
        }
        return final
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
    from vmmsim.cluster.ray_runtime import init_ray, shutdown_ray, start_coordinator

    t_init = time.perf_counter()
    started = init_ray(address)
    t_init = time.perf_counter() - t_init
    coord = None
    interrupted = False

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
        progress.started("Ray start-up")
        waited = 0.0

        def advance():
            nonlocal waited
            w0 = time.perf_counter()
            res = get(coord.advance.remote(4), timeout_s * 4)
            waited += time.perf_counter() - w0
            return res

        t_sim = time.perf_counter()
        _drive(advance, rundir, progress)
        t_sim = time.perf_counter() - t_sim
        final = dict(get(coord.finish.remote(), timeout_s))
        nodes = get(coord.host_nodes.remote(), timeout_s)
        final["timing"] = {
            "ray_init_s": t_init,  # ray.init (0 when joining a running Ray)
            "ray_startup_s": t_start,  # coordinator and host actors up, VMs booted
            "simulate_s": t_sim,  # every round, and the driver writing their metrics
            "driver_wait_s": waited,
            "host_nodes": nodes,
            "n_nodes": len(set(nodes.values())),
            **get(coord.timing.remote(), timeout_s),
        }
        return final
    except BaseException as e:  # interrupted: no waiting for the coordinator's round
        interrupted = not isinstance(e, Exception)
        raise
    finally:
        try:
            if coord is not None:
                if not interrupted:
                    try:
                        ray.get(coord.close.remote(), timeout=30)
                    except Exception:  # noqa: BLE001 - the run's own error matters more
                        pass
                # Host actors are owned by the coordinator actor: they end with it.
                ray.kill(coord)
        finally:
            if started:
                shutdown_ray()
