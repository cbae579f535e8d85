"""One client's Watch stream at the router: watches passed through to a group, or merged over several.

Each watch is cut, like a range, into *parts*: one per group its key range
crosses, each a watch on one of the group's replicas. The router
keeps one upstream Watch stream per group for the client stream, and gives
each part an upstream watch id of its own.

A watch of one part is passed straight through: its events are forwarded
as the replica encoded them, restamped with the router's header and the
client's watch id, never decoded. A watch of several parts is merged in revision
order (ARCHITECTURE decision 6). Every part has a *watermark*: no event at
or below it is still to come from that part. A part's watermark moves with
the events it delivers (a revision's events arrive whole) and with progress
responses, which a replica sends only when the watchers of the stream are
caught up. The merged watch releases the events at or below the lowest
watermark of its parts, in revision order, all of one revision in one
response, each exactly once. A part whose group is idle would hold the
others back, so a blocked watch *nudges* it: the router raises that group's
revision through raft (no event) and asks its stream for progress.

When the map moves a prefix to another group (router/moves.py), each watch
gets a part where its keys went, from the revision after what it has
delivered; the group they left delivers their events up to the move. The new
group holds no history of them before the move (its floor): a watch that
began before the move resumes there at the floor, one that began after and
asks for older revisions is cancelled as etcd cancels a compacted one.

A merged watch from "now" starts at one revision for every part: the
router's revision, with every group raised to it first, so the start is a
consistent cut, as a read across groups is.

If an upstream stream fails (its replica died), the parts on it are
re-created on another replica from the revision after their watermark; the
client sees nothing but a pause.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from dataclasses import dataclass, field


from native import codec
from router.shard_client import ReplicaUnreachable, ReplicaWatch, ShardConnection
from tessera.api import errors
from tessera.api.validation import key_in_range
from tessera.api.kv_pb2 import Event
from tessera.api.rpc_pb2 import WatchCreateRequest, WatchRequest, WatchResponse

log = logging.getLogger("tessera.router")

PROGRESS_WATCH_ID = -1  # etcd 3.5's watch id on answers to a WatchProgressRequest
DUPLICATE_WATCH_ID = "mvcc: duplicate watch ID provided on the WatchStream"
# etcd splits a response for a client that asked for fragments once it passes this size.
FRAGMENT_BYTES = 1536 * 1024 + 512 * 1024
NUDGE_INTERVAL_SECONDS = 0.02
RECREATE_PAUSE_SECONDS = 0.05
# etcd cancels a `hasleader` stream after this many election timeouts without a leader.
NO_LEADER_ELECTION_TIMEOUTS = 3


@dataclass
class _Part:
    watch: _ClientWatch
    group: int
    key: bytes
    range_end: bytes
    start_revision: int
    upstream: _Upstream | None = None
    upstream_id: int = 0
    created: bool = False  # the client's watch exists upstream (or did, before a move)
    attached: bool = False  # its current upstream watch was created: progress there covers it
    watermark: int = 0
    pending: list[Event] = field(default_factory=list)  # merged watches: events not yet released


@dataclass
class _ClientWatch:
    id: int
    request: WatchCreateRequest
    parts: list[_Part] = field(default_factory=list)
    created_sent: bool = False
    notified: int = 0  # the last progress revision told to the client
    map_generation: int = 0  # the router's shard map when it was created

    @property
    def merged(self) -> bool:
        return len(self.parts) > 1


class _Upstream:
    """One Watch stream to one replica of a group, shared by the client stream's parts there."""

    def __init__(self, proxy: WatchProxy, group: int, member: int, connection: ShardConnection):
        self.proxy = proxy
        self.group = group
        self.member = member
        self.parts: dict[int, _Part] = {}
        self.progress_waiters: list[asyncio.Future] = []
        self._stream = ReplicaWatch(connection.address, connection.ssl_context)
        self.task = asyncio.get_running_loop().create_task(self._read())

    def send(self, request: WatchRequest) -> None:
        self._stream.send(request)

    async def _read(self) -> None:
        try:
            async for response in self._stream.responses():
                self.proxy.on_upstream(self, response)
        except ReplicaUnreachable as ended:
            self.proxy.on_upstream_failed(self, str(ended))


