"""The router's client port: the native HTTP/2 edge (native/edge.pyx) driven by the event loop.

The edge's epoll fd sits in the event loop. When it is readable, one
`poll()` returns every call and stream message the sockets brought, and
this module starts each call on its method (router/rpc.py): a task per
call, its answer queued on the edge when it is ready. Queued answers are
written by one `flush()` per turn of the loop, however many calls finished
in it. gRPC framing, HTTP/2, flow control and hostile peers are the edge's
business; this module only maps calls to handlers and errors to statuses.

Streams: request messages go into the handler's request iterator; answers
go out as the handler yields them. A stream whose answers pile up behind
flow control (a client that does not read its watch) makes its handler
wait (STREAM_QUEUED_HIGH_BYTES) until the client reads.

An HTTP/1 connection on the same port (the JSON gateway, /metrics, /health,
/version: etcd serves them all on its client port) is handed to
`serve_http1` with the bytes the edge already read from it.

With `tls`, the edge serves TLS itself (native/src/tls.c), and each call's
`client_common_name` is that of the client certificate its connection
presented. An HTTP/1 connection over TLS is handed over the same way: its fd
is then a plaintext socket the edge relays through the TLS connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence

from native.edge import CALL, CANCEL, HALF_CLOSE, HTTP1, MESSAGE, OPEN, WRITABLE, Edge
from router.rpc import UNARY, Call, Method, unexpected
from tessera.api import errors
from tessera.api.tls import TLSFiles

log = logging.getLogger("tessera.router")

# A stream's answers may queue this much behind flow control before its handler waits, and it
# resumes once the queue is down to the low mark.
STREAM_QUEUED_HIGH_BYTES = 1 << 20
STREAM_QUEUED_LOW_BYTES = 256 << 10
# How often, while any client is connected, calls past their grpc-timeout are ended
# (DEADLINE_EXCEEDED) and stalled or half-open connections dropped.
EXPIRE_INTERVAL_SECONDS = 0.1
# Request headers handlers may read: clientv3's WithRequireLeader, and auth tokens.
METADATA_NAMES = ("hasleader", "token", "authorization")
_STATUS_CODES = errors.STATUS_CODES


class _Requests:
    """A bidirectional stream's request messages, as an async iterator."""

    __slots__ = ("_items", "_waiter", "_ended")

    def __init__(self):
        self._items: collections.deque[bytes] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._ended = False

    def put(self, data: bytes) -> None:
        self._items.append(data)
        self._wake()

    def end(self) -> None:
        self._ended = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        while not self._items:
            if self._ended:
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return self._items.popleft()


class _FastCall:
    """A unary call on its method's fast path: router/core.py's Responder."""

    __slots__ = ("front_end", "method", "conn", "stream", "data", "metadata", "group", "generation")

    @property
    def client_common_name(self) -> str | None:
        """As Call.client_common_name."""
        return self.front_end.client_common_name(self.conn)

    def __init__(self, front_end: FrontEnd, method: Method, conn: int, stream: int, data: bytes, metadata):
        self.front_end = front_end
        self.method = method
        self.conn = conn
        self.stream = stream
        self.data = data
        self.metadata = metadata

    def reply(self, answer: bytes) -> None:
        self.front_end._edge.reply(self.conn, self.stream, answer)
        self.front_end._schedule_flush()
        if self.method.count is not None:
            self.method.count("OK")

    def fail(self, error: errors.EtcdError) -> None:
        self.front_end._edge.finish(self.conn, self.stream, _STATUS_CODES.get(error.code, 2), error.message)
        self.front_end._schedule_flush()
        if self.method.count is not None:
            self.method.count(error.code)

    def fallback(self) -> None:
        self.front_end._start_unary(self.method, self.conn, self.stream, self.data, self.metadata)


