"""Leases: granted in the meta group, kept alive and expired by the router, revoked in every group.

A grant writes a LeaseRecord into the meta group. Deadlines live in the
router's memory, as they live in an etcd leader's: keep-alives renew them
without a write. Every checkpoint interval the router records each lease's
remaining TTL in its record (etcd's lease checkpointing), and a router that
starts resumes from there: a restart neither expires a lease early nor
gives it a whole new TTL.

A revoke, asked for or by expiry (ARCHITECTURE decision 5): the lease leaves
the router's table, so puts with it fail here at once; its record is marked
revoked in the meta group; every data group deletes the keys attached to it
and keeps a tombstone, so a put already on its way fails there with
"requested lease not found"; then the record goes. A revoke cut short is
finished by the next router to load the record, so no key outlives its
lease.

This serves one router. Several routers will need one owner of expiry (the
cross-group lease design of the next issue).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time

from router.meta import MetaClient, lease_key
from tessera.api import errors
from tessera.api.internal_pb2 import LeaseRecord, ShardRequest
from tessera.api.rpc_pb2 import (
    LeaseGrantRequest,
    LeaseGrantResponse,
    LeaseKeepAliveResponse,
    LeaseLeasesResponse,
    LeaseRevokeResponse,
    LeaseStatus,
    LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
)

log = logging.getLogger("tessera.router")

MAX_LEASE_TTL_SECONDS = 9_000_000_000  # etcd's MaxLeaseTTL
EXPIRY_CHECK_SECONDS = 0.25
CHECKPOINT_INTERVAL_SECONDS = 300.0  # etcd's lease checkpoint interval (5 minutes)
CHECKPOINT_BATCH = 64  # records per meta transaction (two operations each, under etcd's 128)
RETRY_REVOKE_SECONDS = 1.0


def minimum_ttl_seconds(election_timeout_ms: int = 1000) -> int:
    """etcd's floor on a granted TTL: 1.5 election timeouts, rounded up to whole seconds."""
    return math.ceil(1.5 * election_timeout_ms / 1000)


