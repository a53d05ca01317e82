"""Fuzz harness: seeded random *valid* experiment configs, run with invariants on.

Scope: a deterministic generator of valid configs (every workload kind including a small
generated trace, custom ``[[images]]`` -- some with page-class tables, ``image_mb`` caps
and ``kernel_fraction`` variations --, ``batch`` program classes, overcommit 0.5-4x,
pinned hosts, ``min_mb`` / ``max_mb`` / ``pinned_mb``, balloon on/off, random
``[policy]`` and ``[migration]`` values in their valid ranges, scheduled
``[[migrations]]``, ``count`` expansion), a runner that runs each with the CLI in a
subprocess (``vmmsim run CFG --out DIR --inprocess --check-invariants --quiet``, with a
timeout to catch hangs) and classifies the outcome, and a brute-force placement check
that flags refusals of configs for which a valid assignment exists under the documented
ESX admission rule (per host, the paper's sec. 6: sum of min_mb + vm_overhead_mb <=
memory, sum of memory_mb - min_mb <= swap -- the configured size, not max_mb --; pinned +
overhead leaving a page of memory, memory_mb + overhead within memory + swap less two
pages; pinned VMs fixed).

Run ``python bench/fuzz.py --n 500 [--seed S] [--jobs J] [--ray K]``.  Config ``i`` uses
seed ``S + i``; failing configs (and their traces and stderr) are saved under ``--save``
(default ``runs/fuzz/``).  The generator and the classifier import neither Ray nor the
simulator (only :mod:`cluster.config` for loading and :mod:`workloads.trace` for writing
traces), so ``tests/test_fuzz.py`` can import this file by path.

Not covered: invalid inputs (the bad-input table test does those); ``--ray`` runs skip
``--check-invariants`` (in-process only) but compare the final digest with the
in-process run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

KINDS = ("steady", "idle", "phased", "batch", "fileserver", "trace")
BUILTIN_IMAGES = ("blank", "linux", "linux-old", "windows")
MB = 2**20

# --- generator ---------------------------------------------------------------------------------


def _r(x: float, nd: int = 3) -> float:
    """Round to ``nd`` decimals, kept a float (TOML float)."""
    return float(round(x, nd))


def _policy(rng: random.Random) -> dict[str, Any]:
    p: dict[str, Any] = {}

    def maybe(key: str, value: Any) -> None:
        if rng.random() < 0.5:
            p[key] = value

    maybe("share_scan_vm_pages_per_s", _r(rng.choice([0.0, rng.uniform(0, 2000)])))
    maybe("share_scan_host_pages_per_s", _r(rng.choice([0.0, rng.uniform(0, 5000)])))
    maybe("tax_rate", _r(rng.uniform(0, 0.99)))
    maybe("sample_period_s", _r(rng.uniform(0.5, 60)))
    maybe("sample_pages", rng.randint(1, 500))
    maybe("realloc_period_s", _r(rng.uniform(0.5, 30)))
    maybe("balloon_max_fraction", _r(rng.uniform(0, 1)))
    maybe("balloon_rate_pages_per_s", _r(rng.choice([0.0, rng.uniform(0, 50000)])))
    maybe("swap_rate_pages_per_s", _r(rng.choice([0.0, rng.uniform(0, 20000)])))
    maybe("vm_overhead_mb", _r(rng.choice([0.0, rng.uniform(0, 8)])))
    maybe("disk_latency_ms", _r(rng.uniform(0, 20)))
    maybe("minor_fault_us", _r(rng.uniform(0, 10)))
    maybe("placement", rng.choice(["most_free", "image_affinity", "round_robin"]))
    if rng.random() < 0.5:  # free_high > free_soft > free_hard > free_low >= 0
        levels = sorted({_r(rng.uniform(0, 0.3)) for _ in range(4)}, reverse=True)
        while len(levels) < 4:
            levels.append(_r(levels[-1] / 2, 6))
        if len(set(levels)) == 4 and levels[3] >= 0:
            p["free_high"], p["free_soft"], p["free_hard"], p["free_low"] = levels
    maybe("share_salting", rng.choice([0, 1, 2]))
    # vSphere 6's five states: only without free_* keys (valid by construction)
    if rng.random() < 0.3 and "free_high" not in p:
        p["free_states"] = "vsphere6"
        maybe("share_scan_clear_factor", _r(rng.uniform(1, 8)))
    # Large pages (hosts/large_pages.py): on in a quarter of configs, any break state.
    maybe("large_pages", rng.random() < 0.5)
    maybe("large_page_break_state", rng.choice(["high", "clear", "soft", "hard", "low"]))
    # KVM-style host (issue 18 item 6): KSM and free page reporting (KSM: no large pages).
    if rng.random() < 0.3 and not p.get("large_pages"):
        p["sharing_scanner"] = "ksm"
        maybe("ksm_pages_to_scan", rng.choice([0, rng.randint(1, 2000)]))
        maybe("ksm_sleep_millisecs", _r(rng.uniform(1, 200)))
        maybe("ksm_max_page_sharing", rng.choice([2, 3, rng.randint(2, 512)]))
        maybe("ksm_use_zero_pages", rng.random() < 0.5)
    if rng.random() < 0.3:
        p["free_page_reporting"] = True
        maybe("free_page_reporting_delay_s", _r(rng.choice([0.0, rng.uniform(0, 10)])))
        maybe("free_page_reporting_order", rng.choice([0, 2, 9]))
    # swap tiers (issue 18): host swap cache and memory compression
    maybe("swap_cache_mb", _r(rng.choice([0.0, rng.uniform(0, 64)])))
    maybe("compression", rng.choice(["off", "esx", "zswap"]))
    maybe("compression_cache_pct", _r(rng.uniform(0, 100)))
    maybe("zswap_max_pool_percent", _r(rng.uniform(0, 100)))
    maybe("zswap_accept_threshold_percent", _r(rng.uniform(0, 100)))
    return p


def _migration(rng: random.Random) -> dict[str, Any]:
    m: dict[str, Any] = {}
    if rng.random() < 0.5:
        return m
    m["enabled"] = rng.random() < 0.7
    m["bandwidth_mb_s"] = _r(rng.uniform(10, 5000))
    m["max_downtime_ms"] = _r(rng.uniform(1, 1000))
    m["max_rounds"] = rng.randint(1, 40)
    m["pressure_s"] = _r(rng.uniform(0, 60))
    m["min_round_pages"] = rng.randint(0, 200)
    return m


CLASS_NAMES = ("kernel", "libs", "cache", "data", "text", "input")


def _classes(rng: random.Random, scopes: list[str]) -> list[list[Any]]:
    """A valid page-class table: 1-4 rows ``[name, fraction, p, dup, scope]``, distinct
    names (shared across tables, so family classes of two images can match), fractions in
    thousandths summing to 1 (a zero-fraction row now and then), p and dup often at the
    edges 0 and 1."""
    k = rng.randint(1, 4)
    names = rng.sample(CLASS_NAMES, k)
    w = [0.0 if k > 1 and rng.random() < 0.1 else rng.uniform(0.05, 1) for _ in range(k)]
    total = sum(w) or 1.0
    milli = [int(1000 * x / total) for x in w[:-1]]
    milli.append(1000 - sum(milli))
    rows = []
    for name, m in zip(names, milli, strict=True):
        p = rng.choice([0.0, 1.0, _r(rng.uniform(0, 1)), _r(rng.uniform(0.5, 1))])
        dup = rng.choice([0.0, 0.0, 0.0, _r(rng.uniform(0, 0.3)), 1.0])
        rows.append([name, m / 1000, p, dup, rng.choice(scopes)])
    return rows


def _images(rng: random.Random) -> list[dict[str, Any]]:
    """0-2 custom images: simple ones (``family_overlap``) or with a page-class table, some
    with an ``image_mb`` cap and a ``kernel_fraction`` other than the default; a custom
    image may replace a built-in one by name or join the built-in linux family (whose
    ``kernel`` class a custom family class of that name then shares)."""
    out = []
    for i in range(rng.choice([0, 0, 1, 2])):
        name = rng.choice(["linux", "windows"]) if rng.random() < 0.2 else f"img{i}"
        if any(im["name"] == name for im in out):
            name = f"img{i}"
        shared = _r(rng.uniform(0, 1))
        zero = _r(rng.uniform(0, 1 - shared))
        im: dict[str, Any] = {"name": name, "shared_fraction": shared, "zero_fraction": zero}
        classes = rng.random() < 0.5
        if rng.random() < 0.4:
            im["family"] = rng.choice(["fam", "other", "linux"])  # linux: the built-ins
            if not classes:
                im["family_overlap"] = _r(rng.uniform(0, 1))
        if classes:
            im["classes"] = _classes(rng, ["image", "family"] if "family" in im else ["image"])
        if rng.random() < 0.4:
            im["image_mb"] = _r(rng.choice([0.0, rng.uniform(0.1, 64)]))
        if rng.random() < 0.4:
            # Now and then a large one, up to the 0.5 limit (with pinned pages the kernel
            # then takes half of what is left).
            kf = rng.choice([0.0, rng.uniform(0, 0.2), rng.uniform(0, 0.2), rng.uniform(0, 0.5)])
            im["kernel_fraction"] = _r(kf)
        out.append(im)
    return out


def _workload(
    rng: random.Random, kind: str, mem: float, n_steps: int, n_pages: int, trace_path: str
) -> dict[str, Any]:
    wf = _r(rng.uniform(0, 1))
    if kind == "steady":
        w: dict[str, Any] = {"wss_mb": _r(rng.uniform(0, mem)), "write_fraction": wf}
        if rng.random() < 0.3:
            w["accesses_per_s"] = _r(rng.uniform(0, 5000))
        if rng.random() < 0.4:
            w["hot_fraction"] = _r(rng.uniform(0.01, 1))
            w["hot_weight"] = _r(rng.uniform(0, 1))
    elif kind == "idle":
        w = {
            "background_fraction": _r(rng.uniform(0, 0.2)),
            "accesses_per_s": _r(rng.uniform(0, 100)),
            "write_fraction": wf,
        }
    elif kind == "phased":
        phases = [
            [_r(rng.uniform(0.5, 30)), _r(rng.uniform(0, mem))] for _ in range(rng.randint(1, 3))
        ]
        w = {
            "phases": phases,
            "repeat": rng.random() < 0.5,
            "touch_rate": _r(rng.uniform(0, 3)),
            "write_fraction": wf,
        }
    elif kind == "batch":
        w = {
            "program": rng.choice(["gcc", "mcf", "bzip2"]),
            "program_mb": _r(rng.uniform(0, mem / 3)),
            "heap_mb": _r(rng.uniform(0, mem / 3)),
            "load_s": _r(rng.choice([0.0, rng.uniform(0, 20)])),
            "program_weight": _r(rng.uniform(0, 1)),
            "write_fraction": wf,
        }
        if rng.random() < 0.3:
            w["accesses_per_s"] = _r(rng.uniform(0, 5000))
        if rng.random() < 0.4:
            w["classes"] = _classes(rng, ["program"])
    elif kind == "fileserver":
        w = {
            "files_mb": _r(rng.choice([0.0, rng.uniform(0, mem / 2)])),
            "dirty_mb": _r(rng.uniform(0, min(8.0, mem / 4))),
            "zipf_s": _r(rng.uniform(0, 4)),
            "accesses_per_s": _r(rng.uniform(0, 5000)),
            "write_fraction": wf,
            "warmup_s": _r(rng.choice([0.0, rng.uniform(0, 30)])),
        }
    else:  # trace: the arrays are drawn here, written by generate()
        w = {"path": trace_path, "boot": rng.random() < 0.7}
    return {"kind": kind, **w}


def _trace_arrays(seed: int, n_steps: int, n_pages: int) -> tuple[np.ndarray, ...]:
    g = np.random.default_rng(seed)
    per_tick = g.integers(0, 40, size=max(1, n_steps + g.integers(-2, 3)))
    tick = np.repeat(np.arange(len(per_tick), dtype=np.int64), per_tick)
    ppn = g.integers(0, max(1, n_pages), size=len(tick), dtype=np.int64)
    is_write = g.random(len(tick)) < 0.3
    key = g.integers(1, 2**63, size=len(tick), dtype=np.uint64)
    key[g.random(len(tick)) < 0.1] = 0
    key[~is_write] = 0
    return tick, ppn, is_write, key


Claim = tuple[float, float, float, float]


def _claim(v: dict[str, Any], ovh: float) -> Claim:
    """(reserve, pinned, commit, swap) of a VM entry in MB: max(min, pinned) + overhead,
    pinned + overhead, memory_mb + overhead, memory_mb - max(min, pinned) (the documented
    admission claim: the configured size, not max_mb, counts)."""
    mn, pin = v.get("min_mb", 0.0), v.get("pinned_mb", 0.0)
    low = max(mn, pin)
    return low + ovh, pin + ovh, v["memory_mb"] + ovh, max(0.0, v["memory_mb"] - low)


def _admits(claims: list[Claim], mem: float, swap: float, page: float) -> bool:
    """The documented ESX admission rule for one host (docs/running.md / hosts.admission):
    reserves fit in memory and the rest of the configured sizes in swap (the paper's),
    pinned memory leaves a page of memory, configured sizes + overhead fit in memory +
    swap less two pages."""
    eps = 1e-9
    res, pin, com, sw = (sum(c[i] for c in claims) for i in range(4))
    return (
        res <= mem + eps
        and pin <= mem - page + eps
        and sw <= swap + eps
        and com <= mem + swap - 2 * page + eps
    )


@dataclass
class Case:
    """One generated config: ``raw`` is the dict the loader takes (TOML structure)."""

    seed: int
    raw: dict[str, Any]
    traces: list[Path] = field(default_factory=list)


def generate(seed: int, workdir: str | Path) -> Case:
    """A random valid config for ``seed``; trace files (if any) are written in ``workdir``.

    Deterministic: the same seed and workdir give the same dict and byte-identical traces.
    """
    rng = random.Random(seed)
    workdir = Path(workdir)
    sim: dict[str, Any] = {"seed": seed}
    tick_s = rng.choice([1.0, 1.0, 1.0, 0.5, 2.0])
    steps = max(2, int(rng.uniform(4, 40) / tick_s))
    sim["tick_s"], sim["duration_s"] = tick_s, tick_s * steps
    page_size = rng.choice([4096, 4096, 4096, 4096, 2048, 8192, 1024])
    sim["page_size"] = page_size
    sim["content_bytes"] = min(page_size, rng.choice([64, 64, 64, 8, 32, 128]))
    policy = _policy(rng)
    # Small VMs (4 MB and up): an overhead of 0-8 MB, never the 32 MB default.
    ovh = policy.setdefault("vm_overhead_mb", 0.0)
    images = _images(rng)
    custom = [im["name"] for im in images]
    image_names = sorted({*BUILTIN_IMAGES, *custom})

    # Hosts: 1-4 expanded, sometimes as one entry with count.
    n_hosts = rng.randint(1, 4)
    n_vms = rng.randint(1, 8)
    total_vm = rng.uniform(48, 768)
    oc = rng.uniform(0.5, 4.0)
    host_mem_total = total_vm / oc
    if n_hosts > 1 and rng.random() < 0.2:
        each = _r(max(8.0, host_mem_total / n_hosts))
        host_entries = [{"name": "h", "count": n_hosts, "memory_mb": each}]
        host_names = [f"h-{i}" for i in range(n_hosts)]
        host_mem = {h: each for h in host_names}
    else:
        ws = [rng.uniform(0.5, 1.5) for _ in range(n_hosts)]
        host_names = [f"h{i}" for i in range(n_hosts)]
        share = [host_mem_total * w / sum(ws) for w in ws]
        host_mem = {h: _r(max(8.0, m)) for h, m in zip(host_names, share, strict=True)}
        host_entries = [{"name": h, "memory_mb": host_mem[h]} for h in host_names]

    # VMs: groups (an entry may have count), 1-8 expanded in all.
    groups: list[dict[str, Any]] = []
    left = n_vms
    while left > 0:
        c = rng.randint(2, min(3, left)) if left >= 2 and rng.random() < 0.2 else 1
        left -= c
        groups.append({"count": c})
    weights = [rng.uniform(0.3, 1.7) for _ in groups]
    vm_names: list[str] = []
    vms: list[dict[str, Any]] = []
    expanded: list[tuple[str, dict[str, Any]]] = []
    n_steps = steps
    for gi, (g, w) in enumerate(zip(groups, weights, strict=True)):
        mem = _r(max(4.0, total_vm * w / sum(weights) / g["count"]))
        v: dict[str, Any] = {"name": f"v{gi}", "memory_mb": mem}
        if g["count"] > 1:
            v["count"] = g["count"]
        top = mem
        if rng.random() < 0.3:
            top = v["max_mb"] = _r(rng.uniform(0.5, 1.0) * mem)
        if rng.random() < 0.3:
            v["min_mb"] = _r(rng.uniform(0, 0.5) * top / max(oc, 1.0))
        if rng.random() < 0.3:
            v["pinned_mb"] = _r(rng.uniform(0, 0.5) * top)
        if rng.random() < 0.3:
            v["shares"] = _r(rng.uniform(1, 5000))
        if rng.random() < 0.3:
            v["balloon"] = False
        if rng.random() < 0.15:
            v["sharing"] = False
        if rng.random() < 0.15:
            v["sharing_group"] = rng.choice(["a", "b"])
        if rng.random() < 0.7:  # custom images (if any) more often than built-in ones
            v["image"] = rng.choice(custom if custom and rng.random() < 0.6 else image_names)
        if rng.random() < 0.3:
            v["host"] = rng.choice(host_names)
        kind = rng.choice(KINDS)
        n_pages = int(mem * MB) // page_size
        tpath = str((workdir / f"trace-{seed}-v{gi}.arrow").resolve())
        v["workload"] = _workload(rng, kind, mem, n_steps, n_pages, tpath)
        vms.append(v)
        names = [f"v{gi}-{k}" for k in range(g["count"])] if g["count"] > 1 else [f"v{gi}"]
        vm_names += names
        expanded += [(n, v) for n in names]

    # Pinned admission must hold at load time: unpin (last first) until it does; each VM's
    # reserve and pinned memory must fit in the largest host ("can never fit").
    page_mb = page_size / MB
    largest = max(host_mem.values())
    for v in vms:
        if v.get("min_mb", 0.0) + ovh > largest:
            v.pop("min_mb", None)
        if v.get("pinned_mb", 0.0) + ovh > largest - page_mb:
            v.pop("pinned_mb", None)

    # Swap: usually enough (with some slack) for every VM's size beyond its minimum (the
    # paper's swap reservation), spread by host memory; sometimes random.
    total_need = sum(_claim(v, ovh)[3] for _, v in expanded)
    biggest = max(_claim(v, ovh)[3] for _, v in expanded)
    swap: dict[str, float] = {}
    for h in host_names:
        if rng.random() < 0.85:
            f = rng.uniform(1.0, 1.6) * total_need / sum(host_mem.values())
            swap[h] = _r(host_mem[h] * f + biggest * rng.uniform(0, 1))
        else:
            swap[h] = _r(rng.uniform(0, 2) * host_mem[h])
    if max(swap.values()) < biggest:  # every VM must fit some host's swap ("can never fit")
        swap[max(host_names, key=lambda h: (host_mem[h], h))] = _r(biggest + 0.001)
    if host_entries[0].get("count"):
        host_entries[0]["swap_mb"] = max(swap.values())
        swap = {h: host_entries[0]["swap_mb"] for h in host_names}
    else:
        for e in host_entries:
            e["swap_mb"] = swap[e["name"]]

    for v in reversed(vms):
        h = v.get("host")
        if h is None:
            continue
        claims = [_claim(x, ovh) for _, x in expanded if x.get("host") == h]
        if not _admits(claims, host_mem[h], swap[h], page_mb):
            del v["host"]

    migrations = []
    if rng.random() < 0.35:
        for _ in range(rng.randint(1, 2)):
            t = _r(rng.uniform(0, sim["duration_s"] * 0.95))
            if t >= sim["duration_s"]:
                continue
            migrations.append(
                {"time_s": t, "vm": rng.choice(vm_names), "to": rng.choice(host_names)}
            )
        migrations.sort(key=lambda m: m["time_s"])

    traces = []
    for v in vms:
        wl = v["workload"]
        if wl["kind"] == "trace":
            n_pages = int(v["memory_mb"] * MB) // page_size
            workdir.mkdir(parents=True, exist_ok=True)
            from vmmsim.workloads.trace import write_trace

            arrays = _trace_arrays(seed * 1000 + len(traces), n_steps, n_pages)
            write_trace(wl["path"], *arrays)
            traces.append(Path(wl["path"]))

    raw: dict[str, Any] = {"simulation": sim}
    if policy:
        raw["policy"] = policy
    mig = _migration(rng)
    if mig:
        raw["migration"] = mig
    if images:
        raw["images"] = images
    raw["hosts"] = host_entries
    raw["vms"] = vms
    if migrations:
        raw["migrations"] = migrations
    return Case(seed=seed, raw=raw, traces=traces)


# --- TOML text ---------------------------------------------------------------------------------


def _val(x: Any) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, str):
        return json.dumps(x)
    if isinstance(x, list):
        return "[" + ", ".join(_val(e) for e in x) + "]"
    raise TypeError(type(x))


def _kv(d: dict[str, Any]) -> list[str]:
    return [f"{k} = {_val(v)}" for k, v in d.items() if not isinstance(v, dict)]


def to_toml(raw: dict[str, Any], header: str = "") -> str:
    """TOML text of a generated config (the subset of TOML the generator uses)."""
    out = [f"# {line}" for line in header.splitlines()]
    for sec in ("simulation", "policy", "migration"):
        if sec in raw:
            out += ["", f"[{sec}]", *_kv(raw[sec])]
    for arr in ("images", "hosts", "vms", "migrations"):
        for item in raw.get(arr, []):
            out += ["", f"[[{arr}]]", *_kv(item)]
            for k, sub in item.items():
                if isinstance(sub, dict):
                    out += [f"[{arr}.{k}]", *_kv(sub)]
    return "\n".join(out) + "\n"


# --- admission brute force ---------------------------------------------------------------------


def valid_assignment(raw: dict[str, Any]) -> dict[str, str] | None:
    """A {vm: host} meeting the documented admission rule, or None if none exists.

    Rule per host (:func:`_admits`): sum of max(min_mb, pinned_mb) + vm_overhead_mb <=
    memory_mb; sum of memory_mb - max(min_mb, pinned_mb) (configured size, not max_mb) <=
    swap_mb; sum of pinned_mb + vm_overhead_mb <= memory_mb less one page; sum of
    memory_mb + vm_overhead_mb <= memory_mb + swap_mb less two pages.
    Pinned VMs stay on their host.
    Exhaustive backtracking over the (small) expanded config, largest VM first; written
    independently of :mod:`hosts.admission` so that it checks it.
    """
    from vmmsim.cluster.config import config_from_dict

    cfg = config_from_dict(raw)
    ovh = cfg.policy.vm_overhead_mb
    page = cfg.simulation.page_size / MB
    host = {h.name: h for h in cfg.hosts}
    on: dict[str, list[Claim]] = {h: [] for h in host}
    out: dict[str, str] = {}
    free = []
    for v in cfg.vms:
        low = max(v.min_mb, v.pinned_mb)
        c = (low + ovh, v.pinned_mb + ovh, v.memory_mb + ovh, max(0.0, v.memory_mb - low))
        if v.host is not None:
            on[v.host].append(c)
            out[v.name] = v.host
        else:
            free.append((v.name, c))

    def ok(h: str) -> bool:
        return _admits(on[h], host[h].memory_mb, host[h].swap_mb, page)

    if not all(ok(h) for h in host):
        return None
    free.sort(key=lambda x: -x[1][2])

    def rec(i: int) -> bool:
        if i == len(free):
            return True
        vm, c = free[i]
        seen: set[tuple] = set()
        for h in host:
            state = (host[h].memory_mb, host[h].swap_mb, tuple(sorted(on[h])))
            if state in seen:
                continue
            seen.add(state)
            on[h].append(c)
            if ok(h):
                out[vm] = h
                if rec(i + 1):
                    return True
                del out[vm]
            on[h].pop()
        return False

    return dict(out) if rec(0) else None


# --- runner ------------------------------------------------------------------------------------

PLACEMENT_WORDS = ("cannot be placed", "admission", "can never fit", "placement", "placed")
INVARIANT_WORDS = ("InvariantError", "AssertionError", "invariant")


@dataclass
class Result:
    seed: int
    outcome: str  # ok | refused | crash | violation | bad-refusal | hang
    reason: str = ""
    signature: str = ""
    seconds: float = 0.0
    digest: str = ""
    mode: str = "inprocess"
    saved: str = ""
    stderr: str = ""


def _vmmsim() -> str:
    exe = Path(sys.executable).parent / "vmmsim"
    return str(exe) if exe.exists() else (shutil.which("vmmsim") or "vmmsim")


def _norm(msg: str) -> str:
    """A message with numbers and quoted names blanked, for grouping failures."""
    msg = re.sub(r"/\S+?\.(toml|arrow)", "FILE", msg)
    msg = re.sub(r"\bh-?\d+\b", "H", msg)
    msg = re.sub(r"\bv\d+(-\d+)?\b", "V", msg)
    msg = re.sub(r"0x[0-9a-f]+", "X", msg)
    msg = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", msg)
    return re.sub(r"'[^']*'|\"[^\"]*\"", "S", msg)[:200]


def signature(stderr: str, rc: int | None) -> tuple[str, str]:
    """(one-line reason, grouping signature: exception type + last frame + message)."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', stderr)
    exc = ""
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Full|Interrupt|Exit)\b.*", ln):
            exc = ln.strip()
            break
    if frames:
        f, line, fn = frames[-1]
        where = f"{Path(f).parent.name}/{Path(f).name}:{fn}"
        reason = f"{exc or lines[-1]} [at {where}:{line}]"
        etype = exc.split(":", 1)[0] if exc else "?"
        emsg = exc.split(":", 1)[1].strip() if ":" in exc else ""
        return reason[:300], f"{etype} @ {where}: {_norm(emsg)}"
    first = lines[-1] if lines else "(no stderr)"
    m = re.search(r"failed at tick \d+: (\w+): (.*)", first)
    if m:  # a host failure (exit 1): group by the host's exception
        return f"exit {rc}: {first}"[:300], f"{m[1]} (host failed, exit {rc}): {_norm(m[2])}"
    return f"exit {rc}: {first}"[:300], f"exit {rc}: {_norm(first)}"


