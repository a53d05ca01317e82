"""Compiled: the planned VM steps of one host tick, many VMs in one call.

Scope: for each VM of a run of planned steps (:class:`workloads.patterns.SplitPlan`: counts
already drawn by numpy), draw its pages and content keys from the VM's own generator
(:func:`workloads.patterns_kernel.split_draw`), deduplicate them and apply them
(:func:`hosts.vm_kernel.step`'s two parts) -- what ``vm.run_step`` does on its fast
path, VM after VM, in the host's order, without returning to Python in between.

The call stops at the first VM that needs Python:

* ``DECLINED`` -- its accesses are drawn (in ``reads``/``writes``/``wkeys``) but not
  applied: the host is short of frames, a balloon page was touched, the step is too large
  for one chunk, or the guest must evict and its swap disk may be too small.  Nothing of
  that VM changed -- unless the guest evicted here (row ``q`` of ``ev``: ``EV_DONE``),
  which the caller takes in first -- so the caller applies the drawn accesses with
  ``vm.apply`` (which handles all of those) and resumes;
* ``DECREF`` -- it was applied, and a copy-on-write break dropped the last reference of a
  shared frame: the caller frees it (``HostMemory.decref``, which updates the sharing
  index) before the next VM allocates frames, as the one-VM path does.

A step the guest has no free pages for is applied here too, as the one-VM path does it
(:meth:`hosts.vm.VirtualMachine.make_guest_room`): the guest's clock picks as many victims
as the step's misses need beyond its free pages, sparing the step's resident pages
(:func:`hosts.guest_os.clock_sweep`), the guest pages them out
(:func:`hosts.guest_os_kernel.evict`) and the step is applied again; its eviction's
counts go in row ``q`` of ``ev`` (columns ``EV_*``).

Per-VM arrays come as a table of data addresses and lengths, viewed here as numpy arrays
(``numba.carray``): a table is an ordinary int64 array, so the call's types -- and its
compiled code in numba's disk cache -- do not depend on how many VMs a host runs.  The
caller keeps the arrays alive (:class:`hosts.tick_steps.TickSteps`).  Per-VM scalars come
in two small matrices.
"""

from __future__ import annotations

import numba
import numpy as np
from vmmsim.hosts import guest_os as gos
from vmmsim.hosts import guest_os_kernel as gk
from vmmsim.hosts import vm_kernel as vk
from vmmsim.hosts.native import JIT
from vmmsim.hosts.native import view_of as _view
from vmmsim.hosts.native import voidptr as _voidptr
from vmmsim.workloads.patterns_kernel import split_draw

#: How a call ended: every VM done; VM ``q`` drawn, not applied; VM ``q`` applied, its
#: ``to_free`` frames left for the caller.
END, DECLINED, DECREF = 0, 1, 2

#: Columns of ``vin`` (int64, one row per planned step).
(
    V_G_FREE,  # guest free pages
    V_GS_FREE,  # guest swap free slots
    V_ID,  # vm_id (frame owner)
    V_CAP,  # the most distinct pages one chunk may hold
    V_LEN_R,  # read pool prefix
    V_N_R,  # reads to draw
    V_LEN_W,  # write pool prefix
    V_N_W,  # writes to draw
    V_HAND,  # the guest's clock hand
    N_VIN,
) = range(10)

#: Columns of ``ev`` (int64, one row per planned step): the guest's eviction here, if any.
(
    EV_DONE,  # 1: the guest evicted for this step (the columns below are its outcome)
    EV_HAND,  # the clock hand after
    EV_G_FREE,  # guest free pages after
    EV_GS_FREE,  # guest swap free slots after
    EV_SWAPPED,  # dirty victims written to the guest's swap
    EV_VMM_IN,  # victims read back from the VMM's swap first (double paging), all tiers
    EV_IN_CACHE,  # ... of them from the host swap cache
    EV_IN_ZIP,  # ... of them from the compression cache
    EV_BALLOONED,  # 1: a dirty victim was ballooned at the VMM (the caller raises)
    N_EV,
) = range(10)

#: Columns of ``vkey`` (uint64): the generator's C entry points.
K_F32, K_F64, K_STATE, N_VKEY = range(4)

#: Columns of ``addr`` / ``alen``: a VM's arrays (their data addresses / lengths), in the
#: order of :func:`hosts.tick_steps.vm_arrays`.
(
    A_VSTATE, A_V2P, A_P2V, A_CLEAN, A_PREF, A_GFREE, A_GS_CONTENT, A_GS_FREE,
    A_STATE, A_LOC, A_COUNTS, A_BITS, A_SCRATCH, A_POOL_R, A_POOL_W,
    A_IMG_KEYS, A_PINNED, N_ARR,
) = range(18)  # fmt: skip


