"""Compiled fast path of one VM step: deduplicate the accesses, then apply them in one call.

Scope: the work of :meth:`hosts.vm.VirtualMachine.apply` in the common case, with the exact
semantics (and the exact order of free-list pops and pushes) of the general path in
``hosts/vm_general.py`` and ``hosts/host_memory.py``:

* :func:`dedup` -- sorted unique reads and writes; the last write to a page wins, a page both
  read and written is a write;
* :func:`apply_chunk` -- one deduplicated chunk: the guest side (misses served from the
  guest's free pages: first touch, guest swap-in, re-read of dropped image pages; guest
  page table, reference and clean bits) and the VMM side (first touch zero-fill, VMM
  swap-in, copy-on-write break with its reference drop, page contents written from content
  keys as :func:`workloads.content.page_bytes` makes them, the accessed and dirty bits
  and sampler hits -- one byte per page, ``bits``: :data:`hosts.phys_map.ACCESSED`,
  ``DIRTY``, ``SAMPLED`` (a hit clears it));
* :func:`step` -- both in one call (one dispatch: numba's per-call cost grows with the
  number of array arguments, so the common step makes exactly one compiled call).

The kernel first checks, without changing anything, that the chunk needs no guest eviction,
touches no ballooned page and fits in the host's free frames; otherwise it returns a status
and the caller makes room (``make_room``) and retries, or takes the general path.  A shared
frame whose last reference a COW break drops is *not* freed here: its reference is left for
the caller to drop with :meth:`hosts.host_memory.HostMemory.decref`, which also updates the
sharing index -- exactly what the general path does, in the same order (after all
allocations of the chunk).

Not covered: guest eviction (clock, guest swap-out), chunking of oversized steps, balloon
errors -- those stay with the caller (``hosts/vm.py``: guest eviction through
:mod:`hosts.guest_os_kernel`) or on the general path (``hosts/vm_general.py``).
"""

from __future__ import annotations

import sys

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros
from vmmsim.hosts import guest_os as gos
from vmmsim.hosts import page_state as ps
from vmmsim.hosts import phys_map as pm
from vmmsim.hosts.native import JIT
from vmmsim.workloads.content import MIX_M1, MIX_M2

#: Status codes (``res[ST]``): done; the guest must evict (general path); the host needs
#: ``res[NEED]`` frames (make room, call again); a ballooned page was touched (general
#: path, which raises); more distinct pages than one chunk may hold (``step`` only); a
#: page number outside the guest (``step`` only: the general path, which raises).
OK, EVICT, FRAMES, BALLOON, CHUNK, RANGE = 0, 1, 2, 3, 4, 5

#: Slots of the ``res`` array ``apply_chunk`` and ``step`` fill (int64).
(
    ST,  # status
    NEED,  # frames the chunk needs (when FRAMES)
    DISK,  # guest disk reads (swap-in, dropped re-read) + VMM swap-ins
    GUEST_IN,  # guest swap-ins / dropped re-reads
    MINOR,  # minor faults: guest first touch, VMM first touch, COW, sampler hits
    FIRST,  # VMM first touches
    COW,  # COW breaks
    VMM_IN,  # VMM swap-ins
    SAMPLE,  # sampler hits
    G_FREE,  # guest free pages after
    GS_FREE,  # guest swap free slots after
    F_FREE,  # free frames after
    S_FREE,  # VMM swap free slots after
    ZERO_D,  # change of the VM's zero-shared page count
    N_FREE,  # frames left in ``to_free`` for the caller's ``decref``
    GS_TAKEN,  # guest swap slots freed (n_used decreases by this)
    IN_CACHE,  # VMM swap-ins from the host swap cache (not in DISK / VMM_IN)
    IN_ZIP,  # VMM swap-ins from the compression cache: decompressions (not in DISK / VMM_IN)
    N_RES,
) = range(19)

_RESIDENT, _NEVER, _SWAPPED, _DROPPED = gos.RESIDENT, gos.NEVER, gos.SWAPPED, gos.DROPPED
_UNT, _MAP, _SHR, _BAL, _VSW = ps.UNTOUCHED, ps.MAPPED, ps.SHARED, ps.BALLOONED, ps.VMM_SWAPPED