def classify(rc: int | None, stderr: str, hung: bool) -> tuple[str, str, str]:
    """(outcome, reason, signature) of one CLI run; refusals not yet brute-force checked."""
    if hung:
        return "hang", "timed out", "hang"
    lines = [
        ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("vmmsim: warning:")
    ]
    if any(w in stderr for w in INVARIANT_WORDS):
        reason, sig = signature(stderr, rc)
        return "violation", reason, sig
    if rc == 0 and "Traceback" not in stderr:
        return "ok", "", ""
    if rc == 2 and len(lines) == 1 and lines[0].startswith("vmmsim: error:"):
        return "refused", lines[0], "refused: " + _norm(lines[0])
    reason, sig = signature(stderr, rc)
    if len(lines) > 1 and "Traceback" not in stderr:
        reason = f"{len(lines)} stderr lines, exit {rc}: " + " | ".join(lines[:2])
    return "crash", reason[:300], sig


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("RAY_AUTH_MODE", "disabled")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_case(case: Case, cfg_path: Path, out: Path, *, ray: bool, timeout: float) -> Result:
    """Run one config with the CLI in a subprocess and classify the outcome."""
    cmd = [_vmmsim(), "run", str(cfg_path), "--out", str(out), "--quiet"]
    cmd += [] if ray else ["--inprocess", "--check-invariants"]
    t0 = time.perf_counter()
    p = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        start_new_session=True,
    )
    hung = False
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        hung = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, err = p.communicate()
    dt = time.perf_counter() - t0
    outcome, reason, sig = classify(p.returncode, err, hung)
    res = Result(case.seed, outcome, reason, sig, dt, mode="ray" if ray else "inprocess")
    res.stderr = err
    if outcome == "ok":
        try:
            res.digest = json.loads((out / "summary.json").read_text())["final_digest"]
        except (OSError, KeyError, ValueError) as e:
            res.outcome, res.reason, res.signature = "crash", f"no summary.json ({e})", "no-summary"
    elif outcome == "refused" and any(w in reason for w in PLACEMENT_WORDS):
        fit = valid_assignment(case.raw)
        if fit is not None:
            res.outcome = "bad-refusal"
            res.reason = f"{reason} -- but a valid assignment exists: {fit}"
            res.signature = "bad-refusal: " + _norm(reason)
    return res


