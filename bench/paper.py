"""Regenerate the paper comparison: run every experiment config, plot, print the table.

Runs each ``configs/esx_fig*.toml`` in-process (``vmmsim run ... --inprocess`` in a child
process, up to ``--jobs`` at a time), makes its plots (``vmmsim report``), copies the
figure PNGs into ``docs/`` and prints one Markdown table: the paper's number, vmmsim's,
and the difference, per quantity.  With ``--write`` the table also replaces the block
between the ``paper.py`` markers in ``docs/paper.md``, and its key rows the one in
``README.md`` -- those tables are this output, never hand-written.

Rows marked ``5+`` go beyond the paper: its fig. 5 deployments under a later ESX
mechanism (sharing salts), with the direction expected.  Rows marked ``18`` (issue 18):
later mechanisms, each in its own experiment -- vSphere 6's five free-memory states beside
the paper's four on a small and a large host; large pages (fig. 4's VMs in
``configs/esx_large_pages.toml``); fig. 4's VMs on a KVM-style host (Linux KSM,
``configs/kvm_ksm.toml``) beside the ESX scan, and free page reporting on fig. 8's host;
memory compression and a swap cache.

Paper numbers are Waldspurger, "Memory Resource Management in VMware ESX Server", OSDI
2002 (figs. 2, 4, 5, 6, 7, 8 and their text).  Where the paper gives a shape and no
number, the paper column says so and the difference is left empty.

    python bench/paper.py                   # all experiments, table on stdout
    python bench/paper.py --only fig4 fig5  # a subset
    python bench/paper.py --write           # also update README.md, docs/paper.md, docs/*.png
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

import vmmsim

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- paper.py: begin -->", "<!-- paper.py: end -->"
#: Files whose marker block holds the table (``--write``).
DOCS = (ROOT / "README.md", ROOT / "docs" / "paper.md")


@dataclass(frozen=True)
class Row:
    """One compared quantity: the paper's value (number or words) and ours."""

    fig: str
    quantity: str
    paper: float | str
    ours: float
    unit: str = ""
    #: also in the README's short table (the full one is in docs/paper.md)
    key: bool = False

    def cells(self) -> list[str]:
        ours = f"{self.ours:.1f}{self.unit}"
        if isinstance(self.paper, str):
            return [self.fig, self.quantity, self.paper, ours, ""]
        diff = self.ours - self.paper
        return [self.fig, self.quantity, f"{self.paper:g}{self.unit}", ours, f"{diff:+.1f}"]


@dataclass(frozen=True)
class Experiment:
    name: str
    #: config files in ``configs/``, each optionally followed by ``--set`` overrides
    #: (``"esx_fig5a_windows.toml policy.share_salting=2"``)
    configs: tuple[str, ...]
    rows: Callable[[list[Path]], list[Row]]
    #: plot file in the run's ``plots/`` -> name under ``docs/``
    pngs: tuple[tuple[str, str], ...] = ()


# ---------------------------------------------------------------------------- reading runs
def sweep_rows(d: Path) -> list[dict]:
    return pq.read_table(d / "sweep.parquet").to_pylist()


def columns(run: vmmsim.Run) -> dict[str, np.ndarray]:
    """A run's metrics (``vmmsim.load_run``) as numpy columns."""
    t = run.metrics
    return {c: t.column(c).to_numpy(zero_copy_only=False) for c in t.column_names}


def vm_mb(run: vmmsim.Run) -> float:
    """Configured memory of all the run's VMs, MB."""
    return sum(v["memory_mb"] for v in run.config["vms"])


def vm_mean(m: dict[str, np.ndarray], col: str, vm: str, t0: float, t1: float) -> float:
    sel = (m["vm"] == vm) & (m["time_s"] >= t0) & (m["time_s"] < t1)
    return float(m[col][sel].mean()) if sel.any() else float("nan")


