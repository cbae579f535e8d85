"""A replica's internal API: requests from routers turned into proposals, reads and answers.

Routers speak to a replica over connections of two kinds (tessera/api/internal_stream.py):
batch connections, batches of ShardRequests answered as they complete, and watch
connections, etcd's Watch protocol (shards/watch.py). Each request is served by the method
its kind's row in shards/requests.py names; the answer goes in the field the
row names, or is the error, in etcd's words.

The write path's common kinds take no task: a put, delete or txn is checked and
proposed as it is read (a put with a key and a value is read natively, and its
wire bytes become the raft entry), and answered from the driver's callback once
applied; a serializable read is answered at once. Everything else is served by
a task of its own, as it may wait.

A replica that is not the leader answers writes and linearizable reads with
"not leader" and the leader's address, without proposing. Serializable reads
are served by any replica from its own store.

Back-pressure as etcd: while committed minus applied exceeds
`max_pending_applies` (5,000), new writes get "too many requests"
(shards/raft_driver.py refuses the proposal).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Callable

from google.protobuf.message import DecodeError

from native import codec
from native.codec import varint

from shards.lease_host import LeaseHost
from shards.raft import Role
from shards.raft.messages import ConfChangeType
from shards.raft_driver import RaftDriver
from shards.requests import REQUEST_KINDS
from tessera.api import errors, validation
from tessera.api.internal_stream import (
    HELLO_BATCH, HELLO_WATCH, FrameError, FrameReader, frame, frame_header, write_if_open)
from tessera.api.internal_pb2 import (
    Error,
    LeaseKeysResponse,
    Member,
    ShardRequest,
    ShardResponse,
)
from tessera.api.rpc_pb2 import (
    AlarmType,
    DefragmentResponse,
    HashKVResponse,
    MoveLeaderResponse,
    RangeRequest,
    ResponseHeader,
    WatchRequest,
)

log = logging.getLogger("tessera.replica")

# Requests one batch connection may have in flight before the replica stops
# reading it: a router that floods is slowed, not buffered without bound.
STREAM_IN_FLIGHT_MAX = 10_000
# A learner may be promoted once it has this share of the leader's committed log (etcd's 90%).
LEARNER_READY_FRACTION = 0.9
# Checked before a write is proposed: etcd's answer to each invalid request.
_WRITE_CHECKS = {"put": validation.check_put, "delete_range": validation.check_delete, "txn": validation.check_txn}


def _refuse(puts: list[tuple[bytes, bytes, Callable[[object], None]]], error: errors.EtcdError) -> None:
    for _, _, on_outcome in puts:
        on_outcome(error)


class ShardService:
    def __init__(self, driver: RaftDriver, leases: LeaseHost | None):
        self.driver = driver
        self.store = driver.store
        self.leases = leases  # the meta group's lease host; None in a data group
        self._serve = {kind: getattr(self, row.serve) for kind, row in REQUEST_KINDS.items()}

    # --- the connections ------------------------------------------------------------

    def new_connection(self) -> asyncio.Protocol:
        """A protocol for one connection to the API port (tessera/api/internal_stream.py)."""
        return _Connection(self)

    async def outcome(self, request: ShardRequest, kind: str | None):
        """The answer to a request: its response message (or its bytes), None for a header alone, or an EtcdError."""
        try:
            if kind is None:
                raise errors.KeyNotFound()  # an empty request: etcd's answer to an empty op
            return await self._serve[kind](request)
        except errors.EtcdError as error:
            return error

    def encode_answer(self, request_id: int, kind: str | None, outcome) -> bytes:
        """A ShardResponse, encoded: the answer to request `request_id` of this kind."""
        if isinstance(outcome, errors.EtcdError):
            error = Error(code=outcome.code, message=outcome.message)
            if isinstance(outcome, errors.NotLeader):
                leader = self.driver.members.get(self.driver.leader_id)
                error.leader_id = self.driver.leader_id
                error.leader_address = leader.api if leader else ""
            return ShardResponse(id=request_id, error=error).SerializeToString()
        # None: the store answers the request with no message of its own, so a header does;
        # bytes: a response the store encoded (a plain put's).
        body = outcome if type(outcome) is bytes else (
            outcome if outcome is not None else self._header()).SerializeToString()
        # The response's fields, as protobuf lays them out: the id, then the answer's field.
        return (_RESPONSE_ID_TAG + varint(request_id) + _ANSWER_TAGS[REQUEST_KINDS[kind].answer]
                + varint(len(body)) + body)

    def submit_write(self, kind: str, message, encoded: bytes, on_outcome: Callable[[object], None]) -> None:
        """Propose a put, delete or txn as it arrives; `on_outcome` gets its outcome (see RaftDriver.submit).

        `message` is the kind's request, `encoded` the ShardRequest's bytes.
        """
        self._check_write(kind, message)
        self.driver.submit(kind, encoded, on_outcome)

    def submit_plain_puts(self, puts: list[tuple[bytes, bytes, Callable[[object], None]]]) -> None:
        """submit_write for plain puts read natively, (encoded, key, on_outcome) each, in one go: an
        error that refuses one (not the leader, too many pending, no space) refuses them all."""
        try:
            self.driver.check_leader()  # "not leader" comes before any complaint about a request, as etcd
        except errors.EtcdError as error:
            _refuse(puts, error)
            return
        valid = [put for put in puts if put[1]]
        if len(valid) < len(puts):  # a plain put's one check (validation.check_put)
            _refuse([put for put in puts if not put[1]], errors.EmptyKey())
        try:
            self.driver.submit_puts([(encoded, on_outcome) for encoded, _, on_outcome in valid])
        except errors.EtcdError as error:
            _refuse(valid, error)

    def _header(self) -> ResponseHeader:
        return ResponseHeader(revision=self.store.revision)

    # --- reads and writes ----------------------------------------------------------------

    async def range(self, request: ShardRequest):
        if request.range.serializable:
            return self.serializable_range(request)
        validation.check_range(request.range)
        return await self.driver.read(request)

    def serializable_range(self, request: ShardRequest):
        """A serializable read, from this replica's store, at once: the answer or the EtcdError."""
        try:
            validation.check_range(request.range)
        except errors.EtcdError as error:
            return error
        return self.driver.local_range(request)

    async def write(self, request: ShardRequest):
        kind = request.WhichOneof("request")
        self._check_write(kind, getattr(request, kind))
        outcome = await self.driver.propose(request)
        if kind == "compaction" and request.compaction.physical and not isinstance(outcome, errors.EtcdError):
            await self.driver.compaction_removed()  # etcd's physical compaction: answered once history is gone here
        return outcome

    def _check_write(self, kind: str, message) -> None:
        self.driver.check_leader()  # "not leader" comes before any complaint about the request, as etcd
        check = _WRITE_CHECKS.get(kind)
        if check is not None:
            check(message)

    async def lease_query(self, request: ShardRequest):
        if self.leases is None:
            self.driver.check_leader()
            raise errors.Reported("INVALID_ARGUMENT", f"tessera: group {self.driver.config.group_id} keeps no leases")
        return await self.leases.query(request)

    async def lease_keys(self, request: ShardRequest) -> LeaseKeysResponse:
        self.driver.check_leader()
        return LeaseKeysResponse(header=self._header(), keys=self.store.lease_keys(request.lease_keys))

    # --- membership and leadership ---------------------------------------------------------

    async def change_membership(self, request: ShardRequest):
        """Add, promote or remove a member (one change at a time), with etcd's checks and errors."""
        driver = self.driver
        driver.check_leader()
        kind = request.WhichOneof("request")
        status = driver.node.status()
        voters, learners = status.conf_state
        if kind == "member_add":
            member = request.member_add
            if member.id in voters or member.id in learners or member.id == 0:
                raise errors.MemberExist()
            if any(a.peer == member.peer_address for a in driver.members.values()):
                raise errors.PeerURLExist()
            if member.is_learner and learners:
                raise errors.TooManyLearners()  # etcd allows one learner
            change_type = ConfChangeType.ADD_LEARNER if member.is_learner else ConfChangeType.ADD_VOTER
            member_id, record = member.id, Member(id=member.id, peer_address=member.peer_address,
                                                  api_address=member.api_address, is_learner=member.is_learner)
        else:
            member_id = getattr(request, kind)
            if member_id not in voters and member_id not in learners:
                raise errors.MemberNotFound()
            addresses = driver.members[member_id]
            record = Member(id=member_id, peer_address=addresses.peer, api_address=addresses.api)
            if kind == "member_promote":
                if member_id not in learners:
                    raise errors.MemberNotLearner()
                progress = status.progress.get(member_id)
                if progress is None or progress.match < status.commit * LEARNER_READY_FRACTION:
                    raise errors.LearnerNotReady()
                change_type = ConfChangeType.ADD_VOTER
            else:
                change_type = ConfChangeType.REMOVE
        return await driver.propose_conf_change(change_type, member_id, record)

    async def member_list(self, request: ShardRequest):
        return self.driver.member_list()

    async def move_leader(self, request: ShardRequest):
        """Hand leadership to a caught-up voter (raft's TimeoutNow), as etcd's MoveLeader."""
        driver = self.driver
        driver.check_leader()
        target = request.move_leader.targetID
        if target == driver.config.member_id or target not in driver.node.status().conf_state.voters:
            raise errors.BadLeaderTransferee()
        if not await driver.transfer_leader(target):
            return errors.RequestTimeout()
        return MoveLeaderResponse(header=self._header())

    # --- maintenance -----------------------------------------------------------------------

    async def status(self, request: ShardRequest):
        return self.driver.status()

    async def hash_kv(self, request: ShardRequest) -> HashKVResponse:
        hash_value, compacted = self.store.hash_kv(request.hash_kv.revision)
        return HashKVResponse(header=self._header(), hash=hash_value, compact_revision=compacted)

    async def defragment(self, request: ShardRequest) -> DefragmentResponse:
        # As etcd: the member is busy while it rewrites its database (nothing else runs).
        self.store.defragment()
        return DefragmentResponse(header=self._header())

    async def health(self, serializable: bool, excluded_alarms: set[str]) -> tuple[bool, str]:
        """etcd's /health verdict and reason: an alarm, no leader, or a read that fails, in that order.

        The read is etcd's too: linearizable on the leader (it confirms a quorum
        still follows), local otherwise, since a follower's linearizable reads
        are the leader's to serve.
        """
        driver = self.driver
        if driver.role != Role.LEADER:
            driver.unquiesce()  # whether a leader is still there is the question
        for _, alarm in sorted(self.store.alarms):
            name = AlarmType.Name(alarm)
            if name not in excluded_alarms:
                return False, f"ALARM {name}"
        if not serializable and not driver.leader_id:
            return False, "RAFT NO LEADER"
        request = ShardRequest(range=RangeRequest(key=b"\0", keys_only=True, limit=1, serializable=serializable))
        if serializable or driver.role != Role.LEADER:
            outcome = driver.local_range(request)
        else:
            try:
                outcome = await driver.read(request)
            except errors.EtcdError as error:
                outcome = error
        if isinstance(outcome, errors.EtcdError):
            return False, f"RANGE ERROR:{outcome.message}"
        return True, ""