_ACC, _ACC_DIRTY, _SMP = pm.ACCESSED, pm.ACCESSED | pm.DIRTY, pm.SAMPLED

_LITTLE = sys.byteorder == "little"


@numba.njit(**JIT)
def mix64(x: np.uint64) -> np.uint64:
    """SplitMix64 finaliser of one word (as :func:`workloads.content.mix64`)."""
    x = x ^ (x >> np.uint64(30))
    x = x * MIX_M1
    x = x ^ (x >> np.uint64(27))
    x = x * MIX_M2
    return x ^ (x >> np.uint64(31))


@numba.njit(**JIT)
def write_key(
    content: np.ndarray, words: np.ndarray, f: int, key: np.uint64, table: np.ndarray
) -> None:
    """``content[f] = page_bytes([key], content.shape[1])[0]``: word i is
    ``mix64(key) ^ table[i]``, little-endian; key 0 is the zero page.

    ``words``: ``content`` viewed as ``uint64[n, cb / 8]`` when that view holds exactly
    those bytes (whole words, little-endian machine), else an empty array (bytewise).
    """
    m = mix64(key) if key != 0 else np.uint64(0)
    if words.shape[0]:
        for i in range(words.shape[1]):
            words[f, i] = (m ^ table[i]) if key != 0 else np.uint64(0)
        return
    cb = content.shape[1]
    for i in range(table.shape[0]):
        w = (m ^ table[i]) if key != 0 else np.uint64(0)
        for b in range(min(8, cb - 8 * i)):
            content[f, 8 * i + b] = np.uint8((w >> np.uint64(8 * b)) & np.uint64(0xFF))


def word_view(content: np.ndarray) -> np.ndarray:
    """``content`` (``uint8[n, cb]``) as ``uint64[n, cb / 8]`` for :func:`write_key` when
    that view stores the little-endian words of ``page_bytes``; else an empty array."""
    if _LITTLE and content.shape[1] % 8 == 0 and content.flags.c_contiguous:
        return content.view(np.uint64)
    return _NO_WORDS


_NO_WORDS = np.zeros((0, 1), dtype=np.uint64)


@numba.njit(**JIT)
def _push_sorted_desc(stack: np.ndarray, n_free: int, items: np.ndarray) -> int:
    """``stack[n_free:n_free+k] = np.sort(items)[::-1]``; return the new count."""
    k = items.shape[0]
    if k == 0:
        return n_free
    s = np.sort(items)
    for i in range(k):
        stack[n_free + i] = s[k - 1 - i]
    return n_free + k


@numba.njit(**JIT)
def push_slots(stack: np.ndarray, tier: np.ndarray, slots: np.ndarray) -> tuple[int, int]:
    """Free VMM swap ``slots``, each onto its tier's stack in ``stack`` (descending, as
    :meth:`hosts.vmm_swap.SwapStore.free`), updating ``tier``'s free counts; return how
    many were in the swap cache and in the compression tier."""
    k = slots.shape[0]
    if k == 0:
        return 0, 0
    s = np.sort(slots)
    b1, b2 = tier[0], tier[1]
    n0 = n2 = 0
    for i in range(k):
        sl = s[k - 1 - i]
        if sl < b1:
            stack[tier[2]] = sl
            tier[2] += 1
            n0 += 1
        elif sl < b2:
            stack[b1 + tier[3]] = sl
            tier[3] += 1
        else:
            stack[b2 + tier[4]] = sl
            tier[4] += 1
            n2 += 1
    return n0, n2


@numba.njit(**JIT)
def _bits_to_pages(bits: np.ndarray, out: np.ndarray) -> int:
    """Write the set bits of a page bitmap to ``out`` in ascending page order; return how
    many (O(pages / 64 + set bits))."""
    j = 0
    for w in range(bits.shape[0]):
        x = bits[w]
        while x != 0:
            out[j] = w * 64 + np.int64(trailing_zeros(x))
            j += 1
            x &= x - np.uint64(1)
    return j