# ---------------------------------------------------------------------------- experiments
def fig2(dirs: list[Path]) -> list[Row]:
    rows = sorted(sweep_rows(dirs[0]), key=lambda r: r["vms.configured.memory_mb"])
    paper = {128: -4.4, 224: -1.4}
    out = []
    for r in rows:
        size = r["vms.configured.memory_mb"]
        gap = 100.0 * (r["throughput.ballooned"] / r["throughput.configured"] - 1.0)
        out.append(
            Row(
                "2",
                f"ballooned vs configured, {size} MB",
                paper.get(size, "--"),
                gap,
                "%",
                size in paper,
            )
        )
    for r in rows:  # the control: what the balloon left the guest (the paper: exactly X)
        size = r["vms.configured.memory_mb"]
        left = 256.0 - r["ballooned_mb.ballooned"]
        out.append(Row("2", f"ballooned VM's memory left, {size} MB", float(size), left, " MB"))
    for r in rows:
        size = r["vms.configured.memory_mb"]
        gap = 100.0 * (r["throughput.swapped"] / r["throughput.ballooned"] - 1.0)
        out.append(Row("2", f"VMM-swapped vs ballooned, {size} MB", "below", gap, "%"))
    return out


def fig4(dirs: list[Path]) -> list[Row]:
    by_n = {r["n_vms"]: r for r in sweep_rows(dirs[0])}
    one, two, ten = by_n[1], by_n[2], by_n[max(by_n)]
    zero_part = 100.0 * one["zero_shared_mb"] / one["shared_mb"] if one["shared_mb"] else 0.0
    return [
        Row("4", "1 VM: shared MB", 5.0, one["shared_mb"], " MB", True),
        Row("4", "1 VM: zero pages in shared", "> 50%", zero_part, "%"),
        Row("4", "2 VMs: shared", "rising, < 67%", two["shared_pct"], "%", True),
        Row("4", "5 VMs: shared", "rising, < 67%", by_n.get(5, ten)["shared_pct"], "%"),
        Row("4", f"{max(by_n)} VMs: shared", 67.0, ten["shared_pct"], "%", True),
        Row("4", f"{max(by_n)} VMs: saved", 60.0, ten["saved_pct"], "%", True),
    ]


FIG5_PAPER = {"a": (42.9, 32.9), "b": (29.2, 18.7), "c": (10.0, 7.2)}


def fig5(dirs: list[Path]) -> list[Row]:
    out = []
    for d, (key, (shared, saved)) in zip(dirs, FIG5_PAPER.items(), strict=True):
        r = vmmsim.load_run(d)
        tot, mb = r.summary["totals"], vm_mb(r)
        out.append(Row("5", f"({key}) shared", shared, 100.0 * tot["shared_mb"] / mb, "%", True))
        out.append(Row("5", f"({key}) reclaimed", saved, 100.0 * tot["saved_mb"] / mb, "%", True))
    return out


def fig6(dirs: list[Path]) -> list[Row]:
    m = columns(vmmsim.load_run(dirs[0]))
    t = m["time_s"]
    est_mb = m["active_est"] * m["resident_mb"]
    true_mb = m["active_true"] * m["resident_mb"]
    # The toucher steps its working set every 300 s; per step up, seconds until the
    # estimate reaches 90% of the new truth; after the last drop, the estimate 280 s on.
    out = []
    for start in (300, 900):
        sel = (t >= start) & (t < start + 300)
        truth = float(np.median(true_mb[sel][-60:]))
        hit = np.flatnonzero(est_mb[sel] >= 0.9 * truth)
        lag = float(t[sel][hit[0]] - start) if len(hit) else float("inf")
        out.append(
            Row("6", f"step up at {start} s: s to 90% of truth", "1-2 periods", lag, " s", True)
        )
    sel = t == 1200 + 280
    out.append(
        Row(
            "6", "220 -> 40 MB: estimate 280 s later", "decays slowly", float(est_mb[sel][0]), " MB"
        )
    )
    return out


