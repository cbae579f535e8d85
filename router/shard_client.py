"""The router's side of the internal API: connections to replicas, and a group's leader.

`ShardConnection` is one batch connection to one replica (tessera/api/internal_stream.py).
Requests queued during one turn of the event loop go out together in one frame (a
frame carries a batch, never one request), and answers come back by id, in whatever
order the replica finishes them. `ReplicaWatch` is one Watch stream to one replica.

`GroupClient` knows a group's members and which one leads. It sends writes
and linearizable reads to the leader, follows "not leader" hints, and retries
what is safe to retry: anything not yet proposed (not leader, no leader, a
replica that could not be reached before the request left), and reads. A
write whose outcome is unknown (the connection broke after it was sent, or its
leader lost leadership while it waited) is never retried: the client gets
etcd's answer for that case.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable

from native import codec
from native.codec import varint
from tessera.api import errors
from tessera.api.internal_pb2 import ShardRequest, ShardResponse
from tessera.api.internal_stream import (
    HELLO_BATCH, HELLO_WATCH, FrameError, FrameReader, frame, frame_header, host_and_port, write_if_open,
)
from tessera.api.rpc_pb2 import WatchRequest

log = logging.getLogger("tessera.router")

# How long a request may spend finding a leader and being answered: etcd's
# request timeout (5 s) plus an election.
REQUEST_TIMEOUT_SECONDS = 7.0
RETRY_PAUSE_SECONDS = 0.05
# The least time between two sweeps of a connection's requests for those past their deadline
# (how late one may time out while others keep arriving).
SWEEP_SECONDS = 0.1


class ReplicaUnreachable(Exception):
    """The connection to a replica failed. `sent`: whether the request may have reached it."""

    def __init__(self, address: str, sent: bool, detail: str):
        super().__init__(f"{address}: {detail}")
        self.sent = sent


class _Waiting:
    """A request sent or queued: who to tell of its outcome, and by when."""

    __slots__ = ("on_outcome", "context", "deadline", "sent")

    def __init__(self, on_outcome: Callable[[object, object], None], context: object, deadline: float):
        self.on_outcome = on_outcome
        self.context = context
        self.deadline = deadline
        self.sent = False


_ID_TAG = b"\x08"        # ShardRequest.id, field 1, varint
_REQUESTS_TAG = b"\x0a"  # ShardRequestBatch.requests, field 1, length-delimited


def _settle(future: asyncio.Future, outcome: object) -> None:
    if not future.done():
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(ShardResponse.FromString(outcome))


class _Framed(asyncio.Protocol):
    """A client connection's frames, handed to its owner; the owner is told when it ends.

    The hello goes out as the connection is made, before anything the owner writes: the
    owner may write as soon as `transport` is set, before its connect call has returned.
    """

    def __init__(self, hello: bytes, on_frames: Callable[[list[bytes]], None],
                 on_lost: Callable[[_Framed, str], None]):
        self.hello = hello
        self.on_frames = on_frames
        self.on_lost = on_lost
        self.transport: asyncio.Transport | None = None
        self.writable = True
        self.on_writable: Callable[[], None] | None = None
        self._reader = FrameReader()

    def connection_made(self, transport: asyncio.Transport) -> None:
        write_if_open(transport, frame(self.hello))
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except FrameError as error:
            self.transport.close()
            self.on_lost(self, str(error))
            return
        self.on_frames(frames)

    def connection_lost(self, error: Exception | None) -> None:
        self.on_lost(self, f"the connection closed: {error}" if error else "the connection closed")

    def pause_writing(self) -> None:
        self.writable = False

    def resume_writing(self) -> None:
        self.writable = True
        if self.on_writable is not None:
            self.on_writable()


class ShardConnection:
    """One batch connection to one replica; opened again on the next request after it fails.

    Requests are queued as encoded ShardRequest fields (everything but the id, which the
    connection assigns), and a batch is their concatenation: no protobuf object per request
    on the way out. Each request's outcome (its ShardResponse, or ReplicaUnreachable) goes to
    the callback it was submitted with; one sweep, not a timer per request, ends those that
    wait past their deadline. The sweep's timer is set for the earliest deadline and dropped
    when nothing waits, so an idle connection is never woken.
    """

    def __init__(self, address: str, ssl_context: ssl.SSLContext | None = None):
        """`ssl_context`: TLS to the replica (the peer TLS settings' client side), or None."""
        self.address = address
        self.ssl_context = ssl_context
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiting] = {}
        self._outbox: list[tuple[int, bytes]] = []
        self._connection: _Framed | None = None  # open, or being opened
        self._flush_due = False
        self._sweep_timer: asyncio.TimerHandle | None = None

    async def request(self, request: ShardRequest, timeout: float) -> ShardResponse:
        """Send one request and wait for its answer; ReplicaUnreachable if there is none."""
        future = asyncio.get_running_loop().create_future()
        request_id = self.submit(request.SerializeToString(), _settle, future, timeout)
        try:
            return await future
        finally:
            self._waiting.pop(request_id, None)  # a caller that gave up: its request is not sent

    def submit(self, fields: bytes, on_outcome: Callable[[object, object], None], context: object,
               timeout: float = REQUEST_TIMEOUT_SECONDS) -> int:
        """Queue a request, `fields` its encoded ShardRequest without the id; returns the id.

        `on_outcome(context, outcome)` is called once, with the encoded ShardResponse (unparsed: the
        fast path passes its answer on as it came) or a ReplicaUnreachable.
        """
        loop = asyncio.get_running_loop()
        if self._connection is None:
            self._open(loop)
        request_id = next(self._ids)
        deadline = loop.time() + timeout
        self._waiting[request_id] = _Waiting(on_outcome, context, deadline)
        self._outbox.append((request_id, fields))
        if not self._flush_due:
            self._flush_due = True
            loop.call_soon(self._flush)
        timer = self._sweep_timer
        if timer is None or deadline < timer.when():
            if timer is not None:
                timer.cancel()
            self._sweep_timer = loop.call_at(deadline, self._sweep)
        return request_id

    def _sweep(self) -> None:
        """End the requests past their deadline; again at the next deadline while any wait."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting_for = self._waiting
        for request_id in [request_id for request_id, waiting in waiting_for.items() if waiting.deadline <= now]:
            waiting = waiting_for.pop(request_id)
            waiting.on_outcome(waiting.context, ReplicaUnreachable(self.address, True, "no answer in time"))
        self._sweep_timer = None
        if waiting_for:
            next_deadline = min(waiting.deadline for waiting in waiting_for.values())
            self._sweep_timer = loop.call_at(max(next_deadline, now + SWEEP_SECONDS), self._sweep)

    def _stop_sweeping(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None

    def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        connection = _Framed(HELLO_BATCH, self._answered, self._lost)
        connection.on_writable = self._flush
        self._connection = connection
        loop.create_task(self._connect(loop, connection))

    async def _connect(self, loop: asyncio.AbstractEventLoop, connection: _Framed) -> None:
        host, port = host_and_port(self.address)
        try:
            await loop.create_connection(lambda: connection, host, port, ssl=self.ssl_context)
        except OSError as error:  # ssl.SSLError too: a refused certificate
            self._lost(connection, f"could not connect: {error}")
            return
        if connection is not self._connection:
            connection.transport.close()  # closed while it was being opened
            return
        self._flush()

    def _flush(self) -> None:
        """Send what is queued as one batch, once the connection is up and takes more."""
        self._flush_due = False
        connection = self._connection
        if connection is None or connection.transport is None or not connection.writable or not self._outbox:
            return  # the connection's opening or resume_writing flushes again
        queued, self._outbox = self._outbox, []
        parts = []
        for request_id, fields in queued:
            waiting = self._waiting.get(request_id)
            if waiting is None:
                continue  # its caller gave up before it left
            waiting.sent = True
            request = fields + _ID_TAG + varint(request_id)  # last: a field given twice takes its last value
            parts.append(_REQUESTS_TAG + varint(len(request)) + request)
        if parts:
            batch = b"".join(parts)
            write_if_open(connection.transport, frame_header(len(batch)) + batch)

    def _answered(self, frames: list[bytes]) -> None:
        waiting_for = self._waiting
        for data in frames:
            for response in codec.repeated_messages(data):
                waiting = waiting_for.pop(codec.response_id(response), None)
                if waiting is not None:
                    waiting.on_outcome(waiting.context, response)
        if not waiting_for:
            self._stop_sweeping()

    def _lost(self, connection: _Framed, detail: str) -> None:
        if connection is not self._connection:
            return  # an older connection, already given up
        self._connection = None
        self._outbox.clear()
        self._stop_sweeping()
        failed, self._waiting = self._waiting, {}
        for waiting in failed.values():
            waiting.on_outcome(waiting.context, ReplicaUnreachable(self.address, waiting.sent, detail))

    async def close(self) -> None:
        connection = self._connection
        if connection is not None:
            if connection.transport is not None:
                connection.transport.close()
            self._lost(connection, "the connection closed")
        self._stop_sweeping()


class ReplicaWatch:
    """One Watch stream to one replica: `send` requests (queued until connected), read `responses()`,
    encoded WatchResponses."""

    def __init__(self, address: str, ssl_context: ssl.SSLContext | None = None):
        self.address = address
        self.ssl_context = ssl_context
        self._connection: _Framed | None = None
        self._unsent: list[bytes] | None = []  # requests sent before the connection was up; None once they left
        self._responses: asyncio.Queue[bytes | str] = asyncio.Queue()

    def send(self, request: WatchRequest) -> None:
        data = frame(request.SerializeToString())
        if self._unsent is None:
            write_if_open(self._connection.transport, data)
        else:
            self._unsent.append(data)

    async def responses(self) -> AsyncIterator[bytes]:
        """The replica's answers, then ReplicaUnreachable saying why the stream ended."""
        self._connection = _Framed(HELLO_WATCH, self._received, self._lost)
        host, port = host_and_port(self.address)
        try:
            await asyncio.get_running_loop().create_connection(lambda: self._connection, host, port,
                                                               ssl=self.ssl_context)
        except OSError as error:
            raise ReplicaUnreachable(self.address, False, f"could not connect: {error}") from None
        write_if_open(self._connection.transport, b"".join(self._unsent))
        self._unsent = None
        try:
            while isinstance(response := await self._responses.get(), bytes):
                yield response
        finally:
            self.close()
        raise ReplicaUnreachable(self.address, True, response)

    def _received(self, frames: list[bytes]) -> None:
        for data in frames:
            self._responses.put_nowait(data)

    def _lost(self, connection: _Framed, detail: str) -> None:
        self._responses.put_nowait(detail)

    def close(self) -> None:
        if self._connection is not None and self._connection.transport is not None:
            self._connection.transport.close()


