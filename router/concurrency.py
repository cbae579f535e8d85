"""etcd's Lock and Election services, built as etcd builds them: on leases, revisions and watches.

A lock or an election named N is the set of keys under "N/", one per
contender, each "N/<lease id in hex>" attached to the contender's lease. The
contender whose key was created first holds the lock (leads); the others wait
until every key created before theirs is deleted (unlocked, resigned, or
gone with its lease). These are the recipes of etcd's client package
(concurrency.Mutex and concurrency.Election), run in the router, so a client
of the gRPC services and one that runs the recipes itself (etcdctl lock and
elect do) see the same keys.
"""

from __future__ import annotations

from router.shard_map import prefix_end
from router.watch_proxy import WatchProxy
from tessera.api import errors
from tessera.api.kv_pb2 import Event
from tessera.api.rpc_pb2 import (
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    ResponseHeader,
    TxnRequest,
    WatchCreateRequest,
    WatchRequest,
    WatchResponse,
)
from tessera.api.v3election_pb2 import (
    CampaignRequest,
    CampaignResponse,
    LeaderKey,
    LeaderRequest,
    LeaderResponse,
    ProclaimRequest,
    ProclaimResponse,
    ResignRequest,
    ResignResponse,
)
from tessera.api.v3lock_pb2 import LockRequest, LockResponse, UnlockRequest, UnlockResponse


class ElectionError(errors.EtcdError):
    """etcd's election errors reach clients as plain errors: gRPC code UNKNOWN, their own text."""

    code = "UNKNOWN"

    def __init__(self, message: str) -> None:
        self.message = message
        Exception.__init__(self, message)


NOT_LEADER = "election: not leader"
NO_LEADER = "election: no leader"
MISSING_LEADER_KEY = '"leader" field must be provided'


def contender_key(name: bytes, lease: int) -> bytes:
    return name + b"/" + format(lease, "x").encode()  # Go's %x of an int64


def _prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    return prefix, prefix_end(prefix) or b"\0"


def _created(key: bytes, revision: int) -> Compare:
    return Compare(key=key, target=Compare.CREATE, result=Compare.EQUAL, create_revision=revision)


def _first_created(prefix: bytes, max_create_revision: int = 0, last: bool = False) -> RangeRequest:
    key, range_end = _prefix_range(prefix)
    return RangeRequest(key=key, range_end=range_end, limit=1, sort_target=RangeRequest.CREATE,
                        sort_order=RangeRequest.DESCEND if last else RangeRequest.ASCEND,
                        max_create_revision=max_create_revision)


