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
cluster after a restart) resumes from there instead of from a whole TTL.

Nothing here does I/O or reads a clock: the replica passes `now` in and turns
what comes out into raft proposals.
"""

from __future__ import annotations

import math

from native import codec
from shards.mvcc import KEY, VALUE
from tessera.api.internal_pb2 import LeaseRecord
from tessera.api.kv_pb2 import Event
from tessera.api.meta_keys import LEASES_PREFIX, lease_id_of

# A proposed mark that never applied (a lost proposal) is proposed again after this.
MARK_RETRY_SECONDS = 2.0
# etcd revokes at most 1,000 expired leases a second; the replica checks four times a second.
EXPIRED_PER_CHECK = 250


class LeaseKeeper:
    def __init__(self, extend_seconds: float):
        self.extend_seconds = extend_seconds  # given to every lease on promotion (an election timeout)
        self.leading = False
        self._records: dict[int, LeaseRecord] = {}  # live leases: granted, not marked revoked
        self._deadlines: dict[int, float] = {}  # the leader's alone
        self._marked: dict[int, float] = {}  # expired leases whose revoke mark was proposed, and when

    def load(self, records: list[LeaseRecord]) -> None:
        """Start from the records in the store."""
        self._records = {record.id: record for record in records if not record.revoked}

    def apply(self, events, now: float) -> None:
        """Follow the lease records as changes to them apply."""
        for event in events:
            key, value = _key_and_value(event.kv)
            if not key.startswith(LEASES_PREFIX):
                continue
            lease_id = lease_id_of(key)
            record = LeaseRecord.FromString(value) if event.type == Event.PUT else None
            if record is None or record.revoked:
                self._records.pop(lease_id, None)
                self._deadlines.pop(lease_id, None)
                self._marked.pop(lease_id, None)
                continue
            self._records[lease_id] = record  # a grant, or a checkpoint of a lease we keep
            if self.leading and lease_id not in self._deadlines:
                self._deadlines[lease_id] = now + (record.remaining_ttl or record.ttl)

    def promote(self, now: float) -> None:
        self.leading = True
        self._marked.clear()
        self._deadlines = {lease_id: now + (record.remaining_ttl or record.ttl) + self.extend_seconds
                           for lease_id, record in self._records.items()}

    def demote(self) -> None:
        self.leading = False
        self._deadlines.clear()
        self._marked.clear()

    def renew(self, lease_id: int, now: float) -> int:
        """A keep-alive: the lease's TTL, or 0 if it is unknown or has expired (etcd's answers)."""
        deadline = self._deadlines.get(lease_id)
        if deadline is None or deadline <= now:
            return 0
        ttl = self._records[lease_id].ttl
        self._deadlines[lease_id] = now + ttl
        return ttl

    def time_to_live(self, lease_id: int, now: float) -> tuple[int, int] | None:
        """(seconds left, granted TTL), or None for a lease that is not live."""
        deadline = self._deadlines.get(lease_id)
        if deadline is None:
            return None
        return max(0, int(deadline - now)), self._records[lease_id].ttl

    def leases(self) -> list[int]:
        return sorted(self._deadlines)

    def expired(self, now: float) -> list[LeaseRecord]:
        """Records to mark revoked: leases past their deadline, each once (again after MARK_RETRY_SECONDS)."""
        due = []
        for lease_id, deadline in self._deadlines.items():
            if deadline <= now and now - self._marked.get(lease_id, -math.inf) >= MARK_RETRY_SECONDS:
                due.append(lease_id)
                if len(due) == EXPIRED_PER_CHECK:
                    break
        for lease_id in due:
            self._marked[lease_id] = now
        return [LeaseRecord(id=lease_id, ttl=self._records[lease_id].ttl, revoked=True) for lease_id in due]

    def checkpoints(self, now: float) -> list[LeaseRecord]:
        """Each unexpired lease's record with the whole seconds it has left."""
        return [LeaseRecord(id=lease_id, ttl=self._records[lease_id].ttl,
                            remaining_ttl=math.ceil(deadline - now))
                for lease_id, deadline in self._deadlines.items() if deadline > now]


def _key_and_value(kv: bytes) -> tuple[bytes, bytes]:
    fields = codec.decode_key_value(kv)
    return fields[KEY], fields[VALUE]