def fig7(dirs: list[Path]) -> list[Row]:
    r = vmmsim.load_run(dirs[0])
    cfg, m = r.config, columns(r)
    switch = min(e["time_s"] for e in cfg.get("events", []))
    end = float(m["time_s"].max()) + 1.0
    names = sorted(set(m["vm"].tolist()))
    idle = next(n for n in names if "idle" in n)
    active = next(n for n in names if n != idle)
    before = (switch / 2, switch)
    after = (switch + (end - switch) / 2, end)
    thr0 = vm_mean(m, "throughput", active, *before)
    thr1 = vm_mean(m, "throughput", active, *after)

    def mem(vm: str, span: tuple[float, float]) -> float:
        return vm_mean(m, "resident_mb", vm, *span)

    return [
        Row("7", "tax 0: idle VM memory", 179.0, mem(idle, before), " MB", True),
        Row("7", "tax 0: active VM memory", 179.0, mem(active, before), " MB"),
        Row("7", "tax 75%: idle VM memory", "falls", mem(idle, after), " MB", True),
        Row("7", "tax 75%: active VM memory", "rises", mem(active, after), " MB", True),
        Row("7", "active VM throughput gain", "> 30%", 100.0 * (thr1 / thr0 - 1.0), "%", True),
    ]


def fig8(dirs: list[Path]) -> list[Row]:
    """Seconds per host state, the SQL Server VM's allocation while idle and after its
    query (its `phased` list is [warm-up, idle, query]: no hard-coded times), how long it
    takes to get its memory back, and the host's sharing and swap at the end."""
    r = vmmsim.load_run(dirs[0])
    s, cfg, m = r.summary, r.config, columns(r)
    (host,) = s["hosts"].values()
    tick_s = float(s["tick_s"])
    period = float(cfg["policy"]["sample_period_s"])
    total_mb = vm_mb(r)
    overhead = float(cfg["policy"]["vm_overhead_mb"]) * len(cfg["vms"])
    sql = next(v for v in cfg["vms"] if "sql" in v["name"])
    phases = sql["workload"]["phases"]
    idle0 = float(phases[0][0])
    query0 = idle0 + float(phases[1][0])
    end = float(m["time_s"].max()) + tick_s
    sel = m["vm"] == sql["name"]
    ts, res = m["time_s"][sel], m["resident_mb"][sel]

    def mean(t0: float, t1: float) -> float:
        return float(res[(ts >= t0) & (ts < t1)].mean())

    idle_start = mean(idle0, idle0 + period)  # the idle phase's first sampling period
    idle_end = mean(query0 - 2 * period, query0)  # the last minute before the query
    after = mean(query0 + 10 * period, end)  # settled: from 300 s after the query on
    got = np.flatnonzero((ts >= query0) & (res >= 0.9 * after))
    recover = float(ts[got[0]] - query0) if len(got) else float("inf")
    st = host["state_ticks"]
    over = 100.0 * ((total_mb + overhead) / host["memory_mb"] - 1.0)
    both = "passes through soft and hard"
    return [
        Row("8", "VM memory + overhead beyond host memory", "~60% (recollection)", over, "%"),
        Row("8", "host in high", "--", st["high"] * tick_s, " s"),
        Row("8", "host in soft", both, st["soft"] * tick_s, " s", True),
        Row("8", "host in hard", both, st["hard"] * tick_s, " s", True),
        Row("8", "host in low", "--", st["low"] * tick_s, " s"),
        Row("8", "SQL VM memory, idle phase starts", "--", idle_start, " MB"),
        Row("8", "SQL VM memory, end of idle phase", "falls while idle", idle_end, " MB", True),
        Row("8", "SQL VM memory after its query", "rises again", after, " MB"),
        Row("8", "SQL VM: query start to 90% of that", "a few periods", recover, " s", True),
        Row("8", "host saved by sharing at end", "--", host["saved_mb"], " MB"),
        Row("8", "host VMM swap used at end", "--", host["swap_used_mb"], " MB"),
    ]


FIG5 = ("esx_fig5a_windows.toml", "esx_fig5b_linux.toml", "esx_fig5c_linux.toml")


