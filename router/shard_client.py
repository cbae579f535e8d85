"""The router's side of the internal API: streams to replicas, and a group's leader.

`ShardConnection` is one `/tessera.internal.Shard/Batch` stream to one
replica. Requests queued while a stream message is being sent go out together
in the next one (one stream message carries a batch, never one request), and
answers come back by id, in whatever order the replica finishes them.

`GroupClient` knows a group's members and which one leads. It sends writes
and linearizable reads to the leader, follows "not leader" hints, and retries
what is safe to retry: anything not yet proposed (not leader, no leader, a
replica that could not be reached before the request left), and reads. A
write whose outcome is unknown (the stream broke after it was sent, or its
leader lost leadership while it waited) is never retried: the client gets
etcd's answer for that case.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
from collections.abc import Callable

import grpc

from tessera.api import errors
from tessera.api.internal_pb2 import ShardRequest, ShardResponse, ShardResponseBatch

log = logging.getLogger("tessera.router")

BATCH_METHOD = "/tessera.internal.Shard/Batch"
WATCH_METHOD = "/tessera.internal.Shard/Watch"
CHANNEL_OPTIONS = [
    # Replicas may answer with big ranges and watch batches; the router decides what clients get.
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # A short reconnect backoff: a replica that was down a while is used again as soon as it serves.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]
# How long a request may spend finding a leader and being answered: etcd's
# request timeout (5 s) plus an election.
REQUEST_TIMEOUT_SECONDS = 7.0
RETRY_PAUSE_SECONDS = 0.05
# How often a connection looks for requests past their deadline (how late one may time out).
SWEEP_SECONDS = 0.1


class ReplicaUnreachable(Exception):
    """The stream to a replica failed. `sent`: whether the request may have reached it."""

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


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative integer."""
    if value < 0x80:
        return _SMALL_VARINTS[value]
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL_VARINTS = [bytes((value,)) for value in range(0x80)]
_ID_TAG = b"\x08"        # ShardRequest.id, field 1, varint
_REQUESTS_TAG = b"\x0a"  # ShardRequestBatch.requests, field 1, length-delimited


def _settle(future: asyncio.Future, outcome: object) -> None:
    if not future.done():
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


class ShardConnection:
    """One internal-API stream to one replica; reopened on the next request after it fails.

    Requests are queued as encoded ShardRequest fields (everything but the id, which the
    stream assigns), and a batch is their concatenation: no protobuf object per request on
    the way out. Each request's outcome (its ShardResponse, or ReplicaUnreachable) goes to
    the callback it was submitted with; one sweep, not a timer per request, ends those that
    wait past their deadline.
    """

    def __init__(self, address: str):
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiting] = {}
        self._outbox: list[tuple[int, bytes]] = []
        self._outbox_ready = asyncio.Event()
        self._stream_number = 0  # the stream now open (or the next); older ones stop sending
        self._reader: asyncio.Task | None = None
        self._sweep_timer: asyncio.TimerHandle | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

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

        `on_outcome(context, outcome)` is called once, with the ShardResponse or a ReplicaUnreachable.
        """
        if self._reader is None or self._reader.done():
            self._open()
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        self._waiting[request_id] = _Waiting(on_outcome, context, loop.time() + timeout)
        self._outbox.append((request_id, fields))
        self._outbox_ready.set()
        if self._sweep_timer is None:
            self._sweep_timer = loop.call_later(SWEEP_SECONDS, self._sweep)
        return request_id

    def _sweep(self) -> None:
        """End the requests past their deadline; again later while any wait."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        for request_id in [request_id for request_id, waiting in self._waiting.items() if waiting.deadline <= now]:
            waiting = self._waiting.pop(request_id)
            waiting.on_outcome(waiting.context, ReplicaUnreachable(self.address, True, "no answer in time"))
        self._sweep_timer = loop.call_later(SWEEP_SECONDS, self._sweep) if self._waiting else None

    def _open(self) -> None:
        self._stream_number += 1
        call = self._channel.stream_stream(
            BATCH_METHOD, request_serializer=None,  # the batches are encoded here
            response_deserializer=ShardResponseBatch.FromString,
        )(self._batches(self._stream_number))
        self._reader = asyncio.get_running_loop().create_task(self._read(call))

    async def _batches(self, stream_number: int):
        while True:
            await self._outbox_ready.wait()
            if stream_number != self._stream_number:
                return  # this stream failed; a newer one sends
            self._outbox_ready.clear()
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
                yield b"".join(parts)

    async def _read(self, call) -> None:
        try:
            async for batch in call:
                for response in batch.responses:
                    waiting = self._waiting.pop(response.id, None)
                    if waiting is not None:
                        waiting.on_outcome(waiting.context, response)
            detail = "the stream ended"
        except grpc.aio.AioRpcError as error:
            detail = f"{error.code().name}: {error.details()}"
        except asyncio.CancelledError:
            call.cancel()
            detail = "the connection closed"
        self._outbox.clear()
        self._stream_number += 1
        self._outbox_ready.set()  # lets the failed stream's request generator end
        failed, self._waiting = self._waiting, {}
        for waiting in failed.values():
            waiting.on_outcome(waiting.context, ReplicaUnreachable(self.address, waiting.sent, detail))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        await self._channel.close()


class GroupClient:
    """One group: its members' connections, the leader as last known, and safe retries."""

    def __init__(self, group_id: int, members: dict[int, str]):
        self.group_id = group_id
        self.leader_id = 0
        self.term = 0
        self.leaderless_since: float | None = None  # loop time since which no leader was seen
        self._connections: dict[int, ShardConnection] = {}
        self.set_members(members)

    def set_members(self, members: dict[int, str]) -> None:
        """Member id -> internal API address; connections to members that left are dropped."""
        for member_id in set(self._connections) - set(members):
            asyncio.get_running_loop().create_task(self._connections.pop(member_id).close())
        for member_id, address in members.items():
            known = self._connections.get(member_id)
            if known is None or known.address != address:
                self._connections[member_id] = ShardConnection(address)
        if self.leader_id not in self._connections:
            self.leader_id = 0

    @property
    def member_ids(self) -> list[int]:
        return sorted(self._connections)

    def connection(self, member_id: int) -> ShardConnection:
        return self._connections[member_id]

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
