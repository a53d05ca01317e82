"""The guest OS model: clock eviction, pinned pages, clean vs dirty eviction, balloon."""

from __future__ import annotations

import numpy as np
import pytest
from hostkit import TEST_IMAGE, apply, keyed, make_host, make_vm, no_room, vm_spec
from oracles.clock import clock_reference
from oracles.guest_evict import use_reference_paths
from vmmsim.hosts import guest_os as gos
from vmmsim.hosts import guest_os_kernel as gk
from vmmsim.hosts import page_state as ps
from vmmsim.hosts.guest_os import GuestOS
from vmmsim.hosts.vm import vm_page_contents
from vmmsim.workloads.content import derived_keys, stable_hash64
from vmmsim.workloads.images import ImageSpec, image_keys


def guest_with_all_mapped(n: int = 8, n_pinned: int = 0) -> GuestOS:
    """A guest whose virtual page i sits on physical page i, all referenced."""
    g = GuestOS(n, 16, n_pinned)
    v = np.arange(n_pinned, n, dtype=np.int64)
    g.map(v, g.alloc(len(v)))
    assert (g.v2p == np.arange(n)).all()
    g.check_invariants()
    return g


# ---------------------------------------------------------------------------- clock
def test_clock_takes_pages_with_clear_reference_bit_first():
    g = guest_with_all_mapped(8)
    g.pref[[2, 5]] = False
    assert g.choose_victims(2).tolist() == [2, 5]
    # Pages passed over lost their second chance; the hand stops after the last victim.
    assert g.hand == 6
    assert not g.pref[:6].any() and g.pref[6:].all()
    # Next sweep from the hand: 6 and 7 are referenced (cleared), 0 is the first cold one.
    assert g.choose_victims(1).tolist() == [0]
    assert not g.pref[6:].any() and g.hand == 1


def test_clock_second_sweep_when_all_pages_are_referenced():
    g = guest_with_all_mapped(8)
    g.hand = 3
    assert g.choose_victims(3).tolist() == [3, 4, 5]
    assert not g.pref.any() and g.hand == 6


def test_clock_takes_cold_pages_then_the_first_hot_ones():
    g = guest_with_all_mapped(8)
    g.pref[[6]] = False
    # one cold page (6), two more in sweep order from the hand (0, 1)
    assert sorted(g.choose_victims(3).tolist()) == [0, 1, 6]


def test_clock_skips_free_protected_and_pinned_pages():
    g = guest_with_all_mapped(8, n_pinned=2)
    g.evict(np.array([4], dtype=np.int64), np.zeros((1, 16), np.uint8))  # page 4 free
    g.pref[:] = False
    got = g.choose_victims(8, protect=np.array([5, 6]))
    assert sorted(got.tolist()) == [2, 3, 7]


def test_pinned_pages_are_never_evicted_or_ballooned():
    vm, mem = make_vm(32, pinned_pages=4, balloon_max_fraction=1.0)
    g = vm.guest
    assert (g.vstate[:4] == gos.RESIDENT).all() and (g.v2p[:4] == np.arange(4)).all()
    every = np.arange(32)
    apply(vm, mem, writes=every, keys=every + 1)
    assert g.choose_victims(32).tolist() == list(range(4, 32))
    ballooned = vm.inflate_balloon(mem, 32)  # pinned count against the cap; 1 page is kept
    assert g.n_ballooned == vm.balloon_cap == 27 and ballooned == 27
    assert (g.p2v[:4] == np.arange(4)).all() and (vm.pmap.state[:4] == ps.MAPPED).all()
    vm.swap_out_random(mem, 32)
    assert (vm.pmap.state[:4] == ps.MAPPED).all()
    vm.check_invariants()
    mem.check_invariants()
    assert (vm_page_contents(vm, mem) == keyed(every + 1)).all()


