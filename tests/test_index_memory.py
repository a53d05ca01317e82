"""The sharing index's own memory is charged to the host (Waldspurger 2002, sec. 4.3).

"Each frame is encoded compactly in 16 bytes": every shared or hint entry of the index
costs ``policy.index_entry_bytes`` (16) of host memory, taken as whole frames after each
tick's scan (:meth:`HostMemoryManager.charge_index`), so free memory reflects it.  Before
this change the index cost nothing.  ``check_invariants()`` counts the index's frames.
"""

from __future__ import annotations

import numpy as np
import pytest
from hostkit import apply, make_host, make_mem, vm_spec
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.host_memory import index_frames_for
from vmmsim.hosts.snapshot import host_state, restore_host


@pytest.mark.parametrize(
    ("entries", "entry_bytes", "page", "frames"),
    [(0, 16, 4096, 0), (1, 16, 4096, 1), (256, 16, 4096, 1), (257, 16, 4096, 2), (64, 16, 1024, 1),
     (65, 16, 1024, 2), (1000, 0, 4096, 0)],
)  # fmt: skip
def test_index_frames_for(entries, entry_bytes, page, frames):
    assert index_frames_for(entries, entry_bytes, page) == frames


def test_index_frames_for_rejects_bad_input():
    with pytest.raises(ValueError):
        index_frames_for(-1, 16, 4096)
    with pytest.raises(ValueError):
        index_frames_for(1, 16, 0)


def test_index_is_at_most_0_4_percent_of_memory():
    """The paper: "less than 0.5% of system memory" -- a frame has at most one entry."""
    n = 1 << 20
    assert index_frames_for(n, 16, 4096) / n == pytest.approx(16 / 4096)
    assert 16 / 4096 < 0.005


def distinct_host(n_pages: int = 600, page_size_frames: int = 2048):
    """A host whose one VM wrote ``n_pages`` distinct pages (each scanned -> a hint)."""
    host = make_host(page_size_frames, 256, scan_vm_pages_per_s=1e6, scan_host_pages_per_s=1e6)
    vm = host.boot_vm(vm_spec("a", 1024))
    keys = np.arange(n_pages, dtype=np.uint64) + 1
    apply(vm, host.mem, writes=np.arange(n_pages), keys=keys, make_room=host._make_room)
    return host, vm


def test_index_entries_take_host_frames():
    host, vm = distinct_host()
    free0 = host.mem.n_free
    host.run_ticks(0, 1)  # the scan visits every page: 600 hints
    host.check_invariants()
    ix = host.mem.index
    entries = ix.n_hints() + ix.n_shared_frames()
    assert entries >= 600  # (and whatever the guest's boot wrote)
    want = index_frames_for(entries, 16, 4096)
    assert want >= 3
    assert host.mem.n_index_frames == want
    # used frames = the VM's pages + the index (was: the VM's pages; the index was free)
    assert host.mem.frames.n_used == vm.resident + want
    assert host.mem.n_free <= free0 - want


def test_index_frames_are_given_back_when_entries_go():
    host, vm = distinct_host()
    host.run_ticks(0, 1)
    ix = host.mem.index
    before = ix.n_hints() + ix.n_shared_frames()
    assert host.mem.n_index_frames == index_frames_for(before, 16, 4096) >= 3
    # the guest rewrites 500 pages with one content: 500 hints give way to 1 shared frame
    apply(vm, host.mem, writes=np.arange(100, 600), keys=np.full(500, 9, np.uint64))
    host.run_ticks(1, 2)
    host.check_invariants()
    entries = ix.n_hints() + ix.n_shared_frames()
    assert entries <= before - 499
    assert host.mem.n_index_frames == index_frames_for(entries, 16, 4096) < 3


def test_index_charge_is_capped_by_what_admission_left_over():
    """A host committed to the last page (memory + swap = VM pages + 2) charges nothing:
    the index never takes a frame a VM page was promised."""
    host = make_host(1024, 256, scan_vm_pages_per_s=1e6, scan_host_pages_per_s=1e6)
    vm = host.boot_vm(vm_spec("a", 1024 + 256 - 2))
    keys = np.arange(600, dtype=np.uint64) + 1
    apply(vm, host.mem, writes=np.arange(600), keys=keys, make_room=host._make_room)
    host.run_ticks(0, 1)
    host.check_invariants()
    assert host.mem.index.n_hints() >= 600
    assert host.mem.n_index_frames == 0


def test_charge_grows_only_into_free_frames():
    mem = make_mem(8, 8)
    mem.frames.alloc(7)  # one frame free (refcount-only frames: check_invariants not used)
    assert mem.charge_index(3) == 1 and mem.n_free == 0
    assert mem.charge_index(0) == 0 and mem.n_free == 1


def test_invariants_count_the_index_frames():
    host, vm = distinct_host()
    host.run_ticks(0, 1)
    host.check_invariants()
    mem = host.mem
    lost = mem.index_frames[-1:]
    mem.index_frames = mem.index_frames[:-1]  # a frame used by nobody the check knows
    with pytest.raises(InvariantError):
        mem.check_invariants()
    mem.index_frames = np.concatenate((mem.index_frames, lost))
    mem.check_invariants()
    mem.frames.owner_vm[lost] = 0  # an index frame claimed by a VM
    with pytest.raises(InvariantError, match="sharing index"):
        mem.check_invariants()


def test_snapshot_keeps_the_index_frames():
    host, vm = distinct_host()
    host.run_ticks(0, 1)
    a, meta = host_state(host)
    back = restore_host(host.spec, host.sim, host.policy, {"a": vm.spec}, a, meta)
    back.check_invariants()
    assert back.mem.index_frames.tolist() == host.mem.index_frames.tolist()
    assert back.digest(full=True) == host.digest(full=True)
