"""Checkpoints: a whole run's state at a round boundary, and restoring it.

Scope: ``DIR/checkpoints/t<tick>/`` -- ``manifest.json`` (format version, config hash,
tick, every file's size and checksum, the coordinator's state: tick, targets, placement,
round digests, VM step counts, number of decisions), ``config.json`` (the resolved
config, so a checkpoint stands alone) and one Arrow IPC file per host
(:mod:`cluster.checkpoint_format`: frames, maps, swap store, sharing index, guest OS,
RNG states, statistics; optionally zstd- or lz4-compressed, ``--checkpoint-compression``:
the manifest then names it and its checksums cover the compressed bytes).  A checkpoint
is written under a temporary name and renamed when complete, so a crash never leaves a
half checkpoint that looks whole.

:class:`Checkpointer` takes one every ``every_ticks`` ticks, rounded *up* to the next
reallocation boundary (every ``realloc_period_s``) at which no live migration is in
flight, and never at the last tick.  Checkpoints land on the file system of the
coordinator's process (with Ray, the coordinator actor, placed on the driver's node).
Hosts on that machine write their own files (``HostRuntime.write_checkpoint``, a few at
a time); hosts on other nodes hand their state over as numpy arrays
(``HostRuntime.checkpoint``), one at a time, and the coordinator writes their files.
Either way a host's file has the same bytes (:func:`pool_host_files`).

:func:`read_checkpoint` verifies everything before anything is used (LogError: missing
file, size or checksum mismatch, wrong format version, config hash mismatch).
:func:`restore` loads one into a coordinator and its (fresh) hosts.
:func:`resume_config` is the config a resumed run may use: the checkpoint's, with only
overrides that leave the past unchanged (``simulation.duration_s``, past the checkpoint);
:func:`check_resumable` checks a config against a checkpoint's.

Not covered: what a host's state is (``hosts/snapshot.py``), recovery (``session.py``).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmmsim.cluster import checkpoint_format as cf
from vmmsim.cluster.config import ConfigError, SimConfig, config_from_dict, with_overrides
from vmmsim.cluster.outputs import OutputWriteError, write_json, writing
from vmmsim.cluster.sealed_stream import LogError
from vmmsim.cluster.specs import vm_spec


def checkpoint_name(cfg: SimConfig, tick: int) -> str:
    """``t<tick>``, zero-padded to the run's last tick (so names sort by tick)."""
    return f"t{tick:0{len(str(cfg.simulation.n_ticks))}d}"


def every_ticks(cfg: SimConfig, seconds: float) -> int:
    """``--checkpoint-every`` seconds of simulated time as ticks (at least one)."""
    return max(1, math.ceil(seconds / cfg.simulation.tick_s - 1e-9))


@dataclass
class Checkpoint:
    """A verified checkpoint: config, coordinator state and each host's arrays."""

    path: Path
    cfg: SimConfig
    tick: int
    coordinator: dict[str, Any]
    hosts: dict[str, tuple[cf.Arrays, dict[str, Any]]]


#: Writes a checkpoint's host files: called once with ``(host, path, file metadata)`` for
#: every host (in the checkpoint's order) and the compression, it leaves each host's state
#: at its path (:func:`cluster.checkpoint_format.write_host_file`).
HostFilesWriter = Callable[[list[tuple[str, Path, dict[str, str]]], str], None]


@dataclass(frozen=True)
class HostFiles:
    """Hosts whose files are written by ``write`` (the hosts themselves, or a fetch of
    each state), in the order of ``names``."""

    names: Sequence[str]
    write: HostFilesWriter


def write_checkpoint(
    root: Path,
    cfg: SimConfig,
    coord_state: dict[str, Any],
    hosts: Mapping[str, tuple[cf.Arrays, dict[str, Any]]] | HostFiles,
    checksum: str = cf.DEFAULT_CHECKSUM,
    compression: str = "none",
) -> Path:
    """Write ``root/t<tick>/`` (via a temporary directory renamed at the end), the host
    files compressed with ``compression`` (``none``, ``zstd``, ``lz4``).  ``hosts``: each
    host's ``(arrays, meta)`` by name, or :class:`HostFiles` (what a running session
    passes: see :func:`pool_host_files`).  A failed write (disk full) raises
    :class:`cluster.outputs.OutputWriteError` naming the file; the temporary directory is
    removed."""
    tick = int(coord_state["tick"])
    final = Path(root) / checkpoint_name(cfg, tick)
    tmp = final.with_name(f".{final.name}.partial")
    if not isinstance(hosts, HostFiles):
        hosts = HostFiles(list(hosts), _states_writer(hosts))
    try:
        return _write_checkpoint(tmp, final, tick, cfg, coord_state, hosts, checksum, compression)
    except OutputWriteError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _states_writer(states: Mapping[str, tuple[cf.Arrays, dict[str, Any]]]) -> HostFilesWriter:
    def write(jobs: list[tuple[str, Path, dict[str, str]]], compression: str) -> None:
        for name, path, file_meta in jobs:
            arrays, meta = states[name]
            cf.write_host_file(path, arrays, meta, file_meta, compression)

    return write


