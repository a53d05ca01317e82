"""Plain data that configures a host and its VMs (built by ``cluster`` from the config).

``hosts`` never imports ``cluster``: these frozen dataclasses are the whole interface.
All sizes are in pages of ``page_size`` bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vmmsim.hosts.free_memory import Thresholds
from vmmsim.workloads.images import ImageSpec


@dataclass(frozen=True)
class SimParams:
    seed: int
    tick_s: float
    page_size: int
    content_bytes: int


@dataclass(frozen=True)
class HostPolicy:
    """Per-host policy parameters (from ``[policy]``).

    Where the defaults come from: the free-memory thresholds (6/4/2/1 %) and the idle
    tax rate 0.75 are Waldspurger 2002's.  The sharing scan rates (50 pages/s per VM,
    200 pages/s per host) and the balloon cap (65 % of a VM's memory) are *not* in the
    2002 paper: they are the defaults of later ESX releases' documented advanced
    settings (Mem.ShareScanVM, Mem.ShareScanTotal, Mem.CtlMaxPercent).  The hysteresis
    margin (``thresholds.up_margin``) is ours (the paper gives no value), and
    ``index_entry_bytes`` is the paper's 16 bytes per shared or hint frame (sec. 4.3).
    """

    scan_vm_pages_per_s: float = 50.0  # later ESX docs (Mem.ShareScanVM), not the paper
    scan_host_pages_per_s: float = 200.0  # later ESX docs (Mem.ShareScanTotal)
    tax_rate: float = 0.75
    sample_period_s: float = 30.0
    sample_pages: int = 100
    balloon_max_fraction: float = 0.65  # later ESX docs (Mem.CtlMaxPercent), not the paper
    balloon_rate_pages_per_s: float = 16384.0
    swap_rate_pages_per_s: float = 8192.0
    thresholds: Thresholds = Thresholds()
    disk_latency_s: float = 0.005
    minor_fault_s: float = 2e-6
    reclamation: str = "esx"  # reclamation victim policy (vmmsim.policies)
    working_set: str = "esx_sampler"  # working-set estimator (vmmsim.policies)
    index_entry_bytes: int = 16  # host memory per sharing-index entry (paper, sec. 4.3)
    # vSphere 6's five free-memory states (hosts.min_free) instead of ``thresholds``
    free_states: str = "esx2002"  # "esx2002" (the paper's four) or "vsphere6"
    share_scan_clear_factor: float = 1.0  # scan rate multiplier in CLEAR ("share actively")
    # Large pages (hosts.large_pages): guest memory in 2 MB pages, broken under pressure.
    large_pages: bool = False
    large_page_break_state: str = "soft"  # a free-memory state name (MemState), lower case
    # KVM-style host (issue 18 item 6): the sharing scanner ("esx": the paper's random
    # scan; "ksm": Linux KSM, hosts.sharing.ksm, ksm.rst's knobs and defaults) and
    # virtio-balloon free page reporting (hosts.free_page_reporting).
    sharing_scanner: str = "esx"
    ksm_pages_to_scan: int = 100
    ksm_sleep_millisecs: float = 20.0
    ksm_max_page_sharing: int = 256
    ksm_use_zero_pages: bool = False
    free_page_reporting: bool = False
    free_page_reporting_delay_s: float = 2.0
    free_page_reporting_order: int = 9  # blocks of 2**order 4 KB pages (Linux: 2 MB)
    # Swap tiers (issue 18): host swap cache (vSphere 5+) and memory compression (ESX 4.1+
    # per-VM caches, or KVM's zswap pool); see cluster/config_schema.py for the sources.
    swap_cache_pages: int = 0
    swap_cache_latency_s: float = 1e-4
    compression: str = "off"
    compression_cache_pct: float = 10.0
    zswap_max_pool_percent: float = 20.0
    zswap_accept_threshold_percent: float = 90.0
    decompress_s: float = 1e-5


@dataclass(frozen=True)
class HostSpec:
    name: str
    n_frames: int
    n_swap_slots: int
    memory_mb: float = 0.0  # configured memory (vSphere 6's minFree); 0: n_frames' worth


@dataclass(frozen=True)
class VMSpec:
    name: str
    n_pages: int
    shares: float = 1000.0
    min_pages: int = 0
    max_pages: int = 0  # 0: n_pages
    balloon: bool = True
    sharing: bool = True
    sharing_group: str = "default"
    pinned_pages: int = 0
    overhead_pages: int = 0
    image: ImageSpec = ImageSpec("blank", 0.0, 0.0, kernel_fraction=0.0)
    workload_kind: str = "idle"
    workload_params: Any = None

    @property
    def max_resident(self) -> int:
        return self.max_pages or self.n_pages
