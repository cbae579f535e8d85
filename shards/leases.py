"""The meta group's lessor: lease deadlines, kept by the group's leader (ARCHITECTURE decision 5).

Lease records live in group 0 under tessera/leases/ (LeaseRecord): a grant
creates one, a revoke marks it revoked, and the routers that see the mark
delete the lease's keys in every group, then the record. What the records do
not hold is when each lease expires: as in etcd, that lives in the leader's
memory, where keep-alives renew it without a raft write.

Every replica of the meta group follows the records as they apply; only the
leader keeps deadlines. A replica that becomes leader gives every lease its
remaining TTL (the last checkpoint's, else the whole TTL) plus an election
timeout, as etcd's lessor does on promotion, so a failover never expires a
healthy lease. The leader marks expired leases revoked and, every checkpoint
interval, records each lease's remaining TTL, so that its successor (or the
cluster after a restart) resumes from there instead of from a whole TTL. A
keep-alive of a lease that has a checkpoint clears it before it is answered (as
etcd's does), or a failover right after would resume from the older, shorter time.

A lease marked revoked is "being revoked" until its record goes: it takes no
keep-alive and its time to live is 0, as for an expired lease; only once the
routers have deleted its keys everywhere is it unknown (-1), so no client is
told a lease is gone while its keys can still be read.

Checkpoints and checkpoint clears are written only over the record they were
computed from (compare on its mod revision): one that lands after a revoke
mark changes nothing. Nothing here does I/O or reads a clock: the replica
passes `now` in and turns what comes out into raft proposals.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from native import codec
from shards.mvcc import KEY, VALUE
from tessera.api.internal_pb2 import LeaseRecord
from tessera.api.kv_pb2 import Event
from tessera.api.meta_keys import LEASES_PREFIX, lease_id_of

# A proposed mark that never applied (a lost proposal) is proposed again after this.
MARK_RETRY_SECONDS = 2.0
# etcd revokes at most 1,000 expired leases a second; the replica checks four times a second.
EXPIRED_PER_CHECK = 250


@dataclass(frozen=True)
class RecordWrite:
    """A lease record to put: over the version `mod_revision` (0: over whatever version exists)."""

    record: LeaseRecord
    mod_revision: int = 0


class LeaseKeeper:
    def __init__(self, extend_seconds: float):
        self.extend_seconds = extend_seconds  # given to every lease on promotion (an election timeout)
        self.leading = False
        self._records: dict[int, LeaseRecord] = {}  # live leases: granted, not marked revoked
        self._mod_revisions: dict[int, int] = {}  # each live record's version in the store
        self._revoking: dict[int, int] = {}  # marked revoked, record not yet deleted: lease -> TTL
        self._deadlines: dict[int, float] = {}  # the leader's alone
        self._marked: dict[int, float] = {}  # expired leases whose revoke mark was proposed, and when
        self._clearing: set[int] = set()  # leases whose checkpoint a keep-alive is clearing

    def load(self, kvs) -> None:
        """Start from the lease records in the store (KeyValues under LEASES_PREFIX)."""
        self._records, self._mod_revisions, self._revoking = {}, {}, {}
        for kv in kvs:
            self._follow(lease_id_of(kv.key), LeaseRecord.FromString(kv.value), kv.mod_revision)

    def apply(self, events, now: float) -> None:
        """Follow the lease records as changes to them apply."""
        for event in events:
            fields = codec.decode_key_value(event.kv)
            key = fields[KEY]
            if not key.startswith(LEASES_PREFIX):
                continue
            lease_id = lease_id_of(key)
            if event.type == Event.DELETE:
                self._forget(lease_id)
                continue
            record = LeaseRecord.FromString(fields[VALUE])
            self._follow(lease_id, record, event.revision)
            if self.leading and not record.revoked and lease_id not in self._deadlines:
                self._deadlines[lease_id] = now + (record.remaining_ttl or record.ttl)

    def _follow(self, lease_id: int, record: LeaseRecord, mod_revision: int) -> None:
        if record.revoked:
            self._forget(lease_id)
            self._revoking[lease_id] = record.ttl
        else:
            self._records[lease_id] = record  # a grant, or a checkpoint of a lease we keep
            self._mod_revisions[lease_id] = mod_revision
            self._clearing.discard(lease_id)

    def _forget(self, lease_id: int) -> None:
        for table in (self._records, self._mod_revisions, self._revoking, self._deadlines, self._marked):
            table.pop(lease_id, None)
        self._clearing.discard(lease_id)

    def promote(self, now: float) -> None:
        self.leading = True
        self._marked.clear()
        self._clearing.clear()
        self._deadlines = {lease_id: now + (record.remaining_ttl or record.ttl) + self.extend_seconds
                           for lease_id, record in self._records.items()}

    def demote(self) -> None:
        self.leading = False
        self._deadlines.clear()
        self._marked.clear()
        self._clearing.clear()

    def renew(self, lease_id: int, now: float) -> int:
        """A keep-alive: the lease's TTL, or 0 if it is unknown or has expired (etcd's answers)."""
        deadline = self._deadlines.get(lease_id)
        if deadline is None or deadline <= now:
            return 0
        ttl = self._records[lease_id].ttl
        self._deadlines[lease_id] = now + ttl
        return ttl

    def checkpoint_to_clear(self, lease_id: int) -> RecordWrite | None:
        """After a keep-alive: the lease's record without its checkpoint, if it has one not yet
        being cleared (a successor must not resume from a time older than the keep-alive)."""
        record = self._records.get(lease_id)
        if record is None or not record.remaining_ttl or lease_id in self._clearing:
            return None
        self._clearing.add(lease_id)
        return RecordWrite(LeaseRecord(id=lease_id, ttl=record.ttl), self._mod_revisions[lease_id])

    def time_to_live(self, lease_id: int, now: float) -> tuple[int, int] | None:
        """(seconds left, granted TTL); None for a lease that is unknown, or no longer being revoked."""
        if lease_id in self._revoking:
            return 0, self._revoking[lease_id]
        deadline = self._deadlines.get(lease_id)
        if deadline is None:
            return None
        return max(0, int(deadline - now)), self._records[lease_id].ttl

    def leases(self) -> list[int]:
        return sorted(self._deadlines)

    @property
    def keeping(self) -> bool:
        """Whether the leader has a lease whose deadline it watches."""
        return bool(self._deadlines)

    def expired(self, now: float) -> list[RecordWrite]:
        """Revoke marks for leases past their deadline, each once (again after MARK_RETRY_SECONDS)."""
        due = []
        for lease_id, deadline in self._deadlines.items():
            if deadline <= now and now - self._marked.get(lease_id, -math.inf) >= MARK_RETRY_SECONDS:
                due.append(lease_id)
                if len(due) == EXPIRED_PER_CHECK:
                    break
        for lease_id in due:
            self._marked[lease_id] = now
        return [RecordWrite(LeaseRecord(id=lease_id, ttl=self._records[lease_id].ttl, revoked=True))
                for lease_id in due]

    def checkpoints(self, now: float) -> list[RecordWrite]:
        """Each unexpired lease's record with the whole seconds it has left."""
        return [RecordWrite(LeaseRecord(id=lease_id, ttl=self._records[lease_id].ttl,
                                        remaining_ttl=math.ceil(deadline - now)), self._mod_revisions[lease_id])
                for lease_id, deadline in self._deadlines.items() if deadline > now]
