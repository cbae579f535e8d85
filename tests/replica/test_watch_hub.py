"""The watch hub with a real store: a client that stops reading falls back to history, losing nothing."""

import asyncio

from shards.mvcc import MvccStore, Proposal
from shards.watch import WatchHub
from tessera.api.kv_pb2 import Event
from tessera.api.rpc_pb2 import DeleteRangeRequest, PutRequest, WatchCreateRequest, WatchRequest, WatchResponse


def test_a_stream_that_falls_behind_catches_up_from_history_exactly_once(tmp_path):
    async def scenario():
        store = MvccStore.open(tmp_path)
        hub = WatchHub(store, stream_responses_max=3)
        hub.start()
        stream = hub.open_stream()
        stream.handle(WatchRequest(create_request=dict(key=b"k", range_end=b"l")))
        await stream.outbox.get()  # created
        for raft_index in range(1, 201):  # nobody reads while 200 batches are published
            result = store.apply([Proposal(raft_index, 0, [PutRequest(key=b"k%03d" % raft_index)])])
            hub.publish(result.events)
        assert stream.outbox.qsize() <= 4  # bounded: the rest waits in the store's history
        revisions = []
        while len(revisions) < 200:
            response = WatchResponse.FromString(await asyncio.wait_for(stream.outbox.get(), 5))
            revisions += [event.kv.mod_revision for event in response.events]
            if stream.outbox.empty():
                hub.wake_catch_up()  # as the replica does once its client has read
        assert revisions == list(range(2, 202))
        assert all(watcher.synced for watcher in stream.watchers.values())
        hub.stop()
        store.close()

    asyncio.run(scenario())


def test_events_leave_encoded_as_protobuf_encodes_them(tmp_path):
    """Each watcher gets the events it wants, with or without their previous values, in bytes
    that are protobuf's own encoding of the WatchResponse."""
    async def scenario():
        store = MvccStore.open(tmp_path)
        hub = WatchHub(store)
        stream = hub.open_stream()
        stream.handle(WatchRequest(create_request=dict(key=b"k", range_end=b"l", prev_kv=True)))
        stream.handle(WatchRequest(create_request=dict(key=b"k2", filters=[WatchCreateRequest.NOPUT])))
        stream.handle(WatchRequest(create_request=dict(key=b"k1", watch_id=7)))
        created = [WatchResponse.FromString(stream.outbox.get_nowait()) for _ in range(3)]
        assert [(response.watch_id, response.created) for response in created] == [(0, True), (1, True), (7, True)]
        batches = [
            [PutRequest(key=b"k1", value=b"a"), PutRequest(key=b"k2", value=b"b")],
            [PutRequest(key=b"k1", value=b"c")],
            [DeleteRangeRequest(key=b"k2"), PutRequest(key=b"x", value=b"d")],
        ]
        published = []
        for raft_index, requests in enumerate(batches, start=1):
            result = store.apply([Proposal(raft_index, 0, requests)])
            hub.publish(result.events)
            published.append(result.events)
        sent = []
        while not stream.outbox.empty():
            sent.append(stream.outbox.get_nowait())
        expected = []
        for events in published:
            for watch_id, key, range_end, prev_kv, unwanted in (
                    (0, b"k", b"l", True, ()), (1, b"k2", b"", False, (Event.PUT,)), (7, b"k1", b"", False, ())):
                response = WatchResponse(watch_id=watch_id)
                for event in events:
                    in_range = key <= event.key < range_end if range_end else event.key == key
                    if in_range and event.type not in unwanted:
                        added = response.events.add(type=event.type)
                        added.kv.MergeFromString(event.kv)
                        if prev_kv and event.prev_kv is not None:
                            added.prev_kv.MergeFromString(event.prev_kv)
                if response.events:
                    response.header.revision = events[-1].revision
                    expected.append(response.SerializeToString())
        assert sent == expected
        assert [len(WatchResponse.FromString(data).events) for data in sent] == [2, 1, 1, 1, 1, 1]
        store.close()

    asyncio.run(scenario())
