"""`tessera group add` and `tessera shards split`, run as an operator runs them, on clusters of
this module's own: a new group joins a running cluster, takes a prefix with its keys and is
there again after the cluster restarts; a split under a light write load, after which every key
reads as written and new writes land in the group the map names; bad input refused with
nothing changed (no map change, no move, no group made).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import sys

import pytest
from cluster import ClusterThread
from etcd_client import EtcdClient
from test_operator_cli import tessera
from test_shards_move import meta_members, meta_state

from router import moves
from tessera.api.rpc_pb2 import PutRequest, RangeRequest
from tessera.launcher import Layout

PODS_END = b"/registry/pods0"  # group 2 holds [/registry/pods/, /registry/pods0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ClusterThread(tmp_path_factory.mktemp("group-split")) as cluster:
        yield cluster


def records(kvs) -> dict[bytes, tuple]:
    return {kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version) for kv in kvs}


async def read_range(endpoint: str, key: bytes, range_end: bytes) -> dict[bytes, tuple]:
    async with EtcdClient(endpoint) as client:
        return records((await client.kv.Range(RangeRequest(key=key, range_end=range_end), timeout=10)).kvs)


async def held_by(cluster, group: int, key: bytes, range_end: bytes) -> dict[bytes, tuple]:
    """What a group itself holds in a range (its leader's answer, whatever the map says)."""
    launcher = cluster.launcher
    answer = await launcher.request(group, await launcher.leader(group),
                                    range=RangeRequest(key=key, range_end=range_end))
    return records(answer.range.kvs)


def test_an_added_group_takes_a_prefix_with_its_keys_and_is_back_after_a_restart(tmp_path):
    prefix, prefix_end = b"/added-group/", b"/added-group0"
    with ClusterThread(tmp_path) as cluster:
        added = tessera(cluster, "group", "add")
        assert added.returncode == 0, added.stderr
        layout = Layout.load(cluster.launcher.layout_path)
        assert sorted(layout.groups[4]) == [1, 2, 3]
        listed = ", ".join(f"member {member} (peer {peer}, API {api})"
                           for member, (peer, api) in sorted(layout.groups[4].items()))
        assert re.match(f"group 4 added: {re.escape(listed)}; member [123] leads\n", added.stdout), added.stdout
        assert "tessera shards move PREFIX 4" in added.stdout
        assert all(cluster.launcher.pid(4, member) for member in (1, 2, 3))  # the launcher's children
        pids = [cluster.launcher.pid(4, member) for member in (1, 2, 3)]

        async def write():
            async with EtcdClient(cluster.endpoint) as client:
                for n in range(40):
                    await client.kv.Put(PutRequest(key=prefix + b"k%02d" % n, value=b"v%d" % n), timeout=10)
                for n in range(0, 40, 3):  # a few versions
                    await client.kv.Put(PutRequest(key=prefix + b"k%02d" % n, value=b"w%d" % n), timeout=10)
        cluster.run(write())
        before = cluster.run(read_range(cluster.endpoint, prefix, prefix_end))
        assert len(before) == 40

        moved = tessera(cluster, "shards", "move", prefix.decode(), "4")
        assert moved.returncode == 0, moved.stderr
        assert f"{prefix.decode()} -> group 4: 40 keys" in moved.stdout
        assert cluster.run(read_range(cluster.endpoint, prefix, prefix_end)) == before
        assert cluster.run(held_by(cluster, 4, prefix, prefix_end)) == before
        assert cluster.run(held_by(cluster, 1, prefix, prefix_end)) == {}
        shards = tessera(cluster, "shards", "list")
        assert f"{prefix.decode():40} 4" in shards.stdout
        assert any(line.split()[:1] == ["4"] and "healthy" in line.split() and "40" in line.split()
                   for line in shards.stdout.splitlines()), shards.stdout
    for pid in pids:  # stopped with the cluster
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)

    with ClusterThread(tmp_path) as cluster:  # what `tessera up` does again on the same data dir
        assert cluster.run(read_range(cluster.endpoint, prefix, prefix_end)) == before
        assert cluster.run(held_by(cluster, 4, prefix, prefix_end)) == before

        async def write_again():
            async with EtcdClient(cluster.endpoint) as client:
                return (await client.kv.Put(PutRequest(key=prefix + b"after", value=b"x"), timeout=10)).header.revision
        revision = cluster.run(write_again())
        assert revision > max(mod for _, _, mod, _ in before.values())
        assert cluster.run(held_by(cluster, 4, prefix + b"after", b""))[prefix + b"after"][2] == revision
        shards = tessera(cluster, "shards", "list")
        assert f"{prefix.decode():40} 4" in shards.stdout


