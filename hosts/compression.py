"""Memory compression: how small a page compresses, and the caches' caps.

Scope: the per-page size class and the cap arithmetic of the two compression caches the
host memory (:meth:`hosts.host_memory.HostMemory.page_out`) keeps; the pages themselves
live in the compression tier of the VMM swap store (:mod:`hosts.vmm_swap`), their memory
is charged in whole frames (:meth:`hosts.host_memory.HostMemory.settle_zip`).

* ``"esx"`` -- ESX 4.1+ memory compression: "When a virtual page needs to be swapped,
  ESXi first attempts to compress the page.  Pages that can be compressed to 2 KB or
  smaller are stored in the virtual machine's compression cache" (vSphere Resource
  Management, "Memory Compression"); a page compressed to 1 KB or less takes a
  quarter-page slot.  Each VM's cache is capped at ``compression_cache_pct`` of its
  configured memory (``Mem.MemZipMaxPct``, default 10 %: vSphere Resource Management,
  "Set the Maximum Size of the Compression Cache").
* ``"zswap"`` -- Linux zswap (KVM hosts): one host-wide pool capped at
  ``max_pool_percent`` of host memory (default 20); once full it refuses new pages until
  it has shrunk below ``accept_threshold_percent`` (default 90) of the cap
  (Documentation/admin-guide/mm/zswap.rst).  zswap stores any size (zsmalloc); we keep
  the same half/quarter classes so that both modes compare on one size distribution.

Compressibility comes from the page's contents, as a **deterministic size class derived
from its bytes**, not from running a compressor over them: a page's stored bytes are only
``content_bytes`` (64..256 by default) standing for 4 KiB, and workload contents are
pseudo-random expansions of 64-bit keys, so zlib/lz4 over them would say "zero pages
compress, nothing else does" -- a property of the simulator's encoding, not of guest
memory.  Instead: a zero page always compresses to the smallest class (a quarter page);
any other page's xxh3-64 of its stored bytes, as a uniform number in [0, 1), picks a
class from :data:`SIZE_MIX` -- equal bytes always give the same class, on every host and
after every migration or checkpoint.  :data:`SIZE_MIX` is our assumption (no published
per-page distribution of ESX's compressed sizes was found): 40 % of non-zero pages to
<= 1 KB, 30 % to 1..2 KB, 30 % incompressible (> 2 KB: swapped), in line with the 2..3x
average ratios usually quoted for LZO/LZ4 on guest memory.

When a cache is full: ESX writes the VM's oldest compressed pages out to swap to make
room for the new ones ("Understanding Memory Resource Management in VMware vSphere 5.0",
VMware technical white paper, 2011, "Memory Compression": when the per-VM cache is full,
a compressed page chosen by age is decompressed and swapped out to make room); zswap
refuses new pages and writes back its oldest until the pool is below the accept
threshold (Linux's shrinker writes back in LRU order; here in the order pages were
compressed, as a compressed page that is faulted back leaves the pool).  Only private
pages are compressed: paging out a shared page frees no frame, so compressing it would
save nothing.  Frames are packed per cache (a cache of ``u`` quarter pages takes ``ceil(u
/ 4)`` frames: ideal compaction, where ESX's slot allocator may leave holes).

The caches are a best-effort tier in front of swap (the same white paper: compression
only reduces the pages the host swaps; a page that does not compress is swapped), never
memory that reclamation loses: a page whose compression would free no frame net -- one
page that opens a new cache frame -- is written to swap instead
(:meth:`hosts.host_memory.HostMemory.page_out`), and when the VMs have nothing left to
page out but pinned or reserved pages, emergency reclamation writes the caches' oldest
pages to swap to free their frames (:meth:`hosts.host_memory.HostMemory.zip_evict`,
:func:`hosts.reclamation.make_room`).  Without that, caches whose caps add up to more
than the memory the VMs do not pin could take all of it and fail the host with swap
nearly empty.
"""

from __future__ import annotations

import numpy as np
from vmmsim.hosts.native import hash_pages

#: Compression modes (``policy.compression``).
MODES = ("off", "esx", "zswap")
OFF, ESX, ZSWAP = 0, 1, 2

#: Fractions of non-zero pages that compress to <= 1 KB (a quarter-page slot) and to
#: 1..2 KB (a half-page slot); the rest do not compress to half a page (our assumption).
SIZE_MIX = (0.4, 0.3)

#: Quarter pages per frame (the units of the caches' accounting).
UNITS_PER_FRAME = 4


def size_units(content: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Compressed size of the pages in ``content[rows]`` in quarter pages: 1 (<= 1 KB),
    2 (<= 2 KB) or 0 (does not compress to half a page).  Zero pages: 1."""
    if len(rows) == 0:
        return np.zeros(0, dtype=np.int8)
    h = hash_pages(content, rows)
    u = (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
    q, half = SIZE_MIX
    out = np.where(u < q, 1, np.where(u < q + half, 2, 0)).astype(np.int8)
    out[~content[rows].any(axis=1)] = 1
    return out


def frames_for(units: int) -> int:
    """Frames a cache of ``units`` quarter pages takes (packed: two half-page or four
    quarter-page slots per frame; a cache is compacted as pages leave it)."""
    return -(-int(units) // UNITS_PER_FRAME)


def vm_cap_units(n_pages: int, pct: float) -> int:
    """Quarter pages an ESX VM's cache may hold: ``pct`` % of its configured memory."""
    return UNITS_PER_FRAME * int(n_pages * pct / 100.0)


def pool_cap_units(n_frames: int, pct: float) -> int:
    """Quarter pages a zswap pool may hold: ``pct`` % of host memory."""
    return UNITS_PER_FRAME * int(n_frames * pct / 100.0)