@numba.njit(**JIT)
def dedup_kernel(
    reads: np.ndarray,
    writes: np.ndarray,
    keys: np.ndarray,
    scratch: np.ndarray,
    rd_out: np.ndarray,
    wr_out: np.ndarray,
    k_out: np.ndarray,
) -> tuple[int, int]:
    """Sorted unique reads/writes into the out buffers; return (n_reads, n_writes), or
    (-1, -1) and no change if a page is outside ``[0, len(scratch))`` (or keys are
    missing).

    ``scratch`` (int32, one per guest page) must be all -1; it is all -1 again after.
    Pages are ordered through bitmaps, not sorted.
    """
    n = scratch.shape[0]
    if keys.shape[0] < writes.shape[0]:
        return -1, -1
    for i in range(reads.shape[0]):
        if reads[i] < 0 or reads[i] >= n:
            return -1, -1
    for i in range(writes.shape[0]):
        if writes[i] < 0 or writes[i] >= n:
            return -1, -1
    n_words = (n + 63) // 64
    wbits = np.zeros(n_words, dtype=np.uint64)
    rbits = np.zeros(n_words, dtype=np.uint64)
    one = np.uint64(1)
    nw = writes.shape[0]
    for i in range(nw):
        p = writes[i]
        scratch[p] = i  # the last write to a page wins
        wbits[p >> 6] |= one << np.uint64(p & 63)
    for i in range(reads.shape[0]):
        p = reads[i]
        rbits[p >> 6] |= one << np.uint64(p & 63)
    for w in range(n_words):
        rbits[w] &= ~wbits[w]  # read and written: a write
    j = _bits_to_pages(wbits, wr_out)
    for t in range(j):
        p = wr_out[t]
        k_out[t] = keys[scratch[p]]
        scratch[p] = -1
    m = _bits_to_pages(rbits, rd_out)
    return m, j


