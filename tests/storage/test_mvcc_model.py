"""The MVCC store against the model: random operation sequences must agree, reopen included."""

import shutil
import tempfile

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from mvcc_model import Model, in_range

from native import codec

from shards.mvcc import MvccStore, PlainPut, Proposal
from tessera.api import errors
from tessera.api.kv_pb2 import KeyValue
from tessera.api.rpc_pb2 import (
    Compare,
    CompactionRequest,
    DeleteRangeRequest,
    PutRequest,
    PutResponse,
    RangeRequest,
    RequestOp,
    TxnRequest,
)

keys = st.sampled_from([b"a", b"ab", b"b", b"b\x00", b"c", b"zz"])
ends = st.sampled_from([b"", b"b", b"c", b"\0", b"zzz", b"a"])
values = st.binary(max_size=8)
SORT_TARGETS = {RangeRequest.KEY: 0, RangeRequest.VERSION: 3, RangeRequest.CREATE: 1,
                RangeRequest.MOD: 2, RangeRequest.VALUE: 4}
COMPARE_TARGETS = {1: Compare.CREATE, 2: Compare.MOD, 3: Compare.VERSION, 4: Compare.VALUE}
COMPARE_RESULTS = {"=": Compare.EQUAL, "!=": Compare.NOT_EQUAL, "<": Compare.LESS, ">": Compare.GREATER}


def as_tuple(kv):
    return (kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease)


class StoreAgainstModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="mvcc-model-")
        self.store = MvccStore.open(self.directory)
        self.model = Model()
        self.raft_index = 0

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.directory)

    def apply(self, request):
        self.raft_index += 1
        (result,) = self.store.apply([Proposal(self.raft_index, 0, [request])]).responses[0]
        return result

    @rule(key=keys, value=values)
    def put(self, key, value):
        response = self.apply(PutRequest(key=key, value=value, prev_kv=True))
        previous = self.model.put(key, value)
        assert (as_tuple(response.prev_kv) if response.HasField("prev_kv") else None) == previous
        assert response.header.revision == self.model.revision

    @rule(puts=st.lists(st.tuples(keys, values), min_size=1, max_size=4))
    def plain_puts(self, puts):
        """A run of plain puts, one per proposal: the store writes them in one native loop."""
        first = self.raft_index + 1
        self.raft_index += len(puts)
        result = self.store.apply([Proposal(first + offset, 0, (PlainPut(key, value),))
                                   for offset, (key, value) in enumerate(puts)])
        for (key, value), (response,), event in zip(puts, result.responses, result.events):
            previous = self.model.put(key, value)
            assert PutResponse.FromString(response).header.revision == self.model.revision
            assert (as_tuple(KeyValue.FromString(event.prev_kv)) if event.prev_kv else None) == previous
            assert event.revision == self.model.revision and event.key == key

    @rule(key=keys, end=ends)
    def delete(self, key, end):
        response = self.apply(DeleteRangeRequest(key=key, range_end=end, prev_kv=True))
        previous = self.model.delete(key, end)
        assert [as_tuple(kv) for kv in response.prev_kvs] == previous
        assert response.deleted == len(previous)
        assert response.header.revision == self.model.revision

    @rule(
        key=keys, field=st.sampled_from([1, 2, 3, 4]), op=st.sampled_from(["=", "!=", "<", ">"]),
        number=st.integers(min_value=0, max_value=12), value=values,
        success=st.lists(st.tuples(st.sampled_from(["put", "delete", "range"]), keys, values), max_size=3),
        failure=st.lists(st.tuples(st.sampled_from(["range"]), keys, st.just(b"")), max_size=2),
    )
    def txn(self, key, field, op, number, value, success, failure):
        expected = value if field == 4 else number
        compare = Compare(key=key, target=COMPARE_TARGETS[field], result=COMPARE_RESULTS[op])
        setattr(compare, {1: "create_revision", 2: "mod_revision", 3: "version", 4: "value"}[field], expected)
        # Distinct keys per branch, as etcd's duplicate-key check requires.
        success = list({op_[1]: op_ for op_ in success}.values())

        def request_op(kind, op_key, payload):
            if kind == "put":
                return RequestOp(request_put=PutRequest(key=op_key, value=payload))
            if kind == "delete":
                return RequestOp(request_delete_range=DeleteRangeRequest(key=op_key))
            return RequestOp(request_range=RangeRequest(key=op_key))

        request = TxnRequest(
            compare=[compare],
            success=[request_op(*o) for o in success],
            failure=[request_op(*o) for o in failure],
        )
        response = self.apply(request)
        model_ops = [(k, key_, v if k == "put" else b"") for k, key_, v in success]
        model_failure = [(k, key_, b"") for k, key_, _ in failure]
        succeeded, results = self.model.txn([(key, field, op, expected)], model_ops, model_failure)
        assert response.succeeded == succeeded
        for result, got in zip(results, response.responses):
            if result[0] == "delete":
                assert got.response_delete_range.deleted == result[1]
            elif result[0] == "range":
                assert [as_tuple(kv) for kv in got.response_range.kvs] == result[1]
                assert got.response_range.count == result[2]
        assert response.header.revision == self.model.revision

    @rule(data=st.data())
    def compact(self, data):
        revision = data.draw(st.integers(min_value=0, max_value=self.model.revision + 1))
        response = self.apply(CompactionRequest(revision=revision))
        try:
            self.model.compact(revision)
        except errors.EtcdError as error:
            assert response == error
        else:
            assert not isinstance(response, errors.EtcdError), response
        if data.draw(st.booleans()):
            while not self.store.compact_step(max_records=2):
                pass

    @rule(
        key=keys, end=ends, data=st.data(), limit=st.integers(min_value=0, max_value=3),
        count_only=st.booleans(), keys_only=st.booleans(),
        sort=st.sampled_from([None, *SORT_TARGETS]), descend=st.booleans(),
    )
    def range(self, key, end, data, limit, count_only, keys_only, sort, descend):
        revision = data.draw(st.integers(min_value=0, max_value=self.model.revision + 1))
        filters = data.draw(st.one_of(st.just((0, 0, 0, 0)), st.tuples(
            *[st.integers(min_value=0, max_value=self.model.revision + 1)] * 2, st.just(0), st.just(0)),
            st.tuples(*[st.integers(min_value=0, max_value=self.model.revision + 1)] * 4)))
        request = RangeRequest(
            key=key, range_end=end, revision=revision, limit=limit, count_only=count_only,
            keys_only=keys_only, min_mod_revision=filters[0], max_mod_revision=filters[1],
            min_create_revision=filters[2], max_create_revision=filters[3],
        )
        if sort is not None:
            request.sort_target = sort
            request.sort_order = RangeRequest.DESCEND if descend else RangeRequest.ASCEND
        try:
            expected = self.model.range(
                key, end, revision, limit, count_only, keys_only,
                SORT_TARGETS[sort] if sort is not None else None, descend and sort is not None,
                revision_filters=filters,
            )
        except errors.EtcdError as error:
            try:
                self.store.range(request)
            except errors.EtcdError as got:
                assert got == error
            else:
                raise AssertionError(f"expected {error!r}")
            return
        response = self.store.range(request)
        assert ([as_tuple(kv) for kv in response.kvs], response.more, response.count) == expected
        assert response.header.revision == self.model.revision

    @precondition(lambda self: self.raft_index > 0)
    @rule()
    def reopen(self):
        self.store.close()
        self.store = MvccStore.open(self.directory)
        assert self.store.applied_index == self.raft_index

    @precondition(lambda self: self.raft_index > 0)
    @rule()
    def replay_is_ignored(self):
        """A proposal at an index already applied changes nothing (a restart replays some)."""
        result = self.store.apply([Proposal(self.raft_index, 0, [PutRequest(key=b"a", value=b"again")])])
        assert result.responses == [None] and result.events == []

    @invariant()
    def same_revisions(self):
        assert self.store.revision == self.model.revision
        assert self.store.compacted_revision == self.model.compacted


TestStoreAgainstModel = StoreAgainstModel.TestCase
TestStoreAgainstModel.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def observable_state(store: MvccStore):
    """Everything a client or a replica comparison can see of the store."""
    everything = dict(key=b"\0", range_end=b"\0")
    history = {
        revision: [as_tuple(kv) for kv in store.range(RangeRequest(**everything, revision=revision)).kvs]
        for revision in range(max(store.compacted_revision, 1), store.revision + 1)
    }
    return (store.revision, store.compacted_revision, store.applied_index, store.space_exceeded,
            store.hash_kv(), history)


