"""Page classes: how likely a page of a region is to hold content other VMs hold too.

Scope: the content keys of one VM's region of pages (an image region, a program's pages)
from a *class table*.  Each row ``(name, fraction, p, dup, scope)`` is a class of pages
taking ``fraction`` of the region (classes in table order); a page of the class holds,
with probability ``p``, the *canonical* content of its scope (the same key in every VM of
that scope: image, family, program), else content private to the VM; with probability
``dup`` it then duplicates another page of the region of the same VM instead (the same
file cached twice, a copied buffer).  Draws are per page, from a generator seeded by the
VM's private base only, so a VM's keys are a function of (run seed, scope, VM identity)
and nothing else: they regenerate identically on any host, after migration or restore.

Expected sharing: a class page is shared among ``n`` VMs of one scope when it is canonical
in its VM and in at least one other, probability ``p (1 - (1 - p)^(n-1))`` (ignoring
duplicates).

Not covered: where the region lies in the guest (:mod:`workloads.images`,
:mod:`workloads.batch`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from vmmsim.workloads.content import derived_keys, stable_hash64

#: A class table, as written in a config: ``[name, fraction, p, dup, scope]`` rows.
ClassTable = tuple[tuple[str, float, float, float, str], ...]


def check_classes(table: ClassTable, scopes: Sequence[str]) -> list[str]:
    """One-line errors of a class table (``"classes: ..."``); empty if it is valid."""
    errs = []
    names: set[str] = set()
    for i, (name, frac, p, dup, scope) in enumerate(table):
        at = f"classes[{i}]"
        if not name or any(c.isspace() for c in name):
            errs.append(f"{at}: name must be non-empty without spaces (got {name!r})")
        elif name in names:
            errs.append(f"{at}: duplicate class name {name!r}")
        names.add(name)
        for what, v in (("fraction", frac), ("p", p), ("dup", dup)):
            if not 0.0 <= v <= 1.0:
                errs.append(f"{at}: {what} must be in [0, 1] (got {v})")
        if scope not in scopes:
            errs.append(f"{at}: scope must be one of {', '.join(scopes)} (got {scope!r})")
    total = sum(row[1] for row in table)
    if table and abs(total - 1.0) > 1e-6:
        errs.append(f"classes: fractions must sum to 1 (got {total:g})")
    return ["classes: " + e if not e.startswith("classes") else e for e in errs]


def class_bounds(table: ClassTable, n: int) -> np.ndarray:
    """Start of each class in a region of ``n`` pages, then ``n`` (``int64[len + 1]``)."""
    frac = np.cumsum([0.0] + [row[1] for row in table])
    b = np.floor(frac * n + 1e-9).astype(np.int64)
    b[-1] = n
    return np.minimum(b, n)


def class_keys(
    table: ClassTable, n: int, scope_bases: Mapping[str, int], private_base: int
) -> np.ndarray:
    """Content keys (``uint64[n]``, never zero) of a region of ``n`` pages of one VM.

    ``scope_bases``: a 64-bit base per scope name (what every VM of the scope shares);
    ``private_base``: the VM's own base (its identity: also seeds the draws).
    """
    if not table:
        raise ValueError("class_keys: an empty class table")
    bounds = class_bounds(table, n)
    keys = np.empty(n, dtype=np.uint64)
    dup = np.zeros(n, dtype=np.float64)
    ss = np.random.SeedSequence(private_base & 0xFFFFFFFFFFFFFFFF, spawn_key=(0xC1A55,))
    rng = np.random.Generator(np.random.PCG64(ss))
    u = rng.random(n)
    for (name, _, p, d, scope), lo, hi in zip(table, bounds[:-1], bounds[1:], strict=True):
        idx = np.arange(hi - lo, dtype=np.int64)
        canon = derived_keys(stable_hash64(scope_bases[scope], name), idx)
        own = derived_keys(stable_hash64(private_base, name), idx)
        keys[lo:hi] = np.where(u[lo:hi] < p, canon, own)
        dup[lo:hi] = d
    if n > 1 and dup.any():
        is_dup = rng.random(n) < dup
        src = rng.integers(0, n - 1, size=n)
        src += src >= np.arange(n)  # another page of the region, never the page itself
        keys[is_dup] = keys.copy()[src[is_dup]]
    return keys