def dedup(
    reads: np.ndarray, writes: np.ndarray, keys: np.ndarray, scratch: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted unique ``(reads, writes, keys)``: the last write to a page wins, a page read
    and written is a write.  ``scratch``: int32 per guest page, all -1 (kept so)."""
    rd = np.empty(len(reads), dtype=np.int64)
    wr = np.empty(len(writes), dtype=np.int64)
    k = np.empty(len(writes), dtype=np.uint64)
    m, j = dedup_kernel(reads, writes, keys, scratch, rd, wr, k)
    if m < 0:
        raise IndexError(f"a guest page outside [0, {len(scratch)}), or fewer keys than writes")
    return rd[:m], wr[:j], k[:j]


@numba.njit(**JIT)
def apply_chunk_kernel(
    rd: np.ndarray,
    wr: np.ndarray,
    keys: np.ndarray,
    vstate: np.ndarray,
    v2p: np.ndarray,
    p2v: np.ndarray,
    clean: np.ndarray,
    pref: np.ndarray,
    g_free: np.ndarray,
    g_n_free: int,
    gs_content: np.ndarray,
    gs_free: np.ndarray,
    gs_n_free: int,
    state: np.ndarray,
    loc: np.ndarray,
    counts: np.ndarray,
    bits: np.ndarray,
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
    vm_id: int,
    img_keys: np.ndarray,
    to_free: np.ndarray,
    res: np.ndarray,
) -> None:
    """Apply sorted, disjoint guest reads ``rd`` and writes ``wr`` (keys ``keys``).

    Fills ``res`` (see the slot names above).  Changes nothing unless ``res[ST] == OK``.
    Loops that would find nothing (no first touch, swap-in, COW, guest miss) are skipped
    by counting first, so a step over resident, mapped pages makes four passes.
    """
    for i in range(N_RES):
        res[i] = 0
    n_r, n_w = rd.shape[0], wr.shape[0]
    # ---- checks (no changes): guest room, ballooned pages, frames needed.
    # Guest physical page of every access once mapped: misses take the free stack's top,
    # reads' misses first (as ``g.map(concat(miss_r, miss_w), g.alloc(...))``).
    r_pp = np.empty(n_r, dtype=np.int64)
    w_pp = np.empty(n_w, dtype=np.int64)
    top = g_n_free - 1
    need = 0
    ru = rv = wu = wv = ws = 0  # VMM reads untouched/swapped; VMM writes untouched/swapped/shared
    for i in range(n_r):
        v = rd[i]
        if vstate[v] == _RESIDENT:  # a VMM read
            p = v2p[v]
            r_pp[i] = p
            s = state[p]
            if s == _UNT:
                ru += 1
            elif s == _VSW:
                rv += 1
            elif s == _BAL:
                res[ST] = BALLOON
                return
        else:  # restored by the guest: a VMM write
            if top < 0:
                res[ST] = EVICT
                return
            p = g_free[top]
            top -= 1
            r_pp[i] = p
            s = state[p]
            if s == _UNT:
                wu += 1
            elif s == _VSW:
                wv += 1
            elif s == _SHR:
                ws += 1
            elif s == _BAL:
                res[ST] = BALLOON
                return
    for i in range(n_w):
        v = wr[i]
        if vstate[v] == _RESIDENT:
            p = v2p[v]
        else:
            if top < 0:
                res[ST] = EVICT
                return
            p = g_free[top]
            top -= 1
        w_pp[i] = p
        s = state[p]
        if s == _UNT:
            wu += 1
        elif s == _VSW:
            wv += 1
        elif s == _SHR:
            ws += 1
        elif s == _BAL:
            res[ST] = BALLOON
            return
    n_miss = g_n_free - 1 - top
    need = ru + rv + wu + wv + ws
    if need > f_n_free:
        res[ST] = FRAMES
        res[NEED] = need
        return

    # ---- guest side: VMM-level order is reads of resident pages, then writes = restored
    # reads (swapped, dropped, never -- each in page order), then the step's writes.
    if n_miss == 0:
        vr_pp = r_pp
        vw_pp = w_pp
        n_rest = 0
        n_sw = n_dr = 0
        r_slots = np.empty(0, dtype=np.int32)
        vw_v = wr
    else:
        n_sw = n_dr = n_nv = 0
        for i in range(n_r):
            st = vstate[rd[i]]
            if st == _SWAPPED:
                n_sw += 1
            elif st == _DROPPED:
                n_dr += 1
            elif st == _NEVER:
                n_nv += 1
        n_rest = n_sw + n_dr + n_nv
        vr_pp = np.empty(n_r - n_rest, dtype=np.int64)  # VMM reads
        vw_pp = np.empty(n_rest + n_w, dtype=np.int64)  # VMM writes
        vw_v = np.empty(n_rest + n_w, dtype=np.int64)  # their guest virtual pages
        r_slots = np.empty(n_sw, dtype=np.int32)
        a = 0
        b_sw, b_dr, b_nv = 0, n_sw, n_sw + n_dr
        disk = n_sw + n_dr
        minor = n_nv
        for i in range(n_r):
            v = rd[i]
            st = vstate[v]
            if st == _RESIDENT:
                vr_pp[a] = r_pp[i]
                a += 1
            elif st == _SWAPPED:
                r_slots[b_sw] = -2 - v2p[v]  # (a swapped page's v2p holds its slot)
                vw_pp[b_sw], vw_v[b_sw] = r_pp[i], v
                b_sw += 1
                v2p[v] = -1
                clean[v] = False
            elif st == _DROPPED:
                vw_pp[b_dr], vw_v[b_dr] = r_pp[i], v
                b_dr += 1
                clean[v] = True
            else:
                vw_pp[b_nv], vw_v[b_nv] = r_pp[i], v
                b_nv += 1
                clean[v] = False
        n_wsw = 0
        for i in range(n_w):
            v = wr[i]
            st = vstate[v]
            if st == _SWAPPED:
                n_wsw += 1
                disk += 1
            elif st == _DROPPED:
                disk += 1
            elif st == _NEVER:
                minor += 1
            vw_pp[n_rest + i], vw_v[n_rest + i] = w_pp[i], v
        w_slots = np.empty(n_wsw, dtype=np.int32)
        k = 0
        for i in range(n_w):
            v = wr[i]
            if vstate[v] == _SWAPPED:
                w_slots[k] = -2 - v2p[v]
                v2p[v] = -1
                k += 1
        # Guest swap: the read-back pages' bytes are copied out below, after their slots
        # are freed (nothing is written to the guest swap here, so that is the same).
        gs_n_free = _push_sorted_desc(gs_free, gs_n_free, r_slots)
        gs_n_free = _push_sorted_desc(gs_free, gs_n_free, w_slots)
        res[GS_TAKEN] = n_sw + n_wsw
        res[DISK] = disk
        res[GUEST_IN] = disk
        res[MINOR] = minor
        # map the misses (reads' first, in page order, then writes')
        for i in range(n_r):
            v = rd[i]
            if vstate[v] != _RESIDENT:
                p = r_pp[i]
                v2p[v], p2v[p], vstate[v] = p, v, _RESIDENT
        for i in range(n_w):
            v = wr[i]
            if vstate[v] != _RESIDENT:
                p = w_pp[i]
                v2p[v], p2v[p], vstate[v] = p, v, _RESIDENT
        g_n_free -= n_miss
    n_rr = vr_pp.shape[0]
    n_vw = vw_pp.shape[0]

    # ---- VMM reads: first touches (zero-filled) in order, then swap-ins in order
    first = 0
    in_c = in_z = 0  # swap-ins from the swap cache / compression tier
    if ru:
        for i in range(n_rr):
            p = vr_pp[i]
            if state[p] == _UNT:
                f_n_free -= 1
                f = f_free[f_n_free]
                refcount[f] = 1
                content[f, :] = 0
                owner_vm[f], owner_ppn[f] = vm_id, p
                state[p], loc[p] = _MAP, f
        counts[_UNT] -= ru
        counts[_MAP] += ru
        first += ru
    if rv:
        slots = np.empty(rv, dtype=np.int32)
        k = 0
        for i in range(n_rr):
            p = vr_pp[i]
            if state[p] == _VSW:
                f_n_free -= 1
                f = f_free[f_n_free]
                refcount[f] = 1
                sl = loc[p]
                content[f, :] = s_content[sl, :]
                slots[k] = sl
                k += 1
                s_used[sl] = False
                owner_vm[f], owner_ppn[f] = vm_id, p
                state[p], loc[p] = _MAP, f
        c0, c2 = push_slots(s_free, s_tier, slots)
        in_c += c0
        in_z += c2
        s_n_free += rv - c2
        counts[_VSW] -= rv
        counts[_MAP] += rv
    hits = 0
    for i in range(n_rr):
        p = vr_pp[i]
        b = bits[p] | _ACC
        if b & _SMP:  # a sampled page's first touch: a hit, no longer sampled
            b ^= _SMP
            hits += 1
        bits[p] = b
        pref[p] = True

    # ---- VMM writes: first touches, swap-ins (slot just freed), COW breaks; then bytes
    if wu:
        for i in range(n_vw):
            p = vw_pp[i]
            if state[p] == _UNT:
                f_n_free -= 1
                f = f_free[f_n_free]
                refcount[f] = 1
                owner_vm[f], owner_ppn[f] = vm_id, p
                state[p], loc[p] = _MAP, f
        counts[_UNT] -= wu
        counts[_MAP] += wu
        first += wu
    if wv:
        slots = np.empty(wv, dtype=np.int32)
        k = 0
        for i in range(n_vw):
            p = vw_pp[i]
            if state[p] == _VSW:
                f_n_free -= 1
                f = f_free[f_n_free]
                refcount[f] = 1
                sl = loc[p]
                slots[k] = sl
                k += 1
                s_used[sl] = False
                owner_vm[f], owner_ppn[f] = vm_id, p
                state[p], loc[p] = _MAP, f
        c0, c2 = push_slots(s_free, s_tier, slots)
        in_c += c0
        in_z += c2
        s_n_free += wv - c2
        counts[_VSW] -= wv
        counts[_MAP] += wv
    zero_d = 0
    n_tf = 0
    if ws:
        for i in range(n_vw):
            p = vw_pp[i]
            if state[p] == _SHR:
                old = loc[p]
                f_n_free -= 1
                f = f_free[f_n_free]
                refcount[f] = 1
                owner_vm[f], owner_ppn[f] = vm_id, p
                if zero[old]:
                    zero_d -= 1
                state[p], loc[p] = _MAP, f
                refcount[old] -= 1
                if refcount[old] == 0:  # the last reference: the caller's decref frees it
                    refcount[old] = 1
                    to_free[n_tf] = old
                    n_tf += 1
        counts[_SHR] -= ws
        counts[_MAP] += ws
    # contents of restored pages: guest swap, image, zeros
    for i in range(n_sw):
        content[loc[vw_pp[i]], :] = gs_content[r_slots[i], :]
    for i in range(n_sw, n_sw + n_dr):
        write_key(content, words, loc[vw_pp[i]], img_keys[vw_v[i]], table)
    for i in range(n_sw + n_dr, n_rest):
        content[loc[vw_pp[i]], :] = 0
    for i in range(n_vw):
        p = vw_pp[i]
        b = bits[p] | _ACC_DIRTY
        if b & _SMP:
            b ^= _SMP
            hits += 1
        bits[p] = b
        pref[p] = True
        if i >= n_rest:  # the step's writes: their bytes, and whether they are clean
            j = i - n_rest
            write_key(content, words, loc[p], keys[j], table)
            v = wr[j]
            clean[v] = v < img_keys.shape[0] and img_keys[v] == keys[j]

    vmm_in = rv + wv - in_c - in_z  # from disk
    res[IN_CACHE] = in_c
    res[IN_ZIP] = in_z
    res[MINOR] += first + ws + hits
    res[DISK] += vmm_in
    res[FIRST] = first
    res[COW] = ws
    res[VMM_IN] = vmm_in
    res[SAMPLE] = hits
    res[G_FREE] = g_n_free
    res[GS_FREE] = gs_n_free
    res[F_FREE] = f_n_free
    res[S_FREE] = s_n_free
    res[ZERO_D] = zero_d
    res[N_FREE] = n_tf


#: The kernel for one deduplicated chunk, as Python callers name it (``step`` and the
#: batched kernel call :func:`apply_chunk_kernel` itself, so a spy here sees Python's calls).
apply_chunk = apply_chunk_kernel


@numba.njit(**JIT)
def step(
    reads: np.ndarray,
    writes: np.ndarray,
    wkeys: np.ndarray,
    scratch: np.ndarray,
    cap: int,
    vstate: np.ndarray,
    v2p: np.ndarray,
    p2v: np.ndarray,
    clean: np.ndarray,
    pref: np.ndarray,
    g_free: np.ndarray,
    g_n_free: int,
    gs_content: np.ndarray,
    gs_free: np.ndarray,
    gs_n_free: int,
    state: np.ndarray,
    loc: np.ndarray,
    counts: np.ndarray,
    bits: np.ndarray,
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
    vm_id: int,
    img_keys: np.ndarray,
    to_free: np.ndarray,
    res: np.ndarray,
) -> None:
    """A whole step in one call: :func:`dedup_kernel` of the raw accesses, then
    :func:`apply_chunk` if the distinct pages fit in one chunk of ``cap`` (else
    ``res[ST] = CHUNK`` and nothing changes).  ``to_free`` needs ``len(writes) +
    len(reads)`` entries."""
    rd = np.empty(reads.shape[0], dtype=np.int64)
    wr = np.empty(writes.shape[0], dtype=np.int64)
    keys = np.empty(writes.shape[0], dtype=np.uint64)
    m, j = dedup_kernel(reads, writes, wkeys, scratch, rd, wr, keys)
    if m < 0 or m + j > cap:
        for i in range(N_RES):
            res[i] = 0
        res[ST] = RANGE if m < 0 else CHUNK
        return
    apply_chunk_kernel(
        rd[:m], wr[:j], keys[:j],
        vstate, v2p, p2v, clean, pref, g_free, g_n_free,
        gs_content, gs_free, gs_n_free,
        state, loc, counts, bits,
        content, words, refcount, owner_vm, owner_ppn, f_free, f_n_free,
        s_content, s_used, s_free, s_n_free, s_tier,
        zero, table, vm_id,
        img_keys, to_free, res,
    )  # fmt: skip
