"""The checks etcd makes on a KV request before it reaches the store.

Same rules, same errors, same order as etcd 3.5's v3rpc key checks: a request
that fails here is answered at once and never proposed.
"""

from __future__ import annotations

from tessera.api import errors
from tessera.api.rpc_pb2 import DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest

MAX_TXN_OPS_DEFAULT = 128  # etcd's --max-txn-ops
# The sort options etcd knows (values() builds a new list at every call: kept once here).
_SORT_ORDERS = frozenset(RangeRequest.SortOrder.values())
_SORT_TARGETS = frozenset(RangeRequest.SortTarget.values())


def key_in_range(key: bytes, start: bytes, range_end: bytes) -> bool:
    """etcd's key ranges: no range_end is `start` alone, "\0" every key from it on."""
    if not range_end:
        return key == start
    return start <= key and (range_end == b"\0" or key < range_end)


def check_range(request: RangeRequest) -> None:
    if not request.key:
        raise errors.EmptyKey()
    if request.sort_order not in _SORT_ORDERS or request.sort_target not in _SORT_TARGETS:
        raise errors.InvalidSortOption()


def check_put(request: PutRequest) -> None:
    if not request.key:
        raise errors.EmptyKey()
    if request.ignore_value and request.value:
        raise errors.ValueProvided()
    if request.ignore_lease and request.lease:
        raise errors.LeaseProvided()


def check_delete(request: DeleteRangeRequest) -> None:
    if not request.key:
        raise errors.EmptyKey()


def check_txn(request: TxnRequest, max_txn_ops: int = MAX_TXN_OPS_DEFAULT) -> None:
    """Operation counts and keys, then overlapping writes within each branch."""
    _check_txn_ops(request, max_txn_ops)
    _check_intervals(request.success)
    _check_intervals(request.failure)


def _check_txn_ops(request: TxnRequest, max_txn_ops: int) -> None:
    ops = max(len(request.compare), len(request.success), len(request.failure))
    if ops > max_txn_ops:
        raise errors.TooManyOps()
    if any(not compare.key for compare in request.compare):
        raise errors.EmptyKey()
    # A nested transaction gets what its parent's widest list left of the budget.
    for op in (*request.success, *request.failure):
        _check_op(op, max_txn_ops - ops)


def _check_op(op: RequestOp, max_txn_ops: int) -> None:
    kind = op.WhichOneof("request")
    if kind == "request_range":
        check_range(op.request_range)
    elif kind == "request_put":
        check_put(op.request_put)
    elif kind == "request_delete_range":
        check_delete(op.request_delete_range)
    elif kind == "request_txn":
        _check_txn_ops(op.request_txn, max_txn_ops)
    else:
        raise errors.KeyNotFound()  # an empty operation: etcd's answer to it


class _DeletedRanges:
    """Key intervals deleted somewhere in a branch: a put may not fall in any of them."""

    def __init__(self) -> None:
        self.intervals: list[tuple[bytes, bytes]] = []  # (key, range_end) as requests give them

    def add(self, request: DeleteRangeRequest) -> None:
        self.intervals.append((request.key, request.range_end))

    def covers(self, key: bytes) -> bool:
        return any(key_in_range(key, start, range_end) for start, range_end in self.intervals)


def _check_intervals(ops) -> tuple[set[bytes], _DeletedRanges]:
    """The keys put and the ranges deleted by a branch; DuplicateKey where they overlap.

    A key may be put in both branches of a nested transaction (only one runs),
    but not twice in one branch, nor where the branch (or a nested one) deletes.
    """
    deleted = _DeletedRanges()
    for op in ops:
        if op.WhichOneof("request") == "request_delete_range":
            deleted.add(op.request_delete_range)
    puts: set[bytes] = set()
    for op in ops:
        if op.WhichOneof("request") != "request_txn":
            continue
        puts_then, deleted_then = _check_intervals(op.request_txn.success)
        puts_else, deleted_else = _check_intervals(op.request_txn.failure)
        for key in puts_then:
            if key in puts or deleted.covers(key):
                raise errors.DuplicateKey()
            puts.add(key)
        for key in puts_else:
            if (key in puts and key not in puts_then) or deleted.covers(key):
                raise errors.DuplicateKey()
            puts.add(key)
        deleted.intervals += deleted_then.intervals + deleted_else.intervals
    for op in ops:
        if op.WhichOneof("request") != "request_put":
            continue
        key = op.request_put.key
        if key in puts or deleted.covers(key):
            raise errors.DuplicateKey()
        puts.add(key)
    return puts, deleted
