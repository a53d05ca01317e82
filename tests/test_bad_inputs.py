"""Bad configs and bad command-line flags: exit 2, one line ``vmmsim: error: ...``, nothing
written, no traceback, no hang (issue 14, item 7); config warnings; a loader fuzz.

Scope: the config loader's size limits and type checks, the CLI's flag checks, the
warnings of ``vmmsim validate`` / ``vmmsim run``.  Runs the CLI in-process
(:func:`cluster.cli.main`); only the warning test simulates (4 ticks, ``--inprocess``).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
from runkit import one_vm_config
from vmmsim.cluster.cli import main
from vmmsim.cluster.config import (
    ConfigError,
    config_warnings,
    host_commitments,
    load_config,
    parse_config,
)

BASE = one_vm_config(
    simulation="content_bytes = 64", vm='[vms.workload]\nkind = "steady"\nwss_mb = 8'
)

FILESERVER = BASE.replace('kind = "steady"\nwss_mb = 8', 'kind = "fileserver"\nfiles_mb = 1e9')

TOP_HOSTS = 'hosts = [1]\n[[vms]]\nname = "v"\nmemory_mb = 32\n'
TOP_VMS = 'vms = [1]\n[[hosts]]\nname = "h"\nmemory_mb = 64\n'
TOP_IMAGES = 'images = ["x"]\n' + BASE


def _invoke(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors exit through SystemExit
        rc = int(e.code or 0)
    out, err = capsys.readouterr()
    return rc, out, err


def _assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vmmsim: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# (id, TOML text, --set overrides, words the error line must contain)
CONFIG_CASES: list[tuple[str, str, list[str], tuple[str, ...]]] = [
    ("host-memory-1e12", BASE, ["hosts.h.memory_mb=1e12"], ("hosts[0] (h).memory_mb", "2,147")),
    ("host-swap-1e12", BASE, ["hosts.h.swap_mb=1e12"], ("swap_mb", "too large")),
    ("vm-memory-1e12", BASE, ["vms.v.memory_mb=1e12"], ("vms[0] (v).memory_mb", "too large")),
    ("fileserver-files-1e9", FILESERVER, [], ("workload.files_mb", "too large")),
    (
        "fileserver-files-1e6",
        FILESERVER,
        ["vms.v.workload.files_mb=1e6"],
        ("workload.files_mb", "file set", "67,108,864"),
    ),
    ("hosts-count-1e9", BASE, ["hosts.h.count=1000000000"], ("count", "1024")),
    ("vms-count-1e8", BASE, ["vms.v.count=100000000"], ("count", "16384")),
    ("top-hosts-int", TOP_HOSTS, [], ("hosts[0]", "expected a table", "integer 1")),
    ("top-vms-int", TOP_VMS, [], ("vms[0]", "expected a table")),
    ("top-images-str", TOP_IMAGES, [], ("images[0]", "expected a table", '"x"')),
    (
        "tick-overflow",
        BASE,
        ["simulation.duration_s=1e10", "simulation.tick_s=1e-300"],
        ("simulation.tick_s", "10,000,000 ticks"),
    ),
    ("host-memory-tiny", BASE, ["hosts.h.memory_mb=1e-9"], ("memory_mb", "at least one page")),
    ("vm-memory-tiny", BASE, ["vms.v.memory_mb=1e-6"], ("vms[0] (v).memory_mb", "one page")),
    ("accesses-1e15", BASE, ["vms.v.workload.accesses_per_s=1e15"], ("accesses_per_s", "tick")),
    ("wss-1e308", BASE, ["vms.v.workload.wss_mb=1e308"], ("wss_mb", "too large")),
    (
        "scan-rate-1e300",
        BASE,
        ["policy.share_scan_vm_pages_per_s=1e300"],
        ("policy.share_scan_vm_pages_per_s", "pages per tick"),
    ),
    ("balloon-rate-1e300", BASE, ["policy.balloon_rate_pages_per_s=1e300"], ("balloon_rate",)),
    ("overhead-1e300", BASE, ["policy.vm_overhead_mb=1e300"], ("policy.vm_overhead_mb",)),
    ("huge-tick", BASE, ["simulation.duration_s=1e300", "simulation.tick_s=1e299"], ("tick_s",)),
    (
        "content-64GiB",
        BASE,
        ["simulation.content_bytes=4096", "hosts.h.memory_mb=1e6", "hosts.h.count=8"],
        ("simulation.content_bytes", "64 GiB"),
    ),
    ("memory-nan", BASE, ["hosts.h.memory_mb=nan"], ("memory_mb", "must be finite")),
    ("memory-bool", BASE, ["vms.v.memory_mb=true"], ("memory_mb", "boolean")),
]


@pytest.mark.parametrize(
    ("text", "overrides", "needles"),
    [c[1:] for c in CONFIG_CASES],
    ids=[c[0] for c in CONFIG_CASES],
)
@pytest.mark.parametrize("cmd", ["run", "validate"])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cmd: str,
    text: str,
    overrides: list[str],
    needles: tuple[str, ...],
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    out = tmp_path / "out"
    argv = [cmd, str(cfg), *[a for o in overrides for a in ("--set", o)]]
    if cmd == "run":
        argv += ["--out", str(out), "--inprocess", "--quiet"]
    rc, _, err = _invoke(argv, capsys)
    _assert_one_line_error(rc, err, *needles)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.toml"]  # no partials either


# (id, argv after the command's positional arguments, words the error line must contain)
FLAG_CASES = [
    ("checkpoint-negative", ["--checkpoint-every", "-5"], ("--checkpoint-every", "-5")),
    ("checkpoint-nan", ["--checkpoint-every", "nan"], ("--checkpoint-every", "finite")),
    ("checkpoint-inf", ["--checkpoint-every", "inf"], ("--checkpoint-every",)),
    ("checkpoint-text", ["--checkpoint-every", "soon"], ("--checkpoint-every", "soon")),
    ("timeout-negative", ["--timeout", "-1"], ("--timeout", "> 0")),
    ("timeout-zero", ["--timeout", "0"], ("--timeout",)),
    ("timeout-nan", ["--timeout", "nan"], ("--timeout", "finite")),
]


FLAG_RUNS = [
    pytest.param(cmd, *c[1:], id=f"{cmd}-{c[0]}")
    for c in FLAG_CASES
    for cmd in ("run", "replay", "resume")
    if not (cmd == "replay" and c[1][0] == "--checkpoint-every")  # replay has no such flag
]


@pytest.mark.parametrize(("cmd", "flags", "needles"), FLAG_RUNS)
def test_bad_flags_are_one_line_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    cmd: str,
    flags: list[str],
    needles: tuple[str, ...],
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE)
    out = tmp_path / "out"
    src = {"run": cfg, "replay": tmp_path / "rec", "resume": tmp_path / "ck"}[cmd]
    rc, _, err = _invoke([cmd, str(src), "--out", str(out), "--inprocess", *flags], capsys)
    _assert_one_line_error(rc, err, *needles)
    assert not out.exists()


def test_checkpoint_every_zero_stays_valid() -> None:
    from vmmsim.cluster.cli import _parser

    args = _parser().parse_args(["run", "c.toml", "--out", "o", "--checkpoint-every", "0"])
    assert args.checkpoint_every == 0.0
    args = _parser().parse_args(["resume", "ck", "--out", "o", "--checkpoint-every", "2.5"])
    assert args.checkpoint_every == 2.5 and args.timeout == 600.0


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("h:999", ("--kill-host-at", "4 ticks", "h:999")),
        ("h:4", ("--kill-host-at", "0..3")),
        ("nohost:1", ("--kill-host-at", "NAME a host")),
        ("h:x", ("--kill-host-at",)),
    ],
)
def test_kill_host_at_past_the_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str, needles: tuple[str, ...]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE)
    out = tmp_path / "out"
    argv = ["run", str(cfg), "--out", str(out), "--inprocess", "--quiet", "--kill-host-at", spec]
    rc, _, err = _invoke(argv, capsys)
    _assert_one_line_error(rc, err, *needles)
    assert not out.exists()


# --- warnings ---------------------------------------------------------------------------------


def test_oversized_working_set_warns_in_validate_and_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(BASE.replace("wss_mb = 8", "wss_mb = 100"))
    loaded = load_config(cfg)
    warnings = config_warnings(loaded)
    assert warnings == loaded.warnings()
    assert len(warnings) == 1 and "vms.v.workload.wss_mb" in warnings[0]
    assert "100 MB" in warnings[0] and "32 MB" in warnings[0]

    rc, out, err = _invoke(["validate", str(cfg)], capsys)
    assert rc == 0
    shown = json.loads(out)
    assert shown["warnings"] == warnings
    # One line per host (committed memory, overcommit), then the warnings.
    assert err.splitlines()[-1] == f"vmmsim: warning: {warnings[0]}"
    assert err.splitlines()[0].startswith("vmmsim: h: 1 VM, committed")

    rc, out, err = _invoke(
        ["run", str(cfg), "--out", str(tmp_path / "o"), "--inprocess", "--quiet"], capsys
    )
    assert rc == 0
    assert err.splitlines()[0] == f"vmmsim: warning: {warnings[0]}"
    assert (tmp_path / "o").is_dir()


def test_sane_config_has_no_warnings() -> None:
    cfg = parse_config(_raw())
    assert config_warnings(cfg) == []


def test_working_set_over_max_mb_and_each_kind_warns() -> None:
    raw = _raw()
    raw["vms"] = [
        {"name": "a", "memory_mb": 64, "max_mb": 32, "workload": {"kind": "steady", "wss_mb": 48}},
        {
            "name": "b",
            "memory_mb": 32,
            "count": 3,
            "workload": {"kind": "phased", "phases": [[1.0, 8.0], [1.0, 40.0]]},
        },
        {
            "name": "c",
            "memory_mb": 32,
            "workload": {"kind": "batch", "program_mb": 30, "heap_mb": 8},
        },
        {"name": "d", "memory_mb": 32, "workload": {"kind": "fileserver", "dirty_mb": 33}},
        {"name": "e", "memory_mb": 32, "workload": {"kind": "fileserver", "files_mb": 500}},
    ]
    ws = config_warnings(parse_config(raw))
    assert [w.split(":")[0] for w in ws] == [
        "vms.a.workload.wss_mb",
        "vms.b.workload.phases[1] wss_mb",  # once for the 3 expanded VMs
        "vms.c.workload.program_mb + heap_mb",
        "vms.d.workload.dirty_mb",
    ]
    assert "max_mb 32" in ws[0] and "page constantly" in ws[0]


def test_validate_shows_committed_memory_and_overcommit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        BASE
        + "\n[policy]\nvm_overhead_mb = 2\n"
        + '\n[[vms]]\nname = "w"\nmemory_mb = 48\nmax_mb = 40\nmin_mb = 16\nhost = "h"\n'
    )  # min_mb 16: swap holds 32 + 48 - 16 MB (admission)
    rc, out, _ = _invoke(["validate", str(cfg)], capsys)
    assert rc == 0
    shown = json.loads(out)
    assert set(shown) >= {"config_hash", "placement", "hosts", "warnings"}
    assert shown["placement"] == {"v": "h", "w": "h"}
    h = shown["hosts"]["h"]
    assert h["committed_mb"] == pytest.approx(32 + 2 + 48 + 2)  # configured size, not max
    assert h["overcommit"] == pytest.approx(84 / 64, abs=1e-4)
    assert h["vms"] == 2 and h["memory_mb"] == 64


def test_host_commitments_counts_only_placed_vms() -> None:
    cfg = parse_config(_raw())
    c = host_commitments(cfg, {"a": "h-1"})
    assert c["h-0"]["committed_mb"] == 0 and c["h-0"]["overcommit"] == 0
    assert c["h-1"]["committed_mb"] == 64 + 1 and c["h-1"]["vms"] == 1


# --- loader fuzz --------------------------------------------------------------------------------


def _raw() -> dict[str, Any]:
    """A config using every section and every built-in workload kind (valid)."""
    return {
        "simulation": {"seed": 1, "duration_s": 4.0, "tick_s": 1.0, "content_bytes": 64},
        "policy": {"tax_rate": 0.5, "vm_overhead_mb": 1.0, "share_scan_vm_pages_per_s": 50.0},
        "migration": {"enabled": True, "bandwidth_mb_s": 100.0, "max_rounds": 5},
        "hosts": [{"name": "h", "memory_mb": 256, "swap_mb": 256, "count": 2}],
        "images": [{"name": "img", "shared_fraction": 0.3, "zero_fraction": 0.1}],
        "vms": [
            {
                "name": "a",
                "memory_mb": 64,
                "min_mb": 8,
                "shares": 100,
                "image": "img",
                "pinned_mb": 4,
                "workload": {"kind": "steady", "wss_mb": 16, "accesses_per_s": 100.0},
            },
            {
                "name": "b",
                "memory_mb": 64,
                "host": "h-0",
                "workload": {"kind": "phased", "phases": [[2.0, 8.0]], "touch_rate": 1.0},
            },
            {"name": "c", "memory_mb": 64, "workload": {"kind": "fileserver", "files_mb": 32.0}},
            {"name": "d", "memory_mb": 64, "workload": {"kind": "batch", "heap_mb": 4.0}},
            {"name": "e", "memory_mb": 64, "workload": {"kind": "idle"}},
        ],
        "migrations": [{"time_s": 1.0, "vm": "e", "to": "h-1"}],
        "sweep": {"policy.tax_rate": [0.0, 0.5]},
    }


def _leaves(d: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every value (tables and arrays too) in raw config data."""
    out = [path] if path else []
    items = d.items() if isinstance(d, dict) else enumerate(d) if isinstance(d, list) else ()
    for k, v in items:
        out += _leaves(v, (*path, k))
    return out


