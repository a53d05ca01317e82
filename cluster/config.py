"""Experiment configuration: the typed, validated form of a TOML experiment file.

Scope: loading with :mod:`tomllib`, ``count`` expansion of ``[[hosts]]`` / ``[[vms]]``,
``--set path=value`` overrides, the ``[sweep]`` table, cross-table checks (names, pinning,
ESX admission control) and the canonical plain-data form (:meth:`SimConfig.to_dict`)
whose sha256 is the config hash.

Overrides are applied to the raw TOML data before validation, so an overridden value
goes through exactly the checks a value in the file does.  Override paths:
``<section>.<key>`` for simulation/policy/migration, ``hosts.<name>.<key>``,
``vms.<name>.<key>``, ``vms.<name>.workload.<key>`` and ``vms.*.<key>``; ``<name>`` is the
name written in the file (on a loaded config, an expanded name such as ``web-3`` works too).

Not covered: running anything; no Ray here.  The schema (the section dataclasses with
help text), the generic strict builder and :class:`ConfigError` live in
:mod:`cluster.config_schema` and are re-exported here: import them from this module.
"""

from __future__ import annotations

import contextvars
import copy
import hashlib
import json
import math
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from vmmsim.cluster.config_schema import (
    MAX_ACCESSES_PER_TICK,
    MAX_FILE_PAGES,
    MAX_HOSTS,
    MAX_PAGES,
    MAX_PAGES_PER_TICK,
    MAX_STATE_BYTES,
    MAX_VMS,
    PLACEMENTS,
    ConfigError,
    HostConfig,
    MigrationConfig,
    PolicyConfig,
    ScheduledEvent,
    ScheduledMigration,
    SimulationConfig,
    VMConfig,
    WorkloadConfig,
    build,
    config_fields,
    describe_schema,
    describe_value,
    fmt_value,
    join,
)
from vmmsim.hosts import admission
from vmmsim.workloads import registry
from vmmsim.workloads.images import BUILTIN_IMAGES, ImageSpec

from vmmsim import policies

__all__ = [
    "PLACEMENTS",
    "ConfigError",
    "HostConfig",
    "MigrationConfig",
    "PolicyConfig",
    "ScheduledEvent",
    "ScheduledMigration",
    "SimConfig",
    "SimulationConfig",
    "VMConfig",
    "WorkloadConfig",
    "config_from_dict",
    "config_warnings",
    "describe_schema",
    "host_commitments",
    "page_state_bytes",
    "format_override",
    "load_config",
    "parse_config",
    "sweep_paths",
    "sweep_points",
    "with_overrides",
]

SweepSpec = tuple[tuple[str, tuple[Any, ...]], ...]

_SECTIONS = {"simulation": SimulationConfig, "policy": PolicyConfig, "migration": MigrationConfig}
_LISTS = {
    "hosts": HostConfig,
    "vms": VMConfig,
    "images": ImageSpec,
    "migrations": None,
    "events": None,
}
_TOP_LEVEL = sorted([*_SECTIONS, *_LISTS, "sweep"])
#: Policy keys (section, key) -> policy kind (:mod:`vmmsim.policies`).
POLICY_KEYS = {
    ("policy", "placement"): "placement",
    ("policy", "allocation"): "allocation",
    ("policy", "reclamation"): "reclamation",
    ("policy", "working_set"): "working_set",
    ("migration", "policy"): "migration",
}
# Folder relative policy file paths resolve from while a config is parsed.
_BASE_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("base_dir", default=None)
# Folder relative workload data paths (traces) resolve from: the config file's, when a
# TOML file is parsed; None for a resolved config (a checkpoint's, a record log's: their
# paths were made absolute when loaded, or are from the current directory as before).
_DATA_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("data_dir", default=None)


@dataclass(frozen=True)
class SimConfig:
    """A resolved experiment: hosts and VMs expanded, images merged, all checks passed."""

    simulation: SimulationConfig
    policy: PolicyConfig
    migration: MigrationConfig
    hosts: tuple[HostConfig, ...]
    images: tuple[ImageSpec, ...]
    vms: tuple[VMConfig, ...]
    migrations: tuple[ScheduledMigration, ...] = ()
    sweep: SweepSpec = ()
    events: tuple[ScheduledEvent, ...] = ()
    source: str = field(default="<config>", compare=False)

    def pages(self, mb: float) -> int:
        """Whole pages in ``mb`` megabytes."""
        return int(mb * 2**20) // self.simulation.page_size

    @cached_property
    def _index(self) -> dict[str, dict[str, Any]]:
        return {k: {x.name: x for x in getattr(self, k)} for k in ("images", "hosts", "vms")}

    def image(self, name: str) -> ImageSpec:
        return self._index["images"][name]

    def host_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hosts)

    def host(self, name: str) -> HostConfig:
        return self._index["hosts"][name]

    def vm(self, name: str) -> VMConfig:
        return self._index["vms"][name]

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain data (JSON-able; ``source`` excluded); see :func:`config_from_dict`.
        ``events`` appears only when there are some (the hashes of configs without events
        are those of earlier versions)."""

        def vm_dict(v: VMConfig) -> dict[str, Any]:
            d = asdict(replace(v, workload=None))
            d["workload"] = {"kind": v.workload.kind, **asdict(v.workload.params)}
            return d

        return {
            **{name: asdict(getattr(self, name)) for name in _SECTIONS},
            "hosts": [asdict(h) for h in self.hosts],
            "images": [asdict(i) for i in self.images],
            "vms": [vm_dict(v) for v in self.vms],
            "migrations": [asdict(m) for m in self.migrations],
            "sweep": [[path, list(values)] for path, values in self.sweep],
            **(
                {"events": [{"time_s": e.time_s, "set": dict(e.set)} for e in self.events]}
                if self.events
                else {}
            ),
        }

    def warnings(self) -> list[str]:
        """See :func:`config_warnings`."""
        return config_warnings(self)

    def config_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of :meth:`to_dict`."""
        return self._hash

    @cached_property
    def _hash(self) -> str:
        d = self.to_dict()
        for section, keys in HASH_OMITS_AT_DEFAULT.items():
            default = _SECTIONS[section]()
            for key in keys:
                if d[section][key] == getattr(default, key):
                    del d[section][key]
        text = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


