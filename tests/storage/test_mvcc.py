"""The MVCC store, rule by rule: revisions, each operation and each error etcd gives."""

import pytest

from native import codec
from shards.mvcc import (
    FIRST_REVISION,
    MvccStore,
    PlainPut,
    Proposal,
    RaiseRevision,
    RemoveMember,
    RevokeLease,
    SetMember,
)
from tessera.api import errors
from tessera.api.kv_pb2 import Event, KeyValue
from tessera.api.rpc_pb2 import (
    CORRUPT,
    NONE,
    NOSPACE,
    AlarmRequest,
    Compare,
    CompactionRequest,
    DeleteRangeRequest,
    PutRequest,
    PutResponse,
    RangeRequest,
    RequestOp,
    TxnRequest,
)


class Store:
    """A store with a raft index counter, so tests read as a list of requests."""

    def __init__(self, path, **options):
        self.path = path
        self.options = options
        self.mvcc = MvccStore.open(path, **options)
        self.index = 0

    def apply(self, *requests, floor=0):
        self.index += 1
        result = self.mvcc.apply([Proposal(self.index, floor, list(requests))])
        self.last_events = result.events
        responses = result.responses[0]
        return responses[0] if len(responses) == 1 else responses

    def put(self, key, value=b"v", **fields):
        return self.apply(PutRequest(key=key, value=value, **fields))

    def get(self, key, **fields):
        kvs = self.mvcc.range(RangeRequest(key=key, **fields)).kvs
        return kvs[0] if kvs else None

    def reopen(self):
        self.mvcc.close()
        self.mvcc = MvccStore.open(self.path, **self.options)


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "mvcc")
    yield store
    store.mvcc.close()


def put_op(key, value=b"v", **fields):
    return RequestOp(request_put=PutRequest(key=key, value=value, **fields))


def range_op(key, **fields):
    return RequestOp(request_range=RangeRequest(key=key, **fields))


def delete_op(key, **fields):
    return RequestOp(request_delete_range=DeleteRangeRequest(key=key, **fields))


# --- revisions -------------------------------------------------------------------------


def test_an_empty_store_is_at_revision_1_and_the_first_write_gets_2(store):
    assert store.mvcc.revision == FIRST_REVISION == 1
    assert store.mvcc.range(RangeRequest(key=b"a")).header.revision == 1
    assert store.put(b"a").header.revision == 2


def test_version_create_and_mod_revision_follow_etcd(store):
    store.put(b"k", b"1")
    store.put(b"k", b"2")
    assert (store.get(b"k").create_revision, store.get(b"k").mod_revision, store.get(b"k").version) == (2, 3, 2)
    store.apply(DeleteRangeRequest(key=b"k"))
    store.put(b"k", b"3")  # a new generation: version and creation start again
    kv = store.get(b"k")
    assert (kv.create_revision, kv.mod_revision, kv.version, kv.value) == (5, 5, 1, b"3")


def test_a_write_takes_the_floor_when_it_is_higher(store):
    assert store.apply(PutRequest(key=b"a"), floor=100).header.revision == 100
    assert store.apply(PutRequest(key=b"b"), floor=50).header.revision == 101
    assert store.get(b"a").mod_revision == 100


def test_raise_revision_lifts_the_revision_without_a_change_or_event(store):
    store.put(b"a")
    assert store.apply(RaiseRevision(40)) is None
    assert store.mvcc.revision == 40 and store.last_events == []
    assert store.get(b"a").mod_revision == 2
    assert store.apply(RaiseRevision(10)) is None and store.mvcc.revision == 40
    assert store.put(b"b").header.revision == 41


def test_a_request_that_changes_nothing_keeps_the_revision(store):
    store.put(b"a")
    assert store.apply(DeleteRangeRequest(key=b"missing")).deleted == 0
    assert store.apply(TxnRequest(success=[range_op(b"a")])).header.revision == 2
    assert store.mvcc.revision == 2


def test_a_plain_put_is_written_even_where_history_already_holds_a_higher_revision(store):
    """The native writer appends a plain put's record at the end of history, the highest revision. A
    record above it (only a damaged store has one) does not lose the put: it goes in place, as a put
    on the Python path would."""
    with store.mvcc._env.begin(write=True) as txn:
        txn.put(codec.encode_revision(1000, 0), codec.encode_key_value(b"z", 1000, 1000, 1, b"stray", 0),
                db=store.mvcc._history)
    store.apply(PlainPut(b"k", b"landed"))
    assert store.get(b"k").value == b"landed"
    assert store.get(b"k").mod_revision == FIRST_REVISION + 1


