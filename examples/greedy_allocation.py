"""An example allocation policy for vmmsim: all memory to the VM with the most shares.

Select it in a config (the path is relative to the config file's folder)::

    [policy]
    allocation = "../examples/greedy_allocation.py:greedy"

or on the command line, e.g. for a counterfactual replay of a recorded run::

    vmmsim replay runs/a --set policy.allocation=examples/greedy_allocation.py:greedy --out runs/b

Protocol (docs/policies.md): the function receives a read-only
``vmmsim.hosts.allocation.AllocationView`` of one host and returns one whole number of
pages per VM (a ``{vm: pages}`` dict or a list in ``view.vms`` order), each within
``[min_pages, max_pages]``, summing to at most ``max(available_pages, sum(min_pages))``.
It must be deterministic: the same view gives the same targets.
"""

from __future__ import annotations


def greedy(view) -> dict[str, int]:
    """Every VM gets its minimum; what is left goes to the VMs by shares, most first
    (ties by name), each up to its maximum."""
    targets = dict(zip(view.vms, view.min_pages, strict=True))
    left = max(0, view.available_pages - sum(view.min_pages))
    order = sorted(range(len(view.vms)), key=lambda i: (-view.shares[i], view.vms[i]))
    for i in order:
        vm = view.vms[i]
        more = min(left, view.max_pages[i] - targets[vm])
        targets[vm] += more
        left -= more
    return targets
