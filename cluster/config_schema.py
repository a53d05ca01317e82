"""The experiment-file schema and the strict builder that turns raw TOML into it.

Scope: the schema of an experiment file (one frozen dataclass per table, each field with
help text and value checks); the one generic builder behind every config table
(``[simulation]``, ``[[vms]]``, ``[[images]]``, each workload's ``Params``, ...) and the
:class:`ConfigError` it raises; markdown tables of a dataclass's keys.

A config field declares itself with :func:`opt` / :func:`req`::

    tax_rate: float = opt(0.75, "idle memory tax rate", in_range(0, 1, hi_open=True))

``metadata["help"]`` is the help text, ``metadata["checks"]`` the per-value checks.  A
dataclass may also define ``validate() -> list[str]`` for rules that span several fields;
each string reads ``"<key>: <what>"`` (the convention of :class:`workloads.images.ImageSpec`).

Type rules: ``int`` is accepted for ``float`` (and converted); ``bool`` is never an ``int``
or ``float``; a ``float`` is never an ``int``; floats must be finite.

Not covered: loading, overrides, count expansion and cross-table checks (admission,
names): :mod:`cluster.config`, which re-exports everything public here.
"""

from __future__ import annotations

import datetime
import json
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from vmmsim.hosts.large_pages import state_names
from vmmsim.workloads import registry
from vmmsim.workloads.images import BUILTIN_IMAGES, ImageSpec

_NO_VALUE = object()


class ConfigError(ValueError):
    """A one-line config error: ``<file>: <where>: <what> (got <value>)``."""

    def __init__(self, where: str, what: str, got: Any = _NO_VALUE, source: str = "") -> None:
        super().__init__(where, what)
        self.where = where
        self.what = what
        self.got = got
        self.source = source

    def __reduce__(self) -> tuple:  # survives Ray's exception transport intact
        got = () if self.got is _NO_VALUE else (self.got,)
        return (_config_error, (self.where, self.what, self.source, *got))

    def __str__(self) -> str:
        msg = ": ".join(p for p in (self.source, self.where, self.what) if p)
        if self.got is not _NO_VALUE:
            msg += f" (got {fmt_value(self.got)})"
        return msg.replace("\n", " ")


def _config_error(where: str, what: str, source: str, *got: Any) -> ConfigError:
    return (
        ConfigError(where, what, *got, source=source)
        if got
        else ConfigError(where, what, source=source)
    )


# --- value checks declared in field metadata -------------------------------------------


@dataclass(frozen=True)
class Check:
    """A per-value rule; ``text`` completes "must be ..." and the schema's constraint."""

    text: str
    ok: Callable[[Any], bool]


def gt(lo: float) -> Check:
    return Check(f"> {lo:g}", lambda v: v > lo)


def ge(lo: float) -> Check:
    return Check(f">= {lo:g}", lambda v: v >= lo)


def le(hi: float) -> Check:
    return Check(f"<= {hi:g}", lambda v: v <= hi)


def in_range(lo: float, hi: float, *, hi_open: bool = False) -> Check:
    if hi_open:
        return Check(f"in [{lo:g}, {hi:g})", lambda v: lo <= v < hi)
    return Check(f"in [{lo:g}, {hi:g}]", lambda v: lo <= v <= hi)


def one_of(*choices: str) -> Check:
    return Check("one of " + ", ".join(json.dumps(c) for c in choices), lambda v: v in choices)


def power_of_two(lo: int, hi: int) -> Check:
    return Check(f"a power of two in [{lo}, {hi}]", lambda v: lo <= v <= hi and v & (v - 1) == 0)


def multiple_of(n: int, lo: int) -> Check:
    return Check(f"a multiple of {n}, >= {lo}", lambda v: v >= lo and v % n == 0)


NAME = Check(
    "a non-empty name without '/' or whitespace",
    lambda v: bool(v) and "/" not in v and not any(c.isspace() for c in v),
)


def opt(default: Any, doc: str, *checks: Check) -> Any:
    """A key with a default value."""
    return field(default=default, metadata={"help": doc, "checks": checks})


def req(doc: str, *checks: Check) -> Any:
    """A required key."""
    return field(metadata={"help": doc, "checks": checks})


