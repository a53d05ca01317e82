"""The Ray transport: host actors, the coordinator actor, starting or joining Ray.

Scope: with :mod:`cluster.host_actor` (the host actor class, kept apart so that actor
processes import little), the only module that imports ``ray``.
:class:`RayPool` issues one call per host, waits for all with a timeout and returns
results in host-name order; a dead or silent host becomes a
:class:`cluster.host_pool.HostFailure` naming the host and the tick, never a hang.
:class:`CoordinatorActor` wraps :class:`cluster.coordinator.Coordinator` around a
``RayPool``; the driver (``cluster.runner``) pulls finished rounds from it and writes
files, so the coordinator can live on any node.

:func:`init_ray` / :func:`shutdown_ray` start and end embedded Ray (no dashboard; its
agents ended too) on every exit path, signals included.  The session folder embedded Ray
made (``/tmp/ray/session_*``, or under ``$RAY_TMPDIR``: logs, sockets) is removed after
the shutdown -- that one folder only, never a cluster's joined with ``--address``; set
``VMMSIM_KEEP_RAY_SESSION=1`` to keep it (Ray's logs, for debugging).

User policies (:mod:`vmmsim.policies`): when the config names ``module:attr`` or
``file.py:attr`` policies or workload kinds that are not installed, the host actors and
the coordinator actor get them through Ray's ``runtime_env`` ``py_modules`` (a ``.py``
file or the package folder, uploaded by Ray; :func:`policy_runtime_env`), embedded Ray or
``--address`` alike, so nothing is installed on the nodes by hand.

Host actors declare a fractional CPU (the cluster's CPUs -- this run's share of them when a
parallel sweep runs several points at once -- divided among the hosts, at most 1, rounded
down to Ray's unit: :func:`host_cpus`) so that all of a run's hosts fit at once, and use
the SPREAD strategy across the nodes of a cluster.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import math
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

import ray  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402
from vmmsim.cluster import round_link  # noqa: E402
from vmmsim.cluster.config import POLICY_KEYS, SimConfig, config_from_dict  # noqa: E402
from vmmsim.cluster.host_actor import HostActor  # noqa: E402
from vmmsim.cluster.host_journal import HostMode  # noqa: E402
from vmmsim.cluster.host_pool import HostFailure, HostPool  # noqa: E402
from vmmsim.cluster.session import RunOptions, Session  # noqa: E402
from vmmsim.cluster.specs import host_policy, host_specs, sim_params  # noqa: E402
from vmmsim.cluster.write_errors import OutputWriteError  # noqa: E402
from vmmsim.hosts.warmup import warm_kernels  # noqa: E402

from vmmsim import policies  # noqa: E402


def init_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    object_store_mb: int | None = None,
    quiet: bool = True,
) -> bool:
    """Start Ray embedded (no ``address``) or join a cluster; return True if we started it
    (then call :func:`shutdown_ray` when done; it also runs at exit).

    Embedded Ray starts without the dashboard, its head process included
    (:func:`_lean_embedded_start`).  Ray 2.60 has no option to skip the raylet's dashboard
    agent and runtime-env agent, so :func:`shutdown_ray` ends those too.  Ray's own SIGTERM
    handlers are not installed: vmmsim's (``cluster.runner.signals_as_exceptions``) stay
    in place, so a signal during start-up unwinds through here and Ray is shut down."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.ERROR if quiet else logging.INFO,
        "log_to_driver": not quiet,
        "configure_logging": True,
    }
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        kwargs.pop("include_dashboard")
    else:
        kwargs["num_cpus"] = num_cpus or os.cpu_count() or 1
        # vmmsim runs on CPUs only; a GPU count spares Ray probing for NVIDIA's library
        # (importing its bindings: 0.06-0.1 s of every start, measured).
        kwargs["num_gpus"] = 0
        # Many host actors with fractional CPUs are normal here: let the raylet start their
        # processes in parallel, which also keeps its "too many workers" warning away.
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", "64")
        # Measured with 32-64 idle actors on 2 cores: Ray's log monitor re-lists the log
        # directory every 0.1 s while it holds < 1000 files (35 -> 13 ms of CPU per second
        # when it does so every 2 s: new actors' output reaches the driver up to 2 s
        # later), and the event loops' per-handler statistics cost an idle actor ~10% of
        # its 10 ms wake-ups.  Neither is used here (no dashboard).
        os.environ.setdefault("RAY_LOG_MONITOR_MANY_FILES_THRESHOLD", "0")
        os.environ.setdefault("LOG_NAME_UPDATE_INTERVAL_S", "2")
        os.environ.setdefault("RAY_event_stats", "0")
        # The raylet connects to its own object store (started on another of its threads)
        # with Ray's IPC retry: one attempt, then a sleep of this many ms.  At Ray's 1000
        # ms, ray.init took 2.7 s instead of 1.7 s in 6 of 20 starts on 2 cores (the store
        # was not listening yet at the first attempt; none of 12 starts at 50 ms); 50 ms x
        # 200 attempts keeps the 10 s budget Ray's defaults (1000 ms x 10) give a worker
        # connecting to its raylet.
        os.environ.setdefault("RAY_raylet_client_connect_timeout_milliseconds", "50")
        os.environ.setdefault("RAY_raylet_client_num_connect_attempts", "200")
        if object_store_mb:
            kwargs["object_store_memory"] = object_store_mb * 2**20
    global _started, _session_dir
    _started = True
    try:
        with _own_sigterm_handler(), _lean_embedded_start(not address):
            ray.init(address=address or None, **kwargs)
        if not address:
            _session_dir = _current_session_dir()
    except BaseException:
        shutdown_ray()
        raise
    return True


