"""Raft message batches on the wire: round trips, and every malformed batch refused as WireError."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from native import codec
from shards import entry_encoding
from shards.raft.messages import Message, MessageType
from shards.raft.storage import ConfState, Entry, Snapshot, SnapshotMeta
from shards.raft_wire import WireError, decode_messages, encode_messages

u64 = st.integers(min_value=0, max_value=2**64 - 1)
ids = st.lists(st.integers(min_value=1, max_value=2**64 - 1), max_size=5).map(tuple)
entries = st.lists(
    st.builds(Entry, u64, u64, st.integers(min_value=0, max_value=1), st.binary(max_size=64)), max_size=5
)
snapshots = st.builds(
    Snapshot, st.builds(SnapshotMeta, u64, u64, st.builds(ConfState, ids, ids)), st.binary(max_size=64)
)
PEER_TYPES = [t for t in MessageType if t not in (
    MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM, MessageType.SNAP_STATUS, MessageType.UNREACHABLE)]
messages = st.builds(
    Message,
    type=st.sampled_from(PEER_TYPES),
    to=u64, frm=u64, term=st.integers(min_value=1, max_value=2**64 - 1), log_term=u64, index=u64,
    entries=entries, commit=u64, reject=st.booleans(), reject_hint=u64,
    context=st.binary(max_size=32), snapshot=st.none() | snapshots,
)


@given(batch=st.lists(messages, max_size=6))
def test_batches_round_trip(batch):
    decoded = decode_messages(encode_messages(batch))
    assert [m._replace(entries=list(m.entries)) for m in decoded] == [
        m._replace(entries=list(m.entries)) for m in batch
    ]


@given(batch=st.lists(messages, min_size=1, max_size=3), data=st.data())
def test_damaged_batches_are_refused_or_decode_to_messages(batch, data):
    encoded = bytearray(encode_messages(batch))
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    try:
        decode_messages(bytes(encoded[:cut]))
    except WireError:
        pass
    position = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[position] ^= data.draw(st.integers(min_value=1, max_value=255))
    try:
        decoded = decode_messages(bytes(encoded))
    except WireError:
        return
    assert all(isinstance(message, Message) for message in decoded)


@given(garbage=st.binary(max_size=300))
def test_arbitrary_bytes_are_refused_as_wire_errors_only(garbage):
    try:
        decode_messages(garbage)
    except WireError:
        pass


def test_a_count_past_the_data_is_refused():
    try:
        decode_messages(b"\xff\xff\xff\xff")
    except WireError as error:
        assert "malformed" in str(error)
    else:
        raise AssertionError("accepted a batch claiming 2**32-1 messages")


@pytest.mark.parametrize("kind", [MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM,
                                  MessageType.SNAP_STATUS, MessageType.UNREACHABLE])
def test_local_only_messages_are_refused_from_peers(kind):
    with pytest.raises(WireError, match="cannot come from a peer"):
        decode_messages(encode_messages([Message(kind, to=1, frm=2, term=3)]))


def test_only_forwarded_requests_may_come_without_a_term():
    for kind in (MessageType.PROP, MessageType.READ_INDEX, MessageType.TRANSFER_LEADER):
        assert decode_messages(encode_messages([Message(kind, to=1, frm=2)]))[0].type == kind
    # Taken for local, a term-0 vote request would skip the term checks (review finding).
    with pytest.raises(WireError):
        decode_messages(encode_messages([Message(MessageType.VOTE, to=1, frm=2, term=0)]))


def test_a_run_of_entries_is_encoded_once_for_the_wal_and_every_follower():
    run = [Entry(2, index, 0, b"put %d" % index) for index in range(10, 20)]
    once = entry_encoding.encode_entries(run)
    assert once == codec.encode_entries(run)
    assert entry_encoding.encode_entries(run[:]) is once  # the log's slice for another follower


def test_entries_with_the_same_terms_and_indexes_but_other_data_get_their_own_bytes():
    """Two groups' replicas in one process: the same term and index name different entries."""
    mine = [Entry(2, 10, 0, b"mine")]
    theirs = [Entry(2, 10, 0, b"theirs")]
    entry_encoding.encode_entries(mine)
    assert codec.decode_entries(entry_encoding.encode_entries(theirs), Entry) == theirs


def test_a_follower_writes_the_entries_it_received_as_they_came():
    received = codec.encode_entries([Entry(3, index, 0, b"v") for index in range(5)])
    decoded = entry_encoding.decode_entries(received)
    assert entry_encoding.encode_entries(decoded) is received
    assert entry_encoding.encode_entries(decoded[1:]) == codec.encode_entries(decoded[1:])  # a part: encoded anew
