"""Leases, the router's side: records in the meta group, deadlines on its leader, keys in every group.

ARCHITECTURE decision 5. The meta group owns leases: a grant creates a
LeaseRecord there, and the meta group's leader keeps every lease's deadline,
renews it on keep-alives, answers time-to-live and list, and marks leases that
expire as revoked (shards/leases.py). Any number of routers may serve leases
at once: none of them holds a deadline.

What a router does:
- grant: create the record (the id chosen here if the client chose none; an id
  the client chose may have been revoked before, so every group is first told
  to take puts with it again); refused, as etcd refuses it, while a data group
  holds a NOSPACE or CORRUPT alarm (a revoke too, while one holds CORRUPT);
- keep-alive, time-to-live, list: ask the meta leader (time-to-live with keys
  gathers them from every group);
- revoke, asked for: mark the record revoked, then finish it;
- finish a revoke, its own or one it sees in the meta group's records (an
  expiry, or a router that stopped half way): every data group deletes the
  lease's keys and keeps a tombstone, so a put already on its way fails there
  with "requested lease not found"; then the record goes. Finishing twice
  is harmless, so every router that sees a mark finishes it, and no key
  outlives its lease while one router runs.

Each router keeps the ids of live leases from the records it follows, to
refuse a put with an unknown lease at once; a lease it has not heard of yet
(granted through another router a moment ago) is looked up before a put is
refused.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets

from router.meta import MetaClient
from tessera.api import errors
from tessera.api.internal_pb2 import LeaseRecord, ShardRequest
from tessera.api.kv_pb2 import Event
from tessera.api.meta_keys import lease_id_of, lease_key
from tessera.api.rpc_pb2 import (
    CORRUPT,
    NOSPACE,
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseKeepAliveResponse,
    LeaseLeasesRequest,
    LeaseLeasesResponse,
    LeaseRevokeResponse,
    LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
)

log = logging.getLogger("tessera.router")

MAX_LEASE_TTL_SECONDS = 9_000_000_000  # etcd's MaxLeaseTTL
RETRY_REVOKE_SECONDS = 1.0


def minimum_ttl_seconds(election_timeout_ms: int = 1000) -> int:
    """etcd's floor on a granted TTL: 1.5 election timeouts, rounded up to whole seconds."""
    return math.ceil(1.5 * election_timeout_ms / 1000)