def derived(default: Any, doc: str) -> Any:
    """A field computed by the loader, never written in a TOML file (only in ``to_dict``)."""
    return field(default=default, metadata={"help": doc, "derived": True})


# --- value formatting --------------------------------------------------------------------


def fmt_value(v: Any) -> str:
    """A value as it would be written in TOML (one line, truncated)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        text = json.dumps(v)
    elif isinstance(v, int | float):
        text = repr(v)
    else:
        try:
            text = json.dumps(v)
        except (TypeError, ValueError):
            text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def describe_value(v: Any) -> str:
    """``the string "abc"``, ``the float 1.5``, ``a table`` ... (for type errors)."""
    if isinstance(v, bool):
        return f"the boolean {fmt_value(v)}"
    if isinstance(v, int):
        return f"the integer {v}"
    if isinstance(v, float):
        return f"the float {v!r}"
    if isinstance(v, str):
        return f"the string {fmt_value(v)}"
    if isinstance(v, dict):
        return "a table"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, datetime.date | datetime.time):
        return f"the date/time {v.isoformat()}"
    if v is None:
        return "nothing"
    return f"a {type(v).__name__}"


_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}


def _optional_inner(tp: Any) -> Any | None:
    """``X`` for ``X | None``; None otherwise."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return args[0]
    return None


def type_label(tp: Any) -> str:
    inner = _optional_inner(tp)
    if inner is not None:
        return f"{type_label(inner)} (optional)"
    if get_origin(tp) is tuple:  # tuple[X, ...]: an array; tuple[X, Y]: a fixed-length one
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"array of {type_label(args[0])}"
        return "[" + ", ".join(type_label(a) for a in args) + "]"
    return tp.__name__ if tp in _TYPE_NAMES else "table"


# --- the builder ---------------------------------------------------------------------------


def join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against the scalar type ``tp`` (int accepted and converted for float).

    ``tuple[X, ...]`` (any length) and ``tuple[X, Y]`` (fixed length) take a TOML array
    and give a tuple, each element checked as its type (``where[i]`` in errors).
    """
    inner = _optional_inner(tp)
    if inner is not None:
        return None if value is None else coerce(value, inner, where)
    if get_origin(tp) is tuple:
        args = get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(where, f"expected an array, got {describe_value(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            args = (args[0],) * len(value)
        elif len(value) != len(args):
            raise ConfigError(where, f"expected an array of {len(args)} values", list(value))
        pairs = enumerate(zip(value, args, strict=True))
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in pairs)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            value = float(value)
        except OverflowError:
            raise ConfigError(where, "must be finite", value) from None
    if tp not in _TYPE_NAMES:
        raise TypeError(f"unsupported config field type {tp!r} at {where}")
    if type(value) is not tp:  # exact: bool is a subclass of int
        raise ConfigError(where, f"expected {_TYPE_NAMES[tp]}, got {describe_value(value)}")
    if tp is float and not math.isfinite(value):
        raise ConfigError(where, "must be finite", value)
    return value


def config_fields(cls: type, *, with_derived: bool = False) -> list[Field]:
    return [f for f in fields(cls) if f.init and (with_derived or not f.metadata.get("derived"))]


def build(
    cls: type,
    data: Any,
    where: str,
    *,
    nested: dict[str, Callable[[Any, str], Any]] | None = None,
    with_derived: bool = False,
) -> Any:
    """An instance of the dataclass ``cls`` from the raw table ``data``, strictly.

    Unknown keys, wrong types, missing required keys, failed checks and ``validate()``
    errors raise :class:`ConfigError` naming the key path (``where`` + key).  Fields named
    in ``nested`` are built by the given function from their raw value (``{}`` if absent).
    """
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a table, got {describe_value(data)}")
    flds = config_fields(cls, with_derived=with_derived)
    known = {f.name for f in flds}
    for key in data:
        if key not in known:
            raise ConfigError(join(where, key), f"unknown key (known: {', '.join(sorted(known))})")
    hints = get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in flds:
        sub = join(where, f.name)
        if nested and f.name in nested:
            kwargs[f.name] = nested[f.name](data.get(f.name, {}), sub)
            continue
        if f.name not in data:
            if f.default is MISSING and f.default_factory is MISSING:
                raise ConfigError(sub, "missing required key")
            continue
        raw = data[f.name]
        value = coerce(raw, hints[f.name], sub)
        for check in f.metadata.get("checks", ()):
            if value is not None and not check.ok(value):
                raise ConfigError(sub, f"must be {check.text}", raw)
        kwargs[f.name] = value
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    errors = validate() if callable(validate) else []
    if errors:
        key, sep, what = errors[0].partition(": ")
        if sep and key in known:
            raise ConfigError(join(where, key), what)
        raise ConfigError(where, errors[0])
    return obj


# --- the schema ------------------------------------------------------------------------------

#: vSphere's memory share presets, shares per configured MB.
SHARES_PER_MB = {"low": 5.0, "normal": 10.0, "high": 20.0}

PLACEMENTS = ("most_free", "image_affinity", "round_robin")
"""Built-in placement policies (more can be registered: :mod:`vmmsim.policies`)."""

_PLUGIN = 'a registered name or "module:attr" / "file.py:attr" (see docs/policies.md)'

# Size limits, checked when a config is loaded (before anything is allocated), so that a
# config either runs or is refused with a one-line error; generous for any experiment
# that fits one machine.  Documented in the help text below (``vmmsim schema``).
MAX_HOSTS = 1024
"""Hosts after ``count`` expansion."""
MAX_VMS = 16384
"""VMs after ``count`` expansion."""
MAX_TICKS = 10_000_000
"""``duration_s / tick_s``."""
MAX_PAGES = 2**31 - 1
"""Pages of one host's memory, one host's swap, one VM (page numbers are int32)."""
MAX_STATE_BYTES = 2**36
"""Real page-content bytes of all hosts: (memory + swap pages) x ``content_bytes`` (64 GiB)."""
MAX_PAGES_PER_TICK = 2**31 - 1
"""Pages a per-second policy rate (scan, balloon, swap) may move in one tick."""
MAX_ACCESSES_PER_TICK = 2**26
"""Accesses one VM's workload may make in one tick (its arrays are ~16 bytes each)."""
MAX_FILE_PAGES = 2**26
"""Pages of a ``fileserver`` file set (one float64 popularity entry each)."""