def pool_host_files(pool: Any, names: Sequence[str]) -> HostFiles:
    """The hosts ``names`` of ``pool`` as :class:`HostFiles`.  Hosts on this machine
    (``pool.file_writers()``) write their own files, ``pool.write_width()`` at a time:
    their state is copied neither into Ray's object store nor into this process, and
    the hosts write side by side.  Hosts elsewhere hand their state over one at a time,
    each written here before the next is fetched, so this process holds one host's
    state, not the cluster's."""
    local = pool.file_writers()

    def write(jobs: list[tuple[str, Path, dict[str, str]]], compression: str) -> None:
        own = [(n, str(p), m, compression) for n, p, m in jobs if n in local]
        width = max(1, int(pool.write_width()))
        for k in range(0, len(own), width):
            part = own[k : k + width]
            pool.call("write_checkpoint", [a[1:] for a in part], [a[0] for a in part])
        for name, path, file_meta in jobs:
            if name not in local:
                arrays, meta = pool.call("checkpoint", [()], [name])[0]
                cf.write_host_file(path, arrays, meta, file_meta, compression)
                del arrays, meta  # (before the next host's state is fetched)

    return HostFiles(list(names), write)


def _write_checkpoint(
    tmp: Path,
    final: Path,
    tick: int,
    cfg: SimConfig,
    coord_state: dict[str, Any],
    hosts: HostFiles,
    checksum: str,
    compression: str,
) -> Path:
    if tmp.exists():
        shutil.rmtree(tmp)
    with writing(tmp):
        tmp.mkdir(parents=True)
    tmp = tmp.resolve()  # (hosts may write their files from another working directory)
    files = {"config.json": "config"}
    write_json(tmp / "config.json", cfg.to_dict())
    host_files = {name: f"host{i:04d}.arrow" for i, name in enumerate(hosts.names)}
    jobs = [
        (name, tmp / fname, cf.host_file_meta(name, tick, cfg.config_hash()))
        for name, fname in host_files.items()
    ]
    hosts.write(jobs, compression)
    files.update({fname: name for name, fname in host_files.items()})
    with cf.hash_pool() as pool:
        listed = {
            f: {
                "bytes": (tmp / f).stat().st_size,
                "checksum": cf.file_checksum(tmp / f, checksum, pool),
            }
            for f in files
        }
    body = {
        "vmmsim.format": cf.FORMAT,
        "config_hash": cfg.config_hash(),
        "tick": tick,
        "checksum": checksum,  # sha256 over the block digests of 8 MiB blocks
        "files": listed,
        "hosts": host_files,
        "coordinator": coord_state,
    }
    if compression != "none":  # (absent: plain, as in checkpoints from before the option)
        body["compression"] = compression
    with writing(tmp / "manifest.json"):
        (tmp / "manifest.json").write_text(cf.manifest_text(body))
    if final.exists():
        shutil.rmtree(final)
    with writing(final):
        tmp.rename(final)
    return final


def read_checkpoint(path: str | Path, expect_hash: str | None = None) -> Checkpoint:
    """Verify and open ``path`` (arrays memory-mapped, zero-copy; decompressed into memory
    when the checkpoint is compressed)."""
    root = Path(path)
    if not root.is_dir():
        raise LogError(root, "not a checkpoint directory")
    man = cf.parse_manifest(root / "manifest.json")
    try:
        files, host_files = dict(man["files"]), dict(man["hosts"])
        tick, coord = int(man["tick"]), dict(man["coordinator"])
        want_hash, algo = str(man["config_hash"]), str(man["checksum"])
    except (KeyError, TypeError, ValueError) as e:
        raise LogError(root / "manifest.json", f"incomplete manifest ({e})") from None
    if "config.json" not in files or not set(host_files.values()) <= set(files):
        raise LogError(root / "manifest.json", "does not list its files")
    with cf.hash_pool() as pool:
        cf.check_files(root, files, algo, pool)
    try:
        cfg = config_from_dict(json.loads((root / "config.json").read_text()), str(root))
    except (json.JSONDecodeError, ConfigError) as e:
        raise LogError(root / "config.json", f"not a valid config ({e})") from None
    if cfg.config_hash() != want_hash:
        raise LogError(root / "config.json", "config hash mismatch with the manifest")
    if expect_hash is not None and want_hash != expect_hash:
        raise LogError(root, "config hash mismatch: a checkpoint of another run")
    if list(host_files) != list(cfg.host_names()) or coord.get("tick") != tick:
        raise LogError(root / "manifest.json", "hosts or tick do not match the config")
    hosts = {}
    for name, fname in host_files.items():
        p = root / fname
        try:
            arrays, meta = cf.read_arrays_file(p)
            if (
                meta.get(b"vmmsim.format") != cf.FORMAT.encode()
                or meta.get(b"vmmsim.host") != name.encode()
                or meta.get(b"vmmsim.tick") != str(tick).encode()
            ):
                raise ValueError("format, host or tick differ from the manifest")
            hosts[name] = (arrays, json.loads(meta[b"vmmsim.host_meta"]))
        except (ValueError, KeyError, OSError) as e:  # pa.ArrowInvalid is a ValueError
            raise LogError(p, f"unreadable host state ({e})") from None
    return Checkpoint(root, cfg, tick, coord, hosts)


