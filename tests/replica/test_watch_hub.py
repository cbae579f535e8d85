"""The watch hub with a real store: a client that stops reading falls back to history, losing nothing."""

import asyncio

from shards.mvcc import MvccStore, Proposal
from shards.watch import WatchHub
from tessera.api.rpc_pb2 import PutRequest, WatchRequest


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
            response = await asyncio.wait_for(stream.outbox.get(), 5)
            revisions += [event.kv.mod_revision for event in response.events]
            if stream.outbox.empty():
                hub.wake_catch_up()  # as the replica does once its client has read
        assert revisions == list(range(2, 202))
        assert all(watcher.synced for watcher in stream.watchers.values())
        hub.stop()
        store.close()

    asyncio.run(scenario())