_started = False
_session_dir: str | None = None  # the session folder of the Ray this process started


def _ray_private(module: str) -> Any:
    """Ray's private module ``ray._private.<module>`` (None in a Ray without it)."""
    return getattr(getattr(ray, "_private", None), module, None)


def _global_node() -> Any:
    """The Ray node this process started or joined (Ray's private ``_global_node``;
    None when Ray is not running, or a Ray without it)."""
    return getattr(_ray_private("worker"), "_global_node", None)


@contextlib.contextmanager
def _patched(patches: Sequence[tuple[Any, str, Any]]):
    """Set each ``(owner, name, value)`` attribute for the duration of the block, then
    put back what was there."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, orig in saved:
            setattr(owner, name, orig)


def _current_session_dir() -> str | None:
    node = _global_node()
    try:
        return str(node.get_session_dir_path()) if node is not None else None
    except Exception:  # noqa: BLE001 - a Ray without it: nothing is cleaned
        return None


def _remove_session_dir(path: str | None) -> None:
    """Remove embedded Ray's session folder ``path`` (``.../session_<date>_<pid>``) and
    the ``session_latest`` link when it points there; nothing else."""
    if not path or os.environ.get("VMMSIM_KEEP_RAY_SESSION", "").strip() not in ("", "0"):
        return
    if not os.path.basename(path).startswith("session_") or os.path.islink(path):
        return
    latest = os.path.join(os.path.dirname(path), "session_latest")
    with contextlib.suppress(OSError):
        if os.path.islink(latest) and os.path.realpath(latest) == os.path.realpath(path):
            os.unlink(latest)
    for _ in range(3):  # a process that was just ended may still have been writing a log
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.exists(path):
            return
        time.sleep(0.1)


@contextlib.contextmanager
def _own_sigterm_handler():
    """Keep the caller's SIGTERM handler while Ray starts (Ray installs its own, which
    exits with status 1 or 15 without cleaning up the caller's files)."""
    utils = _ray_private("utils")
    main = threading.current_thread() is threading.main_thread()
    prev = signal.getsignal(signal.SIGTERM) if main else None
    keep = main and hasattr(utils, "set_sigterm_handler")
    try:
        with _patched([(utils, "set_sigterm_handler", lambda handler: None)] if keep else []):
            yield
    finally:
        if main and prev is not None:
            signal.signal(signal.SIGTERM, prev)