def test_applying_an_applied_index_again_does_nothing(store):
    store.put(b"a", b"1")
    again = store.mvcc.apply([Proposal(store.index, 0, [PutRequest(key=b"a", value=b"2")])])
    assert again.responses == [None] and again.events == []
    assert store.get(b"a").value == b"1" and store.mvcc.revision == 2
    store.reopen()
    assert store.mvcc.applied_index == store.index and store.get(b"a").value == b"1"


# --- put ---------------------------------------------------------------------------------


def test_put_returns_the_previous_record_when_asked(store):
    assert not store.put(b"a", b"1", prev_kv=True).HasField("prev_kv")
    assert store.put(b"a", b"2", prev_kv=True).prev_kv.value == b"1"
    assert not store.put(b"a", b"3").HasField("prev_kv")


def test_ignore_value_and_ignore_lease_keep_what_the_key_has(store):
    store.put(b"a", b"kept", lease=7)
    store.put(b"a", ignore_value=True, value=b"")
    assert (store.get(b"a").value, store.get(b"a").lease) == (b"kept", 0)
    store.put(b"a", b"new", lease=9)
    store.put(b"a", b"newer", ignore_lease=True)
    assert (store.get(b"a").value, store.get(b"a").lease) == (b"newer", 9)


@pytest.mark.parametrize("flag", ["ignore_value", "ignore_lease"])
def test_ignore_on_a_missing_key_is_key_not_found(store, flag):
    response = store.apply(PutRequest(key=b"missing", **{flag: True}))
    assert response == errors.KeyNotFound()
    assert response.message == "etcdserver: key not found" and response.code == "INVALID_ARGUMENT"
    assert store.mvcc.revision == 1


# --- delete ------------------------------------------------------------------------------


def test_delete_range_forms_and_prev_kvs(store):
    for key in (b"a", b"b", b"c", b"d"):
        store.put(key, key)
    response = store.apply(DeleteRangeRequest(key=b"b", range_end=b"d", prev_kv=True))
    assert response.deleted == 2 and [kv.key for kv in response.prev_kvs] == [b"b", b"c"]
    assert response.header.revision == 6  # one revision for the whole range
    assert store.apply(DeleteRangeRequest(key=b"a", range_end=b"\0")).deleted == 2
    assert store.mvcc.range(RangeRequest(key=b"\0", range_end=b"\0")).count == 0


def test_delete_events_carry_the_key_revision_and_previous_record(store):
    store.put(b"a", b"1")
    store.put(b"b", b"2")
    store.apply(DeleteRangeRequest(key=b"a", range_end=b"c"))
    events = store.last_events
    assert [(e.type, e.revision) for e in events] == [(Event.DELETE, 4), (Event.DELETE, 4)]
    assert KeyValue.FromString(events[0].kv) == KeyValue(key=b"a", mod_revision=4)
    assert KeyValue.FromString(events[1].prev_kv).value == b"2"


# --- range -------------------------------------------------------------------------------


def test_range_limit_more_and_count(store):
    for key in (b"a", b"b", b"c"):
        store.put(key)
    response = store.mvcc.range(RangeRequest(key=b"a", range_end=b"\0", limit=2))
    assert [kv.key for kv in response.kvs] == [b"a", b"b"] and response.more and response.count == 3
    response = store.mvcc.range(RangeRequest(key=b"a", range_end=b"\0", limit=3))
    assert not response.more
    counted = store.mvcc.range(RangeRequest(key=b"a", range_end=b"\0", count_only=True))
    assert counted.count == 3 and not counted.kvs


def test_range_at_an_old_revision_reports_the_current_one_in_its_header(store):
    store.put(b"a", b"1")
    store.put(b"a", b"2")
    response = store.mvcc.range(RangeRequest(key=b"a", revision=2))
    assert response.kvs[0].value == b"1" and response.header.revision == 3