#: Keys added after checkpoints and recordings were first written (vmmsim 0.1, Dec 2026):
#: left out of :meth:`SimConfig.config_hash` while at their defaults, so the files of
#: earlier runs keep resuming and replaying.  A key may be listed only if its default
#: reproduces the earlier behaviour exactly (a mechanism switched off).
HASH_OMITS_AT_DEFAULT: dict[str, tuple[str, ...]] = {
    "policy": (  # issue 18: the mechanisms of later ESX and KVM releases
        "swap_cache_mb",
        "swap_cache_latency_us",
        "compression",
        "compression_cache_pct",
        "zswap_max_pool_percent",
        "zswap_accept_threshold_percent",
        "decompress_us",
        "free_states",
        "share_scan_clear_factor",
        "large_pages",
        "large_page_break_state",
        "sharing_scanner",
        "ksm_pages_to_scan",
        "ksm_sleep_millisecs",
        "ksm_max_page_sharing",
        "ksm_use_zero_pages",
        "free_page_reporting",
        "free_page_reporting_delay_s",
        "free_page_reporting_order",
    ),
}


# --- public entry points -------------------------------------------------------------------


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> SimConfig:
    """Read, override and validate a TOML experiment file."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("", "no such file", source=source) from None
    except OSError as e:
        raise ConfigError("", f"cannot read ({e.strerror})", source=source) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("TOML syntax error", str(e), source=source) from None
    return parse_config(data, source, overrides)


def parse_config(
    data: dict[str, Any], source: str = "<config>", overrides: Sequence[str] = ()
) -> SimConfig:
    """Validate raw TOML data (as from :func:`tomllib.load`), after ``overrides``."""
    return _parse(data, source, overrides, resolved=False)


def config_from_dict(d: dict[str, Any], source: str = "<dict>") -> SimConfig:
    """The inverse of :meth:`SimConfig.to_dict` (checkpoints, replay); validates again."""
    return _parse(_to_raw(d), source, (), resolved=True)


def with_overrides(cfg: SimConfig, overrides: Sequence[str]) -> SimConfig:
    """``cfg`` with ``path=value`` overrides applied (names may be expanded names).

    ``count`` cannot change here (hosts and VMs are already expanded): use
    ``load_config(path, overrides)`` for that.  ``[sweep]`` is kept as it is.
    """
    return _parse(_to_raw(cfg.to_dict()), cfg.source, overrides, resolved=True)


def format_override(path: str, value: Any) -> str:
    """``path=value`` with ``value`` written as TOML (round-trips through the parser)."""
    if isinstance(value, str):
        return f"{path}={json.dumps(value)}"
    return f"{path}={fmt_value(value)}"


def sweep_points(cfg: SimConfig) -> list[tuple[str, ...]]:
    """Every combination of the ``[sweep]`` values (cartesian product, file order), each
    as override strings for :func:`load_config` / :func:`with_overrides`."""
    points: list[tuple[str, ...]] = [()]
    for path, values in cfg.sweep:
        paths = sweep_paths(path)
        points = [
            p + tuple(format_override(q, x) for q, x in zip(paths, _linked(path, v), strict=True))
            for p in points
            for v in values
        ]
    return points if cfg.sweep else []


def sweep_paths(key: str) -> tuple[str, ...]:
    """The override paths of one ``[sweep]`` key: ``"a,b"`` links paths ``a`` and ``b``
    (each value is then an array ``[value_a, value_b]``; they change together)."""
    return tuple(p.strip() for p in key.split(","))


def _linked(key: str, value: Any) -> tuple[Any, ...]:
    return tuple(value) if len(sweep_paths(key)) > 1 else (value,)


# --- overrides -------------------------------------------------------------------------------

_PATHS_HELP = (
    "use simulation|policy|migration.<key>, hosts.<name>.<key>, vms.<name>.<key>, "
    "vms.<name>.workload.<key> or vms.*.<key>"
)


def _parse_value(text: str) -> Any:
    """A TOML value (``0.5``, ``false``, ``"x"``); anything else is a bare string."""
    try:
        parsed = tomllib.loads(f"v = {text}")
    except tomllib.TOMLDecodeError:
        return text
    return parsed["v"] if list(parsed) == ["v"] else text


def _names(names: Sequence[str], limit: int = 12) -> str:
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "") or "none"


def _known(names: Sequence[str], limit: int = 12) -> str:
    return f"(known: {_names(names, limit)})"


def _check_key(cls: type, key: str, where: str) -> None:
    names = sorted(f.name for f in config_fields(cls))
    if key not in names:
        raise ConfigError(where, f"unknown key {_known(names, limit=100)}")


def _table(d: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    table = d.setdefault(key, {})
    if not isinstance(table, dict):
        raise ConfigError(where, f"{key} is not a table")
    return table


def _matching(raw: dict[str, Any], head: str, name: str, where: str) -> list[dict[str, Any]]:
    """The raw entries of ``[[head]]`` an override names (file name, then base name)."""
    entries = raw.get(head)
    entries = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
    found = (
        entries
        if name == "*"
        else (
            [e for e in entries if e.get("name") == name]
            or [e for e in entries if e.get("base_name") == name]
        )
    )
    if not found:
        noun = "host" if head == "hosts" else "VM"
        names = [str(e.get("name")) for e in entries]
        raise ConfigError(where, f"no {noun} named {json.dumps(name)} {_known(names)}")
    return found


def _apply_override(raw: dict[str, Any], path: str, value: Any, where: str, resolved: bool) -> None:
    """Set ``path`` to ``value`` in the raw TOML data (in place)."""
    parts = path.split(".")
    head, key = parts[0], parts[-1]
    if head in _SECTIONS and len(parts) == 2:
        _check_key(_SECTIONS[head], key, where)
        _table(raw, head, where)[key] = value
        return
    if head not in ("hosts", "vms") or len(parts) < 3:
        raise ConfigError(where, f"not an override path ({_PATHS_HELP})")
    in_workload = head == "vms" and len(parts) >= 4 and parts[-2] == "workload"
    name = ".".join(parts[1:-2] if in_workload else parts[1:-1])
    for entry in _matching(raw, head, name, where):
        if in_workload:
            workload = _table(entry, "workload", where)
            kind = workload.get("kind", "idle")
            if key != "kind" and isinstance(kind, str) and kind in registry.WORKLOADS:
                _check_key(registry.WORKLOADS[kind].Params, key, f"{where} (kind {kind!r})")
            workload[key] = value
            continue
        _check_key(_LISTS[head], key, where)
        if key == "workload":
            raise ConfigError(where, "set workload keys one at a time: vms.<name>.workload.<key>")
        if key == "count" and resolved:
            raise ConfigError(where, "count is fixed after expansion (pass it to load_config)")
        entry[key] = value


# --- parsing ---------------------------------------------------------------------------------


def _parse(
    data: dict[str, Any], source: str, overrides: Sequence[str], *, resolved: bool
) -> SimConfig:
    try:
        if not isinstance(data, dict):
            raise ConfigError("", "expected a table at the top level")
        raw = copy.deepcopy(data)
        for text in overrides:
            path, sep, value = text.partition("=")
            path = path.strip()
            if not sep:
                raise ConfigError(f"--set {text}", "expected path=value")
            parsed = _parse_value(value.strip())
            if isinstance(parsed, str) and (_policy_path(path) or path.endswith("workload.kind")):
                parsed = policies.canonical(parsed)  # a path given here: from the cwd
            _apply_override(raw, path, parsed, f"--set {path}", resolved)
        src = Path(source)
        base = src.resolve().parent if src.is_file() else None
        token = _BASE_DIR.set(base)
        data_token = _DATA_DIR.set(None if resolved else base)
        try:
            cfg = _check_policies(_build(raw, resolved))
        finally:
            _BASE_DIR.reset(token)
            _DATA_DIR.reset(data_token)
        if not resolved:  # a loaded config's sweep was checked against its file already
            _check_sweep(raw, cfg.sweep)
        return replace(cfg, source=source)
    except ConfigError as e:
        e.source = e.source or source
        raise


def _entries(raw: dict[str, Any], key: str, *, required: bool) -> list[Any]:
    items = raw.get(key, [])
    if not isinstance(items, list):
        raise ConfigError(
            key, f"expected an array of tables ([[{key}]]), got {describe_value(items)}"
        )
    if required and not items:
        raise ConfigError(key, f"at least one [[{key}]] entry is required")
    return items


def _at(key: str, i: int, entry: Any) -> str:
    """``key[i] (name)``; ``entry`` is the raw entry (any type) or its name."""
    name = entry.get("name") if isinstance(entry, dict) else entry
    return f"{key}[{i}] ({name})" if isinstance(name, str) else f"{key}[{i}]"


def _build_workload(data: Any, where: str) -> WorkloadConfig:
    if not isinstance(data, dict):
        return build(WorkloadConfig, data, where)  # raises "expected a table"
    kind = data.get("kind", "idle")
    if not isinstance(kind, str):
        raise ConfigError(join(where, "kind"), "expected a string", kind)
    kind = policies.canonical(kind, _BASE_DIR.get())
    try:
        cls = registry.get(kind)
    except KeyError as e:
        raise ConfigError(join(where, "kind"), e.args[0]) from None
    fields = {k: v for k, v in data.items() if k != "kind"}
    if isinstance(fields.get("path"), str) and "path" in getattr(
        cls.Params, "__dataclass_fields__", {}
    ):
        fields["path"] = _data_file(fields["path"], join(where, "path"))
    params = build(cls.Params, fields, where)
    return WorkloadConfig(kind, params)


def _data_file(text: str, where: str) -> str:
    """A workload's data file (a trace path): a relative path resolves from the config
    file's folder and is made absolute (a config that is no file -- a dict, a checkpoint's
    config -- keeps it as it is: from the current directory); a missing file is a
    one-line ConfigError saying where it looked."""
    given = Path(text).expanduser()
    if not text or given.is_absolute():
        return text  # (the workload's own checks: required, readable)
    base = _DATA_DIR.get()
    p = given if base is None else base / given
    if not p.exists():
        if base is not None:
            note = "a relative path resolves from the config file's folder"
        else:
            note = "a relative path resolves from the current directory"
        raise ConfigError(where, f"no such file: looked for {p.absolute()} ({note})", text)
    return str(p) if base is not None else text


def _policy_path(path: str) -> bool:
    return tuple(path.split(".")) in POLICY_KEYS


def _check_policies(cfg: SimConfig) -> SimConfig:
    """Every policy key resolved now (unknown name, missing module or attribute: a
    one-line :class:`ConfigError` naming the key), relative file paths made absolute."""
    base = _BASE_DIR.get()
    for (section, key), kind in POLICY_KEYS.items():
        spec = getattr(getattr(cfg, section), key)
        try:
            policies.resolve_callable(kind, spec, base)
        except policies.PolicyError as e:
            raise ConfigError(f"{section}.{key}", str(e)) from None
        fixed = policies.canonical(spec, base)
        if fixed != spec:
            cfg = replace(cfg, **{section: replace(getattr(cfg, section), **{key: fixed})})
    return cfg


def _expand(key: str, items: list[Any]) -> list[tuple[str, Any]]:
    """(where, config) per host/VM after ``count`` expansion; duplicate names rejected."""
    out: list[tuple[str, Any]] = []
    for i, obj in enumerate(items):
        base = obj.base_name or obj.name
        if obj.count == 1:
            out.append((_at(key, i, obj.name), replace(obj, base_name=base)))
            continue
        for k in range(obj.count):
            name = f"{obj.name}-{k}"
            out.append((_at(key, i, name), replace(obj, name=name, base_name=base, count=1)))
    seen: set[str] = set()
    for where, obj in out:
        if obj.name in seen:
            raise ConfigError(f"{where}.name", "duplicate name", obj.name)
        seen.add(obj.name)
    return out


def _build(raw: dict[str, Any], resolved: bool) -> SimConfig:
    for key in raw:
        if key not in _TOP_LEVEL:
            raise ConfigError(key, f"unknown section {_known(_TOP_LEVEL)}")
    sections = {name: build(cls, raw.get(name, {}), name) for name, cls in _SECTIONS.items()}

    images = dict(BUILTIN_IMAGES)
    file_images: set[str] = set()
    for i, entry in enumerate(_entries(raw, "images", required=False)):
        img = build(ImageSpec, entry, _at("images", i, entry))
        if img.name in file_images:
            raise ConfigError(_at("images", i, img.name), "duplicate image name", img.name)
        file_images.add(img.name)
        images[img.name] = img

    host_items = [
        build(HostConfig, e, _at("hosts", i, e), with_derived=resolved)
        for i, e in enumerate(_entries(raw, "hosts", required=True))
    ]
    vm_items = [
        build(
            VMConfig,
            e,
            _at("vms", i, e),
            nested={"workload": _build_workload},
            with_derived=resolved,
        )
        for i, e in enumerate(_entries(raw, "vms", required=True))
    ]
    _check_counts("hosts", host_items, MAX_HOSTS)
    _check_counts("vms", vm_items, MAX_VMS)
    hosts, vms = _expand("hosts", host_items), _expand("vms", vm_items)
    _check_limits(sections["simulation"], sections["policy"], hosts, vms)
    _check_vms(hosts, vms, images, sections["policy"], sections["simulation"].page_size)

    migrations = tuple(
        build(ScheduledMigration, e, f"migrations[{i}]")
        for i, e in enumerate(_entries(raw, "migrations", required=False))
    )
    _check_migrations(migrations, hosts, vms, sections["simulation"].duration_s)
    events = _check_events(raw, resolved, sections["simulation"])
    return SimConfig(
        **sections,
        hosts=tuple(h for _, h in hosts),
        images=tuple(images[n] for n in sorted(images)),
        vms=tuple(v for _, v in vms),
        migrations=migrations,
        sweep=_sweep_spec(raw),
        events=events,
    )


# --- size limits (config_schema.MAX_*) ---------------------------------------------------------


def _check_counts(key: str, items: list[Any], limit: int) -> None:
    """At most ``limit`` hosts / VMs after expansion (checked before expanding)."""
    total = 0
    for i, obj in enumerate(items):
        total += obj.count
        if total > limit:
            raise ConfigError(
                f"{_at(key, i, obj.name)}.count",
                f"too many {key}: {total:,} after count expansion (at most {limit:,})",
                obj.count,
            )


def _pages(mb: float, page_size: int) -> int:
    """Whole pages in ``mb`` (as :meth:`SimConfig.pages`), capped at 2**62 (no overflow)."""
    x = mb * 2**20
    return int(x) // page_size if x < 2**62 else 2**62


def _check_limits(
    sim: SimulationConfig,
    policy: PolicyConfig,
    hosts: list[tuple[str, HostConfig]],
    vms: list[tuple[str, VMConfig]],
) -> None:
    """Sizes and per-tick work within the documented limits, so a run cannot exhaust memory
    or hang; a host's memory and a VM at least one page."""
    ps, cb, tick = sim.page_size, sim.content_bytes, sim.tick_s
    one_page = f"at least one page ({ps / 2**20:.6g} MB at page_size {ps})"
    total = 0
    for where, h in hosts:
        for key, mb, lo in (("memory_mb", h.memory_mb, 1), ("swap_mb", h.swap_mb, 0)):
            n = _pages(mb, ps)
            if n < lo:
                raise ConfigError(f"{where}.{key}", f"must be {one_page}", mb)
            if n > MAX_PAGES:
                raise ConfigError(f"{where}.{key}", f"too large: {n:,} pages > {MAX_PAGES:,}", mb)
            total += n
    if total * cb > MAX_STATE_BYTES:
        raise ConfigError(
            "simulation.content_bytes",
            f"page contents of all hosts would take {total * cb / 2**30:,.1f} GiB "
            f"((memory + swap) {total:,} pages x {cb} bytes; at most "
            f"{MAX_STATE_BYTES // 2**30} GiB): lower content_bytes or host sizes",
            cb,
        )
    for key in ("share_scan_vm_pages_per_s", "share_scan_host_pages_per_s"):
        _check_rate(f"policy.{key}", getattr(policy, key), tick, MAX_PAGES_PER_TICK, "pages")
    ksm_rate = policy.ksm_pages_to_scan * 1000.0 / policy.ksm_sleep_millisecs
    if not ksm_rate * tick <= MAX_PAGES_PER_TICK:
        raise ConfigError(
            "policy.ksm_pages_to_scan",
            f"too fast: ksm_pages_to_scan per ksm_sleep_millisecs gives {ksm_rate * tick:.3g} "
            f"pages per tick > {MAX_PAGES_PER_TICK:,}",
            policy.ksm_pages_to_scan,
        )
    for key in ("balloon_rate_pages_per_s", "swap_rate_pages_per_s"):
        _check_rate(f"policy.{key}", getattr(policy, key), tick, MAX_PAGES_PER_TICK, "pages")
    if (n := _pages(policy.vm_overhead_mb, ps)) > MAX_PAGES:
        raise ConfigError(
            "policy.vm_overhead_mb",
            f"too large: {n:,} pages > {MAX_PAGES:,}",
            policy.vm_overhead_mb,
        )
    for where, vm in vms:
        n = _pages(vm.memory_mb, ps)
        if n < 1:
            raise ConfigError(f"{where}.memory_mb", f"must be {one_page}", vm.memory_mb)
        if n > MAX_PAGES:
            raise ConfigError(
                f"{where}.memory_mb", f"too large: {n:,} pages > {MAX_PAGES:,}", vm.memory_mb
            )
        _check_workload_limits(f"{where}.workload", vm.workload, n, ps, tick)