# Keys a resumed run may change: they leave every tick before the checkpoint as it was
# (the workloads, the policy and the placement do not depend on the run's length).
RESUME_KEYS = ("simulation.duration_s",)


def _past_view(cfg: SimConfig) -> dict[str, Any]:
    d = cfg.to_dict()
    d["simulation"] = {k: v for k, v in d["simulation"].items() if k != "duration_s"}
    return d


def check_resumable(ckpt_cfg: SimConfig, cfg: SimConfig, tick: int) -> str | None:
    """Why ``cfg`` cannot continue a checkpoint of ``ckpt_cfg`` taken at ``tick`` (None if
    it can: equal but for :data:`RESUME_KEYS`, and running past ``tick``)."""
    if cfg.config_hash() == ckpt_cfg.config_hash():
        return None
    if _past_view(cfg) != _past_view(ckpt_cfg):
        return "config hash mismatch: a checkpoint of another run"
    if cfg.simulation.n_ticks <= tick:
        return f"simulation.duration_s must end after the checkpoint's tick {tick}"
    return None


def resume_config(ckpt: Checkpoint, overrides: Sequence[str] = ()) -> SimConfig:
    """The checkpoint's config with ``overrides`` (``KEY=VALUE``); ConfigError naming the
    key for a key outside :data:`RESUME_KEYS` or a duration that ends at or before the
    checkpoint."""
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key not in RESUME_KEYS:
            raise ConfigError(
                f"--set {key}",
                "cannot change when resuming (it would change the run before the "
                f"checkpoint); only {', '.join(RESUME_KEYS)} may",
            )
    if not overrides:
        return ckpt.cfg
    cfg = with_overrides(ckpt.cfg, overrides)
    if cfg.simulation.n_ticks <= ckpt.tick:
        tick_s = ckpt.cfg.simulation.tick_s
        raise ConfigError(
            "--set simulation.duration_s",
            f"must be longer than the checkpoint's {ckpt.tick * tick_s:g} s (tick {ckpt.tick})",
            cfg.simulation.duration_s,
        )
    why = check_resumable(ckpt.cfg, cfg, ckpt.tick)
    if why is not None:  # (cannot happen with RESUME_KEYS alone; a guard for new keys)
        raise ConfigError("--set", why)
    return cfg


def restore(coord: Any, ckpt: Checkpoint) -> None:
    """Put the checkpointed state into ``coord`` and its pool's (fresh) hosts."""
    cfg = coord.cfg
    args = []
    for h in coord.hosts:
        arrays, meta = ckpt.hosts[h]
        args.append((arrays, meta, [vm_spec(cfg, v) for v in meta["vms"]]))
    coord.pool.call("restore", args, coord.hosts)
    coord.load_state(ckpt.coordinator)


class Checkpointer:
    """A coordinator observer: a checkpoint at the first round boundary at or after every
    multiple of ``every`` ticks (not at the end of the run)."""

    def __init__(
        self,
        root: Path,
        cfg: SimConfig,
        every: int,
        start_tick: int = 0,
        compression: str = "none",
    ) -> None:
        self.root, self.cfg, self.every = Path(root), cfg, every
        self.compression = compression
        self.next_due = (start_tick // every + 1) * every
        self.last: Path | None = None
        self.written: list[int] = []
        self.last_decisions = 0  # the coordinator's decisions at the last checkpoint

    def on_round(self, coord: Any, start: int, n: int, results: list[dict[str, Any]]) -> None:
        del start, n, results
        if coord.done or coord.tick < self.next_due or coord.tick % coord.round_ticks:
            return
        if getattr(getattr(coord, "migrator", None), "active", None):
            return  # a migration in flight (its staging buffers are not host state): later
        self.next_due = (coord.tick // self.every + 1) * self.every
        target = self.root / checkpoint_name(self.cfg, coord.tick)
        if not target.exists():  # (it does when a recovery re-executes this round)
            hosts = pool_host_files(coord.pool, coord.hosts)
            # A recovery from here re-executes only later rounds: the checkpoint holds the
            # digests of the round that ended at it, not of the rounds before.
            last = coord.round_log.tail(1)
            state = {
                **coord.state(),
                "round_digests": last.kept,
                "round_digests_dropped": last.dropped,
            }
            write_checkpoint(self.root, self.cfg, state, hosts, compression=self.compression)
            self.written.append(coord.tick)
            self.last_decisions = state["n_decisions"]
        self.last = target
        # (dropped only now: a failure while writing recovers from the checkpoint before)
        coord.round_log.drop(coord.round_log.total - 1)
