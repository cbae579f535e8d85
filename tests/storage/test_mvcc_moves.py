"""A range moving between stores: ImportKeys in, DropRange out, with no events and the
records as the source had them; reads below the last import's floor are "compacted"."""

import pytest

from shards.mvcc import BelowMovedHistory, DropRange, ImportKeys
from tessera.api import errors
from tessera.api.kv_pb2 import KeyValue
from tessera.api.rpc_pb2 import DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest
from test_mvcc import Store

START, END = b"/m/", b"/m0"


@pytest.fixture
def target(tmp_path):
    store = Store(tmp_path / "target")
    yield store
    store.mvcc.close()


def records(store, key=START, range_end=END, **fields):
    return list(store.mvcc.range(RangeRequest(key=key, range_end=range_end, **fields)).kvs)


def test_imported_records_keep_their_revisions_versions_and_leases_and_make_no_events(target):
    target.put(b"/other", b"x")
    source_records = [KeyValue(key=b"/m/a", value=b"1", create_revision=40, mod_revision=57, version=3, lease=7),
                      KeyValue(key=b"/m/b", value=b"2", create_revision=41, mod_revision=41, version=1)]
    target.apply(ImportKeys(START, END, source_records, [], False))
    assert target.last_events == []
    assert records(target) == source_records
    assert target.mvcc.lease_keys(7) == [b"/m/a"]
    # The change feed leaves them out: the source's watchers delivered those changes.
    events, _ = target.mvcc.changes(1, START, END)
    assert events == []


def test_later_imports_replace_and_delete_and_a_client_write_after_them_is_an_event(target):
    target.apply(ImportKeys(START, END, [KeyValue(key=b"/m/a", value=b"1", create_revision=5,
                                                  mod_revision=5, version=1, lease=7)], [], False))
    target.apply(ImportKeys(START, END, [KeyValue(key=b"/m/a", value=b"2", create_revision=5,
                                                  mod_revision=9, version=2)], [], False))
    assert [(kv.value, kv.mod_revision, kv.version) for kv in records(target)] == [(b"2", 9, 2)]
    assert target.mvcc.lease_keys(7) == []
    target.apply(ImportKeys(START, END, [], [b"/m/a", b"/m/never"], True))
    assert records(target) == [] and target.last_events == []
    floor = target.mvcc.revision
    target.apply(PutRequest(key=b"/m/a", value=b"3"), floor=100)
    assert [(kv.create_revision, kv.mod_revision, kv.version) for kv in records(target)] == [(100, 100, 1)]
    events, _ = target.mvcc.changes(floor, START, END)
    assert [(event.revision, event.prev_kv) for event in events] == [(100, None)]
    # Below the floor, the range's history is in the group it came from.
    with pytest.raises(BelowMovedHistory) as below:
        target.mvcc.changes(floor - 1, b"/", b"\0")
    assert below.value.floor == floor
    assert target.mvcc.changes(1, b"/n", b"/o")[0] == []  # other ranges are not held to it


def test_reads_below_the_final_import_are_compacted_in_the_range_only(target):
    target.put(b"/other", b"x")
    before = target.mvcc.revision
    target.apply(ImportKeys(START, END, [KeyValue(key=b"/m/a", value=b"1", create_revision=2,
                                                  mod_revision=2, version=1)], [], True))
    floor = target.mvcc.revision
    target.put(b"/other", b"y")
    with pytest.raises(errors.Compacted):
        target.mvcc.range(RangeRequest(key=b"/m/a", revision=before))
    with pytest.raises(errors.Compacted):
        target.mvcc.range(RangeRequest(key=b"/", range_end=b"\0", revision=before))
    assert target.mvcc.range(RangeRequest(key=b"/m/a", revision=floor)).kvs[0].value == b"1"
    assert target.mvcc.range(RangeRequest(key=b"/other", revision=before)).kvs[0].value == b"x"
    # A transaction's read at an old revision gets the same answer.
    answer = target.apply(TxnRequest(success=[RequestOp(request_range=RangeRequest(key=b"/m/a", revision=before))]))
    assert isinstance(answer, errors.Compacted)
    target.reopen()  # the floor is on disk
    with pytest.raises(errors.Compacted):
        target.mvcc.range(RangeRequest(key=b"/m/a", revision=before))


def test_drop_range_deletes_the_range_with_no_event_and_keeps_its_history(tmp_path):
    source = Store(tmp_path / "source")
    try:
        source.put(b"/m/a", b"1", lease=5)
        source.put(b"/m/b", b"2")
        source.put(b"/n", b"3")
        written = source.mvcc.revision
        source.apply(DropRange(START, END))
        assert source.last_events == []
        assert records(source) == [] and source.mvcc.lease_keys(5) == []
        assert [kv.key for kv in records(source, b"/", b"\0")] == [b"/n"]
        # A watcher still behind reads the changes it has yet to deliver, and no drop.
        events, _ = source.mvcc.changes(1, START, END)
        assert [kv.key for kv in (_kv(event) for event in events)] == [b"/m/a", b"/m/b"]
        assert len(records(source, revision=written)) == 2
        source.reopen()
        assert records(source) == []
        source.apply(DeleteRangeRequest(key=START, range_end=END))  # nothing left to delete
        assert source.last_events == []
    finally:
        source.mvcc.close()


def test_an_import_is_refused_while_out_of_space_and_leaves_nothing(tmp_path):
    target = Store(tmp_path / "target", quota_bytes=1)
    try:
        target.put(b"/x", b"v" * 100)  # over the quota: the alarm is the replica's, raised here by hand
        target.mvcc.space_exceeded = True
        answer = target.apply(ImportKeys(START, END, [KeyValue(key=b"/m/a", value=b"1", create_revision=2,
                                                               mod_revision=2, version=1)], [], False))
        assert isinstance(answer, errors.NoSpace)
        assert records(target) == []
    finally:
        target.mvcc.close()


def _kv(event):
    return KeyValue.FromString(event.kv)

