"""The peer transport over real TCP on 127.0.0.1: delivery, order, drops, redial, bad bytes."""

import asyncio
import socket

from shards.raft.messages import Message, MessageType
from shards.raft.storage import ConfState, Entry, Snapshot, SnapshotMeta
from shards.raft_wire import encode_messages
from shards.transport import HELLO_RAFT, HELLO_SNAPSHOT, SEND_QUEUE_BATCHES_MAX, PeerTransport
from tessera.api.internal_stream import frame

FAST_REDIAL = dict(redial_backoff_min_seconds=0.02, redial_backoff_max_seconds=0.1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Inbox:
    def __init__(self):
        self.messages: list[Message] = []
        self.arrived = asyncio.Event()

    def __call__(self, messages):
        self.messages += messages
        self.arrived.set()

    async def wait_for(self, count, timeout=5.0):
        async def enough():
            while len(self.messages) < count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(enough(), timeout)


def heartbeat(to, term):
    return Message(MessageType.HEARTBEAT, to=to, frm=1, term=term, commit=term)


async def pair(port_b=None):
    inbox_a, inbox_b = Inbox(), Inbox()
    a = PeerTransport(1, "127.0.0.1:0", inbox_a, **FAST_REDIAL)
    b = PeerTransport(2, f"127.0.0.1:{port_b or 0}", inbox_b, **FAST_REDIAL)
    await a.start()
    await b.start()
    a.set_peer(2, f"127.0.0.1:{b.port}")
    b.set_peer(1, f"127.0.0.1:{a.port}")
    return a, b, inbox_a, inbox_b


def test_batches_arrive_whole_and_in_order():
    async def scenario():
        a, b, inbox_a, inbox_b = await pair()
        try:
            entries = [Entry(3, i, 0, b"x" * 100) for i in range(1, 501)]
            a.send([Message(MessageType.APP, to=2, frm=1, term=3, index=0, entries=entries)])
            for term in range(1, 101):
                a.send([heartbeat(2, term)])
            b.send([heartbeat(1, 7)])
            await inbox_b.wait_for(101)
            await inbox_a.wait_for(1)
            assert list(inbox_b.messages[0].entries) == entries
            assert [m.term for m in inbox_b.messages[1:]] == list(range(1, 101))
            assert inbox_a.messages == [heartbeat(1, 7)]
            assert a.stats(2).batches_dropped == 0
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_an_unreachable_peer_costs_drops_not_memory_and_is_redialled():
    async def scenario():
        port = free_port()
        inbox_a, inbox_b = Inbox(), Inbox()
        a = PeerTransport(1, "127.0.0.1:0", inbox_a, **FAST_REDIAL)
        await a.start()
        a.set_peer(2, f"127.0.0.1:{port}")
        try:
            for term in range(1, 50):
                a.send([heartbeat(2, term)])
            while a.stats(2).dials < 3:  # it keeps trying, with backoff
                await asyncio.sleep(0.02)
            assert a.stats(2).batches_dropped > 0 and a.stats(2).batches_sent == 0
            b = PeerTransport(2, f"127.0.0.1:{port}", inbox_b, **FAST_REDIAL)
            await b.start()
            try:
                async def delivered():
                    term = 100
                    while not inbox_b.messages:
                        a.send([heartbeat(2, term)])
                        term += 1
                        await asyncio.sleep(0.02)
                await asyncio.wait_for(delivered(), 5.0)
                assert all(m.term >= 100 for m in inbox_b.messages)  # nothing stale was kept
            finally:
                await b.stop()
        finally:
            await a.stop()

    asyncio.run(scenario())


def test_messages_for_unknown_members_are_ignored():
    async def scenario():
        a, b, _, inbox_b = await pair()
        try:
            a.send([heartbeat(9, 1), heartbeat(2, 2)])
            await inbox_b.wait_for(1)
            assert [m.term for m in inbox_b.messages] == [2]
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_malformed_batches_are_dropped_and_counted():
    async def scenario():
        inbox = Inbox()
        b = PeerTransport(2, "127.0.0.1:0", inbox, **FAST_REDIAL)
        await b.start()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", b.port)
            writer.write(frame(HELLO_RAFT) + frame(b"\xff\xff\xff\xffgarbage")
                         + frame(encode_messages([heartbeat(2, 5)])))
            await writer.drain()
            await inbox.wait_for(1)
            assert b.batches_malformed == 1 and b.batches_received == 1
            assert inbox.messages == [heartbeat(2, 5)]
            writer.close()
        finally:
            await b.stop()

    asyncio.run(scenario())


def test_a_full_queue_drops_instead_of_growing():
    async def scenario():
        a = PeerTransport(1, "127.0.0.1:0", Inbox(), **FAST_REDIAL)
        await a.start()
        a.set_peer(2, f"127.0.0.1:{free_port()}")  # nobody there
        try:
            for term in range(SEND_QUEUE_BATCHES_MAX + 10):
                a.send([heartbeat(2, term)])
            assert a.stats(2).batches_dropped >= 10
        finally:
            await a.stop()

    asyncio.run(scenario())


def test_stop_is_clean_and_idempotent():
    async def scenario():
        a = PeerTransport(1, "127.0.0.1:0", Inbox())
        await a.start()
        assert a.port > 0
        await a.stop()
        await a.stop()

    asyncio.run(scenario())


def test_a_snapshot_streams_in_chunks_apart_from_raft_traffic_and_reports_delivery():
    async def scenario():
        reports = []
        inbox_b = Inbox()
        a = PeerTransport(1, "127.0.0.1:0", Inbox(), on_snapshot_sent=lambda m, failed: reports.append((m, failed)),
                          **FAST_REDIAL)
        b = PeerTransport(2, "127.0.0.1:0", inbox_b, **FAST_REDIAL)
        await a.start()
        await b.start()
        a.set_peer(2, f"127.0.0.1:{b.port}")
        a.set_peer(3, f"127.0.0.1:{free_port()}")  # nobody there
        try:
            data = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: several chunks
            snapshot = Snapshot(SnapshotMeta(40, 2, ConfState((1, 2, 3))), data)
            a.send([Message(MessageType.SNAP, to=2, frm=1, term=2, snapshot=snapshot), heartbeat(2, 2)])
            a.send([Message(MessageType.SNAP, to=3, frm=1, term=2, snapshot=snapshot)])
            await inbox_b.wait_for(2)
            received = next(m for m in inbox_b.messages if m.type == MessageType.SNAP)
            assert received.snapshot == snapshot
            while len(reports) < 2:
                await asyncio.sleep(0.02)
            assert sorted(reports) == [(2, False), (3, True)]
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_a_bad_stream_or_snapshot_is_refused_and_counted():
    async def scenario():
        inbox = Inbox()
        b = PeerTransport(2, "127.0.0.1:0", inbox, **FAST_REDIAL)
        await b.start()
        try:
            for sent in (frame(b"tessera.Peer/Nothing"),  # an unknown stream
                         frame(HELLO_RAFT) + b"\xff\xff\xff\xff",  # a frame of 4 GiB
                         frame(HELLO_SNAPSHOT) + frame(encode_messages([heartbeat(2, 5)])) + frame(b"")):
                reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
                writer.write(sent)
                assert await asyncio.wait_for(reader.read(), 5.0) == b""  # closed, and no receipt
                writer.close()
            assert b.batches_malformed == 1 and inbox.messages == []  # the snapshot without a snapshot
        finally:
            await b.stop()

    asyncio.run(scenario())


def test_on_uvloop_a_peer_that_resets_every_connection_does_not_end_the_redialling():
    # The servers run on uvloop, whose transports raise on a write once closed (asyncio's drop
    # it). A peer being killed accepts connections and resets them at once: the sender's hello
    # then meets a closed connection. The sender must redial, not lose the peer for good.
    from tessera import event_loop

    async def scenario():
        port = free_port()
        resets = 0

        def reset(connection: socket.socket) -> None:
            nonlocal resets
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            connection.close()  # linger 0: a reset
            resets += 1

        dying = socket.create_server(("127.0.0.1", port))
        dying.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.add_reader(dying.fileno(), lambda: reset(dying.accept()[0]))
        inbox_b = Inbox()
        a = PeerTransport(1, "127.0.0.1:0", Inbox(), **FAST_REDIAL)
        await a.start()
        a.set_peer(2, f"127.0.0.1:{port}")
        try:
            while resets < 20:
                a.send([heartbeat(2, 1)])
                await asyncio.sleep(0.005)
            loop.remove_reader(dying.fileno())
            dying.close()
            b = PeerTransport(2, f"127.0.0.1:{port}", inbox_b, **FAST_REDIAL)  # the peer, restarted
            await b.start()
            try:
                for term in range(2, 200):
                    a.send([heartbeat(2, term)])
                    if inbox_b.messages:
                        break
                    await asyncio.sleep(0.05)
                assert inbox_b.messages, "the restarted peer never heard from the sender again"
            finally:
                await b.stop()
        finally:
            await a.stop()

    event_loop.run(scenario())