def test_a_split_under_writes_keeps_every_key_and_new_writes_land_where_the_map_says(cluster):
    prefix = b"/registry/pods/split/"
    cut = prefix + b"k060"
    keys = [prefix + b"k%03d" % n for n in range(120)]

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            for key in keys:
                await client.kv.Put(PutRequest(key=key, value=b"first"), timeout=10)
            written: list[tuple[bytes, bytes, int]] = []
            stop = asyncio.Event()

            async def writer():  # a light load on both sides of the cut
                rng, n = random.Random(18), 0
                while not stop.is_set():
                    key, value = rng.choice(keys), b"live%d" % n
                    answer = await client.kv.Put(PutRequest(key=key, value=value), timeout=10)
                    written.append((key, value, answer.header.revision))
                    n += 1
                    await asyncio.sleep(0.01)

            before = await read_range(cluster.endpoint, prefix, PODS_END)
            writing = asyncio.ensure_future(writer())
            split = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tessera.cli", "shards", "split", "2", cut.decode(),
                "--data-dir", str(cluster.launcher.data_dir),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await split.communicate()
            stop.set()
            await writing
            assert split.returncode == 0, err.decode()
            return before, written, out.decode()

    before, written, out = cluster.run(scenario(), timeout=120)
    assert out.startswith("group 4 added: "), out
    assert f"[{cut!r}, {PODS_END!r}) -> group 4: " in out and "moved from group 2" in out
    assert written, "no write went in during the split"
    revisions = [revision for _, _, revision in written]
    assert revisions == sorted(set(revisions))  # rising across the switch

    expected = dict(before)
    for key, value, revision in written:
        _, created, _, version = expected[key]
        expected[key] = (value, created, revision, version + 1)
    assert cluster.run(read_range(cluster.endpoint, prefix, PODS_END)) == expected
    assert cluster.run(held_by(cluster, 2, prefix, PODS_END)) == {k: v for k, v in expected.items() if k < cut}
    assert cluster.run(held_by(cluster, 4, prefix, PODS_END)) == {k: v for k, v in expected.items() if k >= cut}

    async def write_after():
        async with EtcdClient(cluster.endpoint) as client:
            return {key: (await client.kv.Put(PutRequest(key=key, value=b"after"), timeout=10)).header.revision
                    for key in (prefix + b"k000", cut, b"/registry/pods/zzz")}
    after = cluster.run(write_after())
    for key, group in ((prefix + b"k000", 2), (cut, 4), (b"/registry/pods/zzz", 4)):
        assert cluster.run(held_by(cluster, group, key, b""))[key][2] == after[key], (key, group)
    state = cluster.run(meta_state(cluster))
    assert (cut, PODS_END, 4) in state.shard_map.ranges and state.moves == []
    shards = tessera(cluster, "shards", "list")
    assert f"{f'[{cut!r}, {PODS_END!r})':40} 4" in shards.stdout