def _check_rate(where: str, rate: float, tick_s: float, limit: int, what: str) -> None:
    if rate * tick_s > limit:
        raise ConfigError(
            where,
            f"{rate:g}/s x tick_s {tick_s:g} = {rate * tick_s:.3g} {what} per tick "
            f"(at most {limit:,})",
            rate,
        )


def _check_workload_limits(
    where: str, w: WorkloadConfig, n_pages: int, page_size: int, tick_s: float
) -> None:
    """Sizes (``*_mb``) and per-tick accesses of the built-in workload kinds."""
    p = w.params
    for key, mb in _workload_sizes(w):
        if (n := _pages(mb, page_size)) > MAX_PAGES:
            raise ConfigError(f"{where}.{key}", f"too large: {n:,} pages > {MAX_PAGES:,}", mb)
    rate = getattr(p, "accesses_per_s", None)
    if w.kind == "steady" and not rate:
        rate = min(n_pages, max(1, _pages(p.wss_mb, page_size)))  # one per page per second
    elif w.kind == "batch" and not rate:
        rate = min(n_pages, _pages(p.program_mb, page_size) + _pages(p.heap_mb, page_size))
    elif w.kind == "phased":
        biggest = max(min(n_pages, _pages(mb, page_size)) for _, mb in p.phases)
        _check_rate(
            f"{where}.touch_rate",
            p.touch_rate * biggest,
            tick_s,
            MAX_ACCESSES_PER_TICK,
            f"accesses (x {biggest:,} working-set pages)",
        )
    if rate:
        key = "accesses_per_s" if getattr(p, "accesses_per_s", None) else "wss_mb"
        if w.kind == "batch" and key == "wss_mb":
            key = "program_mb"
        _check_rate(f"{where}.{key}", float(rate), tick_s, MAX_ACCESSES_PER_TICK, "accesses")
    if w.kind == "fileserver" and _pages(p.files_mb, page_size) > MAX_FILE_PAGES:
        raise ConfigError(
            f"{where}.files_mb",
            f"file set too large: {_pages(p.files_mb, page_size):,} pages > {MAX_FILE_PAGES:,}",
            p.files_mb,
        )


