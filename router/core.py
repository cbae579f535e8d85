"""The router's request path: etcd's KV semantics over the groups of the shard map.

A request that stays in one group goes to that group as it came. One that
crosses groups is cut at the map's boundaries, scattered, and merged the way
etcd would have answered it from one store (key order, sort, limit, count,
`more`).

Global revisions (ARCHITECTURE decision 3). `self.revision` is the highest
revision this router has seen a group reach. Every write carries
`floor = revision + 1`, so the group gives it a revision above everything
handed out before it was sent. A read at revision R of a group still below R
first raises that group to R through raft: nothing can then be written there
at or below R, so the read is repeatable. A read across groups at the latest
revision is pinned to `self.revision` in every group, which makes the merged
answer one consistent cut.

The common case without a coroutine: a Put, Range or Txn that stays in one
group, with nothing unusual about it, is parsed, routed, and queued on the
group leader's stream as bytes (`put_now`, `range_now`, `txn_now`), and its
answer is stamped and handed to the front end's responder from the stream's
callback: no task, no future, no timer of its own. Anything else (a lease, a
moving range, no known leader, a "not leader" answer, a replica not reached)
goes to the general path (`responder.fallback()`), which holds every rule; it
is taken only where the request cannot have been proposed, so nothing is
ever sent twice.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Iterable, Protocol

from google.protobuf.message import DecodeError

from native import codec, crc
from native.codec import varint
from router.shard_client import REQUEST_TIMEOUT_SECONDS, GroupClient, ReplicaUnreachable
from router.shard_map import ShardMap
from tessera.api import errors, validation
from tessera.api.ordering import effective_sort, sort_results
from tessera.api.internal_pb2 import ShardRequest, ShardResponse, StatusResponse as GroupStatus
from tessera.api.rpc_pb2 import (
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    HashKVRequest,
    HashKVResponse,
    HashRequest,
    HashResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    ResponseHeader,
    TxnRequest,
    TxnResponse,
)

log = logging.getLogger("tessera.router")

MAX_REQUEST_BYTES = 1536 * 1024  # etcd's --max-request-bytes default (1.5 MiB)
RAISE_ATTEMPTS = 20  # a follower may need a moment to apply a raise before it can read there
DEFRAGMENT_TIMEOUT_SECONDS = 300.0  # a replica rewrites its whole database
# ShardRequest's fields as the fast path writes them: floor (2, varint); range (3), put (4) and
# txn (6), length-delimited, holding the client's request bytes as they came.
_FLOOR_TAG, _RANGE_TAG, _PUT_TAG, _TXN_TAG = b"\x10", b"\x1a", b"\x22", b"\x32"
# Errors after which a request was not proposed (or was a read), so the general path may send it again.
_NOT_PROPOSED = (errors.NotLeader, errors.NoLeader)
_ERROR_FIELD = ShardResponse.DESCRIPTOR.fields_by_name["error"].number
_READ_RETRIES = (errors.NotLeader, errors.NoLeader, errors.LeaderChanged, errors.RequestTimeout,
                 errors.FutureRevision)


class Responder(Protocol):
    """How the fast path answers a call: the front end's side of it."""

    group: int
    generation: int | None  # the shard map's, for a write; None for a read

    def reply(self, answer: bytes) -> None: ...
    def fail(self, error: errors.EtcdError) -> None: ...
    def fallback(self) -> None: ...


