"""Experiment config: loading, defaults, expansion, errors, overrides, round trip, hash."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import (
    ConfigError,
    PolicyConfig,
    SimConfig,
    config_from_dict,
    describe_schema,
    load_config,
    parse_config,
    sweep_points,
    with_overrides,
)
from vmmsim.workloads import registry
from vmmsim.workloads.images import BUILTIN_IMAGES, ImageSpec

MINIMAL = """
[[hosts]]
name = "h"
memory_mb = 1024
swap_mb = 1024

[[vms]]
name = "v"
memory_mb = 256
"""

FULL = """
[simulation]
seed = 7
duration_s = 10
tick_s = 0.5

[policy]
tax_rate = 0.5
vm_overhead_mb = 8

[[hosts]]
name = "big"
memory_mb = 4096
swap_mb = 1024

[[hosts]]
name = "rack"
memory_mb = 2048
count = 3

[[images]]
name = "custom"
shared_fraction = 0.2

[[vms]]
name = "db"
memory_mb = 1024
min_mb = 512
host = "big"
image = "custom"
[vms.workload]
kind = "steady"
wss_mb = 64

[[vms]]
name = "web"
memory_mb = 512
count = 4
shares = 2000

[[migrations]]
time_s = 5
vm = "web-1"
to = "rack-2"