def test_range_filters_sort_and_keys_only(store):
    store.put(b"a", b"3")
    store.put(b"b", b"1")
    store.put(b"c", b"2")
    store.put(b"a", b"4")
    everything = dict(key=b"a", range_end=b"\0")
    by_value = store.mvcc.range(RangeRequest(**everything, sort_target=RangeRequest.VALUE))
    assert [kv.value for kv in by_value.kvs] == [b"1", b"2", b"4"]  # ascending when only a target is given
    by_mod = store.mvcc.range(RangeRequest(**everything, sort_target=RangeRequest.MOD, sort_order=RangeRequest.DESCEND))
    assert [kv.key for kv in by_mod.kvs] == [b"a", b"c", b"b"]
    filtered = store.mvcc.range(RangeRequest(**everything, min_mod_revision=4, min_create_revision=3, max_create_revision=4))
    assert [kv.key for kv in filtered.kvs] == [b"c"] and filtered.count == 3
    keys_only = store.mvcc.range(RangeRequest(**everything, keys_only=True, limit=1))
    assert keys_only.kvs[0].key == b"a" and keys_only.kvs[0].value == b"" and keys_only.more


def test_range_at_a_future_or_compacted_revision_is_etcds_error(store):
    store.put(b"a")
    store.put(b"a")
    with pytest.raises(errors.FutureRevision) as future:
        store.mvcc.range(RangeRequest(key=b"a", revision=4))
    assert (future.value.code, str(future.value)) == (
        "OUT_OF_RANGE", "etcdserver: mvcc: required revision is a future revision")
    store.apply(CompactionRequest(revision=3))
    with pytest.raises(errors.Compacted) as compacted:
        store.mvcc.range(RangeRequest(key=b"a", revision=2))
    assert (compacted.value.code, str(compacted.value)) == (
        "OUT_OF_RANGE", "etcdserver: mvcc: required revision has been compacted")
    assert store.mvcc.range(RangeRequest(key=b"a", revision=3)).kvs[0].mod_revision == 3


# --- txn ---------------------------------------------------------------------------------


def test_a_txn_writes_at_one_revision_with_rising_sub_revisions(store):
    response = store.apply(TxnRequest(success=[put_op(b"a"), put_op(b"b"), delete_op(b"zz")]))
    assert response.succeeded and response.header.revision == 2
    assert [(e.type, e.revision) for e in store.last_events] == [(Event.PUT, 2), (Event.PUT, 2)]
    assert store.get(b"a").mod_revision == store.get(b"b").mod_revision == 2


def test_reads_inside_a_txn_see_its_earlier_writes(store):
    store.put(b"a", b"old")
    response = store.apply(TxnRequest(success=[put_op(b"a", b"new"), range_op(b"a")]))
    assert response.responses[1].response_range.kvs[0].value == b"new"


def test_compare_targets_and_results(store):
    store.put(b"k", b"value", lease=5)

    def holds(**compare):
        return store.apply(TxnRequest(compare=[Compare(key=b"k", **compare)])).succeeded

    assert holds(target=Compare.VALUE, result=Compare.EQUAL, value=b"value")
    assert holds(target=Compare.VALUE, result=Compare.GREATER, value=b"val")
    assert holds(target=Compare.VERSION, result=Compare.EQUAL, version=1)
    assert holds(target=Compare.CREATE, result=Compare.LESS, create_revision=3)
    assert holds(target=Compare.MOD, result=Compare.NOT_EQUAL, mod_revision=3)
    assert holds(target=Compare.LEASE, result=Compare.EQUAL, lease=5)
    assert not holds(target=Compare.MOD, result=Compare.GREATER, mod_revision=2)


def test_compare_on_a_missing_key_sees_zeros_but_never_matches_a_value(store):
    def holds(**compare):
        return store.apply(TxnRequest(compare=[Compare(key=b"missing", **compare)])).succeeded

    assert holds(target=Compare.CREATE, result=Compare.EQUAL, create_revision=0)  # Kubernetes' create
    assert holds(target=Compare.VERSION, result=Compare.EQUAL, version=0)
    assert not holds(target=Compare.VALUE, result=Compare.EQUAL, value=b"")
    assert not holds(target=Compare.VALUE, result=Compare.NOT_EQUAL, value=b"x")


