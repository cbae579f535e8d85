"""The meta leader's lessor (shards/leases.py), driven by hand: records in, deadlines and marks out."""

from __future__ import annotations

from native import codec
from shards.leases import MARK_RETRY_SECONDS, LeaseKeeper
from shards.mvcc import ChangeEvent
from tessera.api.internal_pb2 import LeaseRecord
from tessera.api.kv_pb2 import Event
from tessera.api.meta_keys import lease_key

EXTEND = 1.0


def put(record: LeaseRecord) -> ChangeEvent:
    kv = codec.encode_key_value(lease_key(record.id), 1, 1, 1, record.SerializeToString(), 0)
    return ChangeEvent(Event.PUT, 1, kv, None)


def delete(lease_id: int) -> ChangeEvent:
    return ChangeEvent(Event.DELETE, 2, codec.encode_key_value(lease_key(lease_id), 0, 2, 0, b"", 0), None)


def leader_with(*records: LeaseRecord, now: float = 0.0) -> LeaseKeeper:
    keeper = LeaseKeeper(extend_seconds=EXTEND)
    keeper.load(list(records))
    keeper.promote(now)
    return keeper


def test_promotion_resumes_from_the_checkpoint_or_the_whole_ttl_plus_an_election():
    keeper = leader_with(LeaseRecord(id=1, ttl=30, remaining_ttl=12), LeaseRecord(id=2, ttl=10),
                         LeaseRecord(id=3, ttl=10, revoked=True), now=100.0)
    assert keeper.time_to_live(1, 100.0) == (13, 30)
    assert keeper.time_to_live(2, 100.0) == (11, 10)
    assert keeper.time_to_live(3, 100.0) is None  # marked revoked: not live
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
    assert keeper.expired(5.9) == []
    assert keeper.expired(6.0) == [LeaseRecord(id=1, ttl=5, revoked=True)]
    assert keeper.expired(6.5) == []
    assert keeper.expired(6.0 + MARK_RETRY_SECONDS) == [LeaseRecord(id=1, ttl=5, revoked=True)]
    keeper.apply([put(LeaseRecord(id=1, ttl=5, revoked=True))], now=9.0)  # the mark applied
    assert keeper.expired(100.0) == [] and keeper.leases() == []


def test_checkpoints_record_whole_seconds_left_and_a_checkpoint_applied_keeps_the_deadline():
    keeper = leader_with(LeaseRecord(id=1, ttl=30), now=0.0)
    assert keeper.checkpoints(10.2) == [LeaseRecord(id=1, ttl=30, remaining_ttl=21)]  # ceil(31 - 10.2)
    keeper.apply([put(LeaseRecord(id=1, ttl=30, remaining_ttl=21))], now=10.3)
    assert keeper.time_to_live(1, 10.3) == (20, 30)  # the leader's own deadline, not the record's
    assert keeper.checkpoints(40.0) == []  # expired leases are marked, not checkpointed


def test_a_deleted_record_is_forgotten_and_demotion_drops_every_deadline():
    keeper = leader_with(LeaseRecord(id=1, ttl=30), LeaseRecord(id=2, ttl=30), now=0.0)
    keeper.apply([delete(1)], now=1.0)
    assert keeper.leases() == [2]
    keeper.demote()
    assert keeper.leases() == [] and keeper.renew(2, 2.0) == 0
