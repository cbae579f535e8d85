"""A replica whose raft loop fails must fail loudly (and its process exit), never hang on."""

import asyncio

import pytest
from replica_cluster import free_ports

from shards.raft_driver import MemberAddresses
from shards.replica import Replica, ReplicaConfig


def test_a_failure_in_the_raft_loop_surfaces(tmp_path):
    peer, api = free_ports(2)
    config = ReplicaConfig(group_id=1, member_id=1, data_dir=tmp_path, wal_segment_bytes=1 << 20,
                           members={1: MemberAddresses(f"127.0.0.1:{peer}", f"127.0.0.1:{api}")})

    async def scenario():
        replica = Replica(config)
        await replica.start()
        try:
            replica.driver.receive(["not a raft message"])  # what no transport delivers: a broken invariant
            with pytest.raises(AttributeError):
                await asyncio.wait_for(replica.failed(), 5)
        finally:
            await replica.stop()

    asyncio.run(scenario())