def test_compare_over_a_range_needs_every_key(store):
    store.put(b"p/1", b"x")
    store.put(b"p/2", b"y")
    compare = Compare(key=b"p/", range_end=b"p0", target=Compare.VALUE, result=Compare.EQUAL, value=b"x")
    assert not store.apply(TxnRequest(compare=[compare])).succeeded
    compare.result, compare.value = Compare.GREATER, b"w"
    assert store.apply(TxnRequest(compare=[compare])).succeeded


def test_kubernetes_style_optimistic_update(store):
    store.put(b"/registry/pods/a", b"v1")
    revision = store.get(b"/registry/pods/a").mod_revision
    compare = Compare(key=b"/registry/pods/a", target=Compare.MOD, result=Compare.EQUAL, mod_revision=revision)
    update = TxnRequest(compare=[compare], success=[put_op(b"/registry/pods/a", b"v2")],
                        failure=[range_op(b"/registry/pods/a")])
    assert store.apply(update).succeeded
    stale = store.apply(update)
    assert not stale.succeeded and stale.responses[0].response_range.kvs[0].value == b"v2"


def test_nested_txn_branches_are_chosen_on_the_state_before_the_txn(store):
    store.put(b"a", b"1")
    inner = TxnRequest(
        compare=[Compare(key=b"a", target=Compare.VALUE, result=Compare.EQUAL, value=b"1")],
        success=[put_op(b"inner", b"saw the old value")],
    )
    outer = TxnRequest(success=[put_op(b"a", b"2"), RequestOp(request_txn=inner)])
    response = store.apply(outer)
    assert response.responses[1].response_txn.succeeded
    assert store.get(b"inner").value == b"saw the old value"
    assert store.get(b"inner").mod_revision == store.get(b"a").mod_revision == 3


def test_a_txn_that_fails_a_check_changes_nothing(store):
    store.put(b"a")
    response = store.apply(TxnRequest(success=[put_op(b"b"), put_op(b"missing", ignore_value=True, value=b"")]))
    assert response == errors.KeyNotFound()
    assert store.get(b"b") is None and store.mvcc.revision == 2 and store.last_events == []


def test_a_range_in_a_txn_at_a_bad_revision_fails_the_whole_txn(store):
    store.put(b"a")
    assert store.apply(TxnRequest(success=[put_op(b"b"), range_op(b"a", revision=9)])) == errors.FutureRevision()
    store.put(b"a")
    store.apply(CompactionRequest(revision=3))
    assert store.apply(TxnRequest(success=[range_op(b"a", revision=2)])) == errors.Compacted()
    assert store.get(b"b") is None


# --- compaction --------------------------------------------------------------------------


def test_compaction_errors(store):
    store.put(b"a")
    assert store.apply(CompactionRequest(revision=5)) == errors.FutureRevision()
    assert store.apply(CompactionRequest(revision=2)).header.revision == 2
    assert store.apply(CompactionRequest(revision=2)) == errors.Compacted()
    assert store.apply(CompactionRequest(revision=1)) == errors.Compacted()


def test_compaction_keeps_the_latest_version_of_live_keys_only(store):
    store.put(b"live", b"1")
    store.put(b"live", b"2")
    store.put(b"gone", b"x")
    store.apply(DeleteRangeRequest(key=b"gone"))
    store.put(b"later", b"y")
    store.apply(CompactionRequest(revision=5))
    while not store.mvcc.compact_step(max_records=1):
        pass
    with store.mvcc._env.begin() as txn:
        assert txn.stat(store.mvcc._history)["entries"] == 2  # live@3 and later@6
    assert store.get(b"live", revision=5).value == b"2"
    assert store.get(b"gone", revision=5) is None


def test_a_restart_mid_compaction_finishes_it(store):
    for number in range(20):
        store.put(b"k%d" % (number % 3), b"%d" % number)
    store.apply(CompactionRequest(revision=15))
    store.mvcc.compact_step(max_records=3)
    store.reopen()
    assert store.mvcc.compaction_pending
    while not store.mvcc.compact_step(max_records=3):
        pass
    assert not store.mvcc.compaction_pending
    with store.mvcc._env.begin() as txn:
        assert txn.stat(store.mvcc._history)["entries"] == 3 + 6


