"""native.codec (raft entries, revision keys) against its pure-Python twin."""

import pytest
import reference_codec as ref
from hypothesis import given
from hypothesis import strategies as st

from google.protobuf.message import DecodeError

from native import codec
from shards.raft.storage import Entry
from tessera.api.internal_pb2 import ShardRequest, ShardRequestBatch, ShardResponse
from tessera.api.kv_pb2 import Event, KeyValue
from tessera.api.rpc_pb2 import PutRequest, PutResponse, RangeResponse, ResponseHeader, WatchResponse

u64 = st.integers(min_value=0, max_value=2**64 - 1)
entries = st.tuples(u64, u64, st.integers(min_value=0, max_value=255), st.binary(max_size=300))
revisions = st.integers(min_value=0, max_value=2**63 - 1)


def outcome(function, *args):
    """What a call gives: its result, or the kind of error it raised."""
    try:
        return function(*args)
    except ValueError:
        return "error"


@given(entry=entries)
def test_entry_matches_reference_and_round_trips(entry):
    encoded = codec.encode_entry(*entry)
    assert encoded == ref.encode_entry(*entry)
    assert len(encoded) == codec.ENTRY_HEADER_BYTES + len(entry[3])
    assert codec.decode_entry(encoded) == entry


@given(batch=st.lists(entries, max_size=40))
def test_batch_matches_reference_and_round_trips(batch):
    encoded = codec.encode_entries(batch)
    assert encoded == ref.encode_entries(batch)
    assert codec.decode_entries(encoded) == batch


@given(data=st.binary(max_size=200))
def test_decoding_arbitrary_bytes_agrees_with_reference(data):
    assert outcome(codec.decode_entries, data) == outcome(ref.decode_entries, data)
    assert outcome(codec.decode_entry, data) == outcome(ref.decode_entry, data)


@given(batch=st.lists(entries, min_size=1, max_size=10), cut=st.integers(min_value=1))
def test_cut_or_extended_batch_is_an_error(batch, cut):
    encoded = codec.encode_entries(batch)
    with pytest.raises(codec.CodecError):
        codec.decode_entries(encoded[: len(encoded) - 1 - cut % len(encoded)])
    with pytest.raises(codec.CodecError):
        codec.decode_entries(encoded + b"\0")


def test_decodes_into_a_named_tuple_type():
    batch = [Entry(3, 7, 1, b"conf"), Entry(3, 8, 0, b"")]
    decoded = codec.decode_entries(codec.encode_entries(batch), Entry)
    assert decoded == batch and all(type(entry) is Entry for entry in decoded)
    assert codec.decode_entry(codec.encode_entry(*batch[0]), Entry).data == b"conf"


def test_accepts_any_buffer_and_any_sequence():
    batch = [(1, 2, 0, bytearray(b"ab")), [3, 4, 0, memoryview(b"cd")]]
    assert codec.decode_entries(codec.encode_entries(batch)) == [(1, 2, 0, b"ab"), (3, 4, 0, b"cd")]


def test_empty_and_large_batches():
    assert codec.decode_entries(codec.encode_entries([])) == []
    big = [(1, i, 0, bytes([i % 256]) * 4096) for i in range(2000)]  # 8 MiB
    encoded = codec.encode_entries(big)
    assert encoded == ref.encode_entries(big)
    assert codec.decode_entries(encoded) == big


@pytest.mark.parametrize(
    "bad",
    [(-1, 0, 0, b""), (0, 2**64, 0, b""), (0, 0, 256, b""), (0, 0, 0, "text"), (0, 0, 0)],
)
def test_refuses_malformed_entries(bad):
    with pytest.raises((OverflowError, TypeError, ValueError)):
        codec.encode_entries([bad])


def test_refuses_a_count_the_bytes_cannot_hold():
    with pytest.raises(codec.CodecError, match="claims"):
        codec.decode_entries(b"\xff\xff\xff\xff" + bytes(40))


@given(main=revisions, sub=revisions, tombstone=st.booleans())
def test_revision_key_matches_reference_and_round_trips(main, sub, tombstone):
    key = codec.encode_revision(main, sub, tombstone)
    assert key == ref.encode_revision(main, sub, tombstone)
    assert len(key) == codec.REVISION_KEY_BYTES + tombstone
    assert codec.decode_revision(key) == (main, sub, tombstone)


