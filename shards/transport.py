"""Peer transport: batches of raft messages between the replicas of a group, over gRPC.

Each replica serves one stream method, `/tessera.Peer/Raft`, and keeps one
long-lived client stream to each peer. A stream message is one batch (see
shards.raft_wire), passed as bytes: grpc does no protobuf work on this path.

Sending never blocks the raft loop. Each peer has a bounded queue
(`send_queue_batches_max`); when it is full, or the peer cannot be reached,
the batch is dropped and counted, and raft's own retries (heartbeats, append
probes) recover. A broken stream is redialled with exponential backoff, from
`redial_backoff_min_seconds` up to `redial_backoff_max_seconds`.

Received batches are decoded and handed to the `on_messages` callback;
malformed ones are dropped and counted (`batches_malformed`), never trusted.

Snapshots do not ride the raft stream: a snapshot message goes on a stream
of its own, `/tessera.Peer/Snapshot`, as the message without its data and
then the data in chunks of `SNAPSHOT_CHUNK_BYTES`, so a large database never
holds up heartbeats. When that stream ends, `on_snapshot_sent(member, failed)`
tells raft whether the follower got it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

import grpc

from shards import fault_control
from shards.raft.messages import Message
from shards.raft_wire import WireError, decode_messages, encode_messages

log = logging.getLogger("tessera.transport")

RAFT_METHOD = "/tessera.Peer/Raft"
SNAPSHOT_METHOD = "/tessera.Peer/Snapshot"
SNAPSHOT_CHUNK_BYTES = 1 << 20
# Batches waiting for one peer: at one batch per raft loop iteration this is
# seconds of backlog; beyond it the peer is too slow and raft will resend.
SEND_QUEUE_BATCHES_MAX = 1024
REDIAL_BACKOFF_MIN_SECONDS = 0.05
REDIAL_BACKOFF_MAX_SECONDS = 2.0
# One batch holds every message of a Ready for one peer: appends of up to
# max_size_per_msg each, as many as the in-flight window allows. Raft bounds
# that, so the stream takes any size gRPC can carry. (Snapshots go in chunks.)
MESSAGE_BYTES_MAX = 2**31 - 1


def _identity(data: bytes) -> bytes:
    return data


@dataclass
class PeerStats:
    batches_sent: int = 0
    batches_dropped: int = 0
    dials: int = 0


@dataclass
class _Peer:
    address: str
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(SEND_QUEUE_BATCHES_MAX))
    stats: PeerStats = field(default_factory=PeerStats)
    task: asyncio.Task | None = None


class PeerTransport:
    """Sends to and receives from a group's other replicas. Use inside a running event loop."""

    def __init__(
        self, member_id: int, listen_address: str, on_messages: Callable[[list[Message]], None],
        *, on_snapshot_sent: Callable[[int, bool], None] = lambda member_id, failed: None,
        redial_backoff_min_seconds: float = REDIAL_BACKOFF_MIN_SECONDS,
        redial_backoff_max_seconds: float = REDIAL_BACKOFF_MAX_SECONDS,
    ):
        self.member_id = member_id
        self.listen_address = listen_address
        self.on_messages = on_messages
        self.on_snapshot_sent = on_snapshot_sent
        self.redial_backoff_min_seconds = redial_backoff_min_seconds
        self.redial_backoff_max_seconds = redial_backoff_max_seconds
        self.batches_received = 0
        self.batches_malformed = 0
        # Raft stream bytes by peer member id (snapshots not included); kept across a peer's redials.
        self.bytes_sent: dict[int, int] = {}
        self.bytes_received: dict[int, int] = {}
        self._peers: dict[int, _Peer] = {}
        self._server: grpc.aio.Server | None = None
        self._faults = fault_control.from_environment()  # None outside chaos runs
        self.port = 0

    # --- receiving -------------------------------------------------------------------

    async def start(self) -> None:
        options = [("grpc.max_receive_message_length", MESSAGE_BYTES_MAX)]
        self._server = grpc.aio.server(options=options)
        handler = grpc.stream_unary_rpc_method_handler(
            self._receive, request_deserializer=_identity, response_serializer=_identity
        )
        snapshot_handler = grpc.stream_unary_rpc_method_handler(
            self._receive_snapshot, request_deserializer=_identity, response_serializer=_identity
        )
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            "tessera.Peer", {"Raft": handler, "Snapshot": snapshot_handler}
        )])
        self.port = self._server.add_insecure_port(self.listen_address)
        await self._server.start()

    async def _receive(self, request_iterator, context) -> bytes:
        async for batch in request_iterator:
            try:
                messages = decode_messages(batch)
            except WireError as error:
                self.batches_malformed += 1
                log.warning("dropping a malformed raft batch from %s: %s", context.peer(), error)
                continue
            self.batches_received += 1
            if messages:
                sender = messages[0].frm  # a batch comes from one replica
                self.bytes_received[sender] = self.bytes_received.get(sender, 0) + len(batch)
            self.on_messages(messages)
        return b""

    async def _receive_snapshot(self, request_iterator, context) -> bytes:
        chunks = []
        async for chunk in request_iterator:
            chunks.append(chunk)
        try:
            if not chunks:
                raise WireError("an empty snapshot stream")
            (message,) = decode_messages(chunks[0])
            if message.snapshot is None:
                raise WireError("a snapshot stream that does not start with a snapshot message")
        except (WireError, ValueError) as error:
            self.batches_malformed += 1
            log.warning("dropping a malformed snapshot from %s: %s", context.peer(), error)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        data = b"".join(chunks[1:])
        self.on_messages([message._replace(snapshot=message.snapshot._replace(data=data))])
        return b""

    # --- sending ---------------------------------------------------------------------

    def set_peer(self, member_id: int, address: str) -> None:
        """Add a peer, or move it to a new address."""
        peer = self._peers.get(member_id)
        if peer is not None:
            if peer.address == address:
                return
            self.remove_peer(member_id)
        peer = _Peer(address)
        peer.task = asyncio.get_running_loop().create_task(self._send_loop(member_id, peer))
        self._peers[member_id] = peer

    def remove_peer(self, member_id: int) -> None:
        peer = self._peers.pop(member_id, None)
        if peer is not None and peer.task is not None:
            peer.task.cancel()

    def send(self, messages: Iterable[Message]) -> None:
        """Queue messages for their peers, one batch per peer; never blocks."""
        by_peer: dict[int, list[Message]] = {}
        for message in messages:
            if message.snapshot is not None:
                self._send_snapshot(message)
            else:
                by_peer.setdefault(message.to, []).append(message)
        for member_id, batch in by_peer.items():
            peer = self._peers.get(member_id)
            if peer is None:
                continue  # not (or no longer) a peer: raft copes with the silence
            if self._faults is not None and self._faults.blocks(self.listen_address, peer.address):
                peer.stats.batches_dropped += 1  # an injected partition: lost as on a cut network
                continue
            try:
                peer.queue.put_nowait(encode_messages(batch))
            except asyncio.QueueFull:
                peer.stats.batches_dropped += 1

    def _send_snapshot(self, message: Message) -> None:
        peer = self._peers.get(message.to)
        if peer is None or (self._faults is not None and self._faults.blocks(self.listen_address, peer.address)):
            self.on_snapshot_sent(message.to, True)
            return
        asyncio.get_running_loop().create_task(self._stream_snapshot(peer.address, message))

    async def _stream_snapshot(self, address: str, message: Message) -> None:
        data = message.snapshot.data
        head = encode_messages([message._replace(snapshot=message.snapshot._replace(data=b""))])

        async def chunks():
            yield head
            for start in range(0, len(data), SNAPSHOT_CHUNK_BYTES):
                yield data[start:start + SNAPSHOT_CHUNK_BYTES]

        failed = True
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stream = channel.stream_unary(SNAPSHOT_METHOD, request_serializer=_identity,
                                              response_deserializer=_identity)
                await stream(chunks())
                failed = False
        except (grpc.aio.AioRpcError, OSError) as error:
            log.warning("snapshot to member %d at %s failed: %s", message.to, address, error)
        self.on_snapshot_sent(message.to, failed)

    def stats(self, member_id: int) -> PeerStats:
        return self._peers[member_id].stats

    async def _send_loop(self, member_id: int, peer: _Peer) -> None:
        backoff = self.redial_backoff_min_seconds
        while True:
            peer.stats.dials += 1
            channel = grpc.aio.insecure_channel(
                peer.address, options=[("grpc.max_send_message_length", MESSAGE_BYTES_MAX)]
            )
            try:
                await asyncio.wait_for(channel.channel_ready(), backoff)
                stream = channel.stream_unary(RAFT_METHOD, request_serializer=_identity,
                                              response_deserializer=_identity)
                call = stream(self._drain(member_id, peer))
                backoff = self.redial_backoff_min_seconds
                await call
            except (grpc.aio.AioRpcError, asyncio.TimeoutError, OSError) as error:
                log.debug("peer %d at %s unreachable: %s", member_id, peer.address, error)
            finally:
                await channel.close()
            # Whatever queued while the peer was away is stale by now: raft will resend.
            self._discard_queued(peer)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.redial_backoff_max_seconds)

    async def _drain(self, member_id: int, peer: _Peer):
        while True:
            batch = await peer.queue.get()
            peer.stats.batches_sent += 1
            self.bytes_sent[member_id] = self.bytes_sent.get(member_id, 0) + len(batch)
            yield batch

    @staticmethod
    def _discard_queued(peer: _Peer) -> None:
        while not peer.queue.empty():
            peer.queue.get_nowait()
            peer.stats.batches_dropped += 1

    async def stop(self) -> None:
        for member_id in list(self._peers):
            self.remove_peer(member_id)
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None
