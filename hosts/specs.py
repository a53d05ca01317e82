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
    scan_vm_pages_per_s: float = 50.0
    scan_host_pages_per_s: float = 200.0
    tax_rate: float = 0.75
    sample_period_s: float = 30.0
    sample_pages: int = 100
    balloon_max_fraction: float = 0.65
    balloon_rate_pages_per_s: float = 16384.0
    swap_rate_pages_per_s: float = 8192.0
    thresholds: Thresholds = Thresholds()
    disk_latency_s: float = 0.005
    minor_fault_s: float = 2e-6
    reclamation: str = "esx"  # reclamation victim policy (vmmsim.policies)
    working_set: str = "esx_sampler"  # working-set estimator (vmmsim.policies)


@dataclass(frozen=True)
class HostSpec:
    name: str
    n_frames: int
    n_swap_slots: int


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
    image: ImageSpec = ImageSpec("blank", 0.0, 0.0)
    workload_kind: str = "idle"
    workload_params: Any = None

    @property
    def max_resident(self) -> int:
        return self.max_pages or self.n_pages
