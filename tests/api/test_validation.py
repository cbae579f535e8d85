"""etcd's request checks: each bad request gets etcd's error, each good one passes."""

import pytest

from tessera.api import errors, validation
from tessera.api.rpc_pb2 import Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest


def put(key, **fields):
    return RequestOp(request_put=PutRequest(key=key, **fields))


def delete(key, range_end=b""):
    return RequestOp(request_delete_range=DeleteRangeRequest(key=key, range_end=range_end))


def nested(success=(), failure=()):
    return RequestOp(request_txn=TxnRequest(success=list(success), failure=list(failure)))


@pytest.mark.parametrize(
    "check, request_, error, message",
    [
        (validation.check_range, RangeRequest(), errors.EmptyKey, "etcdserver: key is not provided"),
        (validation.check_put, PutRequest(value=b"v"), errors.EmptyKey, "etcdserver: key is not provided"),
        (validation.check_delete, DeleteRangeRequest(), errors.EmptyKey, "etcdserver: key is not provided"),
        (validation.check_put, PutRequest(key=b"k", value=b"v", ignore_value=True),
         errors.ValueProvided, "etcdserver: value is provided"),
        (validation.check_put, PutRequest(key=b"k", lease=5, ignore_lease=True),
         errors.LeaseProvided, "etcdserver: lease is provided"),
    ],
)
def test_single_requests(check, request_, error, message):
    with pytest.raises(error) as caught:
        check(request_)
    assert caught.value.code == "INVALID_ARGUMENT" and str(caught.value) == message


def test_good_single_requests_pass():
    validation.check_range(RangeRequest(key=b"k", range_end=b"\0"))
    validation.check_put(PutRequest(key=b"k", ignore_value=True, ignore_lease=True))
    validation.check_delete(DeleteRangeRequest(key=b"k"))


def test_too_many_ops_counts_the_widest_list():
    at_limit = TxnRequest(success=[put(b"k%d" % i) for i in range(128)], failure=[put(b"x")])
    validation.check_txn(at_limit)
    over = TxnRequest(compare=[Compare(key=b"k%d" % i) for i in range(129)])
    with pytest.raises(errors.TooManyOps, match="etcdserver: too many operations in txn request"):
        validation.check_txn(over)
    with pytest.raises(errors.TooManyOps):
        validation.check_txn(at_limit, max_txn_ops=127)


def test_a_nested_txn_gets_the_budget_its_parent_left():
    inner = [put(b"in%d" % i) for i in range(28)]
    validation.check_txn(TxnRequest(success=[*[put(b"k%d" % i) for i in range(99)], nested(inner)]))
    with pytest.raises(errors.TooManyOps):
        validation.check_txn(TxnRequest(success=[*[put(b"k%d" % i) for i in range(99)], nested(inner + [put(b"z")])]))


def test_empty_keys_inside_a_txn():
    with pytest.raises(errors.EmptyKey):
        validation.check_txn(TxnRequest(compare=[Compare()]))
    with pytest.raises(errors.EmptyKey):
        validation.check_txn(TxnRequest(failure=[put(b"")]))
    with pytest.raises(errors.EmptyKey):
        validation.check_txn(TxnRequest(success=[nested(failure=[delete(b"")])]))


def test_an_empty_operation_is_key_not_found():
    with pytest.raises(errors.KeyNotFound, match="etcdserver: key not found"):
        validation.check_txn(TxnRequest(success=[RequestOp()]))


@pytest.mark.parametrize(
    "success",
    [
        [put(b"a"), put(b"a")],
        [delete(b"a"), put(b"a")],
        [delete(b"a", b"c"), put(b"b")],
        [delete(b"a", b"\0"), put(b"zzz")],
        [put(b"a"), nested([put(b"a")])],
        [delete(b"a"), nested(failure=[put(b"a")])],
        [nested([delete(b"a", b"b")]), put(b"a")],
        [nested([put(b"a")]), nested([put(b"a")])],
    ],
    ids=["put twice", "put after delete", "put inside range delete", "put inside open-ended delete",
         "outer and nested put", "nested put under outer delete", "outer put under nested delete",
         "two nested puts"],
)
def test_overlapping_writes_in_one_branch_are_duplicate_keys(success):
    with pytest.raises(errors.DuplicateKey) as caught:
        validation.check_txn(TxnRequest(success=success))
    assert str(caught.value) == "etcdserver: duplicate key given in txn request"


@pytest.mark.parametrize(
    "success, failure",
    [
        ([put(b"a")], [put(b"a")]),  # only one branch runs
        ([nested([put(b"a")], [put(b"a")])], []),
        ([delete(b"a", b"b"), put(b"b")], []),  # range ends are exclusive
        ([delete(b"a"), delete(b"a"), put(b"ab")], []),
    ],
)
def test_writes_that_cannot_collide_pass(success, failure):
    validation.check_txn(TxnRequest(success=success, failure=failure))
