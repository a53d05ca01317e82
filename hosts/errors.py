"""Typed errors raised by the host mechanism (never a bare assert for a user-visible state)."""


class HostError(RuntimeError):
    """Base class of host-level failures."""


class OutOfFrames(HostError):
    """No free machine frame is left for an allocation."""


class SwapFull(HostError):
    """The VMM swap store has no free slot: memory is truly exhausted."""


class InvariantError(AssertionError):
    """A ``check_invariants()`` found inconsistent state (a simulator bug)."""
