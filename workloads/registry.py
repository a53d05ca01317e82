"""The workload registry: ``[vms.workload] kind = "..."`` picks a class from here.

Each entry is a :class:`workloads.patterns.Workload` subclass with a frozen ``Params``
dataclass whose fields (with ``metadata["help"]``) are exactly the keys that kind accepts.
The built-ins are registered as policy kind ``workload`` (:mod:`vmmsim.policies`), so a
kind may also be a user class named ``"module:attr"`` (or ``"file.py:attr"``) or one a
package registers through the ``vmmsim.policies`` entry points (``workload.NAME``).
"""

from __future__ import annotations

from vmmsim.workloads.batch import Batch
from vmmsim.workloads.fileserver import Fileserver
from vmmsim.workloads.patterns import Idle, Steady, Workload
from vmmsim.workloads.phased import Phased
from vmmsim.workloads.trace import Trace

from vmmsim import policies

WORKLOADS: dict[str, type[Workload]] = {
    cls.kind: cls for cls in (Idle, Steady, Phased, Fileserver, Batch, Trace)
}


for _kind, _cls in WORKLOADS.items():
    policies.register("workload", _kind)(_cls)


def get(kind: str) -> type[Workload]:
    """The workload class for ``kind`` (a registered name or ``module:attr``); KeyError
    names the known kinds or what is missing."""
    if kind in WORKLOADS:
        return WORKLOADS[kind]
    try:
        cls = policies.resolve("workload", kind)
    except policies.PolicyError as e:
        if policies.is_reference(kind):
            raise KeyError(str(e)) from None
        known = ", ".join(policies.names("workload"))
        raise KeyError(f"unknown workload kind {kind!r} (known: {known})") from None
    if not (isinstance(cls, type) and issubclass(cls, Workload) and hasattr(cls, "Params")):
        raise KeyError(f"workload kind {kind!r} is not a Workload subclass with a Params class")
    return cls
