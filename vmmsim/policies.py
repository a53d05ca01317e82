"""The policy plug-in registry: swappable decisions, chosen by name from a config.

Scope: registering and resolving policies.  A *kind* is a decision point of the
simulator (:data:`KINDS`); a policy of that kind is a callable (or class) with the
protocol that kind documents where it is called.  A config names a policy either by a
registered name (``"share_idle_tax"``) or by ``"module:attr"`` -- a module importable
here (an installed package, or a ``.py`` file on ``sys.path``) or a path to a ``.py``
file (``"./my_policy.py:greedy"``, resolved from the config file's folder when given
through a config).  Packages register through the entry-point group
``vmmsim.policies``, with entry-point names ``KIND.NAME``::

    [project.entry-points."vmmsim.policies"]
    "allocation.greedy" = "my_pkg.policies:greedy"

Policies *propose*; the coordinator or host *decides* (validates the proposal and
records it), so a recorded run replays with user policies and a counterfactual replay
can swap one policy for another.

Config references are made canonical when a config is loaded (:func:`canonical`: a
relative file path becomes absolute, from the config file's folder), so a recorded run,
a checkpoint or a Ray actor resolves the same file.  :func:`ship_paths` lists what a
config's references need on other machines (Ray ``runtime_env`` ``py_modules``).

Not covered: what each kind receives and must return (documented beside the code that
calls it, and in ``docs/policies.md``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import zlib
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

KINDS = ("placement", "allocation", "migration", "reclamation", "working_set", "workload")
ENTRY_POINT_GROUP = "vmmsim.policies"
#: Set (in a Ray actor's environment) to the ``os.pathsep``-joined ``.py`` files shipped
#: with ``py_modules``: such a file missing on this node is imported by its stem instead.
SHIPPED_ENV = "VMMSIM_SHIPPED_POLICY_FILES"

_REGISTRY: dict[str, dict[str, Any]] = {k: {} for k in KINDS}
#: Where each kind's built-ins are registered (imported on first use of the kind).
BUILTIN_MODULES = {
    "placement": "vmmsim.cluster.placement",
    "allocation": "vmmsim.hosts.allocation",
    "migration": "vmmsim.cluster.migration_policy",
    "reclamation": "vmmsim.hosts.reclamation",
    "working_set": "vmmsim.hosts.working_set",
    "workload": "vmmsim.workloads.registry",
}
_ENTRY_POINTS_LOADED = False


class PolicyError(ValueError):
    """A policy that cannot be found, loaded, or that returned an invalid decision."""


def register(kind: str, name: str) -> Callable[[Any], Any]:
    """Decorator: register ``obj`` as the ``kind`` policy called ``name``."""
    _check_kind(kind, load=False)

    def deco(obj: Any) -> Any:
        _REGISTRY[kind][name] = obj
        return obj

    return deco


def names(kind: str) -> list[str]:
    """Registered names of ``kind`` (built-ins and entry points), sorted."""
    _check_kind(kind)
    _load_entry_points()
    return sorted(_REGISTRY[kind])


def is_reference(spec: str) -> bool:
    """``spec`` names a ``module:attr`` (or ``file.py:attr``), not a registered name."""
    return ":" in spec


def resolve(kind: str, spec: str, base_dir: str | Path | None = None) -> Any:
    """The ``kind`` policy named ``spec``; :class:`PolicyError` naming what is missing."""
    _check_kind(kind)
    if not is_reference(spec):
        _load_entry_points()
        try:
            return _REGISTRY[kind][spec]
        except KeyError:
            known = ", ".join(sorted(_REGISTRY[kind])) or "none"
            raise PolicyError(
                f"no {kind} policy named {spec!r} (known: {known}; or give module:attr)"
            ) from None
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise PolicyError(f"{kind} policy {spec!r}: expected module:attr")
    module = load_module(module_name, base_dir)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PolicyError(
            f"{kind} policy {spec!r}: module {module_name!r} has no attribute {attr!r}"
        ) from None


def canonical(spec: str, base_dir: str | Path | None = None) -> str:
    """``spec`` with a relative ``file.py`` path made absolute (from ``base_dir``)."""
    if not is_reference(spec):
        return spec
    module_name, _, attr = spec.rpartition(":")
    path = module_file(module_name, base_dir)
    return spec if path is None else f"{path}:{attr}"


def resolve_callable(kind: str, spec: str, base_dir: str | Path | None = None) -> Any:
    """:func:`resolve`, and a :class:`PolicyError` unless the result is callable."""
    obj = resolve(kind, spec, base_dir)
    if not callable(obj):
        raise PolicyError(f"{kind} policy {spec!r} is not callable ({type(obj).__name__})")
    return obj


def ship_paths(specs: list[str]) -> list[str]:
    """Local files or package folders the ``module:attr`` references in ``specs`` load,
    for Ray's ``runtime_env`` ``py_modules`` (sorted, no duplicates).  Registered names
    and modules installed in site-packages (or vmmsim itself) need nothing shipped."""
    out: set[str] = set()
    for spec in specs:
        if not is_reference(spec):
            continue
        module_name = spec.rpartition(":")[0]
        path = module_file(module_name)
        if path is not None:
            out.add(str(path))
            continue
        top = module_name.split(".")[0]
        if top == "vmmsim":
            continue
        try:
            found = importlib.util.find_spec(top)
        except (ImportError, ValueError):
            continue
        if found is None or not found.origin or "site-packages" in found.origin:
            continue
        origin = Path(found.origin)
        out.add(str(origin.parent if origin.name == "__init__.py" else origin))
    return sorted(out)


def module_file(module_name: str, base_dir: str | Path | None = None) -> Path | None:
    """The ``.py`` file a ``module:attr`` reference loads, when it is a file path."""
    if module_name.endswith(".py"):
        p = Path(module_name)
        if not p.is_absolute() and base_dir is not None:
            p = Path(base_dir) / p
        return p.resolve()
    return None


def load_module(module_name: str, base_dir: str | Path | None = None) -> Any:
    """Import ``module_name`` (dotted name) or load a ``.py`` file path."""
    path = module_file(module_name, base_dir)
    if path is None:
        try:
            return importlib.import_module(module_name)
        except ImportError as e:
            raise PolicyError(f"cannot import policy module {module_name!r} ({e})") from None
    if not path.is_file():
        if str(path) in os.environ.get(SHIPPED_ENV, "").split(os.pathsep):
            return load_module(path.stem)  # shipped to this Ray node by py_modules
        raise PolicyError(f"policy module file {path} does not exist")
    name = f"vmmsim_user_{path.stem}_{zlib.crc32(str(path).encode()):08x}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:  # pragma: no cover - not a python file
        raise PolicyError(f"cannot load policy module file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise PolicyError(
            f"policy module file {path} failed to load: {type(e).__name__}: {e}"
        ) from None
    return module


def call(what: str, name: str, fn: Callable[..., Any], *args: Any, where: str = "") -> Any:
    """``fn(*args)`` for the ``what`` policy ``name``: an exception it raises becomes one
    :class:`PolicyError` line naming the policy (and ``where``, e.g. " on host h-0")."""
    try:
        return fn(*args)
    except PolicyError:
        raise
    except Exception as e:
        raise PolicyError(
            f"{what} policy {name!r}{where} failed: {type(e).__name__}: {e}"
        ) from None


def _check_kind(kind: str, load: bool = True) -> None:
    if kind not in KINDS:
        raise PolicyError(f"unknown policy kind {kind!r} (kinds: {', '.join(KINDS)})")
    if load:
        importlib.import_module(BUILTIN_MODULES[kind])  # registers the built-ins


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        kind, _, name = ep.name.partition(".")
        if kind in KINDS and name and name not in _REGISTRY[kind]:
            try:
                _REGISTRY[kind][name] = ep.load()
            except Exception as e:  # a broken third-party package must not break vmmsim
                print(
                    f"vmmsim: warning: entry point {ep.name} failed to load: {e}", file=sys.stderr
                )