class Lessor:
    def __init__(self, router, meta: MetaClient, records: dict[int, LeaseRecord],
                 clock=time.monotonic, minimum_ttl: int = minimum_ttl_seconds(),
                 checkpoint_interval: float = CHECKPOINT_INTERVAL_SECONDS):
        self.router = router
        self.meta = meta
        self.clock = clock
        self.minimum_ttl = minimum_ttl
        self.checkpoint_interval = checkpoint_interval
        now = clock()
        live = [record for record in records.values() if not record.revoked]
        self._ttl = {record.id: record.ttl for record in live}
        self._deadline = {record.id: now + (record.remaining_ttl or record.ttl) for record in live}
        self._unfinished = {lease for lease, record in records.items() if record.revoked}
        # A checkpoint and a revoke never write a lease's record at the same time: a checkpoint
        # must not bring back a record a revoke just marked.
        self._records_lock = asyncio.Lock()

    def known(self, lease_id: int) -> bool:
        return lease_id in self._ttl

    def check(self, lease_id: int) -> None:
        if lease_id not in self._ttl:
            raise errors.LeaseNotFound()

    async def grant(self, request: LeaseGrantRequest) -> LeaseGrantResponse:
        if request.TTL > MAX_LEASE_TTL_SECONDS:
            raise errors.LeaseTTLTooLarge()
        ttl = max(request.TTL, self.minimum_ttl)
        lease_id = request.ID
        while not lease_id:
            lease_id = secrets.randbits(63)
            if lease_id in self._ttl or lease_id in self._unfinished:
                lease_id = 0
        if lease_id in self._ttl or lease_id in self._unfinished:
            raise errors.LeaseExist()
        try:
            if not await self.meta.create(lease_key(lease_id), LeaseRecord(id=lease_id, ttl=ttl)):
                raise errors.LeaseExist()
        except (errors.RequestTimeout, errors.LeaderChanged):
            # The record may exist: keep a deadline for it, so that it expires and is revoked.
            self._track(lease_id, ttl)
            raise
        self._track(lease_id, ttl)
        return LeaseGrantResponse(header=self.router.header(), ID=lease_id, TTL=ttl)

    def _track(self, lease_id: int, ttl: int) -> None:
        self._ttl[lease_id] = ttl
        self._deadline[lease_id] = self.clock() + ttl

    def keep_alive(self, lease_id: int) -> LeaseKeepAliveResponse:
        response = LeaseKeepAliveResponse(header=self.router.header(), ID=lease_id)
        ttl = self._ttl.get(lease_id)
        if ttl is not None:
            self._track(lease_id, ttl)
            response.TTL = ttl
        return response

    async def time_to_live(self, request: LeaseTimeToLiveRequest) -> LeaseTimeToLiveResponse:
        response = LeaseTimeToLiveResponse(header=self.router.header(), ID=request.ID)
        ttl = self._ttl.get(request.ID)
        if ttl is None:
            response.TTL = -1
            return response
        response.TTL = max(0, int(self._deadline[request.ID] - self.clock()))
        response.grantedTTL = ttl
        if request.keys:
            answers = await asyncio.gather(*(
                self.router.groups[group].call(ShardRequest(lease_keys=request.ID), write=False)
                for group in sorted(self.router.groups)))
            response.keys.extend(sorted(key for answer in answers for key in answer.lease_keys.keys))
        return response

    def leases(self) -> LeaseLeasesResponse:
        return LeaseLeasesResponse(header=self.router.header(),
                                   leases=[LeaseStatus(ID=lease) for lease in sorted(self._ttl)])

    async def revoke(self, lease_id: int) -> LeaseRevokeResponse:
        ttl = self._ttl.pop(lease_id, None)
        if ttl is None:
            raise errors.LeaseNotFound()
        self._deadline.pop(lease_id, None)
        self._unfinished.add(lease_id)
        async with self._records_lock:
            await self.meta.put(lease_key(lease_id), LeaseRecord(id=lease_id, ttl=ttl, revoked=True))
        await self._finish_revoke(lease_id)
        return LeaseRevokeResponse(header=self.router.header())

    async def _finish_revoke(self, lease_id: int) -> None:
        """Delete the lease's keys in every group, then its record."""
        await asyncio.gather(*(self.router.write(group, ShardRequest(revoke_lease=lease_id))
                               for group in sorted(self.router.groups)))
        await self.meta.delete(lease_key(lease_id))
        self._unfinished.discard(lease_id)

    async def checkpoint(self) -> None:
        """Record every lease's remaining TTL in its meta record (only records that still exist)."""
        async with self._records_lock:
            now = self.clock()
            records = [LeaseRecord(id=lease, ttl=ttl, remaining_ttl=max(1, math.ceil(self._deadline[lease] - now)))
                       for lease, ttl in self._ttl.items()]
            for start in range(0, len(records), CHECKPOINT_BATCH):
                await self.meta.update_existing([(lease_key(record.id), record)
                                                 for record in records[start:start + CHECKPOINT_BATCH]])

    async def run(self) -> None:
        """Revoke leases whose deadline passed; finish revokes that were cut short; checkpoint."""
        last_retry = 0.0
        last_checkpoint = self.clock()
        while True:
            await asyncio.sleep(EXPIRY_CHECK_SECONDS)
            now = self.clock()
            if now - last_checkpoint >= self.checkpoint_interval:
                last_checkpoint = now
                try:
                    await self.checkpoint()
                except errors.EtcdError as error:
                    log.warning("checkpointing leases failed (%s); the next interval tries again", error.message)
            for lease_id in [lease for lease, deadline in self._deadline.items() if deadline <= now]:
                try:
                    await self.revoke(lease_id)
                    log.info("lease %x expired and was revoked", lease_id)
                except errors.EtcdError as error:
                    log.warning("revoking expired lease %x failed (%s); will retry", lease_id, error.message)
            if self._unfinished and now - last_retry >= RETRY_REVOKE_SECONDS:
                last_retry = now
                for lease_id in list(self._unfinished):
                    try:
                        await self._finish_revoke(lease_id)
                    except errors.EtcdError as error:
                        log.warning("finishing the revoke of lease %x failed (%s)", lease_id, error.message)
