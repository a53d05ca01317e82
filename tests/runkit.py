"""Tiny experiment configs for tests (TOML text, written to tmp dirs): end-to-end runs and
the config loader."""

from __future__ import annotations

import json
from pathlib import Path


def small_config(
    n_hosts: int = 2,
    n_vms: int = 4,
    *,
    duration_s: int = 30,
    host_mb: int = 24,
    vm_mb: int = 16,
    seed: int = 7,
    policy: str = "",
    extra: str = "",
) -> str:
    """A config that runs in about a second in-process: overcommitted so that ballooning
    and swapping happen, identical images so that sharing happens.  ``policy``: more
    ``[policy]`` lines; ``extra``: more tables, at the end."""
    return f"""
[simulation]
seed = {seed}
duration_s = {duration_s}
tick_s = 1.0
content_bytes = 128

[policy]
share_scan_vm_pages_per_s = 400
share_scan_host_pages_per_s = 1600
realloc_period_s = 5
sample_period_s = 10
vm_overhead_mb = 0  # toy 16 MB VMs: the paper's 32 MB overhead would dwarf them
{policy}

[[hosts]]
name = "h"
count = {n_hosts}
memory_mb = {host_mb}
swap_mb = 64

[[vms]]
name = "busy"
count = {n_vms // 2}
memory_mb = {vm_mb}
[vms.workload]
kind = "steady"
wss_mb = {vm_mb * 0.5}
write_fraction = 0.2

[[vms]]
name = "lazy"
count = {n_vms - n_vms // 2}
memory_mb = {vm_mb}
[vms.workload]
kind = "idle"
{extra}
"""


def one_vm_config(
    *, duration_s: int = 4, vm_mb: int = 32, simulation: str = "", vm: str = ""
) -> str:
    """One 64 MB host ``h`` and one VM ``v``, for tests of the config loader (parsed or
    refused, rarely run).  ``simulation``: more ``[simulation]`` lines; ``vm``: more lines
    of the ``[[vms]]`` entry (its keys, then its sub-tables)."""
    return f"""
[simulation]
duration_s = {duration_s}
{simulation}

[[hosts]]
name = "h"
memory_mb = 64
swap_mb = 64

[[vms]]
name = "v"
memory_mb = {vm_mb}
{vm}
"""


def write_config(tmp: Path, text: str, name: str = "exp.toml") -> Path:
    p = Path(tmp) / name
    p.write_text(text)
    return p


def summary_of(run_dir: Path) -> dict:
    """A run directory's ``summary.json``."""
    return json.loads((run_dir / "summary.json").read_text())


def error_line(capsys) -> str:
    """The one ``vmmsim: error: ...`` line a refused command wrote to stderr."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("vmmsim: error: ")
    return err[0]


def trace_config(path: str, duration_s: int = 5) -> str:
    """One 4 MB VM replaying the trace at ``path`` on a 16 MB host (no VMM overhead)."""
    return f"""
[simulation]
duration_s = {duration_s}
content_bytes = 64
[policy]
vm_overhead_mb = 0
[[hosts]]
name = "h"
memory_mb = 16
swap_mb = 4
[[vms]]
name = "bb"
memory_mb = 4
[vms.workload]
kind = "trace"
path = "{path}"
"""


def run_inprocess(tmp: Path, text: str, *args: str) -> tuple[Path, Path]:
    """``vmmsim run`` of config ``text`` in-process and quiet into ``tmp/run``: (config, run
    directory); ``args``: more flags."""
    from vmmsim.cluster.cli import main

    cfg = write_config(tmp, text)
    out = tmp / "run"
    assert main(["run", str(cfg), "--out", str(out), "--inprocess", "--quiet", *args]) == 0
    return cfg, out
