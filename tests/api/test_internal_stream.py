"""The internal transport's frames: cut the same however the bytes arrive; bad lengths refused."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tessera.api.internal_stream import FrameError, FrameReader, frame, frame_header, host_and_port, write_if_open

payloads = st.lists(st.binary(max_size=300), max_size=20)


def _feed_in_pieces(stream: bytes, cuts: list[int]) -> list[bytes]:
    reader = FrameReader()
    frames, start = [], 0
    for cut in sorted(set(cuts)) + [len(stream)]:
        frames += reader.feed(stream[start:cut])
        start = cut
    return frames


@given(payloads)
def test_frames_read_whole_come_back_as_sent(sent):
    assert FrameReader().feed(b"".join(frame(payload) for payload in sent)) == sent


@given(payloads)
def test_frames_read_a_byte_at_a_time_come_back_as_sent(sent):
    stream = b"".join(frame(payload) for payload in sent)
    assert _feed_in_pieces(stream, list(range(len(stream)))) == sent


@given(payloads, st.lists(st.integers(min_value=0, max_value=7000)))
def test_frames_read_in_any_pieces_come_back_as_sent(sent, cuts):
    stream = b"".join(frame(payload) for payload in sent)
    assert _feed_in_pieces(stream, [cut for cut in cuts if cut < len(stream)]) == sent


@given(payloads, st.data())
def test_a_truncated_stream_gives_its_whole_frames_and_waits_for_the_rest(sent, data):
    stream = b"".join(frame(payload) for payload in sent) + frame(b"last")
    cut = data.draw(st.integers(min_value=0, max_value=len(stream) - 1))
    reader = FrameReader()
    whole = reader.feed(stream[:cut])
    assert whole == sent[:len(whole)]
    assert whole + reader.feed(stream[cut:]) == sent + [b"last"]


def test_a_frame_longer_than_the_limit_is_refused_before_its_bytes_arrive():
    reader = FrameReader(frame_bytes_max=1000)
    assert reader.feed(frame(b"x" * 1000)) == [b"x" * 1000]
    with pytest.raises(FrameError, match="a frame of 1001 bytes, more than 1000"):
        reader.feed(frame_header(1001))
    with pytest.raises(FrameError):
        FrameReader().feed(b"\xff\xff\xff\xff")  # 4 GiB: not a peer of this protocol


def test_addresses():
    assert host_and_port("127.0.0.1:2379") == ("127.0.0.1", 2379)
    assert host_and_port("[::1]:2380") == ("::1", 2380)


def test_a_write_to_a_closed_connection_is_skipped_where_uvloop_would_raise():
    from tessera import event_loop

    class Client(asyncio.Protocol):
        def __init__(self):
            self.lost = asyncio.get_running_loop().create_future()

        def connection_lost(self, error):
            self.lost.set_result(error)

    async def scenario():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        transport, client = await loop.create_connection(Client, "127.0.0.1", port)
        try:
            assert write_if_open(transport, b"hello")
            transport.close()
            assert not write_if_open(transport, b"dropped")  # closing
            await client.lost
            assert not write_if_open(transport, b"dropped")  # closed
            with pytest.raises(RuntimeError):  # what a plain write does then on uvloop
                transport.write(b"raises")
        finally:
            server.close()
            await server.wait_closed()

    event_loop.run(scenario())
