"""Ballooning (Waldspurger 2002, sec. 3.2): the VMM takes memory back through the guest.

Scope: the balloon's cap and its two moves, for one VM.  *Inflating* by ``k`` pages: the
guest's balloon driver allocates ``k`` physical pages (free ones first; if it has too few,
the guest pages out its coldest by its own clock, :meth:`hosts.guest_os.GuestOS.choose_victims`)
and pins them; the VMM then releases their machine frames (state
:data:`hosts.page_state.BALLOONED`), breaking first any intact large page holding one
(:mod:`hosts.large_pages`).  *Deflating*: the VMM gives the pages back untouched
and the driver frees them in the guest.  The guest decides what to give up -- that is the
point of the balloon.

The guest-side bookkeeping (which physical pages the balloon holds) is the guest's page
table, :class:`hosts.guest_os.GuestOS` (``take_for_balloon`` / ``return_from_balloon``).

Not covered: how much to balloon and which VM (the host's reclamation policy,
:mod:`hosts.host_manager`); VMM swapping (:mod:`hosts.vmm_swap`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.guest_os import GuestOS
from vmmsim.hosts.host_memory import HostMemory


def balloon_cap(n_pages: int, pinned_pages: int, max_fraction: float, enabled: bool) -> int:
    """Most pages the balloon of a VM of ``n_pages`` may hold.  Pinned pages count against
    the cap (balloon + pinned <= ``max_fraction`` of the VM's memory), and the guest always
    keeps at least one page it can run in, so a ballooned guest evicts and never finds
    itself with nothing but pinned pages.  0 for a VM without a balloon driver."""
    if not enabled:
        return 0
    cap = min(int(n_pages * max_fraction), n_pages - 1)
    return max(0, cap - pinned_pages)


def inflate(
    guest: GuestOS,
    mem: HostMemory,
    vm_id: int,
    k: int,
    cap: int,
    guest_evict: Callable[[np.ndarray], None],
) -> int:
    """Take up to ``k`` pages from the guest (free ones first, then its coldest, paged out
    through ``guest_evict``), never beyond ``cap``; return the frames released."""
    k = min(k, cap - guest.n_ballooned)
    if k <= 0:
        return 0
    short = k - guest.n_free
    if short > 0:
        guest_evict(guest.choose_victims(short))
    k = min(k, guest.n_free)
    ppns = guest.alloc(k)
    guest.take_for_balloon(ppns)
    return mem.release(vm_id, np.sort(ppns), ps.BALLOONED)


def deflate(guest: GuestOS, mem: HostMemory, vm_id: int, k: int) -> int:
    """Give up to ``k`` ballooned pages back to the guest (untouched, free in the guest);
    return how many."""
    ppns = guest.ballooned_pages()[: max(0, k)]
    if not len(ppns):
        return 0
    mem.release(vm_id, ppns, ps.UNTOUCHED)
    guest.return_from_balloon(ppns)
    return len(ppns)
