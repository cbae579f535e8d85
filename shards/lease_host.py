"""The meta group's lease keeper in its replica: lease deadlines kept by the group's leader.

The deadlines themselves live in shards/leases.py (LeaseKeeper); this host
feeds it what apply changed and who leads, answers keep-alives, time-to-live
and list requests from it, and proposes what it decides: expired leases
marked revoked, remaining TTLs checkpointed, the meta group compacted behind
the checkpoints.

A new leader answers lease requests once it has applied every entry it had
when elected: only then does it know every lease granted before.
"""

from __future__ import annotations

import asyncio
import logging
import time

from shards.leases import LeaseKeeper, RecordWrite
from shards.mvcc import ChangeEvent
from shards.raft import Role
from shards.raft_driver import READ_TIMEOUT_SECONDS, RaftDriver, StateObserver
from tessera.api import errors
from tessera.api.internal_pb2 import ShardRequest
from tessera.api.meta_keys import LEASES_PREFIX, lease_key, prefix_range
from tessera.api.rpc_pb2 import (
    CompactionRequest,
    Compare,
    LeaseKeepAliveResponse,
    LeaseLeasesResponse,
    LeaseStatus,
    LeaseTimeToLiveResponse,
    PutRequest,
    RangeRequest,
    RequestOp,
    ResponseHeader,
    TxnRequest,
)

log = logging.getLogger("tessera.replica")

LEASE_CHECK_SECONDS = 0.25  # how often the meta leader looks for expired leases while it keeps any
LEASE_CHECKPOINT_SECONDS = 300.0  # etcd's lease checkpoint interval (5 minutes)
LEASE_CHECKPOINT_BATCH = 64  # records per checkpoint transaction (two operations each, under etcd's 128)


class LeaseHost(StateObserver):
    def __init__(self, driver: RaftDriver, checkpoint_interval_seconds: float):
        self.driver = driver
        self.store = driver.store
        self.checkpoint_interval_seconds = checkpoint_interval_seconds
        self.keeper = LeaseKeeper(extend_seconds=driver.config.election_timeout_ms / 1000)
        self._ready = asyncio.Event()
        self._ready_index = 0  # the last entry the leader had when elected
        self._changed = asyncio.Event()  # for a lessor with no lease to watch: a lease may have come
        self._load()

    def _load(self) -> None:
        start, end = prefix_range(LEASES_PREFIX)
        self.keeper.load(self.store.range(RangeRequest(key=start, range_end=end)).kvs)

    # --- told by the raft driver ------------------------------------------------------------

    def applied(self, events: list[ChangeEvent]) -> None:
        if events:
            self.keeper.apply(events, time.monotonic())
            self._changed.set()
        if (self.driver.role == Role.LEADER and not self._ready.is_set()
                and self.store.applied_index >= self._ready_index):
            self._ready.set()

    def role_changed(self, role: Role) -> None:
        self._ready.clear()
        self._changed.set()
        if role == Role.LEADER:
            self.keeper.promote(time.monotonic())
            self._ready_index = self.driver.wal.storage.last_index()
        else:
            self.keeper.demote()

    def snapshot_installed(self) -> None:
        self._load()  # leases granted while this replica was behind came in the snapshot

    # --- requests -------------------------------------------------------------------------

    async def query(self, request: ShardRequest):
        """A keep-alive, time-to-live or list, answered by the meta group's leader from its deadlines."""
        self.driver.check_leader()
        try:
            await asyncio.wait_for(self._ready.wait(), READ_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            return errors.RequestTimeout()
        self.driver.check_leader()  # it may have lost leadership while it caught up
        header = ResponseHeader(revision=self.store.revision)
        keeper, now = self.keeper, time.monotonic()
        kind = request.WhichOneof("request")
        if kind == "lease_keep_alive":
            lease_id = request.lease_keep_alive
            ttl = keeper.renew(lease_id, now)
            clear = keeper.checkpoint_to_clear(lease_id) if ttl else None
            if clear is not None:  # answered once the cleared record is committed, as etcd does
                await self.driver.propose(ShardRequest(txn=lease_record_txn([clear])))
            return LeaseKeepAliveResponse(header=header, ID=lease_id, TTL=ttl)
        if kind == "lease_time_to_live":
            lease_id = request.lease_time_to_live
            left = keeper.time_to_live(lease_id, now)
            if left is None:
                return LeaseTimeToLiveResponse(header=header, ID=lease_id, TTL=-1)
            return LeaseTimeToLiveResponse(header=header, ID=lease_id, TTL=left[0], grantedTTL=left[1])
        return LeaseLeasesResponse(header=header, leases=[LeaseStatus(ID=lease) for lease in keeper.leases()])

    # --- the lessor -----------------------------------------------------------------------

    async def keep(self) -> None:
        """The meta leader's lessor: mark expired leases revoked; checkpoint remaining TTLs, and
        compact the meta group's history behind them.

        All are ordinary writes to lease records, proposed like a client's and guarded so
        that none brings back a record a revoke marked or deleted meanwhile. The meta group
        is compacted at the revision of the checkpoint before the last: its records are all
        current state, and without it every checkpoint would add a version of every lease
        for good (routers that watched from before reload the records).

        It sleeps while there is nothing to keep: on a follower, or a leader catching up,
        until the replica leads and is ready; on a leader that keeps no lease, until an
        applied change or the next checkpoint. An idle cluster's meta group stays quiet.
        """
        driver, keeper = self.driver, self.keeper
        compact_at = 0  # the meta group's revision at the last checkpoint
        while True:
            if not self._ready.is_set():
                await self._ready.wait()
                last_checkpoint = time.monotonic()  # the first checkpoint is an interval after election
            now = time.monotonic()
            expired = keeper.expired(now)
            for write in expired:
                log.info("group %d member %d: lease %x expired", driver.config.group_id, driver.config.member_id,
                         write.record.id)
            writes = list(expired)
            if now - last_checkpoint >= self.checkpoint_interval_seconds:
                last_checkpoint = now
                writes += keeper.checkpoints(now)
                if self.store.compacted_revision < compact_at:
                    driver.queue_proposal(ShardRequest(compaction=CompactionRequest(revision=compact_at)))
                compact_at = self.store.revision
            for start in range(0, len(writes), LEASE_CHECKPOINT_BATCH):
                driver.queue_proposal(ShardRequest(txn=lease_record_txn(writes[start:start + LEASE_CHECKPOINT_BATCH])))
            if keeper.keeping:
                await asyncio.sleep(LEASE_CHECK_SECONDS)
            else:
                self._changed.clear()
                next_checkpoint = last_checkpoint + self.checkpoint_interval_seconds
                try:
                    await asyncio.wait_for(self._changed.wait(), max(next_checkpoint - time.monotonic(), 0.0))
                except TimeoutError:
                    pass


def lease_record_txn(writes: list[RecordWrite]) -> TxnRequest:
    """One transaction putting each record over the version it names, or over any that exists."""
    def guard(write: RecordWrite) -> Compare:
        key = lease_key(write.record.id)
        if write.mod_revision:
            return Compare(key=key, target=Compare.MOD, result=Compare.EQUAL, mod_revision=write.mod_revision)
        return Compare(key=key, target=Compare.CREATE, result=Compare.GREATER, create_revision=0)

    return TxnRequest(success=[
        RequestOp(request_txn=TxnRequest(compare=[guard(write)], success=[RequestOp(request_put=PutRequest(
            key=lease_key(write.record.id), value=write.record.SerializeToString()))]))
        for write in writes])
