"""The fuzz harness (``bench/fuzz.py``) kept honest, and a fixed CI sample of fuzzed configs.

Scope: the generator is deterministic and only makes configs that load; it reaches every
workload kind and the config features the issue lists (page-class tables included); the
brute-force admission check and the outcome classifier are right on hand-made cases; and
seeds 0..N_CI-1 (a fixed rule, not a hand-picked set) run with ``--inprocess
--check-invariants`` with no crash, invariant violation, bad refusal or hang. ``python
bench/fuzz.py --n 500`` runs many more.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("vmm_fuzz", ROOT / "bench" / "fuzz.py")
fuzz = importlib.util.module_from_spec(_spec)
sys.modules["vmm_fuzz"] = fuzz  # dataclasses resolve their module by name
_spec.loader.exec_module(fuzz)

from vmmsim.cluster.config import load_config  # noqa: E402
from vmmsim.workloads.batch import SPEC_CLASSES as BATCH_DEFAULT  # noqa: E402

N_CI = 24  # seeds 0..N_CI-1 run in CI (~1 s each in-process)


def test_generator_is_deterministic(tmp_path: Path) -> None:
    for seed in (0, 7, 123):
        a = fuzz.generate(seed, tmp_path / "a")
        a_traces = [p.read_bytes() for p in a.traces]
        b = fuzz.generate(seed, tmp_path / "a")
        assert fuzz.to_toml(a.raw) == fuzz.to_toml(b.raw)
        assert [p.read_bytes() for p in b.traces] == a_traces
    assert fuzz.to_toml(fuzz.generate(1, tmp_path).raw) != fuzz.to_toml(
        fuzz.generate(2, tmp_path).raw
    )


def test_generated_configs_load_and_cover_the_features(tmp_path: Path) -> None:
    """Valid by construction (they load, as ``vmmsim validate`` does), and the generator
    reaches everything the harness promises to exercise."""
    seen: Counter[str] = Counter()
    oc = []
    for seed in range(120):
        case = fuzz.generate(seed, tmp_path)
        path = tmp_path / f"c{seed}.toml"
        path.write_text(fuzz.to_toml(case.raw))
        cfg = load_config(path)  # raises ConfigError if the generator made an invalid one
        assert cfg.simulation.seed == seed and cfg.simulation.duration_s <= 60
        assert 1 <= len(cfg.hosts) <= 4 and 1 <= len(cfg.vms) <= 8
        oc.append(sum(v.memory_mb for v in cfg.vms) / sum(h.memory_mb for h in cfg.hosts))
        for v in cfg.vms:
            seen[f"kind:{v.workload.kind}"] += 1
            seen["pinned host"] += v.host is not None
            seen["min_mb"] += v.min_mb > 0
            seen["max_mb"] += v.max_mb is not None
            seen["pinned_mb"] += v.pinned_mb > 0
            seen["balloon off"] += not v.balloon
        seen["custom image"] += "images" in case.raw
        custom = {i["name"] for i in case.raw.get("images", [])}
        for im in cfg.images:
            if im.name in custom:
                seen["image classes"] += bool(im.classes)
                seen["family class"] += any(c[4] == "family" for c in im.classes)
                seen["image_mb"] += im.image_mb > 0
                seen["kernel_fraction"] += im.kernel_fraction != 0.02
        used = {v.image for v in cfg.vms}
        seen["VM on a class image"] += any(cfg.image(n).classes for n in used & custom)
        seen["batch classes"] += any(
            v.workload.kind == "batch" and v.workload.params.classes != BATCH_DEFAULT
            for v in cfg.vms
        )
        seen["migrations"] += len(cfg.migrations) > 0
        seen["policy"] += "policy" in case.raw
        seen["compression"] += cfg.policy.compression != "off"
        seen["swap cache"] += cfg.policy.swap_cache_mb > 0
        seen["migration section"] += "migration" in case.raw
        seen["vsphere6"] += cfg.policy.free_states == "vsphere6"
        seen["count"] += any("count" in e for e in case.raw["hosts"] + case.raw["vms"])
        seen["large pages"] += cfg.policy.large_pages
    for kind in fuzz.KINDS:
        assert seen[f"kind:{kind}"] > 0, kind
    for feature in ("pinned host", "min_mb", "max_mb", "pinned_mb", "balloon off"):
        assert seen[feature] > 0, feature
    for feature in (
        "custom image",
        "migrations",
        "policy",
        "migration section",
        "count",
        "vsphere6",
    ):
        assert seen[feature] > 0, feature
    assert seen["large pages"] > 0
    assert seen["compression"] > 0 and seen["swap cache"] > 0
    page_classes = ("image classes", "family class", "image_mb", "kernel_fraction")
    for feature in (*page_classes, "VM on a class image", "batch classes"):
        assert seen[feature] > 0, feature
    assert min(oc) < 0.8 and max(oc) > 3.0  # overcommit spans about 0.5-4x


def _raw(hosts: list[tuple[float, float]], vms: list[dict], ovh: float = 0.0) -> dict:
    return {
        "policy": {"vm_overhead_mb": ovh},
        "hosts": [
            {"name": f"h{i}", "memory_mb": m, "swap_mb": s} for i, (m, s) in enumerate(hosts)
        ],
        "vms": [{"name": f"v{i}", **v} for i, v in enumerate(vms)],
    }


def test_valid_assignment_brute_force() -> None:
    # The paper's rule: swap holds memory_mb - min_mb.  60 + 100 | 100 is the only fit.
    hosts = [(100, 160), (100, 100)]
    raw = _raw(hosts, [{"memory_mb": 60}, {"memory_mb": 100}, {"memory_mb": 100}])
    fit = fuzz.valid_assignment(raw)
    assert fit is not None and fit["v0"] == fit["v1"] == "h0" and fit["v2"] == "h1"
    # One MB less swap and nothing fits (memory + swap, 359 MB, would hold all 260 MB).
    assert fuzz.valid_assignment(_raw([(100, 159), (100, 100)], raw["vms"])) is None
    # Overhead counts in memory, not in swap.
    assert fuzz.valid_assignment(_raw(hosts, raw["vms"], ovh=30.0)) is not None
    assert fuzz.valid_assignment(_raw(hosts, raw["vms"], ovh=51.0)) is None
    # min_mb must fit in memory (swap does not count) ...
    two_min = [{"memory_mb": 60, "min_mb": 40}, {"memory_mb": 60, "min_mb": 40}]
    assert fuzz.valid_assignment(_raw([(64, 200)], two_min)) is None
    assert fuzz.valid_assignment(_raw([(64, 200), (64, 20)], two_min)) is not None
    assert fuzz.valid_assignment(_raw([(64, 200), (64, 19)], two_min)) is None
    # ... and pinned_mb counts as a minimum.
    pinned = [{"memory_mb": 60, "pinned_mb": 40}, {"memory_mb": 60, "pinned_mb": 40}]
    assert fuzz.valid_assignment(_raw([(64, 200)], pinned)) is None
    # A VM pinned to a host stays there (v0 pinned to h0 leaves no room for v1 anywhere,
    # though v1 alone would fit on h0).
    stuck = [{"memory_mb": 60, "host": "h0"}, {"memory_mb": 60}]
    assert fuzz.valid_assignment(_raw([(100, 100), (50, 50)], stuck)) is None
    assert fuzz.valid_assignment(_raw([(100, 100), (61, 60)], stuck)) == {"v0": "h0", "v1": "h1"}


def test_brute_force_counts_configured_size_not_max_mb() -> None:
    """The swap part counts memory_mb (not max_mb) less min_mb; memory + swap keep two
    pages over (as hosts.admission does, written separately)."""
    capped = [{"memory_mb": 100, "max_mb": 50, "min_mb": 50, "balloon": False}]
    small = (10, 100)  # swap for it, but memory for no minimum
    assert fuzz.valid_assignment(_raw([(60, 49), small], capped)) is None  # max_mb - min_mb = 0
    assert fuzz.valid_assignment(_raw([(60, 50)], capped)) == {"v0": "h0"}
    assert fuzz.valid_assignment(_raw([(50 + 8 / 1024, 50)], capped)) == {"v0": "h0"}
    assert fuzz.valid_assignment(_raw([(50 + 7 / 1024, 50)], capped)) is None  # < 2 pages


def test_classify() -> None:
    assert fuzz.classify(0, "", False)[0] == "ok"
    assert fuzz.classify(None, "", True)[0] == "hang"
    assert fuzz.classify(2, "vmmsim: error: cfg.toml: vms (a): cannot be placed\n", False)[0] == (
        "refused"
    )
    tb = (
        "Traceback (most recent call last):\n"
        '  File "/x/hosts/swap.py", line 9, in put\n'
        "    raise SwapFull(...)\n"
        "hosts.errors.SwapFull: swap full: need 8192 slots, 7124 free of 8704\n"
    )
    outcome, reason, sig = fuzz.classify(1, tb, False)
    assert outcome == "crash" and "SwapFull" in reason and "swap.py" in sig
    assert "N slots" in sig  # numbers blanked so equal failures group together
    assert fuzz.classify(1, tb.replace("SwapFull", "InvariantError"), False)[0] == "violation"
    two = "vmmsim: error: one\nvmmsim: error: two\n"
    assert fuzz.classify(2, two, False)[0] == "crash"  # more than one line is not a refusal
    host = "vmmsim: error: host h-1 failed at tick 0: SwapFull: host h-1: out of memory\n"
    outcome, _, sig = fuzz.classify(1, host, False)
    assert outcome == "crash" and sig.startswith("SwapFull (host failed")


@pytest.mark.parametrize("seed", range(N_CI))
def test_fuzzed_config_runs_clean(seed: int, tmp_path: Path) -> None:
    """Seeds 0..N_CI-1: ok or a one-line refusal that no valid assignment contradicts."""
    res = fuzz.fuzz_one(seed, ray=False, timeout=120.0, save=tmp_path / "failed")
    assert res.outcome in ("ok", "refused"), f"seed {seed}: {res.outcome}: {res.reason}"
