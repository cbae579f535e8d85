"""A native Edge with a small test application, driven in a thread, and HTTP/2 clients to talk to it.

`EdgeServer` runs an `Edge` on 127.0.0.1, port 0, in a background thread: a
plain loop that waits on the edge's epoll fd with select(), then calls
`poll()`, `expire()` and `flush()`, and answers the calls of a few methods
(ECHO, BIG, NEVER, BIDI, MANY; see `EdgeServer._on_event`). Every event the
application sees is recorded, in order, for the test to inspect. The edge is
not thread-safe, so the test touches it only through `do(fn)`, which runs
`fn(edge)` on the loop's thread between polls.

Waiting is on conditions, never on time: `wait_events` blocks until the
recorded events satisfy a predicate, `settle()` until the loop has run a
whole poll after the call (so bytes already sent have been read and parsed),
`wait_state` until a predicate on the edge holds after a turn of the loop.

Clients: `RawClient` writes frames (hyperframe's, or raw bytes for what
hyperframe refuses to build) and reads the server's frames with a plain
splitter, decoding header blocks with hpack; `H2Client` is the reference
twin, h2's own client connection. Both take `tls` (an ssl.SSLContext) to talk
to an EdgeServer made with `tls` (the keyword arguments of Edge.use_tls).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import h2.config
import h2.connection
import h2.events
import hpack
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from native import edge as native_edge

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
TIMEOUT_SECONDS = 5.0

# Frame types (RFC 9113 6) and error codes (7).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED = 0x1, 0x1, 0x4, 0x8
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0, 1, 2, 3
STREAM_CLOSED, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL = 5, 6, 7, 8
COMPRESSION_ERROR, ENHANCE_YOUR_CALM = 9, 11

CALL, OPEN, MESSAGE, HALF_CLOSE = native_edge.CALL, native_edge.OPEN, native_edge.MESSAGE, native_edge.HALF_CLOSE
CANCELLED, HTTP1, WRITABLE = native_edge.CANCEL, native_edge.HTTP1, native_edge.WRITABLE

# The test application's methods.
ECHO = "/test.Echo/Unary"      # unary: answers its request
BIG = "/test.Echo/Big"         # unary: the request is a decimal N; answers N bytes of big_answer(N)
NEVER = "/test.Echo/Never"     # unary: never answered (deadlines, cancels, answers sent by the test)
BIDI = "/test.Echo/Bidi"       # bidirectional: each message echoed; finished OK when the client half-closes
MANY = "/test.Echo/Many"       # server stream: the request is "COUNT SIZE"; COUNT messages of SIZE bytes
METHODS = ((ECHO, native_edge.UNARY), (BIG, native_edge.UNARY), (NEVER, native_edge.UNARY),
           (BIDI, native_edge.BIDI_STREAM), (MANY, native_edge.SERVER_STREAM))
METADATA_NAMES = ("token", "hasleader")


def big_answer(size: int) -> bytes:
    """BIG's answer: a pattern whose every 4 KiB block differs, so misplaced bytes show."""
    blocks = (size + 4095) // 4096
    return b"".join(i.to_bytes(4, "big") * 1024 for i in range(blocks))[:size]


