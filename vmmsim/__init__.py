"""vmmsim: a distributed simulator of VMM memory management after Waldspurger's ESX paper.

The Python API (see ``docs/api.md``)::

    import vmmsim
    r = vmmsim.run("configs/quickstart.toml", backend="inprocess")
    r.metrics            # pyarrow.Table, one row per (tick, host, VM)
    r.summary["final_digest"]

Subpackages: :mod:`vmmsim.hosts` (one host's memory manager, no Ray),
:mod:`vmmsim.cluster` (coordinator, migration, recording, CLI; the only Ray code),
:mod:`vmmsim.workloads` (guest behaviour and page contents), :mod:`vmmsim.policies`
(the plug-in registry).
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

#: Public name -> the module it comes from, imported on first use (PEP 562): a host actor
#: process imports ``vmmsim.hosts`` without the API, the CLI and their dependencies.
_EXPORTS = {
    "Config": "vmmsim.api",
    "Run": "vmmsim.api",
    "load_config": "vmmsim.api",
    "load_run": "vmmsim.api",
    "run": "vmmsim.api",
    "sweep": "vmmsim.api",
    "sweep_summary": "vmmsim.api",
    "ConfigError": "vmmsim.cluster.config",
    "HostFailure": "vmmsim.cluster.host_pool",
    "RunDirError": "vmmsim.cluster.outputs",
    "PlacementError": "vmmsim.cluster.placement",
    "ReplayDiverged": "vmmsim.cluster.replay",
    "LogError": "vmmsim.cluster.sealed_stream",
    "SweepPointFailed": "vmmsim.cluster.sweep",
}

if TYPE_CHECKING:  # for type checkers and editors: the same names, eagerly
    from vmmsim.api import Config, Run, load_config, load_run, run, sweep, sweep_summary
    from vmmsim.cluster.config import ConfigError
    from vmmsim.cluster.host_pool import HostFailure
    from vmmsim.cluster.outputs import RunDirError
    from vmmsim.cluster.placement import PlacementError
    from vmmsim.cluster.replay import ReplayDiverged
    from vmmsim.cluster.sealed_stream import LogError
    from vmmsim.cluster.sweep import SweepPointFailed


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vmmsim' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])


try:
    __version__ = version("vmmsim")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "Config",
    "ConfigError",
    "HostFailure",
    "LogError",
    "PlacementError",
    "ReplayDiverged",
    "Run",
    "RunDirError",
    "SweepPointFailed",
    "__version__",
    "load_config",
    "load_run",
    "run",
    "sweep",
    "sweep_summary",
]