@contextlib.contextmanager
def _lean_embedded_start(active: bool):
    """While embedded Ray starts (``active``), spare it two waits of Ray 2.60's; Ray's
    functions are restored afterwards, and joined clusters (``--address``) are never
    touched.

    1. With ``include_dashboard=False`` Ray still starts the dashboard's head process (to
       run its usage-stats module only) and waits for it to publish a URL before it starts
       the raylet: 0.45 s of every ``ray.init`` on 2 cores (0.75 s on one), and an 81 MB
       process that wakes ~1.5 ms a second.  vmmsim uses none of it (usage stats are off;
       no job submission, state API or dashboard), so ``Node.start_api_server`` is a no-op
       here -- the state Ray itself leaves when that process cannot start.
    2. The driver then waits for its raylet to register with the GCS (about a second
       after it starts: the raylet waits for its agents) by asking the GCS once a second
       (a fixed sleep in Ray's C++ ``GetNode``), so a registration just after a poll cost
       a whole second -- 9 of 16 starts on a busy 2-core machine (1.8-2.0 s or 2.9-3.0 s).
       :func:`_wait_until_registered` asks every 20 ms first."""
    node_cls = getattr(_ray_private("node"), "Node", None)
    services = _ray_private("services")
    patches: list[tuple[Any, str, Any]] = []
    if active and hasattr(node_cls, "start_api_server"):
        patches.append((node_cls, "start_api_server", lambda self, **kwargs: None))
    if active and hasattr(services, "get_node"):
        wait = functools.partial(_get_node_once_registered, services.get_node)
        patches.append((services, "get_node", wait))
    with _patched(patches):
        yield


def _get_node_once_registered(get_node: Any, gcs_address: str, node_id: str) -> Any:
    """Ray's ``services.get_node``, called once :func:`_wait_until_registered` has seen
    the node (or given up: Ray's own wait then still applies)."""
    _wait_until_registered(gcs_address, node_id)
    return get_node(gcs_address, node_id)


def _wait_until_registered(gcs_address: str, node_id: str, wait_s: float = 10.0) -> bool:
    """Ask the GCS at ``gcs_address`` every 20 ms, for up to ``wait_s``, whether the node
    ``node_id`` (hex) is registered and alive; True once it is (False: not within
    ``wait_s`` -- a raylet that failed to start is then reported by Ray's own wait, which
    follows -- or the GCS could not be asked)."""
    state = None
    try:
        state = ray._private.state.GlobalState()
        state._initialize_global_state(ray._private.services._get_gcs_client_options(gcs_address))
        deadline = time.monotonic() + wait_s
        while True:
            if any(n.get("NodeID") == node_id and n.get("Alive") for n in state.node_table()):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
    except Exception:  # noqa: BLE001 - the caller falls back on Ray's own wait
        return False
    finally:
        if state is not None:
            with contextlib.suppress(Exception):
                state.disconnect()


def shutdown_ray() -> None:
    """Shut down the Ray this process started (:func:`init_ray`), agents included; safe
    to call more than once and when Ray never finished starting."""
    global _started, _session_dir
    if not _started:
        return
    _started = False
    mine = _ray_descendants()
    session, _session_dir = _session_dir, None
    try:
        _stop_autoscaler_monitor()
        ray.shutdown()
    finally:
        _end(mine)
        _remove_session_dir(session)


atexit.register(shutdown_ray)


def _stop_autoscaler_monitor() -> None:
    """End embedded Ray's autoscaler monitor before ``ray.shutdown``.

    Ray 2.60 stops its daemons one after another, each with SIGTERM and up to 1 s to go
    before SIGKILL.  The monitor (idle on a one-machine cluster) never leaves within that
    second once the GCS is gone: measured 1.37 s for the whole shutdown, of which 1.02 s
    waiting on the monitor; 0.12-0.36 s when it is killed first.  Ray would SIGKILL it
    a second later anyway; nothing it holds outlives the session."""
    node = _global_node()
    for info in getattr(node, "all_processes", {}).get("monitor", []):
        proc = getattr(info, "process", None)
        with contextlib.suppress(Exception):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=1.0)