def many_message(index: int, size: int) -> bytes:
    return (index.to_bytes(4, "big") * (size // 4 + 1))[:size]


def grpc_message(payload: bytes, compressed: bool = False) -> bytes:
    return bytes([1 if compressed else 0]) + len(payload).to_bytes(4, "big") + payload


def grpc_messages(data: bytes) -> list[bytes]:
    """Split a response body into its gRPC messages; every byte must belong to a whole message."""
    messages, at = [], 0
    while at < len(data):
        assert len(data) - at >= 5, "a partial message prefix"
        assert data[at] == 0, "the edge never compresses"
        length = int.from_bytes(data[at + 1:at + 5], "big")
        assert len(data) - at - 5 >= length, "a partial message"
        messages.append(data[at + 5:at + 5 + length])
        at += 5 + length
    return messages


def request_headers(path: str, *, timeout: str | None = None, content_type: str = "application/grpc",
                    extra: tuple = ()) -> list[tuple[str, str]]:
    headers = [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "edge.test"),
               ("content-type", content_type), ("te", "trailers")]
    if timeout is not None:
        headers.append(("grpc-timeout", timeout))
    return headers + list(extra)


def raw_frame(kind: int, flags: int, stream_id: int, payload: bytes = b"", length: int | None = None) -> bytes:
    """A frame built byte by byte, for what hyperframe will not build (bad lengths, wrong streams)."""
    length = len(payload) if length is None else length
    return length.to_bytes(3, "big") + bytes([kind, flags]) + struct.pack(">I", stream_id) + payload


def settings_payload(values: dict[int, int]) -> bytes:
    return b"".join(struct.pack(">HI", key, value) for key, value in values.items())


# --- the server -------------------------------------------------------------------------------


class EdgeServer:
    """An Edge on 127.0.0.1:0 with the test application, run by a select() loop in a thread."""

    def __init__(self, tls: dict | None = None, **limits):
        self.edge = native_edge.Edge("127.0.0.1", 0, **limits)
        if tls is not None:
            self.edge.use_tls(**tls)
        self.port = self.edge.port
        self.method_index = {path: self.edge.add_method(path, kind) for path, kind in METHODS}
        self.method_path = {index: path for path, index in self.method_index.items()}
        for name in METADATA_NAMES:
            self.edge.add_metadata_name(name)
        self.events: list[tuple] = []           # every event the application saw, in order
        self.results: list[tuple] = []          # (what, conn, stream, the edge's return value) of the app's answers
        self._condition = threading.Condition()
        self._commands: list[tuple[Callable, Future]] = []
        self._settles: list[Future] = []
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        self._stopping = False
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="edge", daemon=True)
        self._thread.start()

    # --- the loop (the edge's thread) ---

    def _run(self):
        edge = self.edge
        try:
            while not self._stopping:
                select.select([edge.fileno(), self._wake_read], [], [], 0.005)
                try:
                    os.read(self._wake_read, 4096)
                except BlockingIOError:
                    pass
                with self._condition:
                    commands, self._commands = self._commands, []
                    settles, self._settles = self._settles, []
                for command, future in commands:
                    try:
                        future.set_result(command(edge))
                    except BaseException as error:  # handed to the waiting test
                        future.set_exception(error)
                now_ms = int(time.monotonic() * 1000)
                self._handle(edge.poll(now_ms))
                self._handle(edge.expire(now_ms))
                self._handle(edge.flush())
                for future in settles:
                    future.set_result(None)
        except BaseException as error:
            self.error = error
            with self._condition:
                self._condition.notify_all()
            raise

    def _handle(self, events):
        if not events:
            return
        with self._condition:
            self.events.extend(events)
            self._condition.notify_all()
        for event in events:
            self._on_event(event)

    def _on_event(self, event):
        kind, conn, stream, method, data, _ = event
        edge = self.edge
        path = self.method_path.get(method)
        if kind == CALL and path == ECHO:
            self._record("reply", conn, stream, edge.reply(conn, stream, data))
        elif kind == CALL and path in (BIG, MANY) and not self._well_formed(path, data):
            self._record("finish", conn, stream, edge.finish(conn, stream, 3, "bad request"))  # INVALID_ARGUMENT
        elif kind == CALL and path == BIG:
            self._record("reply", conn, stream, edge.reply(conn, stream, big_answer(int(data))))
        elif kind == CALL and path == MANY:
            count, size = map(int, data.split())
            for index in range(count):
                self._record("send", conn, stream, edge.send(conn, stream, many_message(index, size)))
            self._record("finish", conn, stream, edge.finish(conn, stream, 0))
        elif kind == MESSAGE:
            self._record("send", conn, stream, edge.send(conn, stream, data))
        elif kind == HALF_CLOSE:
            self._record("finish", conn, stream, edge.finish(conn, stream, 0))

    @staticmethod
    def _well_formed(path, data):
        parts = data.split()
        return all(p.isdigit() for p in parts) and len(parts) == (1 if path == BIG else 2)

    def _record(self, what, conn, stream, result):
        with self._condition:
            self.results.append((what, conn, stream, result))

    # --- the test's side ---

    def _wake(self):
        os.write(self._wake_write, b"x")

    def do(self, command: Callable, timeout: float = TIMEOUT_SECONDS):
        """Run command(edge) on the loop's thread, between polls; its result."""
        future: Future = Future()
        with self._condition:
            self._commands.append((command, future))
        self._wake()
        return future.result(timeout)

    def settle(self, timeout: float = TIMEOUT_SECONDS):
        """Return once the loop has polled (and flushed) at least once after this call began."""
        future: Future = Future()
        with self._condition:
            self._settles.append(future)
        self._wake()
        future.result(timeout)

    def wait_state(self, predicate: Callable, timeout: float = TIMEOUT_SECONDS):
        """Turn the loop until predicate(edge) holds; AssertionError if it does not within timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if self.do(predicate):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"edge state never satisfied {predicate}")
            self.settle()

    def mark(self) -> int:
        with self._condition:
            return len(self.events)

    def events_since(self, mark: int = 0, conn: int | None = None) -> list[tuple]:
        with self._condition:
            return [e for e in self.events[mark:] if conn is None or e[1] == conn]

    def wait_events(self, predicate: Callable[[list], bool], since: int = 0, timeout: float = TIMEOUT_SECONDS):
        """Block until predicate(events since `since`) is true; those events."""
        with self._condition:
            ok = self._condition.wait_for(lambda: self.error is not None or predicate(self.events[since:]),
                                          timeout)
            if self.error is not None:
                raise AssertionError(f"the edge's loop died: {self.error!r}")
            if not ok:
                raise AssertionError(f"events never matched; saw {self.events[since:][-20:]}")
            return list(self.events[since:])

    def wait_event(self, kind: int, since: int = 0, count: int = 1, conn: int | None = None,
                   timeout: float = TIMEOUT_SECONDS) -> list[tuple]:
        """Block until `count` events of `kind` arrived after `since`; those events."""
        def matching(events):
            return [e for e in events if e[0] == kind and (conn is None or e[1] == conn)]
        return matching(self.wait_events(lambda events: len(matching(events)) >= count, since, timeout))[:count]

    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def close(self):
        self._stopping = True
        self._wake()
        self._thread.join(TIMEOUT_SECONDS)
        assert not self._thread.is_alive(), "the edge's loop did not stop"
        self.edge.close()
        os.close(self._wake_read)
        os.close(self._wake_write)
        if self.error is not None:
            raise AssertionError(f"the edge's loop died: {self.error!r}")


# --- clients ----------------------------------------------------------------------------------


class Frame:
    """One frame the server sent, split from the stream without judging it."""

    __slots__ = ("kind", "flags", "stream", "payload", "headers")

    def __init__(self, kind, flags, stream, payload):
        self.kind, self.flags, self.stream, self.payload = kind, flags, stream, payload
        self.headers = None  # HEADERS: the decoded fields, as str pairs

    @property
    def error_code(self) -> int:  # GOAWAY, RST_STREAM
        return int.from_bytes(self.payload[4:8] if self.kind == GOAWAY else self.payload[:4], "big")

    def __repr__(self):
        return f"Frame(kind={self.kind}, flags={self.flags:#x}, stream={self.stream}, payload={self.payload[:40]!r})"


class Closed(Exception):
    """The server closed the connection."""


def connect(port: int, rcvbuf: int | None = None, tls: ssl.SSLContext | None = None) -> socket.socket:
    """A connection to the edge; with `tls`, its handshake done (ALPN h2 offered)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(TIMEOUT_SECONDS)
    sock.connect(("127.0.0.1", port))
    if tls is not None:
        return tls.wrap_socket(sock, server_hostname="127.0.0.1")
    return sock


