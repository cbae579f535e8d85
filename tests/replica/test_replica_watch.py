"""Watches on a real replica group: etcd's Watch protocol, history then live, exactly once."""

import asyncio

from replica_cluster import ReplicaGroup, ShardClient, WatchClient, wait_for_leader

from tessera.api.kv_pb2 import Event
from tessera.api.rpc_pb2 import CompactionRequest, DeleteRangeRequest, PutRequest, WatchCreateRequest


async def collect(watch, count, timeout=10.0):
    """(revision, type, key, value, prev value) of the next `count` events, and the responses."""
    events, responses = [], []
    while len(events) < count:
        response = await watch.next(timeout)
        responses.append(response)
        for event in response.events:
            events.append((event.kv.mod_revision, event.type, event.kv.key, event.kv.value,
                           event.prev_kv.value if event.HasField("prev_kv") else None))
    return events, responses


def test_live_events_with_prev_kv_filters_and_one_response_per_revision(group):
    async def scenario():
        leader = await wait_for_leader(group)
        async with ShardClient(group.api_address(leader)) as client, \
                WatchClient(group.api_address(leader)) as watch, \
                WatchClient(group.api_address(leader)) as puts_only:
            await watch.send(create_request=dict(key=b"w/", range_end=b"w0", prev_kv=True))
            created = await watch.next()
            assert created.created and created.watch_id == 0 and created.header.revision == 1
            await puts_only.send(create_request=dict(key=b"w/", range_end=b"w0",
                                                     filters=[WatchCreateRequest.NODELETE], watch_id=7))
            assert (await puts_only.next()).watch_id == 7
            await client.request(put=PutRequest(key=b"w/a", value=b"1"))
            await client.request(put=PutRequest(key=b"outside", value=b"x"))
            await client.request(put=PutRequest(key=b"w/a", value=b"2"))
            await client.request(put=PutRequest(key=b"w/b", value=b"3"))
            await client.request(delete_range=DeleteRangeRequest(key=b"w/", range_end=b"w0"))
            events, responses = await collect(watch, 5)
            assert events == [
                (2, Event.PUT, b"w/a", b"1", None),
                (4, Event.PUT, b"w/a", b"2", b"1"),
                (5, Event.PUT, b"w/b", b"3", None),
                (6, Event.DELETE, b"w/a", b"", b"2"),
                (6, Event.DELETE, b"w/b", b"", b"3"),
            ]
            deletes = [r for r in responses if any(e.type == Event.DELETE for e in r.events)]
            assert len(deletes) == 1 and len(deletes[0].events) == 2  # one revision, one response
            put_events, _ = await collect(puts_only, 3)
            assert [e[:3] for e in put_events] == [(2, 0, b"w/a"), (4, 0, b"w/a"), (5, 0, b"w/b")]
            await watch.send(cancel_request=dict(watch_id=0))
            assert (await watch.next()).canceled

    asyncio.run(scenario())


def test_a_watch_from_the_past_replays_history_then_goes_live_exactly_once(group):
    async def scenario():
        leader = await wait_for_leader(group)
        async with ShardClient(group.api_address(leader)) as client:
            await asyncio.gather(*[
                client.request(put=PutRequest(key=b"k%04d" % i, value=b"v")) for i in range(1500)
            ])

            async def keep_writing():
                for i in range(1500, 2000):
                    await client.request(put=PutRequest(key=b"k%04d" % i, value=b"v"))

            writer = asyncio.get_running_loop().create_task(keep_writing())
            async with WatchClient(group.api_address(leader)) as watch:
                await watch.send(create_request=dict(key=b"k", range_end=b"l", start_revision=2))
                assert (await watch.next()).created
                events, _ = await collect(watch, 2000)
            await writer
        revisions = [event[0] for event in events]
        assert revisions == list(range(2, 2002))  # every revision, in order, once

    asyncio.run(scenario())