def _set(raw: dict[str, Any], path: tuple[Any, ...], value: Any) -> None:
    d: Any = raw
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value


FUZZ = [math.nan, math.inf, -math.inf, -1, -1.5, "x", True, [1], {"a": 1}, {}, 1e308, 10**30]
# Keys where a wrong value is reported at the entry that refers to it (a renamed host or
# image makes a VM's reference unknown), not at the key itself.
_CROSS_REFS = {"name"}


def test_loader_fuzz_every_key_every_bad_value_is_a_config_error() -> None:
    """Every key of a full config, set to each bad value, loads or raises ConfigError naming
    the key; an unknown key in every table is refused by name.  Never another exception."""
    base = _raw()
    parse_config(base)
    crashes, unnamed = [], []
    for path in _leaves(base):
        for value in FUZZ:
            raw = copy.deepcopy(base)
            _set(raw, path, copy.deepcopy(value))
            try:
                parse_config(raw)
            except ConfigError as e:
                key = path[-1]
                if isinstance(key, str) and key not in _CROSS_REFS and key not in str(e):
                    unnamed.append((path, value, str(e)))
            except Exception as e:  # noqa: BLE001 -- any other exception is the bug
                crashes.append((path, value, repr(e)))
        table: Any = base
        for p in path:
            table = table[p]
        if isinstance(table, dict):
            raw = copy.deepcopy(base)
            target: Any = raw
            for p in path:
                target = target[p]
            target["zz_unknown"] = 1
            with pytest.raises(ConfigError, match="zz_unknown"):
                parse_config(raw)
    assert crashes == []
    assert unnamed == []


