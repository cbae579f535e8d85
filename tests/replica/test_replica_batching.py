"""A leader keeps one batch in flight: what queues meanwhile goes out as the next batch, in one WAL
fsync, the clients' writes first and a move's imports a bounded share per batch after them; under
load, a short batch waits for the clients the committed round answers; a leader that steps down
drops what it had queued."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys

import pytest

from replica_cluster import ReplicaGroup, ShardClient, wait_for_leader

from shards.fault_control import ENVIRONMENT_VARIABLE, write_faults
from shards.raft_driver import BATCH_ENTRIES_TARGET, BULK_BYTES_PER_BATCH
from tessera.api.internal_pb2 import ImportKeysRequest
from tessera.api.kv_pb2 import KeyValue
from tessera.api.rpc_pb2 import PutRequest, RangeRequest

WAVES = 10
WAVE_WRITES = 20
BULK_IMPORTS = 4
IMPORT_VALUE_BYTES = 700_000  # one import per batch: two would pass BULK_BYTES_PER_BATCH


async def fsyncs(client: ShardClient) -> int:
    return (await client.request(status={})).status.wal_fsyncs


@contextlib.asynccontextmanager
async def a_batch_held_uncommitted(group: ReplicaGroup, control: str):
    """(client of the leader, the held put's answer to come, the leader's WAL fsyncs before it):
    the leader's appends to its followers are dropped until the block ends, so its first batch,
    one put, is durable there but not committed, and what is sent meanwhile queues."""
    leader = await wait_for_leader(group)
    followers = [member for member in group.processes if member != leader]
    async with ShardClient(group.api_address(leader)) as client:
        write_faults(control, blocked=[(group.peer_address(leader), group.peer_address(f)) for f in followers])
        await asyncio.sleep(0.5)  # the replicas re-read the control file every 50 ms
        before = await fsyncs(client)
        first = asyncio.ensure_future(client.request(put=PutRequest(key=b"first", value=b"v")))
        while await fsyncs(client) == before:  # the first batch is durable here, not on a quorum
            await asyncio.sleep(0.01)
        yield client, first, before


def run_with_faults(tmp_path, scenario, *extra_arguments: str) -> None:
    control = str(tmp_path / "faults.json")
    write_faults(control)
    # A long election timeout: the followers do not campaign while the leader's appends are dropped.
    group = ReplicaGroup(tmp_path, extra_arguments=["--election-timeout", "3000", *extra_arguments],
                         environment={ENVIRONMENT_VARIABLE: control})
    group.start_all()
    try:
        asyncio.run(scenario(group, control))
    finally:
        group.stop_all()


def test_writes_queued_while_a_batch_is_uncommitted_are_proposed_as_one_batch(tmp_path):
    async def scenario(group: ReplicaGroup, control: str):
        async with a_batch_held_uncommitted(group, control) as (client, first, before):
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

    run_with_faults(tmp_path, scenario)


def test_a_moves_imports_queue_behind_the_clients_writes_one_share_per_batch(tmp_path):
    """Imports queued before a client's put (a move into this group, under client load) do not
    hold it back: the next batch takes the put first and one import, each later batch the next import."""
    assert IMPORT_VALUE_BYTES < BULK_BYTES_PER_BATCH < 2 * IMPORT_VALUE_BYTES

    def an_import(n: int) -> ImportKeysRequest:
        return ImportKeysRequest(key=b"/moving/", range_end=b"/moving0", puts=[KeyValue(
            key=b"/moving/%d" % n, value=b"v" * IMPORT_VALUE_BYTES, create_revision=1, mod_revision=1, version=1)])

    async def scenario(group: ReplicaGroup, control: str):
        async with a_batch_held_uncommitted(group, control) as (client, first, before):
            answered: list[str] = []

            def send(name: str, **request):
                task = asyncio.ensure_future(client.request(timeout=20, **request))
                task.add_done_callback(lambda _: answered.append(name))
                return task

            imports = [send(f"import {n}", import_keys=an_import(n)) for n in range(BULK_IMPORTS)]
            await asyncio.sleep(0.2)  # the imports queue first
            put = send("put", put=PutRequest(key=b"late", value=b"v"))
            await asyncio.sleep(0.2)
            write_faults(control)
            answers = await asyncio.gather(first, put, *imports)
            assert [answer.WhichOneof("response") for answer in answers] == ["put", "put"] + ["imported"] * BULK_IMPORTS
            # The put shares its batch with the first import at most: it is answered before the rest.
            assert answered.index("put") < answered.index("import 1")
            # One batch for the put and the first import, then one per import.
            assert await fsyncs(client) == before + 1 + BULK_IMPORTS

    run_with_faults(tmp_path, scenario)


def test_writes_queued_on_a_leader_that_steps_down_are_answered_leader_changed_and_never_applied(tmp_path):
    """Queued behind an uncommitted batch when its leader is replaced, a write is answered "leader
    changed" and dropped: the old leader does not forward it to the new one later (a mover would
    have sent its import again by then, and the stale one would land after newer steps)."""
    async def scenario(group: ReplicaGroup, control: str):
        async with a_batch_held_uncommitted(group, control) as (client, first, _):
            old_leader = (await client.request(status={})).status.member_id
            stale = asyncio.ensure_future(client.request(timeout=30, put=PutRequest(key=b"stale", value=b"v")))
            # The followers hear nothing from the leader: one of them is elected, and the old
            # leader, asked for its vote, steps down.
            answers = await asyncio.gather(first, stale)
            assert [(a.error.code, a.error.message) for a in answers] == [("UNAVAILABLE", "etcdserver: leader changed")] * 2
            write_faults(control)
            new_leader = await wait_for_leader(group)
            assert new_leader != old_leader
            async with ShardClient(group.api_address(new_leader)) as fresh:
                await fresh.request(put=PutRequest(key=b"after", value=b"v"))  # the old leader has caught up since
                while (await client.request(status={})).status.applied_index < \
                        (await fresh.request(status={})).status.applied_index:
                    await asyncio.sleep(0.05)
                found = await fresh.request(range=RangeRequest(key=b"stale"))
                assert list(found.range.kvs) == []

    run_with_faults(tmp_path, scenario)


LONG_WINDOW = ["--batch-window", "60000"]  # a held batch goes out only when its writes have come


async def queued_behind_the_held_batch(client: ShardClient, count: int) -> list[asyncio.Future]:
    """`count` puts, queued on the leader: a status asked after them on the same stream is answered
    once they are read."""
    puts = [asyncio.ensure_future(client.request(put=PutRequest(key=b"q%03d" % i, value=b"v"))) for i in range(count)]
    await client.request(status={})
    return puts


def test_under_load_a_short_batch_waits_for_as_many_writes_as_the_leader_held(tmp_path):
    """A round commits with 40 writes queued behind it: 41 unanswered on the leader, so as many clients
    at least. The 40 wait for a 41st write, and the 41 go out as one batch: one WAL fsync."""
    async def scenario(group: ReplicaGroup, control: str):
        async with a_batch_held_uncommitted(group, control) as (client, first, before):
            queued = await queued_behind_the_held_batch(client, 40)
            write_faults(control)
            await first  # committed, and the next batch held
            assert not any(put.done() for put in queued)
            assert await fsyncs(client) == before + 1
            last = await client.request(put=PutRequest(key=b"last", value=b"v"))
            answers = [await put for put in queued] + [last]
            assert all(answer.WhichOneof("response") == "put" for answer in answers), answers[0]
            assert await fsyncs(client) == before + 2

    run_with_faults(tmp_path, scenario, *LONG_WINDOW)


def test_a_round_that_commits_with_nothing_queued_holds_the_writes_that_come_next(tmp_path):
    """A round of 41 commits with no write queued behind it: its clients come back to the leader after
    their answers, so the first 5 writes that arrive wait for 36 more, and the 41 go out in one fsync."""
    async def scenario(group: ReplicaGroup, control: str):
        async with a_batch_held_uncommitted(group, control) as (client, first, before):
            queued = await queued_behind_the_held_batch(client, 40)
            write_faults(control)
            await first
            last = await client.request(put=PutRequest(key=b"last", value=b"v"))  # the 41st: the 41 go out
            round_ = [await put for put in queued] + [last]
            assert all(answer.WhichOneof("response") == "put" for answer in round_), round_[0]
            assert await fsyncs(client) == before + 2
            early = await queued_behind_the_held_batch(client, 5)
            assert not any(put.done() for put in early)
            late = [asyncio.ensure_future(client.request(put=PutRequest(key=b"late%02d" % i, value=b"v")))
                    for i in range(36)]
            answers = await asyncio.gather(*early, *late)
            assert all(answer.WhichOneof("response") == "put" for answer in answers), answers[0]
            assert await fsyncs(client) == before + 3

    run_with_faults(tmp_path, scenario, *LONG_WINDOW)


def test_a_few_clients_writes_are_never_held(tmp_path):
    """Fewer than BATCH_ENTRIES_TARGET / 2 writes unanswered when a round commits: the next batch goes
    out at once, however long the window."""
    async def scenario(group: ReplicaGroup, control: str):
        async with a_batch_held_uncommitted(group, control) as (client, first, before):
            queued = await queued_behind_the_held_batch(client, BATCH_ENTRIES_TARGET // 2 - 2)
            write_faults(control)
            answers = await asyncio.wait_for(asyncio.gather(first, *queued), timeout=10)
            assert all(answer.WhichOneof("response") == "put" for answer in answers), answers[0]
            assert await fsyncs(client) == before + 2

    run_with_faults(tmp_path, scenario, *LONG_WINDOW)


@pytest.mark.parametrize("bad_window", ["-1", "soon", "inf", "nan"])
def test_a_bad_batch_window_is_a_usage_error(tmp_path, bad_window):
    """argparse's answer, exit 2, before the replica opens anything."""
    refused = subprocess.run([sys.executable, "-m", "tessera.cli", "replica", "--group", "1", "--member", "1",
                              "--data-dir", str(tmp_path / "replica"), "--batch-window", bad_window],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert f"argument --batch-window: {bad_window!r} is not a time in milliseconds" in refused.stderr
    assert not (tmp_path / "replica").exists()
