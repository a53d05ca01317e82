"""The ESX page-sharing scan of one batch, as one compiled kernel (Waldspurger 2002, fig. 3).

Scope: :func:`scan_batch` -- hash each candidate page (xxh3-64 of its bytes), classify it
against the sharing index (:mod:`hosts.sharing.index`) exactly as if the pages were handled
one after another, re-hash stale hints, byte-compare every proposed pair, and update the
index (promotions, zero-page flags, hint records) -- in one call per batch, so the scan
costs little more than hashing itself; :func:`merge_pages` -- move the verified pages onto
their shared frames and free the duplicates; :func:`scan_vms` -- a tick's batches of many
VMs, one after another, in one call (the only driver of the two above for the ESX scan:
:meth:`hosts.host_memory.HostMemory.scan` is it for one VM).

Not covered: the index's own table operations (:mod:`hosts.sharing.index`); scan rates
and order (:mod:`hosts.host_manager`); KSM's scan (:mod:`hosts.sharing.ksm`, which reuses
:func:`merge_pages`).
"""

from __future__ import annotations

import numba
import numpy as np
from vmmsim.hosts.native import JIT, memcmp, view_of, xxh3_64
from vmmsim.hosts.page_state import MAPPED as PAGE_MAPPED
from vmmsim.hosts.page_state import SHARED as PAGE_SHARED
from vmmsim.hosts.sharing.index import HINT, MIX, NONE, SHARED, delete, forget, insert, lookup


