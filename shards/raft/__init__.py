"""The raft consensus core: a deterministic, sans-IO state machine.

Start at `node.RawNode` (the caller-facing API and the Ready/advance cycle),
then `core.Raft` (the protocol), `log.RaftLog`, `progress.ProgressTracker`,
`messages` and `storage` (the interface the write-ahead log implements).
"""

from shards.raft.core import Config, Role
from shards.raft.errors import ProposalDropped, RaftError, RaftInvariantError, ReadyNotAdvanced
from shards.raft.messages import ConfChange, ConfChangeType, Message, MessageType, ReadState
from shards.raft.node import RawNode, Ready, SoftState, Status

__all__ = [
    "Config",
    "ConfChange",
    "ConfChangeType",
    "Message",
    "MessageType",
    "ProposalDropped",
    "RaftError",
    "RaftInvariantError",
    "RawNode",
    "ReadState",
    "Ready",
    "ReadyNotAdvanced",
    "Role",
    "SoftState",
    "Status",
]