_RESPONSES_TAG = b"\x0a"  # ShardResponseBatch.responses, field 1, length-delimited
_RESPONSE_ID_TAG = b"\x08"  # ShardResponse.id, field 1, varint
# ShardResponse's answer fields: each one's tag, length-delimited.
_ANSWER_TAGS = {field.name: varint(field.number << 3 | 2) for field in ShardResponse.DESCRIPTOR.oneofs_by_name[
    "response"].fields}
# Writes proposed as soon as they are read, their answers sent from the driver's callback:
# no task per request on the write path's common kinds.
_SUBMITTED_KINDS = frozenset(("put", "delete_range", "txn"))


class _Connection(asyncio.Protocol):
    """One connection to the API port: its hello says whether it carries batches or a watch."""

    def __init__(self, service: ShardService):
        self.service = service
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._reader = FrameReader()
        self._on_frames = self._hello
        self._writable = asyncio.Event()
        self._writable.set()
        # a batch connection's state
        self._in_flight = 0
        self._answers: list[bytes] = []
        self._flush_due = False
        # a watch connection's state
        self._watch = None
        self._watch_writer: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
            if frames:
                self._on_frames(frames)
        except (FrameError, DecodeError, codec.CodecError) as error:
            log.warning("closing an API connection: %s", error)
            self.transport.close()

    def connection_lost(self, error: Exception | None) -> None:
        self.closed = True
        self._writable.set()
        if self._watch is not None:
            self._watch_writer.cancel()
            self.service.driver.watch_hub.close_stream(self._watch)

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    def _hello(self, frames: list[bytes]) -> None:
        hello, rest = frames[0], frames[1:]
        if hello == HELLO_BATCH:
            self._on_frames = self._requests
        elif hello == HELLO_WATCH:
            self._on_frames = self._watch_requests
            self._watch = self.service.driver.watch_hub.open_stream()
            self._watch_writer = asyncio.get_running_loop().create_task(self._write_watch_responses())
        else:
            raise FrameError(f"unknown stream {hello[:64]!r}")
        if rest:
            self._on_frames(rest)

    # --- a batch connection: requests served concurrently, answers batched per turn of the loop

    def _requests(self, frames: list[bytes]) -> None:
        loop = asyncio.get_running_loop()
        service = self.service
        puts: list[tuple[bytes, bytes, Callable[[object], None]]] = []  # plain puts, proposed together
        for data in frames:
            for encoded in codec.repeated_messages(data):
                self._in_flight += 1
                plain_put = codec.decode_plain_put(encoded)
                if plain_put is not None:  # the common case, read without protobuf
                    request_id, _, key, _ = plain_put
                    puts.append((encoded, key, functools.partial(self._answered, request_id, "put")))
                    continue
                if puts:  # proposed before what came after them
                    service.submit_plain_puts(puts)
                    puts = []
                request = ShardRequest.FromString(encoded)
                kind = request.WhichOneof("request")
                if kind == "range" and request.range.serializable:
                    self._answered(request.id, kind, service.serializable_range(request))
                    continue
                if kind not in _SUBMITTED_KINDS:
                    loop.create_task(self._answer(request, kind))
                    continue
                answered = functools.partial(self._answered, request.id, kind)
                try:
                    service.submit_write(kind, getattr(request, kind), encoded, answered)
                except errors.EtcdError as error:
                    answered(error)
        if puts:
            service.submit_plain_puts(puts)
        if self._in_flight >= STREAM_IN_FLIGHT_MAX:
            self.transport.pause_reading()

    async def _answer(self, request: ShardRequest, kind: str | None) -> None:
        try:
            outcome = await self.service.outcome(request, kind)
        except BaseException:
            self._in_flight -= 1
            raise
        self._answered(request.id, kind, outcome)

    def _answered(self, request_id: int, kind: str | None, outcome) -> None:
        self._in_flight -= 1
        if self.closed:
            return
        answer = self.service.encode_answer(request_id, kind, outcome)
        self._answers.append(_RESPONSES_TAG + varint(len(answer)) + answer)
        if not self._flush_due:
            self._flush_due = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        if self.closed:
            return
        batch = b"".join(self._answers)
        self._answers = []
        write_if_open(self.transport, frame_header(len(batch)) + batch)
        if self._in_flight < STREAM_IN_FLIGHT_MAX and not self.transport.is_reading():
            self.transport.resume_reading()

    # --- a watch connection

    def _watch_requests(self, frames: list[bytes]) -> None:
        for data in frames:
            self._watch.handle(WatchRequest.FromString(data))

    async def _write_watch_responses(self) -> None:
        hub, outbox = self.service.driver.watch_hub, self._watch.outbox
        while True:
            responses = [await outbox.get()]
            await self._writable.wait()  # the router reads slowly: the outbox fills and the hub holds back
            if self.closed:
                return
            while not outbox.empty():
                responses.append(outbox.get_nowait())
            write_if_open(self.transport, b"".join(frame(response) for response in responses))
            hub.wake_catch_up()  # the outbox is empty: a stream that fell behind may go on