def save_failure(case: Case, res: Result, save: Path) -> str:
    """Write the failing config (with its traces) and stderr under ``save``; the path."""
    save.mkdir(parents=True, exist_ok=True)
    stem = f"seed-{case.seed}" + ("-ray" if res.mode == "ray" else "")
    raw = json.loads(json.dumps(case.raw))
    for v in raw["vms"]:
        wl = v["workload"]
        if wl["kind"] == "trace":
            dst = save / Path(wl["path"]).name
            shutil.copyfile(wl["path"], dst)
            wl["path"] = str(dst.resolve())
    path = save / f"{stem}.toml"
    header = f"vmmsim fuzz seed {case.seed} ({res.mode}): {res.outcome}\n{res.reason}"
    path.write_text(to_toml(raw, header))
    (save / f"{stem}.stderr.txt").write_text(res.stderr)
    return str(path)


def fuzz_one(seed: int, *, ray: bool, timeout: float, save: Path | None) -> Result:
    """Generate, run and classify config ``seed`` (in a temporary directory)."""
    with tempfile.TemporaryDirectory(prefix=f"vmmfuzz-{seed}-") as tmp:
        case = generate(seed, tmp)
        cfg_path = Path(tmp) / "config.toml"
        cfg_path.write_text(to_toml(case.raw, f"vmmsim fuzz seed {seed}"))
        res = run_case(case, cfg_path, Path(tmp) / "out", ray=ray, timeout=timeout)
        if res.outcome not in ("ok", "refused") and save is not None:
            res.saved = save_failure(case, res, save)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="configs to run (seeds S..S+n-1)")
    ap.add_argument("--seed", type=int, default=0, help="first seed S")
    ap.add_argument("--jobs", type=int, default=1, help="parallel runs (default 1)")
    ap.add_argument("--ray", type=int, default=0, help="also run the first K configs with Ray")
    ap.add_argument("--timeout", type=float, default=180.0, help="seconds before a run is a hang")
    ap.add_argument("--save", default=str(ROOT / "runs" / "fuzz"), help="failing configs dir")
    ap.add_argument("--json", default="", help="write every result as JSON lines here")
    a = ap.parse_args(argv)
    save = Path(a.save)
    seeds = range(a.seed, a.seed + a.n)
    lock = threading.Lock()
    done = [0]
    t0 = time.perf_counter()

    def one(seed: int) -> Result:
        r = fuzz_one(seed, ray=False, timeout=a.timeout, save=save)
        with lock:
            done[0] += 1
            if r.outcome not in ("ok", "refused"):
                print(f"  seed {seed}: {r.outcome}: {r.reason[:160]}", file=sys.stderr)
            if done[0] % 25 == 0:
                el = time.perf_counter() - t0
                print(f"  .. {done[0]}/{a.n} in {el:.0f} s", file=sys.stderr)
        return r

    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        results = list(ex.map(one, seeds))
    wall = time.perf_counter() - t0
    ray_results = []
    for seed, inproc in zip(list(seeds)[: a.ray], results, strict=False):
        r = fuzz_one(seed, ray=True, timeout=max(a.timeout, 300.0), save=save)
        if r.outcome == "ok" and inproc.outcome == "ok" and r.digest != inproc.digest:
            r.outcome, r.reason, r.signature = "crash", "Ray digest != in-process digest", "digest"
        elif r.outcome != inproc.outcome and r.outcome not in ("crash", "hang", "violation"):
            r.reason = f"Ray {r.outcome} but in-process {inproc.outcome}: {r.reason}"
            r.outcome, r.signature = "crash", "ray/inprocess outcome differs"
        ray_results.append(r)
    if a.json:
        with open(a.json, "w") as f:
            for r in results + ray_results:
                d = {k: v for k, v in r.__dict__.items() if k != "stderr"}
                f.write(json.dumps(d) + "\n")

    def counts(rs: list[Result], label: str) -> None:
        kinds = ("ok", "refused", "crash", "violation", "bad-refusal", "hang")
        c = {k: sum(r.outcome == k for r in rs) for k in kinds}
        print(
            f"{label}: runs {len(rs)} / ok {c['ok']} / refused {c['refused']} / crashes "
            f"{c['crash']} / violations {c['violation']} / bad-refusals {c['bad-refusal']} / "
            f"hangs {c['hang']}"
        )

    counts(results, "in-process")
    if results:
        ts = sorted(r.seconds for r in results)
        print(
            f"time per config: mean {sum(ts) / len(ts):.2f} s, median {ts[len(ts) // 2]:.2f} s, "
            f"max {ts[-1]:.2f} s; wall {wall:.0f} s with {a.jobs} job(s)"
        )
    if ray_results:
        counts(ray_results, "ray")
    fails = [r for r in results + ray_results if r.outcome not in ("ok", "refused")]
    refusals: dict[str, list[int]] = {}
    for r in results:
        if r.outcome == "refused":
            refusals.setdefault(r.signature, []).append(r.seed)
    for sig, ss in sorted(refusals.items(), key=lambda kv: -len(kv[1])):
        print(f"refused x{len(ss)} (e.g. seed {ss[0]}): {sig[9:]}")
    groups: dict[str, list[Result]] = {}
    for r in fails:
        groups.setdefault(f"{r.outcome}: {r.signature}", []).append(r)
    if groups:
        print("failure signatures:")
        for sig, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
            print(f"  x{len(rs)} {sig}  (seeds {', '.join(str(r.seed) for r in rs[:8])})")
        print("failures:")
        for r in fails:
            print(f"  seed {r.seed} [{r.mode}] {r.outcome}: {r.reason[:200]} -> {r.saved}")
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
