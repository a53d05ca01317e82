"""One host's VMM memory manager: pure mechanism and per-host policy, no Ray.

Layers, bottom up:

* :mod:`hosts.machine_memory` -- machine frames: contents, refcounts, free stack.
* :mod:`hosts.phys_map` -- one VM's physical-to-machine map (numpy arrays per page).
* :mod:`hosts.page_sharing` -- content-based page sharing (xxh3 index, hints, COW).
* :mod:`hosts.vmm_swap` -- the host's swap store (real bytes).
* :mod:`hosts.host_memory` -- page-level operations over all of the above.
* :mod:`hosts.guest_os`, :mod:`hosts.balloon`, :mod:`hosts.working_set` -- inside a VM.
* :mod:`hosts.allocation`, :mod:`hosts.free_memory` -- pure policies.
* :mod:`hosts.host_manager` -- :class:`HostMemoryManager`, one host's tick loop.
"""
