"""Raft messages on the wire between replicas: a batch of messages as one byte string.

A batch is a u32 message count, then each message (all integers little-endian):

    type u8 | reject u8 | has_snapshot u8 | to u64 | frm u64 | term u64 |
    log_term u64 | index u64 | commit u64 | reject_hint u64 |
    context length u32 | context | entries length u32 | entries
    [snapshot: index u64 | term u64 | voters u32 | learners u32 | ids u64... |
     data length u64 | data]

where `entries` is a batch from native.codec.encode_entries (encoded once for
the WAL and every follower: shards/entry_encoding.py), so the per-entry work
of a replication message stays in compiled code. One batch travels as one
stream message between a pair of replicas.
"""

from __future__ import annotations

import struct
from typing import Iterable

from shards.entry_encoding import decode_entries, encode_entries
from shards.raft.messages import Message, MessageType
from shards.raft.storage import ConfState, Snapshot, SnapshotMeta

# Never sent between replicas: the core makes these for itself.
_LOCAL_ONLY = frozenset({MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM,
                         MessageType.SNAP_STATUS, MessageType.UNREACHABLE})
# Forwarded to the leader as the follower received them, without a term. Any
# other message with term 0 would be taken for a local one and skip the term checks.
_TERMLESS = frozenset({MessageType.PROP, MessageType.READ_INDEX, MessageType.TRANSFER_LEADER})

_COUNT = struct.Struct("<I")
_HEAD = struct.Struct("<BBBQQQQQQQI")
_LENGTH = struct.Struct("<I")
_SNAPSHOT_HEAD = struct.Struct("<QQII")
_SNAPSHOT_DATA = struct.Struct("<Q")


class WireError(ValueError):
    """Bytes from a peer that are not a well-formed batch: dropped and counted, never trusted."""


def encode_messages(messages: Iterable[Message]) -> bytes:
    parts = [b""]
    count = 0
    for message in messages:
        snapshot = message.snapshot
        parts.append(_HEAD.pack(
            message.type, message.reject, snapshot is not None, message.to, message.frm,
            message.term, message.log_term, message.index, message.commit, message.reject_hint,
            len(message.context),
        ))
        parts.append(message.context)
        entries = encode_entries(message.entries) if message.entries else b""
        parts.append(_LENGTH.pack(len(entries)))
        parts.append(entries)
        if snapshot is not None:
            meta = snapshot.meta
            voters, learners = meta.conf_state
            parts.append(_SNAPSHOT_HEAD.pack(meta.index, meta.term, len(voters), len(learners)))
            parts.append(struct.pack(f"<{len(voters) + len(learners)}Q", *voters, *learners))
            parts.append(_SNAPSHOT_DATA.pack(len(snapshot.data)))
            parts.append(snapshot.data)
        count += 1
    parts[0] = _COUNT.pack(count)
    return b"".join(parts)


def decode_messages(data: bytes) -> list[Message]:
    try:
        return _decode(memoryview(data))
    except (struct.error, ValueError) as error:
        raise WireError(f"malformed raft message batch: {error}") from None


def _take(view: memoryview, position: int, length: int) -> tuple[bytes, int]:
    end = position + length
    if end > len(view):
        raise WireError(f"a field of {length} bytes at offset {position} runs past the batch")
    return bytes(view[position:end]), end


def _decode(view: memoryview) -> list[Message]:
    (count,) = _COUNT.unpack_from(view, 0)
    position = _COUNT.size
    messages = []
    for _ in range(count):
        (kind, reject, has_snapshot, to, frm, term, log_term, index, commit, reject_hint,
         context_length) = _HEAD.unpack_from(view, position)
        position += _HEAD.size
        kind = MessageType(kind)
        if kind in _LOCAL_ONLY or (term == 0 and kind not in _TERMLESS):
            raise WireError(f"a {kind.name} message with term {term} cannot come from a peer")
        context, position = _take(view, position, context_length)
        (entries_length,) = _LENGTH.unpack_from(view, position)
        entries_bytes, position = _take(view, position + _LENGTH.size, entries_length)
        entries = decode_entries(entries_bytes) if entries_bytes else ()
        snapshot = None
        if has_snapshot:
            snap_index, snap_term, voter_count, learner_count = _SNAPSHOT_HEAD.unpack_from(view, position)
            position += _SNAPSHOT_HEAD.size
            ids_bytes, position = _take(view, position, 8 * (voter_count + learner_count))
            ids = struct.unpack(f"<{voter_count + learner_count}Q", ids_bytes)
            (data_length,) = _SNAPSHOT_DATA.unpack_from(view, position)
            snapshot_data, position = _take(view, position + _SNAPSHOT_DATA.size, data_length)
            conf_state = ConfState(voters=ids[:voter_count], learners=ids[voter_count:])
            snapshot = Snapshot(SnapshotMeta(snap_index, snap_term, conf_state), snapshot_data)
        messages.append(Message(
            type=kind, to=to, frm=frm, term=term, log_term=log_term, index=index,
            entries=entries, commit=commit, reject=bool(reject), reject_hint=reject_hint,
            context=context, snapshot=snapshot,
        ))
    if position != len(view):
        raise WireError(f"{len(view) - position} trailing bytes after {count} messages")
    return messages
