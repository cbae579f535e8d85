"""A replica's API port against bad peers: each gets its connection closed, everyone else is served."""

from __future__ import annotations

import asyncio

import pytest
from replica_cluster import ReplicaGroup, ShardClient, wait_for_leader

from router.shard_client import ReplicaUnreachable, ShardConnection
from tessera.api.internal_pb2 import ShardRequest, ShardRequestBatch
from tessera.api.internal_stream import HELLO_BATCH, frame
from tessera.api.rpc_pb2 import PutRequest, RangeRequest
from tessera.launcher import free_ports

CLOSED_WITHIN_SECONDS = 5.0


@pytest.fixture(scope="module")
def lone_replica(tmp_path_factory):
    group = ReplicaGroup(tmp_path_factory.mktemp("lone"), size=1)
    group.start_all()
    asyncio.run(wait_for_leader(group))
    yield group
    group.stop_all()


async def _closed_after(address: str, sent: bytes) -> bytes:
    """What the replica sends back before it closes the connection."""
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(sent)
    try:
        return await asyncio.wait_for(reader.read(), CLOSED_WITHIN_SECONDS)
    finally:
        writer.close()


async def _still_serves(address: str, key: bytes) -> None:
    async with ShardClient(address) as client:
        put = await client.request(put=PutRequest(key=key, value=b"v"))
        assert put.WhichOneof("response") == "put", put
        got = await client.request(range=RangeRequest(key=key))
        assert [kv.value for kv in got.range.kvs] == [b"v"]


@pytest.mark.parametrize("sent", [
    pytest.param(frame(b"tessera.internal.Shard/Nothing"), id="an unknown stream"),
    pytest.param(frame(b"GET / HTTP/1.1\r\n"), id="a hello that is not one"),
    pytest.param(frame(HELLO_BATCH) + frame(b"\xff\xff\xff"), id="a batch that does not decode"),
    pytest.param(frame(HELLO_BATCH) + b"\xff\xff\xff\xff", id="a frame of 4 GiB"),
])
def test_a_bad_peer_is_closed_without_an_answer_and_the_replica_serves_on(lone_replica, sent):
    address = lone_replica.api_address(1)

    async def scenario():
        assert await _closed_after(address, sent) == b""
        await _still_serves(address, b"after-a-bad-peer")

    asyncio.run(scenario())


def test_a_router_that_leaves_with_requests_in_flight_costs_nothing_but_their_answers(lone_replica):
    address = lone_replica.api_address(1)

    async def scenario():
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        puts = ShardRequestBatch(requests=[ShardRequest(id=n, put=PutRequest(key=b"left-%d" % n, value=b"v"))
                                           for n in range(100)])
        writer.write(frame(HELLO_BATCH) + frame(puts.SerializeToString()))
        await writer.drain()
        writer.close()
        await _still_serves(address, b"after-a-router-left")

    asyncio.run(scenario())


def test_a_replica_that_does_not_listen_is_unreachable_and_the_request_was_not_sent():
    async def scenario():
        connection = ShardConnection(f"127.0.0.1:{free_ports(1)[0]}")
        try:
            with pytest.raises(ReplicaUnreachable, match="could not connect") as unreachable:
                await connection.request(ShardRequest(status={}), timeout=5.0)
            assert not unreachable.value.sent  # safe to send elsewhere, even a write
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_requests_sent_on_every_turn_while_the_connection_opens_are_all_answered(lone_replica):
    """The hello goes first even when a batch is flushed the moment the socket connects."""
    async def scenario():
        connection = ShardConnection(lone_replica.api_address(1))
        try:
            answers = []
            for _ in range(30):  # one request a turn of the loop, from before the connection is made
                answers.append(asyncio.ensure_future(connection.request(ShardRequest(status={}), timeout=5.0)))
                await asyncio.sleep(0)
            answered = [await answer for answer in answers]
            assert all(answer.HasField("status") for answer in answered), answered
        finally:
            await connection.close()

    asyncio.run(scenario())
