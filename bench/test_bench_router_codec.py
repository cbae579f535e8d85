"""The router's per-request work without sockets: decode, route, batch for a group, and answer.

What the router does for each request that stays in one group, in its own
order (router/server.py's handler, router/core.py, router/shard_client.py):
parse the client's bytes, validate, find the group in the shard map, wrap the
request in a ShardRequest with its revision floor, copy it into the stream's
batch and serialise the batch; then parse the group's answer batch, stamp
each answer's header and serialise it for the client. One timed call does
that for BATCH requests; the rate is requests per second of one core.

    pytest bench/test_bench_router_codec.py --benchmark-only
"""

import os

import pytest

from router.shard_map import ShardMap
from tessera.api import validation
from tessera.api.internal_pb2 import ShardRequest, ShardRequestBatch, ShardResponse, ShardResponseBatch
from tessera.api.kv_pb2 import KeyValue
from tessera.api.rpc_pb2 import PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader
from tessera.launcher import DEFAULT_GROUP, INITIAL_PREFIXES

BATCH = 1000
VALUE = os.urandom(256)
KEYS = [b"/registry/pods/default/pod-%06d" % number for number in range(BATCH)]


def default_shard_map() -> ShardMap:
    shard_map = ShardMap([], DEFAULT_GROUP)
    for prefix, group in sorted(INITIAL_PREFIXES.items()):
        shard_map = shard_map.assign(prefix, group)
    return shard_map


SHARD_MAP = default_shard_map()


def stamped(header: ResponseHeader) -> None:
    header.cluster_id, header.member_id, header.raft_term = 7, 9, 3


def route_batch(kind: str, parse, check, client_requests: list[bytes]) -> bytes:
    """Client bytes in, one serialised ShardRequestBatch out (every request to the same group here)."""
    batch = ShardRequestBatch()
    for request_id, data in enumerate(client_requests):
        request = parse(data)
        check(request)
        SHARD_MAP.group_of(request.key)
        shard_request = ShardRequest(floor=1000 + request_id, **{kind: request})
        sent = batch.requests.add()
        sent.CopyFrom(shard_request)
        sent.id = request_id
    return batch.SerializeToString()


def answer_batch(kind: str, answers: bytes) -> list[bytes]:
    """One serialised ShardResponseBatch in, each client's answer bytes out."""
    replies = []
    for response in ShardResponseBatch.FromString(answers).responses:
        answer = getattr(response, response.WhichOneof("response"))
        stamped(answer.header)
        replies.append(answer.SerializeToString())
    return replies


PUTS = [PutRequest(key=key, value=VALUE).SerializeToString() for key in KEYS]
PUT_ANSWERS = ShardResponseBatch(responses=[
    ShardResponse(id=number, put=PutResponse(header=ResponseHeader(revision=1000 + number)))
    for number in range(BATCH)]).SerializeToString()
RANGES = [RangeRequest(key=key, serializable=True).SerializeToString() for key in KEYS]
RANGE_ANSWERS = ShardResponseBatch(responses=[
    ShardResponse(id=number, range=RangeResponse(header=ResponseHeader(revision=5000), count=1, kvs=[
        KeyValue(key=key, value=VALUE, create_revision=1000 + number, mod_revision=1000 + number, version=1)]))
    for number, key in enumerate(KEYS)]).SerializeToString()

CASES = {
    "put": ("put", PutRequest.FromString, validation.check_put, PUTS, PUT_ANSWERS),
    "range": ("range", RangeRequest.FromString, validation.check_range, RANGES, RANGE_ANSWERS),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_router_request_to_group_batch(benchmark, report_rate, case):
    kind, parse, check, requests, _ = CASES[case]
    encoded = benchmark(route_batch, kind, parse, check, requests)
    sent = ShardRequestBatch.FromString(encoded).requests
    assert len(sent) == BATCH and getattr(sent[-1], kind).key == KEYS[-1]
    report_rate(BATCH, "requests")


@pytest.mark.parametrize("case", sorted(CASES))
def test_router_group_batch_to_answers(benchmark, report_rate, case):
    kind, _, _, _, answers = CASES[case]
    replies = benchmark(answer_batch, kind, answers)
    assert len(replies) == BATCH
    header = {"put": PutResponse, "range": RangeResponse}[kind].FromString(replies[-1]).header
    assert (header.member_id, header.revision) == (9, 1000 + BATCH - 1 if kind == "put" else 5000)
    report_rate(BATCH, "requests")
