"""What raft nodes say to each other and to their own core.

Everything the core reacts to is a `Message`: network traffic (appends,
votes, heartbeats, snapshots, reads) and local events alike (MsgHup when the
election timer fires, MsgBeat when the heartbeat timer fires, MsgProp for a
proposal), so the core has a single entry point, `Raft.step`. The names
follow etcd's raft (MessageType.APP is etcd's MsgApp, and so on).

A message is a flat NamedTuple so a transport can encode it field by field
with a codec; messages with `term == 0` are local and never cross the network.

Membership changes travel inside log entries of type CONF_CHANGE, whose data
is `ConfChange.encode()`.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple, Sequence

from shards.raft.storage import Entry, Snapshot


class MessageType(IntEnum):
    HUP = 0  # local: the election timer fired, or campaign() was called
    BEAT = 1  # local: the leader's heartbeat timer fired
    PROP = 2  # a proposal; entries carry type and data, index/term unset
    APP = 3
    APP_RESP = 4
    VOTE = 5
    VOTE_RESP = 6
    PRE_VOTE = 7
    PRE_VOTE_RESP = 8
    SNAP = 9
    HEARTBEAT = 10
    HEARTBEAT_RESP = 11
    TRANSFER_LEADER = 12  # `frm` names the transferee, as in etcd
    TIMEOUT_NOW = 13
    READ_INDEX = 14
    READ_INDEX_RESP = 15
    CHECK_QUORUM = 16  # local: the leader's election timer fired
    SNAP_STATUS = 17  # local: the transport reports a snapshot sent (reject=failed)
    UNREACHABLE = 18  # local: the transport could not reach `frm`
    # The driver's, never stepped into the core: a leader quiets an idle group (commit = its
    # last index); reject=True from any member asks the leader to wake it again.
    QUIESCE = 19


# Responses that vouch for local state (a vote, appended entries): they may
# only leave once the hard state and entries they depend on are durable.
RESPONSES_AFTER_PERSIST = frozenset(
    {MessageType.APP_RESP, MessageType.VOTE_RESP, MessageType.PRE_VOTE_RESP}
)


class Message(NamedTuple):
    type: MessageType
    to: int = 0
    frm: int = 0
    term: int = 0
    log_term: int = 0
    index: int = 0
    entries: Sequence[Entry] = ()
    commit: int = 0
    reject: bool = False
    reject_hint: int = 0
    context: bytes = b""
    snapshot: Snapshot | None = None


class ReadState(NamedTuple):
    """A linearizable read answered: it may be served once `index` is applied."""

    index: int
    context: bytes


class ConfChangeType(IntEnum):
    ADD_VOTER = 0  # also promotes a learner
    ADD_LEARNER = 1  # also demotes a voter
    REMOVE = 2


class ConfChange(NamedTuple):
    """One single-server membership change, with what the caller wants to carry along.

    `context` is opaque to raft (the replica puts the member's addresses
    there, as etcd puts its Member); it travels in the entry and comes back
    when the entry is applied.
    """

    type: ConfChangeType
    node_id: int
    context: bytes = b""

    HEADER_BYTES = 9  # type (1) and node id (8, big-endian), then the context

    def encode(self) -> bytes:
        return bytes((self.type,)) + self.node_id.to_bytes(8, "big") + self.context

    @classmethod
    def decode(cls, data: bytes) -> ConfChange:
        if len(data) < cls.HEADER_BYTES:
            raise ValueError(f"a conf change is at least {cls.HEADER_BYTES} bytes, got {len(data)}")
        return cls(ConfChangeType(data[0]), int.from_bytes(data[1:9], "big"), bytes(data[9:]))
