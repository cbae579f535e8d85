"""`tessera shards move` on a cluster of its own: a prefix and its keys to another group while a
client writes and watches; bad input refused with nothing changed; a mover that dies at each
phase, then `--recover`, which undoes a move before its switch and finishes one after it.

The mover runs in the test's process (router/moves.py), so it can be stopped at an exact point:
cancelling its task mid-way leaves what a killed mover leaves (no undo runs on cancellation).
A kill -9 of the real `tessera shards move` process is covered in tests/e2e/test_etcdctl_move.py.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from cluster import ClusterThread
from etcd_client import EtcdClient
from router import moves
from router.meta import META_GROUP, MetaClient
from router.shard_client import GroupClient
from router.shard_map import ShardMapError
from tessera.api.internal_pb2 import MoveRecord
from tessera.api.rpc_pb2 import (
    DeleteRangeRequest,
    LeaseGrantRequest,
    PutRequest,
    RangeRequest,
)

PRELOADED_KEYS = 300


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ClusterThread(tmp_path_factory.mktemp("move-cluster")) as cluster:
        yield cluster


def meta_members(cluster) -> dict[int, str]:
    layout = cluster.launcher.layout
    return {member: layout.api_address(META_GROUP, member) for member in layout.groups[META_GROUP]}


async def group_records(cluster, group: int, prefix: bytes) -> list:
    """The keys a group itself holds under a prefix (asked of its leader, whatever the map says)."""
    launcher = cluster.launcher
    answer = await launcher.request(group, await launcher.leader(group),
                                    range=RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
    return list(answer.range.kvs)


async def meta_state(cluster):
    meta = MetaClient(GroupClient(META_GROUP, meta_members(cluster)))
    try:
        return await meta.load()
    finally:
        await meta.client.close()


async def preload(client, prefix: bytes, count: int = PRELOADED_KEYS) -> dict[bytes, object]:
    lease = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=3600))).ID
    for n in range(count):
        await client.kv.Put(PutRequest(key=prefix + b"k%04d" % n, value=b"v%d" % n,
                                       lease=lease if n % 10 == 0 else 0))
    for n in range(0, count, 7):  # some keys with a few versions
        await client.kv.Put(PutRequest(key=prefix + b"k%04d" % n, value=b"w%d" % n,
                                       lease=lease if n % 10 == 0 else 0))
    answer = await client.kv.Range(RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
    return {kv.key: kv for kv in answer.kvs}


def test_a_prefix_moves_with_its_keys_while_a_client_writes_and_watches(cluster):
    prefix = b"/moving-live/"

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            before = await preload(client, prefix)
            start = max(kv.mod_revision for kv in before.values()) + 1
            watch = client.watch()
            await watch.create(key=prefix, range_end=prefix[:-1] + b"0", start_revision=start)
            across = client.watch()  # over every group: merged by the router before and after the switch
            await across.create(key=b"/", range_end=b"0", start_revision=start)
            written: list[tuple[bytes, bytes, int]] = []  # (key, value, revision) as acknowledged
            stop = asyncio.Event()

            async def writer():
                n = 0
                while not stop.is_set() or n < 20:
                    key = prefix + b"k%04d" % (n % (PRELOADED_KEYS + 50))  # old keys and new ones
                    value = b"live%d" % n
                    answer = await client.kv.Put(PutRequest(key=key, value=value))
                    written.append((key, value, answer.header.revision))
                    n += 1

            writing = asyncio.ensure_future(writer())
            outcome = await moves.move(meta_members(cluster), prefix, 3)
            stop.set()
            await writing
            assert (outcome.source, outcome.target) == (1, 3) and outcome.keys >= PRELOADED_KEYS

            # Revisions rose with every acknowledged write, across the switch.
            revisions = [revision for _, _, revision in written]
            assert revisions == sorted(revisions) and len(set(revisions)) == len(revisions)

            # Every key reads as its last write left it, or as preloaded, with its revisions.
            expected = {key: (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
                        for key, kv in before.items()}
            for key, value, revision in written:
                old = expected.get(key)
                expected[key] = (value, old[1] if old else revision, revision, old[3] + 1 if old else 1, 0)
            answer = await client.kv.Range(RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
            assert {kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease)
                    for kv in answer.kvs} == expected

            # The watch saw every write once, in revision order, across the switch.
            for stream in (watch, across):
                events = await stream.events_until(lambda events: len(events) >= len(written))
                assert [(e.kv.key, e.kv.value, e.kv.mod_revision) for e in events] == written
                stream.cancel()

        # The keys live in group 3 now, and group 1 holds none.
        assert len(await group_records(cluster, 3, prefix)) == len(expected)
        assert await group_records(cluster, 1, prefix) == []
        state = await meta_state(cluster)
        assert state.shard_map.group_of(prefix + b"x") == 3 and state.moves == [] and not state.shard_map.moving
    cluster.run(scenario(), timeout=180)


def test_leases_follow_the_keys_and_old_revisions_read_as_compacted(cluster):
    prefix = b"/moving-leases/"

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            lease = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=3600))).ID
            first = (await client.kv.Put(PutRequest(key=prefix + b"a", value=b"1", lease=lease))).header.revision
            await client.kv.Put(PutRequest(key=prefix + b"b", value=b"2"))
            await moves.move(meta_members(cluster), prefix, 2)
            attached = await client.lease.LeaseTimeToLive(_time_to_live(lease))
            assert attached.keys == [prefix + b"a"]
            # The history before the move stayed behind: as etcd answers a compacted revision.
            with pytest.raises(Exception) as caught:
                await client.kv.Range(RangeRequest(key=prefix + b"a", revision=first))
            assert caught.value.details() == "etcdserver: mvcc: required revision has been compacted"
            # And a watch from there is cancelled as etcd cancels one from a compacted revision.
            watch = client.watch()
            await watch.create(key=prefix, range_end=prefix[:-1] + b"0", start_revision=first)
            cancelled = await watch.next()
            assert cancelled.canceled and cancelled.compact_revision > first and cancelled.cancel_reason == ""
            watch.cancel()
            await client.lease.LeaseRevoke(_revoke(lease))  # its keys go, in the group they live in now
            answer = await client.kv.Range(RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
            assert [kv.key for kv in answer.kvs] == [prefix + b"b"]
    cluster.run(scenario(), timeout=120)


def _time_to_live(lease: int):
    from tessera.api.rpc_pb2 import LeaseTimeToLiveRequest
    return LeaseTimeToLiveRequest(ID=lease, keys=True)


def _revoke(lease: int):
    from tessera.api.rpc_pb2 import LeaseRevokeRequest
    return LeaseRevokeRequest(ID=lease)


@pytest.mark.parametrize("prefix, group, error, message", [
    (b"/bad-group/", 9, moves.MoveError, "there is no data group 9 (groups: 1, 2, 3)"),
    (b"/bad-meta/", 0, moves.MoveError, "there is no data group 0 (groups: 1, 2, 3)"),
    (b"/registry/pods/", 2, moves.MoveError, "b'/registry/pods/' is on group 2 already"),
    (b"/registry/", 3, ShardMapError, "prefix b'/registry/' overlaps the range [b'/registry/events/', "
                                      "b'/registry/events0') of group 3"),
    (b"/registry/pods/ns/", 3, ShardMapError, "prefix b'/registry/pods/ns/' overlaps the range "
                                              "[b'/registry/pods/', b'/registry/pods0') of group 2"),
    (b"", 3, moves.MoveError, "the empty prefix is the default group's; give a non-empty prefix"),
])
def test_bad_input_gets_a_clear_error_and_changes_nothing(cluster, prefix, group, error, message):
    async def scenario():
        before = await meta_state(cluster)
        with pytest.raises(error) as caught:
            await moves.move(meta_members(cluster), prefix, group)
        assert str(caught.value) == message
        after = await meta_state(cluster)
        assert (after.shard_map, after.moves, after.shard_map_revision) == (
            before.shard_map, before.moves, before.shard_map_revision)
    cluster.run(scenario())


def test_a_move_into_an_unhealthy_group_is_refused(cluster):
    launcher = cluster.launcher

    async def scenario():
        before = await meta_state(cluster)
        with pytest.raises(moves.MoveError) as caught:
            await moves.move(meta_members(cluster), b"/to-unhealthy/", 2)
        assert str(caught.value).startswith("group 2 is not healthy (")
        after = await meta_state(cluster)
        assert (after.shard_map, after.moves) == (before.shard_map, before.moves)

    members = sorted(launcher.layout.groups[2])
    for member in members[:2]:  # no quorum left
        cluster.kill(2, member)
    try:
        cluster.run(scenario())
    finally:
        for member in members[:2]:
            cluster.restart(2, member)
        cluster.run(launcher.leader(2))


async def _stopped_at(cluster, prefix: bytes, target: int, phase_line: str):
    """Run a move and stop it (as a kill would) once it reports `phase_line`; the record left."""
    task = None

    def progress(line: str) -> None:
        if line.startswith(phase_line):
            task.cancel()

    task = asyncio.ensure_future(moves.move(meta_members(cluster), prefix, target, progress))
    with pytest.raises(asyncio.CancelledError):
        await task
    state = await meta_state(cluster)
    assert [(m.start, m.source, m.target) for m in state.moves] == [(prefix, 1, target)]
    return state.moves[0]


@pytest.mark.parametrize("phase_line, phase, outcome", [
    ("copied", MoveRecord.COPYING, "undone"),
    ("fenced", MoveRecord.FENCED, "undone"),
    ("switched", MoveRecord.SWITCHED, "finished"),
])
def test_a_mover_that_dies_is_recovered_never_left_half_done(cluster, phase_line, phase, outcome):
    prefix = b"/moving-dies-%s/" % phase_line.encode()
    target = 3 if phase == MoveRecord.SWITCHED else 2

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            before = await preload(client, prefix, 50)
            record = await _stopped_at(cluster, prefix, target, phase_line)
            assert record.phase == phase
            # Both groups hold the keys now; a lease lists each of its keys once.
            lease = next(kv.lease for kv in before.values() if kv.lease)
            attached = await client.lease.LeaseTimeToLive(_time_to_live(lease))
            assert list(attached.keys) == sorted(key for key, kv in before.items() if kv.lease == lease)
            # A move of an overlapping prefix is refused while this one is recorded.
            with pytest.raises(moves.MoveError) as caught:
                await moves.move(meta_members(cluster), prefix + b"inner/", 3)
            assert f"overlaps the move of {prefix!r} from group 1 to group {target}" in str(caught.value)
            if phase == MoveRecord.FENCED:  # held, never refused, while the fence stands
                held = asyncio.ensure_future(client.kv.Put(PutRequest(key=prefix + b"held", value=b"1")))
            recovered = await moves.recover(meta_members(cluster))
            assert [(r.start, text.split(":")[0]) for r, text in recovered] == [(prefix, outcome)]
            owner = target if outcome == "finished" else 1
            if phase == MoveRecord.FENCED:
                await held
                before[prefix + b"held"] = None
            state = await meta_state(cluster)
            assert state.moves == [] and not state.shard_map.moving
            assert state.shard_map.group_of(prefix + b"x") == owner
            answer = await client.kv.Range(RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
            assert sorted(kv.key for kv in answer.kvs) == sorted(before)
            for kv in answer.kvs:
                if before[kv.key] is not None:
                    assert kv == before[kv.key]
        other = 1 if owner != 1 else target
        assert await group_records(cluster, other, prefix) == []  # one copy left, where the map says
        assert len(await group_records(cluster, owner, prefix)) == len(before)
        # And the prefix moves again, once nothing is in progress.
        assert (await moves.move(meta_members(cluster), prefix, other)).target == other
    cluster.run(scenario(), timeout=180)


def test_a_move_of_many_pages_and_imports_in_flight_copies_every_record(cluster, monkeypatch):
    """Small pages and imports: the copy reads ahead and keeps several imports in flight, and
    every record arrives with its value, revisions, version and lease."""
    monkeypatch.setattr(moves, "COPY_FIRST_PAGE_KEYS", 7)
    monkeypatch.setattr(moves, "COPY_PAGE_BYTES", 7 * 22)  # then about 7 records (of some 22 bytes) a page
    monkeypatch.setattr(moves, "IMPORT_BATCH_BYTES", 300)
    monkeypatch.setattr(moves, "DROP_CHUNK_KEYS", 16)
    prefix = b"/moving-pages/"

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            before = await preload(client, prefix)
            outcome = await moves.move(meta_members(cluster), prefix, 2)
            assert (outcome.source, outcome.target, outcome.keys) == (1, 2, PRELOADED_KEYS)
            answer = await client.kv.Range(RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
            assert {kv.key: kv for kv in answer.kvs} == before
        assert len(await group_records(cluster, 2, prefix)) == PRELOADED_KEYS
        assert await group_records(cluster, 1, prefix) == []
    cluster.run(scenario(), timeout=180)


def test_a_move_with_a_rate_cap_copies_no_faster_than_it(cluster, monkeypatch):
    """`max_rate`: each import starts once the ones before it have had their time at the rate,
    so the copy takes at least its bytes over the rate, but for the last two imports (the round's
    last paced one, and its closing one, which is not paced)."""
    monkeypatch.setattr(moves, "IMPORT_BATCH_BYTES", 1000)
    prefix = b"/moving-capped/"

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            before = await preload(client, prefix)
            rate = 5000.0  # bytes a second: about 1.4 s for the preloaded keys' 7 kB
            outcome = await moves.move(meta_members(cluster), prefix, 2, max_rate=rate)
            assert outcome.keys == PRELOADED_KEYS
            assert outcome.copy_seconds >= (outcome.bytes - 2 * moves.IMPORT_BATCH_BYTES) / rate
            answer = await client.kv.Range(RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
            assert {kv.key: kv for kv in answer.kvs} == before
    cluster.run(scenario(), timeout=180)


def test_keys_deleted_and_written_while_the_prefix_moves_are_gone_and_there_after_it(cluster, monkeypatch):
    """Deletions during the copy reach the target (a catch-up round that finds fewer keys than it
    knows lists them), and so do the puts between them."""
    monkeypatch.setattr(moves, "COPY_FIRST_PAGE_KEYS", 7)
    monkeypatch.setattr(moves, "COPY_PAGE_KEYS_MAX", 7)
    prefix = b"/moving-deletes/"

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            expected = {key: (kv.value, kv.mod_revision) for key, kv in (await preload(client, prefix)).items()}
            done = asyncio.Event()

            async def churn():
                n = 0
                while not done.is_set() or n < 60:
                    doomed = prefix + b"k%04d" % (3 * n % PRELOADED_KEYS)
                    await client.kv.DeleteRange(DeleteRangeRequest(key=doomed))
                    expected.pop(doomed, None)
                    key, value = prefix + b"new%04d" % n, b"n%d" % n
                    expected[key] = (value, (await client.kv.Put(PutRequest(key=key, value=value))).header.revision)
                    n += 1

            churning = asyncio.ensure_future(churn())
            await moves.move(meta_members(cluster), prefix, 3)
            done.set()
            await churning
        assert {kv.key: (kv.value, kv.mod_revision) for kv in await group_records(cluster, 3, prefix)} == expected
        assert await group_records(cluster, 1, prefix) == []
    cluster.run(scenario(), timeout=180)


def test_the_move_command_and_the_list_of_keys_and_bytes(cluster):
    data_dir = str(cluster.launcher.data_dir)
    prefix = "/moving-cli/"

    async def fill():
        async with EtcdClient(cluster.endpoint) as client:
            await preload(client, prefix.encode(), 20)
    cluster.run(fill())

    def tessera(*args):
        return subprocess.run([sys.executable, "-m", "tessera.cli", *args, "--data-dir", data_dir],
                              capture_output=True, text=True, timeout=120)

    moved = tessera("shards", "move", prefix, "2")
    assert moved.returncode == 0, moved.stderr
    assert f"{prefix} -> group 2: 20 keys" in moved.stdout and "writes paused" in moved.stdout
    refused = tessera("shards", "move", prefix, "7")
    assert (refused.returncode, refused.stderr) == (1, "tessera shards move: there is no data group 7 "
                                                       "(groups: 1, 2, 3)\n")
    listed = tessera("shards", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"{prefix:40} 2" in listed.stdout
    assert "KEYS        IN USE" in listed.stdout
    nothing = tessera("shards", "move", "--recover")
    assert (nothing.returncode, nothing.stdout) == (0, "no move in progress\n")
    for bad_rate in ("-1", "fast", "inf"):  # argparse's usage error, and nothing moves
        refused = tessera("shards", "move", prefix, "3", "--max-rate", bad_rate)
        assert refused.returncode == 2 and f"argument --max-rate: {bad_rate!r} is not a rate in MB/s" in refused.stderr
    capped = tessera("shards", "move", prefix, "3", "--max-rate", "0.5")
    assert capped.returncode == 0 and f"{prefix} -> group 3: 20 keys" in capped.stdout, capped.stderr

    async def clean():
        async with EtcdClient(cluster.endpoint) as client:
            await client.kv.DeleteRange(DeleteRangeRequest(key=prefix.encode(), range_end=b"/moving-cli0"))
    cluster.run(clean())


def test_a_move_goes_on_when_the_leaders_of_both_groups_die_during_it(cluster):
    """Each step is retried through the elections: the move completes, nothing lost."""
    prefix = b"/moving-leaders-die/"
    launcher = cluster.launcher
    killed = []

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            before = await preload(client, prefix, 200)
            leaders = {group: await launcher.leader(group) for group in (1, 2)}

            def progress(line: str) -> None:
                if line.startswith("copied") and not killed:
                    for group, member in leaders.items():
                        launcher.kill(group, member)
                        killed.append((group, member))

            outcome = await moves.move(meta_members(cluster), prefix, 2, progress)
            assert killed and (outcome.source, outcome.target, outcome.keys) == (1, 2, 200)
            answer = await client.kv.Range(RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"))
            assert {kv.key: kv for kv in answer.kvs} == before
        assert await group_records(cluster, 1, prefix) == []

    try:
        cluster.run(scenario(), timeout=180)
    finally:
        for group, member in killed:
            cluster.restart(group, member)
        for group, _ in killed:
            cluster.run(launcher.leader(group))


def test_a_watch_from_before_the_move_resumes_when_its_stream_to_the_new_group_breaks(cluster):
    """Its part in the new group starts below that group's floor for the keys: it resumes at the
    floor, not cancelled, and again when its stream there breaks and it is made anew."""
    prefix = b"/moving-watch-resumes/"
    launcher = cluster.launcher
    killed = []

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            await preload(client, prefix, 20)
            start = (await client.kv.Put(PutRequest(key=prefix + b"w0", value=b"0"))).header.revision
            watch = client.watch()
            await watch.create(key=prefix, range_end=prefix[:-1] + b"0", start_revision=start)
            written = [(prefix + b"w0", b"0", start)]

            async def write(n: int) -> None:
                answer = await client.kv.Put(PutRequest(key=prefix + b"w%d" % n, value=b"%d" % n))
                written.append((prefix + b"w%d" % n, b"%d" % n, answer.header.revision))

            for n in (1, 2):
                await write(n)
            # The new group ahead of the old one: its floor for the keys is above what the watch
            # has seen, so its part there starts below the floor.
            await client.kv.Put(PutRequest(key=b"/registry/events/moving-watch-resumes", value=b"x"))
            await moves.move(meta_members(cluster), prefix, 3)
            leader = await launcher.leader(3)
            launcher.kill(3, leader)
            killed.append(leader)
            for n in (3, 4, 5):
                await write(n)
            events = await watch.events_until(lambda events: len(events) >= len(written), timeout=60)
            assert [(e.kv.key, e.kv.value, e.kv.mod_revision) for e in events] == written
            watch.cancel()

    try:
        cluster.run(scenario(), timeout=180)
    finally:
        for member in killed:
            cluster.restart(3, member)
        cluster.run(launcher.leader(3))
