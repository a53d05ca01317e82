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

from vmmsim.cluster.host_pool import HostPool
from vmmsim.hosts.specs import VMSpec

CHUNK_BYTES = 128 * 2**20  # page content per pipelined range of a round (fewer, larger calls)
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
    pages, the destination offers those it holds, the source ships the others' bytes and
    the destination stages them.  Calls are submitted so that each host's queue
    interleaves ranges (source: collect 1, ship 0, collect 2, ship 1, ...): the
    destination's offer for a range is ready by the time the source ships it, and the
    source holds at most two ranges' bytes."""
    k = max(1, min(MAX_CHUNKS, math.ceil(expect_pages * content_bytes / CHUNK_BYTES)))
    bounds = [n_pages * i // k for i in range(k + 1)]
    sub = pool.submit
    offered: list[tuple] = []  # per range: (batch, offer) handles
    acks: list = []

    def ship(i: int) -> None:
        batch, offer = offered[i]
        acks.append(
            sub(dest, "mig_stage", vm, batch, sub(source, "mig_page_bytes", vm, batch, offer))
        )

    for i, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        batch = sub(source, "mig_collect", vm, first, lo, hi)
        offered.append((batch, sub(dest, "mig_known", vm, batch)))
        if i:
            ship(i - 1)
    ship(k - 1)
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