class RawClient:
    """Frames by hand. Header blocks from an hpack.Encoder (dynamic table, Huffman) unless given as bytes."""

    def __init__(self, port: int, *, preface: bool = True, settings: dict[int, int] | None = None,
                 rcvbuf: int | None = None, tls: ssl.SSLContext | None = None):
        self.sock = connect(port, rcvbuf, tls)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.buffer = bytearray()
        self.received = bytearray()  # every byte the server sent, for comparisons
        self.next_stream = 1
        if preface:
            self.send(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())

    def send(self, data: bytes):
        self.sock.sendall(data)

    def send_frames(self, *frames):
        self.send(b"".join(f if isinstance(f, bytes) else f.serialize() for f in frames))

    def header_block(self, headers, huffman: bool = True) -> bytes:
        return self.encoder.encode(headers, huffman=huffman)

    def open_stream(self) -> int:
        stream_id, self.next_stream = self.next_stream, self.next_stream + 2
        return stream_id

    def request_frames(self, path: str, message: bytes | None = b"", stream_id: int | None = None, *,
                       end_stream: bool = True, **header_options) -> tuple[int, list]:
        stream_id = stream_id or self.open_stream()
        return stream_id, request_frames(self.encoder, stream_id, path, message, end_stream, **header_options)

    def request(self, path: str, message: bytes | None = b"", **options) -> int:
        stream_id, frames = self.request_frames(path, message, **options)
        self.send_frames(*frames)
        return stream_id

    def ping(self, payload: bytes = b"\0" * 8):
        self.send_frames(PingFrame(0, payload))

    def window_update(self, stream_id: int, increment: int):
        self.send_frames(WindowUpdateFrame(stream_id, increment))

    def reset(self, stream_id: int, code: int = CANCEL):
        self.send_frames(RstStreamFrame(stream_id, code))

    # --- reading ---

    def _fill(self, timeout: float):
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(1 << 20)
        except TimeoutError:
            raise AssertionError("the server sent nothing more within the timeout") from None
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise Closed()
        self.buffer += chunk
        self.received += chunk

    def read_frame(self, timeout: float = TIMEOUT_SECONDS) -> Frame:
        """The server's next frame (AssertionError on timeout, Closed on EOF)."""
        while len(self.buffer) < 9:
            self._fill(timeout)
        length = int.from_bytes(self.buffer[:3], "big")
        while len(self.buffer) < 9 + length:
            self._fill(timeout)
        header = self.buffer[:9]
        frame = Frame(header[3], header[4], int.from_bytes(header[5:9], "big") & 0x7FFFFFFF,
                      bytes(self.buffer[9:9 + length]))
        del self.buffer[:9 + length]
        if frame.kind == HEADERS:
            assert frame.flags & END_HEADERS, "the edge's header blocks fit one frame"
            frame.headers = [(n.decode(), v.decode()) for n, v in self.decoder.decode(frame.payload, raw=True)]
        return frame

    def read_until(self, predicate: Callable[[Frame], bool], timeout: float = TIMEOUT_SECONDS) -> list[Frame]:
        """Frames up to and including the first that satisfies predicate."""
        frames = []
        deadline = time.monotonic() + timeout
        while True:
            frame = self.read_frame(max(0.01, deadline - time.monotonic()))
            frames.append(frame)
            if predicate(frame):
                return frames

    def read_to_close(self, timeout: float = TIMEOUT_SECONDS) -> list[Frame]:
        """Every frame until the server closes the connection."""
        frames = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                frames.append(self.read_frame(max(0.01, deadline - time.monotonic())))
        except Closed:
            return frames

    def expect_goaway(self, code: int, timeout: float = TIMEOUT_SECONDS) -> Frame:
        """The connection ends with GOAWAY `code`, then the server closes it."""
        frames = self.read_to_close(timeout)
        goaways = [f for f in frames if f.kind == GOAWAY]
        assert goaways, f"no GOAWAY before the close; frames: {frames}"
        assert [g.error_code for g in goaways] == [code], goaways
        assert frames[-1].kind == GOAWAY, "nothing follows the GOAWAY"
        return goaways[0]

    def response(self, stream_id: int, timeout: float = TIMEOUT_SECONDS) -> Response:
        """Read until stream_id ends (END_STREAM or RST_STREAM); what it got."""
        frames = self.read_until(lambda f: f.stream == stream_id and (f.kind == RST_STREAM or (
            f.kind in (HEADERS, DATA) and f.flags & END_STREAM)), timeout)
        return Response.from_frames([f for f in frames if f.stream == stream_id])

    def close(self):
        self.sock.close()