@dataclass(frozen=True)
class SimulationConfig:
    seed: int = opt(0, "root seed of every random generator in the run", ge(0))
    duration_s: float = opt(
        60.0, f"simulated time to run, seconds (at most {MAX_TICKS:,} ticks)", gt(0)
    )
    tick_s: float = opt(
        1.0,
        "simulated seconds per tick; must divide duration_s; per-second rates times tick_s "
        f"are bounded: at most {MAX_PAGES_PER_TICK:,} pages (scan, balloon, swap) and "
        f"{MAX_ACCESSES_PER_TICK:,} workload accesses per VM per tick",
        gt(0),
    )
    page_size: int = opt(4096, "bytes per page (all page accounting)", power_of_two(512, 65536))
    content_bytes: int = opt(
        4096,
        "real bytes stored and hashed per page (<= page_size); all hosts' (memory + swap) "
        f"pages x content_bytes must be <= {MAX_STATE_BYTES // 2**30} GiB",
        multiple_of(8, 8),
    )

    @property
    def n_ticks(self) -> int:
        return round(self.duration_s / self.tick_s)

    def validate(self) -> list[str]:
        errs = []
        ratio = self.duration_s / self.tick_s
        if not ratio <= MAX_TICKS + 0.5:  # also inf (a tiny tick_s)
            return [
                f"tick_s: duration_s / tick_s must be <= {MAX_TICKS:,} ticks "
                f"(got {self.duration_s:g} / {self.tick_s:g} = {ratio:.3g})"
            ]
        if abs(ratio - round(ratio)) > 1e-9 * ratio:
            errs.append(f"tick_s: must divide duration_s {self.duration_s:g} (got {self.tick_s:g})")
        if self.content_bytes > (ps := self.page_size):
            errs.append(f"content_bytes: must be <= page_size {ps} (got {self.content_bytes})")
        return errs


_FREE = in_range(0, 1, hi_open=True)


