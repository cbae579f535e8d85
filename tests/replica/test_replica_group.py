"""A 3-replica group of real processes: election, writes, reads, and a leader killed under load."""

import asyncio

import grpc
import pytest
from replica_cluster import ReplicaGroup, ShardClient, wait_for_leader

from tessera.api.rpc_pb2 import PutRequest, RangeRequest


@pytest.fixture
def group(tmp_path):
    group = ReplicaGroup(tmp_path)
    group.start_all()
    yield group
    group.stop_all()


def test_a_group_elects_replicates_and_serves(group):
    async def scenario():
        leader = await wait_for_leader(group)
        async with ShardClient(group.api_address(leader)) as client:
            answers = await asyncio.gather(*[
                client.request(put=PutRequest(key=b"key-%03d" % i, value=b"value-%d" % i)) for i in range(200)
            ])
            assert all(answer.WhichOneof("response") == "put" for answer in answers), answers[0]
            revisions = sorted(answer.put.header.revision for answer in answers)
            assert revisions == list(range(2, 202))
            read = await client.request(range=RangeRequest(key=b"key-", range_end=b"key.", count_only=True))
            assert read.range.count == 200 and read.range.header.revision == 201
        follower = next(member for member in group.processes if member != leader)
        async with ShardClient(group.api_address(follower)) as client:
            refused = await client.request(put=PutRequest(key=b"x", value=b"y"))
            assert refused.error.message == "etcdserver: not leader"
            assert refused.error.code == "FAILED_PRECONDITION"
            assert refused.error.leader_id == leader
            assert refused.error.leader_address == group.api_address(leader)
            # A follower's own state serves serializable reads once it has applied the writes.
            for _ in range(50):
                local = await client.request(range=RangeRequest(key=b"key-199", serializable=True))
                if local.range.kvs:
                    break
                await asyncio.sleep(0.05)
            assert local.range.kvs[0].value == b"value-199"
            empty = await client.request(range=RangeRequest(key=b""))
            assert empty.error.message == "etcdserver: key is not provided"

    asyncio.run(scenario())


def test_killing_the_leader_under_load_loses_no_acknowledged_write(group):
    async def scenario():
        leader = await wait_for_leader(group)
        acknowledged: dict[bytes, bytes] = {}
        uncertain: set[bytes] = set()

        async def writer(name: int, stop: asyncio.Event):
            """Puts fresh keys; an attempt whose outcome is unknown is recorded, never repeated."""
            number = 0
            target = leader
            while not stop.is_set():
                key, value = b"w%d-%05d" % (name, number), b"v%d" % number
                try:
                    async with ShardClient(group.api_address(target)) as client:
                        while not stop.is_set():
                            key, value = b"w%d-%05d" % (name, number), b"v%d" % number
                            answer = await client.request(put=PutRequest(key=key, value=value), timeout=10)
                            if answer.WhichOneof("response") == "put":
                                acknowledged[key] = value
                            elif answer.error.leader_id:  # refused without proposing: safe to resend
                                target = answer.error.leader_id
                                break
                            else:  # leader changed, timed out, no leader: outcome unknown
                                uncertain.add(key)
                                await asyncio.sleep(0.05)
                            number += 1
                except (grpc.aio.AioRpcError, asyncio.TimeoutError):
                    uncertain.add(key)  # the connection died with the request in flight
                    number += 1
                    await asyncio.sleep(0.05)
                    target = next(iter(group.processes))

        stop = asyncio.Event()
        writers = [asyncio.get_running_loop().create_task(writer(n, stop)) for n in range(4)]
        while len(acknowledged) < 300:
            await asyncio.sleep(0.05)
        group.kill(leader)
        survivors = list(group.processes)
        new_leader = await wait_for_leader(group, survivors)
        assert new_leader != leader
        before = len(acknowledged)
        while len(acknowledged) < before + 300:  # writes continue on the new leader
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.gather(*writers)
        async with ShardClient(group.api_address(new_leader)) as client:
            everything = await client.request(range=RangeRequest(key=b"w", range_end=b"x"))
        stored = {kv.key: kv.value for kv in everything.range.kvs}
        missing = [key for key in acknowledged if stored.get(key) != acknowledged[key]]
        assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:3]}"
        assert set(stored) <= set(acknowledged) | uncertain  # nothing appeared from nowhere
        versions = {kv.key: kv.version for kv in everything.range.kvs}
        assert set(versions.values()) == {1}  # no write applied twice

    asyncio.run(scenario())