class Response:
    """What one stream got: headers, body, trailers, or a reset."""

    def __init__(self):
        self.headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.data = b""
        self.reset: int | None = None
        self.ended = False
        self.data_frames: list[int] = []

    @classmethod
    def from_frames(cls, frames: list[Frame]) -> Response:
        response = cls()
        for frame in frames:
            response.add(frame.kind, frame.flags, frame.payload, frame.headers)
        return response

    def add(self, kind, flags, payload=b"", headers=None):
        assert not self.ended, "a frame after the stream ended"
        if kind == HEADERS:
            target = self.headers if not self.headers else self.trailers
            assert not self.trailers, "a third header block"
            target.update(headers)
            if target is self.headers and "grpc-status" in target:  # Trailers-Only
                self.trailers = dict(target)
        elif kind == DATA:
            assert self.headers, "DATA before the response headers"
            self.data += payload
            self.data_frames.append(len(payload))
        elif kind == RST_STREAM:
            self.reset = int.from_bytes(payload[:4], "big")
        if kind == RST_STREAM or flags & END_STREAM:
            self.ended = True

    @property
    def status(self) -> int | None:
        return int(self.trailers["grpc-status"]) if "grpc-status" in self.trailers else None

    @property
    def message(self) -> str:
        from urllib.parse import unquote
        return unquote(self.trailers.get("grpc-message", ""))

    @property
    def messages(self) -> list[bytes]:
        return grpc_messages(self.data)