class Router:
    """Routing state: the groups, the shard map, the revision; what every front end calls."""

    def __init__(self, cluster_id: int, member_id: int, shard_map: ShardMap,
                 groups: dict[int, GroupClient], meta: GroupClient):
        self.cluster_id = cluster_id
        self.member_id = member_id
        self.shard_map = shard_map
        self.groups = groups  # data groups
        self.meta = meta
        self.revision = 0
        self.group_revisions: dict[int, int] = {}  # the highest revision seen of each group
        # Writes not yet answered, by the generation of the shard map that routed them: a
        # map change completes once none routed by an older map is still on its way.
        self._map_generation = 0
        self._writes_in_flight: collections.Counter[int] = collections.Counter()
        self._writes_answered = asyncio.Event()
        # Set (and replaced) at each map change: what a request held by a fence waits on.
        self._shard_map_changed = asyncio.Event()
        self.leases = None  # router.leases.Lessor, set by the server
        self.read_only = False  # a proxy beside clients: reads and watches only

    # --- revisions and headers -------------------------------------------------------

    def observe(self, revision: int) -> None:
        if revision > self.revision:
            self.revision = revision

    def observe_group(self, group: int, revision: int) -> None:
        if revision > self.group_revisions.get(group, 0):
            self.group_revisions[group] = revision
        self.observe(revision)

    @property
    def raft_term(self) -> int:
        """The term a header shows for an answer that is no single group's: the highest."""
        return max((client.term for client in self.groups.values()), default=0)

    def header(self, revision: int | None = None) -> ResponseHeader:
        """A header of this router's, at `revision` (the highest revision seen, if none)."""
        return ResponseHeader(cluster_id=self.cluster_id, member_id=self.member_id,
                              revision=self.revision if revision is None else revision, raft_term=self.raft_term)

    def _stamp(self, header: ResponseHeader, group: int) -> None:
        self.observe_group(group, header.revision)
        header.cluster_id = self.cluster_id
        header.member_id = self.member_id
        header.raft_term = self.groups[group].term

    async def sync_revision(self) -> None:
        """Start from the highest revision any group has reached (a new router knows none)."""
        groups = sorted(self.groups)
        for group, status in zip(groups, await asyncio.gather(*(self.group_status(g) for g in groups))):
            self.observe_group(group, status.revision)

    def client(self, group: int) -> GroupClient:
        """The client of a data group, or of the meta group."""
        return self.groups[group] if group in self.groups else self.meta

    async def group_status(self, group: int, timeout: float = REQUEST_TIMEOUT_SECONDS) -> GroupStatus:
        client = self.client(group)
        status = (await client.call(ShardRequest(status={}), write=False, any_member=True,
                                    timeout=timeout)).status
        if status.leader_id:
            client.leader_id = status.leader_id if status.leader_id in client.member_ids else 0
            client.term = max(client.term, status.term)
        return status

    async def raise_group(self, group: int, revision: int) -> None:
        """Lift a group's revision to `revision` (no key changes, no event); idempotent."""
        response = await self.groups[group].call(ShardRequest(raise_revision=revision), write=False)
        self.observe_group(group, response.raised.revision)

    async def track_leaders(self, interval: float) -> None:
        """Keep each group's leader and term current, and note groups left without a leader."""
        while True:
            clients = {**self.groups, self.meta.group_id: self.meta}  # groups may join meanwhile
            groups = sorted(clients)
            answers = await asyncio.gather(*(self.group_status(group, timeout=interval) for group in groups),
                                           return_exceptions=True)
            now = asyncio.get_running_loop().time()
            for group, answer in zip(groups, answers):
                client = clients[group]
                if isinstance(answer, GroupStatus) and answer.leader_id:
                    client.leaderless_since = None
                elif client.leaderless_since is None:
                    log.warning("group %d has no leader (%s)", group,
                                answer if isinstance(answer, BaseException) else "none elected")
                    client.leaderless_since = now
            await asyncio.sleep(interval)

    # --- writes ------------------------------------------------------------------------

    async def change_shard_map(self, shard_map: ShardMap) -> None:
        """Route by a new map; return once every write routed by an older one is answered."""
        self.shard_map = shard_map
        self._map_generation += 1
        changed, self._shard_map_changed = self._shard_map_changed, asyncio.Event()
        changed.set()
        while any(generation < self._map_generation for generation in self._writes_in_flight):
            self._writes_answered.clear()
            await self._writes_answered.wait()

    @property
    def map_generation(self) -> int:
        """How many shard maps this router has routed by before the current one."""
        return self._map_generation

    def check_writable(self) -> None:
        if self.read_only:
            raise errors.ReadOnlyRouter()

    async def _wait_while_moving(self, spans: Iterable[tuple[bytes, bytes]]) -> None:
        """Hold a request that touches a range being moved (the map's `moving`, the short fence
        of `tessera shards move`) until the map lets it go on; route it by the map after.

        Reads are held too: a router still at the fence must not read the group the range
        left while one already past it writes to the new one. A fence that outlasts the
        request timeout (its mover died; `tessera shards move --recover` ends it) gets
        etcd's "request timed out"."""
        spans = list(spans)
        if not any(self.shard_map.is_moving(key, range_end) for key, range_end in spans):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_TIMEOUT_SECONDS
        while any(self.shard_map.is_moving(key, range_end) for key, range_end in spans):
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise errors.RequestTimeout()
            try:
                await asyncio.wait_for(self._shard_map_changed.wait(), remaining)
            except TimeoutError:
                raise errors.RequestTimeout() from None

    async def write(self, group: int, request: ShardRequest, generation: int | None = None) -> object:
        """Send a write with the floor of global revisions; the group's answer of that kind.

        `generation`: of the shard map that chose the group, if not the current one.
        """
        generation = self._map_generation if generation is None else generation
        self._writes_in_flight[generation] += 1
        try:
            return await self._write(group, request)
        finally:
            self._write_answered(generation)

    def _write_answered(self, generation: int) -> None:
        self._writes_in_flight[generation] -= 1
        if not self._writes_in_flight[generation]:
            del self._writes_in_flight[generation]
            self._writes_answered.set()

    async def _write(self, group: int, request: ShardRequest) -> object:
        request.floor = self.revision + 1
        response = await self.groups[group].call(request, write=True)
        answer = getattr(response, response.WhichOneof("response"))
        # Some writes (a lease revoke) are answered by a header alone.
        self._stamp(answer if isinstance(answer, ResponseHeader) else answer.header, group)
        return answer

    async def put(self, request: PutRequest) -> PutResponse:
        validation.check_put(request)
        self.check_writable()
        if request.lease:
            await self.leases.check(request.lease)
        # No await between the wait and write(): the write is counted under the map that routed it.
        await self._wait_while_moving([(request.key, b"")])
        return await self.write(self.shard_map.group_of(request.key), ShardRequest(put=request))

    async def delete_range(self, request: DeleteRangeRequest) -> DeleteRangeResponse:
        validation.check_delete(request)
        self.check_writable()
        await self._wait_while_moving([(request.key, request.range_end)])
        pieces = self.shard_map.pieces(request.key, request.range_end)
        if len(pieces) == 1:
            return await self.write(pieces[0].group, ShardRequest(delete_range=request))
        by_group: dict[int, list[DeleteRangeRequest]] = {}
        for piece in pieces:
            by_group.setdefault(piece.group, []).append(
                DeleteRangeRequest(key=piece.key, range_end=piece.range_end, prev_kv=request.prev_kv))
        generation = self._map_generation
        # In flight from now, not from when each group's share is sent: a map change (a move's
        # fence) meanwhile must wait for these writes, which go by this map.
        self._writes_in_flight[generation] += 1
        try:
            answers = await asyncio.gather(*(self._delete_in_group(group, deletes, generation)
                                             for group, deletes in by_group.items()))
        finally:
            self._write_answered(generation)
        merged = DeleteRangeResponse(header=self.header())
        for answer in answers:
            merged.deleted += answer.deleted
        merged.prev_kvs.extend(sorted((kv for answer in answers for kv in answer.prev_kvs), key=lambda kv: kv.key))
        return merged

    async def _delete_in_group(self, group: int, deletes: list[DeleteRangeRequest],
                               generation: int) -> DeleteRangeResponse:
        """One group's share of a delete: several ranges go as one transaction, so one revision."""
        if len(deletes) == 1:
            return await self.write(group, ShardRequest(delete_range=deletes[0]), generation)
        answer = await self.write(group, ShardRequest(txn=TxnRequest(
            success=[RequestOp(request_delete_range=delete) for delete in deletes])), generation)
        combined = DeleteRangeResponse(header=answer.header)
        for response in answer.responses:
            combined.deleted += response.response_delete_range.deleted
            combined.prev_kvs.extend(response.response_delete_range.prev_kvs)
        return combined

    async def txn(self, request: TxnRequest) -> TxnResponse:
        validation.check_txn(request)
        if any(op.WhichOneof("request") in ("request_put", "request_delete_range") for op in _txn_ops(request)):
            self.check_writable()
        unknown_leases = sorted({lease for lease in _txn_leases(request) if not await self.leases.is_live(lease)})
        group = await self._txn_group(request)
        try:
            return await self.write(group, ShardRequest(txn=request, unknown_leases=unknown_leases))
        except errors.FutureRevision:
            # A range on the branch taken reads above the group's revision. If not above
            # ours, raise the group and run it again: a failed transaction changed nothing.
            if self.group_revisions.get(group, 0) >= self.revision:
                raise
            await self.raise_group(group, self.revision)
            group = await self._txn_group(request)  # the map may have changed meanwhile (a move)
            return await self.write(group, ShardRequest(txn=request, unknown_leases=unknown_leases))

    async def _txn_group(self, request: TxnRequest) -> int:
        """The one group a transaction's keys are in, once no fence holds them. It returns with
        no await after the map is read, so the write that follows goes by that map."""
        await self._wait_while_moving(_txn_keys(request))
        groups = set()
        for key, range_end in _txn_keys(request):
            groups |= self.shard_map.groups_of(key, range_end)
        if len(groups) > 1:
            raise errors.TxnSpansGroups(groups)
        return groups.pop() if groups else self.shard_map.default_group

    async def compact(self, request: CompactionRequest) -> CompactionResponse:
        self.check_writable()
        if request.revision > self.revision:
            raise errors.FutureRevision()

        async def compact_group(group: int) -> None:
            try:
                await self.write(group, ShardRequest(compaction=request))
            except errors.FutureRevision:
                await self.raise_group(group, request.revision)
                await self.write(group, ShardRequest(compaction=request))

        outcomes = await asyncio.gather(*(compact_group(group) for group in self.groups), return_exceptions=True)
        failures = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        # "Compacted" from every group: the revision was compacted before. From some only:
        # a retry after a partial failure, which the other groups have now completed.
        if failures and (len(failures) < len(outcomes) and all(
                isinstance(failure, errors.Compacted) for failure in failures)):
            failures = []
        if failures:
            raise next((f for f in failures if not isinstance(f, errors.Compacted)), failures[0])
        return CompactionResponse(header=self.header())

    # --- the fast path ---------------------------------------------------------------------

    def put_now(self, data: bytes, responder: Responder) -> None:
        try:
            request = PutRequest.FromString(data)
        except DecodeError:
            return responder.fallback()
        if (not request.key or request.lease or request.ignore_value or request.ignore_lease
                or self.read_only or self.shard_map.moving or len(data) > MAX_REQUEST_BYTES):
            return responder.fallback()  # the general path checks and answers these
        self._send_now(self.shard_map.group_of(request.key), _PUT_TAG, data, responder, write=True)

    def range_now(self, data: bytes, responder: Responder) -> None:
        try:
            request = RangeRequest.FromString(data)
        except DecodeError:
            return responder.fallback()
        if not request.key or request.revision > self.revision or self.shard_map.moving:
            return responder.fallback()
        if request.range_end:
            pieces = self.shard_map.pieces(request.key, request.range_end)
            if len(pieces) != 1 or (pieces[0].key, pieces[0].range_end) != (request.key, request.range_end):
                return responder.fallback()  # several groups (or none): scattered and merged
            group = pieces[0].group
        else:
            group = self.shard_map.group_of(request.key)
        try:
            validation.check_range(request)
        except errors.EtcdError as error:
            return responder.fail(error)
        # A serializable read may be answered by any member: the group shares them.
        member = self.groups[group].read_member() if request.serializable else None
        self._send_now(group, _RANGE_TAG, data, responder, write=False, member=member)

    def txn_now(self, data: bytes, responder: Responder) -> None:
        try:
            request = TxnRequest.FromString(data)
        except DecodeError:
            return responder.fallback()
        if self.read_only or self.shard_map.moving or len(data) > MAX_REQUEST_BYTES:
            return responder.fallback()
        groups = set()
        for key, range_end in _txn_keys(request):
            groups |= self.shard_map.groups_of(key, range_end)
        if len(groups) != 1 or any(True for _ in _txn_leases(request)):
            return responder.fallback()  # several groups are refused there; leases are checked there
        try:
            validation.check_txn(request)
        except errors.EtcdError as error:
            return responder.fail(error)
        self._send_now(groups.pop(), _TXN_TAG, data, responder, write=True)

    def _send_now(self, group: int, tag: bytes, data: bytes, responder: Responder, write: bool,
                  member: int | None = None) -> None:
        """Queue the client's request bytes, as they came, on the stream of `member` (the leader if None)."""
        client = self.groups[group]
        member = member or client.leader_id
        if not member:
            return responder.fallback()
        fields = tag + varint(len(data)) + data
        if write:
            fields = _FLOOR_TAG + varint(self.revision + 1) + fields
            responder.generation = self._map_generation
            self._writes_in_flight[responder.generation] += 1
        else:
            responder.generation = None
        responder.group = group
        client.connection(member).submit(fields, self._answered_now, responder)

    def _answered_now(self, responder: Responder, outcome) -> None:
        write = responder.generation is not None
        if write:
            self._write_answered(responder.generation)
        if isinstance(outcome, ReplicaUnreachable):
            if write and outcome.sent:
                return responder.fail(errors.RequestTimeout())  # it may be applied: never sent twice
            return responder.fallback()
        _, field, answer = codec.answer_parts(outcome)
        if field not in (_ERROR_FIELD, 0):
            # The replica's answer as it came, with the header the client is to see.
            group = responder.group
            revision, answer = codec.restamp_header(answer, self.cluster_id, self.member_id, self.groups[group].term)
            self.observe_group(group, revision)
            return responder.reply(answer)
        response = ShardResponse.FromString(outcome)
        kind = response.WhichOneof("response")
        if kind != "error":  # an answer protobuf had to read (none is encoded so)
            answer = getattr(response, kind)
            self._stamp(answer.header, responder.group)
            return responder.reply(answer.SerializeToString())
        error = response.error
        reported = errors.from_report(error.code, error.message)
        if error.leader_id or isinstance(reported, _READ_RETRIES if not write else _NOT_PROPOSED):
            return responder.fallback()
        if write and isinstance(reported, errors.FutureRevision):
            return responder.fallback()  # a txn's read above the group: a failed txn changed nothing
        return responder.fail(reported)

    # --- reads -------------------------------------------------------------------------

    async def range(self, request: RangeRequest) -> RangeResponse:
        validation.check_range(request)
        if request.revision > self.revision:
            raise errors.FutureRevision()
        await self._wait_while_moving([(request.key, request.range_end)])
        pieces = self.shard_map.pieces(request.key, request.range_end)
        if not pieces:
            return RangeResponse(header=self.header())
        if len(pieces) == 1:
            return await self.read(pieces[0].group, request)
        at = request.revision if request.revision > 0 else self.revision  # etcd: <= 0 is the latest
        # Merging by value needs the values, even for a keys-only answer (etcd sorts, then drops them).
        order, target = effective_sort(request)
        need_values = request.keys_only and order != RangeRequest.NONE and target == RangeRequest.VALUE
        answers = await asyncio.gather(*(self.read(piece.group, _piece_of(request, piece, at, need_values))
                                         for piece in pieces))
        merged = self._merge_ranges(request, answers)
        if need_values:
            for kv in merged.kvs:
                kv.ClearField("value")
        return merged

    async def read(self, group: int, request: RangeRequest) -> RangeResponse:
        """One group's answer to a range, raising the group first if it is below the revision asked."""
        client = self.groups[group]
        shard_request = ShardRequest(range=request)
        for _ in range(RAISE_ATTEMPTS):
            try:
                response = await client.call(shard_request, write=False, any_member=request.serializable)
            except errors.FutureRevision:
                await self.raise_group(group, request.revision)
                if request.serializable:
                    await asyncio.sleep(0.01)  # a follower applies the raise a moment later
                continue
            answer = response.range
            self._stamp(answer.header, group)
            return answer
        raise errors.RequestTimeout()

    def _merge_ranges(self, request: RangeRequest, answers: list[RangeResponse]) -> RangeResponse:
        # As etcd: the header names the current revision, also for a read in the past.
        merged = RangeResponse(header=self.header(max(answer.header.revision for answer in answers)))
        merged.count = sum(answer.count for answer in answers)
        if request.count_only:
            return merged
        kvs = [kv for answer in answers for kv in answer.kvs]  # pieces in key order: kvs by key
        sort_results(kvs, request)
        limit = request.limit
        merged.more = any(answer.more for answer in answers) or (0 < limit < len(kvs))
        merged.kvs.extend(kvs[:limit] if limit > 0 else kvs)
        return merged

    # --- maintenance -------------------------------------------------------------------

    async def hash_kv(self, request: HashKVRequest) -> HashKVResponse:
        """One hash of every group's history at one revision; the replicas of each group must agree."""
        at = request.revision if request.revision > 0 else self.revision
        if at > self.revision:
            raise errors.FutureRevision()
        answers = await asyncio.gather(*(self._group_hash_kv(group, at) for group in sorted(self.groups)))
        combined = 0
        for group, answer in zip(sorted(self.groups), answers):
            combined = crc.crc32c(b"%d:%d;" % (group, answer.hash), combined)
        return HashKVResponse(header=self.header(), hash=combined,
                              compact_revision=max(answer.compact_revision for answer in answers))

    async def hash(self, _request: HashRequest) -> HashResponse:
        """etcd's Hash (the whole backend, meant for tests): every group's data and the meta group's
        records (leases among them), each group at its leader's revision, its replicas compared."""
        groups = sorted([*self.groups, self.meta.group_id])
        revisions = [status.revision for status in await asyncio.gather(*(
            self._leader_status(group) for group in groups))]
        answers = await asyncio.gather(*(self._group_hash_kv(group, at) for group, at in zip(groups, revisions)))
        combined = 0
        for group, answer in zip(groups, answers):
            combined = crc.crc32c(b"%d:%d;" % (group, answer.hash), combined)
        return HashResponse(header=self.header(), hash=combined)

    async def _leader_status(self, group: int) -> GroupStatus:
        return (await self.client(group).call(ShardRequest(status={}), write=False)).status

    async def _group_hash_kv(self, group: int, at: int) -> HashKVResponse:
        answers = await self.replica_hashes(group, at)
        if len({answer.hash for answer in answers.values()}) > 1:
            raise errors.Corrupt()
        return next(iter(answers.values()))

    async def replica_hashes(self, group: int, at: int) -> dict[int, HashKVResponse]:
        """Each reachable replica's HashKV at `at` (the group raised to it first), by member id.

        Only replicas at one compacted revision are compared, as etcd's checker does: a
        compaction that some replicas have applied and others not yet changes what they hash.
        Asked again while a compaction is on its way; then the most common one is kept.
        """
        if group in self.groups and self.group_revisions.get(group, 0) < at:
            await self.raise_group(group, at)
        answers = await self._ask_hashes(self.client(group), at)
        for _ in range(RAISE_ATTEMPTS):
            compactions = collections.Counter(answer.compact_revision for answer in answers.values())
            if len(compactions) <= 1:
                break
            await asyncio.sleep(0.01)
            answers = await self._ask_hashes(self.client(group), at)
        else:
            common = max(compactions, key=lambda revision: (compactions[revision], revision))
            answers = {member: answer for member, answer in answers.items() if answer.compact_revision == common}
        if len({answer.hash for answer in answers.values()}) > 1:
            log.error("group %d: replicas disagree on HashKV at revision %d: %s", group, at,
                      {member: answer.hash for member, answer in answers.items()})
        return answers

    async def _ask_hashes(self, client: GroupClient, at: int) -> dict[int, HashKVResponse]:
        answers = {}
        for member in client.member_ids:
            for _ in range(RAISE_ATTEMPTS):  # a follower may not have applied up to `at` yet
                try:
                    response = await client.connection(member).request(
                        ShardRequest(hash_kv=HashKVRequest(revision=at)), REQUEST_TIMEOUT_SECONDS)
                except ReplicaUnreachable:
                    break  # a member that is down is compared when it is back
                if response.WhichOneof("response") == "hash_kv":
                    answers[member] = response.hash_kv
                    break
                reported = errors.from_report(response.error.code, response.error.message)
                if not isinstance(reported, errors.FutureRevision):
                    raise reported
                await asyncio.sleep(0.01)
        if not answers:
            raise errors.NoLeader()
        return answers

    async def defragment(self) -> None:
        """Defragment every replica of every group, one at a time (each is busy while it runs)."""
        failures = []
        for group, client in sorted([*self.groups.items(), (self.meta.group_id, self.meta)]):
            for member in client.member_ids:
                try:
                    response = await client.connection(member).request(ShardRequest(defragment={}),
                                                                        DEFRAGMENT_TIMEOUT_SECONDS)
                    if response.WhichOneof("response") == "error":
                        failures.append(f"group {group} member {member}: {response.error.message}")
                except ReplicaUnreachable as unreachable:
                    failures.append(f"group {group} member {member}: {unreachable}")
        if failures:
            raise errors.Reported("UNAVAILABLE", "tessera: defragment failed on " + "; ".join(failures))

    # --- status ------------------------------------------------------------------------

    async def statuses(self) -> dict[int, GroupStatus | errors.EtcdError]:
        """Each data group's status (its leader's, when known), or the error that kept it from answering."""
        groups = sorted(self.groups)
        answers = await asyncio.gather(*(self.group_status(group) for group in groups), return_exceptions=True)
        return dict(zip(groups, answers))

    async def alarm_types(self) -> set[int]:
        """The types of the alarms raised in the data groups that answer (NOSPACE, CORRUPT)."""
        return {alarm.alarm for status in (await self.statuses()).values()
                if not isinstance(status, BaseException) for alarm in status.alarms}


def _piece_of(request: RangeRequest, piece, at: int, with_values: bool) -> RangeRequest:
    sub = RangeRequest()
    sub.CopyFrom(request)
    sub.key, sub.range_end, sub.revision = piece.key, piece.range_end, at
    if with_values:
        sub.keys_only = False
    return sub


def _txn_ops(request: TxnRequest) -> Iterable[RequestOp]:
    for op in (*request.success, *request.failure):
        yield op
        if op.WhichOneof("request") == "request_txn":
            yield from _txn_ops(op.request_txn)


def _txn_keys(request: TxnRequest) -> Iterable[tuple[bytes, bytes]]:
    """Every (key, range_end) a transaction compares, reads or writes, nested ones included."""
    for compare in request.compare:
        yield compare.key, compare.range_end
    for op in (*request.success, *request.failure):
        kind = op.WhichOneof("request")
        if kind == "request_txn":
            yield from _txn_keys(op.request_txn)
        elif kind is not None:
            inner = getattr(op, kind)
            yield inner.key, getattr(inner, "range_end", b"")


def _txn_leases(request: TxnRequest) -> Iterable[int]:
    for op in _txn_ops(request):
        if op.WhichOneof("request") == "request_put" and op.request_put.lease:
            yield op.request_put.lease
