"""The data sweep.png and the experiment figures draw (:mod:`cluster.report_sweep`):
repeated seeds averaged, one line per value of the other keys, readable labels, y-axes
from zero (issue 17)."""

from __future__ import annotations

import numpy as np
import pytest
from vmmsim.cluster.report_sweep import generic_figure, other_paths, sweep_lines, x_path


def rows_of(taxes, seeds, mems=(None,)):
    out = []
    for tax in taxes:
        for mem in mems:
            for seed in seeds:
                r = {
                    "point": f"tax_rate={tax},seed={seed}",
                    "policy.tax_rate": tax,
                    "simulation.seed": seed,
                    "throughput.web": 0.5 + tax / 2 + seed / 100,
                    "resident_mb.web": 50.0 + seed,
                }
                if mem is not None:
                    r["vms.web.memory_mb"] = mem
                    r["hosts.h.memory_mb"] = mem + 8
                    r["resident_mb.web"] += mem
                out.append(r)
    return out


def test_x_is_the_first_key_that_is_not_the_seed():
    keys = ["simulation.seed", "policy.tax_rate", "vms.web.memory_mb,hosts.h.memory_mb"]
    assert x_path(keys) == "policy.tax_rate"
    assert other_paths(keys, "policy.tax_rate") == ["vms.web.memory_mb"]
    assert x_path(["simulation.seed"]) == "simulation.seed"


def test_repeated_seeds_are_averaged_with_their_range():
    rows = rows_of([0.5, 0.0], [1, 2, 3])
    ((label, x, labels, mean, lo, hi),) = sweep_lines(rows, "policy.tax_rate", [], "throughput.web")
    assert label == "" and x.tolist() == [0.0, 0.5] and labels == ["0", "0.5"]
    np.testing.assert_allclose(mean, [0.52, 0.77])
    np.testing.assert_allclose(lo, [0.51, 0.76])
    np.testing.assert_allclose(hi, [0.53, 0.78])


def test_one_line_per_value_of_the_other_keys():
    rows = rows_of([0.0, 0.5], [1], mems=(4, 5))
    lines = sweep_lines(rows, "policy.tax_rate", ["vms.web.memory_mb"], "resident_mb.web")
    assert [ln[0] for ln in lines] == ["memory_mb=4", "memory_mb=5"]
    for (_, x, _, mean, _, _), mem in zip(lines, (4, 5), strict=True):
        assert x.tolist() == [0.0, 0.5]
        np.testing.assert_allclose(mean, 51.0 + mem)  # not mixed with the other size


def test_non_numeric_x_keeps_sweep_order_on_positions():
    rows = [{"k": v, "throughput.a": 1.0} for v in ("zeta", "alpha", "zeta")]
    ((_, x, labels, mean, _, _),) = sweep_lines(rows, "k", [], "throughput.a")
    assert x.tolist() == [0.0, 1.0] and labels == ["zeta", "alpha"]


@pytest.mark.parametrize("n_points", [3, 40])
def test_sweep_png_axes_start_at_zero_with_upright_readable_labels(n_points):
    taxes = [round(i / n_points, 3) for i in range(n_points)]
    rows = rows_of(taxes, [1, 2])
    fig = generic_figure(rows, ["policy.tax_rate", "simulation.seed"])
    left, right = fig.axes
    assert left.get_ylim() == (0.0, 1.05)
    assert right.get_ylim()[0] == 0.0
    for ax in (left, right):
        ticks = ax.get_xticklabels()
        assert 1 <= len(ticks) <= 12
        assert all(t.get_rotation() == 0 and t.get_fontsize() >= 9 for t in ticks)
        assert ax.get_xlabel() == "policy.tax_rate"
