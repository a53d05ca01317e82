"""The host-to-host call chains of a live migration (admission, pre-copy, switch-over).

Scope: which host methods (:class:`cluster.host_pool.HostRuntime` ``mig_*``) are called
in which order, through :meth:`cluster.host_pool.HostPool.submit` handles, so that page
hashes and bytes flow from the source to the destination directly (the Ray object store
on Ray; plain values in process) and the caller only gathers small counts.  A pre-copy
round is cut into page ranges of about ``CHUNK_BYTES`` of content and pipelined.

Not covered: when to call them, rounds, bandwidth and downtime (:mod:`cluster.migration`).
"""

from __future__ import annotations

import math

from cluster.host_pool import HostPool
from hosts.specs import VMSpec

CHUNK_BYTES = 64 * 2**20  # page content per pipelined range of a round
MAX_CHUNKS = 64


def admit(pool: HostPool, spec: VMSpec, source: str, dest: str) -> tuple[int, str | None]:
    """Admission on the destination: (the VM's allocated pages, None or the refusal)."""
    alloc = pool.submit(source, "mig_allocated", spec.name)
    accept = pool.submit(dest, "mig_accept", spec, alloc)
    n, reason = pool.gather([alloc, accept])
    return int(n), reason


def precopy_round(
    pool: HostPool,
    vm: str,
    source: str,
    dest: str,
    n_pages: int,
    first: bool,
    expect_pages: int,
    content_bytes: int,
) -> tuple[int, int]:
    """One pre-copy round, as page ranges pipelined source -> destination; returns
    (pages sent as bytes, pages sent as references).  Per range: the source hashes its
    pages, the destination marks those it holds, the source reads the others' bytes and
    the destination stages them.  Calls are submitted stage by stage so that each host
    works through its queue while the other works on the previous range."""
    k = max(1, min(MAX_CHUNKS, math.ceil(expect_pages * content_bytes / CHUNK_BYTES)))
    bounds = [n_pages * i // k for i in range(k + 1)]
    sub = pool.submit
    ranges = list(zip(bounds, bounds[1:], strict=False))
    batches = [sub(source, "mig_collect", vm, first, lo, hi) for lo, hi in ranges]
    known = [sub(dest, "mig_known", vm, b) for b in batches]
    data = [sub(source, "mig_page_bytes", vm, b, kn) for b, kn in zip(batches, known, strict=True)]
    acks = [
        sub(dest, "mig_stage", vm, b, kn, d) for b, kn, d in zip(batches, known, data, strict=True)
    ]
    counts = pool.gather(acks)
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def stop_and_copy(
    pool: HostPool, spec: VMSpec, source: str, dest: str, allocated: int, pause_ticks: float
) -> dict[str, int] | str:
    """The switch-over: the destination's result counts, or why it was aborted (the
    destination cannot take the VM's pages now; nothing moved)."""
    problem = pool.gather([pool.submit(dest, "mig_final_check", spec.name, allocated)])[0]
    if problem is not None:
        pool.gather([pool.submit(dest, "mig_abort", spec.name)])
        return problem
    payload = pool.submit(source, "mig_detach", spec.name)
    return pool.gather([pool.submit(dest, "mig_attach", spec, payload, pause_ticks)])[0]