# ---------------------------------------------------------------------------- eviction
def test_clean_image_pages_are_dropped_and_read_back_from_the_image():
    vm, mem = make_vm(32, image=TEST_IMAGE, balloon_max_fraction=1.0)
    g, n_img = vm.guest, vm.layout.n_image
    assert n_img == 16
    img = np.arange(n_img)
    ikeys = image_keys(TEST_IMAGE, vm.sim.seed, img, n_img)
    data = np.arange(n_img, 32, dtype=np.uint64)
    apply(vm, mem, writes=np.concatenate([img, data]), keys=np.concatenate([ikeys, data + 1]))
    assert g.clean[:n_img].all() and not g.clean[n_img:].any()
    # Make the data pages hot: the clock takes the (cold) image pages.
    g.pref[:] = False
    apply(vm, mem, reads=data)
    assert vm.inflate_balloon(mem, 8) == 8
    dropped = np.flatnonzero(g.vstate == gos.DROPPED)
    assert len(dropped) == 8 and (dropped < n_img).all()
    assert g.swap.n_used == 0 and (g.vslot[dropped] == -1).all()
    want = keyed(np.concatenate([ikeys, data + 1]))
    assert (vm_page_contents(vm, mem) == want).all()
    # Reading them back is a disk fault each and restores the image bytes.
    vm.deflate_balloon(mem, 8)
    vm.tick.guest_swapins = 0
    apply(vm, mem, reads=dropped)
    assert vm.tick.guest_swapins == 8 and (g.vstate[dropped] == gos.RESIDENT).all()
    assert (mem.read_bytes(vm.vm_id, g.v2p[dropped].astype(np.int64)) == want[dropped]).all()
    assert g.clean[dropped].all()
    vm.check_invariants()
    mem.check_invariants()


def test_modified_image_page_is_dirty_and_goes_to_guest_swap():
    vm, mem = make_vm(16, image=TEST_IMAGE, balloon_max_fraction=1.0)
    g = vm.guest
    apply(vm, mem, writes=np.arange(16), keys=np.arange(16) + 500)  # not the image keys
    assert not g.clean.any()
    vm.inflate_balloon(mem, 4)
    assert (g.vstate == gos.DROPPED).sum() == 0 and g.swap.n_used == 4
    assert (vm_page_contents(vm, mem) == keyed(np.arange(16) + 500)).all()


def test_dirty_pages_go_to_guest_swap_and_read_back_exactly():
    vm, mem = make_vm(16, balloon_max_fraction=1.0)
    g = vm.guest
    keys = np.arange(16) * 7 + 3
    keys[5] = 0  # a zero page is dirty data too
    apply(vm, mem, writes=np.arange(16), keys=keys)
    vm.inflate_balloon(mem, 6)
    swapped = np.flatnonzero(g.vstate == gos.SWAPPED)
    assert len(swapped) == 6 and g.swap.n_used == 6
    assert (g.swap.content[g.vslot[swapped]] == keyed(keys[swapped])).all()
    vm.deflate_balloon(mem, 6)
    apply(vm, mem, reads=swapped)
    assert g.swap.n_used == 0 and (g.vstate == gos.RESIDENT).all()
    assert (vm_page_contents(vm, mem) == keyed(keys)).all()
    vm.check_invariants()
    mem.check_invariants()


def test_guest_swap_grows_and_reuses_slots():
    s = gos.GuestSwap(8, capacity=2)
    a = s.put(keyed([1, 2, 3], 8))
    assert len(set(a.tolist())) == 3 and s.n_used == 3
    assert (s.take(a[:1]) == keyed([1], 8)).all()
    b = s.put(keyed([4, 5, 6, 7], 8))
    assert s.n_used == 6 and not set(b.tolist()) & set(a[1:].tolist())
    assert (s.content[a[1:]] == keyed([2, 3], 8)).all()


def test_double_paging_reads_a_vmm_swapped_victim_back():
    vm, mem = make_vm(16, balloon_max_fraction=1.0)
    keys = np.arange(16) + 40
    apply(vm, mem, writes=np.arange(16), keys=keys)
    vm.swap_out_random(mem, 16)
    assert vm.pmap.counts[ps.VMM_SWAPPED] == 16
    vm.tick.vmm_swapins = 0
    vm.inflate_balloon(mem, 4)  # the guest pages out pages the VMM had swapped
    assert vm.tick.vmm_swapins == 4
    assert (vm_page_contents(vm, mem) == keyed(keys)).all()
    mem.check_invariants()


