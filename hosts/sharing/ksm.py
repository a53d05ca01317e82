"""KSM, Linux's kernel samepage merging, as the sharing scanner of a KVM-style host.

Source: Linux ``Documentation/admin-guide/mm/ksm.rst`` and ``mm/ksm.c``
(``cmp_and_merge_page``).  ksmd wakes every ``sleep_millisecs`` (default 20) and scans
``pages_to_scan`` (default 100) pages of the registered (``MADV_MERGEABLE``) memory --
here every VM with ``sharing = true`` -- walking the VMs' pages *linearly* (VMs in name
order, each from its first page to its last; only present pages count, as ksmd skips
addresses with nothing mapped).  Each page, in ``cmp_and_merge_page``'s order:

1. a page already shared is left alone; a page that was an unstable-tree node leaves it;
2. the *stable tree* (shared pages) is searched: a byte-equal shared page with fewer than
   ``max_page_sharing`` (default 256) sharers takes the page (its frame is freed, COW on
   write as everywhere in vmmsim); a shared page that reaches the cap is set aside
   (:data:`hosts.sharing.index.FULL`), so later matches start a new shared copy (KSM's
   stable-node chains);
3. the page's checksum is compared with the one its previous scan stored: if it changed
   (or this is its first scan), the new checksum is stored and the page is *volatile*:
   it enters no tree this time;
4. with ``use_zero_pages`` a page of zeros is merged with the zero page (not counted in
   ``pages_shared`` / ``pages_sharing``, and never capped);
5. the *unstable tree* (pages found unchanged since the last pass) is searched: a
   byte-equal node still private and entered during this pass -> both pages onto one new
   shared page; else the page becomes a node.  The unstable tree is emptied at the start
   of every full scan (``full_scans``).

Mapping onto the sharing index (:mod:`hosts.sharing.index`): stable-tree pages are its
SHARED entries (full ones FULL records), unstable-tree nodes its HINT entries, with the
pass that entered each (``upass``; a look-up ignores nodes of an earlier pass, which
still count in ``pages_unshared`` until ksmd revisits them, as in the kernel).  Lookups
go by xxh3 hash (the kernel's checksum is xxhash too), and every merge byte-compares.

Simplifications (documented): ksmd's own CPU time is not charged; the zero page is one
shared frame per sharing group (the first zero page found), not a frame outside guest
memory; a FULL page stays set aside after sharers leave it; the statistics are exact
counts of the current state, where the kernel's counters change when ksmd next visits a
page.  Not covered: ``merge_across_nodes`` (one NUMA node), ``smart_scan``, the
``advisor``, ``stable_node_chains_prune_millisecs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.native import JIT, memcmp, xxh3_64
from vmmsim.hosts.sharing.index import FULL, HINT, NONE, SHARED, delete, insert, lookup
from vmmsim.hosts.sharing.scan import merge_pages

#: (The host manager that owns the scanner and its HostMemory are passed in; annotated
#: as Any, since hosts.host_manager imports this module.)
HostMemoryManager = Any
HostMemory = Any

#: Host metrics columns (ksm.rst's ``/sys/kernel/mm/ksm/`` counters), when KSM is on.
KSM_COLUMNS: dict[str, str] = {
    "ksm_pages_shared": "int64",
    "ksm_pages_sharing": "int64",
    "ksm_pages_unshared": "int64",
    "ksm_pages_volatile": "int64",
    "ksm_full_scans": "int64",
}


@dataclass(frozen=True)
class KsmParams:
    """ksm.rst's knobs (defaults are the kernel's)."""

    pages_to_scan: int = 100
    sleep_millisecs: float = 20.0
    max_page_sharing: int = 256
    use_zero_pages: bool = False

    def pages_per_s(self) -> float:
        return self.pages_to_scan * 1000.0 / self.sleep_millisecs


@numba.njit(**JIT)
def _promote_rec(slots, kind, key, grp, shift, counts, t, h, g, k) -> bool:
    """Record frame ``t`` as a shared page of kind ``k`` (SHARED or FULL) under ``h``."""
    kind[t] = k
    key[t] = h
    grp[t] = g
    if k == SHARED and insert(slots, kind, key, grp, shift, t) >= 0:
        return False
    counts[k] += 1
    return True


@numba.njit(**JIT)
def ksm_batch(
    content, ppns, frames, g, sums, seen, slots, kind, key, grp, shift, counts,
    refcount, shared, zero, upass, cur_pass, cap, use_zero, mask, zh,
):  # fmt: skip
    """``cmp_and_merge_page`` over one VM's pages in order (``frames[i]`` the private
    frame of ``ppns[i]``, -1 for a page already shared).

    Updates the index, references, zero flags and the VM's checksums (``sums``, ``seen``)
    directly; returns ``(pair_i, pair_t, promoted, n_volatile, err)``: batch positions and
    the shared frames they merge onto (the caller moves them: :func:`merge_pages`), frames
    made shared whose owner pages the caller marks SHARED, pages found volatile, and
    ``err`` (-1, else a frame whose index entry was missing)."""
    n = ppns.shape[0]
    cb = content.shape[1]
    pair_i = np.empty(n, dtype=np.int64)
    pair_t = np.empty(n, dtype=np.int64)
    pro = np.empty(n, dtype=np.int64)
    npair = npro = nvol = 0
    for i in range(n):
        f = frames[i]
        if f < 0 or shared[f]:
            continue  # a KSM page already (or made one earlier in this batch)
        p = ppns[i]
        seen[p] = True
        if kind[f] == HINT:  # remove_rmap_item_from_tree
            if not delete(slots, kind, key, grp, shift, f):
                return pair_i[:0], pair_t[:0], pro[:0], nvol, f
            counts[HINT] -= 1
            kind[f] = NONE
        h = xxh3_64(content[f].ctypes.data, cb) & mask
        # (2) stable tree
        t = lookup(slots, kind, key, grp, shift, g, h, SHARED)
        clash = False
        if t >= 0:
            if memcmp(content[f].ctypes.data, content[t].ctypes.data, cb) == 0:
                pair_i[npair] = i
                pair_t[npair] = t
                npair += 1
                refcount[t] += 1
                if refcount[t] >= cap and not (use_zero and zero[t]):
                    if not delete(slots, kind, key, grp, shift, t):
                        return pair_i[:0], pair_t[:0], pro[:0], nvol, t
                    counts[SHARED] -= 1
                    kind[t] = FULL
                    counts[FULL] += 1
                continue
            clash = True  # equal hashes, different bytes: no new shared page under h
        # (3) volatile?
        if sums[p] != h:
            sums[p] = h
            nvol += 1
            continue
        z = False
        if h == zh:
            z = True
            row = content[f]
            for b in range(cb):
                if row[b] != 0:
                    z = False
                    break
        # (4) the zero page
        if use_zero and z and not clash:
            shared[f] = True
            if not _promote_rec(slots, kind, key, grp, shift, counts, f, h, g, SHARED):
                return pair_i[:0], pair_t[:0], pro[:0], nvol, f
            zero[f] = True
            pro[npro] = f
            npro += 1
            continue
        # (5) unstable tree
        t = lookup(slots, kind, key, grp, shift, g, h, HINT)
        if (
            not clash
            and t >= 0
            and t != f
            and upass[t] == cur_pass
            and refcount[t] == 1
            and not shared[t]
            and memcmp(content[f].ctypes.data, content[t].ctypes.data, cb) == 0
        ):
            if not delete(slots, kind, key, grp, shift, t):
                return pair_i[:0], pair_t[:0], pro[:0], nvol, t
            counts[HINT] -= 1
            shared[t] = True
            refcount[t] += 1
            k = FULL if refcount[t] >= cap else SHARED
            if not _promote_rec(slots, kind, key, grp, shift, counts, t, h, g, k):
                return pair_i[:0], pair_t[:0], pro[:0], nvol, t
            zero[t] = z
            pro[npro] = t
            npro += 1
            pair_i[npair] = i
            pair_t[npair] = t
            npair += 1
            continue
        kind[f] = HINT
        key[f] = h
        grp[f] = g
        upass[f] = cur_pass
        d = insert(slots, kind, key, grp, shift, f)
        if d >= 0:
            kind[d] = NONE  # an older node under the same checksum gives way
        else:
            counts[HINT] += 1
    return pair_i[:npair], pair_t[:npair], np.sort(pro[:npro]), nvol, -1


class KsmScanner:
    """ksmd of one host: its cursor, pass count, the VMs' checksums and node passes."""

    def __init__(self, params: KsmParams, n_frames: int) -> None:
        self.params = params
        self.credit = 0.0
        self.cursor_vm = ""  # VM the cursor is in ("" = before the first VM)
        self.cursor_pos = 0  # next guest physical page of that VM
        self.full_scans = 0
        self.upass = np.zeros(n_frames, dtype=np.int64)  # pass that entered a HINT node
        self.sums: dict[str, np.ndarray] = {}  # per VM: checksum at the page's last scan
        self.seen: dict[str, np.ndarray] = {}  # per VM: scanned at least once (rmap_item)
        self.volatile_seen = 0  # pages found volatile, over the run

    # ------------------------------------------------------------------ VMs
    def _vm_arrays(self, name: str, n_pages: int) -> tuple[np.ndarray, np.ndarray]:
        if name not in self.sums:
            # The kernel's rmap_item starts with oldchecksum 0: a first scan is "changed".
            self.sums[name] = np.zeros(n_pages, dtype=np.uint64)
            self.seen[name] = np.zeros(n_pages, dtype=bool)
        return self.sums[name], self.seen[name]

    def forget(self, name: str) -> None:
        """A VM left the host (migration): it leaves the scan (its rmap_items go)."""
        self.sums.pop(name, None)
        self.seen.pop(name, None)

    # ------------------------------------------------------------------ the scan
    def run(self, host: HostMemoryManager) -> None:
        """One tick of ksmd: ``pages_to_scan`` present pages per ``sleep_millisecs``,
        from the cursor on (fractions carried as credit, at most one tick's worth).  The
        tick's pages are its wake-ups' batches back to back; as in the kernel, a batch
        ends where the walk wraps (a full scan), the rest of it unused."""
        rate = self.params.pages_per_s() * host.sim.tick_s
        self.credit = min(self.credit + rate, rate + 1.0)
        budget = int(self.credit)
        if budget <= 0:
            return
        self.credit -= budget
        names = [n for n in host.order if host.vms[n].spec.sharing]
        if not names:
            return
        batch = max(1, self.params.pages_to_scan)
        start = budget
        got_since_wrap = 0
        wrapped = False
        while budget > 0:
            name = next((n for n in names if n >= self.cursor_vm), None)
            if name is None:  # past the last VM: a full scan ends, the unstable tree empties
                self.full_scans += 1
                self.cursor_vm, self.cursor_pos = names[0], 0
                if wrapped and got_since_wrap == 0:
                    break  # a whole pass found no present page: ksmd has nothing to do
                wrapped = True
                got_since_wrap = 0
                # scan_get_next_rmap_item returns NULL at the wrap: the rest of that
                # wake-up's batch of pages_to_scan is not scanned
                budget -= (batch - (start - budget) % batch) % batch
                continue
            if name != self.cursor_vm:
                self.cursor_vm, self.cursor_pos = name, 0
            vm = host.vms[name]
            st = vm.pmap.state
            rest = st[self.cursor_pos :]
            present = np.flatnonzero((rest == ps.MAPPED) | (rest == ps.SHARED))
            if len(present) > budget:
                ppns = present[:budget] + self.cursor_pos
                self.cursor_pos = int(ppns[-1]) + 1
            else:
                ppns = present + self.cursor_pos
                self.cursor_vm, self.cursor_pos = name + "\0", 0  # just past this VM
            budget -= len(ppns)
            got_since_wrap += len(ppns)
            if len(ppns):
                self.scan_pages(host.mem, vm, ppns.astype(np.int64))
                vm.tick.scanned += len(ppns)
                vm.stats.scanned += len(ppns)

    def scan_pages(self, mem: HostMemory, vm: Any, ppns: np.ndarray) -> tuple[int, int]:
        """``cmp_and_merge_page`` over present pages ``ppns`` (ascending) of ``vm``;
        returns (pages merged, frames freed)."""
        slot = mem.vms[vm.vm_id]
        pmap = slot.pmap
        sums, seen = self._vm_arrays(vm.name, len(pmap.state))
        frames = np.where(pmap.state[ppns] == ps.MAPPED, pmap.loc[ppns], -1).astype(np.int64)
        fr, idx = mem.frames, mem.index
        p = self.params
        cap = p.max_page_sharing
        pair_i, targets, promote, nvol, err = ksm_batch(
            fr.content, ppns, frames, np.int32(slot.group), sums, seen,
            *idx.table_args(), idx.counts, fr.refcount, fr.shared, mem.zero, self.upass,
            np.int64(self.full_scans), np.int32(cap), bool(p.use_zero_pages), idx.mask,
            np.uint64(mem.zero_hash) & idx.mask,
        )  # fmt: skip
        if err >= 0:
            raise InvariantError(f"ksm: index entry of frame {err} missing")
        self.volatile_seen += int(nvol)
        if len(promote):
            mem.promote_owners(promote)
        if not len(targets):
            return 0, 0
        nz, n_freed, fr.n_free, err = merge_pages(
            ppns[pair_i], targets, frames[pair_i], pmap.state, pmap.loc, pmap.counts,
            mem.zero, fr.refcount, fr.shared, fr.owner_vm, fr.owner_ppn, fr.free_stack,
            fr.n_free, *idx.table_args(), idx.counts,
        )  # fmt: skip
        if err != -1:
            what = "refcount went negative" if err < -1 else "index entry missing"
            raise InvariantError(f"ksm: frame {max(err, -2 - err)}: {what}")
        pmap.n_zero_shared += nz
        vm.stats.merged += len(targets)
        return len(targets), int(n_freed)

    # ------------------------------------------------------------------ statistics
    def stats(self, host: HostMemoryManager) -> tuple[int, int, int, int, int]:
        """ksm.rst's counters now: ``pages_shared`` (shared pages in use), ``pages_sharing``
        (further sites mapping them: the pages saved), ``pages_unshared`` (unstable-tree
        nodes), ``pages_volatile`` (pages scanned, private, in no tree) and ``full_scans``.
        With ``use_zero_pages`` the zero pages count in none of them."""
        mem = host.mem
        s_frames = mem.index.n_shared_frames()
        s_pages = host.shared_pages()
        if self.params.use_zero_pages:
            s_frames -= int(np.count_nonzero(mem.zero))
            s_pages -= sum(v.pmap.n_zero_shared for v in host.vms.values())
        unshared = mem.index.n_hints()
        tracked = 0
        for name, seen in self.seen.items():
            vm = host.vms.get(name)
            if vm is not None:
                tracked += int(np.count_nonzero(seen & (vm.pmap.state == ps.MAPPED)))
        return s_frames, s_pages - s_frames, unshared, tracked - unshared, self.full_scans

    def check_invariants(self, host: HostMemoryManager) -> None:
        """Every unstable node belongs to a page KSM has seen, in this pass or the last;
        checksum arrays fit their VMs; no arrays for VMs gone."""
        mem = host.mem
        nodes = np.flatnonzero(mem.index.kind == HINT)
        if len(nodes):
            up = self.upass[nodes]
            if (up > self.full_scans).any() or (up < self.full_scans - 1).any():
                raise InvariantError("ksm: an unstable-tree node from a pass not this or last")
        for name, seen in self.seen.items():
            vm = host.vms.get(name)
            if vm is None:
                raise InvariantError(f"ksm: checksums kept for VM {name} not on the host")
            if len(seen) != len(vm.pmap.state) or len(self.sums[name]) != len(seen):
                raise InvariantError(f"ksm: checksum arrays of {name} do not fit it")
        owners = mem.frames.owner_vm[nodes]
        ids = {host.vms[n].vm_id: n for n in self.seen}
        for vid in np.unique(owners).tolist():
            name = ids.get(vid)
            if name is None:
                raise InvariantError("ksm: an unstable-tree node of a page KSM never saw")
            of = nodes[owners == vid]
            if not self.seen[name][mem.frames.owner_ppn[of]].all():
                raise InvariantError("ksm: an unstable-tree node of a page KSM never saw")

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        a = {"ksm.upass": self.upass}
        for name in self.sums:
            a[f"ksm.sums/{name}"] = self.sums[name]
            a[f"ksm.seen/{name}"] = self.seen[name]
        meta = {
            "credit": self.credit,
            "cursor_vm": self.cursor_vm,
            "cursor_pos": self.cursor_pos,
            "full_scans": self.full_scans,
            "volatile_seen": self.volatile_seen,
            "vms": sorted(self.sums),
        }
        return a, meta

    def restore(self, a: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        self.upass = np.array(a["ksm.upass"], copy=True)
        self.sums = {n: np.array(a[f"ksm.sums/{n}"], copy=True) for n in meta["vms"]}
        self.seen = {n: np.array(a[f"ksm.seen/{n}"], copy=True) for n in meta["vms"]}
        self.credit = meta["credit"]
        self.cursor_vm, self.cursor_pos = meta["cursor_vm"], meta["cursor_pos"]
        self.full_scans, self.volatile_seen = meta["full_scans"], meta["volatile_seen"]
