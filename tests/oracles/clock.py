"""Oracle: the guest's clock sweep in vectorised numpy (O(pages) per call).

The reference :meth:`vmmsim.hosts.guest_os.GuestOS.choose_victims` (a compiled sweep) is
tested against; not runtime code.
"""

from __future__ import annotations

import numpy as np
from vmmsim.hosts.guest_os import GuestOS


def clock_reference(g: GuestOS, k: int, protect: np.ndarray | None = None) -> np.ndarray:
    """:meth:`GuestOS.choose_victims` in vectorised numpy (O(pages) per call): the
    reference the compiled sweep is tested against.  Changes ``g`` the same way."""
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    order = (g.hand + np.arange(g.n_pages)) % g.n_pages
    ok = (g.p2v[order] >= 0) & ~g.pinned[order]
    if protect is not None and len(protect):
        prot = np.zeros(g.n_pages, dtype=bool)
        prot[protect] = True
        ok &= ~prot[order]
    cand = order[ok]
    if len(cand) == 0:
        return np.zeros(0, dtype=np.int64)
    cold = np.flatnonzero(~g.pref[cand])
    if len(cold) >= k:
        last = cold[k - 1]
        victims = cand[cold[:k]]
        g.pref[cand[: last + 1]] = False  # passed over: second chance used
    else:
        g.pref[cand] = False
        taken = np.zeros(len(cand), dtype=bool)
        taken[cold] = True
        extra = np.flatnonzero(~taken)[: k - len(cold)]
        sel = np.sort(np.concatenate([cold, extra]))
        victims = cand[sel]
        last = sel[-1] if len(sel) else 0
    g.hand = int((cand[last] + 1) % g.n_pages)
    return victims.astype(np.int64)