class WatchProxy:
    def __init__(self, router, require_leader: bool = False, election_timeout_seconds: float = 1.0):
        self.router = router
        self.require_leader = require_leader
        self.no_leader_seconds = NO_LEADER_ELECTION_TIMEOUTS * election_timeout_seconds
        # What the client gets: WatchResponses (passed through: encoded already), or an
        # EtcdError that ends the stream.
        self.outbox: asyncio.Queue[WatchResponse | bytes | errors.EtcdError] = asyncio.Queue()
        self.watches: dict[int, _ClientWatch] = {}
        self.upstreams: dict[int, _Upstream] = {}
        self._next_id = 0
        self._upstream_ids = itertools.count(1)
        self._nudge = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._tasks = {loop.create_task(self._nudge_blocked())}
        if require_leader:
            self._tasks.add(loop.create_task(self._watch_leaders()))

    async def close(self) -> None:
        for task in [*self._tasks, *(upstream.task for upstream in self.upstreams.values())]:
            task.cancel()
        await asyncio.gather(*self._tasks, *(u.task for u in self.upstreams.values()), return_exceptions=True)

    # --- client requests -----------------------------------------------------------------

    async def handle(self, request: WatchRequest) -> None:
        kind = request.WhichOneof("request_union")
        if kind == "create_request":
            await self._create(request.create_request)
        elif kind == "cancel_request":
            self._cancel(request.cancel_request.watch_id)
        elif kind == "progress_request":
            self._spawn(self._answer_progress())

    def _spawn(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _create(self, request: WatchCreateRequest) -> None:
        watch_id = request.watch_id
        if watch_id == 0:  # etcd: 0 asks for the next free id, from 0
            while self._next_id in self.watches:
                self._next_id += 1
            watch_id = self._next_id
            self._next_id += 1
        elif watch_id in self.watches:
            self._send(WatchResponse(watch_id=watch_id, created=True, canceled=True,
                                     cancel_reason=DUPLICATE_WATCH_ID))
            return
        if request.start_revision < 0:
            self._send(WatchResponse(watch_id=watch_id, created=True, canceled=True,
                                     cancel_reason=errors.Compacted.message))
            return
        watch = _ClientWatch(watch_id, request, map_generation=self.router.map_generation)
        self.watches[watch_id] = watch
        pieces = self.router.shard_map.pieces(request.key or b"\0", request.range_end)
        if not pieces:  # an empty range: created, and quiet forever
            watch.created_sent = True
            self._send(WatchResponse(watch_id=watch_id, created=True))
            return
        start = request.start_revision
        if len(pieces) > 1 and not start:
            at = self.router.revision
            try:
                await asyncio.gather(*(self.router.raise_group(group, at)
                                       for group in {piece.group for piece in pieces}
                                       if self.router.group_revisions.get(group, 0) < at))
            except errors.EtcdError as error:  # a group without a leader: the watch cannot start
                del self.watches[watch_id]
                self._send(WatchResponse(watch_id=watch_id, created=True, canceled=True,
                                         cancel_reason=error.message))
                return
            start = at + 1
        # One part per group, over the span of its pieces: a group stores only the keys it
        # owns, so the span holds nothing else, and the group's events keep their order.
        spans: dict[int, list[bytes]] = {}
        for piece in pieces:
            spans.setdefault(piece.group, [piece.key, piece.range_end])[1] = piece.range_end
        for group, (key, range_end) in spans.items():
            part = _Part(watch, group, key, range_end, start, watermark=max(0, start - 1))
            watch.parts.append(part)
            self._attach(part)

    def shard_map_changed(self) -> None:
        """Give each watch a part where the new map put its keys in a group it does not watch yet.

        A prefix changes groups only while empty and with writes to it refused, so the
        new part misses nothing by starting after what the watch has delivered.
        """
        for watch in self.watches.values():
            if not watch.created_sent or not watch.parts:
                continue
            request = watch.request
            for piece in self.router.shard_map.pieces(request.key or b"\0", request.range_end):
                if any(part.group == piece.group and _covers(part, piece) for part in watch.parts):
                    continue
                start = min(part.watermark for part in watch.parts) + 1
                part = _Part(watch, piece.group, piece.key, piece.range_end, start, created=True,
                             watermark=start - 1)
                watch.parts.append(part)
                self._attach(part)

    def _attach(self, part: _Part) -> None:
        """Create a part's watch on the group's upstream stream, from where it must go on."""
        upstream = self._upstream(part.group)
        part.upstream, part.upstream_id, part.attached = upstream, next(self._upstream_ids), False
        upstream.parts[part.upstream_id] = part
        request = part.watch.request
        start = part.watermark + 1 if part.created else part.start_revision
        upstream.send(WatchRequest(create_request=WatchCreateRequest(
            key=part.key, range_end=part.range_end, start_revision=start,
            progress_notify=request.progress_notify, filters=request.filters, prev_kv=request.prev_kv,
            watch_id=part.upstream_id)))

    def _upstream(self, group: int) -> _Upstream:
        upstream = self.upstreams.get(group)
        if upstream is None:
            client = self.router.groups[group]
            member = client.leader_id or client.member_ids[next(self._upstream_ids) % len(client.member_ids)]
            upstream = _Upstream(self, group, member, client.connection(member))
            self.upstreams[group] = upstream
        return upstream

    def _cancel(self, watch_id: int) -> None:
        watch = self.watches.pop(watch_id, None)
        if watch is None:
            return  # etcd does not answer a cancel of a watch it does not have
        self._detach(watch)
        self._send(WatchResponse(watch_id=watch_id, canceled=True))

    def _detach(self, watch: _ClientWatch) -> None:
        for part in watch.parts:
            if part.upstream is not None and part.upstream.parts.pop(part.upstream_id, None):
                part.upstream.send(WatchRequest(cancel_request={"watch_id": part.upstream_id}))

    async def _answer_progress(self) -> None:
        """Progress at a revision every watch of the stream has delivered all events up to."""
        at = self.router.revision
        try:
            await asyncio.gather(*(self.router.raise_group(group, at) for group in list(self.upstreams)
                                   if self.router.group_revisions.get(group, 0) < at))
        except errors.EtcdError as error:
            log.info("progress request: raising a group failed (%s)", error.message)
        waiters = []
        for upstream in list(self.upstreams.values()):  # after the raise: the streams alive now
            waiter = asyncio.get_running_loop().create_future()
            upstream.progress_waiters.append(waiter)
            upstream.send(WatchRequest(progress_request={}))
            waiters.append(waiter)
        await asyncio.gather(*waiters)  # their answers moved the parts' watermarks
        response = WatchResponse(watch_id=PROGRESS_WATCH_ID)
        response.header.revision = min(
            (part.watermark for watch in self.watches.values() if watch.created_sent for part in watch.parts),
            default=at)
        self._send(response)

    # --- upstream responses ------------------------------------------------------------

    def on_upstream(self, upstream: _Upstream, data: bytes) -> None:
        """An encoded WatchResponse from a replica."""
        watch_id, revision, plain = codec.watch_response_peek(data)
        self.router.observe_group(upstream.group, revision)
        if plain and revision and watch_id != PROGRESS_WATCH_ID:
            part = upstream.parts.get(watch_id)
            if part is None:
                return  # a watch the client canceled
            watch = part.watch
            if not watch.merged and not (watch.request.fragment and len(data) > FRAGMENT_BYTES):
                # Events (or a progress notification) of a watch passed through: the replica
                # moved the watcher past `revision`, whatever of it the watch wanted.
                part.watermark = max(part.watermark, revision)
                self.outbox.put_nowait(codec.restamp_watch_response(
                    data, watch.id, self.router.cluster_id, self.router.member_id, self.router.raft_term)[1])
                return
        response = WatchResponse.FromString(data)
        if response.watch_id == PROGRESS_WATCH_ID:
            # It covers the upstream watches created before it; one still catching up is not.
            for part in upstream.parts.values():
                if part.attached:
                    part.watermark = max(part.watermark, response.header.revision)
            for watch in {id(p.watch): p.watch for p in upstream.parts.values() if p.watch.merged}.values():
                self._release(watch, notify=False)
            waiters, upstream.progress_waiters = upstream.progress_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(response.header.revision)
            return
        part = upstream.parts.get(response.watch_id)
        if part is None:
            return  # a watch the client canceled
        watch = part.watch
        if response.created and not response.canceled:
            part.attached = True
            if not part.created:
                part.created = True
                if not part.start_revision:
                    part.watermark = response.header.revision
            if not watch.created_sent and all(p.created for p in watch.parts):
                watch.created_sent = True
                created = WatchResponse(watch_id=watch.id, created=True)
                if not watch.merged:
                    created.header.revision = response.header.revision
                self._send(created)
                if watch.merged:
                    self._release(watch, notify=False)  # events that came before the last part's creation
            return
        if response.canceled and response.cancel_reason == errors.MOVED_HISTORY_CANCEL_REASON:
            upstream.parts.pop(response.watch_id, None)
            if watch.map_generation < self.router.map_generation:
                # Keys moved into this group after the watch began: the group they left delivered
                # their events up to the move, and this group has none of its own below the floor.
                part.watermark = max(part.watermark, response.compact_revision - 1)
                part.created = True
                self._attach(part)
                return
            response.cancel_reason = ""  # begun after the move, from before it: etcd's compacted cancel
        if response.canceled:  # refused or dropped by the replica (a compacted revision): the whole watch ends
            self.watches.pop(watch.id, None)
            self._detach(watch)
            upstream.parts.pop(response.watch_id, None)
            response.watch_id = watch.id
            response.created = not watch.created_sent
            self._send(response)
            return
        if not watch.merged:  # a response too big for a client that asked for fragments
            part.watermark = max(part.watermark, response.header.revision)
            response.watch_id = watch.id
            self._send(response, watch)
            return
        if response.events:
            part.pending.extend(response.events)
            part.watermark = max(part.watermark, response.events[-1].kv.mod_revision)
        else:
            part.watermark = max(part.watermark, response.header.revision)
        self._release(watch, notify=not response.events)

    def _release(self, watch: _ClientWatch, notify: bool) -> None:
        """Send a merged watch's events at or below its parts' lowest watermark, in revision order."""
        if not watch.created_sent:
            return
        watermark = min(part.watermark for part in watch.parts)
        ready = []
        for part in watch.parts:
            if part.pending and part.pending[0].kv.mod_revision <= watermark:
                ready.append([event for event in part.pending if event.kv.mod_revision <= watermark])
                part.pending = [event for event in part.pending if event.kv.mod_revision > watermark]
        if ready:
            # In revision order; a revision shared by groups (a delete across them) in key
            # order, each group's own events in the order the group made them.
            events = heapq.merge(*ready, key=lambda event: (event.kv.mod_revision, event.kv.key))
            response = WatchResponse(watch_id=watch.id, events=events)
            response.header.revision = watermark
            watch.notified = watermark
            self._send(response, watch)
        elif notify and watch.request.progress_notify and watermark > watch.notified:
            watch.notified = watermark
            response = WatchResponse(watch_id=watch.id)
            response.header.revision = watermark
            self._send(response)
        if any(part.pending for part in watch.parts):
            self._nudge.set()

    def on_upstream_failed(self, upstream: _Upstream, detail: str) -> None:
        if self.upstreams.get(upstream.group) is upstream:
            del self.upstreams[upstream.group]
        client = self.router.groups.get(upstream.group)
        if client is not None and client.leader_id == upstream.member:
            client.leader_id = 0
        parts = list(upstream.parts.values())
        for waiter in upstream.progress_waiters:
            if not waiter.done():
                waiter.set_result(min((part.watermark for part in parts), default=0))
        if parts:
            log.info("watch stream to group %d member %d failed (%s); moving %d watches",
                     upstream.group, upstream.member, detail, len(parts))
            self._spawn(self._reattach(parts))

    async def _reattach(self, parts: list[_Part]) -> None:
        await asyncio.sleep(RECREATE_PAUSE_SECONDS)
        for part in parts:
            if part.watch.id in self.watches and self.watches[part.watch.id] is part.watch:
                self._attach(part)

    # --- keeping merged watches moving; hasleader --------------------------------------

    async def _nudge_blocked(self) -> None:
        """Raise idle groups that hold a merged watch back, and ask their streams for progress."""
        while True:
            await self._nudge.wait()
            self._nudge.clear()
            targets: dict[int, int] = {}
            for watch in self.watches.values():
                if not watch.merged:
                    continue
                waiting_for = max((event.kv.mod_revision for part in watch.parts for event in part.pending),
                                  default=0)
                for part in watch.parts:
                    if part.watermark < waiting_for:
                        targets[part.group] = max(targets.get(part.group, 0), waiting_for)
            if not targets:
                continue
            try:
                await asyncio.gather(*(self.router.raise_group(group, revision)
                                       for group, revision in targets.items()
                                       if self.router.group_revisions.get(group, 0) < revision))
            except errors.EtcdError as error:
                log.info("nudging a watch: raising a group failed (%s)", error.message)
            for group in targets:
                if group in self.upstreams:
                    self.upstreams[group].send(WatchRequest(progress_request={}))
            await asyncio.sleep(NUDGE_INTERVAL_SECONDS)
            if any(part.pending for watch in self.watches.values() for part in watch.parts):
                self._nudge.set()

    async def _watch_leaders(self) -> None:
        """etcd's `hasleader`: end the stream once a watched group has been leaderless too long."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.no_leader_seconds / 6)
            for group in {part.group for watch in self.watches.values() for part in watch.parts}:
                since = self.router.groups[group].leaderless_since
                if since is not None and loop.time() - since > self.no_leader_seconds:
                    self.outbox.put_nowait(errors.NoLeader())
                    return

    # --- to the client -------------------------------------------------------------------

    def _send(self, response: WatchResponse, watch: _ClientWatch | None = None) -> None:
        header = response.header
        header.cluster_id, header.member_id = self.router.cluster_id, self.router.member_id
        header.raft_term = self.router.raft_term
        if not header.revision:
            header.revision = self.router.revision
        if watch is not None and watch.request.fragment and len(response.events) > 1 \
                and response.ByteSize() > FRAGMENT_BYTES:
            for fragment in _fragments(response):
                self.outbox.put_nowait(fragment)
            return
        self.outbox.put_nowait(response)


def _covers(part: _Part, piece) -> bool:
    """Whether a part's key range holds all of a piece's."""
    if not piece.range_end:
        return key_in_range(piece.key, part.key, part.range_end)
    if not part.range_end or piece.key < part.key:
        return False
    return part.range_end == b"\0" or (piece.range_end != b"\0" and piece.range_end <= part.range_end)


def _fragments(response: WatchResponse) -> list[WatchResponse]:
    """etcd's fragmenting: as many events as fit a fragment, `fragment` set on all but the last."""
    fragments = []
    current = WatchResponse(header=response.header, watch_id=response.watch_id)
    for event in response.events:
        if current.events and current.ByteSize() + event.ByteSize() > FRAGMENT_BYTES:
            current.fragment = True
            fragments.append(current)
            current = WatchResponse(header=response.header, watch_id=response.watch_id)
        current.events.append(event)
    fragments.append(current)
    return fragments
