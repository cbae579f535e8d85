"""The workload of a chaos run: clients that record every operation, and watchers that record every event.

Clients go through the router (etcd's v3 gRPC API): read, put of a unique value
(asking for the previous value), compare-and-set by Txn, delete, and a range
over a prefix. Replica readers, apart from them, read straight from one replica
of the key's group, serializably (the internal API, as the router's own
serializable path).
Keys are few (contention is the point) and live under two prefixes owned by
two different groups, so the router's revision floors are exercised across
groups too.

An answer is OK; an error that says the request was refused before it could
take effect (etcd's INVALID_ARGUMENT, FAILED_PRECONDITION, RESOURCE_EXHAUSTED,
NOT_FOUND, OUT_OF_RANGE, PERMISSION_DENIED) is FAILED; anything else (a
timeout, UNAVAILABLE, a broken connection) is UNKNOWN.

A watcher watches one prefix from the revision the run starts at; when its
stream breaks it resumes from the revision after the last event it saw.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass

import grpc

from router.shard_client import ReplicaUnreachable, ShardConnection
from tessera.api import rpc_pb2_grpc
from tessera.api.internal_pb2 import ShardRequest
from tessera.api.rpc_pb2 import (
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
    WatchCreateRequest,
    WatchRequest,
)
from tessera.chaos.history import (
    CAS,
    DELETE,
    FAILED,
    OK,
    PUT,
    RANGE,
    READ,
    UNKNOWN,
    History,
    Operation,
    WatchEvent,
    WatchLog,
)
from tessera.launcher import ROUTER_CHANNEL_OPTIONS

# Two prefixes on two groups of `tessera up`'s shard map: every other key -> group 1, pods -> group 2.
PREFIX_GROUPS = {"/chaos/": 1, "/registry/pods/chaos/": 2}
KEYS_PER_PREFIX = 4
# An operation's deadline: past it the outcome is unknown. Long enough to ride out a leader election.
OPERATION_SECONDS = 3.0
# A serializable read asks one replica, with no failover: a paused replica must not hold a client for long.
SERIALIZABLE_READ_SECONDS = 1.0
SERIALIZABLE = "serializable"  # a READ straight to one replica
# Weights of the operation kinds a client of the router picks from.
ROUTER_WEIGHTS = {READ: 30, PUT: 30, CAS: 22, DELETE: 6, RANGE: 12}
# Replica readers only read, serializably, from any replica: kept apart from the router's clients so that
# a paused replica holding one of them does not count against the router's availability.
REPLICA_READER_WEIGHTS = {SERIALIZABLE: 1}
# Local reads are cheap: unpaced, two readers would outnumber every other operation several times over.
REPLICA_READER_PAUSE_SECONDS = 0.02
FAILED_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND, grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.PERMISSION_DENIED,
})
UNKNOWN_BACKOFF_SECONDS = (0.1, 0.5)  # a client's pause after an operation with an unknown outcome
WATCH_RESUME_PAUSE_SECONDS = 0.2  # between a broken watch stream and its resumption
FINAL_CLIENT = -1  # the client id of the reads and markers after the run


def workload_keys() -> list[str]:
    return [f"{prefix}k{number}" for prefix in PREFIX_GROUPS for number in range(KEYS_PER_PREFIX)]


def prefix_of(key: str) -> str:
    return next(prefix for prefix in PREFIX_GROUPS if key.startswith(prefix))


def _text(value: bytes) -> str:
    return value.decode()


class Recorder:
    """Hands out operation ids and the run's clock (monotonic ns since the start)."""

    def __init__(self, history: History):
        self.history = history
        self.ids = itertools.count()
        self.started_ns = time.monotonic_ns()

    def now_ns(self) -> int:
        return time.monotonic_ns() - self.started_ns

    def invoke(self, client: int, kind: str, key: str, **fields) -> Operation:
        operation = Operation(id=next(self.ids), client=client, kind=kind, key=key, invoke_ns=self.now_ns(),
                              **fields)
        self.history.operations.append(operation)
        return operation

    def complete(self, operation: Operation, outcome: str, error: str = "") -> None:
        operation.complete_ns = self.now_ns()
        operation.outcome = outcome
        operation.error = error


class EtcdKV:
    """The router's KV and Watch services over one channel."""

    def __init__(self, endpoint: str):
        self.channel = grpc.aio.insecure_channel(endpoint, options=ROUTER_CHANNEL_OPTIONS)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


