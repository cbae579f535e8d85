"""Leases owned by the meta group: expiry and keep-alive across a failover of its leader, and checkpoints.

The meta group's leader keeps every lease's deadline. When it dies, the next
leader resumes each lease from its last checkpoint plus an election timeout
(etcd's promotion), so a lease that is kept alive survives and one that is
not still expires, late by at most the failover.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from cluster import ClusterThread
from etcd_client import EtcdClient
from tessera.api.meta_keys import META_GROUP
from tessera.api.rpc_pb2 import (
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    PutRequest,
    RangeRequest,
)

CHECKPOINT_SECONDS = 0.2
# How late a lease may expire when the meta leader dies: an election (up to two election
# timeouts), the promotion's extension (one), a checkpoint's rounding up to whole seconds,
# and the deletes in every group.
FAILOVER_SECONDS = 6.0
# One key in each data group of the default map.
KEYS_IN_EVERY_GROUP = ("/lease-test/{}", "/registry/pods/lease-test-{}", "/registry/events/lease-test-{}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ClusterThread(tmp_path_factory.mktemp("leases"),
                       replica_arguments=["--lease-checkpoint-interval", str(CHECKPOINT_SECONDS)]) as cluster:
        yield cluster


async def kill_meta_leader(cluster: ClusterThread) -> int:
    """On the cluster's loop (scenarios run there): kill -9 the meta group's leader."""
    leader = await cluster.launcher.leader(META_GROUP)
    cluster.launcher.kill(META_GROUP, leader)
    return leader


async def keys_left(client: EtcdClient, keys: list[bytes]) -> list[bytes]:
    found = []
    for key in keys:
        if (await client.kv.Range(RangeRequest(key=key))).kvs:
            found.append(key)
    return found


def test_a_new_meta_leader_resumes_remaining_ttls_from_the_checkpoints(cluster):
    ttl = 30

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            lease = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=ttl))).ID
            granted = time.monotonic()
            while time.monotonic() - granted < 3.5:  # several checkpoints record that time passed
                await asyncio.sleep(0.2)
            killed = await kill_meta_leader(cluster)
            try:
                resumed = await client.lease.LeaseTimeToLive(LeaseTimeToLiveRequest(ID=lease))
                assert resumed.grantedTTL == ttl
                # From the checkpoint (at most ttl - 3 left) plus one election timeout; a new leader
                # without checkpoints would have given a whole TTL plus one (31).
                assert ttl - 10 < resumed.TTL <= ttl - 2, resumed
                await client.lease.LeaseRevoke(LeaseRevokeRequest(ID=lease))
            finally:
                cluster.launcher.restart(META_GROUP, killed)

    cluster.run(scenario())


def test_no_key_outlives_its_lease_across_a_meta_leader_failover_and_kept_leases_survive(cluster):
    ttl = 3

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            started = time.monotonic()
            expiring = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=ttl))).ID
            kept = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=ttl))).ID
            expiring_keys = [pattern.format("expiring").encode() for pattern in KEYS_IN_EVERY_GROUP]
            kept_keys = [pattern.format("kept").encode() for pattern in KEYS_IN_EVERY_GROUP]
            for key in expiring_keys:
                await client.kv.Put(PutRequest(key=key, value=b"v", lease=expiring))
            for key in kept_keys:
                await client.kv.Put(PutRequest(key=key, value=b"v", lease=kept))

            keep_alive = client.lease.LeaseKeepAlive()
            renewals = []

            async def renew_forever():
                while True:
                    await keep_alive.write(LeaseKeepAliveRequest(ID=kept))
                    renewals.append((await keep_alive.read()).TTL)
                    await asyncio.sleep(0.5)

            renewer = asyncio.get_running_loop().create_task(renew_forever())
            killed = None
            try:
                await asyncio.sleep(1.0)
                killed = await kill_meta_leader(cluster)
                while await keys_left(client, expiring_keys):
                    assert time.monotonic() - started < ttl + FAILOVER_SECONDS, "keys outlived their lease"
                    await asyncio.sleep(0.1)
                # The kept lease lives on for several TTLs more, renewed by the new leader.
                until = time.monotonic() + 2 * ttl
                while time.monotonic() < until:
                    assert not renewer.done(), renewer
                    await asyncio.sleep(0.2)
                assert await keys_left(client, kept_keys) == kept_keys
                assert (await client.lease.LeaseTimeToLive(LeaseTimeToLiveRequest(ID=kept))).TTL > 0
                assert renewals[-1] == ttl
                # A put that names the expired lease is refused, as etcd refuses it.
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await client.kv.Put(PutRequest(key=expiring_keys[0], value=b"late", lease=expiring))
                assert refused.value.code() == grpc.StatusCode.NOT_FOUND
                assert refused.value.details() == "etcdserver: requested lease not found"
                assert (await client.lease.LeaseTimeToLive(LeaseTimeToLiveRequest(ID=expiring))).TTL == -1
            finally:
                renewer.cancel()
                keep_alive.cancel()
                if killed is not None:
                    cluster.launcher.restart(META_GROUP, killed)
            await client.lease.LeaseRevoke(LeaseRevokeRequest(ID=kept))
            assert await keys_left(client, kept_keys) == []

    cluster.run(scenario(), timeout=120)
