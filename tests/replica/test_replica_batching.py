"""A leader keeps one batch in flight: what queues meanwhile goes out as the next batch, in one WAL fsync."""

from __future__ import annotations

import asyncio

from replica_cluster import ReplicaGroup, ShardClient, wait_for_leader

from shards.fault_control import ENVIRONMENT_VARIABLE, write_faults
from tessera.api.rpc_pb2 import PutRequest

WAVES = 10
WAVE_WRITES = 20


def test_writes_queued_while_a_batch_is_uncommitted_are_proposed_as_one_batch(tmp_path):
    control = str(tmp_path / "faults.json")
    write_faults(control)
    # A long election timeout: the followers do not campaign while the leader's appends are dropped.
    group = ReplicaGroup(tmp_path, extra_arguments=["--election-timeout", "3000"],
                         environment={ENVIRONMENT_VARIABLE: control})

    async def fsyncs(client: ShardClient) -> int:
        return (await client.request(status={})).status.wal_fsyncs

    async def scenario():
        leader = await wait_for_leader(group)
        followers = [member for member in group.processes if member != leader]
        async with ShardClient(group.api_address(leader)) as client:
            write_faults(control, blocked=[(group.peer_address(leader), group.peer_address(f)) for f in followers])
            await asyncio.sleep(0.5)  # the replicas re-read the control file every 50 ms
            before = await fsyncs(client)
            first = asyncio.ensure_future(client.request(put=PutRequest(key=b"first", value=b"v")))
            while await fsyncs(client) == before:  # the first batch is durable here, not on a quorum
                await asyncio.sleep(0.01)
            queued = []
            for wave in range(WAVES):  # each wave its own stream message, while the first is uncommitted
                queued += [asyncio.ensure_future(client.request(put=PutRequest(key=b"k%03d" % i, value=b"v")))
                           for i in range(wave * WAVE_WRITES, (wave + 1) * WAVE_WRITES)]
                await asyncio.sleep(0.01)
            assert not first.done(), "the leader's appends were not dropped"
            assert await fsyncs(client) == before + 1  # nothing more proposed
            write_faults(control)
            answers = await asyncio.gather(first, *queued)
            assert all(answer.WhichOneof("response") == "put" for answer in answers), answers[0]
            revisions = {answer.put.header.revision for answer in answers[1:]}
            assert len(revisions) == WAVES * WAVE_WRITES
            # The queued writes went out as one batch: one more fsync (a commit index alone needs none).
            assert await fsyncs(client) == before + 2

    group.start_all()
    try:
        asyncio.run(scenario())
    finally:
        group.stop_all()