@given(a=st.tuples(revisions, revisions), b=st.tuples(revisions, revisions))
def test_revision_keys_sort_in_revision_order(a, b):
    key_a, key_b = codec.encode_revision(*a), codec.encode_revision(*b)
    assert (key_a < key_b) == (a < b)
    # A tombstone sorts right after the live key of the same revision.
    assert key_a < codec.encode_revision(*a, tombstone=True)


@given(data=st.binary(min_size=15, max_size=20))
def test_decoding_arbitrary_revision_keys_agrees_with_reference(data):
    assert outcome(codec.decode_revision, data) == outcome(ref.decode_revision, data)


@pytest.mark.parametrize("main, sub", [(-1, 0), (0, -1), (2**63, 0), (0, 2**63)])
def test_refuses_revisions_outside_int64(main, sub):
    with pytest.raises(codec.CodecError):
        codec.encode_revision(main, sub)


# --- KeyValue records: the protobuf library is the reference -----------------------------

KEY_VALUE_FIELDS = ("key", "create_revision", "mod_revision", "version", "value", "lease")
int64s = st.integers(min_value=-(2**63), max_value=2**63 - 1)
key_values = st.tuples(st.binary(max_size=40), int64s, int64s, int64s, st.binary(max_size=300), int64s)


@given(fields=key_values)
def test_key_value_encoding_is_protobufs(fields):
    encoded = codec.encode_key_value(*fields)
    assert encoded == KeyValue(**dict(zip(KEY_VALUE_FIELDS, fields))).SerializeToString()
    assert codec.decode_key_value(encoded) == fields


@given(fields=key_values, unknown=st.binary(max_size=20), order=st.randoms())
def test_key_value_decoding_accepts_any_field_order_and_skips_unknown_fields(fields, unknown, order):
    pieces = [KeyValue(**{name: value}).SerializeToString() for name, value in zip(KEY_VALUE_FIELDS, fields)]
    pieces.append(b"\x3a" + bytes([len(unknown)]) + unknown)  # field 7, length-delimited
    pieces.append(b"\x41" + bytes(8) + b"\x4d" + bytes(4))  # fields 8 and 9, fixed width
    order.shuffle(pieces)
    shuffled = b"".join(pieces)
    assert codec.decode_key_value(shuffled) == fields
    parsed = KeyValue.FromString(shuffled)
    assert codec.decode_key_value(shuffled) == tuple(getattr(parsed, name) for name in KEY_VALUE_FIELDS)


@given(data=st.binary(max_size=60))
def test_key_value_decoding_of_arbitrary_bytes_agrees_with_protobuf_or_refuses(data):
    try:
        parsed = KeyValue.FromString(data)
    except DecodeError:
        parsed = None
    try:
        decoded = codec.decode_key_value(data)
    except codec.CodecError:
        decoded = None
    if decoded is not None and parsed is not None:
        assert decoded == tuple(getattr(parsed, name) for name in KEY_VALUE_FIELDS)
    # Anything protobuf refuses, we refuse too (we may refuse more: group wire types).
    assert parsed is not None or decoded is None


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_repeated_messages_are_the_batch_elements_as_protobuf_encodes_them(payloads):
    requests = [ShardRequest(id=i, put=PutRequest(key=b"k", value=payload)) for i, payload in enumerate(payloads)]
    encoded = ShardRequestBatch(requests=requests).SerializeToString()
    assert [ShardRequest.FromString(part) for part in codec.repeated_messages(encoded)] == requests


@pytest.mark.parametrize("bad, why", [
    (b"\x08\x01", "field tag 8"),  # a varint field 1, not a message
    (b"\x12\x00", "field tag 18"),  # a message numbered 2
    (b"\x0a\x05abc", "runs past the end"),
    (b"\x0a", "cut short"),
    (b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "longer than 10 bytes"),
])
def test_repeated_messages_refuses_other_layouts(bad, why):
    with pytest.raises(codec.CodecError, match=why):
        codec.repeated_messages(bad)