@pytest.mark.parametrize("key", ["hosts", "vms", "images", "migrations"])
@pytest.mark.parametrize("value", [1, "x", True, {}, [1], ["x"], [[]], [True]])
def test_top_level_arrays_of_wrong_type_name_the_key(key: str, value: Any) -> None:
    raw = _raw()
    raw[key] = value
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert str(e.value).startswith(f"<config>: {key}")


@pytest.mark.parametrize("key", ["hosts", "vms"])
def test_empty_required_tables_are_refused(key: str) -> None:
    raw = _raw()
    raw[key] = []
    with pytest.raises(ConfigError, match=rf"at least one \[\[{key}\]\]"):
        parse_config(raw)
    raw[key] = [{}]
    with pytest.raises(ConfigError, match=r"name: missing required key"):
        parse_config(raw)


def test_run_whose_page_state_exceeds_this_machine_is_refused_before_simulating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import vmmsim.cluster.cli as cli

    monkeypatch.setattr(cli, "_machine_memory", lambda: 2**30)  # a 1 GiB machine
    cfg = tmp_path / "c.toml"
    # two hosts of 512 MB memory + 64 MB swap, 4096 content bytes: ~1.1 GiB in all
    cfg.write_text(
        BASE.replace("content_bytes = 64", "content_bytes = 4096").replace(
            "memory_mb = 64", "memory_mb = 512\ncount = 2"
        )
    )
    out = tmp_path / "out"
    rc, _, err = _invoke(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet"], capsys)
    _assert_one_line_error(rc, err, "simulation.content_bytes", "this machine has 1.0 GiB")
    assert not out.exists()
    loaded = load_config(cfg)
    cli._check_fits_machine(loaded, joined=True)  # one host fits: hosts may be spread out
    with pytest.raises(ConfigError, match="the hosts' page state"):
        cli._check_fits_machine(loaded, joined=False)