def test_a_second_compaction_removes_what_the_first_one_kept(store):
    """Regression: compact_step resumed a new compaction where the last one had stopped,
    so the first compaction's kept record was never removed and came back on reopen."""
    store.put(b"a")  # 2
    store.apply(CompactionRequest(revision=2))
    while not store.mvcc.compact_step():
        pass
    store.apply(DeleteRangeRequest(key=b"a"))  # 3
    store.apply(CompactionRequest(revision=3))
    while not store.mvcc.compact_step():
        pass
    store.reopen()
    assert store.get(b"a") is None
    with store.mvcc._env.begin() as txn:
        assert txn.stat(store.mvcc._history)["entries"] == 0


# --- hashes, quota, defragment, leases -------------------------------------------------


def test_equal_histories_hash_equal_however_far_physical_compaction_got(tmp_path):
    first, second = Store(tmp_path / "one"), Store(tmp_path / "two")
    for replica in (first, second):
        for number in range(30):
            replica.put(b"k%d" % (number % 4), b"%d" % number)
        replica.apply(CompactionRequest(revision=20))
    while not first.mvcc.compact_step(max_records=5):
        pass
    assert first.mvcc.hash_kv() == second.mvcc.hash_kv()
    assert first.mvcc.hash_kv(25) == second.mvcc.hash_kv(25)
    second.put(b"k0", b"different")  # revision 32 on the second replica only
    assert first.mvcc.hash_kv(31) == second.mvcc.hash_kv(31)
    first.put(b"k0", b"other")
    assert first.mvcc.hash_kv(32) != second.mvcc.hash_kv(32)


def test_hash_covers_every_record(tmp_path):
    first, second = Store(tmp_path / "one"), Store(tmp_path / "two")
    for replica in (first, second):
        replica.put(b"a", lease=3)
        replica.put(b"b")
    assert first.mvcc.hash() == second.mvcc.hash()
    first.apply(RevokeLease(99))  # no key changes, but a revoked lease is state
    assert first.mvcc.hash() != second.mvcc.hash()


def test_nospace_alarm_refuses_writes_that_add_data_until_disarmed(store):
    store.put(b"a")
    alarm = AlarmRequest(action=AlarmRequest.ACTIVATE, memberID=1, alarm=NOSPACE)
    assert list(store.apply(alarm).alarms)[0].alarm == NOSPACE
    refused = store.put(b"b")
    assert refused == errors.NoSpace()
    assert (refused.code, refused.message) == ("RESOURCE_EXHAUSTED", "etcdserver: mvcc: database space exceeded")
    assert store.apply(TxnRequest(failure=[put_op(b"c")])) == errors.NoSpace()
    assert store.apply(DeleteRangeRequest(key=b"a")).deleted == 1  # deletes free space
    assert store.mvcc.range(RangeRequest(key=b"a")).count == 0
    store.reopen()  # the alarm is state, not memory
    assert store.put(b"b") == errors.NoSpace()
    store.apply(AlarmRequest(action=AlarmRequest.DEACTIVATE, memberID=1, alarm=NOSPACE))
    assert store.put(b"b").header.revision == 4


def test_corrupt_alarm_refuses_every_write_of_data_until_disarmed(store):
    store.put(b"a")
    store.apply(AlarmRequest(action=AlarmRequest.ACTIVATE, memberID=2, alarm=CORRUPT))
    for write in (PutRequest(key=b"b"), DeleteRangeRequest(key=b"a"), DeleteRangeRequest(key=b"absent"),
                  TxnRequest(success=[put_op(b"c")]), TxnRequest(failure=[RequestOp(
                      request_delete_range=DeleteRangeRequest(key=b"a"))]), CompactionRequest(revision=2)):
        refused = store.apply(write)
        assert (refused.code, refused.message) == ("DATA_LOSS", "etcdserver: corrupt cluster"), write
    # Reads go on, a transaction of ranges alone too (etcd serves it as a read).
    read = store.apply(TxnRequest(success=[RequestOp(request_range=RangeRequest(key=b"a"))]))
    assert read.responses[0].response_range.count == 1
    store.reopen()
    assert store.put(b"b") == errors.Corrupt()
    store.apply(AlarmRequest(action=AlarmRequest.DEACTIVATE, memberID=2, alarm=CORRUPT))
    assert store.put(b"b").header.revision == 3