@dataclass(frozen=True)
class PolicyConfig:
    share_scan_vm_pages_per_s: float = opt(
        50.0,
        "pages of each VM scanned per second for content-based sharing (default from later "
        "ESX documentation, Mem.ShareScanVM; the 2002 paper gives no rate)",
        ge(0),
    )
    share_scan_host_pages_per_s: float = opt(
        200.0,
        "cap on pages scanned per second per host for sharing (default from later ESX "
        "documentation, Mem.ShareScanTotal; not in the 2002 paper)",
        ge(0),
    )
    share_salting: int = opt(
        1,
        "which VMs' pages may share, as ESX's Mem.ShareForceSalting (ESX 5.x/6.x, after "
        "VMware KB 2080735 / 2097593): 0 = every VM with every VM (the 2002 paper); 1 = "
        "VMs of one `sharing_group` (each group a salt; all VMs share one by default); 2 = "
        "each VM only with itself (its own salt: ESX's default since 2014)",
        in_range(0, 2),
    )
    # --- swap tiers: host swap cache and memory compression (issue 18, items 5 and 1) ---
    swap_cache_mb: float = opt(
        0.0,
        "host swap cache, MB per host (0: none): swap space on host-local fast storage, "
        "filled before the regular swap and added to it (vSphere 5+ 'swap to host cache', "
        "vSphere Resource Management, 'Swap to Host Cache')",
        ge(0),
    )
    swap_cache_latency_us: float = opt(
        100.0,
        "cost of one swap-in from the host swap cache, us (a SATA/SAS SSD's 4 KiB random "
        "read, ~50-100 us: e.g. Intel SSD DC S3700 spec, 50 us typical read latency, plus "
        "the I/O path)",
        ge(0),
    )
    compression: str = opt(
        "off",
        "memory compression before VMM swapping: off; esx = a per-VM compression cache "
        "(ESX 4.1+: pages compressing to <= 2 KB kept in memory, vSphere Resource "
        "Management, 'Memory Compression'); zswap = one host-wide pool (KVM hosts: Linux "
        "Documentation/admin-guide/mm/zswap.rst)",
        one_of("off", "esx", "zswap"),
    )
    compression_cache_pct: float = opt(
        10.0,
        "esx compression: each VM's cache at most this % of its configured memory "
        "(Mem.MemZipMaxPct, default 10: vSphere Resource Management, 'Set the Maximum "
        "Size of the Compression Cache')",
        in_range(0, 100),
    )
    zswap_max_pool_percent: float = opt(
        20.0,
        "zswap compression: the pool at most this % of host memory (Linux zswap "
        "max_pool_percent, default 20)",
        in_range(0, 100),
    )
    zswap_accept_threshold_percent: float = opt(
        90.0,
        "zswap compression: a full pool accepts pages again once below this % of its cap "
        "(Linux zswap accept_threshold_percent, default 90)",
        in_range(0, 100),
    )
    decompress_us: float = opt(
        10.0,
        "cost of a fault on a compressed page (decompression), us: LZ4 decompresses ~5 "
        "GB/s (lz4 README benchmarks), under 1 us per 4 KiB, plus the fault path; ESX "
        "documents only 'much smaller than the swap-in from disk latency'",
        ge(0),
    )
    tax_rate: float = opt(
        0.75,
        "idle memory tax rate tau (0: pure shares; idle pages cost 1/(1-tau))",
        in_range(0, 1, hi_open=True),
    )
    sample_period_s: float = opt(30.0, "working-set sampling period, seconds", gt(0))
    sample_pages: int = opt(100, "pages sampled per VM per sampling period", gt(0))
    realloc_period_s: float = opt(15.0, "seconds between allocation-target updates", gt(0))
    balloon_max_fraction: float = opt(
        0.65,
        "largest fraction of a VM's memory its balloon may hold (default from later ESX "
        "documentation, Mem.CtlMaxPercent; the 2002 paper gives no cap)",
        in_range(0, 1),
    )
    balloon_rate_pages_per_s: float = opt(16384.0, "balloon inflate rate per VM", ge(0))
    swap_rate_pages_per_s: float = opt(8192.0, "VMM swap-out rate per host", ge(0))
    free_high: float = opt(0.06, "free-memory fraction at or above which a host is 'high'", _FREE)
    free_soft: float = opt(0.04, "free fraction below which reclamation starts ('soft')", _FREE)
    free_hard: float = opt(0.02, "free fraction below which the VMM swaps ('hard')", _FREE)
    free_low: float = opt(0.01, "free fraction below which VMs are blocked ('low')", _FREE)
    state_up_margin: float = opt(
        0.01,
        "hysteresis: a free-memory state is left upward (one level per tick) only once the "
        "free fraction exceeds the next higher threshold by this much (the paper says "
        "'significantly' and gives no value; 0.01 is our choice)",
        _FREE,
    )
    # --- vSphere 6's five free-memory states (hosts/min_free.py) ---
    free_states: str = opt(
        "esx2002",
        "free-memory state model: esx2002 = the paper's four states at free_high/soft/hard/"
        "low; vsphere6 = vSphere 6's five (high 400 %, clear 100 %, soft 64 %, hard 32 %, "
        "low 16 % of a sliding minFree: 6 % of the first 4 GB of host memory, 4 % of 4-12 "
        "GB, 2 % of 12-28 GB, 1 % above; VMware vSphere 6.0 Resource Management; Epping, "
        "'What happens at which vSphere memory state?', 2016), which uses no free_* or "
        "state_up_margin key (they must keep their defaults)",
        one_of("esx2002", "vsphere6"),
    )
    share_scan_clear_factor: float = opt(
        1.0,
        "vsphere6 only: the sharing scan rates are multiplied by this in the 'clear' state "
        "(where vSphere 6 'actively calls TPS', Epping 2016; VMware gives no rate, so 1 = "
        "the usual scan is the default)",
        ge(1),
    )
    vm_overhead_mb: float = opt(
        32.0,
        "VMM overhead memory reserved per VM (frame buffer, pmap, shadow page tables), MB; "
        "32 = the paper's typical VM (Waldspurger 2002, sec. 6)",
        ge(0),
    )
    disk_latency_ms: float = opt(5.0, "cost of one swap-in from disk, ms", ge(0))
    minor_fault_us: float = opt(2.0, "cost of a minor fault (copy-on-write, remap), us", ge(0))
    placement: str = opt(
        "most_free",
        f"placement policy, the initial host of VMs without `host`: "
        f"{', '.join(PLACEMENTS)}, or {_PLUGIN}",
    )
    allocation: str = opt(
        "share_idle_tax",
        f"allocation policy, each host's VM targets: share_idle_tax, or {_PLUGIN}",
    )
    reclamation: str = opt(
        "esx",
        f"reclamation policy, which VMs balloon and swap: esx, or {_PLUGIN}",
    )
    working_set: str = opt(
        "esx_sampler",
        f"working-set estimator, active fraction from sampling: esx_sampler, or {_PLUGIN}",
    )
    # Large pages (hosts/large_pages.py).
    large_pages: bool = opt(
        False,
        "back guest memory with 2 MB machine pages (ESX 3.5+ with hardware MMU "
        "virtualisation; VMware 'Large Page Performance', 2008): a whole 2 MB page at the "
        "first touch of any page in it; no sharing, ballooning or VMM swapping inside an "
        "intact one -- ballooning or swapping a page breaks its large page first, and the "
        "sharing scan breaks those it visits from `large_page_break_state` on (VMware KB "
        "1021095); broken ones stay broken",
    )
    large_page_break_state: str = opt(
        "soft",
        "free-memory state from which the sharing scan breaks the large pages it visits, "
        "and new memory gets 4 KB pages: ESX 5.x breaks them on the way to 'soft' (the "
        "default); vSphere 6 already in its 'clear' state (VMware KB 1021095, 'Understanding "
        "Memory Resource Management in VMware vSphere 5.0', 2011)",
        one_of(*state_names()),
    )
    # --- KVM-style host (issue 18 item 6): KSM and virtio-balloon free page reporting.
    sharing_scanner: str = opt(
        "esx",
        "the page-sharing scanner: esx = the paper's random scan at share_scan_* rates "
        "(sharing tried before every VMM swap-out); ksm = Linux KSM (Documentation/admin-"
        "guide/mm/ksm.rst): a linear walk of all VMs' pages, stable and unstable trees, "
        "volatile pages skipped, no sharing on swap-out",
        one_of("esx", "ksm"),
    )
    ksm_pages_to_scan: int = opt(
        100, "KSM: pages ksmd scans per wake-up (ksm.rst pages_to_scan, default 100)", ge(0)
    )
    ksm_sleep_millisecs: float = opt(
        20.0, "KSM: ms ksmd sleeps between scans (ksm.rst sleep_millisecs, default 20)", gt(0)
    )
    ksm_max_page_sharing: int = opt(
        256,
        "KSM: most sharers of one shared page; further matches start a new copy (ksm.rst "
        "max_page_sharing, default 256, at least 2)",
        ge(2),
    )
    ksm_use_zero_pages: bool = opt(
        False,
        "KSM: merge pages of zeros with the zero page, uncapped and outside pages_shared/"
        "pages_sharing (ksm.rst use_zero_pages, default 0)",
    )
    free_page_reporting: bool = opt(
        False,
        "virtio-balloon free page reporting (Linux VIRTIO_BALLOON_F_REPORTING, mm/"
        "page_reporting.c): guests report pages that stay free, the host unbacks them",
    )
    free_page_reporting_delay_s: float = opt(
        2.0,
        "free page reporting: seconds a page must stay free before it is reported (Linux "
        "PAGE_REPORTING_DELAY, 2 s); rounded up to whole ticks",
        ge(0),
    )
    free_page_reporting_order: int = opt(
        9,
        "free page reporting: only whole aligned free blocks of 2**order 4 KB pages are "
        "reported (Linux page_reporting_order = pageblock_order, 9 = 2 MB); 0 = any page",
        in_range(0, 18),
    )

    def validate(self) -> list[str]:
        if self.free_states == "vsphere6":
            fixed = ("free_high", "free_soft", "free_hard", "free_low", "state_up_margin")
            for key in fixed:
                f = PolicyConfig.__dataclass_fields__[key]
                if getattr(self, key) != f.default:
                    return [
                        f"{key}: not used with free_states = 'vsphere6' (its thresholds come "
                        "from minFree); leave it unset, or use free_states = 'esx2002'"
                    ]
        elif self.share_scan_clear_factor != 1.0:
            return [
                "share_scan_clear_factor: only used with free_states = 'vsphere6' (the "
                "paper's model has no 'clear' state)"
            ]
        if self.large_pages and self.sharing_scanner == "ksm":
            return [
                "large_pages: not modelled with sharing_scanner = 'ksm' (KSM on huge pages "
                "needs khugepaged's splitting, which vmmsim does not model); use the esx scanner"
            ]
        levels = (self.free_high, self.free_soft, self.free_hard, self.free_low)
        if not levels[0] > levels[1] > levels[2] > levels[3] >= 0:
            return [
                "free_high: must satisfy free_high > free_soft > free_hard > free_low >= 0 "
                f"(got {', '.join(f'{x:g}' for x in levels)})"
            ]
        if self.free_high + self.state_up_margin >= 1:
            return [
                "state_up_margin: free_high + state_up_margin must be < 1, or a host could "
                f"never leave 'soft' (got {self.free_high:g} + {self.state_up_margin:g})"
            ]
        return []