@numba.njit(**JIT)
def scan_batch(
    content, frames, g, slots, kind, key, grp, shift, counts, refcount, shared, zero, mask, zh
):
    """The ESX scan of one batch of private frames (one VM, sharing group ``g``).

    Exactly as if the pages were handled one after another, in three passes:

    1. classify: hash each page; a shared entry of its hash (index, or promoted earlier in
       this batch) -> pair the page with that frame; else a hint (made earlier in this
       batch, else in the index; not the page's own frame) -> pair with the hinted frame,
       which the batch then treats as shared under that hash; else the page becomes the
       batch's hint for its hash.
    2. verify: a hint from the index must still be a private frame that hashes to its key
       (else it is *stale*: every pair onto it is dropped and the first page that hit it
       becomes the hint for that hash instead); every other pair must be byte-equal --
       different bytes under equal hashes are a *collision* and never share.  (The
       compare itself runs in pass 1, right after hashing, while the page is in cache.)
    3. update the index: each hinted frame some page verified against becomes a shared
       frame (its hint entry gives way; ``shared``/``zero`` flags set); the batch's hints
       replace older hint entries (of the same frame, or the same hash).  References are
       added to the targets (``refcount``).  The caller moves the pages onto the targets,
       promotes the owner pages of promoted frames and frees the duplicates.

    Returns ``(ok_i, ok_t, promoted, n_stale, n_collisions, err)``: batch positions and
    target frames of verified pairs (batch order), promoted frames (ascending), counts,
    and ``err`` (-1, else a frame whose index entry was missing or doubly shared).
    """
    n = frames.shape[0]
    cb = content.shape[1]
    hashes = np.empty(n, dtype=np.uint64)
    for i in range(n):
        hashes[i] = xxh3_64(content[frames[i]].ctypes.data, cb) & mask

    # Batch-local map hash -> (frame the batch treats as shared, the batch's hint frame).
    lbits = 1
    while (1 << lbits) < 2 * n:
        lbits += 1
    lm = (1 << lbits) - 1
    lshift = np.uint64(64 - lbits)
    lh = np.zeros(lm + 1, dtype=np.uint64)
    lused = np.zeros(lm + 1, dtype=np.bool_)
    lbs = np.full(lm + 1, -1, dtype=np.int64)
    lnh = np.full(lm + 1, -1, dtype=np.int64)
    page_j = np.full(n, -1, dtype=np.int64)

    # (1) classify.
    pair_i = np.empty(n, dtype=np.int64)
    pair_t = np.empty(n, dtype=np.int64)
    same = np.empty(n, dtype=np.bool_)
    npair = 0
    old_t = np.empty(n, dtype=np.int64)  # hints from the index that pages hit
    old_j = np.empty(n, dtype=np.int64)
    nold = 0
    for i in range(n):
        f = frames[i]
        h = hashes[i]
        t = lookup(slots, kind, key, grp, shift, g, h, SHARED)
        if t < 0:
            j = np.int64((h * MIX) >> lshift)
            while lused[j] and lh[j] != h:
                j = (j + 1) & lm
            if not lused[j]:
                lused[j] = True
                lh[j] = h
            page_j[i] = j
            t = lbs[j]
            if t < 0:
                t = lnh[j]
                if t < 0:
                    t = lookup(slots, kind, key, grp, shift, g, h, HINT)
                    if t < 0 or t == f:
                        lnh[j] = f
                        continue
                    old_t[nold] = t
                    old_j[nold] = j
                    nold += 1
                lbs[j] = t
        if t != f:
            pair_i[npair] = i
            pair_t[npair] = t
            # Byte compare now, while the page is in cache; used unless t turns out stale.
            same[npair] = memcmp(content[f].ctypes.data, content[t].ctypes.data, cb) == 0
            npair += 1

    # (2) verify.  Stale index hints, sorted by frame for membership tests.
    st_t = np.empty(nold, dtype=np.int64)
    st_j = np.empty(nold, dtype=np.int64)
    nst = 0
    for x in range(nold):
        t = old_t[x]
        h = lh[old_j[x]]
        if (
            refcount[t] != 1
            or shared[t]
            or kind[t] != HINT
            or key[t] != h
            or (xxh3_64(content[t].ctypes.data, cb) & mask) != h
        ):
            st_t[nst] = t
            st_j[nst] = old_j[x]
            nst += 1
    order = np.argsort(st_t[:nst])
    st_t = st_t[:nst][order]
    st_j = st_j[:nst][order]
    st_first = np.full(nst, -1, dtype=np.int64)
    ok = np.zeros(npair, dtype=np.bool_)
    nok = 0
    ncoll = 0
    for p in range(npair):
        t = pair_t[p]
        if nst:
            s = np.searchsorted(st_t, t)
            if s < nst and st_t[s] == t:
                if st_first[s] < 0:
                    st_first[s] = p
                continue
        if same[p]:
            ok[p] = True
            nok += 1
        else:
            ncoll += 1
    # A stale hint is replaced by the first page that hit it (a fresh hint).
    for s in range(nst):
        j = st_j[s]
        if lnh[j] < 0:
            lnh[j] = frames[pair_i[st_first[s]]]

    # (3) update.  Verified targets not yet shared are promoted under the pair's hash.
    ok_i = np.empty(nok, dtype=np.int64)
    ok_t = np.empty(nok, dtype=np.int64)
    pro = np.empty(nok, dtype=np.int64)
    pro_h = np.empty(nok, dtype=np.uint64)
    npro = 0
    x = 0
    for p in range(npair):
        if not ok[p]:
            continue
        i = pair_i[p]
        t = pair_t[p]
        ok_i[x] = i
        ok_t[x] = t
        x += 1
        refcount[t] += 1
        if not shared[t]:
            shared[t] = True  # marks it seen: later pairs onto t are merges
            pro[npro] = t
            pro_h[npro] = hashes[i]
            npro += 1
            lnh[page_j[i]] = -1  # the hash is shared now: no hint for it
    for x in range(npro):
        t = pro[x]
        k = kind[t]
        if k != NONE:
            if not delete(slots, kind, key, grp, shift, t):
                return ok_i, ok_t, pro[:0], nst, ncoll, t
            counts[k] -= 1
        kind[t] = SHARED
        key[t] = pro_h[x]
        grp[t] = g
        if insert(slots, kind, key, grp, shift, t) >= 0:
            return ok_i, ok_t, pro[:0], nst, ncoll, t
        counts[SHARED] += 1
        if pro_h[x] == zh:
            z = True
            row = content[t]
            for b in range(cb):
                if row[b] != 0:
                    z = False
                    break
            zero[t] = z
    # The batch's hints: first drop what their frames held, then enter them (an older
    # hint entry under the same hash is displaced: its record goes back to NONE).
    for j in range(lm + 1):
        f = lnh[j]
        if f >= 0 and kind[f] != NONE:
            k = kind[f]
            if not delete(slots, kind, key, grp, shift, f):
                return ok_i, ok_t, pro[:npro], nst, ncoll, f
            counts[k] -= 1
            kind[f] = NONE
    for j in range(lm + 1):
        f = lnh[j]
        if f < 0:
            continue
        kind[f] = HINT
        key[f] = lh[j]
        grp[f] = g
        d = insert(slots, kind, key, grp, shift, f)
        if d >= 0:
            kind[d] = NONE
        else:
            counts[HINT] += 1
    pro = np.sort(pro[:npro])
    return ok_i, ok_t, pro, nst, ncoll, -1