_puts = st.builds(
    PutRequest, key=st.binary(max_size=40), value=st.binary(max_size=100),
    lease=st.sampled_from([0, 0, 7, -1]), prev_kv=st.booleans(), ignore_value=st.booleans(),
    ignore_lease=st.booleans())
_requests = st.one_of(
    st.builds(ShardRequest, id=st.integers(0, 2**64 - 1), floor=st.integers(-2**63, 2**63 - 1), put=_puts),
    st.builds(ShardRequest, id=st.integers(0, 2**64 - 1), raise_revision=st.integers(0, 2**63 - 1)),
    st.builds(ShardRequest, put=_puts, unknown_leases=st.lists(st.integers(1, 99), max_size=2)),
)


@given(_requests, st.one_of(st.none(), st.integers(0, 2**64 - 1)))
def test_plain_put_reads_what_protobuf_reads_or_leaves_it_to_protobuf(request, appended_id):
    encoded = request.SerializeToString()
    if appended_id is not None:  # a raft entry: the request's bytes, then the proposal id
        encoded += b"\x08" + codec.varint(appended_id)
    parsed = ShardRequest.FromString(encoded)
    put = parsed.put
    plain = (parsed.WhichOneof("request") == "put" and not parsed.unknown_leases and not put.lease
             and not (put.prev_kv or put.ignore_value or put.ignore_lease))
    expected = (parsed.id, parsed.floor, put.key, put.value) if plain else None
    assert codec.decode_plain_put(encoded) == expected


def test_plain_put_leaves_a_repeated_put_to_protobuf():
    # Two put fields merge in protobuf; the native reader does not merge, it declines.
    encoded = (ShardRequest(put=PutRequest(key=b"a")).SerializeToString()
               + ShardRequest(put=PutRequest(value=b"v")).SerializeToString())
    assert codec.decode_plain_put(encoded) is None
    assert ShardRequest.FromString(encoded).put == PutRequest(key=b"a", value=b"v")


def test_plain_put_refuses_a_cut_request():
    encoded = ShardRequest(id=1, put=PutRequest(key=b"key", value=b"value")).SerializeToString()
    with pytest.raises(codec.CodecError):
        codec.decode_plain_put(encoded[:-2])


def test_gathering_plain_puts_takes_the_run_and_stops_at_anything_else():
    from shards.mvcc import PlainPut, Proposal

    def entry(index, request, kind=0):
        return Entry(2, index, kind, request.SerializeToString() + b"\x08" + codec.varint(100 + index))

    plain = ShardRequest(floor=9, put=PutRequest(key=b"k", value=b"v"))
    with_lease = ShardRequest(put=PutRequest(key=b"k", value=b"v", lease=7))
    entries = [entry(1, plain), entry(2, plain), Entry(2, 3, 0, b""), entry(4, plain),
               entry(5, with_lease), entry(6, plain, kind=1), entry(7, plain)]
    proposals, waiting, no_leases = [], {}, frozenset()
    waiting_writes = {102: None, 107: None}  # the writes this replica waits for, by proposal id

    def gather(start):
        return codec.gather_plain_puts(entries, start, proposals, waiting, waiting_writes,
                                       Proposal, PlainPut, no_leases)

    assert gather(0) == 2  # stops at the empty entry (a new leader's)
    assert gather(3) == 4  # at the put with a lease (protobuf's)
    assert gather(5) == 5  # at the membership change (type 1), taking nothing
    assert gather(6) == 7  # to the end
    put = (PlainPut(b"k", b"v"),)
    assert proposals == [Proposal(1, 9, put, no_leases, False), Proposal(2, 9, put, no_leases, True),
                         Proposal(4, 9, put, no_leases, False), Proposal(7, 9, put, no_leases, True)]
    assert waiting == {1: 102, 3: 107}  # position in proposals -> the proposal id waited for


def test_varints_are_protobufs():
    values = (0, 1, 127, 128, 300, 2**32, 2**64 - 1)
    assert [codec.varint(value) for value in values] == [
        b"\x00", b"\x01", b"\x7f", b"\x80\x01", b"\xac\x02", b"\x80\x80\x80\x80\x10", b"\xff" * 9 + b"\x01"]
    assert [ShardRequest.FromString(b"\x08" + codec.varint(value)).id for value in values] == list(values)
    with pytest.raises(OverflowError):
        codec.varint(-1)