@dataclass(frozen=True)
class MigrationConfig:
    enabled: bool = opt(True, "whether the coordinator may live-migrate VMs on its own")
    bandwidth_mb_s: float = opt(1000.0, "link bandwidth between hosts, MB/s", gt(0))
    max_downtime_ms: float = opt(300.0, "stop-and-copy once the rest fits in this time", gt(0))
    max_rounds: int = opt(30, "pre-copy rounds before stop-and-copy is forced", ge(1))
    pressure_s: float = opt(30.0, "seconds of memory pressure before migrating off a host", ge(0))
    min_round_pages: int = opt(50, "stop pre-copy when a round sends fewer pages", ge(0))
    policy: str = opt(
        "pressure",
        f"migration policy, which VM moves where under pressure: pressure, or {_PLUGIN}",
    )


@dataclass(frozen=True)
class HostConfig:
    name: str = req("host name (with count > 1: name-0, name-1, ...)", NAME)
    memory_mb: float = req(
        f"machine memory, MB (at least one page, at most {MAX_PAGES:,} pages)", gt(0)
    )
    swap_mb: float = opt(0.0, f"VMM swap space, MB (at most {MAX_PAGES:,} pages)", ge(0))
    count: int = opt(
        1,
        f"number of identical hosts (expanded to name-0, name-1, ...); at most {MAX_HOSTS} "
        "hosts in all",
        ge(1),
        le(MAX_HOSTS),
    )
    base_name: str = derived("", "name as written in the file, before count expansion")


