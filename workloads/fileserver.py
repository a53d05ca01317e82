"""The ``fileserver`` pattern: a dbench-like file server whose speed depends on its memory.

Model.  The server reads a file set of ``files_mb`` with Zipf-like popularity (file block
of popularity rank ``r`` is read with probability proportional to ``1 / (r + 1)^zipf_s``)
and rewrites a small dirty set (logs, metadata) of ``dirty_mb``.

* Cached files are the guest's *image region* (pages ``[0, n_image)``): files on the VM's
  disk image, held in its page cache.  The cache fills over the first ``warmup_s``
  seconds, most popular files first (step ``k`` writes the image pages whose load time
  falls in it; reads of files not loaded yet are disk reads); the rest of the boot
  (other image pages, zero pages) happens at step 0 as for every pattern.  File pages
  are clean, so when the guest reclaims memory (e.g. its balloon inflates) it drops them
  for free, and the next read of one costs a disk read -- exactly a page-cache miss.
  Ranks map to image pages through a fixed random permutation (drawn at boot).
* Files that do not fit -- ranks ``>= n_image``, when the VM's memory (hence its image
  region) is smaller than the file set -- are never in memory: each read of one is a
  disk read reported in :attr:`workloads.patterns.Accesses.disk_reads`, and touches no
  page.  This is how a VM *configured* with less memory runs slower (ESX fig. 2).
* The dirty set is the first ``dirty_mb`` of the private-data region; every write there
  carries fresh content.

Reads never write: file pages stay clean (their content is the image's).  Choose an image
whose ``shared_fraction`` covers the file set for a VM that should hold all of it.  The
stream depends only on the step count and the VM's generator.

Not covered: the cost of a disk read (the host's fault-cost model).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from vmmsim.workloads.content import nonzero_keys
from vmmsim.workloads.images import boot_writes, vm_image_keys
from vmmsim.workloads.patterns import EMPTY_I, Accesses, Workload, WorkloadEnv, check_range


@dataclass(frozen=True)
class FileserverParams:
    files_mb: float = field(
        default=0.0,
        metadata={"help": "size of the file set, MB (0: the VM's image region, all cached)"},
    )
    dirty_mb: float = field(
        default=4.0, metadata={"help": "size of the dirty set (logs, metadata) rewritten, MB"}
    )
    zipf_s: float = field(
        default=0.8, metadata={"help": "popularity skew of file blocks (0: uniform)"}
    )
    accesses_per_s: float = field(default=2000.0, metadata={"help": "mean accesses per second"})
    write_fraction: float = field(
        default=0.05, metadata={"help": "fraction of accesses that write the dirty set"}
    )
    warmup_s: float = field(
        default=60.0,
        metadata={"help": "seconds to read the cached files into memory (0: at boot)"},
    )

    def validate(self) -> list[str]:
        return (
            check_range(self, "files_mb", 0.0)
            + check_range(self, "warmup_s", 0.0)
            + check_range(self, "dirty_mb", 0.0)
            + check_range(self, "zipf_s", 0.0, 4.0)
            + check_range(self, "accesses_per_s", 0.0)
            + check_range(self, "write_fraction", 0.0, 1.0)
        )


class Fileserver(Workload):
    """A dbench-like file server: Zipf reads of a clean page cache, a small dirty set."""

    kind = "fileserver"
    Params = FileserverParams

    def __init__(
        self, params: FileserverParams, env: WorkloadEnv, rng: np.random.Generator
    ) -> None:
        super().__init__(params, env, rng)
        n_image = env.layout.n_image
        pages_per_mb = 2**20 / env.page_size
        n_files = int(params.files_mb * pages_per_mb) if params.files_mb > 0 else n_image
        self.n_files = n_files
        self.n_cached = min(n_files, n_image)
        self.file_pages = rng.permutation(n_image)[: self.n_cached].astype(np.int64)
        ranks = np.arange(1, n_files + 1, dtype=np.float64)
        weights = ranks ** -float(params.zipf_s)
        cdf = np.cumsum(weights)
        self.cdf = cdf / cdf[-1] if n_files else cdf
        start = min(env.layout.data_start, env.n_pages)
        n_dirty = min(env.n_pages - start, env.pages(params.dirty_mb))
        self.dirty = np.arange(start, start + n_dirty, dtype=np.int64)
        self._img_keys: np.ndarray | None = None

    def loaded(self, step: int) -> int:
        """Cached files (popularity ranks ``< loaded``) in memory by the end of ``step``."""
        w = self.params.warmup_s
        if w <= 0 or step < 0:
            return self.n_cached if step >= 0 else 0
        return int(self.n_cached * min(1.0, (step + 1) * self.env.tick_s / w))

    def step(self, step: int) -> Accesses:
        """Boot (step 0: all but the cached files), then load files, then serve."""
        env = self.env
        lo, hi = self.loaded(step - 1), self.loaded(step)
        pages = self.file_pages[lo:hi]
        if step == 0:
            boot_p, _ = boot_writes(env.image, env.layout, env.seed, env.vm_name)
            is_file = np.zeros(env.n_pages, dtype=bool)
            is_file[self.file_pages] = True
            rest = boot_p[~is_file[boot_p] | np.isin(boot_p, pages)]
            pages = rest
        if self._img_keys is None:  # this VM's image keys, kept (derived: no state)
            self._img_keys = vm_image_keys(env.image, env.seed, env.vm_name, env.layout.n_image)
        keys = np.zeros(len(pages), dtype=np.uint64)  # pages >= n_image: zeroed at boot
        img = pages < env.layout.n_image
        keys[img] = self._img_keys[pages[img]]
        return Accesses.concat(Accesses(writes=pages, write_keys=keys), self._accesses(step))

    @property
    def cached_fraction(self) -> float:
        """Share of read requests that the page cache can serve (by popularity)."""
        if not self.n_files:
            return 1.0
        return float(self.cdf[self.n_cached - 1]) if self.n_cached else 0.0

    def _accesses(self, step: int) -> Accesses:
        p = self.params
        n = int(self.rng.poisson(p.accesses_per_s * self.env.tick_s)) if p.accesses_per_s else 0
        if n == 0:
            return Accesses()
        n_w = int(self.rng.binomial(n, p.write_fraction)) if len(self.dirty) else 0
        reads, misses = EMPTY_I, 0
        if self.n_files:
            ranks = np.searchsorted(self.cdf, self.rng.random(n - n_w), side="right")
            ranks = np.minimum(ranks, self.n_files - 1)
            hit = ranks < min(self.n_cached, self.loaded(step))
            reads = self.file_pages[ranks[hit]]
            misses = int(len(ranks) - hit.sum())
        writes = self._draw(self.dirty, n_w)
        return Accesses(reads, writes, nonzero_keys(self.rng, len(writes)), misses)