def test_alarm_none_is_never_raised(store):
    """etcd's apply ignores ACTIVATE of alarm NONE: nothing is kept, nothing answered."""
    assert list(store.apply(AlarmRequest(action=AlarmRequest.ACTIVATE, memberID=5, alarm=NONE)).alarms) == []
    assert list(store.apply(AlarmRequest(action=AlarmRequest.GET)).alarms) == []
    store.reopen()
    assert list(store.apply(AlarmRequest(action=AlarmRequest.GET)).alarms) == []


def test_quota_exceeded_compares_the_pages_in_use_with_the_quota(tmp_path):
    store = Store(tmp_path / "small", quota_bytes=256 * 1024)
    assert not store.mvcc.quota_exceeded()
    store.apply(*[PutRequest(key=b"k%d" % i, value=bytes(1024)) for i in range(300)])
    assert store.mvcc.quota_exceeded()
    store.mvcc.close()


def test_defragment_gives_free_space_back_and_keeps_the_data(store):
    store.apply(*[PutRequest(key=b"k%04d" % i, value=bytes(2000)) for i in range(2000)])
    store.apply(DeleteRangeRequest(key=b"k", range_end=b"l"))
    store.put(b"survivor", b"here")
    store.apply(CompactionRequest(revision=store.mvcc.revision))
    while not store.mvcc.compact_step():
        pass
    before = store.mvcc.db_size_bytes()
    assert store.mvcc.db_size_in_use_bytes() < before / 4
    store.mvcc.defragment()
    assert store.mvcc.db_size_bytes() < before / 4
    assert store.get(b"survivor").value == b"here" and store.mvcc.revision == 2003


def test_the_map_grows_when_a_batch_does_not_fit(tmp_path):
    store = Store(tmp_path / "tiny", map_size_bytes=256 * 1024)
    response = store.apply(*[PutRequest(key=b"k%04d" % i, value=bytes(1000)) for i in range(2000)])
    assert all(r.header.revision for r in response) and store.mvcc.map_size_bytes >= 2 * 1024 * 1024
    assert store.mvcc.range(RangeRequest(key=b"k", range_end=b"l", count_only=True)).count == 2000
    assert store.mvcc.applied_index == 1
    store.mvcc.close()


def test_members_are_recorded_with_the_applied_index_and_survive_reopen(store):
    store.apply(SetMember(1, b"one"), SetMember(2, b"two"))
    store.apply(RemoveMember(1), SetMember(3, b"three"))
    assert store.mvcc.members() == {2: b"two", 3: b"three"}
    assert store.mvcc.revision == 1  # membership is not a key-space change
    store.reopen()
    assert store.mvcc.members() == {2: b"two", 3: b"three"}


def test_revoking_a_lease_deletes_its_keys_and_refuses_it_afterwards(store):
    store.put(b"a", lease=7)
    store.put(b"b", lease=7)
    store.put(b"c", lease=8)
    store.put(b"b", b"moved", lease=9)  # b left lease 7
    store.apply(RevokeLease(7))
    assert [(e.type, KeyValue.FromString(e.kv).key) for e in store.last_events] == [(Event.DELETE, b"a")]
    assert store.get(b"a") is None and store.get(b"b").value == b"moved"
    refused = store.put(b"d", lease=7)
    assert refused == errors.LeaseNotFound()
    assert (refused.code, refused.message) == ("NOT_FOUND", "etcdserver: requested lease not found")


def test_a_page_of_a_big_range_filtered_by_mod_revision_counts_all_and_says_more(tmp_path):
    """Paged lists (a limit, and min_mod_revision as a mover's catch-up asks): the count is every
    key in the range, `more` says whether keys that pass the filter are left, and the page holds
    the first of those in key order."""
    store = MvccStore.open(tmp_path)
    for index in range(1, 21):  # keys k00..k19 at revisions 2..21
        store.apply([Proposal(index, 0, [PutRequest(key=b"k%02d" % (index - 1), value=b"v")])])
    page = store.range(RangeRequest(key=b"k", range_end=b"l", limit=3, min_mod_revision=12))
    assert ([kv.key for kv in page.kvs], page.count, page.more) == ([b"k10", b"k11", b"k12"], 20, True)
    last = store.range(RangeRequest(key=b"k", range_end=b"l", limit=3, min_mod_revision=20))
    assert ([kv.key for kv in last.kvs], last.count, last.more) == ([b"k18", b"k19"], 20, False)
    window = store.range(RangeRequest(key=b"k", range_end=b"l", min_mod_revision=12, max_mod_revision=13))
    assert ([kv.key for kv in window.kvs], window.count, window.more) == ([b"k10", b"k11"], 20, False)
    old = store.range(RangeRequest(key=b"k", range_end=b"l", revision=6, limit=2, keys_only=True))
    assert ([(kv.key, kv.value) for kv in old.kvs], old.count, old.more) == ([(b"k00", b""), (b"k01", b"")], 5, True)
    assert store.range(RangeRequest(key=b"k", range_end=b"l", min_mod_revision=12, count_only=True)).count == 20
    assert len(store.range(RangeRequest(key=b"k", range_end=b"l", limit=-1)).kvs) == 20  # etcd: no limit
    store.close()


