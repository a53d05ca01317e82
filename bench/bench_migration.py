"""Benchmark: live-migration throughput between two host actors vs plain Ray transfer.

Measures, in one run on one local Ray instance:

* migration: a pre-copy round 0 of a VM whose pages hold distinct random content (so
  nothing is sent as a reference), between two host actors (the destination runs a VM of
  the same sharing group, so every hash is looked up) -- the source reads every page out
  and hashes it (xxh3-64; the strong digest only for pages the destination offers), the
  destination looks every hash up and stages the bytes, in pipelined page ranges
  (:func:`cluster.migration_transfer.precopy_round`); GB/s of page bytes
  (``content_bytes`` per page, 4096 here);
* reference: the same number of bytes as one numpy array from one plain actor to
  another through the object store, the receiver copying it into its own buffer (as the
  destination host's staging does), and the same cut into the migration's ranges.

Prints both and the ratio to the faster reference (target >= 0.5).  Runs in < 1 minute:
``python bench/bench_migration.py [--mb 256] [--repeat 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402
from vmmsim.cluster.config import parse_config  # noqa: E402
from vmmsim.cluster.migration_transfer import CHUNK_BYTES, MAX_CHUNKS, admit, precopy_round  # noqa: E402
from vmmsim.cluster.ray_runtime import RayPool, init_ray  # noqa: E402
from vmmsim.cluster.specs import vm_spec  # noqa: E402


def config(mb: int) -> dict:
    """Two hosts; a VM of ``mb`` MB on h-0 writing (nearly) every page in 2 ticks, and
    a small VM of the same sharing group on h-1 (so its index is consulted)."""
    pages = mb * 256
    return parse_config(
        {
            "simulation": {"seed": 1, "duration_s": 10, "content_bytes": 4096},
            "policy": {"share_scan_vm_pages_per_s": 0, "share_scan_host_pages_per_s": 0},
            "hosts": [{"name": "h", "count": 2, "memory_mb": 2 * mb + 64, "swap_mb": 0}],
            "vms": [
                # min_mb = memory_mb: no swap needed by admission (the hosts have none)
                {"name": "peer", "memory_mb": 16, "min_mb": 16, "host": "h-1", "image": "linux"},
                {
                    "name": "vm",
                    "memory_mb": mb,
                    "min_mb": mb,
                    "host": "h-0",
                    "image": "blank",
                    "workload": {
                        "kind": "steady",
                        "wss_mb": mb,
                        "write_fraction": 1.0,
                        "accesses_per_s": 2.5 * pages,
                    },
                },
            ],
        }
    )


@ray.remote(num_cpus=0)
class Sender:
    def __init__(self, nbytes: int, cb: int) -> None:
        rng = np.random.default_rng(0)
        self.data = rng.integers(0, 255, size=(nbytes // cb, cb), dtype=np.uint8)

    def get(self, lo: int = 0, hi: int | None = None) -> np.ndarray:
        return self.data[lo:hi]


@ray.remote(num_cpus=0)
class Receiver:
    def __init__(self, nbytes: int, cb: int) -> None:
        self.buf = np.zeros((nbytes // cb, cb), dtype=np.uint8)
        self.buf[:] = 1  # touched, as a host's staging buffer is after round 0

    def put(self, arr: np.ndarray, lo: int = 0) -> int:
        self.buf[lo : lo + len(arr)] = arr
        return arr.nbytes


class Reference:
    """Plain transfer: one actor returns an array, another copies it into its buffer."""

    def __init__(self, nbytes: int, cb: int, n_chunks: int) -> None:
        self.nbytes, self.s, self.r = nbytes, Sender.remote(nbytes, cb), Receiver.remote(nbytes, cb)
        rows = nbytes // cb
        self.bounds = [rows * i // n_chunks for i in range(n_chunks + 1)]
        ray.get(self.r.put.remote(self.s.get.remote()))  # warm up

    def one_object(self) -> float:
        t = time.perf_counter()
        ray.get(self.r.put.remote(self.s.get.remote()))
        return self.nbytes / (time.perf_counter() - t) / 1e9

    def chunked(self) -> float:
        b = self.bounds
        t = time.perf_counter()
        refs = [self.s.get.remote(lo, hi) for lo, hi in zip(b, b[1:], strict=False)]
        ray.get([self.r.put.remote(x, lo) for x, lo in zip(refs, b, strict=False)])
        return self.nbytes / (time.perf_counter() - t) / 1e9

    def close(self) -> None:
        ray.kill(self.s)
        ray.kill(self.r)


class Migration:
    """Round 0 of a live migration of the benchmark VM, h-0 -> h-1, again and again."""

    def __init__(self, mb: int) -> None:
        cfg = config(mb)
        self.pool = RayPool(cfg.to_dict(), timeout_s=120)
        self.spec = vm_spec(cfg, "vm")
        self.cb = cfg.simulation.content_bytes
        self.pool.call("boot", [([self.spec],), ([vm_spec(cfg, "peer")],)])
        self.pool.call("run_round", [(0, 2, None), (0, 2, None)])
        self.sent, self.refs = 0, 0
        self.round()  # warm up

    def round(self) -> float:
        pool, spec = self.pool, self.spec
        pool.gather([pool.submit("h-1", "mig_abort", "vm")])  # forget the previous round
        allocated, refused = admit(pool, spec, "h-0", "h-1")
        assert refused is None, refused
        t = time.perf_counter()
        self.sent, self.refs = precopy_round(
            pool, "vm", "h-0", "h-1", spec.n_pages, True, allocated, self.cb
        )
        return self.sent * self.cb / (time.perf_counter() - t) / 1e9

    def close(self) -> None:
        self.pool.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=256, help="VM memory (all of it sent)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true", help="one JSON line (for run_all.py)")
    args = ap.parse_args()
    init_ray(object_store_mb=max(1024, 4 * args.mb))
    t0 = time.perf_counter()
    mig = Migration(args.mb)
    cb = mig.cb
    nbytes = mig.sent * cb
    n_chunks = max(1, min(MAX_CHUNKS, -(-nbytes // CHUNK_BYTES)))
    ref = Reference(nbytes, cb, n_chunks)
    runs: dict[str, list[float]] = {"migration": [], "one object": [], "chunked": []}
    for _ in range(args.repeat):  # interleaved, so that both see the same machine
        runs["migration"].append(mig.round())
        runs["one object"].append(ref.one_object())
        runs["chunked"].append(ref.chunked())
    mig.close()
    ref.close()
    best = {k: max(v) for k, v in runs.items()}
    plain = max(best["one object"], best["chunked"])
    if args.json:
        print(
            json.dumps(
                {
                    "name": "migration page throughput",
                    "value": best["migration"],
                    "unit": "GB/s",
                    "reference": plain,
                    "reference_name": "plain Ray object-store transfer, same bytes",
                    "ratio": best["migration"] / plain,
                    "target": ">= 0.5",
                }
            )
        )
        ray.shutdown()
        return
    print(f"pages sent {mig.sent} ({nbytes / 2**20:.0f} MiB of page bytes), references {mig.refs}")
    for k, v in runs.items():
        print(f"{k:>10}: best {best[k]:.2f} GB/s  (runs: {', '.join(f'{x:.2f}' for x in v)})")
    print(
        f"ratio migration / best plain Ray transfer ({n_chunks} chunks or one object): "
        f"{best['migration'] / plain:.2f} (target >= 0.5)"
    )
    print(f"wall {time.perf_counter() - t0:.1f} s")
    ray.shutdown()


if __name__ == "__main__":
    main()