@dataclass(frozen=True)
class WorkloadConfig:
    """``[vms.workload]``: ``kind`` picks a class in :mod:`workloads.registry`."""

    kind: str
    params: Any  # that kind's frozen ``Params`` dataclass


def _default_workload() -> WorkloadConfig:
    return WorkloadConfig("idle", registry.get("idle").Params())


@dataclass(frozen=True)
class VMConfig:
    name: str = req("VM name (with count > 1: name-0, name-1, ...)", NAME)
    memory_mb: float = req(
        "configured ('physical') memory of the guest, MB (at least one page, at most "
        f"{MAX_PAGES:,} pages)",
        gt(0),
    )
    shares: float = opt(1000.0, "memory shares S (proportional-share allocation)", gt(0))
    shares_level: str | None = opt(
        None,
        "vSphere's share presets instead of `shares`: low / normal / high = 5 / 10 / 20 "
        "shares per configured MB (vSphere Resource Management guide)",
        one_of(*SHARES_PER_MB),
    )
    min_mb: float = opt(
        0.0,
        "guaranteed minimum, MB: admission reserves min_mb + overhead in host memory and "
        "memory_mb - min_mb in host swap",
        ge(0),
    )
    max_mb: float | None = opt(None, "maximum allocation, MB (none: memory_mb)", gt(0))
    host: str | None = opt(None, "pin to this host (none: placement policy decides)")
    image: str = opt("linux", "OS image ([[images]] or built-in)")
    balloon: bool = opt(True, "whether the guest has a balloon driver")
    sharing: bool = opt(True, "whether the VM's pages take part in content sharing")
    sharing_group: str = opt("default", "pages are shared only among VMs of one group")
    pinned_mb: float = opt(0.0, "guest memory that can never be reclaimed, MB", ge(0))
    count: int = opt(
        1,
        f"number of identical VMs (expanded to name-0, name-1, ...); at most {MAX_VMS} VMs in all",
        ge(1),
        le(MAX_VMS),
    )
    workload: WorkloadConfig = field(
        default_factory=_default_workload,
        metadata={"help": "`[vms.workload]`: `kind` plus that kind's keys (below)", "checks": ()},
    )
    base_name: str = derived("", "name as written in the file, before count expansion")

    @property
    def effective_max_mb(self) -> float:
        return self.memory_mb if self.max_mb is None else self.max_mb

    @property
    def effective_shares(self) -> float:
        """``shares``, or the ``shares_level`` preset times the configured MB."""
        if self.shares_level is None:
            return self.shares
        return SHARES_PER_MB[self.shares_level] * self.memory_mb

    def validate(self) -> list[str]:
        if self.shares_level is not None and self.shares != 1000.0:
            return [f"shares_level: set shares or shares_level, not both (got {self.shares:g})"]
        if self.max_mb is not None and self.max_mb > self.memory_mb:
            return [f"max_mb: must be <= memory_mb {self.memory_mb:g} (got {self.max_mb:g})"]
        if self.min_mb > self.effective_max_mb:
            return [f"min_mb: must be <= max_mb {self.effective_max_mb:g} (got {self.min_mb:g})"]
        if self.pinned_mb > self.effective_max_mb:
            return [
                f"pinned_mb: must be <= max_mb {self.effective_max_mb:g} (got {self.pinned_mb:g})"
            ]
        return []


