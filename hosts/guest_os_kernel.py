"""Compiled guest eviction: the guest pages out its clock's victims in one call.

Scope: the work of the numpy oracle ``tests/oracles/guest_evict.py`` with
:meth:`hosts.guest_os.GuestOS.evict` -- dirty victims' bytes read from the VMM (a frame,
or the host's swap store: double paging) and written to the guest's swap disk, clean ones
dropped, the pages' table entries cleared and the physical pages pushed on the guest's
free list -- with the exact slot and free-list order of that numpy oracle, which the twin
tests compare this kernel with.

Also :func:`room_needed`: how many pages a step's misses need beyond the guest's free ones,
and which resident pages the clock must spare -- the one definition both the one-VM path
(:meth:`hosts.vm.VirtualMachine.make_guest_room`) and the batched steps
(:func:`hosts.tick_steps_kernel.run_steps`) evict by.

Not covered: choosing the victims (:meth:`hosts.guest_os.GuestOS.choose_victims`); growing
the guest's swap disk (the caller grows it when :func:`evict` asks for slots).
"""

from __future__ import annotations

import numba
import numpy as np
from vmmsim.hosts import guest_os as gos
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.native import JIT

#: Status of :func:`evict`: done; the guest swap needs ``res[R_NEED]`` free slots (grow it
#: and call again); a dirty victim is ballooned at the VMM (the numpy path raises).
OK, SWAP_SLOTS, BALLOONED = 0, 1, 2
#: Slots of the ``res`` array (int64).
#: (``R_VMM_IN`` counts reads from every tier; ``R_IN_CACHE`` / ``R_IN_ZIP`` those of them
#: from the swap cache / the compression tier.)
R_ST, R_NEED, R_VMM_IN, R_SWAPPED, R_G_FREE, R_GS_FREE, R_IN_CACHE, R_IN_ZIP, N_RES = range(9)

_MAP, _SHR, _VSW, _BAL = ps.MAPPED, ps.SHARED, ps.VMM_SWAPPED, ps.BALLOONED


@numba.njit(**JIT)
def room_needed(vstate, v2p, rd, wr, g_n_free):  # noqa: ANN001, ANN201
    """For a step reading virtual pages ``rd`` and writing ``wr`` (each deduplicated):
    ``(short, protect)`` -- the pages its misses need beyond the guest's ``g_n_free``
    free pages (<= 0: none), and the physical pages of its resident virtual pages, reads
    then writes, which the clock must not pick (int64)."""
    miss = 0
    for x in range(rd.shape[0]):
        if vstate[rd[x]] != gos.RESIDENT:
            miss += 1
    for x in range(wr.shape[0]):
        if vstate[wr[x]] != gos.RESIDENT:
            miss += 1
    protect = np.empty(rd.shape[0] + wr.shape[0] - miss, dtype=np.int64)
    c = 0
    for x in range(rd.shape[0]):
        if vstate[rd[x]] == gos.RESIDENT:
            protect[c] = v2p[rd[x]]
            c += 1
    for x in range(wr.shape[0]):
        if vstate[wr[x]] == gos.RESIDENT:
            protect[c] = v2p[wr[x]]
            c += 1
    return miss - g_n_free, protect


@numba.njit(**JIT)
def evict(
    victims, p2v, v2p, vstate, clean, pref, g_free, g_n_free,
    gs_content, gs_free, gs_n_free, state, loc, f_content, s_content, s_tier, res,
):  # fmt: skip
    """Evict the guest's virtual pages on physical pages ``victims`` (unique).

    Fills ``res``; changes nothing unless ``res[R_ST] == OK``.  Guest swap slots are
    taken from the top of its free stack in victim order; the freed physical pages are
    pushed in descending order (the next allocations take them ascending)."""
    for i in range(N_RES):
        res[i] = 0
    n = victims.shape[0]
    n_dirty = 0
    vmm_in = in_c = in_z = 0
    for i in range(n):
        p = victims[i]
        if not clean[p2v[p]]:
            n_dirty += 1
            s = state[p]
            if s == _BAL:
                res[R_ST] = BALLOONED
                return
            if s == _VSW:
                vmm_in += 1  # double paging: the VMM reads it back from its swap first
                if loc[p] < s_tier[0]:
                    in_c += 1
                elif loc[p] >= s_tier[1]:
                    in_z += 1
    if n_dirty > gs_n_free:
        res[R_ST] = SWAP_SLOTS
        res[R_NEED] = n_dirty
        return
    cb = gs_content.shape[1]
    for i in range(n):
        p = victims[i]
        v = p2v[p]
        if clean[v]:
            vstate[v] = gos.DROPPED
            v2p[v] = -1
        else:
            gs_n_free -= 1
            slot = gs_free[gs_n_free]
            s = state[p]
            if s == _MAP or s == _SHR:
                gs_content[slot, :] = f_content[loc[p], :cb]
            elif s == _VSW:
                gs_content[slot, :] = s_content[loc[p], :cb]
            else:  # untouched at the VMM: zeros
                gs_content[slot, :] = 0
            v2p[v] = -2 - slot  # a swapped page's table entry holds its guest swap slot
            vstate[v] = gos.SWAPPED
    order = np.sort(victims)
    for i in range(n):
        p = order[n - 1 - i]
        g_free[g_n_free + i] = p
        p2v[p] = gos.FREE
        pref[p] = False
    res[R_VMM_IN] = vmm_in
    res[R_IN_CACHE] = in_c
    res[R_IN_ZIP] = in_z
    res[R_SWAPPED] = n_dirty
    res[R_G_FREE] = g_n_free + n
    res[R_GS_FREE] = gs_n_free