class Lessor:
    def __init__(self, router, meta: MetaClient, records: dict[int, LeaseRecord],
                 minimum_ttl: int = minimum_ttl_seconds()):
        self.router = router
        self.meta = meta
        self.minimum_ttl = minimum_ttl
        self._live: set[int] = set()
        self._unfinished: set[int] = set()  # marked revoked, keys maybe not yet deleted everywhere
        self._finish_now = asyncio.Event()
        self.reload(records)

    def reload(self, records: dict[int, LeaseRecord]) -> None:
        """Start over from the meta group's records (at start, and after the watch on them broke)."""
        self._live = {lease for lease, record in records.items() if not record.revoked}
        self._unfinished = {lease for lease, record in records.items() if record.revoked}
        if self._unfinished:
            self._finish_now.set()

    def observe(self, event) -> None:
        """A change to a lease record, from the router's watch on the meta group."""
        if event.type == Event.DELETE:
            lease_id = lease_id_of(event.kv.key)
            self._live.discard(lease_id)
            self._unfinished.discard(lease_id)
            return
        record = LeaseRecord.FromString(event.kv.value)
        if record.revoked:
            self._live.discard(record.id)
            self._unfinished.add(record.id)
            self._finish_now.set()
        else:
            self._live.add(record.id)

    async def is_live(self, lease_id: int) -> bool:
        """Whether the lease is live, asking the meta group if this router has not heard of it."""
        if lease_id in self._live:
            return True
        kv = await self.meta.get(lease_key(lease_id))
        if kv is None or LeaseRecord.FromString(kv.value).revoked:
            return False
        self._live.add(lease_id)
        return True

    async def check(self, lease_id: int) -> None:
        if not await self.is_live(lease_id):
            raise errors.LeaseNotFound()

    async def grant(self, request: LeaseGrantRequest) -> LeaseGrantResponse:
        alarms = await self.router.alarm_types()
        if CORRUPT in alarms:  # etcd's appliers under these alarms refuse a grant before any check
            raise errors.Corrupt()
        if NOSPACE in alarms:
            raise errors.NoSpace()
        if request.TTL > MAX_LEASE_TTL_SECONDS:
            raise errors.LeaseTTLTooLarge()
        ttl = max(request.TTL, self.minimum_ttl)
        lease_id = request.ID
        if lease_id:
            if await self.meta.get(lease_key(lease_id)) is not None:
                raise errors.LeaseExist()  # live, or its revoke not finished
            # The id may have been revoked before, which every group remembers: as in etcd, a
            # lease granted again under it is a new lease, so the groups take puts with it again.
            await asyncio.gather(*(self.router.write(group, ShardRequest(regrant_lease=lease_id))
                                   for group in sorted(self.router.groups)))
        while True:
            chosen = lease_id or secrets.randbits(63) or 1
            if await self.meta.create(lease_key(chosen), LeaseRecord(id=chosen, ttl=ttl)):
                break
            if lease_id:  # the client's id is taken; an id of ours is drawn again
                raise errors.LeaseExist()
        self._live.add(chosen)
        return LeaseGrantResponse(header=self.router.header(), ID=chosen, TTL=ttl)

    async def _ask_meta_leader(self, request: ShardRequest):
        response = await self.meta.client.call(request, write=False)
        answer = getattr(response, response.WhichOneof("response"))
        answer.header.CopyFrom(self.router.header())
        return answer

    async def keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        return await self._ask_meta_leader(ShardRequest(lease_keep_alive=lease_id))

    async def time_to_live(self, request: LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse:
        response = await self._ask_meta_leader(ShardRequest(lease_time_to_live=request.ID))
        if request.keys and response.TTL != -1:
            response.keys.extend(await self.attached_keys(request.ID))
        return response

    async def attached_keys(self, lease_id: int) -> list[bytes]:
        """The keys attached to the lease in every group, sorted, each from the group the map
        gives it: a prefix being moved has a copy in both."""
        groups = sorted(self.router.groups)
        answers = await asyncio.gather(*(
            self.router.groups[group].call(ShardRequest(lease_keys=lease_id), write=False) for group in groups))
        group_of = self.router.shard_map.group_of
        return sorted(key for group, answer in zip(groups, answers)
                      for key in answer.lease_keys.keys if group_of(key) == group)

    async def leases(self) -> LeaseLeasesResponse:
        return await self._ask_meta_leader(ShardRequest(lease_leases=LeaseLeasesRequest()))

    async def revoke(self, lease_id: int) -> LeaseRevokeResponse:
        if CORRUPT in await self.router.alarm_types():  # etcd's corrupt applier refuses a revoke
            raise errors.Corrupt()
        key = lease_key(lease_id)
        while True:
            kv = await self.meta.get(key)
            if kv is None or LeaseRecord.FromString(kv.value).revoked:
                self._live.discard(lease_id)
                raise errors.LeaseNotFound()
            record = LeaseRecord.FromString(kv.value)
            record.revoked = True
            # Unless a checkpoint or an expiry changed the record meanwhile: then look again.
            if await self.meta.compare_and_put(key, record, kv.mod_revision):
                break
        self._live.discard(lease_id)
        self._unfinished.add(lease_id)
        await self._finish_revoke(lease_id)
        return LeaseRevokeResponse(header=self.router.header())

    async def _finish_revoke(self, lease_id: int) -> None:
        """Delete the lease's keys in every group, then its record."""
        await asyncio.gather(*(self.router.write(group, ShardRequest(revoke_lease=lease_id))
                               for group in sorted(self.router.groups)))
        await self.meta.delete(lease_key(lease_id))
        self._unfinished.discard(lease_id)

    async def run(self) -> None:
        """Finish the revokes seen in the meta group's records, and retry those that failed."""
        while True:
            try:
                await asyncio.wait_for(self._finish_now.wait(), RETRY_REVOKE_SECONDS)
            except asyncio.TimeoutError:
                pass
            self._finish_now.clear()
            for lease_id in list(self._unfinished):
                try:
                    await self._finish_revoke(lease_id)
                    log.info("lease %x revoked: its keys are deleted in every group", lease_id)
                except errors.EtcdError as error:
                    log.warning("finishing the revoke of lease %x failed (%s); will retry", lease_id,
                                error.message)