@numba.njit(**JIT)
def merge_pages(
    pages, targets, dups, state, loc, pcounts, zero, refcount, shared, owner_vm, owner_ppn,
    f_free, f_n_free, slots, kind, key, grp, shift, icounts,
):  # fmt: skip
    """Apply a batch's verified pairs to its VM (after the owners' promotion).

    Moves guest pages ``pages`` (private, unique) onto their shared ``targets``
    (``PhysMap.set_state(pages, SHARED, targets)``), then drops one reference of each
    duplicate frame ``dups`` (their private frames): a frame left with none goes back on
    the free stack (ascending frames pushed in descending order, owner and shared flags
    cleared), leaves the sharing index and loses its zero flag -- exactly
    :meth:`hosts.host_memory.HostMemory.decref`.

    Returns ``(zero-shared pages added, frames freed, free frames after, err)``; ``err``
    is -1, else a frame whose refcount went negative (-2 - frame) or whose record has an
    entry the index does not hold (the frame).
    """
    nz = 0
    for x in range(pages.shape[0]):
        p = pages[x]
        t = targets[x]
        pcounts[state[p]] -= 1
        pcounts[PAGE_SHARED] += 1
        state[p] = PAGE_SHARED
        loc[p] = t
        if zero[t]:
            nz += 1
    freed = np.empty(dups.shape[0], dtype=np.int64)
    n_fr = 0
    for x in range(dups.shape[0]):
        f = dups[x]
        refcount[f] -= 1
        if refcount[f] < 0:
            return nz, n_fr, f_n_free, -2 - f
        if refcount[f] == 0:
            freed[n_fr] = f
            n_fr += 1
    freed = np.sort(freed[:n_fr])
    for x in range(n_fr):
        f = freed[x]
        shared[f] = False
        owner_vm[f] = -1
        owner_ppn[f] = -1
        f_free[f_n_free + x] = freed[n_fr - 1 - x]
    f_n_free += n_fr
    bad = forget(slots, kind, key, grp, shift, icounts, freed)
    if bad >= 0:
        return nz, n_fr, f_n_free, bad
    for x in range(n_fr):
        zero[freed[x]] = False
    return nz, n_fr, f_n_free, -1


#: Columns of :func:`scan_vms`'s per-VM results (one row per scanned VM).
R_SCANNED, R_HINT_HITS, R_MERGED, R_STALE, R_COLL, R_FREED, N_RES = range(7)
#: Columns of its pmap address table (one row per ``vm_id``).
M_STATE, M_LOC, M_COUNTS, N_MAP = range(4)


