"""The data each plot of ``vmmsim report RUN_DIR`` draws (helper functions returning
arrays, not pixels) and the text summary: issue 17's plot items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from runkit import run_inprocess, small_config
from vmmsim.cluster import report_plots as rp
from vmmsim.cluster.cli import main
from vmmsim.cluster.report import plural, run_summary, state_shares
from vmmsim.cluster.run_data import RunData, load_run

# --------------------------------------------------------------------------- builders


def fake_run(
    n_ticks: int = 60,
    vms: dict[str, str] | None = None,
    *,
    memory_mb: float = 100.0,
    sample_period_s: float = 10.0,
    cols: dict[str, np.ndarray] | None = None,
    migrations: list[dict] | None = None,
    base: dict[str, str] | None = None,
) -> RunData:
    """A RunData of ``vms`` (name -> host) over ``n_ticks`` 1 s ticks; every column 0 but
    throughput 1, the rest from ``cols`` (arrays of shape (n_vms, n_ticks))."""
    vms = vms or {"a": "h0"}
    names = list(vms)
    n = len(names)
    c: dict[str, np.ndarray] = {
        "tick": np.tile(np.arange(n_ticks), n),
        "time_s": np.tile(np.arange(n_ticks, dtype=float), n),
        "vm": np.repeat(np.array(names, dtype=object), n_ticks),
        "host": np.repeat(np.array([vms[v] for v in names], dtype=object), n_ticks),
        "host_state": np.full(n * n_ticks, "high", dtype=object),
        "blocked": np.zeros(n * n_ticks, dtype=bool),
        "throughput": np.ones(n * n_ticks),
    }
    for k in (
        "resident_mb",
        "shared_mb",
        "zero_shared_mb",
        "ballooned_mb",
        "swapped_mb",
        "target_mb",
        "active_est",
        "active_true",
        "host_free_mb",
        "host_saved_mb",
    ):
        c[k] = np.zeros(n * n_ticks)
    for k, v in (cols or {}).items():
        c[k] = np.asarray(v).reshape(-1)
    base = base or {}
    config = {
        "vms": [{"name": v, "memory_mb": memory_mb, "base_name": base.get(v, v)} for v in names],
        "policy": {"sample_period_s": sample_period_s},
    }
    summary = {"tick_s": 1.0, "hosts": {h: {} for h in set(vms.values())}}
    return RunData(Path("fake"), c, summary, config, migrations or [])


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A two-host run of 30 s (overcommitted: ballooning, swapping and sharing)."""
    return run_inprocess(tmp_path_factory.mktemp("run"), small_config(duration_s=30))[1]


# --------------------------------------------------------------------------- throughput.png


@pytest.mark.parametrize("win", [1, 2, 5, 30, 31, 100])
@pytest.mark.parametrize("trailing", [False, True])
def test_moving_mean_of_constant_data_is_the_data_at_the_edges_too(win, trailing):
    """Issue 17's "done when": np.convolve(mode="same") padded with zeros, so constant
    throughput 1.0 dropped to ~0.5 in the first and last 15 s."""
    y = np.full(60, 0.8)
    np.testing.assert_allclose(rp.moving_mean(y, win, trailing=trailing), y, rtol=1e-12)


@pytest.mark.parametrize("trailing", [False, True])
def test_moving_mean_is_the_mean_of_the_samples_in_the_window(trailing):
    y = np.random.default_rng(1).random(40)
    win = 7
    got = rp.moving_mean(y, win, trailing=trailing)
    for i in range(len(y)):
        lo = i - win + 1 if trailing else i - win // 2
        want = y[max(0, lo) : lo + win].mean()
        assert got[i] == pytest.approx(want), i


def test_throughput_lines_keep_full_throughput_at_the_edges_and_label_groups():
    d = fake_run(
        90, {"web-0": "h0", "web-1": "h0", "solo": "h1"}, base={"web-0": "web", "web-1": "web"}
    )
    lines = rp.throughput_lines(d)
    assert [label for label, _, _ in lines] == ["solo", "web (2 VMs)"]  # no "(mean of 1)"
    for _, t, tp in lines:
        assert len(t) == 90
        np.testing.assert_allclose(tp, 1.0)  # first and last 15 s included


