"""A 3-replica group of real processes: election, writes, reads, and a leader killed under load."""

import asyncio

from replica_cluster import (
    ReplicaGroup,
    ShardClient,
    put_many,
    read_all,
    wait_for_leader,
    wait_until_caught_up,
)

from router.shard_client import ReplicaUnreachable
from native import codec, walframe
from tessera.api.rpc_pb2 import (
    NOSPACE,
    AlarmRequest,
    CompactionRequest,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
)


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
            # Keys attached to a lease go when it is revoked; the lease is refused afterwards.
            await client.request(put=PutRequest(key=b"leased-1", value=b"v", lease=77))
            await client.request(put=PutRequest(key=b"leased-2", value=b"v", lease=77))
            revoked = await client.request(revoke_lease=77)
            assert revoked.lease_revoked.revision == 204  # both keys deleted at one revision
            gone = await client.request(range=RangeRequest(key=b"leased-", range_end=b"leased.", count_only=True))
            assert gone.range.count == 0
            late = await client.request(put=PutRequest(key=b"leased-3", value=b"v", lease=77))
            assert (late.error.code, late.error.message) == ("NOT_FOUND", "etcdserver: requested lease not found")
            # Puts that arrive together are proposed together; one without a key is refused alone.
            mixed = await asyncio.gather(*[client.request(put=PutRequest(key=key, value=b"v"))
                                           for key in (b"mixed-1", b"", b"mixed-2")])
            assert [answer.WhichOneof("response") for answer in mixed] == ["put", "error", "put"]
            assert (mixed[1].error.code, mixed[1].error.message) == (
                "INVALID_ARGUMENT", "etcdserver: key is not provided")
        follower = next(member for member in group.processes if member != leader)
        async with ShardClient(group.api_address(follower)) as client:
            refused, *together = await asyncio.gather(*[client.request(put=PutRequest(key=key, value=b"y"))
                                                         for key in (b"x", b"", b"z")])
            assert refused.error.message == "etcdserver: not leader"
            assert [answer.error.message for answer in together] == ["etcdserver: not leader"] * 2  # before the key
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
                except ReplicaUnreachable:
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


async def stop_a_follower_after_writes(group):
    """Write 50 keys, then kill a follower: (leader, follower, the follower's WAL directory)."""
    leader = await wait_for_leader(group)
    async with ShardClient(group.api_address(leader)) as client:
        await put_many(client, b"a-", 50)
    follower = next(member for member in group.processes if member != leader)
    group.kill(follower)
    return leader, follower, group.directory / f"member-{follower}" / "wal"


def refused_start_log(group, follower) -> str:
    """Start the member, expect it to refuse (exit 1), and return what it logged."""
    group.start(follower)
    assert group.processes.pop(follower).wait(timeout=30) == 1
    return (group.directory / f"member-{follower}.log").read_text()




def test_a_killed_follower_restarts_and_catches_up(group):
    async def scenario():
        leader = await wait_for_leader(group)
        follower = next(member for member in group.processes if member != leader)
        async with ShardClient(group.api_address(leader)) as client:
            await put_many(client, b"before-", 100)
            group.kill(follower)
            await put_many(client, b"while-down-", 300)  # two of three still make a quorum
        group.start(follower)
        await wait_until_caught_up(group, follower, leader)

    asyncio.run(scenario())


def test_killing_every_replica_mid_load_loses_no_acknowledged_write(group):
    async def scenario():
        leader = await wait_for_leader(group)
        acknowledged = {}
        async with ShardClient(group.api_address(leader)) as client:
            pending = [
                asyncio.ensure_future(client.request(put=PutRequest(key=b"k%05d" % i, value=b"v%d" % i)))
                for i in range(2000)
            ]
            while sum(future.done() for future in pending) < 500:
                await asyncio.sleep(0.01)
            for member in list(group.processes):
                group.kill(member)
            for i, future in enumerate(pending):
                try:
                    answer = await future
                except Exception:
                    continue
                if answer.WhichOneof("response") == "put":
                    acknowledged[b"k%05d" % i] = b"v%d" % i
        assert len(acknowledged) >= 500
        group.start_all()
        leader = await wait_for_leader(group)
        stored = await read_all(group, leader)
        assert all(stored.get(key) == value for key, value in acknowledged.items())

    asyncio.run(scenario())


def test_a_torn_wal_tail_is_recovered_on_restart(group):
    async def scenario():
        leader, follower, wal = await stop_a_follower_after_writes(group)
        segment = sorted(wal.glob("*.wal"))[-1]
        data = bytearray(segment.read_bytes())
        end = len(data.rstrip(b"\0"))
        end += -end % 8
        # The crash came while the next write was on its way: part of a frame, never synced.
        torn = walframe.encode_frame(2, codec.encode_entries([(99, 10**6, 0, b"never acknowledged")]))
        data[end:end + 20] = torn[:20]
        segment.write_bytes(data)
        group.start(follower)
        async with ShardClient(group.api_address(leader)) as client:
            await put_many(client, b"b-", 50)
        await wait_until_caught_up(group, follower, leader, "recover")
        assert "torn tail" in (group.directory / f"member-{follower}.log").read_text()

    asyncio.run(scenario())


def test_a_corrupted_wal_refuses_to_start_naming_file_and_offset(group):
    async def scenario():
        _, follower, wal = await stop_a_follower_after_writes(group)
        segment = sorted(wal.glob("*.wal"))[-1]
        data = bytearray(segment.read_bytes())
        data[200] ^= 0xFF  # inside an early frame, with whole frames after it
        segment.write_bytes(data)
        assert f"WAL corrupt: {segment} at byte offset" in refused_start_log(group, follower)

    asyncio.run(scenario())


