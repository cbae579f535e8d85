"""etcd's Lock and Election services through the router (their keys live in the default group)."""

from __future__ import annotations

import asyncio
import itertools

import grpc
import pytest

from etcd_client import EtcdClient
from tessera.api import v3election_pb2_grpc, v3lock_pb2_grpc
from tessera.api.rpc_pb2 import LeaseGrantRequest, LeaseRevokeRequest, RangeRequest
from tessera.api.v3election_pb2 import CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest
from tessera.api.v3lock_pb2 import LockRequest, UnlockRequest

_names = itertools.count()
# How long a contender must stay blocked to count as waiting (it would get in at once otherwise).
STILL_WAITING_SECONDS = 0.5


@pytest.fixture
def name():
    return b"/concurrency/%d-%x" % (next(_names), id(object()))


async def lease(client) -> int:
    return (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=60))).ID


async def still_waiting(task: asyncio.Task) -> bool:
    done, _ = await asyncio.wait([task], timeout=STILL_WAITING_SECONDS)
    return not done


def test_a_second_locker_waits_for_unlock_and_for_a_revoked_lease(tessera_cluster, name):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            locks = v3lock_pb2_grpc.LockStub(client.channel)
            first_lease, second_lease, third_lease = [await lease(client) for _ in range(3)]
            first = await locks.Lock(LockRequest(name=name, lease=first_lease))
            assert first.key == name + b"/" + format(first_lease, "x").encode()
            second = asyncio.ensure_future(locks.Lock(LockRequest(name=name, lease=second_lease)))
            assert await still_waiting(second)
            await locks.Unlock(UnlockRequest(key=first.key))
            second = await second
            assert second.key.endswith(format(second_lease, "x").encode())
            assert second.header.revision > first.header.revision

            third = asyncio.ensure_future(locks.Lock(LockRequest(name=name, lease=third_lease)))
            assert await still_waiting(third)
            await client.lease.LeaseRevoke(LeaseRevokeRequest(ID=second_lease))  # the holder's lease ends
            assert (await third).key.endswith(format(third_lease, "x").encode())
    asyncio.run(scenario())


def test_an_election_has_one_leader_who_proclaims_and_resigns(tessera_cluster, name):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            election = v3election_pb2_grpc.ElectionStub(client.channel)
            with pytest.raises(grpc.aio.AioRpcError) as nobody:
                await election.Leader(LeaderRequest(name=name))
            assert (nobody.value.code(), nobody.value.details()) == (grpc.StatusCode.UNKNOWN, "election: no leader")

            observer = election.Observe(LeaderRequest(name=name))
            alice = await election.Campaign(CampaignRequest(name=name, lease=await lease(client), value=b"alice"))
            bob = asyncio.ensure_future(
                election.Campaign(CampaignRequest(name=name, lease=await lease(client), value=b"bob")))
            assert await still_waiting(bob)
            assert (await election.Leader(LeaderRequest(name=name))).kv.value == b"alice"

            await election.Proclaim(ProclaimRequest(leader=alice.leader, value=b"alice, again"))
            await election.Resign(ResignRequest(leader=alice.leader))
            bob = await bob
            assert (await election.Leader(LeaderRequest(name=name))).kv.value == b"bob"
            with pytest.raises(grpc.aio.AioRpcError) as stale:  # alice no longer leads
                await election.Proclaim(ProclaimRequest(leader=alice.leader, value=b"alice?"))
            assert (stale.value.code(), stale.value.details()) == (grpc.StatusCode.UNKNOWN, "election: not leader")

            seen = [(await observer.read()).kv.value for _ in range(3)]
            assert seen == [b"alice", b"alice, again", b"bob"]
            observer.cancel()
            await election.Resign(ResignRequest(leader=bob.leader))
            left = await client.kv.Range(RangeRequest(key=name + b"/", range_end=name + b"0"))
            assert not left.kvs
    asyncio.run(scenario())