async def perform(recorder: Recorder, operation: Operation, call) -> None:
    """Run `call()` (which fills in the operation's results) and record its outcome."""
    try:
        await call()
    except grpc.aio.AioRpcError as error:
        outcome = FAILED if error.code() in FAILED_CODES else UNKNOWN
        recorder.complete(operation, outcome, f"{error.code().name}: {error.details()}")
        return
    except (asyncio.TimeoutError, ReplicaUnreachable) as error:
        recorder.complete(operation, UNKNOWN, f"{type(error).__name__}: {error}")
        return
    recorder.complete(operation, OK)


async def read(kv: EtcdKV, recorder: Recorder, client: int, key: str) -> Operation:
    operation = recorder.invoke(client, READ, key)

    async def call():
        answer = await kv.kv.Range(RangeRequest(key=key.encode()), timeout=OPERATION_SECONDS)
        operation.revision = answer.header.revision
        if answer.kvs:
            operation.found, operation.mod_revision = _text(answer.kvs[0].value), answer.kvs[0].mod_revision

    await perform(recorder, operation, call)
    return operation


async def put(kv: EtcdKV, recorder: Recorder, client: int, key: str, value: str) -> Operation:
    operation = recorder.invoke(client, PUT, key, value=value)

    async def call():
        answer = await kv.kv.Put(PutRequest(key=key.encode(), value=value.encode(), prev_kv=True),
                                 timeout=OPERATION_SECONDS)
        operation.revision = answer.header.revision
        operation.has_previous = True
        operation.previous = _text(answer.prev_kv.value) if answer.HasField("prev_kv") else None

    await perform(recorder, operation, call)
    return operation


async def compare_and_set(kv: EtcdKV, recorder: Recorder, client: int, key: str, expected: str | None,
                          value: str) -> Operation:
    operation = recorder.invoke(client, CAS, key, expected=expected, value=value)
    if expected is None:  # absent: never created (or deleted since)
        compare = Compare(key=key.encode(), target=Compare.CREATE, result=Compare.EQUAL, create_revision=0)
    else:
        compare = Compare(key=key.encode(), target=Compare.VALUE, result=Compare.EQUAL, value=expected.encode())
    request = TxnRequest(compare=[compare],
                         success=[RequestOp(request_put=PutRequest(key=key.encode(), value=value.encode()))])

    async def call():
        answer = await kv.kv.Txn(request, timeout=OPERATION_SECONDS)
        operation.revision = answer.header.revision
        operation.succeeded = answer.succeeded

    await perform(recorder, operation, call)
    return operation


async def delete(kv: EtcdKV, recorder: Recorder, client: int, key: str) -> Operation:
    operation = recorder.invoke(client, DELETE, key)

    async def call():
        answer = await kv.kv.DeleteRange(DeleteRangeRequest(key=key.encode()), timeout=OPERATION_SECONDS)
        operation.revision = answer.header.revision
        operation.deleted = answer.deleted

    await perform(recorder, operation, call)
    return operation


async def range_prefix(kv: EtcdKV, recorder: Recorder, client: int, prefix: str) -> Operation:
    operation = recorder.invoke(client, RANGE, prefix)
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)

    async def call():
        answer = await kv.kv.Range(RangeRequest(key=prefix.encode(), range_end=end.encode()),
                                   timeout=OPERATION_SECONDS)
        operation.revision = answer.header.revision
        operation.kvs = {_text(item.key): [_text(item.value), item.mod_revision] for item in answer.kvs}

    await perform(recorder, operation, call)
    return operation


async def serializable_read(connection: ShardConnection, recorder: Recorder, client: int, key: str) -> Operation:
    operation = recorder.invoke(client, READ, key, serializable=True)

    async def call():
        answer = await connection.request(
            ShardRequest(range=RangeRequest(key=key.encode(), serializable=True)), SERIALIZABLE_READ_SECONDS)
        if answer.WhichOneof("response") == "error":
            raise _ReplicaRefused(answer.error.code, answer.error.message)
        operation.revision = answer.range.header.revision
        if answer.range.kvs:
            item = answer.range.kvs[0]
            operation.found, operation.mod_revision = _text(item.value), item.mod_revision

    try:
        await perform(recorder, operation, call)
    except _ReplicaRefused as refused:
        recorder.complete(operation, FAILED, f"{refused.code}: {refused.message}")
    return operation


class _ReplicaRefused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code, self.message = code, message