@dataclass(frozen=True)
class ScheduledMigration:
    time_s: float = req("simulated time of the migration, seconds (< duration_s)", ge(0))
    vm: str = req("VM to move (expanded name)")
    to: str = req("destination host (expanded name)")


@dataclass(frozen=True)
class ScheduledEvent:
    """``[[events]]``: policy keys that change at a simulated time (``cluster.config``
    checks the keys and values; the coordinator applies them)."""

    time_s: float = req(
        "simulated time of the change, seconds (< duration_s; applied at the first tick "
        "boundary at or after it; events in strictly increasing time order, one per tick)",
        ge(0),
    )
    set: tuple[tuple[str, Any], ...] = field(
        metadata={
            "help": 'the changes, override path = value: `{ "policy.tax_rate" = 0.75 }`; '
            "any `policy.<key>` but `placement` and `vm_overhead_mb`, any `migration.<key>`",
            "checks": (),
            "type": "table",
        },
    )


# --- documentation -------------------------------------------------------------------------


def _fmt_default(f: Field) -> str:
    if f.default is MISSING:
        return "required" if f.default_factory is MISSING else "see below"
    if f.default is None:
        return "none"
    return f"`{fmt_value(f.default)}`"


def markdown_table(cls: type) -> Iterator[str]:
    """Rows of a markdown table of ``cls``'s TOML keys (type, default, constraints, help)."""
    hints = get_type_hints(cls)
    yield "| key | type | default | constraints | description |"
    yield "|---|---|---|---|---|"
    for f in config_fields(cls):
        checks = "; ".join(c.text for c in f.metadata.get("checks", ()))
        label = f.metadata.get("type") or type_label(hints[f.name])
        cells = (label, _fmt_default(f), checks, f.metadata.get("help", ""))
        yield f"| `{f.name}` | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def describe_schema() -> str:
    """A markdown reference of every TOML section and key, from the dataclass metadata."""
    builtin = ", ".join(f"`{n}`" for n in sorted(BUILTIN_IMAGES))
    sections: list[tuple[str, type, str]] = [
        ("[simulation]", SimulationConfig, ""),
        ("[policy]", PolicyConfig, ""),
        ("[migration]", MigrationConfig, ""),
        (
            "[[hosts]]",
            HostConfig,
            "At least one. `count = n` makes hosts `name-0` .. `name-<n-1>`.",
        ),
        ("[[vms]]", VMConfig, "At least one. `count = n` makes VMs `name-0` .. `name-<n-1>`."),
    ]
    for kind, cls in sorted(registry.WORKLOADS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        sections.append((f'[vms.workload] kind = "{kind}"', cls.Params, doc[0] if doc else ""))
    sections += [
        ("[[images]]", ImageSpec, f"Built in: {builtin}; an entry of the same name replaces one."),
        ("[[migrations]]", ScheduledMigration, "Live migrations at fixed simulated times."),
        (
            "[[events]]",
            ScheduledEvent,
            "Policy changes at fixed simulated times (recorded as decisions: replay and "
            "resume reproduce them).",
        ),
    ]
    out = ["## Configuration reference", ""]
    for title, cls, note in sections:
        out += [f"### `{title}`", "", *([note, ""] if note else []), *markdown_table(cls), ""]
    out += [
        "### `[sweep]`",
        "",
        'Each key is an override path, as for `--set` (e.g. `"policy.tax_rate" = [0.0, 0.75]`); '
        "each value a non-empty array of values to try.  Override paths: "
        "`<section>.<key>` for simulation, policy and migration; `hosts.<name>.<key>`, "
        "`vms.<name>.<key>`, `vms.<name>.workload.<key>`, `vms.*.<key>`.  "
        "Several keys give every combination (one run each); paths joined by commas in one "
        'key change together: `"vms.a.memory_mb,hosts.h.memory_mb" = [[128, 136], [256, 272]]`.',
        "",
        "### Limits",
        "",
        "Checked when a config is loaded, before anything is allocated (a config beyond them "
        f"is refused with one line): at most {MAX_HOSTS} hosts and {MAX_VMS} VMs after `count` "
        f"expansion; at most {MAX_TICKS:,} ticks; every host's memory and every VM at least one "
        f"page, and host memory, host swap and VM memory at most {MAX_PAGES:,} pages each; "
        f"(memory + swap pages) x `content_bytes` over all hosts at most "
        f"{MAX_STATE_BYTES // 2**30} GiB; per tick, at most {MAX_PAGES_PER_TICK:,} pages for a "
        f"policy rate (`*_pages_per_s` x `tick_s`) and {MAX_ACCESSES_PER_TICK:,} accesses for "
        f"one VM's workload; a workload size (`wss_mb`, `files_mb`, a phase, ...) and "
        f"`vm_overhead_mb` at most {MAX_PAGES:,} pages, a `fileserver` file set at most "
        f"{MAX_FILE_PAGES:,} pages.  `vmmsim run` also refuses a run whose page state "
        "((memory + swap pages) x (`content_bytes` + 16)) would not fit this machine's memory.  "
        "Numbers that run but make little physical sense (a working set larger than its VM, "
        "which is clamped) are warnings: `vmmsim validate` lists them, `vmmsim run` prints "
        "them first.",
        "",
    ]
    return "\n".join(out)
