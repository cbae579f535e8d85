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
from dataclasses import dataclass

import grpc

from tessera.api import errors
from tessera.api.internal_pb2 import ShardRequest, ShardRequestBatch, ShardResponse, ShardResponseBatch

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


class ReplicaUnreachable(Exception):
    """The stream to a replica failed. `sent`: whether the request may have reached it."""

    def __init__(self, address: str, sent: bool, detail: str):
        super().__init__(f"{address}: {detail}")
        self.sent = sent


@dataclass
class _Waiting:
    future: asyncio.Future
    sent: bool = False


class ShardConnection:
    """One internal-API stream to one replica; reopened on the next request after it fails."""

    def __init__(self, address: str):
        self.address = address
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._ids = itertools.count(1)
        self._waiting: dict[int, _Waiting] = {}
        self._outbox: list[tuple[int, ShardRequest]] = []
        self._outbox_ready = asyncio.Event()
        self._stream_number = 0  # the stream now open (or the next); older ones stop sending
        self._reader: asyncio.Task | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        return self._channel

    async def request(self, request: ShardRequest, timeout: float) -> ShardResponse:
        """Send one request (under an id of this stream's) and wait for its answer."""
        if self._reader is None or self._reader.done():
            self._open()
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        waiting = _Waiting(loop.create_future())
        self._waiting[request_id] = waiting
        self._outbox.append((request_id, request))
        self._outbox_ready.set()
        # A timer on the answer's future, not wait_for: no task per request on this hot path.
        timer = loop.call_later(timeout, self._give_up, waiting.future)
        try:
            return await waiting.future
        finally:
            timer.cancel()
            self._waiting.pop(request_id, None)

    def _give_up(self, future: asyncio.Future) -> None:
        if not future.done():
            future.set_exception(ReplicaUnreachable(self.address, True, "no answer in time"))

    def _open(self) -> None:
        self._stream_number += 1
        call = self._channel.stream_stream(
            BATCH_METHOD,
            request_serializer=ShardRequestBatch.SerializeToString,
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
            batch = ShardRequestBatch()
            for request_id, request in queued:
                waiting = self._waiting.get(request_id)
                if waiting is None:
                    continue  # its caller gave up before it left
                waiting.sent = True
                sent = batch.requests.add()
                sent.CopyFrom(request)
                sent.id = request_id
            if batch.requests:
                yield batch

    async def _read(self, call) -> None:
        try:
            async for batch in call:
                for response in batch.responses:
                    waiting = self._waiting.get(response.id)
                    if waiting is not None and not waiting.future.done():
                        waiting.future.set_result(response)
            detail = "the stream ended"
        except grpc.aio.AioRpcError as error:
            detail = f"{error.code().name}: {error.details()}"
        except asyncio.CancelledError:
            call.cancel()
            detail = "the connection closed"
        self._outbox.clear()
        self._stream_number += 1
        self._outbox_ready.set()  # lets the failed stream's request generator end
        for waiting in self._waiting.values():
            if not waiting.future.done():
                waiting.future.set_exception(ReplicaUnreachable(self.address, waiting.sent, detail))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
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
