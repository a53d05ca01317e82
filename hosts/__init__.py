"""One host's VMM memory manager: pure mechanism and per-host policy, no Ray.

Each mechanism's home (see ``docs/layout.md``):

* ballooning -- :mod:`hosts.balloon` (guest-side bookkeeping in :mod:`hosts.guest_os`).
* page sharing -- :mod:`hosts.sharing` (``index``: the xxh3 index; ``scan``: scan + merge).
* large pages -- :mod:`hosts.large_pages` (2 MB regions per VM: intact, backed, seen).
* VMM swapping -- :mod:`hosts.vmm_swap` (store); victim choice ``VirtualMachine.swap_out_random``.
* the guest OS -- :mod:`hosts.guest_os` (page table, clock, guest swap),
  kernel :mod:`hosts.guest_os_kernel`.
* working-set sampling -- :mod:`hosts.working_set`.
* free-memory states -- :mod:`hosts.free_memory`; reclamation -- :mod:`hosts.reclamation`.
* allocation -- :mod:`hosts.allocation`.
* migration (host side) -- :mod:`hosts.migration_host`, kernels :mod:`hosts.migration_host_kernel`.
* one VM step -- :mod:`hosts.vm` (+ runtime numpy fallback :mod:`hosts.vm_general`,
  kernels :mod:`hosts.vm_kernel`); the fused tick -- :mod:`hosts.tick_steps` +
  :mod:`hosts.tick_steps_kernel`, the one place the mechanisms meet.
* frames, maps, page ops -- :mod:`hosts.machine_memory`, :mod:`hosts.phys_map`,
  :mod:`hosts.host_memory`; the tick loop -- :mod:`hosts.host_manager`.

The numpy oracles of the kernels live in ``tests/oracles/`` (not runtime code).
"""