def test_a_split_of_the_default_groups_last_stretch_moves_everything_to_the_end_of_the_keyspace(cluster):
    cut = b"/zz-split"
    keys = [cut, cut + b"/a", b"\xff\xfe"]

    async def write(value: bytes) -> dict[bytes, tuple]:
        async with EtcdClient(cluster.endpoint) as client:
            for key in keys:
                await client.kv.Put(PutRequest(key=key, value=value), timeout=10)
        return await read_range(cluster.endpoint, cut, b"\0")

    before = cluster.run(write(b"1"))
    outcome = cluster.run(moves.split(meta_members(cluster), 1, cut, 3))
    assert (outcome.start, outcome.end, outcome.source, outcome.target, outcome.keys) == (cut, b"", 1, 3, 3)
    assert cluster.run(read_range(cluster.endpoint, cut, b"\0")) == before
    assert cluster.run(held_by(cluster, 1, cut, b"\0")) == {}
    after = cluster.run(write(b"2"))
    assert cluster.run(held_by(cluster, 3, cut, b"\0")) == after and len(after) == 3
    assert cluster.run(held_by(cluster, 1, b"/zz", cut)) == {}  # below the cut nothing moved, nothing written


def _unchanged(cluster, run) -> str:
    """Run a command that must be refused; the meta records and the layout must not change.
    Its error output."""
    before = cluster.run(meta_state(cluster))
    layout = Layout.load(cluster.launcher.layout_path).groups
    refused = run()
    after = cluster.run(meta_state(cluster))
    assert (after.shard_map, after.moves, sorted(after.groups)) == (before.shard_map, before.moves,
                                                                     sorted(before.groups))
    assert Layout.load(cluster.launcher.layout_path).groups == layout
    assert refused.stdout == "", refused.stdout
    return refused.returncode, refused.stderr


def data_groups(cluster) -> str:
    return ", ".join(str(group) for group in sorted(cluster.run(meta_state(cluster)).groups) if group)


def test_bad_splits_and_group_adds_are_refused_and_change_nothing(cluster):
    groups = data_groups(cluster)
    for args, message in [
        (("9", "/a", "--to", "3"), f"there is no data group 9 (groups: {groups})"),
        (("0", "/a", "--to", "3"), f"there is no data group 0 (groups: {groups})"),
        (("2", "/registry/pods/a", "--to", "9"), f"there is no data group 9 (groups: {groups})"),
        (("2", "/registry/pods/a", "--to", "2"), "b'/registry/pods/a' is on group 2 already"),
        (("2", "/a", "--to", "3"), "b'/a' is not in a range of group 2: [b'', b'/registry/events/') is group 1's"),
        (("2", "/a"), "b'/a' is not in a range of group 2: [b'', b'/registry/events/') is group 1's"),
        (("2", "", "--to", "3"), "give the key to split at: the empty key begins every range"),
    ]:
        code, err = _unchanged(cluster, lambda: tessera(cluster, "shards", "split", *args))
        assert (code, err) == (1, f"tessera shards split: {message}\n"), args

    for args, message in [(("2",), "group 2 exists already"),
                          (("0",), "group ids of data groups are above 0; 0 is not")]:
        code, err = _unchanged(cluster, lambda: tessera(cluster, "group", "add", *args))
        assert (code, err) == (1, f"tessera group add: {message}\n"), args
    code, err = _unchanged(cluster, lambda: tessera(cluster, "group", "add", "--meta", "1=127.0.0.1:1"))
    assert code == 2 and "give its --data-dir, not --meta" in err


def test_a_split_that_overlaps_a_move_in_progress_is_refused(cluster):
    prefix = b"/busy/"  # group 1's, as is [b"", /registry/events/) around it

    async def stopped_move():
        async with EtcdClient(cluster.endpoint) as client:
            await client.kv.Put(PutRequest(key=prefix + b"a", value=b"1"), timeout=10)
        task = None

        def progress(line: str) -> None:
            if line.startswith("copied"):
                task.cancel()  # leaves what a killed mover leaves

        task = asyncio.ensure_future(moves.move(meta_members(cluster), prefix, 3, progress))
        with pytest.raises(asyncio.CancelledError):
            await task

    cluster.run(stopped_move())
    try:
        for args in (("1", "/b", "--to", "3"), ("1", "/b")):  # without --to: no group is made for it
            code, err = _unchanged(cluster, lambda: tessera(cluster, "shards", "split", *args))
            assert code == 1 and err.startswith(
                f"tessera shards split: b'/b' overlaps the move of {prefix!r} from group 1 to group 3"), err
    finally:
        cluster.run(moves.recover(meta_members(cluster)))
