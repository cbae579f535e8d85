"""MvccStore.bulk_load: a snapshot's keys into an empty store, as a restore fills each replica;
MvccStore.load_history: etcd's history (its key bucket) into one, as an import does."""

import pytest

from native import codec

from shards.mvcc import MvccStore, Proposal, RevokeLease, StoreInvariantError
from tessera.api import errors
from tessera.api.kv_pb2 import Event, KeyValue
from tessera.api.rpc_pb2 import PutRequest, RangeRequest

SNAPSHOT_REVISION = 20
RECORDS = [
    KeyValue(key=b"a", create_revision=3, mod_revision=12, version=4, value=b"A", lease=77),
    # Two keys of one transaction: one mod revision, kept apart by sub revisions.
    KeyValue(key=b"b", create_revision=15, mod_revision=15, version=1, value=b"B"),
    KeyValue(key=b"c", create_revision=15, mod_revision=15, version=1, value=b"C", lease=77),
]


@pytest.fixture
def store(tmp_path):
    store = MvccStore.open(tmp_path / "mvcc")
    yield store
    store.close()


def everything(store) -> list[KeyValue]:
    return list(store.range(RangeRequest(key=b"\0", range_end=b"\0")).kvs)


def test_loaded_keys_keep_their_revisions_versions_and_leases_and_survive_a_reopen(store, tmp_path):
    assert store.bulk_load([RECORDS[:1], RECORDS[1:]], SNAPSHOT_REVISION) == 3
    assert everything(store) == RECORDS
    assert store.range(RangeRequest(key=b"a")).header.revision == SNAPSHOT_REVISION
    assert store.lease_keys(77) == [b"a", b"c"]
    store.close()
    reopened = MvccStore.open(tmp_path / "mvcc")
    try:
        assert everything(reopened) == RECORDS and reopened.revision == SNAPSHOT_REVISION
        assert reopened.lease_keys(77) == [b"a", b"c"]
    finally:
        reopened.close()


def test_history_before_the_snapshot_is_compacted_and_the_next_write_comes_after_it(store):
    store.bulk_load([RECORDS], SNAPSHOT_REVISION)
    with pytest.raises(errors.Compacted):
        store.range(RangeRequest(key=b"a", revision=SNAPSHOT_REVISION - 1))
    put = store.apply([Proposal(1, 0, [PutRequest(key=b"a", value=b"A2", ignore_lease=True)])]).responses[0][0]
    assert put.header.revision == SNAPSHOT_REVISION + 1
    written = store.range(RangeRequest(key=b"a")).kvs[0]
    assert (written.create_revision, written.version, written.lease) == (3, 5, 77)


def test_a_loaded_lease_is_revoked_with_its_keys(store):
    store.bulk_load([RECORDS], SNAPSHOT_REVISION)
    store.apply([Proposal(1, 0, [RevokeLease(77)])])
    assert [kv.key for kv in everything(store)] == [b"b"]


def test_only_an_empty_store_is_loaded_and_records_must_fit_the_revision(store):
    with pytest.raises(ValueError, match="do not fit a snapshot at 14"):
        store.bulk_load([RECORDS], 14)
    assert everything(store) == []  # the page's transaction was undone, in memory too
    store.apply([Proposal(1, 0, [PutRequest(key=b"x", value=b"1")])])
    with pytest.raises(StoreInvariantError, match="needs an empty store"):
        store.bulk_load([RECORDS], SNAPSHOT_REVISION)


# etcd's key bucket: a created, changed, deleted and re-created with a lease; b in a txn with a's
# first put. Compacted at 4: the record of revision 3 is what etcd had not removed yet.
ETCD_HISTORY = [
    (codec.encode_revision(2, 0), KeyValue(key=b"a", create_revision=2, mod_revision=2, version=1, value=b"1")),
    (codec.encode_revision(2, 1), KeyValue(key=b"b", create_revision=2, mod_revision=2, version=1, value=b"B")),
    (codec.encode_revision(3, 0), KeyValue(key=b"a", create_revision=2, mod_revision=3, version=2, value=b"2")),
    (codec.encode_revision(5, 0, tombstone=True), KeyValue(key=b"a")),  # etcd's tombstone: the key only
    (codec.encode_revision(6, 0), KeyValue(key=b"a", create_revision=6, mod_revision=6, version=1, value=b"3",
                                           lease=9)),
]


def test_etcd_history_loads_with_its_revisions_deletes_compaction_and_leases(store):
    assert store.load_history([ETCD_HISTORY[:2], ETCD_HISTORY[2:]], 7, compacted=4) == 5
    assert store.revision == 7 and store.compacted_revision == 4
    assert everything(store) == [ETCD_HISTORY[4][1], ETCD_HISTORY[1][1]]
    assert list(store.range(RangeRequest(key=b"a", revision=4)).kvs) == [ETCD_HISTORY[2][1]]
    assert list(store.range(RangeRequest(key=b"a", revision=5)).kvs) == []
    with pytest.raises(errors.Compacted):
        store.range(RangeRequest(key=b"a", revision=3))
    assert store.lease_keys(9) == [b"a"]
    # A watch from after the compaction sees the delete at its revision, as etcd shows it.
    events, _ = store.changes(5, b"a")
    assert [(event.revision, event.type, KeyValue.FromString(event.kv).mod_revision) for event in events] == [
        (5, Event.DELETE, 5), (6, Event.PUT, 6)]


def test_etcd_history_must_be_puts_at_their_own_revisions(store):
    moved = [(codec.encode_revision(4, 0), KeyValue(key=b"a", create_revision=2, mod_revision=3, version=1))]
    with pytest.raises(ValueError, match="are not a put's at 4"):
        store.load_history([moved], 7, compacted=0)
