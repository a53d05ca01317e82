"""Run every benchmark and print one table (figure, physical reference, ratio, target).

Each benchmark script prints JSON lines with ``--json``; this collects them.  Machines are
noisy: every ratio is measured against a reference taken in the same run, on the same
machine, so ratios are comparable across machines while absolute figures are not.

Run: ``python bench/run_all.py [--quick] [--out bench/results.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent

BENCHES = [
    ("bench_host.py", []),
    ("bench_memory.py", []),
    ("bench_migration.py", []),
    ("bench_checkpoint.py", []),
    ("bench_scaling.py", []),
]


def normalise(r: dict) -> dict | None:
    """Rows of every script in one shape: name, value, unit, reference, ratio, target."""
    if "name" in r:
        return r
    if "gb_s" in r:  # bench_checkpoint.py
        return {
            "name": r["figure"],
            "value": r["gb_s"],
            "unit": "GB/s",
            "reference": r["ref_gb_s"],
            "reference_name": r["ref"],
            "ratio": r["ratio"],
            "target": f">= {r['target']}" if r.get("target") else "",
        }
    if "ratio" in r and "figure" in r:
        return {
            "name": r["figure"],
            "value": r["ratio"],
            "unit": "x",
            "reference": 1.0,
            "reference_name": "the original run",
            "ratio": r["ratio"],
            "target": "",
        }
    return None


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB, Python {platform.python_version()}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--skip", nargs="*", default=[], help="benchmark scripts to skip")
    ap.add_argument("--out", type=Path, default=None, help="also write results as JSON")
    a = ap.parse_args()
    rows = []
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    for script, args in BENCHES:
        if script in a.skip or not (HERE / script).exists():
            continue
        t = time.perf_counter()
        r = subprocess.run(
            [sys.executable, str(HERE / script), "--json", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=3600,
        )
        if r.returncode != 0:
            print(f"{script}: FAILED\n{r.stderr[-1500:]}", file=sys.stderr)
            continue
        for line in r.stdout.splitlines():
            if line.startswith("{"):
                row = normalise(json.loads(line))
                if row is not None:
                    row["script"] = script
                    rows.append(row)
        print(f"# {script} done in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    print(f"machine: {machine()}")
    print("| figure | value | reference (same run) | ratio | target |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['name']} | {r['value']:,.3g} {r['unit']} | {r['reference']:,.3g} "
            f"({r['reference_name']}) | {r['ratio']:.2f} | {r['target']} |"
        )
    if a.out:
        a.out.write_text(json.dumps({"machine": machine(), "results": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
