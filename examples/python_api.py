"""vmmsim from Python: one run, its tables, and a small sweep of the idle memory tax.

Run from the repository root after ``pip install -e .``::

    python examples/python_api.py

It runs the quickstart config for 60 simulated seconds in-process (no Ray start-up),
prints per-VM means from the metrics table, then sweeps the idle memory tax over two
values (90 s each: the tax acts once a sampling period has closed).
"""

from __future__ import annotations

import pyarrow.compute as pc

import vmmsim


def main() -> None:
    r = vmmsim.run(
        "configs/quickstart.toml",
        overrides=["simulation.duration_s=60"],
        backend="inprocess",
    )
    print(f"{r.metrics.num_rows} metric rows, final digest {r.final_digest[:16]}")
    per_vm = r.metrics.group_by("vm").aggregate(
        [("resident_mb", "mean"), ("shared_mb", "mean"), ("throughput", "mean")]
    )
    for row in per_vm.sort_by("vm").to_pylist():
        print(
            f"  {row['vm']:<10} resident {row['resident_mb_mean']:7.1f} MB"
            f"  shared {row['shared_mb_mean']:6.1f} MB  throughput {row['throughput_mean']:.3f}"
        )
    print(f"  peak host free memory: {pc.max(r.metrics['host_free_mb']).as_py():.1f} MB")

    points = vmmsim.sweep(
        "configs/quickstart.toml",
        {"policy.tax_rate": [0.0, 0.75]},
        overrides=["simulation.duration_s=90"],
        backend="inprocess",
    )
    for row in points.to_pylist():
        print(f"  tax {row['policy.tax_rate']:.2f}: digest {row['final_digest'][:16]}")


if __name__ == "__main__":
    main()
