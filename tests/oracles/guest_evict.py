"""Oracle: the guest's paging-out in plain numpy, and the switch that puts a VM on it.

:func:`guest_evict` is what :func:`vmmsim.hosts.guest_os_kernel.evict` computes in one
compiled call; the twin tests run one VM on each and compare every array.  Not runtime
code: a VM uses the kernel unless :func:`use_reference_paths` installs this oracle on it.
"""

from __future__ import annotations

from types import MethodType

import numpy as np
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.host_memory import HostMemory
from vmmsim.hosts.vm import VirtualMachine


def guest_evict(vm: VirtualMachine, mem: HostMemory, victims: np.ndarray) -> None:
    """The guest pages out ``victims`` (physical pages): dirty ones to its swap, reading
    their bytes from the VMM (a VMM-swapped victim is read back first: double paging)."""
    g = vm.guest
    need = g.needs_bytes(victims)
    data = np.zeros((len(victims), vm.sim.content_bytes), dtype=np.uint8)
    if need.any():
        vp = victims[need]
        vmm_sw = int((vm.pmap.state[vp] == ps.VMM_SWAPPED).sum())
        vm.tick.disk += vmm_sw
        vm.tick.vmm_swapins += vmm_sw
        data[need] = mem.read_bytes(vm.vm_id, vp)
    _, swapped = g.evict(victims, data)
    vm.tick.disk += swapped
    vm.stats.guest_swapouts += swapped


def use_reference_paths(vm: VirtualMachine, fast: bool = False) -> VirtualMachine:
    """Put ``vm`` on the reference paths unless ``fast``: the general (numpy) access path
    of :mod:`vmmsim.hosts.vm_general` (``fast_path`` off) and this module's eviction."""
    vm.fast_path = fast
    if not fast:
        vm.guest_evict = MethodType(guest_evict, vm)  # type: ignore[method-assign]
    return vm