def _proc_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, start time, command line) of every running process (Linux
    /proc; empty elsewhere)."""
    out = {}
    for d in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] in "ZX":  # exited (a zombie waits for its parent)
            continue
        out[int(d)] = (int(fields[1]), fields[19], cmd)
    return out


def _ray_descendants() -> dict[int, str]:
    """This process's descendant Ray processes: pid -> start time."""
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    found, todo = {}, list(kids.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        todo.extend(kids.get(pid, []))
        cmd = table[pid][2]
        if "/ray/" in cmd or cmd.startswith("ray::"):  # Ray's binaries, agents, workers
            found[pid] = table[pid][1]
    return found


def _end(procs: dict[int, str], wait_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, the processes of ``procs`` still running (same start time:
    never a process that reused a pid)."""

    def alive() -> list[int]:
        table = _proc_table()
        return [p for p, t in procs.items() if p in table and table[p][1] == t]

    for sig in (signal.SIGTERM, signal.SIGKILL):
        left = alive()
        for p in left:
            with contextlib.suppress(OSError):
                os.kill(p, sig)
        deadline = time.monotonic() + wait_s
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = alive()
        if not left:
            return


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 1.0))


#: Ray's fractional resources are whole multiples of 1 / RESOURCE_UNITS.
RESOURCE_UNITS = 10_000


def host_cpus(cpus: float, n_hosts: int) -> float:
    """The CPU each of ``n_hosts`` host actors asks Ray for, out of ``cpus`` for them all:
    an equal share, at most 1, rounded *down* to Ray's resource unit (0.0001), so that all
    of them fit at once (a run whose hosts do not all fit waits for them until its
    timeout).  At least one unit: beyond 10,000 hosts per CPU, Ray cannot express less."""
    share = min(1.0, cpus / max(1, n_hosts))
    return max(1, math.floor(share * RESOURCE_UNITS)) / RESOURCE_UNITS


#: Above this many hosts per CPU, rounds send every host call at once (see _round_window).
WINDOW_MAX_HOSTS_PER_CPU = 16


def _round_window(n_hosts: int, cpus: float, linked: bool = False) -> int:
    """Host calls a round runs at once: ``VMMSIM_ROUND_WINDOW`` if set; else one per CPU
    -- over Ray calls only up to :data:`WINDOW_MAX_HOSTS_PER_CPU` hosts per CPU (then
    all), over the round link (``linked``, :mod:`cluster.round_link`) always.

    Measured on 2 cores (see :meth:`RayPool._windowed`): 16 hosts ran their rounds 10%
    faster one call per CPU at a time (the hosts' tick CPU fell by 20%); over Ray calls 64
    hosts ran them 6% slower, because a host waiting for its turn is an idle Ray actor,
    whose main thread wakes every 10 ms (8 ms of CPU a second each), while a host whose
    call is queued on a busy core is inside its task and does not wake.  Over the link a
    waiting host is inside its serve task, so the crowding rule falls away: 64 hosts one
    call per CPU at a time simulated the first 15 minutes of the large run in 55 s
    instead of 77 s (the hosts' round-call CPU 79 instead of 124 s)."""
    env = os.environ.get("VMMSIM_ROUND_WINDOW", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ValueError(f"VMMSIM_ROUND_WINDOW must be a positive integer (got {env!r})")
        return int(env)
    if not linked and n_hosts > WINDOW_MAX_HOSTS_PER_CPU * cpus:
        return max(1, n_hosts)
    return max(1, int(cpus))


def policy_runtime_env(cfg: SimConfig) -> dict[str, Any] | None:
    """The ``runtime_env`` that ships ``cfg``'s user policy modules (None: nothing to
    ship).  Ray 2.60 takes local paths in ``py_modules`` only at the job level
    (``ray.init``), so the ``.py`` files and package folders are uploaded to the
    cluster here (Ray's own ``upload_py_modules_if_needed``, content-addressed: a no-op
    when already there) and the actors get ``gcs://`` URIs; that works with embedded Ray,
    ``--address`` and a Ray the caller started.  A shipped file is imported by its stem on
    a node where its path does not exist (:data:`vmmsim.policies.SHIPPED_ENV`).  Paths
    that do not exist here (the coordinator actor on another node) are left out: actors
    started by an actor inherit its ``runtime_env``."""
    specs = [getattr(getattr(cfg, sec), key) for sec, key in POLICY_KEYS]
    specs += [v for e in cfg.events for p, v in e.set if tuple(p.split(".")) in POLICY_KEYS]
    specs += sorted({v.workload.kind for v in cfg.vms})
    paths = [p for p in policies.ship_paths(specs) if os.path.exists(p)]
    if not paths:
        return None
    from ray._private.runtime_env.py_modules import upload_py_modules_if_needed

    files = [p for p in paths if p.endswith(".py")]
    env: dict[str, Any] = {
        "py_modules": list(paths),
        "env_vars": {policies.SHIPPED_ENV: os.pathsep.join(files)},
    }
    with tempfile.TemporaryDirectory(prefix="vmmsim-ship-") as scratch:
        return upload_py_modules_if_needed(env, include_gitignore=True, scratch_dir=scratch)


def _with_env(options: dict[str, Any], env: dict[str, Any] | None) -> dict[str, Any]:
    return {**options, "runtime_env": env} if env else options


class RoundTiming:
    """Running totals of where the rounds' wall time went (``timing.json``), kept as
    sums, not per round: a long run's memory does not grow with its rounds."""

    def __init__(self) -> None:
        self.n = 0
        self.wall_s = self.host_busy_s = self.slowest_host_s = self.bound_s = 0.0
        self.host_cpu_s = 0.0

    def add(
        self, wall_s: float, busy_s: list[float], width: int, cpu_s: Sequence[float] = ()
    ) -> None:
        """One round: its wall time, each host's busy time, hosts running at once (and
        the CPU each host's call used)."""
        self.n += 1
        self.wall_s += wall_s
        self.host_busy_s += sum(busy_s)
        self.host_cpu_s += sum(cpu_s)
        slowest = max(busy_s, default=0.0)
        self.slowest_host_s += slowest
        # A round cannot finish before its busiest host, nor before the hosts' summed
        # compute spread over the calls that run at once (the window).
        self.bound_s += max(slowest, sum(busy_s) / width)


class RayPool(HostPool):
    """Host actors spread over the cluster; results in host-name order."""

    def __init__(
        self,
        cfg_dict: dict[str, Any],
        timeout_s: float = 600.0,
        mode: HostMode | None = None,
        cluster_share: float = 1.0,
    ) -> None:
        self.cfg = config_from_dict(cfg_dict)
        self.mode = mode
        self.cpus = cluster_cpus() * cluster_share  # what this run's hosts ask for in all
        self.timeout_s = timeout_s
        self.rounds = RoundTiming()  # where each run_round call's wall time went
        self.tick = 0
        self._submitted: dict[str, tuple[str, str]] = {}  # ref id -> (host, method)
        self._killed_at: dict[str, int] = {}  # fault injection: host -> tick
        self.names = [s.name for s in host_specs(self.cfg)]
        #: Rounds run at most this many host calls at a time (see :meth:`_windowed`).
        self.window = _round_window(len(self.names), self.cpus)
        self.spawns = 0  # 1 + recoveries (fresh actors)
        self._spawn()

    def _spawn(self) -> None:
        # Compile the hosts' kernels here once (or load them from numba's disk cache), so
        # the actors about to start on this node load machine code instead of each
        # compiling the same kernels at the same moment.
        warm_kernels()
        self.spawns += 1
        specs = host_specs(self.cfg)
        cpus = host_cpus(self.cpus, len(specs))
        sim, pol = sim_params(self.cfg), host_policy(self.cfg)
        opts = _with_env(
            {"num_cpus": cpus, "scheduling_strategy": "SPREAD"}, policy_runtime_env(self.cfg)
        )
        self.actors = {
            s.name: HostActor.options(**opts).remote(s, sim, pol, self.mode) for s in specs
        }
        self.call("ping", [()] * len(self.names))

    def restart(self) -> None:
        """Fresh actors for every host (the old ones are killed; recovery)."""
        self._local = self._link_ok = None
        self.close()
        self._submitted.clear()
        self._killed_at.clear()
        self._spawn()

    def call(self, method: str, args: Sequence[tuple], names: Sequence[str] | None = None) -> list:
        names = list(names if names is not None else self.names)
        t0 = time.perf_counter()
        if method == "run_round" and self._linked():
            out = self._link_rounds(names, args)
        else:
            out = self._call(method, names, args)
        if method == "run_round":
            width = max(1, min(self.window, len(names)))
            self.rounds.add(
                time.perf_counter() - t0,
                [r["busy_s"] for r in out],
                width,
                [r["cpu_s"] for r in out],
            )
        return out

    # ---- rounds over the local link (cluster.round_link) -----------------------------
    _link: round_link.RoundLink | None = None
    _serving: dict[str, Any] | None = None  # host -> its serve_rounds task's ref
    _link_ok: bool | None = None  # every host on this node (asked once per set of actors)

    def _linked(self) -> bool:
        """Whether rounds go over the link (starting it if it is not up)."""
        if self._link_ok is None:
            self._link_ok = round_link.enabled() and self.file_writers() == set(self.names)
            self.window = _round_window(len(self.names), self.cpus, self._link_ok)
        if not self._link_ok:
            return False
        if self._link is None:
            link = round_link.RoundLink()
            self._serving = {
                n: self.actors[n].serve_rounds.remote(link.path, n) for n in self.names
            }
            self._link = link
            try:
                link.accept(self.names, self.timeout_s, self._serve_failed)
            except round_link.LinkError as e:
                self._unlink(wait=False)
                raise HostFailure(e.name, self.tick, e.why) from None
            except BaseException:
                self._unlink(wait=False)
                raise
        return True

    def _serve_failed(self) -> None:
        """Raise the failure of any serve task that ended before connecting."""
        refs = list(self._serving.values())
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        if done:
            names = {r.hex(): n for n, r in self._serving.items()}
            self._results(done, [(names[r.hex()], "serve_rounds") for r in done])
            late = names[done[0].hex()]
            raise round_link.LinkError(late, "left the link before connecting")

    linked_rounds = 0  # rounds that went over the link (timing.json: rounds_linked)

    def _link_rounds(self, names: list[str], args: Sequence[tuple]) -> list:
        self.linked_rounds += 1
        try:
            answers = self._link.rounds(names, args, self.window, self.timeout_s)
        except round_link.LinkError as e:
            self._unlink(wait=False)
            raise self._gone(e.name, e.why) from None
        out = []
        for n, (status, value) in zip(names, answers, strict=True):
            if status != "ok":
                raise self._raised(n, value)
            out.append(value)
        return out

    def _unlink(self, wait: bool = True) -> None:
        """End the link before any other call (each host's serve task returns first)."""
        link, serving = self._link, self._serving
        if link is None:
            return
        self._link = self._serving = None
        link.close()
        if wait and serving:
            self._results(list(serving.values()), [(n, "serve_rounds") for n in serving])

    def _call(self, method: str, names: list[str], args: Sequence[tuple]) -> list:
        self._unlink()
        if method == "run_round" and self.window < len(names):
            refs = self._windowed(method, names, args)
        else:
            refs = [
                getattr(self.actors[n], method).remote(*a) for n, a in zip(names, args, strict=True)
            ]
        return self._results(refs, [(n, method) for n in names])

    def _windowed(self, method: str, names: list[str], args: Sequence[tuple]) -> list:
        """Submit the calls with at most :attr:`window` running at a time (in host
        order); return their refs once all are submitted.

        A round is many short host tasks.  Submitted all at once, far more of them are
        runnable than there are cores and the kernel time-slices them: every switch brings
        another host's pages into the caches.  With one call per core each host runs its
        round through on a warm cache; the next call is sent as soon as one returns.  The
        width is chosen by :func:`_round_window`."""
        refs: list = []
        pending: list = []
        deadline = time.perf_counter() + self.timeout_s
        for n, a in zip(names, args, strict=True):
            if len(pending) >= self.window:
                left = max(0.0, deadline - time.perf_counter())
                done, pending = ray.wait(pending, num_returns=1, timeout=left)
                if not done:
                    late = names[refs.index(pending[0])]
                    raise HostFailure(
                        late, self.tick, f"no answer to {method} within {self.timeout_s:g} s"
                    )
            ref = getattr(self.actors[n], method).remote(*a)
            refs.append(ref)
            pending.append(ref)
        return refs

    def submit(self, name: str, method: str, *args: Any) -> Any:
        """An ObjectRef; refs among ``args`` are resolved by Ray on the receiving actor."""
        self._unlink()
        ref = getattr(self.actors[name], method).remote(*args)
        # Labels for error messages, keyed by the ref's id so that refs never gathered
        # (intermediate data) are not kept alive here; the oldest labels are dropped.
        if len(self._submitted) >= 4096:
            for k in list(self._submitted)[:2048]:
                del self._submitted[k]
        self._submitted[ref.hex()] = (name, method)
        return ref

    def gather(self, handles: Sequence[Any]) -> list:
        labels = [self._submitted.pop(h.hex(), ("?", "?")) for h in handles]
        return self._results(list(handles), labels)

    def _results(self, refs: list, labels: list[tuple[str, str]]) -> list:
        """Wait (with the pool timeout) and get; failures become :class:`HostFailure`."""
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.timeout_s)
        out = []
        for (n, method), ref in zip(labels, refs, strict=True):
            if ref not in ready:
                raise HostFailure(
                    n, self.tick, f"no answer to {method} within {self.timeout_s:g} s"
                )
            try:
                out.append(ray.get(ref))
            except ray.exceptions.RayActorError as e:
                raise self._gone(n, f"actor died ({type(e).__name__})") from None
            except ray.exceptions.RayTaskError as e:
                raise self._raised(n, e.cause if e.cause is not None else e) from None
        return out

    def _gone(self, name: str, why: str) -> HostFailure:
        """A host that stopped answering (over Ray or the link): killed by fault injection,
        worded as InProcessPool words it, or ``why``."""
        if name in self._killed_at:
            return HostFailure(name, self._killed_at[name], "host killed (fault injection)")
        return HostFailure(name, self.tick, why)

    def _raised(self, name: str, cause: BaseException) -> BaseException:
        """What a host's exception becomes: an OutputWriteError stays itself (as in
        InProcessPool: the run's output failed, not the host), anything else a HostFailure."""
        if isinstance(cause, OutputWriteError):
            return cause
        return HostFailure(name, self.tick, f"{type(cause).__name__}: {cause}")

    _local: set[str] | None = None

    def file_writers(self) -> set[str]:
        """The hosts on this process's node (asked once per set of actors)."""
        if self._local is None:
            here = ray.get_runtime_context().get_node_id()
            self._local = {n for n, node in self.node_ids().items() if node == here}
        return set(self._local)

    def write_width(self) -> int:
        """This node's CPUs: the hosts writing at once share them."""
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

    def node_ids(self) -> dict[str, str]:
        return dict(zip(self.names, self.call("node_id", [()] * len(self.names)), strict=True))

    def pids(self) -> dict[str, int]:
        return dict(zip(self.names, self.call("pid", [()] * len(self.names)), strict=True))

    def kill(self, name: str, tick: int | None = None) -> None:
        if tick is not None:
            self._killed_at[name] = tick
        self._unlink()
        ray.kill(self.actors[name], no_restart=True)

    def close(self) -> None:
        self._unlink(wait=False)
        for a in self.actors.values():
            ray.kill(a, no_restart=True)


class _CoordinatorImpl:
    """The coordinator as an actor: owns time, the only caller of the host actors."""

    def __init__(
        self,
        cfg_dict: dict[str, Any],
        timeout_s: float,
        opts: RunOptions | None = None,
        out: str | None = None,
    ) -> None:
        self.cfg = config_from_dict(cfg_dict)
        opts = opts or RunOptions()
        self.pool = RayPool(cfg_dict, timeout_s, opts.host_mode(), opts.cluster_share)
        # Record, replay, checkpoints and recovery (files are written on this node).
        self.session = Session(self.cfg, self.pool, opts, out)
        self.coord = self.session.coord
        self.advance_s = 0.0
        self.startup_cpu_s = 0.0  # the host processes' CPU when the VMs had booted

    def start(self) -> int:
        self.session.start()
        self.startup_cpu_s = sum(self.pool.call("cpu_seconds", [()] * len(self.pool.names)))
        return self.coord.n_ticks

    def advance(self, max_rounds: int) -> tuple[list, int, bool]:
        t0 = time.perf_counter()
        try:
            return self._advance(max_rounds)
        finally:
            self.advance_s += time.perf_counter() - t0

    def _advance(self, max_rounds: int) -> tuple[list, int, bool]:
        tables = []
        for _ in range(max_rounds):
            if self.coord.done:
                break
            self.pool.tick = self.coord.tick
            tables.extend(self.session.advance())
        return tables, self.coord.tick, self.coord.done

    def finish(self) -> dict[str, Any]:
        return self.session.finish()

    def host_nodes(self) -> dict[str, str]:
        return self.pool.node_ids()

    def timing(self) -> dict[str, Any]:
        """Where the wall time went: host compute vs Ray round trips vs coordinator.

        Per round, at most ``window`` hosts run at once, so the round cannot finish before
        its busiest host nor before the hosts' summed busy time divided by the window
        (``round_bound_s``); everything above that is transport and scheduling overhead.
        """
        phases = self.pool.call("phase_seconds", [()] * len(self.pool.names))
        cpu = self.pool.call("cpu_seconds", [()] * len(self.pool.names))
        r = self.pool.rounds
        split = {
            "host_startup_cpu_s": self.startup_cpu_s,
            "host_round_call_cpu_s": r.host_cpu_s,
            "host_other_cpu_s": sum(cpu) - self.startup_cpu_s - r.host_cpu_s,
        }
        return {
            "rounds": r.n,
            "host_busy_s": r.host_busy_s,
            # CPU of the host actor processes in all (imports, boot, Ray's own threads
            # and timers, serialisation) vs the CPU of their ticks' parts below; split
            # into start-up (Ray's worker, imports, boot), the run_round calls (from the
            # hosts' main threads) and the rest (Ray's per-call work outside the method,
            # its threads, idle 10 ms wake-ups, the few other calls)
            "host_process_cpu_s": sum(cpu),
            **(split if self.pool.spawns == 1 else {}),  # (a recovery's actors are new)
            # summed over hosts: where the hosts' compute went
            "host_phase_s": {k: sum(p[k] for p in phases) for k in (phases[0] if phases else {})},
            "rounds_linked": self.pool.linked_rounds,  # of them, over cluster.round_link
            "round_wall_s": r.wall_s,
            "slowest_host_s": r.slowest_host_s,
            "round_window": max(1, min(self.pool.window, len(self.pool.names))),
            "round_bound_s": r.bound_s,
            "ray_overhead_s": r.wall_s - r.bound_s,
            "advance_s": self.advance_s,
            "coordinator_own_s": self.advance_s - r.wall_s,
        }

    def host_pids(self) -> dict[str, int]:
        return self.pool.pids()

    def kill_host(self, name: str) -> None:
        self.pool.kill(name)

    def close(self) -> None:
        self.session.close()
        self.pool.close()


# Task events (Ray's per-task state history for its dashboard and state API) are off for
# the simulator's own actors: a run makes hundreds of calls per simulated minute, the GCS
# kept each one's events up to its cap (~16 MB per simulated hour of the 64-host day), and
# nothing here reads them.
CoordinatorActor = ray.remote(num_cpus=0, max_restarts=0, enable_task_events=False)(
    _CoordinatorImpl
)


def start_coordinator(
    cfg_dict: dict[str, Any],
    timeout_s: float,
    opts: RunOptions | None = None,
    out: str | None = None,
) -> Any:
    """The coordinator actor, placed on this (the driver's) node: it writes the record
    log and checkpoints under ``out`` (the driver's run directory)."""
    node = ray.get_runtime_context().get_node_id()
    env = policy_runtime_env(config_from_dict(cfg_dict))
    return CoordinatorActor.options(
        **_with_env({"scheduling_strategy": NodeAffinitySchedulingStrategy(node, soft=True)}, env)
    ).remote(cfg_dict, timeout_s, opts, out)
