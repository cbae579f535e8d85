"""Every kind of request a replica serves, in one table.

A kind is the name of the field set in ShardRequest's `request` oneof. Its
row says which method of the request service (shards/shard_service.py)
serves it, which ShardResponse field carries the answer, and, for a write,
what applying its committed raft entry asks of the store (shards/mvcc.py).
"""

from __future__ import annotations

from operator import attrgetter
from typing import Callable, NamedTuple

from shards.mvcc import DropRange, ImportKeys, RaiseRevision, RegrantLease, RevokeLease
from tessera.api.internal_pb2 import ShardRequest


class RequestKind(NamedTuple):
    serve: str  # the ShardService method that serves it
    answer: str  # the ShardResponse field the answer goes in
    to_store: Callable[[ShardRequest], object] | None = None  # a write's request to the store when applied
    # Data moving in bulk: proposed after the clients' writes, a bounded share per batch (shards/raft_driver.py).
    bulk: bool = False


def _write(kind: str, answer: str | None = None, to_store=None, bulk: bool = False) -> RequestKind:
    return RequestKind("write", answer or kind, to_store or attrgetter(kind), bulk)


REQUEST_KINDS: dict[str, RequestKind] = {
    "range": RequestKind("range", "range"),
    "put": _write("put"),
    "delete_range": _write("delete_range"),
    "txn": _write("txn"),
    "compaction": _write("compaction"),
    "alarm": _write("alarm"),
    # The store answers these with no message of their own: the answer is a header.
    "raise_revision": _write("raise_revision", "raised", lambda request: RaiseRevision(request.raise_revision)),
    "revoke_lease": _write("revoke_lease", "lease_revoked", lambda request: RevokeLease(request.revoke_lease)),
    "regrant_lease": _write("regrant_lease", "lease_regranted",
                            lambda request: RegrantLease(request.regrant_lease)),
    # A prefix moving between groups (router/moves.py): in here, and out of the group it left.
    "import_keys": _write("import_keys", "imported", lambda request: ImportKeys(
        request.import_keys.key, request.import_keys.range_end, request.import_keys.puts,
        request.import_keys.deletes, request.import_keys.final), bulk=True),
    "drop_range": _write("drop_range", "dropped", lambda request: DropRange(
        request.drop_range.key, request.drop_range.range_end), bulk=True),
    "lease_keep_alive": RequestKind("lease_query", "lease_keep_alive"),
    "lease_time_to_live": RequestKind("lease_query", "lease_time_to_live"),
    "lease_leases": RequestKind("lease_query", "lease_leases"),
    "lease_keys": RequestKind("lease_keys", "lease_keys"),
    "member_add": RequestKind("change_membership", "members"),
    "member_promote": RequestKind("change_membership", "members"),
    "member_remove": RequestKind("change_membership", "members"),
    "member_list": RequestKind("member_list", "members"),
    "move_leader": RequestKind("move_leader", "move_leader"),
    "status": RequestKind("status", "status"),
    "hash_kv": RequestKind("hash_kv", "hash_kv"),
    "defragment": RequestKind("defragment", "defragment"),
}
