"""Page-state codes of guest physical pages as the VMM sees them (``int8`` per page).

=============  =====================================================  ==================
code           meaning                                                ``loc`` holds
=============  =====================================================  ==================
UNTOUCHED      never backed, or handed back by the balloon            -1
MAPPED         backed by a private machine frame                      frame number
SHARED         backed by a shared copy-on-write frame                 frame number
BALLOONED      pinned by the balloon driver: valid but not present    -1
VMM_SWAPPED    contents in the host's swap store                      swap slot
=============  =====================================================  ==================

Guest-swapped pages are a property of the guest's *virtual* pages (the guest moved the
contents to its own swap disk and reuses the physical page), see :mod:`hosts.guest_os`.
"""

UNTOUCHED = 0
MAPPED = 1
SHARED = 2
BALLOONED = 3
VMM_SWAPPED = 4

NAMES = {
    UNTOUCHED: "untouched",
    MAPPED: "mapped",
    SHARED: "shared",
    BALLOONED: "ballooned",
    VMM_SWAPPED: "vmm_swapped",
}
N_STATES = 5