[sweep]
"policy.tax_rate" = [0.0, 0.75]
vms.web.workload.accesses_per_s = [10, 20.5]
"""


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path}: ")
    return msg


def test_minimal_config_has_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert cfg.simulation.n_ticks == 60
    assert cfg.policy == PolicyConfig()
    assert cfg.migration.enabled is True
    assert cfg.host_names() == ("h",)
    vm = cfg.vm("v")
    assert (vm.shares, vm.min_mb, vm.max_mb, vm.effective_max_mb) == (1000.0, 0.0, None, 256.0)
    assert (vm.image, vm.host, vm.base_name, vm.count) == ("linux", None, "v", 1)
    assert vm.workload.kind == "idle"
    assert vm.workload.params == registry.get("idle").Params()
    assert [i.name for i in cfg.images] == sorted(BUILTIN_IMAGES)
    assert cfg.image("linux") == BUILTIN_IMAGES["linux"]
    assert cfg.pages(1) == 256
    assert cfg.migrations == () and cfg.sweep == ()
    assert cfg.source == str(tmp_path / "exp.toml")


def test_full_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL))
    assert cfg.host_names() == ("big", "rack-0", "rack-1", "rack-2")
    assert [v.name for v in cfg.vms] == ["db", "web-0", "web-1", "web-2", "web-3"]
    assert {v.base_name for v in cfg.vms[1:]} == {"web"}
    assert all(v.count == 1 and v.shares == 2000.0 for v in cfg.vms[1:])
    assert cfg.host("rack-1").base_name == "rack"
    assert cfg.simulation.n_ticks == 20
    db = cfg.vm("db")
    assert db.workload.kind == "steady" and db.workload.params.wss_mb == 64.0
    assert cfg.image("custom") == ImageSpec("custom", shared_fraction=0.2)
    assert cfg.migrations[0].vm == "web-1"
    assert cfg.sweep == (
        ("policy.tax_rate", (0.0, 0.75)),
        ("vms.web.workload.accesses_per_s", (10, 20.5)),
    )
    assert sweep_points(cfg)[1] == ("policy.tax_rate=0.0", "vms.web.workload.accesses_per_s=20.5")
    assert len(sweep_points(cfg)) == 4


def test_int_accepted_for_float(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert type(cfg.hosts[0].memory_mb) is float
    assert type(cfg.simulation.duration_s) is float


def test_builtin_image_can_be_replaced(tmp_path: Path) -> None:
    text = MINIMAL + '[[images]]\nname = "linux"\nshared_fraction = 0.9\nzero_fraction = 0.0\n'
    cfg = load_config(write(tmp_path, text))
    assert cfg.image("linux").shared_fraction == 0.9
    assert len(cfg.images) == len(BUILTIN_IMAGES)


VM = '[[vms]]\nname = "w"\nmemory_mb = 256\n'

ERRORS = [
    (
        "[policy]\ntax_rat = 0.1\n",
        ["policy.tax_rat: unknown key (known: allocation, balloon_max_fraction,"],
    ),
    ("[simulatoin]\nseed = 1\n", ["simulatoin: unknown section (known: events, hosts,"]),
    ('[policy]\ntax_rate = "abc"\n', ['policy.tax_rate: expected a float, got the string "abc"']),
    ("[simulation]\nseed = true\n", ["simulation.seed: expected an integer, got the boolean true"]),
    ("[policy]\ntax_rate = false\n", ["policy.tax_rate: expected a float, got the boolean false"]),
    ("[policy]\nsample_pages = 1.5\n", ["policy.sample_pages: expected an integer, got the float"]),
    ("[simulation]\nseed = -1\n", ["simulation.seed: must be >= 0 (got -1)"]),
    ("[policy]\ntax_rate = 1\n", ["policy.tax_rate: must be in [0, 1) (got 1)"]),
    ("[policy]\ntax_rate = nan\n", ["policy.tax_rate: must be finite (got nan)"]),
    (
        '[policy]\nplacement = "best"\n',
        ["policy.placement: no placement policy named 'best' (known: image_affinity, most_free"],
    ),
    ("[policy]\nfree_hard = 0.05\n", ["policy.free_high: must satisfy free_high > free_soft"]),
    (
        "[policy]\nfree_high = 0.9\nstate_up_margin = 0.1\n",
        ["policy.state_up_margin: free_high + state_up_margin must be < 1"],
    ),
    ("[simulation]\ntick_s = 7\n", ["simulation.tick_s: must divide duration_s 60 (got 7)"]),
    ("[simulation]\npage_size = 3000\n", ["simulation.page_size: must be a power of two"]),
    ("[simulation]\ncontent_bytes = 8192\n", ["simulation.content_bytes: must be <= page_size"]),
    ("[simulation]\ncontent_bytes = 12\n", ["simulation.content_bytes: must be a multiple of 8"]),
    ("[policy]\n[simulation]\nsweep = 1\n", ["simulation.sweep: unknown key"]),
    ('[[hosts]]\nname = "h2"\n', ["hosts[1] (h2).memory_mb: missing required key"]),
    ('[[hosts]]\nname = "a b"\nmemory_mb = 1\n', ["hosts[1] (a b).name: must be a non-empty"]),
    ('[[hosts]]\nname = "x/y"\nmemory_mb = 1\n', ['(got "x/y")']),
    ('[[hosts]]\nname = "h"\nmemory_mb = 1\n', ['hosts[1] (h).name: duplicate name (got "h")']),
    (
        '[[hosts]]\nname = "r"\nmemory_mb = 1\ncount = 2\n[[hosts]]\nname = "r-1"\nmemory_mb = 1\n',
        ['hosts[2] (r-1).name: duplicate name (got "r-1")'],
    ),
    ('[[vms]]\nname = "w"\nmemory_mb = -5\n', ["vms[1] (w).memory_mb: must be > 0 (got -5)"]),
    (VM + "max_mb = 512\n", ["vms[1] (w).max_mb: must be <= memory_mb 256 (got 512)"]),
    (VM + "max_mb = 0\n", ["vms[1] (w).max_mb: must be > 0 (got 0)"]),
    (VM + "max_mb = 100\nmin_mb = 200\n", ["vms[1] (w).min_mb: must be <= max_mb 100 (got 200)"]),
    (VM + "pinned_mb = 300\n", ["vms[1] (w).pinned_mb: must be <= max_mb 256 (got 300)"]),
    (VM + 'host = "nope"\n', ['vms[1] (w).host: unknown host (known: h) (got "nope")']),
    (VM + 'image = "bsd"\n', ["vms[1] (w).image: unknown image (known: blank,", '(got "bsd")']),
    (VM + "count = 0\n", ["vms[1] (w).count: must be >= 1 (got 0)"]),
    (VM + "balloon = 1\n", ["vms[1] (w).balloon: expected a boolean, got the integer 1"]),
    (
        '[[vms]]\nname = "w"\nmemory_mb = 4096\nmin_mb = 1025\n',
        ["vms[1] (w).min_mb: can never fit: min_mb + policy.vm_overhead_mb = 270592 pages"],
    ),
    (VM + '[vms.workload]\nkind = "bursty"\n', ["vms[1] (w).workload.kind: unknown workload"]),
    (VM + "[vms.workload]\nwss_mb = 1\n", ["vms[1] (w).workload.wss_mb: unknown key"]),
    (
        VM + '[vms.workload]\nkind = "steady"\nwss_mb = "big"\n',
        ['vms[1] (w).workload.wss_mb: expected a float, got the string "big"'],
    ),
    (VM + "workload = 3\n", ["vms[1] (w).workload: expected a table, got the integer 3"]),
    ('[[images]]\nname = "i"\nshared_fraction = 2.0\n', ["images[0] (i).shared_fraction: must be"]),
    ('[[migrations]]\ntime_s = 60\nvm = "v"\nto = "h"\n', ["migrations[0].time_s: must be <"]),
    ('[[migrations]]\ntime_s = 1\nvm = "x"\nto = "h"\n', ["migrations[0].vm: unknown VM"]),
    ('[[migrations]]\ntime_s = 1\nvm = "v"\nto = "x"\n', ["migrations[0].to: unknown host"]),
    ('[[migrations]]\ntime_s = 1\nvm = "v"\n', ["migrations[0].to: missing required key"]),
    ('[sweep]\n"policy.tax_rate" = []\n', ["sweep.policy.tax_rate: expected a non-empty array"]),
    (
        '[sweep]\n"policy.tax_rate" = [0.5, 1.5]\n',
        ["sweep.policy.tax_rate[1]: policy.tax_rate: must be in [0, 1) (got 1.5)"],
    ),
    ('[sweep]\n"policy.tax_rat" = [0.5]\n', ["sweep.policy.tax_rat[0]: unknown key"]),
    ('[sweep]\n"vms.nope.shares" = [1]\n', ['sweep.vms.nope.shares[0]: no VM named "nope"']),
]


@pytest.mark.parametrize(("extra", "expected"), ERRORS)
def test_config_errors(tmp_path: Path, extra: str, expected: list[str]) -> None:
    msg = load_error(tmp_path, MINIMAL + extra)
    for part in expected:
        assert part in msg


def test_no_hosts_or_vms(tmp_path: Path) -> None:
    assert "hosts: at least one [[hosts]] entry is required" in load_error(tmp_path, VM)
    no_vms = '[[hosts]]\nname = "h"\nmemory_mb = 1\n'
    assert "vms: at least one [[vms]] entry is required" in load_error(tmp_path, no_vms)


def test_pin_to_group_of_hosts(tmp_path: Path) -> None:
    text = '[[hosts]]\nname = "r"\nmemory_mb = 1024\ncount = 2\n' + VM + 'host = "r"\n'
    msg = load_error(tmp_path, text)
    assert "vms[0] (w).host: host 'r' has count 2: pin to one of r-0, r-1" in msg


def test_admission_errors(tmp_path: Path) -> None:
    """The paper's admission control (sec. 6) of pinned VMs: min + overhead in memory,
    memory_mb - min in swap (default overhead 32 MB)."""
    host = '[[hosts]]\nname = "h"\nmemory_mb = 1000\nswap_mb = 500\n'
    vms = '[[vms]]\nname = "a"\nmemory_mb = 800\nmin_mb = 600\nhost = "h"\ncount = 2\n'
    msg = load_error(tmp_path, host + vms)
    assert "hosts[0] (h): admission: sum of min_mb + vm_overhead_mb" in msg
    assert "its 2 pinned VMs (a-0, a-1) is 1264 MB > memory_mb 1000 MB (over by 264 MB)" in msg
    vms = '[[vms]]\nname = "a"\nmemory_mb = 400\nmin_mb = 100\nhost = "h"\ncount = 2\n'
    msg = load_error(tmp_path, host + vms)
    assert (
        "hosts[0] (h): admission: sum of memory_mb - min_mb over its 2 pinned VMs (a-0, a-1)" in msg
    )
    assert "is 600 MB > swap_mb 500 MB (over by 100 MB): swap must hold every page" in msg
    # 800 + 2 x 32 MB would fit in memory + swap (the rule before): refused all the same.
    # The overhead counts in memory; unpinned VMs are not admitted anywhere yet.
    ok = '[[vms]]\nname = "a"\nmemory_mb = 500\nmin_mb = 100\nhost = "h"\n' + VM
    assert load_config(write(tmp_path, host + ok)).vm("a").host == "h"
    msg = load_error(tmp_path, "[policy]\nvm_overhead_mb = 901\n" + host + ok)
    assert "vms[0] (a).min_mb: can never fit: min_mb + policy.vm_overhead_mb" in msg
    swap = '[[vms]]\nname = "a"\nmemory_mb = 501\nmin_mb = 0\nhost = "h"\n'
    msg = load_error(tmp_path, host + swap)
    assert "vms[0] (a).memory_mb: can never fit: memory_mb - min_mb (at least pinned_mb)" in msg
    assert "= 501 MB > swap_mb 500 MB of host h" in msg


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "[policy\ntax_rate = 1\n")
    assert ": TOML syntax error: " in msg and "line 1" in msg
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="nope.toml: no such file$"):
        load_config(missing)


def test_parse_config_uses_source_name() -> None:
    with pytest.raises(ConfigError, match=r"^<config>: hosts: at least one"):
        parse_config({})
    with pytest.raises(ConfigError, match=r"^x\.toml: vms: at least one"):
        parse_config({"hosts": [{"name": "h", "memory_mb": 1}]}, "x.toml")
    with pytest.raises(ConfigError, match=r"hosts: expected an array of tables \(\[\[hosts\]\]\)"):
        parse_config({"hosts": 3})


# --- overrides -------------------------------------------------------------------------------


def test_overrides_on_sections(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    cfg = load_config(path, ["policy.tax_rate=0.0", "migration.enabled=false", "simulation.seed=3"])
    assert cfg.policy.tax_rate == 0.0 and cfg.migration.enabled is False
    assert cfg.simulation.seed == 3
    assert load_config(path, ["policy.placement=round_robin"]).policy.placement == "round_robin"


def test_overrides_on_hosts_and_vms(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    cfg = load_config(
        path,
        [
            "hosts.rack.memory_mb=3000",
            "hosts.rack.count=4",
            "vms.web.shares=10",
            "vms.db.min_mb=256",
            "vms.*.balloon=false",
            "vms.web.workload.accesses_per_s=5",
            "vms.db.workload.wss_mb=32",
            "vms.web.workload.kind=steady",
            "vms.web.workload.wss_mb=8",
        ],
    )
    assert cfg.host_names() == ("big", "rack-0", "rack-1", "rack-2", "rack-3")
    assert cfg.host("rack-1").memory_mb == 3000.0
    assert {v.shares for v in cfg.vms if v.base_name == "web"} == {10.0}
    assert cfg.vm("db").min_mb == 256.0 and cfg.vm("db").shares == 1000.0
    assert not any(v.balloon for v in cfg.vms)
    steady = registry.get("steady").Params
    assert cfg.vm("web-2").workload.params == steady(wss_mb=8.0, accesses_per_s=5.0)
    assert cfg.vm("db").workload.params == steady(wss_mb=32.0)


def test_changing_workload_kind_keeps_strict_keys(tmp_path: Path) -> None:
    # Keys of the old kind are not dropped silently: the new kind must accept them.
    msg = load_error(tmp_path, FULL, ("vms.db.workload.kind=idle",))
    assert "vms[0] (db).workload.wss_mb: unknown key (known: accesses_per_s," in msg


BAD_OVERRIDES = [
    (
        "policy.tax_rat=0.1",
        "--set policy.tax_rat: unknown key (known: allocation, balloon_max_fraction,",
    ),
    ("polcy.tax_rate=0.1", "--set polcy.tax_rate: not an override path"),
    ("policy=1", "--set policy: not an override path"),
    ("vms.nope.shares=1", '--set vms.nope.shares: no VM named "nope" (known: v)'),
    ("hosts.nope.memory_mb=1", '--set hosts.nope.memory_mb: no host named "nope"'),
    ("vms.v.sharez=1", "--set vms.v.sharez: unknown key (known: balloon, count,"),
    ("vms.v.base_name=x", "--set vms.v.base_name: unknown key"),
    ("vms.v.workload.wss_mb=1", "--set vms.v.workload.wss_mb (kind 'idle'): unknown key"),
    ("vms.v.workload=1", "--set vms.v.workload: set workload keys one at a time"),
    ("policy.tax_rate", "--set policy.tax_rate: expected path=value"),
    ("policy.tax_rate=abc", 'policy.tax_rate: expected a float, got the string "abc"'),
    ("policy.tax_rate=true", "policy.tax_rate: expected a float, got the boolean true"),
    ("policy.sample_pages=2.0", "policy.sample_pages: expected an integer, got the float 2.0"),
    ("vms.*.memory_mb=-1", "vms[0] (v).memory_mb: must be > 0 (got -1)"),
]


@pytest.mark.parametrize(("override", "expected"), BAD_OVERRIDES)
def test_bad_overrides(tmp_path: Path, override: str, expected: str) -> None:
    assert expected in load_error(tmp_path, MINIMAL, (override,))


def test_override_value_parsing(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    # A bare word is a string, a quoted one too; TOML values keep their type.
    assert load_config(path, ["vms.v.sharing_group=g1"]).vm("v").sharing_group == "g1"
    assert load_config(path, ['vms.v.sharing_group="a b"']).vm("v").sharing_group == "a b"
    assert load_config(path, ["vms.v.image=windows"]).vm("v").image == "windows"
    assert load_config(path, ["hosts.h.memory_mb = 2048"]).hosts[0].memory_mb == 2048.0


# --- canonical form ---------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, FULL))
    d = cfg.to_dict()
    assert config_from_dict(d) == cfg
    assert config_from_dict(json.loads(json.dumps(d))) == cfg
    assert d["vms"][0]["workload"] == {"kind": "steady", "wss_mb": 64.0, **_steady_rest()}
    assert "source" not in d
    minimal = load_config(write(tmp_path, MINIMAL))
    assert config_from_dict(minimal.to_dict()) == minimal


def _steady_rest() -> dict[str, float]:
    params = dataclasses.asdict(registry.get("steady").Params())
    del params["wss_mb"]
    return params


def test_hash(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, FULL, "a.toml"))
    b = load_config(write(tmp_path, FULL.replace("duration_s = 10", "duration_s = 10.0"), "b.toml"))
    assert a.config_hash() == b.config_hash()  # source and int/float spelling do not count
    assert len(a.config_hash()) == 64
    assert config_from_dict(a.to_dict()).config_hash() == a.config_hash()
    changed = load_config(tmp_path / "a.toml", ["policy.tax_rate=0.1"])
    assert changed.config_hash() != a.config_hash()


def test_with_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, FULL)
    cfg = load_config(path)
    for overrides in (["policy.tax_rate=0.0"], ["vms.web.shares=5"], ["vms.*.sharing=false"]):
        assert with_overrides(cfg, overrides) == load_config(path, overrides)
    one = with_overrides(cfg, ["vms.web-2.shares=5", "hosts.rack-0.swap_mb=10"])
    assert [v.shares for v in one.vms] == [1000.0, 2000.0, 2000.0, 5.0, 2000.0]
    assert one.host("rack-0").swap_mb == 10.0 and one.host("rack-1").swap_mb == 0.0
    for point in sweep_points(cfg):
        assert with_overrides(cfg, point) == load_config(path, point)
    with pytest.raises(ConfigError, match="--set vms.web.count: count is fixed"):
        with_overrides(cfg, ["vms.web.count=2"])


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert isinstance(cfg, SimConfig)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.policy.tax_rate = 0.0  # type: ignore[misc]


def test_describe_schema_mentions_every_key() -> None:
    text = describe_schema()
    for f in dataclasses.fields(PolicyConfig):
        assert f"| `{f.name}` |" in text
    for kind, cls in registry.WORKLOADS.items():
        assert f'kind = "{kind}"' in text
        for f in dataclasses.fields(cls.Params):
            assert f"| `{f.name}` |" in text
    for f in dataclasses.fields(ImageSpec):
        assert f"| `{f.name}` |" in text
    assert "base_name" not in text  # derived, never written in a file


#: A value off the default for every key of config.HASH_OMITS_AT_DEFAULT.
MOVED: dict[str, str] = {
    "policy.swap_cache_mb": "8",
    "policy.swap_cache_latency_us": "50",
    "policy.compression": "esx",
    "policy.compression_cache_pct": "20",
    "policy.zswap_max_pool_percent": "30",
    "policy.zswap_accept_threshold_percent": "80",
    "policy.decompress_us": "20",
    "policy.free_states": "vsphere6",
    "policy.share_scan_clear_factor": "2",
    "policy.large_pages": "true",
    "policy.large_page_break_state": "hard",
    "policy.sharing_scanner": "ksm",
    "policy.ksm_pages_to_scan": "200",
    "policy.ksm_sleep_millisecs": "10",
    "policy.ksm_max_page_sharing": "16",
    "policy.ksm_use_zero_pages": "true",
    "policy.free_page_reporting": "true",
    "policy.free_page_reporting_delay_s": "4",
    "policy.free_page_reporting_order": "0",
}


def test_hash_of_a_shipped_config_is_stable() -> None:
    """Checkpoints and recordings carry the config hash and refuse another: a new key that
    leaked into the hash at its default would orphan every file users wrote before it.
    (Pinned at 54729b9, the first release of the formats; change only deliberately.)"""
    from vmmsim.cluster.config import HASH_OMITS_AT_DEFAULT

    path = Path(__file__).parents[1] / "configs" / "quickstart.toml"
    cfg = load_config(path)
    assert cfg.config_hash() == "932da8c118b6fba0d414ae0be309404fafeb9e6fd849cd8bc8b84c1ebe9ad7ac"
    listed = {f"{s}.{k}" for s, keys in HASH_OMITS_AT_DEFAULT.items() for k in keys}
    assert listed == set(MOVED)
    needs = {"policy.share_scan_clear_factor": ["policy.free_states=vsphere6"]}
    for key, value in MOVED.items():  # a listed key moved off its default does count
        other = load_config(path, [*needs.get(key, []), f"{key}={value}"])
        assert other.config_hash() != cfg.config_hash(), key


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")), ids=lambda p: p.stem
)
def test_every_shipped_config_validates(path, capsys):
    """Each experiment config in configs/ loads, validates and places (``vmmsim validate``
    exits 0 with no error line)."""
    assert main(["validate", str(path)]) == 0
    assert "error" not in capsys.readouterr().err
