"""Why the one-VM step kernel takes flat arguments: numba's dispatch cost, flat vs records.

``hosts/vm_kernel.step`` takes ~40 positional arguments (the guest's, the VMM's and the
host's arrays).  Grouping them into a few tuples ("records": guest, guest swap, physical
map, frames, swap store, scalars) would read better; this measures what it costs per call
with the same 32 arrays and 8 scalars, on a kernel that does almost nothing, so the
difference is numba's argument unboxing and type dispatch alone.

Reference: the flat call, measured in the same run.  Records are kept only if their ratio
is ~1.0 (issue 16: "if that costs nothing measurable").

    python bench/bench_kernel_args.py
"""

from __future__ import annotations

import numba
import numpy as np
from benchkit import best

N_ARR, CALLS = 32, 100_000
ARRS = [np.zeros(64, dtype=np.int64) for _ in range(N_ARR)]
SCAL = list(range(1, 9))


@numba.njit
def flat(
    a0,
    a1,
    a2,
    a3,
    a4,
    a5,
    a6,
    a7,
    a8,
    a9,
    a10,
    a11,
    a12,
    a13,
    a14,
    a15,
    a16,
    a17,
    a18,
    a19,
    a20,
    a21,
    a22,
    a23,
    a24,
    a25,
    a26,
    a27,
    a28,
    a29,
    a30,
    a31,
    s0,
    s1,
    s2,
    s3,
    s4,
    s5,
    s6,
    s7,
):
    a0[0] += s0 + a31[0]


@numba.njit
def records(guest, gswap, pmap, frames, swap, scalars):
    guest[0][0] += scalars[0] + swap[-1][0]


def main() -> None:
    a, s = ARRS, SCAL
    flat_args = [*a, *s]
    recs = (
        (*a[0:7], s[0]),
        (*a[7:9], s[1]),
        tuple(a[9:14]),
        (*a[14:22], s[2]),
        tuple(a[22:32]),
        tuple(s[3:]),
    )

    def run_flat() -> None:
        for _ in range(CALLS):
            flat(*flat_args)

    def run_records() -> None:
        for _ in range(CALLS):
            records(*recs)

    def run_records_built() -> None:  # what a caller pays when it builds them per step
        for _ in range(CALLS):
            records(
                (a[0], a[1], a[2], a[3], a[4], a[5], a[6], s[0]),
                (a[7], a[8], s[1]),
                (a[9], a[10], a[11], a[12], a[13]),
                (a[14], a[15], a[16], a[17], a[18], a[19], a[20], a[21], s[2]),
                (a[22], a[23], a[24], a[25], a[26], a[27], a[28], a[29], a[30], a[31]),
                (s[3], s[4], s[5], s[6], s[7]),
            )

    run_flat(), run_records()  # compile
    f = best(run_flat, 5) / CALLS * 1e6
    r = best(run_records, 5) / CALLS * 1e6
    rb = best(run_records_built, 5) / CALLS * 1e6
    print(f"flat, {N_ARR} arrays + 8 scalars: {f:.2f} us/call (reference)")
    print(f"six records, prebuilt:          {r:.2f} us/call  ratio {r / f:.2f}")
    print(f"six records, built per call:    {rb:.2f} us/call  ratio {rb / f:.2f}")


if __name__ == "__main__":
    main()