def _workload_sizes(w: WorkloadConfig) -> list[tuple[str, float]]:
    """(key, MB) of a built-in workload's sizes; [] for other kinds."""
    p = w.params
    if w.kind == "steady":
        return [("wss_mb", p.wss_mb)]
    if w.kind == "phased":
        return [(f"phases[{i}][1]", mb) for i, (_, mb) in enumerate(p.phases)]
    if w.kind == "batch":
        return [("program_mb", p.program_mb), ("heap_mb", p.heap_mb)]
    if w.kind == "fileserver":
        return [("files_mb", p.files_mb), ("dirty_mb", p.dirty_mb)]
    return []


_META_BYTES_PER_PAGE = 16  # refcount, owners, flags, swap bookkeeping (estimate)


def page_state_bytes(cfg: SimConfig) -> dict[str, int]:
    """Per host: an estimate of the real bytes its page state takes when full, (memory +
    swap pages) x (``content_bytes`` + 16 bytes of bookkeeping); for a check against the
    memory of the machine that will run it (machine-dependent, so not a config check)."""
    per_page = cfg.simulation.content_bytes + _META_BYTES_PER_PAGE
    return {h.name: (cfg.pages(h.memory_mb) + cfg.pages(h.swap_mb)) * per_page for h in cfg.hosts}


