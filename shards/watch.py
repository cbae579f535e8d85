"""Watches on a replica's applied history, in etcd's Watch protocol.

A client stream (`WatchStream`) sends WatchRequests and receives
WatchResponses, exactly as etcd's Watch service speaks them, so a router can
pass a single-group watch through without decoding it.

Every watcher knows the next revision it needs. A *synced* watcher is at the
store's head: the replica publishes each applied batch's events to the hub
(`WatchHub.publish`) and synced watchers take theirs from it. A watcher that
is behind (it started in the past, or its stream fell behind) is *catching
up*: the hub's catch-up task reads its history from the store a page at a
time (`MvccStore.changes`, whole revisions per page) and, once the history
read reaches the head, marks it synced. The store is read and the watcher
marked in one step of the event loop, with no apply in between, so no event
is lost or sent twice at the switch.

Responses leave encoded. Live events are encoded once per applied batch
(`_EncodedEvents`) and each watcher's response is a concatenation of the
pieces it wants: a hundred watchers of one key cost a hundred joins, not a
hundred protobuf messages.

Bounds: a stream holds at most `stream_responses_max` responses waiting for
its client; past that, its watchers stop taking live events and catch up
from history once the client has read (etcd's slow watchers do the same).

Guarantees, as etcd's: events of one revision in one response, in revision
order, each exactly once; a watch from a compacted revision is canceled with
the compacted revision; a progress response (to a WatchProgressRequest, with
watch id -1) is sent only when every watcher of the stream is synced, so its
revision promises that no event at or below it is still to come.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from native.codec import varint
from shards.mvcc import BelowMovedHistory, ChangeEvent, MvccStore
from tessera.api import errors
from tessera.api.validation import key_in_range
from tessera.api.kv_pb2 import Event
from tessera.api.rpc_pb2 import WatchCreateRequest, WatchRequest, WatchResponse

PROGRESS_WATCH_ID = -1  # etcd 3.5's watch id on answers to a WatchProgressRequest
# Responses queued for one client stream before its watchers fall back to
# reading history: a slow client costs reads later, not memory now.
STREAM_RESPONSES_MAX = 1024
HISTORY_PAGE_EVENTS = 1000  # events read from the store per catch-up step
# How often a watcher created with progress_notify hears the revision when it
# has no events: etcd's --experimental-watch-progress-notify-interval.
PROGRESS_NOTIFY_INTERVAL_SECONDS = 600.0
DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
# Tags of the fields written here: WatchResponse.header (1), its revision (3) and watch_id (2);
# events (11); Event.type (1), kv (2) and prev_kv (3).
_HEADER_TAG, _REVISION_TAG, _WATCH_ID_TAG, _EVENTS_TAG = b"\x0a", b"\x18", b"\x10", b"\x5a"
_DELETE_TYPE, _KV_TAG, _PREV_KV_TAG = b"\x08" + varint(Event.DELETE), b"\x12", b"\x1a"


@dataclass
class _Watcher:
    id: int
    key: bytes
    range_end: bytes  # b"" for the key alone; None end is expressed as b"\0"
    filters: frozenset[int]  # event types not wanted
    prev_kv: bool
    progress_notify: bool
    next_revision: int
    synced: bool

    def wants(self, event: ChangeEvent) -> bool:
        return (
            event.revision >= self.next_revision and event.type not in self.filters
            and key_in_range(event.key, self.key, self.range_end)
        )


def _filtered_types(request: WatchCreateRequest) -> frozenset[int]:
    unwanted = {WatchCreateRequest.NOPUT: Event.PUT, WatchCreateRequest.NODELETE: Event.DELETE}
    return frozenset(unwanted[f] for f in request.filters if f in unwanted)


class _EncodedEvents:
    """Events of whole revisions, each encoded on the wire (a WatchResponse's field 11) once,
    with and without its previous value, for every watcher that takes it."""

    def __init__(self, events: list[ChangeEvent]):
        self.events = events
        self._encoded: dict[bool, list[bytes]] = {}

    def encoded(self, prev_kv: bool) -> list[bytes]:
        encoded = self._encoded.get(prev_kv)
        if encoded is None:
            encoded = self._encoded[prev_kv] = [_encode_event(event, prev_kv) for event in self.events]
        return encoded


def _encode_event(event: ChangeEvent, prev_kv: bool) -> bytes:
    body = [_DELETE_TYPE] if event.type == Event.DELETE else []  # PUT is proto3's zero: left out
    body += (_KV_TAG, varint(len(event.kv)), event.kv)
    if prev_kv and event.prev_kv is not None:
        body += (_PREV_KV_TAG, varint(len(event.prev_kv)), event.prev_kv)
    encoded = b"".join(body)
    return _EVENTS_TAG + varint(len(encoded)) + encoded


def _events_response(watch_id: int, revision: int, events: list[bytes]) -> bytes:
    """A WatchResponse of encoded events, as protobuf would encode it (fields in number order)."""
    header = _REVISION_TAG + varint(revision)
    watch = _WATCH_ID_TAG + varint(watch_id & 0xFFFFFFFFFFFFFFFF) if watch_id else b""
    return b"".join((_HEADER_TAG, varint(len(header)), header, watch, *events))


class WatchStream:
    """One client's watch stream: its watchers, and the responses waiting for the client."""

    def __init__(self, hub: WatchHub):
        self.hub = hub
        self.watchers: dict[int, _Watcher] = {}
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()  # encoded WatchResponses
        self._next_id = 0  # etcd assigns ids from 0
        self._progress_pending = False

    def handle(self, request: WatchRequest) -> None:
        kind = request.WhichOneof("request_union")
        if kind == "create_request":
            self._create(request.create_request)
        elif kind == "cancel_request":
            self._cancel(request.cancel_request.watch_id)
        elif kind == "progress_request":
            self._progress_pending = True
            self.send_progress_if_synced()

    def _create(self, request: WatchCreateRequest) -> None:
        store = self.hub.store
        watch_id = request.watch_id
        if watch_id == 0:
            while self._next_id in self.watchers:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self.watchers:
            self.send(WatchResponse(watch_id=watch_id, created=True, canceled=True,
                                    cancel_reason=DUPLICATE_WATCH_ID))
            return
        if request.start_revision < 0:
            self.send(WatchResponse(watch_id=watch_id, created=True, canceled=True,
                                    cancel_reason=errors.Compacted.message))
            return
        start = request.start_revision or store.revision + 1
        watcher = _Watcher(
            id=watch_id, key=request.key or b"\0", range_end=request.range_end,
            filters=_filtered_types(request), prev_kv=request.prev_kv,
            progress_notify=request.progress_notify, next_revision=start, synced=start > store.revision,
        )
        self.watchers[watch_id] = watcher
        self.send(WatchResponse(watch_id=watch_id, created=True))
        if not watcher.synced:
            self.hub.wake_catch_up()

    def _cancel(self, watch_id: int) -> None:
        if self.watchers.pop(watch_id, None) is not None:
            self.send(WatchResponse(watch_id=watch_id, canceled=True))
            self.send_progress_if_synced()

    def send_progress_if_synced(self) -> None:
        if self._progress_pending and all(w.synced for w in self.watchers.values()):
            self._progress_pending = False
            self.send(WatchResponse(watch_id=PROGRESS_WATCH_ID))

    @property
    def backed_up(self) -> bool:
        return self.outbox.qsize() >= self.hub.stream_responses_max

    def send(self, response: WatchResponse) -> None:
        if not response.header.revision:
            response.header.revision = self.hub.store.revision
        self.outbox.put_nowait(response.SerializeToString())

    def deliver(self, watcher: _Watcher, batch: _EncodedEvents) -> None:
        """Send a watcher the events it wants of these (whole revisions), and move it past them."""
        events = batch.events
        if not events:
            return
        encoded = batch.encoded(watcher.prev_kv)
        wanted = [encoded[at] for at, event in enumerate(events) if watcher.wants(event)]
        watcher.next_revision = max(watcher.next_revision, events[-1].revision + 1)
        if wanted:
            self.outbox.put_nowait(_events_response(watcher.id, events[-1].revision, wanted))

    def fall_behind(self) -> None:
        """Stop live delivery (the client is not reading, or the store jumped): catch up from history."""
        for watcher in self.watchers.values():
            watcher.synced = False
        self.hub.wake_catch_up()


class WatchHub:
    """The replica's watchers, fed by its applies and, for those behind, by its history."""

    def __init__(
        self, store: MvccStore, *, stream_responses_max: int = STREAM_RESPONSES_MAX,
        progress_notify_interval_seconds: float = PROGRESS_NOTIFY_INTERVAL_SECONDS,
    ):
        self.store = store
        self.stream_responses_max = stream_responses_max
        self.progress_notify_interval_seconds = progress_notify_interval_seconds
        self.streams: set[WatchStream] = set()
        self._catch_up_wanted = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._catch_up_loop()), loop.create_task(self._notify_progress())]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _notify_progress(self) -> None:
        """Tell synced progress_notify watchers the revision every interval (a watermark each)."""
        while True:
            await asyncio.sleep(self.progress_notify_interval_seconds)
            for stream in self.streams:
                for watcher in stream.watchers.values():
                    if watcher.progress_notify and watcher.synced and not stream.backed_up:
                        stream.send(WatchResponse(watch_id=watcher.id))

    def open_stream(self) -> WatchStream:
        stream = WatchStream(self)
        self.streams.add(stream)
        return stream

    def close_stream(self, stream: WatchStream) -> None:
        self.streams.discard(stream)

    def publish(self, events: list[ChangeEvent]) -> None:
        """Live events of one applied batch, in revision order, to every synced watcher."""
        batch = _EncodedEvents(events)
        for stream in self.streams:
            if stream.backed_up:
                stream.fall_behind()
                continue
            for watcher in stream.watchers.values():
                if watcher.synced:
                    stream.deliver(watcher, batch)

    def resync_all(self) -> None:
        """After the store was replaced by a snapshot: its events were never published."""
        for stream in self.streams:
            stream.fall_behind()

    def wake_catch_up(self) -> None:
        self._catch_up_wanted.set()

    async def _catch_up_loop(self) -> None:
        while True:
            await self._catch_up_wanted.wait()
            self._catch_up_wanted.clear()
            busy = False
            for stream in list(self.streams):
                if stream.backed_up:
                    busy = True  # retried once the client has read
                    continue
                for watcher in [w for w in stream.watchers.values() if not w.synced]:
                    busy |= not self._catch_up_step(stream, watcher)
                stream.send_progress_if_synced()
            if busy:
                self._catch_up_wanted.set()
                await asyncio.sleep(0.001)  # let the clients read, and applies run

    def _catch_up_step(self, stream: WatchStream, watcher: _Watcher) -> bool:
        """One page of history for a watcher; True once it is synced (or canceled)."""
        try:
            events, next_revision = self.store.changes(
                watcher.next_revision, watcher.key, watcher.range_end, limit=HISTORY_PAGE_EVENTS)
        except BelowMovedHistory as below:
            del stream.watchers[watcher.id]
            stream.send(WatchResponse(watch_id=watcher.id, canceled=True, compact_revision=below.floor,
                                      cancel_reason=errors.MOVED_HISTORY_CANCEL_REASON))
            return True
        except errors.Compacted:
            del stream.watchers[watcher.id]
            # As etcd: the compacted revision says why; cancel_reason stays empty.
            stream.send(WatchResponse(
                watch_id=watcher.id, canceled=True, compact_revision=self.store.compacted_revision))
            return True
        stream.deliver(watcher, _EncodedEvents(events))
        watcher.next_revision = next_revision
        # Nothing is applied between the read and this check: at the head means synced.
        watcher.synced = next_revision > self.store.revision
        return watcher.synced

