"""Lease checkpoints: a router that starts resumes each lease's remaining TTL, not a whole new one."""

from __future__ import annotations

import asyncio

from etcd_client import EtcdClient
from router.meta import META_GROUP
from router.server import RouterServer
from tessera.api.rpc_pb2 import LeaseGrantRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest
from tessera.launcher import free_ports

TTL_SECONDS = 30
CHECKPOINT_SECONDS = 0.2


def test_a_starting_router_resumes_remaining_ttls_from_the_checkpoints(tessera_cluster):
    layout = tessera_cluster.launcher.layout
    meta_members = {member: layout.api_address(META_GROUP, member) for member in (1, 2, 3)}

    async def router(port: int) -> RouterServer:
        server = RouterServer(f"127.0.0.1:{port}", meta_members, name=f"checkpoint-test-{port}",
                              lease_checkpoint_interval=CHECKPOINT_SECONDS)
        await server.start()
        return server

    async def scenario():
        first_port, second_port = free_ports(2)
        first = await router(first_port)
        try:
            async with EtcdClient(first.listen) as client:
                lease = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=TTL_SECONDS))).ID
                # Until a checkpoint records that time passed (a fresh lease would show TTL - 1).
                while not 0 < (await first.meta.load()).leases[lease].remaining_ttl <= TTL_SECONDS - 2:
                    await asyncio.sleep(CHECKPOINT_SECONDS)
        finally:
            await first.stop()
        second = await router(second_port)
        try:
            async with EtcdClient(second.listen) as client:
                resumed = await client.lease.LeaseTimeToLive(LeaseTimeToLiveRequest(ID=lease))
                assert resumed.grantedTTL == TTL_SECONDS
                assert 0 < resumed.TTL <= TTL_SECONDS - 2  # where the checkpoint left it, not a fresh TTL
                await client.lease.LeaseRevoke(LeaseRevokeRequest(ID=lease))
        finally:
            await second.stop()

    tessera_cluster.run(scenario())