def test_a_watch_from_a_compacted_revision_is_canceled_with_the_compact_revision(group):
    async def scenario():
        leader = await wait_for_leader(group)
        async with ShardClient(group.api_address(leader)) as client:
            for i in range(5):
                await client.request(put=PutRequest(key=b"k", value=b"%d" % i))
            await client.request(compaction=CompactionRequest(revision=4))
        async with WatchClient(group.api_address(leader)) as watch:
            await watch.send(create_request=dict(key=b"k", start_revision=2))
            assert (await watch.next()).created
            canceled = await watch.next()
            assert canceled.canceled and canceled.compact_revision == 4
            assert canceled.cancel_reason == ""  # etcd leaves it empty: the compact revision says why
            await watch.send(create_request=dict(key=b"k", start_revision=-1))
            refused = await watch.next()
            assert refused.created and refused.canceled
            await watch.send(create_request=dict(key=b"k", watch_id=5))
            await watch.next()
            await watch.send(create_request=dict(key=b"k", watch_id=5))
            duplicate = await watch.next()
            assert duplicate.canceled and "duplicate watch ID" in duplicate.cancel_reason

    asyncio.run(scenario())


def test_a_progress_response_promises_every_earlier_event_was_sent(group):
    async def scenario():
        leader = await wait_for_leader(group)
        async with ShardClient(group.api_address(leader)) as client:
            for i in range(300):
                await client.request(put=PutRequest(key=b"p%03d" % i, value=b"v"))
            async with WatchClient(group.api_address(leader)) as watch:
                await watch.send(create_request=dict(key=b"p", range_end=b"q", start_revision=2))
                await watch.send(progress_request={})
                seen, progress = [], None
                while progress is None:
                    response = await watch.next()
                    if response.watch_id == -1:
                        progress = response.header.revision
                    seen += [event.kv.mod_revision for event in response.events]
                assert progress >= 301 and seen == list(range(2, 302))

    asyncio.run(scenario())


def test_a_follower_watch_sees_every_event_once_across_a_leader_change(group):
    async def scenario():
        leader = await wait_for_leader(group)
        follower = next(member for member in group.processes if member != leader)
        acknowledged = []
        async with WatchClient(group.api_address(follower)) as watch:
            await watch.send(create_request=dict(key=b"x", range_end=b"y"))
            assert (await watch.next()).created
            async with ShardClient(group.api_address(leader)) as client:
                for i in range(100):
                    answer = await client.request(put=PutRequest(key=b"x%03d" % i, value=b"v"))
                    acknowledged.append(answer.put.header.revision)
            group.kill(leader)
            new_leader = await wait_for_leader(group, list(group.processes))
            async with ShardClient(group.api_address(new_leader)) as client:
                for i in range(100, 200):
                    answer = await client.request(put=PutRequest(key=b"x%03d" % i, value=b"v"))
                    acknowledged.append(answer.put.header.revision)
            events, _ = await collect(watch, 200, timeout=15)
        keys = [event[2] for event in events]
        assert keys == [b"x%03d" % i for i in range(200)]  # each once, in order
        assert [event[0] for event in events] == acknowledged

    asyncio.run(scenario())


def test_progress_notify_watchers_hear_the_revision_when_idle(tmp_path):
    group = ReplicaGroup(tmp_path, extra_arguments=["--watch-progress-notify-interval", "0.2"])
    group.start_all()
    try:
        async def scenario():
            leader = await wait_for_leader(group)
            async with ShardClient(group.api_address(leader)) as client, \
                    WatchClient(group.api_address(leader)) as watch:
                await watch.send(create_request=dict(key=b"n", progress_notify=True))
                assert (await watch.next()).created
                await client.request(put=PutRequest(key=b"other", value=b"v"))
                notices = [await watch.next(timeout=5)]
                while notices[-1].header.revision < 2:  # one may have come before the put applied
                    notices.append(await watch.next(timeout=5))
                notices.append(await watch.next(timeout=5))  # and they keep coming while idle
                assert all(n.watch_id == 0 and not n.events for n in notices)
                assert notices[-1].header.revision == 2

        asyncio.run(scenario())
    finally:
        group.stop_all()
