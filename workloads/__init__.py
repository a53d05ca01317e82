"""Guest behaviour: what a VM's pages contain and which pages it touches.

Nothing here knows about hosts, frames or Ray.  A workload is a small object holding its
own ``numpy.random.Generator``; each call to :meth:`step` returns the guest accesses of one
simulated tick as numpy arrays (:class:`workloads.patterns.Accesses`).  Written page
contents travel as 64-bit *content keys* (see :mod:`workloads.content`), which regenerate
the exact bytes anywhere, so a record log stays small and replay is exact.
"""
