"""The router's side of the internal API: which member GroupClient asks, and ShardConnection's sockets."""

from __future__ import annotations

import asyncio

from router.shard_client import GroupClient, ReplicaUnreachable, ShardConnection
from tessera.api.internal_pb2 import ShardRequest, ShardResponse, StatusResponse
from tessera.api.internal_stream import HELLO_BATCH, frame
from tessera.api.rpc_pb2 import RangeRequest, RangeResponse

CALLS = 300


class CountingMember:
    """A member's connection that answers everything at once and counts what it was asked."""

    def __init__(self, address: str):
        self.address = address
        self.asked = 0

    async def request(self, request: ShardRequest, timeout: float) -> ShardResponse:
        self.asked += 1
        if request.HasField("status"):
            return ShardResponse(id=request.id, status=StatusResponse(leader_id=1))
        return ShardResponse(id=request.id, range=RangeResponse())

    async def close(self) -> None:
        pass


def test_serializable_reads_spread_over_the_members_and_a_status_asks_the_leader():
    async def scenario():
        addresses = {1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"}
        client = GroupClient(1, addresses)
        for connection in client._connections.values():
            await connection.close()
        members = client._connections = {member: CountingMember(address) for member, address in addresses.items()}
        client.leader_id = 1
        read = ShardRequest(range=RangeRequest(key=b"k", serializable=True))
        for _ in range(CALLS):
            await client.call(read, write=False, any_member=True)
        # Each member's share is binomial(300, 1/3): any of the three at 40 or below about once in 10^14 runs.
        assert all(member.asked > 40 for member in members.values()), {m: c.asked for m, c in members.items()}
        before = {member_id: member.asked for member_id, member in members.items()}
        for _ in range(10):
            await client.call(ShardRequest(status={}), write=False, any_member=True)
        assert members[1].asked == before[1] + 10 and members[2].asked == before[2]

    asyncio.run(scenario())


def test_the_fast_path_sends_a_turns_serializable_reads_to_one_member_and_the_next_turns_to_the_next():
    async def scenario():
        client = GroupClient(1, {1: "127.0.0.1:1", 2: "127.0.0.1:2", 3: "127.0.0.1:3"})
        chosen = []
        for _ in range(6):
            turn = {client.read_member() for _ in range(5)}
            assert len(turn) == 1  # one batch to one replica
            chosen += turn
            await asyncio.sleep(0)  # the next turn of the loop
        assert sorted(chosen) == [1, 1, 2, 2, 3, 3] and chosen[:3] == chosen[3:]
        client.read_member()
        client.set_members({1: "127.0.0.1:1", 2: "127.0.0.1:2"})  # member 3 left mid-turn
        assert {client.read_member() for _ in range(3)} <= {1, 2}
        for connection in client._connections.values():
            await connection.close()

    asyncio.run(scenario())


def test_a_connection_closed_while_it_opens_leaves_no_socket_behind():
    async def scenario():
        ended = asyncio.get_running_loop().create_future()

        async def peer(reader, writer):
            ended.set_result(await reader.read())  # what arrives before the router's side closes
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        connection = ShardConnection("127.0.0.1:%d" % server.sockets[0].getsockname()[1])
        outcome = asyncio.get_running_loop().create_future()
        connection.submit(ShardRequest(status={}).SerializeToString(), lambda _, result: outcome.set_result(result), None)
        await connection.close()  # before the connection is made
        assert isinstance(await outcome, ReplicaUnreachable) and not (await outcome).sent
        # closed, and nothing but the hello (written as the socket connects) was sent on it
        assert await asyncio.wait_for(ended, 5.0) in (b"", frame(HELLO_BATCH))
        server.close()

    asyncio.run(scenario())


def test_a_request_times_out_at_its_own_deadline_when_an_earlier_one_waits_longer():
    """The sweep's timer follows the earliest deadline: a short request after a long one ends on time."""
    async def scenario():
        async def silent_peer(reader, writer):
            await reader.read()  # takes every request, answers none
            writer.close()

        server = await asyncio.start_server(silent_peer, "127.0.0.1", 0)
        connection = ShardConnection("127.0.0.1:%d" % server.sockets[0].getsockname()[1])
        loop = asyncio.get_running_loop()
        long, short = loop.create_future(), loop.create_future()
        status = ShardRequest(status={}).SerializeToString()
        connection.submit(status, lambda _, result: long.set_result(result), None, timeout=30.0)
        started = loop.time()
        connection.submit(status, lambda _, result: short.set_result(result), None, timeout=0.3)
        outcome = await asyncio.wait_for(short, 5.0)
        assert isinstance(outcome, ReplicaUnreachable) and outcome.sent and "no answer in time" in str(outcome)
        assert 0.3 <= loop.time() - started < 1.0  # not at the long request's deadline, nor much after its own
        assert not long.done()
        await connection.close()
        assert isinstance(long.result(), ReplicaUnreachable)
        server.close()

    asyncio.run(scenario())