operations = st.lists(
    st.one_of(
        st.builds(lambda k, v: PutRequest(key=k, value=v), keys, values),
        st.builds(lambda k, e: DeleteRangeRequest(key=k, range_end=e), keys, ends),
        st.builds(
            lambda k, v, then: TxnRequest(
                compare=[Compare(key=k, target=Compare.VALUE, result=Compare.EQUAL, value=v)],
                success=[RequestOp(request_put=PutRequest(key=then, value=v))],
                failure=[RequestOp(request_delete_range=DeleteRangeRequest(key=then))],
            ),
            keys, values, keys,
        ),
        st.builds(lambda back: ("compact", back), st.integers(min_value=0, max_value=3)),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(operations=operations)
def test_reopening_after_every_operation_changes_nothing_visible(operations):
    directory = tempfile.mkdtemp(prefix="mvcc-reopen-")
    store = MvccStore.open(directory)
    try:
        for raft_index, operation in enumerate(operations, start=1):
            if isinstance(operation, tuple):
                operation = CompactionRequest(revision=max(store.revision - operation[1], 1))
            store.apply([Proposal(raft_index, 0, [operation])])
            if raft_index % 3 == 0:
                store.compact_step(max_records=1)  # reopen with a compaction half done, too
            before = observable_state(store)
            store.close()
            store = MvccStore.open(directory)
            assert observable_state(store) == before
    finally:
        store.close()
        shutil.rmtree(directory)


@settings(max_examples=40, deadline=None)
@given(operations=operations, start=st.integers(min_value=0, max_value=30),
       watched=st.tuples(keys, ends), limit=st.integers(min_value=1, max_value=5))
def test_history_read_back_matches_the_events_apply_produced(operations, start, watched, limit):
    """A watch replays history with changes() and then takes live events: they must join seamlessly."""
    directory = tempfile.mkdtemp(prefix="mvcc-changes-")
    store = MvccStore.open(directory)
    key, end = watched
    live = []
    try:
        for raft_index, operation in enumerate(operations, start=1):
            if isinstance(operation, tuple):
                continue  # no compaction here: all history must be readable
            live += store.apply([Proposal(raft_index, 0, [operation])]).events
        expected = [
            event for event in live
            if event.revision >= start and in_range(codec.decode_key_value(event.kv)[0], key, end)
        ]
        replayed, next_revision = [], start
        while True:
            page, next_revision = store.changes(next_revision, key, end, limit=limit)
            replayed += page
            if next_revision > store.revision:
                break
        assert replayed == expected
    finally:
        store.close()
        shutil.rmtree(directory)


def test_changes_below_the_compacted_revision_are_refused(tmp_path):
    store = MvccStore.open(tmp_path)
    for raft_index in range(1, 6):
        store.apply([Proposal(raft_index, 0, [PutRequest(key=b"k", value=b"%d" % raft_index)])])
    store.apply([Proposal(6, 0, [CompactionRequest(revision=4)])])
    try:
        store.changes(3, b"k")
    except errors.Compacted:
        pass
    else:
        raise AssertionError("changes below the compacted revision were served")
    events, _ = store.changes(5, b"k")
    assert [event.revision for event in events] == [5, 6]
    assert codec.decode_key_value(events[0].prev_kv)[4] == b"3"  # the record visible at 4
    store.close()


def test_a_page_of_changes_never_splits_a_revision(tmp_path):
    store = MvccStore.open(tmp_path)
    store.apply([Proposal(1, 0, [PutRequest(key=k, value=b"v") for k in (b"a", b"b", b"c")])])
    store.apply([Proposal(2, 0, [DeleteRangeRequest(key=b"a", range_end=b"d")])])  # 3 events at 5
    first, next_revision = store.changes(2, b"a", b"d", limit=2)
    assert [event.revision for event in first] == [2, 3]
    second, next_revision = store.changes(next_revision, b"a", b"d", limit=2)
    assert [event.revision for event in second] == [4, 5, 5, 5]  # over the limit, but whole
    assert next_revision == store.revision + 1
    store.close()
