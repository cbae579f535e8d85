"""The internal API's transport: length-prefixed frames over TCP, router to replica.

A replica's API port speaks no gRPC. A connection is a sequence of frames in
each direction, a frame being a 4-byte big-endian length and that many bytes.
The client's first frame is a hello naming the stream the connection carries:

- `BATCH`: the client sends ShardRequestBatch messages (tessera/api/internal.proto);
  the replica answers with ShardResponseBatch messages as requests complete, in
  any order, matched by request id. One frame carries a batch, never one request.
- `WATCH`: WatchRequest in, WatchResponse out: etcd's Watch protocol (shards/watch.py).

Closing the connection ends the stream. A replica drops the answers of a
closed connection; for the client, a request sent and not answered has an
unknown outcome.

Why not gRPC here: every hop of a put crosses this connection twice, and
grpcio's per-message cost on each side (a stream write is a coroutine, a
completion-queue event and a task switch) was the largest line of the
router's profile once the client port went native. Plain frames on asyncio's
transports cost one `write` per batch and one parse per read.
"""

from __future__ import annotations

import asyncio

HELLO_BATCH = b"tessera.internal.Shard/Batch"
HELLO_WATCH = b"tessera.internal.Shard/Watch"
HEADER_BYTES = 4
# The largest frame either side accepts. Replicas answer big ranges and watch
# catch-ups in one message; the router bounds what clients get. A length beyond
# this is a peer that does not speak this protocol.
FRAME_BYTES_MAX = 1 << 31


class FrameError(Exception):
    """Bytes that are not this protocol's frames."""


def frame(payload: bytes) -> bytes:
    """One frame: the payload's length, then the payload."""
    return len(payload).to_bytes(HEADER_BYTES, "big") + payload


def frame_header(length: int) -> bytes:
    """A frame's length prefix, for a payload written in parts."""
    return length.to_bytes(HEADER_BYTES, "big")


def write_if_open(transport: asyncio.BaseTransport, data: bytes) -> bool:
    """Write `data` unless the connection is closing; whether it was written.

    A connection closes (the peer's EOF or reset, or our close()) a moment before its
    protocol's connection_lost runs. A write in between is dropped by asyncio's
    transports but raises RuntimeError on uvloop's, which the servers run on.
    """
    if transport.is_closing():
        return False
    transport.write(data)
    return True


class FrameReader:
    """Cuts a byte stream into frames; what is left over waits for the next read.

    Each frame is copied once: out of the read's bytes, or out of the buffer once
    a frame that spans reads is whole (the buffer is not rescanned on every read).
    """

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX):
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._needed = HEADER_BYTES  # the buffered bytes the next frame needs at least

    def feed(self, data: bytes) -> list[bytes]:
        """The frames `data` completes, in order. FrameError if a length is out of bounds."""
        if self._buffer:
            self._buffer += data
            if len(self._buffer) < self._needed:
                return []
            data = bytes(self._buffer)
            self._buffer.clear()
        frames = []
        offset, end = 0, len(data)
        while True:
            if end - offset < HEADER_BYTES:
                needed = HEADER_BYTES
                break
            length = int.from_bytes(data[offset:offset + HEADER_BYTES], "big")
            if length > self.frame_bytes_max:
                raise FrameError(f"a frame of {length} bytes, more than {self.frame_bytes_max}")
            stop = offset + HEADER_BYTES + length
            if stop > end:
                needed = HEADER_BYTES + length
                break
            frames.append(data[offset + HEADER_BYTES:stop])
            offset = stop
        if offset < end:
            self._buffer += memoryview(data)[offset:]
            self._needed = needed
        return frames


def host_and_port(address: str) -> tuple[str, int]:
    """"host:port" (or "[v6]:port") as the socket calls take it."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)