# --------------------------------------------------------------------------- active.png


def test_true_active_is_left_out_until_the_first_sampling_period_closes():
    true = np.zeros((2, 40))
    true[0, 10:] = 0.5  # "a" runs 10 ticks: its first period closes at the start of tick 10
    true[1, 11:] = 0.25  # "b" was blocked for one tick: one tick later
    blocked = np.zeros((2, 40), dtype=bool)
    blocked[1, 3] = True
    d = fake_run(
        40,
        {"a": "h0", "b": "h0"},
        cols={"active_true": true, "resident_mb": np.full((2, 40), 40.0), "blocked": blocked},
    )
    assert np.flatnonzero(rp.true_active_defined(d, "a"))[0] == 10
    assert np.flatnonzero(rp.true_active_defined(d, "b"))[0] == 11
    t, tr, est = rp.active_lines(d, ["a"])
    assert np.isnan(tr[:10]).all() and tr[10:] == pytest.approx(20.0)
    _, tr2, _ = rp.active_lines(d, ["a", "b"])  # a group: defined once every member is
    assert np.isnan(tr2[:11]).all() and tr2[11:] == pytest.approx(30.0)


def test_true_active_period_follows_a_scheduled_change():
    d = fake_run(40, sample_period_s=20.0)
    d.config["events"] = [{"time_s": 5.0, "set": {"policy.sample_period_s": 8.0}}]
    assert np.flatnonzero(rp.true_active_defined(d, "a"))[0] == 8


def test_true_active_defined_matches_a_real_run(real_run):
    d = load_run(real_run)
    for v in d.vms:
        _, true = d.vm_series(v, "active_true")
        first_measured = int(np.flatnonzero(true != 0)[0])
        assert int(np.flatnonzero(rp.true_active_defined(d, v))[0]) == first_measured, v


# --------------------------------------------------------------------------- memory.png


def test_memory_stack_adds_up_to_memory_mb_with_untouched_memory():
    res = np.linspace(10, 60, 30)
    d = fake_run(
        30,
        cols={
            "resident_mb": res,
            "shared_mb": res / 4,
            "ballooned_mb": np.full(30, 20.0),
            "swapped_mb": np.full(30, 5.0),
        },
    )
    t, layers = rp.memory_stack(d, ["a"])
    assert list(layers) == list(rp.MEM_LAYERS)
    np.testing.assert_allclose(sum(layers.values()), 100.0)
    np.testing.assert_allclose(layers["untouched"], 100.0 - res - 25.0)
    np.testing.assert_allclose(layers["private"], res * 0.75)


def test_memory_stack_of_a_real_run_adds_up(real_run):
    d = load_run(real_run)
    mem = {v["name"]: v["memory_mb"] for v in d.config["vms"]}
    for v in d.vms:
        _, layers = rp.memory_stack(d, [v])
        np.testing.assert_allclose(sum(layers.values()), mem[v])
        assert layers["untouched"].max() > 0 or layers["ballooned"].max() > 0


def test_memory_panels_share_a_y_scale_and_name_their_hosts():
    d = fake_run(10, {"b": "h1", "a": "h0", "c": "h1"})
    units = rp._units(d)
    assert [u[0] for u in units] == ["a", "b", "c"]
    tops, how = rp.memory_ylims(d, units)
    assert tops == [100.0] * 3 and how == "one y-scale for all panels"
    assert rp._panel_title("b", ["b"], rp.unit_hosts(d, ["b"])) == "b @ h1"


def test_memory_ylims_per_host_when_sizes_differ_much():
    d = fake_run(10, {"big": "h0", "small": "h1"})
    d.config["vms"][0]["memory_mb"] = 1000.0
    tops, how = rp.memory_ylims(d, rp._units(d))
    assert tops == [1000.0, 100.0] and how == "one y-scale per host"


