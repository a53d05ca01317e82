"""The page checker of ``--check-invariants``: every guest page reads back what it last wrote.

Scope: check mode only (``RunOptions.check_pages``, set by the in-process runner's
``--check-invariants``).  The hosts then take the step path recording takes (one VM at a
time, every step's accesses returned in the round report:
``cluster.host_journal.HostMode.accesses``) -- normal runs never pay for any of this.

* :class:`PageChecker` (a coordinator observer) keeps, per VM and virtual page, the
  content key last written there, from the round reports; it lives with the coordinator,
  so a VM that migrates keeps its shadow.
* :func:`check_pages` (host side, ``HostRuntime.check_pages``) compares what the guest
  reads at every page (:func:`hosts.vm.vm_page_contents`) with the bytes regenerated from
  those keys (:func:`workloads.content.page_bytes`) and raises
  :class:`hosts.errors.InvariantError` naming the host, VM and pages that differ.

A run that starts from a checkpoint (resume) knows no page's key yet: a page is checked
from its first write on.  A fresh run knows every page from tick 0 (never-touched pages
read as zeros, key 0).

Not covered: the structural invariants (each host's ``check_invariants()``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from vmmsim.cluster.config import SimConfig
from vmmsim.cluster.specs import vm_spec
from vmmsim.hosts.errors import InvariantError
from vmmsim.hosts.host_manager import HostMemoryManager
from vmmsim.hosts.vm import vm_page_contents
from vmmsim.workloads.content import page_bytes

#: ``{vm: (key last written at each virtual page, whether that key is known)}``
Shadows = dict[str, tuple[np.ndarray, np.ndarray]]


class PageChecker:
    """Shadow content keys of every VM's pages, fed by the round reports' accesses."""

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.shadows: Shadows = {}

    def _start(self, fresh: bool) -> None:
        for v in self.cfg.vms:
            n = vm_spec(self.cfg, v.name).n_pages
            self.shadows[v.name] = (np.zeros(n, np.uint64), np.full(n, fresh, dtype=bool))

    def on_round(self, coord: Any, start: int, n: int, results: list[dict[str, Any]]) -> None:
        del coord, n
        if not self.shadows:
            self._start(fresh=start == 0)
        for r in results:
            rows = r.get("accesses")
            if rows is None:
                raise RuntimeError("page checker: the hosts report no accesses (check mode off)")
            for i, name in enumerate(rows.vm):  # in step order per VM (a VM is on one host)
                w0, w1 = int(rows.write_off[i]), int(rows.write_off[i + 1])
                if w1 > w0:
                    keys, known = self.shadows[name]
                    pages, vals = rows.writes[w0:w1], rows.write_keys[w0:w1]
                    # The last write to a page wins: keep each page's last occurrence.
                    rev_pages = pages[::-1]
                    uniq, first = np.unique(rev_pages, return_index=True)
                    keys[uniq] = vals[::-1][first]
                    known[uniq] = True

    def check(self, coord: Any) -> int:
        """Every host checks the VMs it holds; return how many VMs were checked."""
        if not self.shadows:
            return 0
        done = coord.pool.call("check_pages", [(self.shadows,)] * len(coord.hosts), coord.hosts)
        return sum(len(d) for d in done)


def check_pages(host: HostMemoryManager, shadows: Shadows) -> list[str]:
    """Compare every page of the VMs on ``host`` found in ``shadows`` with its expected
    bytes; :class:`InvariantError` at the first VM with a page that differs.  Returns
    the names of the VMs checked."""
    checked = []
    cb = host.sim.content_bytes
    for name in host.order:
        if name not in shadows:
            continue
        keys, known = shadows[name]
        vm = host.vms[name]
        got = vm_page_contents(vm, host.mem)
        idx = np.flatnonzero(known)
        bad = idx[(got[idx] != page_bytes(keys[idx], cb)).any(axis=1)]
        if len(bad):
            raise InvariantError(
                f"page check after tick {host.tick}: VM {name}: {len(bad)} guest pages do not "
                f"read back the bytes last written (virtual pages {bad[:8].tolist()})"
            )
        checked.append(name)
    return checked
