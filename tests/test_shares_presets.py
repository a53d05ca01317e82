"""vSphere's reservations, limits and share presets on the paper's allocation: `shares_level`
low / normal / high = 5 / 10 / 20 shares per configured MB, a consumed reservation
(`min_mb`) is kept even when idle, a limit (`max_mb`) caps the allocation below the
configured size."""

from __future__ import annotations

import tomllib
from pathlib import Path

import numpy as np
import pytest
from vmmsim.cluster.config import ConfigError, parse_config
from vmmsim.cluster.specs import vm_spec

import vmmsim


def two_vms(a: str = "", b: str = "", *, b_workload: str = "") -> dict:
    """Two 32 MB VMs on a 40 MB host (no VMM overhead): both want all of their memory."""
    busy = '[vms.workload]\nkind = "steady"\nwss_mb = 30\nwrite_fraction = 0.3\n'
    text = f"""
[simulation]
seed = 3
duration_s = 60
content_bytes = 64
[policy]
vm_overhead_mb = 0
realloc_period_s = 5
sample_period_s = 5
[[hosts]]
name = "h"
memory_mb = 40
swap_mb = 80
[[vms]]
name = "a"
memory_mb = 32
sharing = false
{a}
{busy}
[[vms]]
name = "b"
memory_mb = 32
sharing = false
{b}
{b_workload or busy}
"""
    return tomllib.loads(text)


def mean_mb(run: vmmsim.Run, vm: str, col: str, t0: float = 30.0) -> float:
    m = run.metrics
    sel = (np.asarray(m["vm"]) == vm) & (np.asarray(m["time_s"]) >= t0)
    return float(np.asarray(m[col])[sel].mean())


def test_a_preset_is_shares_per_configured_mb() -> None:
    cfg = parse_config(two_vms('shares_level = "high"', 'shares_level = "low"'))
    assert vm_spec(cfg, "a").shares == 20 * 32 and vm_spec(cfg, "b").shares == 5 * 32


def test_high_shares_get_more_memory_than_low_ones() -> None:
    runs = {
        lv: vmmsim.run(
            two_vms('shares_level = "high"', f'shares_level = "{lv}"'), backend="inprocess"
        )
        for lv in ("high", "low")
    }
    even, skewed = runs["high"], runs["low"]
    assert abs(mean_mb(even, "a", "target_mb") - mean_mb(even, "b", "target_mb")) < 1.0
    assert mean_mb(skewed, "a", "target_mb") > mean_mb(skewed, "b", "target_mb") + 4.0


def test_a_consumed_reservation_is_kept_while_idle() -> None:
    """b touches 24 MB, then idles, with 16 MB reserved: the tax takes its idle memory
    down to the reservation, never below it (the busy VM a wants all it can get)."""
    idle = '[vms.workload]\nkind = "phased"\nphases = [[10, 24], [50, 0.1]]\nrepeat = false\n'
    r = vmmsim.run(two_vms(b="min_mb = 16", b_workload=idle), backend="inprocess")
    assert mean_mb(r, "b", "target_mb") >= 16.0
    assert mean_mb(r, "b", "resident_mb") >= 16.0 - 0.5  # (the guest kernel, 2%, included)


def test_a_limit_caps_the_allocation() -> None:
    r = vmmsim.run(two_vms(a="max_mb = 12"), backend="inprocess")
    m = r.metrics
    a = np.asarray(m["vm"]) == "a"
    assert np.asarray(m["target_mb"])[a].max() <= 12.0


@pytest.mark.parametrize(
    ("line", "msg"),
    [
        ('shares_level = "huge"', '(a).shares_level: must be one of "low", "normal"'),
        ('shares_level = "low"\nshares = 50', "(a).shares_level: set shares or"),
    ],
)
def test_bad_presets_are_one_line_errors(line: str, msg: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(two_vms(line))
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_a_chunk_larger_than_the_unreserved_memory_still_runs() -> None:
    """Reservations are spared first, taken only when nothing else frees enough (was
    SwapFull at tick 0: a 1663-page chunk beside another VM's 25 MB reservation)."""
    path = Path(__file__).parent / "data" / "fuzz_seed407_reservations.toml"
    r = vmmsim.run(path, backend="inprocess", check_invariants=True)
    assert r.summary["n_ticks"] == 3