def test_migrations_are_marked_on_the_migrated_vm():
    hosts = np.array([["h0"] * 20 + ["h1"] * 20], dtype=object)
    migrations = [
        {"vm": "a", "destination": "h1", "status": "completed", "start_tick": 17, "end_tick": 20},
        {"vm": "b", "destination": "h1", "status": "refused", "start_tick": 30, "end_tick": 30},
    ]
    d = fake_run(40, {"a": "h0"}, cols={"host": hosts}, migrations=migrations)
    assert rp.migration_marks(d, ["a"]) == [(20.0, "→ h1", "completed")]
    assert rp.migration_marks(d, ["b"]) == [(30.0, "refused (h1)", "refused")]
    assert rp.unit_hosts(d, ["a"]) == ["h0", "h1"]
    assert rp._panel_title("a", ["a"], ["h0", "h1"]) == "a @ h0 → h1"


# --------------------------------------------------------------------------- hosts.png


def test_host_states_go_from_calm_to_alarming():
    assert rp.STATES == ("high", "soft", "hard", "low")
    assert rp.state_codes(["low", "high", "hard", "soft"]) == [3, 0, 2, 1]
    # redness (red minus green) grows with severity: low, the most severe, is the reddest
    redness = [to_rgb(rp.STATE_COLORS[s])[0] - to_rgb(rp.STATE_COLORS[s])[1] for s in rp.STATES]
    assert redness == sorted(redness) and len(set(redness)) == 4


@pytest.mark.parametrize("n", [1, 2, 4, 9])
def test_host_lines_differ_so_identical_lines_stay_visible(n):
    styles = rp.host_line_styles(n, 120)
    assert len({(s["ls"], s["marker"]) for s in styles}) == n
    assert len({s["markevery"] for s in styles}) == n  # markers staggered
    widths = [s["lw"] for s in styles]
    assert widths == sorted(widths, reverse=True)  # earlier lines wider, under later ones


# --------------------------------------------------------------------------- sharing.png


def test_sharing_draws_saved_over_time():
    saved = np.linspace(0, 30, 20)
    d = fake_run(20, cols={"host_saved_mb": saved, "shared_mb": saved * 2})
    ((host, t, lines),) = rp.sharing_lines(d)
    assert host == "h0" and set(lines) == {"shared", "zero", "saved"}
    np.testing.assert_allclose(lines["saved"], saved)
    assert rp.has_sharing(d)


def test_sharing_off_says_no_sharing(tmp_path):
    d = fake_run(20)
    assert not rp.has_sharing(d)
    fig_path = rp._sharing(d, tmp_path / "sharing.png")
    assert fig_path.read_bytes()[:4] == b"\x89PNG"


def test_every_plot_of_a_real_run(real_run, capsys):
    assert main(["report", str(real_run)]) == 0
    out = capsys.readouterr().out
    for name in ("memory", "hosts", "active", "throughput", "sharing"):
        assert (real_run / "plots" / f"{name}.png").stat().st_size > 5000, name
        assert f"{name}.png" in out


# --------------------------------------------------------------------------- text report


def test_plural():
    assert [plural(1, "host"), plural(2, "host"), plural(0, "VM")] == ["1 host", "2 hosts", "0 VMs"]


def test_states_listed_high_soft_hard_low():
    ticks = {"hard": 5, "high": 83, "low": 1, "soft": 11}  # summary.json: alphabetical
    assert state_shares(ticks) == "high 83% soft 11% hard 5% low 1%"
    assert state_shares({"low": 0, "high": 4}) == "high 100%"
    assert state_shares({"hard": 1, "high": 999}) == "high 100% hard <1%"


def test_run_summary_labels_what_each_number_is(real_run):
    d = load_run(real_run)
    d.summary["hosts"] = {k: v for k, v in list(d.summary["hosts"].items())[:1]}
    text = run_summary(d)
    assert ", 1 host, " in text and "1 hosts" not in text
    assert "memory at the end of the run" in text
    assert "means per VM over the second half of the run (15-30 s" in text
