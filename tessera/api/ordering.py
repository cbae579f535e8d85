"""etcd's order for a Range's results: one rule for a store answering alone and a router merging."""

from __future__ import annotations

from tessera.api.rpc_pb2 import RangeRequest

SORT_KEYS = {
    RangeRequest.KEY: lambda kv: kv.key,
    RangeRequest.VERSION: lambda kv: kv.version,
    RangeRequest.CREATE: lambda kv: kv.create_revision,
    RangeRequest.MOD: lambda kv: kv.mod_revision,
    RangeRequest.VALUE: lambda kv: kv.value,
}


def effective_sort(request: RangeRequest) -> tuple[int, int]:
    """(order, target) as etcd applies them: any target but the key sorts even with no order
    (ascending); key ascending is the store's own order, so it needs no sort (NONE)."""
    order, target = request.sort_order, request.sort_target
    if target != RangeRequest.KEY and order == RangeRequest.NONE:
        order = RangeRequest.ASCEND
    elif target == RangeRequest.KEY and order == RangeRequest.ASCEND:
        order = RangeRequest.NONE
    return order, target


def sort_results(kvs: list, request: RangeRequest) -> None:
    """Sort key-ordered results in place as etcd would (stable: ties stay in key order)."""
    order, target = effective_sort(request)
    if order != RangeRequest.NONE:
        kvs.sort(key=SORT_KEYS[target], reverse=order == RangeRequest.DESCEND)