# --- warnings ----------------------------------------------------------------------------------


def workload_working_sets(vm: VMConfig) -> list[tuple[str, float]]:
    """The working sets ``vm``'s workload declares, as (key, MB): steady ``wss_mb``, each
    phased phase, a batch program + heap, a fileserver dirty set; other kinds none."""
    p, kind = vm.workload.params, vm.workload.kind
    if kind == "steady":
        return [("wss_mb", p.wss_mb)]
    if kind == "phased":
        return [(f"phases[{i}] wss_mb", mb) for i, (_, mb) in enumerate(p.phases)]
    if kind == "batch":
        return [("program_mb + heap_mb", p.program_mb + p.heap_mb)]
    if kind == "fileserver":
        return [("dirty_mb", p.dirty_mb)]
    return []


def config_warnings(cfg: SimConfig) -> list[str]:
    """Numbers that run but make little physical sense, one line each (``where: what``).

    Scope: a workload whose working set (steady ``wss_mb``, a phased phase, a batch
    program + heap, a fileserver dirty set) is larger than its VM's memory (it is clamped
    to the VM); a VM whose working set exceeds its ``max_mb`` (it pages all the time).
    One warning per ``[[vms]]`` entry; deterministic (config order).
    """
    out: list[str] = []
    seen: set[str] = set()
    for vm in cfg.vms:
        who = f"vms.{vm.base_name or vm.name}"
        if who in seen:  # one warning per [[vms]] entry, not per expanded VM
            continue
        for key, mb in workload_working_sets(vm):
            if mb > vm.memory_mb:
                seen.add(who)
                out.append(
                    f"{who}.workload.{key}: {mb:g} MB is larger than the VM's memory_mb "
                    f"{vm.memory_mb:g} MB (clamped to the VM's memory)"
                )
                break
            if mb > vm.effective_max_mb:
                seen.add(who)
                out.append(
                    f"{who}.workload.{key}: {mb:g} MB is larger than max_mb "
                    f"{vm.effective_max_mb:g} MB (the VM will page constantly)"
                )
                break
    return out