def test_an_uncounted_page_holds_the_same_records_and_counts_only_the_keys_it_walked(tmp_path):
    """A mover's page (ShardRequest.uncounted): the records and `more` of the counted page, and
    the walk stops at the first key past the page instead of counting the whole range."""
    store = MvccStore.open(tmp_path)
    for index in range(1, 21):  # keys k00..k19 at revisions 2..21
        store.apply([Proposal(index, 0, [PutRequest(key=b"k%02d" % (index - 1), value=b"v")])])
    for request in (RangeRequest(key=b"k", range_end=b"l", limit=3, min_mod_revision=12),
                    RangeRequest(key=b"k05", range_end=b"l", limit=4, revision=15),
                    RangeRequest(key=b"k", range_end=b"l", limit=3, min_mod_revision=20)):
        counted, uncounted = store.range(request), store.range(request, counted=False)
        assert (list(uncounted.kvs), uncounted.more) == (list(counted.kvs), counted.more)
    assert store.range(RangeRequest(key=b"k", range_end=b"l", limit=3, min_mod_revision=12), counted=False).count == 14
    assert store.range(RangeRequest(key=b"k05", range_end=b"l", limit=4, revision=15), counted=False).count == 5
    store.close()


def encoded(response) -> bytes:
    """A response as the replica sends it: the native path's are bytes already."""
    return response if type(response) is bytes else response.SerializeToString()


def test_plain_puts_apply_as_their_put_requests_do(tmp_path):
    """The native loop for runs of plain puts against the Python path, on the same proposals:
    the same records, events and responses, a lease the key had detached, the floor taken,
    a replayed index skipped, and the runs cut by any other request."""
    plain, general = MvccStore.open(tmp_path / "plain"), MvccStore.open(tmp_path / "general")
    batches = [
        [Proposal(1, 0, [PutRequest(key=b"leased", value=b"v", lease=5)]),
         Proposal(2, 0, [PutRequest(key=b"k", value=b"old")])],
        [Proposal(3, 0, (b"k", b"new")), Proposal(4, 0, (b"leased", b"unleased")),
         Proposal(5, 40, (b"fresh", b"")), Proposal(6, 0, (b"k", b"x"), respond=False),
         Proposal(7, 0, [DeleteRangeRequest(key=b"fresh")]), Proposal(8, 0, (b"fresh", b"again"))],
        [Proposal(8, 0, (b"k", b"replayed")), Proposal(9, 0, (b"k", b"last"))],
    ]
    for batch in batches:
        results = []
        for mvcc, as_put in ((plain, PlainPut), (general, lambda key, value: PutRequest(key=key, value=value))):
            results.append(mvcc.apply([
                proposal._replace(requests=(as_put(*proposal.requests),))
                if type(proposal.requests) is tuple else proposal
                for proposal in batch
            ]))
        native, python = results
        assert native.events == python.events
        assert [responses and [encoded(response) for response in responses] for responses in native.responses] == \
               [responses and [encoded(response) for response in responses] for responses in python.responses]
    assert plain.revision == general.revision == 44
    everything = RangeRequest(key=b"\0", range_end=b"\0")
    assert plain.range(everything).kvs == general.range(everything).kvs
    assert plain.lease_keys(5) == general.lease_keys(5) == []
    assert native.responses[0] is None
    assert [PutResponse.FromString(response).header.revision for response in native.responses[1]] == [44]
    plain.close()
    general.close()