_answers = st.one_of(
    st.builds(ShardResponse, id=st.integers(0, 2**64 - 1), range=st.builds(
        RangeResponse, header=st.builds(ResponseHeader, revision=st.integers(0, 2**63 - 1),
                                        raft_term=st.integers(0, 9), member_id=st.integers(0, 9)),
        kvs=st.lists(st.builds(KeyValue, key=st.binary(max_size=20), value=st.binary(max_size=40),
                               mod_revision=st.integers(0, 2**40)), max_size=3),
        more=st.booleans(), count=st.integers(0, 99))),
    st.builds(ShardResponse, id=st.integers(0, 2**64 - 1), put=st.builds(
        PutResponse, header=st.builds(ResponseHeader, revision=st.integers(0, 2**63 - 1)))),
    st.builds(ShardResponse, id=st.integers(0, 2**64 - 1), put=st.just(PutResponse())),
)


@given(_answers, st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_an_answer_restamped_natively_is_protobufs_restamped(response, cluster_id, member_id, raft_term):
    response_id, field, body = codec.answer_parts(response.SerializeToString())
    assert codec.response_id(response.SerializeToString()) == response.id
    kind = response.WhichOneof("response")
    assert (response_id, field) == (response.id, ShardResponse.DESCRIPTOR.fields_by_name[kind].number)
    expected = type(getattr(response, kind))()
    expected.CopyFrom(getattr(response, kind))
    revision = expected.header.revision
    expected.header.cluster_id, expected.header.member_id, expected.header.raft_term = cluster_id, member_id, raft_term
    assert codec.restamp_header(body, cluster_id, member_id, raft_term) == (revision, expected.SerializeToString())


def test_answer_parts_leaves_an_answer_given_twice_to_protobuf():
    twice = ShardResponse(id=3, put=PutResponse()).SerializeToString() + ShardResponse(put=PutResponse()).SerializeToString()
    assert codec.answer_parts(twice) == (3, 0, None)
    assert codec.response_id(twice + ShardResponse(id=5).SerializeToString()) == 5  # protobuf's last value
    assert codec.answer_parts(ShardResponse(id=4).SerializeToString()) == (4, 0, None)


_watch_responses = st.builds(
    WatchResponse,
    header=st.builds(ResponseHeader, revision=st.integers(0, 2**63 - 1), member_id=st.integers(0, 9)),
    watch_id=st.integers(-2**63, 2**63 - 1),
    created=st.booleans(), canceled=st.booleans(), compact_revision=st.integers(0, 9),
    cancel_reason=st.sampled_from(["", "etcdserver: mvcc: required revision has been compacted"]),
    fragment=st.booleans(),
    events=st.lists(st.builds(Event, type=st.sampled_from([Event.PUT, Event.DELETE]), kv=st.builds(
        KeyValue, key=st.binary(min_size=1, max_size=20), mod_revision=st.integers(1, 2**40))), max_size=3),
)


@given(_watch_responses, st.integers(-2**63, 2**63 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1),
       st.integers(0, 2**64 - 1))
def test_a_watch_response_peeked_and_restamped_natively_is_protobufs(response, watch_id, cluster_id, member_id,
                                                                     raft_term):
    data = response.SerializeToString()
    plain = not (response.created or response.canceled or response.compact_revision or response.cancel_reason
                 or response.fragment)
    assert codec.watch_response_peek(data) == (response.watch_id, response.header.revision, plain)
    expected = WatchResponse()
    expected.CopyFrom(response)
    expected.watch_id = watch_id
    expected.header.cluster_id, expected.header.member_id, expected.header.raft_term = cluster_id, member_id, raft_term
    assert codec.restamp_watch_response(data, watch_id, cluster_id, member_id, raft_term) == (
        response.header.revision, expected.SerializeToString())


def test_a_watch_response_cut_short_is_an_error():
    data = WatchResponse(header=ResponseHeader(revision=5), events=[Event(kv=KeyValue(key=b"k"))]).SerializeToString()
    for cut in (data[:1], data[:-1]):
        with pytest.raises(codec.CodecError):
            codec.watch_response_peek(cut)
        with pytest.raises(codec.CodecError):
            codec.restamp_watch_response(cut, 1, 2, 3, 4)