class Concurrency:
    def __init__(self, router):
        self.router = router

    # --- the recipes' parts ---------------------------------------------------------------

    async def _join(self, key: bytes, lease: int, value: bytes) -> tuple[int, bytes]:
        """Create the contender key unless it exists: (its create revision, its value)."""
        answer = await self.router.txn(TxnRequest(
            compare=[_created(key, 0)],
            success=[RequestOp(request_put=PutRequest(key=key, value=value, lease=lease))],
            failure=[RequestOp(request_range=RangeRequest(key=key))]))
        if answer.succeeded:
            return answer.header.revision, value
        existing = answer.responses[0].response_range.kvs[0]
        return existing.create_revision, existing.value

    async def _wait_deletes(self, prefix: bytes, max_create_revision: int) -> ResponseHeader:
        """Until no key under `prefix` created at or before `max_create_revision` is left."""
        while True:
            last = await self.router.range(_first_created(prefix, max_create_revision, last=True))
            if not last.kvs:
                return last.header
            await self._wait_for_delete(last.kvs[0].key, last.header.revision)

    async def _wait_for_delete(self, key: bytes, revision: int) -> None:
        async for events in self._watch(key, b"", revision + 1):
            if any(event.type == Event.DELETE for event in events):
                return

    async def _watch(self, key: bytes, range_end: bytes, start_revision: int):
        """Batches of events on a range from a revision, through the router's watch machinery."""
        proxy = WatchProxy(self.router)
        try:
            await proxy.handle(WatchRequest(create_request=WatchCreateRequest(
                key=key, range_end=range_end, start_revision=start_revision)))
            while True:
                response = await proxy.outbox.get()
                if isinstance(response, errors.EtcdError):
                    raise response
                if isinstance(response, bytes):  # passed through from a replica
                    response = WatchResponse.FromString(response)
                if response.canceled:
                    raise errors.Compacted() if response.compact_revision else errors.Reported(
                        "CANCELLED", response.cancel_reason or "etcdserver: watch canceled")
                if response.events:
                    yield list(response.events)
        finally:
            await proxy.close()

    # --- Lock ------------------------------------------------------------------------------

    async def lock(self, request: LockRequest) -> LockResponse:
        key = contender_key(request.name, request.lease)
        revision, _ = await self._join(key, request.lease, b"")
        header = await self._wait_deletes(request.name + b"/", revision - 1)
        return LockResponse(header=header, key=key)

    async def unlock(self, request: UnlockRequest) -> UnlockResponse:
        answer = await self.router.delete_range(DeleteRangeRequest(key=request.key))
        return UnlockResponse(header=answer.header)

    # --- Election --------------------------------------------------------------------------

    async def campaign(self, request: CampaignRequest) -> CampaignResponse:
        prefix = request.name + b"/"
        key = contender_key(request.name, request.lease)
        revision, stored = await self._join(key, request.lease, request.value)
        if stored != request.value:  # campaigning again with a new value proclaims it
            await self._proclaim(key, revision, request.lease, request.value)
        header = await self._wait_deletes(prefix, revision - 1)
        return CampaignResponse(header=header, leader=LeaderKey(name=request.name, key=key, rev=revision,
                                                                lease=request.lease))

    async def _proclaim(self, key: bytes, revision: int, lease: int, value: bytes) -> ResponseHeader:
        answer = await self.router.txn(TxnRequest(
            compare=[_created(key, revision)],
            success=[RequestOp(request_put=PutRequest(key=key, value=value, lease=lease))]))
        if not answer.succeeded:
            raise ElectionError(NOT_LEADER)
        return answer.header

    async def proclaim(self, request: ProclaimRequest) -> ProclaimResponse:
        if not request.HasField("leader"):
            raise ElectionError(MISSING_LEADER_KEY)
        leader = request.leader
        return ProclaimResponse(header=await self._proclaim(leader.key, leader.rev, leader.lease, request.value))

    async def leader(self, request: LeaderRequest) -> LeaderResponse:
        answer = await self.router.range(_first_created(request.name + b"/"))
        if not answer.kvs:
            raise ElectionError(NO_LEADER)
        return LeaderResponse(header=answer.header, kv=answer.kvs[0])

    async def resign(self, request: ResignRequest) -> ResignResponse:
        if not request.HasField("leader"):
            raise ElectionError(MISSING_LEADER_KEY)
        leader = request.leader
        answer = await self.router.txn(TxnRequest(
            compare=[_created(leader.key, leader.rev)],
            success=[RequestOp(request_delete_range=DeleteRangeRequest(key=leader.key))]))
        return ResignResponse(header=answer.header)

    async def observe(self, request: LeaderRequest):
        """Every leader and every value it proclaims, as etcd's Observe streams them."""
        prefix = request.name + b"/"
        while True:
            first = await self.router.range(_first_created(prefix))
            if first.kvs:
                header, leader = first.header, first.kvs[0]
            else:  # nobody leads: the first key put under the prefix does
                header, leader = None, None
                key, range_end = _prefix_range(prefix)
                async for events in self._watch(key, range_end, first.header.revision + 1):
                    puts = [event.kv for event in events if event.type == Event.PUT]
                    if puts:
                        leader = puts[0]
                        header = ResponseHeader(revision=leader.mod_revision)
                        break
            yield LeaderResponse(header=self.router.header(header.revision), kv=leader)
            async for events in self._watch(leader.key, b"", header.revision + 1):
                if any(event.type == Event.DELETE for event in events):
                    break  # the leader resigned or its lease ended: look again
                for event in events:
                    yield LeaderResponse(header=self.router.header(event.kv.mod_revision), kv=event.kv)