def salting(dirs: list[Path]) -> list[Row]:
    """Fig. 5's deployments again with ``share_salting = 2`` (each VM its own salt, ESX's
    default since 2014), beside the default run: only intra-VM sharing is left."""
    out = []
    n = len(FIG5)
    for key, inter, intra in zip("abc", dirs[:n], dirs[n:], strict=True):
        runs = [vmmsim.load_run(d) for d in (inter, intra)]
        pct = [100.0 * r.summary["totals"]["saved_mb"] / vm_mb(runs[0]) for r in runs]
        what = f"({key}) reclaimed, salting 2 (0 and 1: {pct[0]:.1f}%)"
        out.append(Row("5+", what, "intra-VM only: lower", pct[1], "%", True))
    return out


STATES = ("vsphere6_states.toml", "vsphere6_states.toml policy.free_states=vsphere6")


def _host_states(run: vmmsim.Run) -> dict[str, dict]:
    """Per host: memory, the first tick of each state and the free % of memory one tick
    before it (the last free seen before the state was entered), and the peak balloon
    and VMM swap over its VMs (MB)."""
    m = columns(run)
    out = {}
    for h, hs in run.summary["hosts"].items():
        sel = m["host"] == h
        ticks, first = np.unique(m["tick"][sel], return_index=True)
        state, free = m["host_state"][sel][first], m["host_free_mb"][sel][first]
        pct = 100.0 * free / hs["memory_mb"]
        enter = {}
        for i, st in enumerate(state.tolist()):
            if st not in enter and i:
                enter[st] = (float(ticks[i]), float(pct[i - 1]))

        def peak(col: str, sel: np.ndarray = sel) -> float:
            return float(np.bincount(m["tick"][sel], m[col][sel]).max())

        out[h] = {
            "mb": hs["memory_mb"],
            "enter": enter,
            "balloon": peak("ballooned_mb"),
            "swap": peak("swapped_mb"),
        }
    return out


def states(dirs: list[Path]) -> list[Row]:
    """The same growing pressure on a 4 GB and a 64 GB host under the paper's four states
    and vSphere 6's five (``policy.free_states``): the free % of memory at which each
    enters clear and soft (measured one tick before), when, and what reclamation ran."""
    from vmmsim.hosts.min_free import min_free_mb

    paper, v6 = (_host_states(vmmsim.load_run(d)) for d in dirs)
    out = []
    for h in sorted(paper, key=lambda h: paper[h]["mb"]):  # small host first
        p, f = paper[h], v6[h]
        gb = f"{p['mb'] / 1024:g} GB"
        mf = 100.0 * float(min_free_mb(p["mb"])) / p["mb"]
        nan = (float("nan"), float("nan"))
        soft_p, soft_f = p["enter"].get("soft", nan), f["enter"].get("soft", nan)
        clear = f["enter"].get("clear", nan)
        out += [
            Row("18", f"{gb}: free % entering soft, esx2002", "4 (threshold)", soft_p[1], "%"),
            Row(
                "18", f"{gb}: free % entering clear, vsphere6", f"{mf:.2f} (minFree)", clear[1], "%"
            ),
            Row(
                "18",
                f"{gb}: free % entering soft, vsphere6",
                f"{0.64 * mf:.2f} (64%)",
                soft_f[1],
                "%",
            ),
            Row(
                "18",
                f"{gb}: s until clear, vsphere6 (esx2002 soft: {soft_p[0]:g} s)",
                "earlier on large hosts (issue 18)",
                clear[0],
                " s",
                True,
            ),
            Row(
                "18",
                f"{gb}: s until soft, vsphere6 (esx2002: {soft_p[0]:g} s)",
                "--",
                soft_f[0],
                " s",
            ),
            Row(
                "18",
                f"{gb}: peak balloon, vsphere6 (esx2002: {p['balloon']:.0f} MB)",
                "--",
                f["balloon"],
                " MB",
            ),
            Row(
                "18",
                f"{gb}: peak VMM swap, vsphere6 (esx2002: {p['swap']:.0f} MB)",
                "--",
                f["swap"],
                " MB",
            ),
        ]
    return out


LARGE = "esx_large_pages.toml"