def test_a_wal_that_lost_synced_data_refuses_to_start(group):
    """The store applied entries the WAL no longer has: a lying disk, not a crash."""

    async def scenario():
        _, follower, wal = await stop_a_follower_after_writes(group)
        for segment in wal.glob("*.wal"):
            segment.unlink()
        log = refused_start_log(group, follower)
        assert "the store has applied raft index" in log and str(wal) in log and "only holds entries up to" in log

    asyncio.run(scenario())


def test_a_follower_too_far_behind_catches_up_by_snapshot(tmp_path):
    group = ReplicaGroup(tmp_path, extra_arguments=["--snapshot-count", "100", "--snapshot-catchup-entries", "20"])
    group.start_all()
    try:
        async def scenario():
            leader = await wait_for_leader(group)
            follower = next(member for member in group.processes if member != leader)
            async with ShardClient(group.api_address(leader)) as client:
                await put_many(client, b"before-", 50)
                group.kill(follower)
                for round_number in range(6):  # snapshots at every 100 entries compact the log
                    await put_many(client, b"round-%d-" % round_number, 100)
            leader_wal = group.directory / f"member-{leader}" / "wal"
            assert "snapshot at" in (group.directory / f"member-{leader}.log").read_text()
            group.start(follower)
            await wait_until_caught_up(group, follower, leader)
            assert "installed a snapshot" in (group.directory / f"member-{follower}.log").read_text()
            assert leader_wal.exists()
            # It keeps up afterwards, by log, and survives a restart from the installed state.
            async with ShardClient(group.api_address(leader)) as client:
                await put_many(client, b"after-", 30)
            group.kill(follower)
            group.start(follower)
            await wait_until_caught_up(group, follower, leader, "keep its snapshot over a restart")

        asyncio.run(scenario())
    finally:
        group.stop_all()


def test_past_the_quota_writes_get_nospace_on_every_replica_until_disarmed(tmp_path):
    group = ReplicaGroup(tmp_path, extra_arguments=["--quota-backend-bytes", str(512 * 1024)])
    group.start_all()
    try:
        async def scenario():
            leader = await wait_for_leader(group)
            async with ShardClient(group.api_address(leader)) as client:
                outcomes = []
                for number in range(200):
                    answer = await client.request(put=PutRequest(key=b"big-%03d" % number, value=bytes(8000)))
                    outcomes.append(answer.error.message or "ok")
                    if answer.error.message:
                        break
                assert outcomes[-1] == "etcdserver: mvcc: database space exceeded"
                refused = await client.request(put=PutRequest(key=b"small", value=b"x"))
                assert (refused.error.code, refused.error.message) == (
                    "RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")
                # Reads and deletes still work.
                assert (await client.request(range=RangeRequest(key=b"big-000"))).range.count == 1
                deleted = await client.request(delete_range=DeleteRangeRequest(key=b"big-", range_end=b"big."))
                assert deleted.delete_range.deleted == len(outcomes) - 1
                for member in group.processes:
                    async with ShardClient(group.api_address(member)) as other:
                        for _ in range(50):
                            alarms = (await other.request(status={})).status.alarms
                            if alarms:
                                break
                            await asyncio.sleep(0.05)
                        assert [(a.memberID, a.alarm) for a in alarms] == [(leader, NOSPACE)]
                # What an etcd operator does: free space (delete, compact), then disarm.
                compaction = CompactionRequest(revision=deleted.delete_range.header.revision, physical=True)
                assert (await client.request(compaction=compaction)).WhichOneof("response") == "compaction"
                # Physical: answered once the history is gone, so the space is free already.
                assert (await client.request(status={})).status.db_size_in_use < 256 * 1024
                disarm = AlarmRequest(action=AlarmRequest.DEACTIVATE, memberID=leader, alarm=NOSPACE)
                assert (await client.request(alarm=disarm)).alarm.alarms[0].alarm == NOSPACE
                answer = await client.request(put=PutRequest(key=b"small", value=b"x"))
                assert answer.WhichOneof("response") == "put", answer

        asyncio.run(scenario())
    finally:
        group.stop_all()


def test_leadership_moves_to_a_chosen_voter_and_writes_follow(group):
    async def scenario():
        leader = await wait_for_leader(group)
        target = max(member for member in group.processes if member != leader)
        async with ShardClient(group.api_address(target)) as follower:
            refused = await follower.request(move_leader={"targetID": leader})
            assert refused.error.message == "etcdserver: not leader"
        async with ShardClient(group.api_address(leader)) as client:
            await put_many(client, b"before-", 20)
            for bad_target in (leader, 99):
                refused = await client.request(move_leader={"targetID": bad_target})
                assert (refused.error.code, refused.error.message) == (
                    "FAILED_PRECONDITION", "etcdserver: bad leader transferee")
            moved = await client.request(move_leader={"targetID": target})
            assert moved.WhichOneof("response") == "move_leader", moved
            assert moved.move_leader.header.revision == 21
        assert await wait_for_leader(group) == target
        async with ShardClient(group.api_address(target)) as client:
            await put_many(client, b"after-", 20)
            count = await client.request(range=RangeRequest(key=b"\0", range_end=b"\0", count_only=True))
            assert count.range.count == 40

    asyncio.run(scenario())
