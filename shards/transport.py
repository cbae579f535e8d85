"""Peer transport: batches of raft messages between the replicas of a group, over TCP.

Each replica listens on its peer address and keeps one connection to each
peer, in the frames of tessera/api/internal_stream.py: a hello naming the
stream, then one frame per batch (see shards.raft_wire), raw bytes that
nothing on this path decodes but the receiver.

Sending never blocks the raft loop: a batch is written to the peer's
connection at once. While the connection is being dialled, up to
`SEND_QUEUE_BATCHES_MAX` batches wait for it; when more wait, when the peer
cannot be reached, or when the connection already holds
`SEND_BUFFER_BYTES_MAX` the peer has not read, the batch is dropped and
counted, and raft's own retries (heartbeats, append probes) recover. A lost
connection is redialled with exponential backoff, from
`redial_backoff_min_seconds` up to `redial_backoff_max_seconds`.

Received batches are decoded and handed to the `on_messages` callback, one
call per read of the socket; malformed ones are dropped and counted
(`batches_malformed`), never trusted.

Snapshots do not ride the raft connection: a snapshot message goes on a
connection of its own, as the message without its data, then the data in
chunks of `SNAPSHOT_CHUNK_BYTES`, then an empty frame; the receiver answers
an empty frame once it has the whole snapshot, so a large database never
holds up heartbeats. Then `on_snapshot_sent(member, failed)` tells raft
whether the follower got it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass, field
from typing import Callable, Iterable

from shards import fault_control
from shards.raft.messages import Message
from shards.raft_wire import WireError, decode_messages, encode_messages
from tessera.api.internal_stream import FrameError, FrameReader, frame, host_and_port, write_if_open
from tessera.api.tls import TLSFiles

log = logging.getLogger("tessera.transport")

HELLO_RAFT = b"tessera.Peer/Raft"
HELLO_SNAPSHOT = b"tessera.Peer/Snapshot"
SNAPSHOT_CHUNK_BYTES = 1 << 20
# Batches waiting for a connection being dialled; beyond it raft will resend anyway.
SEND_QUEUE_BATCHES_MAX = 1024
# Unsent bytes one peer's connection may hold: seconds of appends at this host's
# rates. A peer that reads slower than this is too slow, and raft will resend.
SEND_BUFFER_BYTES_MAX = 64 << 20
REDIAL_BACKOFF_MIN_SECONDS = 0.05
REDIAL_BACKOFF_MAX_SECONDS = 2.0
SNAPSHOT_SECONDS_MAX = 60.0  # a snapshot's connection that takes longer has failed


@dataclass
class PeerStats:
    batches_sent: int = 0
    batches_dropped: int = 0
    dials: int = 0


class _Link(asyncio.Protocol):
    """The sending side of one connection to a peer; the peer sends nothing back but a snapshot's receipt."""

    def __init__(self):
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self.received = FrameReader()
        self.frames: list[bytes] = []
        self.frame_arrived = asyncio.Event()

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.frames += self.received.feed(data)
        except FrameError:
            self.transport.close()
        self.frame_arrived.set()

    def connection_lost(self, error: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(error)
        self.frame_arrived.set()


@dataclass
class _Peer:
    address: str
    link: _Link | None = None  # the connection, once dialled
    waiting: list[bytes] = field(default_factory=list)  # batches sent while it is dialled
    stats: PeerStats = field(default_factory=PeerStats)
    task: asyncio.Task | None = None


class PeerTransport:
    """Sends to and receives from a group's other replicas. Use inside a running event loop."""

    def __init__(
        self, member_id: int, listen_address: str, on_messages: Callable[[list[Message]], None],
        *, on_snapshot_sent: Callable[[int, bool], None] = lambda member_id, failed: None,
        redial_backoff_min_seconds: float = REDIAL_BACKOFF_MIN_SECONDS,
        redial_backoff_max_seconds: float = REDIAL_BACKOFF_MAX_SECONDS,
        tls: TLSFiles | None = None,
    ):
        """`tls`: TLS on the peer port and to every peer (etcd's --peer-* flags), or None."""
        self.member_id = member_id
        self._server_ssl = tls.server_context() if tls is not None else None
        self._client_ssl = tls.client_context() if tls is not None else None
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
        self._server: asyncio.Server | None = None
        self.incoming: set[_Incoming] = set()  # closed on stop, as the process's exit would
        self._faults = fault_control.from_environment()  # None outside chaos runs
        self.port = 0

    # --- receiving -------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Incoming(self), *host_and_port(self.listen_address), reuse_address=True, ssl=self._server_ssl)
        self.port = self._server.sockets[0].getsockname()[1]

    def received_batches(self, batches: list[bytes], peer: str) -> None:
        messages = []
        for batch in batches:
            try:
                decoded = decode_messages(batch)
            except WireError as error:
                self.batches_malformed += 1
                log.warning("dropping a malformed raft batch from %s: %s", peer, error)
                continue
            self.batches_received += 1
            if decoded:
                sender = decoded[0].frm  # a batch comes from one replica
                self.bytes_received[sender] = self.bytes_received.get(sender, 0) + len(batch)
                messages += decoded
        if messages:
            self.on_messages(messages)

    def received_snapshot(self, chunks: list[bytes], peer: str) -> bool:
        """A whole snapshot stream: its head message, then its data. Whether it was one."""
        try:
            if not chunks:
                raise WireError("an empty snapshot stream")
            (message,) = decode_messages(chunks[0])
            if message.snapshot is None:
                raise WireError("a snapshot stream that does not start with a snapshot message")
        except (WireError, ValueError) as error:
            self.batches_malformed += 1
            log.warning("dropping a malformed snapshot from %s: %s", peer, error)
            return False
        data = b"".join(chunks[1:])
        self.on_messages([message._replace(snapshot=message.snapshot._replace(data=data))])
        return True

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
            link = peer.link
            if link is not None and not link.lost.done():
                if link.transport.get_write_buffer_size() > SEND_BUFFER_BYTES_MAX:
                    peer.stats.batches_dropped += 1
                    continue
                data = encode_messages(batch)
                if not write_if_open(link.transport, frame(data)):
                    peer.stats.batches_dropped += 1  # the connection is going: raft resends
                    continue
                peer.stats.batches_sent += 1
                self.bytes_sent[member_id] = self.bytes_sent.get(member_id, 0) + len(data)
            elif len(peer.waiting) < SEND_QUEUE_BATCHES_MAX:
                peer.waiting.append(encode_messages(batch))
            else:
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
        failed = True
        link = _Link()
        try:
            await asyncio.wait_for(self._deliver_snapshot(link, address, head, data), SNAPSHOT_SECONDS_MAX)
            failed = False
        except (OSError, asyncio.TimeoutError, ConnectionError) as error:
            log.warning("snapshot to member %d at %s failed: %s", message.to, address, error or "timed out")
        finally:
            if link.transport is not None:
                link.transport.close()
        self.on_snapshot_sent(message.to, failed)

    async def _deliver_snapshot(self, link: _Link, address: str, head: bytes, data: bytes) -> None:
        await asyncio.get_running_loop().create_connection(lambda: link, *host_and_port(address), ssl=self._client_ssl)
        chunks = (data[start:start + SNAPSHOT_CHUNK_BYTES] for start in range(0, len(data), SNAPSHOT_CHUNK_BYTES))
        gone = "the follower closed the connection before it had the snapshot"
        for part in itertools.chain((HELLO_SNAPSHOT, head), chunks, (b"",)):  # framed one at a time
            if not write_if_open(link.transport, frame(part)):
                raise ConnectionError(gone)
        while not link.frames:  # the receipt: the follower has it whole
            if link.lost.done():
                raise ConnectionError(gone)
            link.frame_arrived.clear()
            await link.frame_arrived.wait()

    def stats(self, member_id: int) -> PeerStats:
        return self._peers[member_id].stats

    async def _send_loop(self, member_id: int, peer: _Peer) -> None:
        """Keep a connection to the peer: dial, hand over what waited, redial once it is lost.

        Nothing but cancellation ends it: a loop that died would cut this replica off from the
        peer for good, silently (its task is kept, so its exception would never be reported)."""
        loop = asyncio.get_running_loop()
        backoff = self.redial_backoff_min_seconds
        while True:
            peer.stats.dials += 1
            link = _Link()
            try:
                await asyncio.wait_for(loop.create_connection(lambda: link, *host_and_port(peer.address),
                                                              ssl=self._client_ssl), backoff)
            except Exception as error:  # unreachable, refused, timed out; or anything else, logged
                log.log(logging.DEBUG if isinstance(error, (OSError, asyncio.TimeoutError)) else logging.WARNING,
                        "peer %d at %s unreachable: %r", member_id, peer.address, error)
                # What waited while the peer was away is stale by now: raft will resend.
                peer.stats.batches_dropped += len(peer.waiting)
                peer.waiting.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.redial_backoff_max_seconds)
                continue
            backoff = self.redial_backoff_min_seconds
            waiting, peer.waiting = peer.waiting, []
            # A peer that resets the connection at once (one being killed) closes it before this write.
            if write_if_open(link.transport, frame(HELLO_RAFT) + b"".join(frame(batch) for batch in waiting)):
                peer.stats.batches_sent += len(waiting)
                self.bytes_sent[member_id] = self.bytes_sent.get(member_id, 0) + sum(map(len, waiting))
                peer.link = link
            else:
                peer.stats.batches_dropped += len(waiting)
            try:
                await link.lost
            finally:
                peer.link = None
                link.transport.close()
            log.debug("connection to peer %d at %s lost", member_id, peer.address)

    async def stop(self) -> None:
        for member_id in list(self._peers):
            self.remove_peer(member_id)
        if self._server is not None:
            self._server.close()
            self._server = None
        for incoming in list(self.incoming):
            incoming.transport.close()


class _Incoming(asyncio.Protocol):
    """A connection from a peer: raft batches, or one snapshot."""

    def __init__(self, transport: PeerTransport):
        self.owner = transport
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self._reader = FrameReader()
        self._kind: bytes | None = None
        self._chunks: list[bytes] = []

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.peer = "%s:%s" % transport.get_extra_info("peername")[:2]
        self.owner.incoming.add(self)

    def connection_lost(self, error: Exception | None) -> None:
        self.owner.incoming.discard(self)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except FrameError as error:
            log.warning("closing a peer connection from %s: %s", self.peer, error)
            self.transport.close()
            return
        if frames and self._kind is None:
            self._kind = frames.pop(0)
            if self._kind not in (HELLO_RAFT, HELLO_SNAPSHOT):
                log.warning("closing a peer connection from %s: unknown stream %r", self.peer, self._kind[:64])
                self.transport.close()
                return
        if not frames:
            return
        if self._kind == HELLO_RAFT:
            self.owner.received_batches(frames, self.peer)
            return
        for chunk in frames:
            if chunk:
                self._chunks.append(chunk)
                continue
            if self.owner.received_snapshot(self._chunks, self.peer):
                write_if_open(self.transport, frame(b""))  # the receipt
            self.transport.close()
            return