def large_pages(dirs: list[Path]) -> list[Row]:
    """Fig. 4's VMs with large pages (``policy.large_pages``): off; on with the toucher
    idle (no pressure); on with the toucher taking the free memory at 120 s (pressure
    breaks the large pages, from the soft state on)."""
    off, idle, pressed = (vmmsim.load_run(d) for d in dirs)
    host = pressed.summary["hosts"]["esx"]
    m = columns(pressed)
    before = float(m["host_saved_mb"][m["tick"] == 119][0])
    first = host["large_pages"]["first_break_s"]
    tot = [r.summary["totals"] for r in (off, idle, pressed)]
    saved = m["host_saved_mb"]
    rose = float(m["time_s"][np.argmax(saved >= 0.9 * saved[-1])]) if saved[-1] > 0 else np.nan
    return [
        Row("18", "saved by sharing, large pages off", "--", tot[0]["saved_mb"], " MB"),
        Row("18", "saved, large pages, no pressure", "near zero", tot[1]["saved_mb"], " MB", True),
        Row("18", "saved, large pages, before pressure (119 s)", "near zero", before, " MB"),
        Row(
            "18",
            "saved, large pages, after pressure",
            "rises (as off)",
            tot[2]["saved_mb"],
            " MB",
            True,
        ),
        Row(
            "18",
            "shared, large pages off / after pressure",
            f"{tot[0]['shared_mb']:.1f} MB (off)",
            tot[2]["shared_mb"],
            " MB",
        ),
        Row(
            "18",
            "first large page broken (pressure from 120 s)",
            "after 120 s",
            first if first is not None else float("nan"),
            " s",
            True,
        ),
        Row("18", "saved reached 90% of its end value", "once pages break", rose, " s"),
        Row("18", "large pages broken by the end", "--", float(host["large_pages"]["broken"]), ""),
    ]


KVM_FPR = "esx_fig8_realloc.toml policy.free_page_reporting=true"


def _point(d: Path, n: int) -> dict:
    """summary.json's host of sweep point ``vms.linux.count = n`` in ``d``."""
    (host,) = vmmsim.load_run(d / f"count={n}").summary["hosts"].values()
    return host


def kvm(dirs: list[Path]) -> list[Row]:
    """A KVM-style host (issue 18 item 6): fig. 4's VMs under Linux KSM at fig. 4's host
    scan rate (4000 pages/s; ESX: 400 per VM, 4000 per host), KSM's counters, zero pages
    set apart with use_zero_pages, and what free page reporting returns on fig. 8's
    overcommitted host."""
    esx_d, ksm_d, zero_d, plain_d, fpr_d = dirs
    esx = {r["n_vms"]: r for r in sweep_rows(esx_d)}
    ksm = {r["n_vms"]: r for r in sweep_rows(ksm_d)}
    out = []
    for n in sorted(ksm):
        what = f"{n} VMs: saved, KSM (ESX scan: {esx[n]['saved_mb']:.1f} MB)"
        out.append(Row("18", what, "close to ESX's", ksm[n]["saved_mb"], " MB", n == 10))
    top = max(ksm)
    for n in (min(ksm), top):  # 1 VM: KSM scans it 10x faster; 10 VMs: the same rate
        t_esx = _point(esx_d, n)["time_to_90pct_sharing_s"]
        t_ksm = _point(ksm_d, n)["time_to_90pct_sharing_s"]
        what = f"{n} VMs: s to 90% of peak sharing, KSM (ESX scan: {t_esx:.0f} s)"
        expect = "later: 2 visits at 1x the rate" if n == top else "earlier: 10x the rate"
        out.append(Row("18", what, expect, t_ksm, " s"))
    k = _point(ksm_d, top)["ksm"]
    mb = 4096 / 2**20
    out += [
        Row("18", f"{top} VMs: KSM pages_shared", "--", k["pages_shared"] * mb, " MB"),
        Row("18", f"{top} VMs: KSM pages_sharing (saved)", "--", k["pages_sharing"] * mb, " MB"),
        Row("18", f"{top} VMs: KSM pages_unshared", "--", k["pages_unshared"] * mb, " MB"),
        Row("18", f"{top} VMs: KSM pages_volatile", "--", k["pages_volatile"] * mb, " MB"),
        Row("18", f"{top} VMs: KSM full_scans in 240 s", "--", float(k["full_scans"])),
    ]
    z = _point(zero_d, top)
    out.append(
        Row(
            "18",
            f"{top} VMs, use_zero_pages: pages_sharing (saved {z['saved_mb']:.1f} MB)",
            "lower: zero pages set apart",
            z["ksm"]["pages_sharing"] * mb,
            " MB",
        )
    )
    base = vmmsim.load_run(plain_d).summary
    fpr = vmmsim.load_run(fpr_d).summary
    (host,) = fpr["hosts"].values()
    (h0,) = base["hosts"].values()
    out.append(
        Row("18", "fig. 8 host: reported by free page reporting", "> 0", host["reported_mb"], " MB")
    )
    out.append(
        Row(
            "18",
            f"fig. 8 host: swap used at end, reporting on (off: {h0['swap_used_mb']:.1f} MB)",
            "not higher",
            host["swap_used_mb"],
            " MB",
        )
    )
    return out