class FrontEnd:
    """Serves `methods` on `listen` ("host:port") through the native edge."""

    def __init__(self, listen: str, methods: Sequence[Method], serve_http1: Callable[[socket.socket, bytes], None],
                 message_bytes_max: int, reuse_port: bool = False, tls: TLSFiles | None = None):
        """ValueError or OSError when `tls` names files that do not load."""
        host, _, port = listen.rpartition(":")
        self._edge = Edge(host, int(port), reuse_port=reuse_port, message_bytes_max=message_bytes_max)
        self._tls = tls is not None
        if tls is not None:
            try:
                self._edge.use_tls(tls.cert_file, tls.key_file, tls.trusted_ca_file, tls.client_cert_auth)
            except BaseException:
                self._edge.close()
                raise
        self._methods = list(methods)
        for method in self._methods:
            self._edge.add_method(method.path, method.kind)
        for name in METADATA_NAMES:
            self._edge.add_metadata_name(name)
        self._serve_http1 = serve_http1
        self._calls: dict[tuple[int, int], asyncio.Task] = {}
        self._requests: dict[tuple[int, int], _Requests] = {}
        self._writable: dict[tuple[int, int], asyncio.Future] = {}
        self._flush_scheduled = False
        self._drained: asyncio.Future | None = None  # stopping: set once no stream is open
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        return self._edge.port

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._edge.fileno(), self._on_readable)

    async def stop(self, grace_seconds: float) -> None:
        """GOAWAY to every client; calls in flight get `grace_seconds` to finish, then are dropped."""
        self._edge.goaway()
        self._drained = self._loop.create_future()
        self._flush()
        try:
            await asyncio.wait_for(self._drained, grace_seconds)
        except TimeoutError:
            pass  # watches and other long calls: ended below
        for task in list(self._calls.values()):
            task.cancel()
        await asyncio.gather(*self._calls.values(), return_exceptions=True)
        self._flush()
        self._loop.remove_reader(self._edge.fileno())
        if self._expiry is not None:
            self._expiry.cancel()
        self._edge.close()

    def client_common_name(self, conn: int) -> str | None:
        """The Common Name of the client certificate connection `conn` presented, or None."""
        return self._edge.peer_common_name(conn) if self._tls else None

    def _now_ms(self) -> int:
        return int(self._loop.time() * 1000)

    def _on_readable(self) -> None:
        self._handle(self._edge.poll(self._now_ms()))
        if self._expiry is None and self._edge.connections:  # a client came: its calls have deadlines
            self._expiry = self._loop.call_later(EXPIRE_INTERVAL_SECONDS, self._expire)

    def _expire(self) -> None:
        """End what is past its time; again later while any client is connected (an idle router sleeps)."""
        self._handle(self._edge.expire(self._now_ms()))
        self._expiry = (self._loop.call_later(EXPIRE_INTERVAL_SECONDS, self._expire)
                        if self._edge.connections else None)

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        events = self._edge.flush()
        if events:
            self._handle(events)
        if self._drained is not None and not self._drained.done() and not self._edge.open_streams:
            self._drained.set_result(None)

    def _handle(self, events: list) -> None:
        create_task = self._loop.create_task
        for kind, conn, stream, index, data, metadata in events:
            if kind == CALL:
                method = self._methods[index]
                if method.fast is not None:
                    method.fast(data, _FastCall(self, method, conn, stream, data, metadata))
                elif method.kind == UNARY:
                    self._start_unary(method, conn, stream, data, metadata)
                else:
                    self._calls[conn, stream] = create_task(self._server_stream(method, conn, stream, data, metadata))
            elif kind == MESSAGE:
                requests = self._requests.get((conn, stream))
                if requests is not None:
                    requests.put(data)
            elif kind == CANCEL:
                task = self._calls.pop((conn, stream), None)
                if task is not None:
                    task.cancel()
            elif kind == HALF_CLOSE:
                requests = self._requests.get((conn, stream))
                if requests is not None:
                    requests.end()
            elif kind == OPEN:
                requests = self._requests[conn, stream] = _Requests()
                self._calls[conn, stream] = create_task(
                    self._bidi_stream(self._methods[index], conn, stream, requests, metadata))
            elif kind == WRITABLE:
                waiter = self._writable.pop((conn, stream), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
            elif kind == HTTP1:
                self._serve_http1(socket.socket(fileno=stream), data)

    # --- calls ---------------------------------------------------------------------------

    def _start_unary(self, method: Method, conn: int, stream: int, data: bytes, metadata) -> None:
        self._calls[conn, stream] = self._loop.create_task(self._unary(method, conn, stream, data, metadata))

    async def _unary(self, method: Method, conn: int, stream: int, data: bytes, metadata) -> None:
        edge = self._edge
        try:
            answer = await method.handler(data, Call(metadata, self.client_common_name(conn)))
        except errors.EtcdError as error:
            edge.finish(conn, stream, _STATUS_CODES.get(error.code, 2), error.message)
        except asyncio.CancelledError:
            return  # the client went away, or its deadline passed: the edge has ended the call
        except Exception as error:
            log.exception("%s failed", method.path)
            failure = unexpected(error)
            edge.finish(conn, stream, _STATUS_CODES[failure.code], failure.message)
        else:
            edge.reply(conn, stream, answer)
        finally:
            self._calls.pop((conn, stream), None)
        self._schedule_flush()

    async def _server_stream(self, method: Method, conn: int, stream: int, data: bytes, metadata) -> None:
        await self._stream(method.path, conn, stream,
                           method.handler(data, Call(metadata, self.client_common_name(conn))))

    async def _bidi_stream(self, method: Method, conn: int, stream: int, requests: _Requests, metadata) -> None:
        try:
            await self._stream(method.path, conn, stream,
                               method.handler(requests, Call(metadata, self.client_common_name(conn))))
        finally:
            self._requests.pop((conn, stream), None)

    async def _stream(self, path: str, conn: int, stream: int, answers) -> None:
        """Send each answer the handler yields, then its status."""
        edge = self._edge
        code, message = 0, ""
        try:
            async with contextlib.aclosing(answers):
                async for answer in answers:
                    if edge.send(conn, stream, answer):
                        return  # the stream is gone
                    self._schedule_flush()
                    if edge.queued(conn, stream) > STREAM_QUEUED_HIGH_BYTES:
                        await self._writable_again(conn, stream)
        except errors.EtcdError as error:
            code, message = _STATUS_CODES.get(error.code, 2), error.message
        except asyncio.CancelledError:
            return
        except Exception as error:
            log.exception("%s failed", path)
            failure = unexpected(error)
            code, message = _STATUS_CODES[failure.code], failure.message
        finally:
            self._calls.pop((conn, stream), None)
            self._writable.pop((conn, stream), None)
        edge.finish(conn, stream, code, message)
        self._schedule_flush()

    async def _writable_again(self, conn: int, stream: int) -> None:
        waiter = self._writable[conn, stream] = self._loop.create_future()
        if self._edge.want_writable(conn, stream, STREAM_QUEUED_LOW_BYTES) == 0:
            await waiter