# ---------------------------------------------------------------------------- balloon
def test_guest_gives_free_pages_to_the_balloon_first():
    vm, mem = make_vm(32, balloon_max_fraction=1.0)
    g = vm.guest
    used = np.arange(10)
    apply(vm, mem, writes=used, keys=used + 1)
    assert g.n_free == 22
    vm.inflate_balloon(mem, 22)  # k <= free pages: evicts nothing
    assert (g.vstate[used] == gos.RESIDENT).all() and g.swap.n_used == 0
    assert g.n_ballooned == 22 and g.n_free == 0
    vm.inflate_balloon(mem, 3)  # now the guest must give up used pages (coldest)
    assert g.swap.n_used == 3 and g.n_ballooned == 25
    assert (vm_page_contents(vm, mem)[:10] == keyed(used + 1)).all()
    vm.check_invariants()
    mem.check_invariants()


def test_balloon_respects_its_cap():
    vm, mem = make_vm(20, balloon_max_fraction=0.5)
    assert vm.inflate_balloon(mem, 100) == 0  # free guest pages were never backed
    assert vm.guest.n_ballooned == 10
    assert vm.inflate_balloon(mem, 1) == 0 and vm.guest.n_ballooned == 10


def test_vm_without_balloon_driver_cannot_be_ballooned():
    vm, mem = make_vm(20, balloon=False)
    apply(vm, mem, writes=np.arange(20), keys=np.arange(20) + 1)
    assert vm.inflate_balloon(mem, 5) == 0 and vm.guest.n_ballooned == 0


def test_guest_evicts_when_it_runs_out_of_physical_pages():
    """Under a balloon the guest pages out its coldest pages to fit new accesses."""
    vm, mem = make_vm(16, balloon_max_fraction=1.0)
    g = vm.guest
    vm.inflate_balloon(mem, 8)  # 8 physical pages left to the guest
    keys = np.arange(16) + 90
    apply(vm, mem, writes=np.arange(8), keys=keys[:8])
    g.pref[:] = False
    apply(vm, mem, reads=[0, 1])  # hot
    apply(vm, mem, writes=np.arange(8, 12), keys=keys[8:12])
    evicted = np.flatnonzero(g.vstate == gos.SWAPPED)
    assert len(evicted) == 4 and not set(evicted.tolist()) & {0, 1}
    apply(vm, mem, writes=np.arange(12, 16), keys=keys[12:])  # more than fits at once
    assert (vm_page_contents(vm, mem) == keyed(keys)).all()
    vm.check_invariants()
    mem.check_invariants()


