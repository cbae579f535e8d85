"""The router's fast path (router/core.py): what it does with each outcome of a request it queued.

No sockets: the group's connection queues the request (its stream never opens here), and the
test hands the outcome to the callback it was submitted with, as the stream's reader would.
"""

import asyncio

from router.core import Router
from router.shard_client import GroupClient, ReplicaUnreachable
from router.shard_map import ShardMap
from tessera.api import errors
from tessera.api.internal_pb2 import ShardRequest, ShardResponse
from tessera.api.rpc_pb2 import PutRequest, PutResponse


class Responder:
    __slots__ = ("group", "generation", "outcome")

    def __init__(self):
        self.outcome = None

    def reply(self, answer: bytes):
        self.outcome = ("reply", PutResponse.FromString(answer))

    def fail(self, error):
        self.outcome = ("fail", error)

    def fallback(self):
        self.outcome = ("fallback", None)


def put_and_answer(outcome_for) -> tuple[Responder, Router, bytes]:
    """Put through the fast path; `outcome_for(request_id)` is what the stream reports for it."""
    async def scenario():
        group = GroupClient(1, {1: "127.0.0.1:9"})
        group.leader_id = 1
        connection = group.connection(1)
        connection._reader = asyncio.get_running_loop().create_future()  # a stream "open": nothing is sent
        router = Router(7, 9, ShardMap([], 1), {1: group}, group)
        router.revision = 41
        responder = Responder()
        router.put_now(PutRequest(key=b"k", value=b"v").SerializeToString(), responder)
        (request_id, fields), = connection._outbox
        waiting = connection._waiting.pop(request_id)
        waiting.sent = True
        outcome = outcome_for(request_id)
        if isinstance(outcome, ShardResponse):
            outcome = outcome.SerializeToString()  # an answer comes encoded, as the replica sent it
        waiting.on_outcome(waiting.context, outcome)
        connection._reader.cancel()
        await connection.close()
        return responder, router, fields

    return asyncio.run(scenario())


def test_the_put_travels_as_the_clients_bytes_with_the_revision_floor():
    responder, router, fields = put_and_answer(lambda request_id: ShardResponse(
        id=request_id, put=PutResponse(header={"revision": 42})))
    request = ShardRequest.FromString(fields)
    assert (request.floor, request.put.key, request.put.value) == (42, b"k", b"v")
    kind, answer = responder.outcome
    assert kind == "reply" and (answer.header.revision, answer.header.cluster_id, answer.header.member_id) == (42, 7, 9)
    assert router.revision == 42 and not router._writes_in_flight


def test_a_write_whose_outcome_is_unknown_is_never_sent_again():
    responder, router, _ = put_and_answer(lambda _: ReplicaUnreachable("127.0.0.1:9", True, "the stream ended"))
    assert responder.outcome == ("fail", errors.RequestTimeout())
    assert not router._writes_in_flight


def test_not_leader_goes_to_the_general_path_which_follows_the_hint():
    responder, _, _ = put_and_answer(lambda request_id: ShardResponse(id=request_id, error={
        "code": errors.NotLeader.code, "message": errors.NotLeader.message, "leader_id": 2}))
    assert responder.outcome == ("fallback", None)


def test_a_final_error_is_answered_as_it_came():
    responder, _, _ = put_and_answer(lambda request_id: ShardResponse(id=request_id, error={
        "code": errors.NoSpace.code, "message": errors.NoSpace.message}))
    assert responder.outcome == ("fail", errors.NoSpace())