@dataclass
class Client:
    """One workload client: its own channel to the router, its own random stream, unique values."""

    number: int
    kv: EtcdKV
    replicas: dict[int, list[ShardConnection]]  # group -> a connection to each replica
    rng: random.Random
    recorder: Recorder
    weights: dict[str, int]  # of the operation kinds it picks from
    pause_seconds: float = 0.0  # between operations
    sequence: int = 0

    def unique_value(self) -> str:
        self.sequence += 1
        return f"c{self.number}-{self.sequence}"

    def last_value_seen(self, key: str) -> str | None:
        """A plausible expected value for a CAS: the last value read or written there by any client
        (among the recent operations), so that some CAS succeed and some do not."""
        for operation in reversed(self.recorder.history.operations[-200:]):
            if operation.key == key and operation.ok:
                if operation.kind == READ and not operation.serializable:
                    return operation.found
                if operation.kind in (PUT, CAS) and operation.changed:
                    return operation.value
        return None

    async def step(self) -> str:
        """One operation; its outcome."""
        kind = self.rng.choices(list(self.weights), weights=list(self.weights.values()))[0]
        key = self.rng.choice(workload_keys())
        if kind == READ:
            operation = await read(self.kv, self.recorder, self.number, key)
        elif kind == PUT:
            operation = await put(self.kv, self.recorder, self.number, key, self.unique_value())
        elif kind == CAS:
            operation = await compare_and_set(self.kv, self.recorder, self.number, key,
                                              self.last_value_seen(key), self.unique_value())
        elif kind == DELETE:
            operation = await delete(self.kv, self.recorder, self.number, key)
        elif kind == RANGE:
            operation = await range_prefix(self.kv, self.recorder, self.number, prefix_of(key))
        else:  # SERIALIZABLE
            connection = self.rng.choice(self.replicas[PREFIX_GROUPS[prefix_of(key)]])
            operation = await serializable_read(connection, self.recorder, self.number, key)
        return operation.outcome

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if await self.step() == UNKNOWN:
                # As a real client backs off: an endpoint that is down must not turn into a flood of
                # unknown operations (each one multiplies the linearizability search).
                await asyncio.sleep(self.rng.uniform(*UNKNOWN_BACKOFF_SECONDS))
            elif self.pause_seconds:
                await asyncio.sleep(self.pause_seconds)


class Watcher:
    """Watches one prefix, from `start_revision` on, across broken streams; records into a WatchLog."""

    def __init__(self, number: int, endpoint: str, prefix: str, start_revision: int):
        self.endpoint = endpoint
        self.log = WatchLog(watcher=number, prefix=prefix, start_revision=start_revision,
                            covered_to=start_revision - 1)
        self.progress = asyncio.Event()  # set on each event: `wait_until` polls on it

    async def run(self, stop: asyncio.Event) -> None:
        end = self.log.prefix[:-1] + chr(ord(self.log.prefix[-1]) + 1)
        while not stop.is_set():
            kv = EtcdKV(self.endpoint)
            call = kv.watch.Watch()
            try:
                await call.write(WatchRequest(create_request=WatchCreateRequest(
                    key=self.log.prefix.encode(), range_end=end.encode(), start_revision=self.log.covered_to + 1)))
                while not stop.is_set():
                    answer = await call.read()
                    if answer is grpc.aio.EOF or answer.canceled:
                        break
                    for event in answer.events:
                        kind = "DELETE" if event.type == event.DELETE else "PUT"
                        self.log.events.append(WatchEvent(event.kv.mod_revision, _text(event.kv.key), kind,
                                                          _text(event.kv.value) if kind == "PUT" else None))
                        self.log.covered_to = max(self.log.covered_to, event.kv.mod_revision)
                    if answer.events:
                        self.progress.set()
            except grpc.aio.AioRpcError:
                pass
            finally:
                call.cancel()
                await kv.close()
            if not stop.is_set():
                self.log.reconnects += 1
                await asyncio.sleep(WATCH_RESUME_PAUSE_SECONDS)

    async def wait_until(self, revision: int, timeout: float) -> bool:
        """Whether the watcher saw everything up to `revision` within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.log.covered_to < revision:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), min(remaining, 0.5))
            except asyncio.TimeoutError:
                pass
        return True


async def change_log(endpoint: str, prefixes: list[str], up_to: dict[str, int], timeout: float) -> list[WatchEvent]:
    """Every committed change of the prefixes, from revision 1 up to each prefix's `up_to` revision
    (a marker written after the run), read by a watch: the ground truth the checkers compare with."""
    events: list[WatchEvent] = []
    for prefix in prefixes:
        watcher = Watcher(-1, endpoint, prefix, 1)
        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(watcher.run(stop))
        try:
            if not await watcher.wait_until(up_to[prefix], timeout):
                raise RuntimeError(f"the change log of {prefix} did not reach revision {up_to[prefix]} "
                                   f"in {timeout:g} s")
        finally:
            stop.set()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if watcher.log.reconnects:
            raise RuntimeError(f"the change log of {prefix} was read over a broken stream; read it again")
        events += watcher.log.events
    events.sort(key=lambda event: (event.revision, event.key))
    return events