@numba.njit(**JIT)
def scan_vms(
    vms, starts, cands, groups, maddr, mlen, content, refcount, shared, owner_vm, owner_ppn,
    f_free, f_n_free, slots, kind, key, grp, shift, icounts, zero, mask, zh, res, nz_add,
):  # fmt: skip
    """One tick's sharing scan of many VMs: for VM ``v = vms[q]`` (sharing group
    ``groups[v]``; -1: it does not share, skipped), its candidate pages
    ``cands[starts[q]:starts[q+1]]``, exactly what :meth:`HostMemory.scan` does, VM after
    VM in this order -- keep the ``MAPPED`` candidates, :func:`scan_batch` them, make the
    owner pages of promoted frames (any VM's, by ``owner_vm``) shared, :func:`merge_pages`.

    Each VM's map arrays (state, loc, counts) come from the address table ``maddr``/``mlen``
    (row ``vm_id``, columns ``M_*``).  Writes row ``q`` of ``res`` (columns ``R_*``) and adds
    zero-shared pages per VM to ``nz_add[vm_id]``.  Returns ``(q, free frames after,
    err, what)``: ``q == len(vms)`` when every VM is done, else the VM at which an invariant
    broke (``what`` 1: ``err`` is a frame whose index entry was missing or doubly shared in
    the scan; 2: its refcount went negative in the merge; 3: its index entry was missing
    in the merge)."""
    for q in range(vms.shape[0]):
        v = vms[q]
        a, n = maddr[v], mlen[v]
        state = view_of(a, n, M_STATE, np.int8)
        loc = view_of(a, n, M_LOC, np.int32)
        pcounts = view_of(a, n, M_COUNTS, np.int64)
        row = res[q]
        if groups[v] < 0:
            continue  # (a VM that does not share)
        ppns = cands[starts[q] : starts[q + 1]]
        m = 0
        for x in range(ppns.shape[0]):
            if state[ppns[x]] == PAGE_MAPPED:
                m += 1
        cand = np.empty(m, dtype=np.int64)
        frames = np.empty(m, dtype=np.int64)
        m = 0
        for x in range(ppns.shape[0]):
            p = ppns[x]
            if state[p] == PAGE_MAPPED:
                cand[m] = p
                frames[m] = loc[p]
                m += 1
        row[R_SCANNED] = m
        if m == 0:
            continue
        ok_i, targets, promote, n_stale, n_coll, err = scan_batch(
            content, frames, groups[v], slots, kind, key, grp, shift, icounts, refcount,
            shared, zero, mask, zh,
        )  # fmt: skip
        if err >= 0:
            return q, f_n_free, err, 1
        row[R_STALE] = n_stale
        row[R_COLL] = n_coll
        if targets.shape[0] == 0:
            continue
        row[R_HINT_HITS] = promote.shape[0]
        row[R_MERGED] = targets.shape[0] - promote.shape[0]
        for x in range(promote.shape[0]):  # the owner pages of promoted frames: SHARED
            t = promote[x]
            o = owner_vm[t]
            oa, on = maddr[o], mlen[o]
            ostate = view_of(oa, on, M_STATE, np.int8)
            op = owner_ppn[t]
            ocounts = view_of(oa, on, M_COUNTS, np.int64)
            ocounts[ostate[op]] -= 1
            ocounts[PAGE_SHARED] += 1
            ostate[op] = PAGE_SHARED
            view_of(oa, on, M_LOC, np.int32)[op] = t
            if zero[t]:
                nz_add[o] += 1
        pages = np.empty(ok_i.shape[0], dtype=np.int64)
        dups = np.empty(ok_i.shape[0], dtype=np.int64)
        for x in range(ok_i.shape[0]):
            pages[x] = cand[ok_i[x]]
            dups[x] = frames[ok_i[x]]
        nz, n_fr, f_n_free, err = merge_pages(
            pages, targets, dups, state, loc, pcounts, zero, refcount, shared, owner_vm,
            owner_ppn, f_free, f_n_free, slots, kind, key, grp, shift, icounts,
        )  # fmt: skip
        if err != -1:
            return q, f_n_free, max(err, -2 - err), 2 if err < -1 else 3
        nz_add[v] += nz
        row[R_FREED] = n_fr
    return vms.shape[0], f_n_free, -1, 0
