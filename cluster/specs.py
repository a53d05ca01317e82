"""Turning a validated :class:`cluster.config.SimConfig` into the plain specs ``hosts`` takes.

Scope: unit conversion (MB -> pages, ms -> s) and nothing else; ``hosts`` never sees the
config objects.
"""

from __future__ import annotations

from vmmsim.cluster.config import SimConfig
from vmmsim.hosts.free_memory import Thresholds
from vmmsim.hosts.specs import HostPolicy, HostSpec, SimParams, VMSpec


def sim_params(cfg: SimConfig) -> SimParams:
    s = cfg.simulation
    return SimParams(s.seed, s.tick_s, s.page_size, s.content_bytes)


def host_policy(cfg: SimConfig) -> HostPolicy:
    p = cfg.policy
    return HostPolicy(
        scan_vm_pages_per_s=p.share_scan_vm_pages_per_s,
        scan_host_pages_per_s=p.share_scan_host_pages_per_s,
        tax_rate=p.tax_rate,
        sample_period_s=p.sample_period_s,
        sample_pages=p.sample_pages,
        balloon_max_fraction=p.balloon_max_fraction,
        balloon_rate_pages_per_s=p.balloon_rate_pages_per_s,
        swap_rate_pages_per_s=p.swap_rate_pages_per_s,
        thresholds=Thresholds(p.free_high, p.free_soft, p.free_hard, p.free_low, p.state_up_margin),
        disk_latency_s=p.disk_latency_ms / 1e3,
        minor_fault_s=p.minor_fault_us / 1e6,
        reclamation=p.reclamation,
        working_set=p.working_set,
        free_states=p.free_states,
        share_scan_clear_factor=p.share_scan_clear_factor,
        large_pages=p.large_pages,
        large_page_break_state=p.large_page_break_state,
        sharing_scanner=p.sharing_scanner,
        ksm_pages_to_scan=p.ksm_pages_to_scan,
        ksm_sleep_millisecs=p.ksm_sleep_millisecs,
        ksm_max_page_sharing=p.ksm_max_page_sharing,
        ksm_use_zero_pages=p.ksm_use_zero_pages,
        free_page_reporting=p.free_page_reporting,
        free_page_reporting_delay_s=p.free_page_reporting_delay_s,
        free_page_reporting_order=p.free_page_reporting_order,
        swap_cache_pages=cfg.pages(p.swap_cache_mb),
        swap_cache_latency_s=p.swap_cache_latency_us / 1e6,
        compression=p.compression,
        compression_cache_pct=p.compression_cache_pct,
        zswap_max_pool_percent=p.zswap_max_pool_percent,
        zswap_accept_threshold_percent=p.zswap_accept_threshold_percent,
        decompress_s=p.decompress_us / 1e6,
    )


def host_specs(cfg: SimConfig) -> list[HostSpec]:
    return [
        HostSpec(h.name, cfg.pages(h.memory_mb), cfg.pages(h.swap_mb), h.memory_mb)
        for h in cfg.hosts
    ]


def salt(mode: int, group: str, vm: str) -> str:
    """The VM's sharing salt under ``policy.share_salting`` (ESX's Mem.ShareForceSalting):
    pages share only between VMs of the same salt, which becomes the host's sharing
    group.  0: one salt for all; 1: the VM's ``sharing_group``; 2: one salt per VM (only
    intra-VM sharing).  The salts of modes 0 and 2 cannot meet a mode-1 group name (only
    one mode applies in a run)."""
    if mode == 0:
        return ""
    if mode == 2:
        return f"vm:{vm}"
    return group


def vm_spec(cfg: SimConfig, name: str) -> VMSpec:
    v = cfg.vm(name)
    return VMSpec(
        name=v.name,
        n_pages=cfg.pages(v.memory_mb),
        shares=v.effective_shares,
        min_pages=cfg.pages(v.min_mb),
        max_pages=cfg.pages(v.effective_max_mb),
        balloon=v.balloon,
        sharing=v.sharing,
        sharing_group=salt(cfg.policy.share_salting, v.sharing_group, v.name),
        pinned_pages=cfg.pages(v.pinned_mb),
        overhead_pages=cfg.pages(cfg.policy.vm_overhead_mb),
        image=cfg.image(v.image),
        workload_kind=v.workload.kind,
        workload_params=v.workload.params,
    )
