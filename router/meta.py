"""The meta group's records (group 0): the cluster, its groups, the shard map, routers, leases.

Group 0 is a raft group like the others (ARCHITECTURE decision 4); its keys
live under the system prefix `tessera/` (their layout: tessera/api/meta_keys.py),
each value a record of tessera/api/internal.proto. Nothing here is visible to
clients: user keys never reach group 0.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
from dataclasses import dataclass, field

from router.auth import AuthRecords
from router.shard_client import GroupClient
from router.shard_map import ShardMap
from tessera.api import errors
from tessera.api.internal_pb2 import (
    ClusterRecord,
    GroupRecord,
    LeaseRecord,
    Member,
    MoveList,
    MoveRecord,
    RouterRecord,
    ShardRequest,
)
from tessera.api.internal_pb2 import ShardMap as ShardMapRecord
from tessera.api.meta_keys import (
    AUTH_PREFIX,
    CLUSTER_KEY,
    GROUPS_PREFIX,
    LEASES_PREFIX,
    META_GROUP,
    MOVES_KEY,
    ROUTERS_PREFIX,
    SHARDS_KEY,
    SYSTEM_PREFIX,
    group_key,
    prefix_range,
)
from tessera.api.rpc_pb2 import Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest

log = logging.getLogger("tessera.router")

BOOTSTRAP_TIMEOUT_SECONDS = 30.0


@dataclass
class MetaState:
    """What a router reads from the meta group, as of `revision`."""

    revision: int
    cluster_id: int
    groups: dict[int, GroupRecord]
    shard_map: ShardMap
    shard_map_revision: int  # the map's mod revision: the compare of the next change
    routers: dict[int, RouterRecord] = field(default_factory=dict)
    leases: dict[int, LeaseRecord] = field(default_factory=dict)
    auth: AuthRecords = field(default_factory=AuthRecords)
    moves: list[MoveRecord] = field(default_factory=list)  # prefixes moving between groups
    moves_revision: int = 0  # the moves record's mod revision (0: none yet)


def _put_op(key: bytes, record) -> RequestOp:
    return RequestOp(request_put=PutRequest(key=key, value=record.SerializeToString()))


async def bootstrap_cluster(groups: dict[int, dict[int, tuple[str, str]]], prefixes: dict[bytes, int],
                            default_group: int, ssl_context: ssl.SSLContext | None = None) -> None:
    """Write a new cluster's records into the meta group, once; a bootstrapped cluster is left alone.

    `groups`: group -> member -> (peer address, internal API address), group 0 included.
    """
    members = {member: api for member, (_, api) in groups[META_GROUP].items()}
    shard_map = ShardMap.initial(prefixes, default_group)
    records = [_put_op(CLUSTER_KEY, ClusterRecord(cluster_id=secrets.randbits(63) or 1)),
               _put_op(SHARDS_KEY, shard_map.to_record())]
    for group_id, group_members in sorted(groups.items()):
        record = GroupRecord(id=group_id, members=[
            Member(id=member, peer_address=peer, api_address=api)
            for member, (peer, api) in sorted(group_members.items())])
        records.append(_put_op(group_key(group_id), record))
    # Only if no map exists yet: a resumed cluster keeps what it has.
    txn = TxnRequest(compare=[Compare(key=SHARDS_KEY, target=Compare.CREATE, result=Compare.EQUAL,
                                      create_revision=0)], success=records)
    meta = GroupClient(META_GROUP, members, ssl_context)
    try:
        response = await meta.call(ShardRequest(txn=txn), write=True, timeout=BOOTSTRAP_TIMEOUT_SECONDS)
        log.info("meta group %s", "bootstrapped" if response.txn.succeeded else "already bootstrapped")
    finally:
        await meta.close()


class MetaClient:
    """Reads and changes the meta group's records through its raft group."""

    def __init__(self, client: GroupClient):
        self.client = client

    async def load(self) -> MetaState:
        """Every system record at one revision (one linearizable range)."""
        start, end = prefix_range(SYSTEM_PREFIX)
        response = await self.client.call(ShardRequest(range=RangeRequest(key=start, range_end=end)),
                                          write=False)
        records = {kv.key: kv for kv in response.range.kvs}
        if SHARDS_KEY not in records:
            raise errors.Reported("UNAVAILABLE", "tessera: the meta group has no shard map yet "
                                                 "(the cluster is not bootstrapped)")
        groups, routers, leases = {}, {}, {}
        for key, kv in records.items():
            if key.startswith(GROUPS_PREFIX):
                record = GroupRecord.FromString(kv.value)
                groups[record.id] = record
            elif key.startswith(ROUTERS_PREFIX):
                record = RouterRecord.FromString(kv.value)
                routers[record.id] = record
            elif key.startswith(LEASES_PREFIX):
                record = LeaseRecord.FromString(kv.value)
                leases[record.id] = record
        moves = records.get(MOVES_KEY)
        return MetaState(
            revision=response.range.header.revision,
            cluster_id=ClusterRecord.FromString(records[CLUSTER_KEY].value).cluster_id,
            groups=groups,
            shard_map=ShardMap.from_record(ShardMapRecord.FromString(records[SHARDS_KEY].value)),
            shard_map_revision=records[SHARDS_KEY].mod_revision,
            routers=routers,
            leases=leases,
            auth=AuthRecords.from_kvs(kv for key, kv in records.items() if key.startswith(AUTH_PREFIX)),
            moves=list(MoveList.FromString(moves.value).moves) if moves else [],
            moves_revision=moves.mod_revision if moves else 0,
        )

    async def put(self, key: bytes, record) -> None:
        await self.client.call(ShardRequest(put=PutRequest(key=key, value=record.SerializeToString())),
                               write=True)

    async def create(self, key: bytes, record) -> bool:
        """Put `record` at `key` only if the key does not exist; whether it was created."""
        txn = TxnRequest(compare=[Compare(key=key, target=Compare.CREATE, result=Compare.EQUAL,
                                          create_revision=0)], success=[_put_op(key, record)])
        return (await self.client.call(ShardRequest(txn=txn), write=True)).txn.succeeded

    async def get(self, key: bytes):
        """The record's KeyValue (linearizable), or None."""
        response = await self.client.call(ShardRequest(range=RangeRequest(key=key)), write=False)
        return response.range.kvs[0] if response.range.kvs else None

    async def compare_and_put(self, key: bytes, record, expected_revision: int) -> int:
        """Put `record` if the key's mod revision is still `expected_revision`: the new revision, or 0."""
        txn = TxnRequest(compare=[Compare(key=key, target=Compare.MOD, result=Compare.EQUAL,
                                          mod_revision=expected_revision)],
                         success=[_put_op(key, record)])
        answer = (await self.client.call(ShardRequest(txn=txn), write=True)).txn
        return answer.header.revision if answer.succeeded else 0

    async def delete(self, key: bytes) -> bool:
        """Delete `key`; whether it existed."""
        response = await self.client.call(ShardRequest(delete_range=DeleteRangeRequest(key=key)), write=True)
        return response.delete_range.deleted > 0

    async def replace_shard_map(self, shard_map: ShardMap, expected_revision: int) -> int:
        """Swap in a new map if nobody changed it since `expected_revision`: its revision, or 0."""
        return await self.compare_and_put(SHARDS_KEY, shard_map.to_record(), expected_revision)


async def wait_until_bootstrapped(meta: MetaClient, timeout: float = BOOTSTRAP_TIMEOUT_SECONDS) -> MetaState:
    """The meta state once the cluster's records exist (a router may start before bootstrap ends)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return await meta.load()
        except errors.EtcdError as error:
            if loop.time() > deadline:
                raise
            log.info("waiting for the meta group: %s", error.message)
            await asyncio.sleep(0.2)
