"""The compiled xxh3 binding and the kernel warm-up (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest
import xxhash
from vmmsim.hosts import native
from vmmsim.hosts.warmup import warm_kernels


@pytest.mark.parametrize("width", [1, 7, 8, 64, 240, 241, 4096])
def test_compiled_xxh3_equals_the_xxhash_package(width: int) -> None:
    """Every width class of xxh3 (short, mid, long inputs) and arbitrary row order."""
    rng = np.random.default_rng(width)
    content = rng.integers(0, 256, (50, width), dtype=np.uint8)
    content[3] = 0  # a zero page among them
    rows = rng.permutation(50)[:30]
    got = native.hash_pages(content, rows)
    want = [xxhash.xxh3_64_intdigest(content[r].tobytes()) for r in rows]
    assert got.dtype == np.uint64
    assert got.tolist() == want


def test_hash_pages_of_no_rows_is_empty() -> None:
    out = native.hash_pages(np.zeros((4, 64), dtype=np.uint8), np.zeros(0, dtype=np.int64))
    assert out.shape == (0,)


def test_warm_up_runs_a_host_through_its_kernels() -> None:
    from vmmsim.hosts import guest_os, guest_os_kernel, tick_steps_kernel, vm_kernel
    from vmmsim.hosts.sharing import scan as sharing_scan
    from vmmsim.workloads import patterns_kernel

    assert warm_kernels() > 0.0
    # Each hot kernel met its arguments (compiled, or loaded from the disk cache): an
    # actor started after the warm-up loads machine code instead of compiling it.
    for k in (
        vm_kernel.step,
        vm_kernel.dedup_kernel,
        sharing_scan.scan_vms,  # (scan_batch and merge_pages are compiled into it)
        guest_os.clock_sweep,
        guest_os_kernel.evict,
        guest_os_kernel.room_needed,
        patterns_kernel.split_draw,
        tick_steps_kernel.run_steps,
    ):
        assert k.signatures, k.__name__