def host_commitments(cfg: SimConfig, placement: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Per host (config order): ``memory_mb``, ``swap_mb``, ``vms`` (count),
    ``committed_mb`` (sum of configured ``memory_mb`` + ``policy.vm_overhead_mb`` of the
    VMs that ``placement`` (VM name -> host name) puts there: what admission holds
    against memory + swap) and ``overcommit`` (``committed_mb / memory_mb``)."""
    committed = {h.name: 0.0 for h in cfg.hosts}
    count = {h.name: 0 for h in cfg.hosts}
    for vm in cfg.vms:
        host = placement.get(vm.name)
        if host in committed:
            committed[host] += vm.memory_mb + cfg.policy.vm_overhead_mb
            count[host] += 1
    return {
        h.name: {
            "memory_mb": h.memory_mb,
            "swap_mb": h.swap_mb,
            "vms": count[h.name],
            "committed_mb": round(committed[h.name], 6),
            "overcommit": round(committed[h.name] / h.memory_mb, 4),
        }
        for h in cfg.hosts
    }


# --- cross-table checks ------------------------------------------------------------------------


def _check_vms(
    hosts: list[tuple[str, HostConfig]],
    vms: list[tuple[str, VMConfig]],
    images: dict[str, ImageSpec],
    policy: PolicyConfig,
    page_size: int,
) -> None:
    """Pinning, images, "can never fit" and ESX admission control for pinned VMs."""
    by_name = {h.name: h for _, h in hosts}
    ovh = policy.vm_overhead_mb

    def pages(mb: float) -> int:
        return int(mb * 2**20) // page_size

    largest = max(by_name.values(), key=lambda h: h.memory_mb)
    most_swap = max(by_name.values(), key=lambda h: h.swap_mb)
    for where, vm in vms:
        if vm.host is not None and vm.host not in by_name:
            group = [h.name for _, h in hosts if h.base_name == vm.host]
            what = (
                f"host {vm.host!r} has count {len(group)}: pin to one of {_names(group, 3)}"
                if group
                else f"unknown host {_known(list(by_name))}"
            )
            raise ConfigError(f"{where}.host", what, vm.host)
        if vm.image not in images:
            raise ConfigError(f"{where}.image", f"unknown image {_known(sorted(images))}", vm.image)
        # A workload may check itself against its VM's size (e.g. a trace's page numbers).
        check_vm = getattr(vm.workload.params, "check_vm", None)
        for err in check_vm(pages(vm.memory_mb)) if callable(check_vm) else ():
            key, _, what = err.partition(": ")
            raise ConfigError(f"{where}.workload.{key}", what)
        host = by_name[vm.host] if vm.host is not None else largest
        need, have = pages(vm.min_mb) + pages(ovh), pages(host.memory_mb)
        if need > have:
            raise ConfigError(
                f"{where}.min_mb",
                f"can never fit: min_mb + policy.vm_overhead_mb = {need} pages > "
                f"{have} pages of host {host.name}",
                vm.min_mb,
            )
        # The paper's swap reservation: memory_mb - min_mb (at least pinned) in swap.
        host = by_name[vm.host] if vm.host is not None else most_swap
        low = max(vm.min_mb, vm.pinned_mb)
        if vm.memory_mb - low > host.swap_mb + 1e-9:
            raise ConfigError(
                f"{where}.memory_mb",
                f"can never fit: memory_mb - min_mb (at least pinned_mb) = "
                f"{vm.memory_mb - low:g} MB > swap_mb {host.swap_mb:g} MB of host {host.name} "
                "(admission reserves swap for every page beyond the minimum)",
                vm.memory_mb,
            )
    # ESX admission control (hosts.admission, also used by placement and migration; the
    # paper's sec. 6): a host must hold its pinned VMs' minimum (at least pinned) plus
    # overhead in memory and the rest of their configured size (memory_mb) in swap,
    # leave a page beyond their pinned memory and two pages of memory + swap.
    pinned_on: dict[str, list[VMConfig]] = {}
    for _, vm in vms:
        if vm.host is not None:
            pinned_on.setdefault(vm.host, []).append(vm)
    for where, h in hosts:
        pinned = pinned_on.get(h.name)
        if not pinned:
            continue
        total = admission.totals(vm_claim(vm, ovh) for vm in pinned)
        refused = admission.check(total, memory=h.memory_mb, swap=h.swap_mb, page=page_size / 2**20)
        if refused is not None:
            which = f"its {len(pinned)} pinned VMs ({_names([v.name for v in pinned], 5)})"
            raise ConfigError(where, refused.message(which))


def vm_claim(vm: VMConfig, overhead_mb: float) -> admission.Claim:
    """A VM's admission claim in MB (:mod:`hosts.admission`): its configured size
    ``memory_mb`` (not ``max_mb``) counts against memory + swap."""
    return admission.claim(
        min=vm.min_mb, pinned=vm.pinned_mb, size=vm.memory_mb, overhead=overhead_mb
    )


def _check_migrations(
    migrations: tuple[ScheduledMigration, ...],
    hosts: list[tuple[str, HostConfig]],
    vms: list[tuple[str, VMConfig]],
    duration_s: float,
) -> None:
    host_names = {h.name: None for _, h in hosts}  # dicts: fast lookup, ordered listing
    vm_names = {v.name: None for _, v in vms}
    for i, m in enumerate(migrations):
        where = f"migrations[{i}]"
        if m.time_s >= duration_s:
            raise ConfigError(
                f"{where}.time_s", f"must be < simulation.duration_s {duration_s:g}", m.time_s
            )
        if m.vm not in vm_names:
            raise ConfigError(f"{where}.vm", f"unknown VM {_known(list(vm_names))}", m.vm)
        if m.to not in host_names:
            raise ConfigError(f"{where}.to", f"unknown host {_known(list(host_names))}", m.to)


# --- events ------------------------------------------------------------------------------------

#: Policy keys an event may not change, and why.
_EVENT_FIXED = {
    "policy.placement": "placement acts only at start (use [[migrations]] to move VMs)",
    "policy.vm_overhead_mb": "VM overhead is reserved at admission and fixed for the run",
    "policy.share_salting": "a VM's sharing salt is fixed at boot (its shared frames carry it)",
    "policy.free_states": "a host's state model is fixed at boot (its states and counts)",
    "policy.large_pages": "guest memory is backed by large pages from boot (ESX never forms "
    "large pages from 4 KB ones later)",
    # KVM-style host: the scanner's kind and KSM's trees are built at boot (Linux lets
    # max_page_sharing and use_zero_pages change only with no KSM pages); free page
    # reporting is a virtio feature negotiated when the guest's driver starts.
    "policy.sharing_scanner": "the sharing scanner (esx or ksm) is chosen at boot",
    "policy.ksm_max_page_sharing": "KSM's shared pages are capped as they form (fixed at boot)",
    "policy.ksm_use_zero_pages": "KSM's zero pages are merged as they form (fixed at boot)",
    "policy.free_page_reporting": "a virtio-balloon feature negotiated at the guest's boot",
    "policy.free_page_reporting_delay_s": "part of free page reporting, fixed at boot",
    "policy.free_page_reporting_order": "part of free page reporting, fixed at boot",
    "policy.swap_cache_mb": "the host swap cache's slots are laid out at boot",
    "policy.compression": "compressed pages stay in the cache they went to",
    "policy.compression_cache_pct": "the caps hold for the pages already compressed",
    "policy.zswap_max_pool_percent": "the caps hold for the pages already compressed",
    "policy.zswap_accept_threshold_percent": "fixed with the pool's cap",
}
_EVENT_KEYS_HELP = "events change policy.<key> and migration.<key>"


def _event_set(data: Any, where: str) -> tuple[tuple[str, Any], ...]:
    """``set = { "policy.tax_rate" = 0.75 }`` (or nested tables) as sorted (path, value)."""
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a table of path = value, got {describe_value(data)}")
    pairs = sorted(_flatten(data))
    if not pairs:
        raise ConfigError(where, "missing required key (a non-empty table of path = value)")
    return tuple(pairs)


def event_tick(time_s: float, tick_s: float) -> int:
    """The tick boundary an event at ``time_s`` applies at (the first at or after it)."""
    return math.ceil(time_s / tick_s - 1e-9)


def _check_event_key(path: str, where: str) -> None:
    parts = path.split(".")
    head = parts[0]
    if head in ("policy", "migration") and len(parts) == 2:
        _check_key(_SECTIONS[head], parts[1], where)
        if path in _EVENT_FIXED:
            raise ConfigError(where, f"cannot change during a run: {_EVENT_FIXED[path]}")
        return
    if head == "simulation":
        raise ConfigError(
            where, f"cannot change during a run: it shapes the run's inputs ({_EVENT_KEYS_HELP})"
        )
    if head in ("hosts", "vms", "images"):
        raise ConfigError(
            where,
            f"cannot change during a run: hosts, VMs and their workloads are fixed "
            f"({_EVENT_KEYS_HELP})",
        )
    raise ConfigError(where, f"not a policy key ({_EVENT_KEYS_HELP})")


def _check_events(
    raw: dict[str, Any], resolved: bool, sim: SimulationConfig
) -> tuple[ScheduledEvent, ...]:
    """``[[events]]``: times in [0, duration) in increasing order on distinct ticks, keys
    that may change, and every event's values applied on top of the previous ones giving a
    valid config (all the checks of the file); values as the config holds them."""
    items = _entries(raw, "events", required=False)
    if not items:
        return ()
    trial = {k: v for k, v in copy.deepcopy(raw).items() if k not in ("events", "sweep")}
    out: list[ScheduledEvent] = []
    for i, entry in enumerate(items):
        where = f"events[{i}]"
        ev = build(ScheduledEvent, entry, where, nested={"set": _event_set})
        if ev.time_s >= sim.duration_s:
            raise ConfigError(
                f"{where}.time_s",
                f"must be < simulation.duration_s {sim.duration_s:g} (it would never apply)",
                ev.time_s,
            )
        if out and event_tick(ev.time_s, sim.tick_s) <= event_tick(out[-1].time_s, sim.tick_s):
            raise ConfigError(
                f"{where}.time_s",
                f"must fall on a later tick than events[{i - 1}].time_s {out[-1].time_s:g} "
                "(events in time order; changes at one time go in one event)",
                ev.time_s,
            )
        for path, value in ev.set:
            _check_event_key(path, f"{where}.set.{path}")
            _apply_override(trial, path, value, f"{where}.set.{path}", resolved)
        paths = [p for p, _ in ev.set]
        try:
            cfg = _check_policies(_build(trial, resolved))
        except ConfigError as e:
            named = e.where in paths
            err = ConfigError(
                f"{where}.set.{e.where}" if named else f"{where}.set",
                e.what if named else ": ".join(p for p in (e.where, e.what) if p),
            )
            err.got = e.got
            raise err from None
        values = tuple((p, getattr(getattr(cfg, p.split(".")[0]), p.split(".")[1])) for p in paths)
        out.append(replace(ev, set=values))
    return tuple(out)


# --- sweep -------------------------------------------------------------------------------------


def _flatten(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Dotted paths of a table's leaves (``policy.tax_rate = [...]`` nests in TOML)."""
    for key, value in table.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            yield from _flatten(value, path)
        else:
            yield path, value


def _sweep_spec(raw: dict[str, Any]) -> SweepSpec:
    table = raw.get("sweep", {})
    if not isinstance(table, dict):
        raise ConfigError("sweep", "expected a table of path = [values]")
    spec = []
    for path, values in _flatten(table):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep.{path}", "expected a non-empty array of values", values)
        n = len(sweep_paths(path))
        for k, v in enumerate(values):
            if n > 1 and (not isinstance(v, list) or len(v) != n):
                raise ConfigError(
                    f"sweep.{path}[{k}]", f"expected an array of {n} values, one per path", v
                )
        spec.append((path, tuple(values)))
    return tuple(spec)


def _check_sweep(raw: dict[str, Any], spec: SweepSpec) -> None:
    """Each sweep value, applied alone to the (overridden) file, gives a valid config."""
    base = {k: v for k, v in raw.items() if k != "sweep"}
    for path, values in spec:
        for k, value in enumerate(values):
            trial = copy.deepcopy(base)
            try:
                for q, x in zip(sweep_paths(path), _linked(path, value), strict=True):
                    _apply_override(trial, q, x, "", resolved=False)
                _build(trial, resolved=False)
            except ConfigError as e:
                what = ": ".join(p for p in (e.where, e.what) if p)
                raise ConfigError(f"sweep.{path}[{k}]", what, e.got) from None


def _to_raw(d: dict[str, Any]) -> dict[str, Any]:
    """:meth:`SimConfig.to_dict` output as raw TOML-shaped data (sweep back to a table)."""
    raw = copy.deepcopy(d)
    if isinstance(raw.get("sweep"), list):
        raw["sweep"] = {path: list(values) for path, values in raw["sweep"]}
    return raw