#: Issue 18's swap tiers: one overcommitted host, at two loads (the config's 44 MB working
#: sets, and 52 MB), each run as is, with ESX compression, zswap, and a 32 MB swap cache.
COMPRESSION_MODES = ("off", "policy.compression=esx", "policy.compression=zswap")
COMPRESSION_MODES += ("policy.swap_cache_mb=32",)
COMPRESSION_LOADS = ("", "vms.db.workload.wss_mb=52")
COMPRESSION = tuple(
    " ".join(["esx_compression.toml", *(x for x in (load, mode) if x and x != "off")])
    for load in COMPRESSION_LOADS
    for mode in COMPRESSION_MODES
)


def compression(dirs: list[Path]) -> list[Row]:
    """Disk swap-ins and throughput of :data:`COMPRESSION`'s runs: each tier against the
    same load with compression off and no swap cache (the expected direction: fewer disk
    faults; issue 18)."""
    out = []
    n = len(COMPRESSION_MODES)
    for li, load in enumerate(("44 MB WSS", "52 MB WSS")):
        stats = []
        for d in dirs[li * n : (li + 1) * n]:
            m = columns(vmmsim.load_run(d))
            ts = np.unique(m["time_s"])
            secs = len(ts) * float(ts[1] - ts[0])
            per_vm_s = len(np.unique(m["vm"])) * secs
            stats.append(
                (
                    m["faults_vmm_swap"].sum() / per_vm_s,
                    (m["decompressions"].sum() + m["faults_swap_cache"].sum()) / per_vm_s,
                    100.0 * float(m["throughput"].mean()),
                )
            )
        off = stats[0]
        for (what, expect), (disk, fast, tp) in zip(
            (
                ("off", "--"),
                ("esx compression", "fewer than off"),
                ("zswap", "fewer than off"),
                ("32 MB swap cache", "fewer than off"),
            ),
            stats,
            strict=True,
        ):
            key = what == "esx compression"
            tail = "" if what == "off" else f" (off {off[0]:.0f}; fast-tier {fast:.0f}/s)"
            what_disk = f"{load}, {what}: disk swap-ins/s/VM{tail}"
            out.append(Row("18", what_disk, expect, disk, "", key))
            out.append(Row("18", f"{load}, {what}: throughput (off {off[2]:.1f}%)", "--", tp, "%"))
    return out


