"""The host actor: :class:`cluster.host_pool.HostRuntime` made remote.

Scope: translation only.  This module is what every host actor process imports (Ray
pickles the actor class by reference), so it imports nothing beyond the host's own code
and ``ray``: not the config parser, the coordinator or the file formats, which the 64
actors of a large run would otherwise each load at start-up (~0.15 CPU-s apiece here).
"""

from __future__ import annotations

import ray
from vmmsim.cluster import round_link
from vmmsim.cluster.host_pool import HostRuntime


class _HostActorImpl(HostRuntime):
    """A host as a Ray actor: HostRuntime plus where it runs (translation only)."""

    # A sync actor's result is copied into the object store before its next call runs.
    reuse_send_buffers = True

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()

    def serve_rounds(self, path: str, name: str) -> int:
        """Answer rounds over the coordinator's local socket until it closes the link
        (:mod:`cluster.round_link`); return how many were run."""
        return round_link.serve(self.run_round, path, name)


# (No task events: see cluster.ray_runtime.CoordinatorActor.)
HostActor = ray.remote(max_restarts=0, max_task_retries=0, enable_task_events=False)(_HostActorImpl)