def test_compiled_clock_equals_the_vectorised_reference():
    """Random guests (free, ballooned, pinned, referenced pages), random hands, k and
    protected sets: the compiled sweep takes the same victims, clears the same bits and
    leaves the hand where the numpy reference does."""
    rng = np.random.default_rng(7)
    for trial in range(300):
        n = int(rng.integers(1, 80))
        g = GuestOS(n, 8, int(rng.integers(0, min(n, 4) + 1)))
        rest = np.arange(g.n_pinned, n, dtype=np.int64)
        used = rest[rng.random(len(rest)) < 0.8]
        g.map(used, g.alloc(len(used)))
        g.p2v[rest[rng.random(len(rest)) < 0.05]] = gos.BALLOON  # not evictable either
        g.pref[:] = rng.random(n) < rng.random()
        g.hand = int(rng.integers(0, n))
        k = int(rng.integers(0, n + 3))
        protect = rng.choice(n, size=int(rng.integers(0, n // 2 + 1)), replace=False)
        twin = GuestOS(n, 8)
        twin.p2v, twin.pinned, twin.pref = g.p2v.copy(), g.pinned.copy(), g.pref.copy()
        twin.hand = g.hand
        want = clock_reference(twin, k, protect if trial % 3 else None)
        got = g.choose_victims(k, protect if trial % 3 else None)
        assert got.tolist() == want.tolist(), trial
        assert np.array_equal(g.pref, twin.pref) and g.hand == twin.hand, trial


def test_compiled_guest_eviction_equals_the_numpy_path():
    """Twin VMs, one paging out through the compiled kernel and one through the numpy
    path: dirty pages (some VMM-swapped: double paging), clean image pages and a guest
    swap disk that must grow past its 64 initial slots end in identical state and bytes."""
    twins = []
    for fast in (True, False):
        vm, mem = make_vm(200, balloon_max_fraction=1.0, image=TEST_IMAGE)
        use_reference_paths(vm, fast)
        pages_ = np.arange(200, dtype=np.int64)
        apply(vm, mem, reads=pages_[:40])  # clean image pages (re-read, never written)
        apply(vm, mem, writes=pages_[40:], keys=pages_[40:] * 11 + 5)
        vm.swap_out_random(mem, 30)  # some victims will be VMM-swapped (double paging)
        vm.inflate_balloon(mem, 170)
        twins.append((vm, mem))
    (a, ma), (b, mb) = twins
    assert a.stats.guest_swapouts > 64 and a.guest.swap.content.shape[0] > 64
    assert a.tick.vmm_swapins > 0 and a.tick.vmm_swapins == b.tick.vmm_swapins
    for name in ("v2p", "p2v", "vstate", "vslot", "clean", "pref", "free_stack"):
        assert np.array_equal(getattr(a.guest, name), getattr(b.guest, name)), name
    assert (a.guest.n_free, a.guest.swap.n_free, a.guest.swap.n_used) == (
        b.guest.n_free,
        b.guest.swap.n_free,
        b.guest.swap.n_used,
    )
    assert np.array_equal(a.guest.swap.content, b.guest.swap.content)
    assert (a.tick.disk, a.stats.guest_swapouts) == (b.tick.disk, b.stats.guest_swapouts)
    assert np.array_equal(vm_page_contents(a, ma), vm_page_contents(b, mb))
    a.check_invariants()
    ma.check_invariants()


def test_the_reference_twin_pages_out_through_the_oracle_not_the_kernel(monkeypatch):
    """``use_reference_paths`` really swaps the eviction: with the kernel broken, the
    reference VM still pages out and the fast one fails."""

    def broken(*a):
        raise RuntimeError("kernel called")

    monkeypatch.setattr(gk, "evict", broken)
    for fast in (False, True):
        vm, mem = make_vm(64, balloon_max_fraction=1.0, image=TEST_IMAGE)
        use_reference_paths(vm, fast)
        pages_ = np.arange(64, dtype=np.int64)
        apply(vm, mem, writes=pages_, keys=pages_ + 1)  # no free guest page left
        if fast:
            with pytest.raises(RuntimeError, match="kernel called"):
                vm.inflate_balloon(mem, 8)
        else:
            assert vm.inflate_balloon(mem, 8) == 8
            assert vm.stats.guest_swapouts == 8
            vm.check_invariants()


# ---------------------------------------------------------------------------- kernel memory
KERNEL_IMAGE = ImageSpec("kimg", 0.5, 0.0, kernel_fraction=0.05)


def test_kernel_pages_are_never_freed_evicted_or_ballooned():
    vm, mem = make_vm(200, balloon_max_fraction=1.0, image=KERNEL_IMAGE)
    g = vm.guest
    kern = g.kernel_pages()
    assert g.n_kernel == 10 and len(kern) == 10
    assert not np.isin(kern, g.free_stack[: g.n_free]).any()
    pages_ = np.arange(200, dtype=np.int64)
    apply(vm, mem, writes=pages_, keys=pages_ + 1)  # more than the guest's room: it evicts
    assert g.room == 190 and g.n_resident == 200
    vm.inflate_balloon(mem, 500)  # as far as the cap goes
    assert (g.p2v[kern] == gos.KERNEL).all()
    assert g.n_ballooned == vm.balloon_cap == 200 - 1 - 10
    assert not np.isin(kern, g.choose_victims(50)).any()
    vm.check_invariants()
    # The workload's pages all read back, wherever the guest put them.
    assert (vm_page_contents(vm, mem) == keyed(pages_ + 1)).all()


def test_kernel_pages_hold_frames_from_boot():
    vm, mem = make_vm(100, image=KERNEL_IMAGE)
    free0 = mem.n_free
    vm.run_step(mem, no_room)
    kern = vm.guest.kernel_pages()
    assert (vm.pmap.state[kern] == ps.MAPPED).all()
    keys = derived_keys(stable_hash64("kernel", vm.sim.seed, vm.name), kern)
    assert (mem.read_bytes(vm.vm_id, kern) == keyed(keys)).all()
    assert free0 - mem.n_free >= len(kern)


def test_a_ballooned_guest_has_less_room_than_one_configured_that_small():
    """The paper's explanation of ballooning's small overhead (sec. 3.2): structures
    sized to the configured memory stay, so 256 pages ballooned to 128 leave the
    workload fewer pages than a VM configured with 128 -- the gap shrinks with size."""
    big, mem = make_vm(256, balloon_max_fraction=1.0, image=KERNEL_IMAGE)
    gaps = []
    for size in (128, 192, 224):
        small, _ = make_vm(size, image=KERNEL_IMAGE)
        big.deflate_balloon(mem, 256)
        big.inflate_balloon(mem, 256 - size)
        assert big.guest.n_pages - big.guest.n_ballooned == size
        gaps.append(small.guest.room - big.guest.room)
        big.check_invariants()
    assert gaps == [int(0.05 * 256) - int(0.05 * s) for s in (128, 192, 224)]
    assert gaps[0] > gaps[1] > gaps[2] > 0


def test_a_kernel_larger_than_the_host_boots_in_chunks_through_swap():
    """A guest kernel of 50 pages on a 40-frame host: written in chunks, older chunks
    paged out to make room (was: SwapFull at tick 0, all 50 frames asked for at once)."""
    host = make_host(40, 2048)
    vm = host.boot_vm(vm_spec("k", 1000, image=KERNEL_IMAGE, sharing=False))
    host.run_ticks(0, 1)
    kern = vm.guest.kernel_pages()
    assert len(kern) == 50 and vm.pmap.counts[ps.VMM_SWAPPED] > 0
    keys = derived_keys(stable_hash64("kernel", vm.sim.seed, vm.name), kern)
    assert (host.mem.read_bytes(vm.vm_id, kern) == keyed(keys)).all()
    host.check_invariants()


def test_the_kernel_takes_at_most_half_of_the_unpinned_pages():
    """A guest must keep room for its workload: kernel pages are capped at half of the
    pages not pinned (was: all but one, every access then its own chunk)."""
    big = ImageSpec("kbig", 0.5, 0.0, kernel_fraction=0.5)
    vm, _ = make_vm(100, image=big, pinned_pages=60)
    assert vm.guest.n_kernel == 20 and vm.guest.room == 20


def test_room_needed_is_the_misses_beyond_free_pages_and_spares_resident_ones():
    """``room_needed`` (the one shortfall rule of the one-VM path and the batched steps)
    against its definition in numpy, on random guests: misses - free pages, and the
    physical pages of the step's resident virtual pages, reads first."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = 64
        vstate = rng.choice([gos.RESIDENT, gos.DROPPED, gos.SWAPPED], n).astype(np.int8)
        v2p = rng.permutation(n).astype(np.int32)
        pages = rng.permutation(n)
        k = int(rng.integers(0, n))
        rd, wr = np.sort(pages[: k // 2]), np.sort(pages[k // 2 : k])
        free = int(rng.integers(0, 8))
        short, protect = gk.room_needed(vstate, v2p, rd, wr, free)
        r_res, w_res = vstate[rd] == gos.RESIDENT, vstate[wr] == gos.RESIDENT
        assert short == (~r_res).sum() + (~w_res).sum() - free
        want = np.concatenate([v2p[rd[r_res]], v2p[wr[w_res]]])
        np.testing.assert_array_equal(protect, want)


def test_a_guest_paging_out_a_ballooned_page_is_an_invariant_error():
    """A victim the balloon holds (the guest's map and the VMM's disagree) is never read:
    the eviction stops with an InvariantError, whichever path ran it."""
    from vmmsim.hosts.errors import InvariantError

    vm, mem = make_vm(16)
    apply(vm, mem, writes=np.arange(8), keys=np.arange(8) + 90)
    ppn = int(vm.guest.v2p[3])
    vm.pmap.state[ppn] = ps.BALLOONED  # the damage: a resident guest page "ballooned"
    with pytest.raises(InvariantError, match="reading a ballooned page"):
        vm.guest_evict(mem, np.array([ppn], dtype=np.int64))
