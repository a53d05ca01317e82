"""Checkpoint and replay benchmarks, each beside a reference measured in the same run.

* checkpoint write GB/s (host state -> Arrow IPC file, block checksums, manifest,
  rename) vs a raw Arrow IPC file write of the same record batch (target >= 0.5);
* checkpoint read GB/s (verify every checksum, memory-map, zero-copy numpy views) vs a
  raw Arrow IPC file read of the same file into memory (target >= 0.5); also the full
  restore into a live host (writable copies of every array), for information.  Both
  with the default sha256 block checksums and with xxh3-128 block checksums;
* replay speed: a verified in-process replay of a recorded run vs the original run
  (and the cost of recording: recorded run vs plain run).

Run: ``python bench/bench_checkpoint.py [--host-mb 512] [--repeat 3] [--json]``; about
30 s on a 2-core laptop.  Files go to a temporary directory (``--dir`` to choose).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import pyarrow as pa
from benchkit import best
from vmmsim.cluster import checkpoint_format as cf
from vmmsim.cluster.checkpoint import read_checkpoint, write_checkpoint
from vmmsim.cluster.config import parse_config
from vmmsim.cluster.coordinator import Coordinator
from vmmsim.cluster.host_pool import InProcessPool
from vmmsim.cluster.rerun import replay
from vmmsim.cluster.runner import run
from vmmsim.cluster.session import RunOptions
from vmmsim.cluster.specs import host_policy, host_specs, sim_params, vm_spec
from vmmsim.hosts.snapshot import restore_host


def host_config(host_mb: int) -> dict:
    vm_mb = host_mb // 4
    return {
        "simulation": {"seed": 1, "duration_s": 4, "content_bytes": 4096},
        "policy": {"realloc_period_s": 2},
        "hosts": [{"name": "h", "memory_mb": host_mb, "swap_mb": host_mb // 8}],
        "vms": [
            {
                "name": "vm",
                "count": 3,
                "memory_mb": vm_mb,
                # admission: swap (host_mb / 8) holds the 3 VMs' memory_mb - min_mb
                "min_mb": vm_mb - host_mb / 32,
                "workload": {"kind": "steady", "wss_mb": vm_mb // 2},
            }
        ],
    }


def bench_checkpoint(host_mb: int, repeat: int, root: Path) -> list[dict]:
    cfg = parse_config(host_config(host_mb))
    sim, pol = sim_params(cfg), host_policy(cfg)
    pool = InProcessPool([(s, sim, pol) for s in host_specs(cfg)])
    coord = Coordinator(cfg, pool)
    coord.start()
    coord.advance()
    arrays, meta = pool.call("checkpoint", [()])[0]
    nbytes = sum(a.nbytes for a in arrays.values())
    ck_root = root / "checkpoints"

    def ours_write(algo: str) -> None:
        shutil.rmtree(ck_root, ignore_errors=True)
        write_checkpoint(ck_root, cfg, coord.state(), {"h": (arrays, meta)}, algo)

    raw_path = root / "raw.arrow"
    batch = cf.arrays_to_batch(arrays)

    def raw_write() -> None:
        with pa.OSFile(str(raw_path), "wb") as sink, pa.ipc.new_file(sink, batch.schema) as w:
            w.write_batch(batch)

    def raw_read() -> None:
        with pa.OSFile(str(raw_path)) as src:
            t = pa.ipc.open_file(src).read_all()
        assert t.num_columns == len(arrays)

    def ours_read() -> None:
        c = read_checkpoint(next(ck_root.iterdir()))
        assert len(c.hosts["h"][0]) == len(arrays)

    def ours_restore() -> None:
        c = read_checkpoint(next(ck_root.iterdir()))
        a, m = c.hosts["h"]
        specs = {n: vm_spec(cfg, n) for n in m["vms"]}
        restore_host(host_specs(cfg)[0], sim, pol, specs, a, m)

    t_raw_w, t_raw_r = best(raw_write, repeat), best(raw_read, repeat)
    gb = nbytes / 1e9
    rows = []

    def row(figure: str, t: float, ref: str, t_ref: float, target: float | None) -> dict:
        return {
            "figure": figure,
            "gb_s": gb / t,
            "ref": ref,
            "ref_gb_s": gb / t_ref,
            "ratio": t_ref / t,
            "target": target,
        }

    for algo in ("sha256_blocks", "xxh3_128_blocks"):
        t_w = best(lambda a=algo: ours_write(a), repeat)
        t_r = best(ours_read, repeat)
        rows.append(row(f"checkpoint write ({algo})", t_w, "raw IPC write", t_raw_w, 0.5))
        rows.append(row(f"checkpoint read ({algo})", t_r, "raw IPC read", t_raw_r, 0.5))
    t_restore = best(ours_restore, repeat)
    rows.append(row("  read + restore host (xxh3)", t_restore, "raw IPC read", t_raw_r, None))
    return [*rows, {"figure": "state size", "gb": gb}]


REPLAY_CFG = {
    "simulation": {"seed": 5, "duration_s": 60, "content_bytes": 512},
    "policy": {
        "realloc_period_s": 5,
        "share_scan_vm_pages_per_s": 400,
        "share_scan_host_pages_per_s": 1600,
        "vm_overhead_mb": 0,  # 48 MB VMs on 96 MB hosts, as measured before the 32 MB default
    },
    "hosts": [{"name": "esx", "count": 2, "memory_mb": 96, "swap_mb": 256}],
    "vms": [
        {"name": "web", "count": 4, "memory_mb": 48, "workload": {"kind": "steady", "wss_mb": 16}},
        {"name": "idle", "count": 2, "memory_mb": 48, "workload": {"kind": "idle"}},
    ],
}


def bench_replay(repeat: int, root: Path) -> list[dict]:
    cfg = parse_config(REPLAY_CFG)
    kw = {"backend": "inprocess", "quiet": True, "force": True}

    def plain() -> None:
        run(cfg, root / "plain", **kw)

    def recorded() -> None:
        run(cfg, root / "rec", opts=RunOptions(record=True), **kw)

    def replayed() -> None:
        res = replay(root / "rec", None, (), backend="inprocess", quiet=True)
        assert res.verified and res.ticks == cfg.simulation.n_ticks

    t_plain, t_rec = best(plain, repeat), best(recorded, repeat)
    t_replay = best(replayed, repeat)
    return [
        {"figure": "recorded run / plain run (wall time)", "ratio": t_rec / t_plain},
        {
            "figure": "replay speed (verified) vs original run",
            "ratio": t_plain / t_replay,
            "ticks_per_s": cfg.simulation.n_ticks / t_replay,
        },
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host-mb", type=int, default=512, help="host memory (content 4 KiB/page)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, default=None, help="where to write (default: a tmp dir)")
    ap.add_argument("--json", action="store_true", help="one JSON line per figure")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="vmmsim-bench-", dir=args.dir))
    try:
        rows = bench_checkpoint(args.host_mb, args.repeat, root)
        rows += bench_replay(args.repeat, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    for r in rows:
        if args.json:
            print(json.dumps({"bench": "checkpoint", **r}))
            continue
        if "gb_s" in r:
            tgt = f"  (target >= {r['target']})" if r["target"] else ""
            print(
                f"{r['figure']:36s} {r['gb_s']:6.2f} GB/s   {r['ref']}: {r['ref_gb_s']:6.2f} GB/s"
                f"   ratio {r['ratio']:.2f}{tgt}"
            )
        elif "gb" in r:
            print(f"{r['figure']:36s} {r['gb']:6.3f} GB")
        else:
            extra = f"  ({r['ticks_per_s']:.0f} ticks/s)" if "ticks_per_s" in r else ""
            print(f"{r['figure']:42s} {r['ratio']:.2f}x{extra}")


if __name__ == "__main__":
    main()