class GroupClient:
    """One group: its members' connections, the leader as last known, and safe retries."""

    def __init__(self, group_id: int, members: dict[int, str], ssl_context: ssl.SSLContext | None = None):
        """`ssl_context`: TLS to every member (the peer TLS settings' client side), or None."""
        self.group_id = group_id
        self.ssl_context = ssl_context
        self.leader_id = 0
        self.term = 0
        self.leaderless_since: float | None = None  # loop time since which no leader was seen
        self._connections: dict[int, ShardConnection] = {}
        self._read_turns = 0  # serializable reads go to member_ids[_read_turns % members]
        self._read_member: int | None = None  # where this turn of the loop sends them
        self.set_members(members)

    def set_members(self, members: dict[int, str]) -> None:
        """Member id -> internal API address; connections to members that left are dropped."""
        for member_id in set(self._connections) - set(members):
            asyncio.get_running_loop().create_task(self._connections.pop(member_id).close())
        for member_id, address in members.items():
            known = self._connections.get(member_id)
            if known is None or known.address != address:
                self._connections[member_id] = ShardConnection(address, self.ssl_context)
        if self.leader_id not in self._connections:
            self.leader_id = 0
        self._read_member = None

    @property
    def member_ids(self) -> list[int]:
        return sorted(self._connections)

    def connection(self, member_id: int) -> ShardConnection:
        return self._connections[member_id]

    def read_member(self) -> int:
        """Where a serializable read goes: one member for every read of a turn of the loop, the
        next member the next turn. The group shares the reads, and each replica gets a turn's
        reads as one batch (one wake-up, one read, one write) rather than a third of them."""
        if self._read_member is None:
            members = self.member_ids
            self._read_turns += 1
            self._read_member = members[self._read_turns % len(members)]
            asyncio.get_running_loop().call_soon(self._end_read_turn)
        return self._read_member

    def _end_read_turn(self) -> None:
        self._read_member = None

    async def call(self, request: ShardRequest, write: bool, any_member: bool = False,
                   timeout: float = REQUEST_TIMEOUT_SECONDS) -> ShardResponse:
        """The group's answer; etcd's error for it raised as an EtcdError.

        `write`: the request changes state, so an unknown outcome is not retried.
        `any_member`: any replica may answer: a serializable read goes to one chosen at
        random, so reads spread over the group; anything else (a status) to the leader first,
        whose view is the freshest.
        """
        spread = any_member and request.HasField("range")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        tried: set[int] = set()
        hints_followed = 0
        last_error: errors.EtcdError = errors.NoLeader()
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise last_error
            member_id = self._choose(tried, spread)
            tried.add(member_id)
            try:
                response = await self._connections[member_id].request(request, remaining)
            except ReplicaUnreachable as unreachable:
                if member_id == self.leader_id:
                    self.leader_id = 0
                if write and unreachable.sent:
                    raise errors.RequestTimeout() from None  # it may be applied: never send it twice
                last_error = errors.RequestTimeout()
                await self._pause_if_all_tried(tried)
                continue
            if response.WhichOneof("response") != "error":
                if not any_member:
                    self.leader_id = member_id
                return response
            error = response.error
            if error.leader_id and error.leader_id in self._connections:
                self.leader_id = error.leader_id  # "not leader" names who is
                hints_followed += 1
                if hints_followed > len(self._connections):  # replicas disagree: let an election settle
                    hints_followed = 0
                    await asyncio.sleep(RETRY_PAUSE_SECONDS)
                tried.discard(error.leader_id)
                continue
            reported = errors.from_report(error.code, error.message)
            if isinstance(reported, (errors.NotLeader, errors.NoLeader)):
                if member_id == self.leader_id:
                    self.leader_id = 0
                last_error = errors.NoLeader()
                await self._pause_if_all_tried(tried)
                continue
            if not write and isinstance(reported, (errors.LeaderChanged, errors.RequestTimeout)):
                last_error = reported
                await self._pause_if_all_tried(tried)
                continue
            raise reported

    def _choose(self, tried: set[int], spread: bool) -> int:
        if self.leader_id and self.leader_id not in tried and not spread:
            return self.leader_id
        untried = [member_id for member_id in self._connections if member_id not in tried]
        return random.choice(untried or list(self._connections))

    async def _pause_if_all_tried(self, tried: set[int]) -> None:
        """After asking every member once, wait a little before going round again."""
        if len(tried) >= len(self._connections):
            tried.clear()
            await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def close(self) -> None:
        await asyncio.gather(*(connection.close() for connection in self._connections.values()))