EXPERIMENTS = (
    Experiment(
        "fig2",
        ("esx_fig2_balloon.toml",),
        fig2,
        (("throughput_vs_memory.png", "fig2_balloon.png"),),
    ),
    Experiment(
        "fig4", ("esx_fig4_sharing.toml",), fig4, (("sharing_vs_vms.png", "fig4_sharing.png"),)
    ),
    Experiment("fig5", FIG5, fig5),
    Experiment("salting", (*FIG5, *(f"{c} policy.share_salting=2" for c in FIG5)), salting),
    Experiment("states", STATES, states),
    Experiment(
        "large_pages",
        (f"{LARGE} policy.large_pages=false", f"{LARGE} vms.toucher.workload.touch_rate=0", LARGE),
        large_pages,
    ),
    Experiment(
        "kvm",
        (
            "esx_fig4_sharing.toml",
            "kvm_ksm.toml",
            "kvm_ksm.toml policy.ksm_use_zero_pages=true",
            "esx_fig8_realloc.toml",
            KVM_FPR,
        ),
        kvm,
    ),
    Experiment("compression", COMPRESSION, compression),
    Experiment("fig6", ("esx_fig6_wss.toml",), fig6, (("active.png", "fig6_wss.png"),)),
    Experiment("fig7", ("esx_fig7_tax.toml",), fig7, (("events.png", "fig7_tax.png"),)),
    Experiment(
        "fig8",
        ("esx_fig8_realloc.toml",),
        fig8,
        (("memory.png", "fig8_realloc_memory.png"), ("hosts.png", "fig8_realloc_hosts.png")),
    ),
)


# ---------------------------------------------------------------------------- running
def split_entry(entry: str) -> tuple[str, list[str]]:
    """``"file.toml key=value ..."`` -> the file and its overrides."""
    name, *overrides = entry.split()
    return name, overrides


def run_config(entry: str, out: Path) -> Path:
    """``vmmsim run`` + ``vmmsim report`` of one config entry into ``out/<stem>[__key=v]``."""
    name, overrides = split_entry(entry)
    d = out / "__".join([Path(name).stem, *(o.replace("/", "_") for o in overrides)])
    sets = [x for o in overrides for x in ("--set", o)]
    cli = [sys.executable, "-m", "vmmsim.cluster.cli"]
    for args in (
        ["run", str(ROOT / "configs" / name), "--out", str(d), "--inprocess", "--force", *sets],
        ["report", str(d)],
    ):
        p = subprocess.run([*cli, *args], capture_output=True, text=True, cwd=ROOT)
        if p.returncode != 0:
            msg = (p.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise SystemExit(f"paper.py: {entry}: vmmsim {args[0]} failed: {msg}")
    return d


def table(rows: list[Row]) -> str:
    head = ["fig.", "quantity", "paper", "vmmsim", "difference"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def write_docs(full: str, short: str, paths: tuple[Path, ...] = DOCS) -> None:
    """Replace the block between the markers in each of ``paths``: the README (the first)
    gets the ``short`` table, the others the ``full`` one."""
    for i, path in enumerate(paths):
        text = short if i == 0 else full
        doc = path.read_text()
        if BEGIN not in doc or END not in doc:
            raise SystemExit(f"paper.py: {path}: no {BEGIN} ... {END} block to replace")
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        path.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=[e.name for e in EXPERIMENTS])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "paper")
    ap.add_argument("--jobs", type=int, default=2, help="configs run at once (default 2)")
    ap.add_argument(
        "--write", action="store_true", help="update README.md, docs/paper.md and docs/*.png"
    )
    a = ap.parse_args(argv)
    if a.write and a.only:
        ap.error("--write replaces the whole table: run every experiment (no --only)")
    chosen = [e for e in EXPERIMENTS if not a.only or e.name in a.only]
    names = list(dict.fromkeys(c for e in chosen for c in e.configs))  # each run once
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, a.jobs)) as pool:
        dirs = dict(zip(names, pool.map(lambda n: run_config(n, a.out), names), strict=True))
    rows: list[Row] = []
    for e in chosen:
        ds = [dirs[c] for c in e.configs]
        rows += e.rows(ds)
        if a.write:
            for src, dst in e.pngs:
                shutil.copyfile(ds[0] / "plots" / src, ROOT / "docs" / dst)
    text = table(rows)
    print(text)
    print(f"\n({len(names)} runs in {time.perf_counter() - t0:.0f} s, outputs in {a.out})")
    if a.write:
        write_docs(text, table([r for r in rows if r.key]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
