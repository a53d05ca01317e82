"""The workload registry: ``[vms.workload] kind = "..."`` picks a class from here.

Each entry is a :class:`workloads.patterns.Workload` subclass with a frozen ``Params``
dataclass whose fields (with ``metadata["help"]``) are exactly the keys that kind accepts.
"""

from __future__ import annotations

from vmmsim.workloads.batch import Batch
from vmmsim.workloads.fileserver import Fileserver
from vmmsim.workloads.patterns import Idle, Steady, Workload
from vmmsim.workloads.phased import Phased
from vmmsim.workloads.trace import Trace

WORKLOADS: dict[str, type[Workload]] = {
    cls.kind: cls for cls in (Idle, Steady, Phased, Fileserver, Batch, Trace)
}


def get(kind: str) -> type[Workload]:
    """The workload class for ``kind``; KeyError names the known kinds."""
    try:
        return WORKLOADS[kind]
    except KeyError:
        raise KeyError(
            f"unknown workload kind {kind!r} (known: {', '.join(sorted(WORKLOADS))})"
        ) from None