@numba.njit(**JIT)
def run_steps(
    lo: int,
    hi: int,
    vin: np.ndarray,
    vkey: np.ndarray,
    addr: np.ndarray,
    alen: np.ndarray,
    content: np.ndarray,
    words: np.ndarray,
    refcount: np.ndarray,
    owner_vm: np.ndarray,
    owner_ppn: np.ndarray,
    f_free: np.ndarray,
    f_n_free: int,
    s_content: np.ndarray,
    s_used: np.ndarray,
    s_free: np.ndarray,
    s_n_free: int,
    s_tier: np.ndarray,
    zero: np.ndarray,
    table: np.ndarray,
    reads: np.ndarray,
    writes: np.ndarray,
    wkeys: np.ndarray,
    to_free: np.ndarray,
    res: np.ndarray,
    ev: np.ndarray,
) -> tuple[int, int]:
    """Planned steps ``lo .. hi-1`` (rows of ``vin``/``vkey``/``addr``/``res``); return
    ``(q, how)``: steps ``lo .. q-1`` are applied (their results in ``res``), and ``how``
    says what became of step ``q`` (``END``: ``q == hi``).  The buffers ``reads``,
    ``writes``, ``wkeys`` and ``to_free`` must hold the largest step; the arrays behind
    ``addr`` must be alive and have the lengths in ``alen``."""
    cb = s_content.shape[1]
    for q in range(lo, hi):
        v, k, a, n = vin[q], vkey[q], addr[q], alen[q]
        n_r = v[V_N_R] if v[V_N_R] > 0 and v[V_LEN_R] > 0 else 0
        n_w = v[V_N_W] if v[V_N_W] > 0 and v[V_LEN_W] > 0 else 0
        rd_in, wr_in, k_in = reads[:n_r], writes[:n_w], wkeys[:n_w]
        if n_r or n_w:  # (draw_split makes no draw at all for an empty step)
            pool_r = _view(a, n, A_POOL_R, np.int64)[: v[V_LEN_R]]
            pool_w = _view(a, n, A_POOL_W, np.int64)[: v[V_LEN_W]]
            split_draw(k[K_F32], k[K_F64], k[K_STATE], pool_r, pool_w, rd_in, wr_in, k_in)
        row = res[q]
        rd = np.empty(n_r, dtype=np.int64)
        wr = np.empty(n_w, dtype=np.int64)
        keys = np.empty(n_w, dtype=np.uint64)
        scratch = _view(a, n, A_SCRATCH, np.int32)
        m, j = vk.dedup_kernel(rd_in, wr_in, k_in, scratch, rd, wr, keys)
        if m < 0 or m + j > v[V_CAP]:
            row[vk.ST] = vk.RANGE if m < 0 else vk.CHUNK
            return q, DECLINED
        gs_content = numba.carray(_voidptr(a[A_GS_CONTENT]), (n[A_GS_CONTENT], cb), np.uint8)
        vstate, v2p = _view(a, n, A_VSTATE, np.int8), _view(a, n, A_V2P, np.int32)
        p2v, pref = _view(a, n, A_P2V, np.int32), _view(a, n, A_PREF, np.bool_)
        clean, g_free = _view(a, n, A_CLEAN, np.bool_), _view(a, n, A_GFREE, np.int32)
        gs_free = _view(a, n, A_GS_FREE, np.int32)
        state, loc = _view(a, n, A_STATE, np.int8), _view(a, n, A_LOC, np.int32)
        g_n_free, gs_n_free = v[V_G_FREE], v[V_GS_FREE]
        er = ev[q]
        er[EV_DONE] = 0
        for attempt in range(2):
            vk.apply_chunk_kernel(
                rd[:m], wr[:j], keys[:j],
                vstate, v2p, p2v, clean, pref, g_free, g_n_free,
                gs_content, gs_free, gs_n_free,
                state, loc, _view(a, n, A_COUNTS, np.int64), _view(a, n, A_BITS, np.uint8),
                content, words, refcount, owner_vm, owner_ppn, f_free, f_n_free,
                s_content, s_used, s_free, s_n_free, s_tier,
                zero, table, v[V_ID],
                _view(a, n, A_IMG_KEYS, np.uint64), to_free, row,
            )  # fmt: skip
            if row[vk.ST] != vk.EVICT or attempt:
                break
            # The guest has too few free pages: it evicts, as make_guest_room does.
            short, protect = gk.room_needed(vstate, v2p, rd[:m], wr[:j], g_n_free)
            if short <= 0 or gs_n_free < short:  # (its swap might need to grow: Python)
                break
            victims = np.empty(min(short, p2v.shape[0]), dtype=np.int64)
            nv, hand = gos.clock_sweep(
                p2v, _view(a, n, A_PINNED, np.bool_), pref, protect, v[V_HAND], short, victims
            )
            eres = np.empty(gk.N_RES, dtype=np.int64)
            if nv:
                gk.evict(
                    victims[:nv], p2v, v2p, vstate, clean, pref, g_free, g_n_free,
                    gs_content, gs_free, gs_n_free, state, loc, content, s_content, s_tier,
                    eres,
                )  # fmt: skip
            else:
                eres[:] = 0
                eres[gk.R_G_FREE], eres[gk.R_GS_FREE] = g_n_free, gs_n_free
            er[EV_DONE], er[EV_HAND] = 1, hand
            er[EV_BALLOONED] = eres[gk.R_ST] == gk.BALLOONED
            if er[EV_BALLOONED]:
                row[vk.ST] = vk.BALLOON
                break
            g_n_free, gs_n_free = eres[gk.R_G_FREE], eres[gk.R_GS_FREE]
            er[EV_G_FREE], er[EV_GS_FREE] = g_n_free, gs_n_free
            er[EV_SWAPPED], er[EV_VMM_IN] = eres[gk.R_SWAPPED], eres[gk.R_VMM_IN]
            er[EV_IN_CACHE], er[EV_IN_ZIP] = eres[gk.R_IN_CACHE], eres[gk.R_IN_ZIP]
            if nv < short:  # too few victims: the one-VM path goes on as it would
                row[vk.ST] = vk.EVICT
                break
        if row[vk.ST] != vk.OK:
            return q, DECLINED
        f_n_free = row[vk.F_FREE]
        s_n_free = row[vk.S_FREE]
        if row[vk.N_FREE]:
            return q, DECREF
    return hi, END
