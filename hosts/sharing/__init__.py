"""Content-based page sharing (ESX's transparent page sharing), one mechanism in one home.

* :mod:`vmmsim.hosts.sharing.index` -- the per-host sharing index (xxh3 hash -> shared or
  hint frame, per sharing group) and its compiled table kernels.
* :mod:`vmmsim.hosts.sharing.scan` -- the compiled scan of one batch (hash, classify,
  verify, update the index) and the merge of its verified pairs into the VMs' maps.

Applying a scan's merges to frames and maps, and breaking sharing on a write (COW), are
page operations of :class:`vmmsim.hosts.host_memory.HostMemory` (``scan``, ``write``).
Not covered: scan rates and order (the host manager).
"""

from vmmsim.hosts.sharing.index import HINT, NONE, SHARED, SharingIndex, hash_page
from vmmsim.hosts.sharing.scan import merge_pages, scan_batch

__all__ = ["HINT", "NONE", "SHARED", "SharingIndex", "hash_page", "merge_pages", "scan_batch"]