class H2Client:
    """The reference twin: h2's client connection over a socket."""

    def __init__(self, port: int, settings: dict | None = None, tls: ssl.SSLContext | None = None):
        self.sock = connect(port, tls=tls)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        if settings:
            self.conn.update_settings(settings)
        self.responses: dict[int, Response] = {}
        self.order: list[int] = []  # streams in the order they ended
        self.events: list = []
        self.remote_settings_seen = False
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.flush()

    def flush(self):
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def call(self, path: str, message: bytes = b"", *, end_stream: bool = True, **header_options) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        self.start(stream_id, path, **header_options)
        self.conn.send_data(stream_id, grpc_message(message), end_stream=end_stream)
        self.flush()
        return stream_id

    def start(self, stream_id: int, path: str, **header_options):
        self.conn.send_headers(stream_id, request_headers(path, **header_options))
        self.responses[stream_id] = Response()

    def reset(self, stream_id: int, code: int = CANCEL):
        self.conn.reset_stream(stream_id, code)
        self.flush()

    def receive(self, timeout: float = TIMEOUT_SECONDS):
        """Read once from the socket and process what came; Closed on EOF."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(1 << 20)
        except TimeoutError:
            raise AssertionError("the server sent nothing more within the timeout") from None
        if not data:
            self.closed = True
            raise Closed()
        for event in self.conn.receive_data(data):
            self.events.append(event)
            self._on(event)
        self.flush()

    def _on(self, event):
        if isinstance(event, h2.events.RemoteSettingsChanged):
            self.remote_settings_seen = True
        elif isinstance(event, h2.events.ResponseReceived):
            self.responses[event.stream_id].add(HEADERS, 0, headers=event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            self.responses[event.stream_id].add(HEADERS, 0, headers=event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self.responses[event.stream_id].add(DATA, 0, event.data)
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            self.responses[event.stream_id].ended = True
            self.order.append(event.stream_id)
        elif isinstance(event, h2.events.StreamReset):
            self.responses[event.stream_id].reset = event.error_code
            self.responses[event.stream_id].ended = True
            self.order.append(event.stream_id)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event

    def wait(self, predicate: Callable[[], bool], timeout: float = TIMEOUT_SECONDS):
        deadline = time.monotonic() + timeout
        while not predicate():
            self.receive(max(0.01, deadline - time.monotonic()))

    def response(self, stream_id: int, timeout: float = TIMEOUT_SECONDS) -> Response:
        self.wait(lambda: self.responses[stream_id].ended, timeout)
        return self.responses[stream_id]

    def close(self):
        self.sock.close()


def request_frames(encoder: hpack.Encoder, stream_id: int, path: str, message: bytes | None = b"",
                   end_stream: bool = True, **header_options) -> list:
    """A gRPC request's frames: HEADERS, then the message (if any) as one DATA frame; END_STREAM on the last
    if `end_stream`."""
    block = encoder.encode(request_headers(path, **header_options))
    ends_here = ["END_STREAM"] if message is None and end_stream else []
    frames = [HeadersFrame(stream_id, block, flags=["END_HEADERS"] + ends_here)]
    if message is not None:
        frames.append(DataFrame(stream_id, grpc_message(message), flags=["END_STREAM"] if end_stream else []))
    return frames


def header_frames(stream_id: int, block: bytes, end_stream: bool = False, fragment: int = 16384) -> list:
    """A header block as HEADERS and CONTINUATION frames of at most `fragment` bytes."""
    parts = [block[i:i + fragment] for i in range(0, len(block), fragment)] or [b""]
    frames = []
    for i, part in enumerate(parts):
        flags = (["END_HEADERS"] if i == len(parts) - 1 else [])
        if i == 0:
            frames.append(HeadersFrame(stream_id, part, flags=flags + (["END_STREAM"] if end_stream else [])))
        else:
            frames.append(ContinuationFrame(stream_id, part, flags=flags))
    return frames
