"""The meta leader's lessor (shards/leases.py), driven by hand: records in, deadlines and writes out."""

from __future__ import annotations

from native import codec
from shards.leases import MARK_RETRY_SECONDS, LeaseKeeper, RecordWrite
from shards.mvcc import ChangeEvent
from tessera.api.internal_pb2 import LeaseRecord
from tessera.api.kv_pb2 import Event, KeyValue
from tessera.api.meta_keys import lease_key

EXTEND = 1.0


def put(record: LeaseRecord, revision: int = 1) -> ChangeEvent:
    kv = codec.encode_key_value(lease_key(record.id), 1, revision, 1, record.SerializeToString(), 0)
    return ChangeEvent(Event.PUT, revision, lease_key(record.id), kv, None)


def delete(lease_id: int) -> ChangeEvent:
    key = lease_key(lease_id)
    return ChangeEvent(Event.DELETE, 2, key, codec.encode_key_value(key, 0, 2, 0, b"", 0), None)


def stored(record: LeaseRecord, mod_revision: int = 1) -> KeyValue:
    return KeyValue(key=lease_key(record.id), value=record.SerializeToString(), mod_revision=mod_revision)


def leader_with(*records: LeaseRecord, now: float = 0.0) -> LeaseKeeper:
    keeper = LeaseKeeper(extend_seconds=EXTEND)
    keeper.load([stored(record) for record in records])
    keeper.promote(now)
    return keeper


def test_promotion_resumes_from_the_checkpoint_or_the_whole_ttl_plus_an_election():
    keeper = leader_with(LeaseRecord(id=1, ttl=30, remaining_ttl=12), LeaseRecord(id=2, ttl=10), now=100.0)
    assert keeper.time_to_live(1, 100.0) == (13, 30)
    assert keeper.time_to_live(2, 100.0) == (11, 10)
    assert keeper.leases() == [1, 2]


def test_a_follower_keeps_no_deadlines_and_answers_nothing():
    keeper = LeaseKeeper(extend_seconds=EXTEND)
    keeper.apply([put(LeaseRecord(id=7, ttl=5))], now=0.0)
    assert keeper.renew(7, 1.0) == 0
    assert keeper.time_to_live(7, 1.0) is None
    assert keeper.expired(100.0) == []
    keeper.promote(50.0)  # ...until it leads: then the lease it followed gets a deadline
    assert keeper.time_to_live(7, 50.0) == (6, 5)


def test_keep_alive_renews_a_whole_ttl_and_an_expired_lease_is_not_renewed():
    keeper = leader_with(now=0.0)
    keeper.apply([put(LeaseRecord(id=1, ttl=5))], now=0.0)  # a grant, while leading
    assert keeper.renew(1, 4.0) == 5
    assert keeper.time_to_live(1, 4.0) == (5, 5)
    assert keeper.renew(1, 9.5) == 0  # its deadline (9.0) passed
    assert keeper.renew(404, 1.0) == 0


def test_an_expired_lease_is_marked_once_then_again_if_the_mark_never_applied():
    keeper = leader_with(LeaseRecord(id=1, ttl=5), now=0.0)
    mark = RecordWrite(LeaseRecord(id=1, ttl=5, revoked=True))
    assert keeper.expired(5.9) == []
    assert keeper.expired(6.0) == [mark]
    assert keeper.expired(6.5) == []
    assert keeper.expired(6.0 + MARK_RETRY_SECONDS) == [mark]


def test_a_lease_being_revoked_has_no_time_left_and_is_unknown_once_its_record_goes():
    keeper = leader_with(LeaseRecord(id=1, ttl=5), now=0.0)
    keeper.apply([put(LeaseRecord(id=1, ttl=5, revoked=True), revision=3)], now=7.0)  # the mark applied
    assert keeper.time_to_live(1, 7.0) == (0, 5)  # its keys may still be there: not unknown yet
    assert keeper.renew(1, 7.0) == 0 and keeper.leases() == [] and keeper.expired(100.0) == []
    keeper.apply([delete(1)], now=8.0)  # every group deleted its keys; the record went
    assert keeper.time_to_live(1, 8.0) is None


def test_checkpoints_are_written_over_the_version_they_were_computed_from():
    keeper = leader_with(LeaseRecord(id=1, ttl=30), now=0.0)
    # ceil(31 - 10.2): whole seconds left; guarded by the record's mod revision (1)
    assert keeper.checkpoints(10.2) == [RecordWrite(LeaseRecord(id=1, ttl=30, remaining_ttl=21), 1)]
    keeper.apply([put(LeaseRecord(id=1, ttl=30, remaining_ttl=21), revision=5)], now=10.3)
    assert keeper.time_to_live(1, 10.3) == (20, 30)  # the leader's own deadline, not the record's
    assert keeper.checkpoints(11.0) == [RecordWrite(LeaseRecord(id=1, ttl=30, remaining_ttl=20), 5)]
    assert keeper.checkpoints(40.0) == []  # expired leases are marked, not checkpointed


def test_a_keep_alive_clears_a_checkpoint_so_a_new_leader_gives_the_whole_ttl():
    keeper = leader_with(LeaseRecord(id=1, ttl=30), now=0.0)
    assert keeper.checkpoint_to_clear(1) is None  # no checkpoint yet: nothing to clear
    keeper.apply([put(LeaseRecord(id=1, ttl=30, remaining_ttl=10), revision=4)], now=20.0)
    assert keeper.renew(1, 21.0) == 30
    assert keeper.checkpoint_to_clear(1) == RecordWrite(LeaseRecord(id=1, ttl=30), 4)
    assert keeper.checkpoint_to_clear(1) is None  # being cleared: proposed once
    keeper.apply([put(LeaseRecord(id=1, ttl=30), revision=6)], now=21.1)
    successor = LeaseKeeper(extend_seconds=EXTEND)
    successor.load([stored(LeaseRecord(id=1, ttl=30), mod_revision=6)])
    successor.promote(22.0)
    assert successor.time_to_live(1, 22.0) == (31, 30)


def test_a_snapshot_or_restart_reloads_every_record():
    keeper = leader_with(LeaseRecord(id=1, ttl=30), now=0.0)
    keeper.demote()
    keeper.load([stored(LeaseRecord(id=2, ttl=10)), stored(LeaseRecord(id=3, ttl=10, revoked=True))])
    keeper.promote(0.0)
    assert keeper.leases() == [2]
    assert keeper.time_to_live(1, 0.0) is None and keeper.time_to_live(3, 0.0) == (0, 10)


def test_a_deleted_record_is_forgotten_and_demotion_drops_every_deadline():
    keeper = leader_with(LeaseRecord(id=1, ttl=30), LeaseRecord(id=2, ttl=30), now=0.0)
    keeper.apply([delete(1)], now=1.0)
    assert keeper.leases() == [2]
    keeper.demote()
    assert keeper.leases() == [] and keeper.renew(2, 2.0) == 0
