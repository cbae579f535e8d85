"""Errors the raft core raises to its caller.

`ProposalDropped` is an answer, not a bug: the caller tells its client to
retry elsewhere. `RaftInvariantError` means the core found its own state, or
its storage, inconsistent; it is never caught inside the core.
"""


class RaftError(Exception):
    """Base of everything the raft core raises."""


class ProposalDropped(RaftError):
    """A proposal or read could not be accepted (no leader, transfer under way, ...)."""


class ConfigError(RaftError):
    """The node's configuration is unusable."""


class RaftInvariantError(RaftError):
    """A safety invariant of the core does not hold."""


class ReadyNotAdvanced(RaftError):
    """ready() was called again before the previous Ready was advanced."""
