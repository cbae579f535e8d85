"""Operator commands: the shard map (list it, assign an empty prefix), every replica's status,
leadership transfer.

They talk to the meta group and the data groups over the internal API, as a
router does. An assignment completes only once every router routes by it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from router.meta import META_GROUP, MetaClient
from router.shard_client import GroupClient, ReplicaUnreachable
from router.shard_map import ShardMap, ShardMapError, prefix_end
from tessera.api import errors
from tessera.api.internal_pb2 import ShardRequest, StatusResponse
from tessera.api.rpc_pb2 import MoveLeaderRequest, RangeRequest, RequestOp, TxnRequest

STATUS_TIMEOUT_SECONDS = 2.0
ROUTERS_TIMEOUT_SECONDS = 10.0
ROUTER_POLL_SECONDS = 0.05


@dataclass
class GroupState:
    group: int
    leader: int  # 0: none known
    members: int
    healthy: bool  # a leader, and a linearizable read answered
    keys: int | None  # None when the group could not answer
    error: str = ""


async def _group_state(group: int, client: GroupClient) -> GroupState:
    try:
        status = (await client.call(ShardRequest(status={}), write=False, any_member=True,
                                    timeout=STATUS_TIMEOUT_SECONDS)).status
        count = await client.call(ShardRequest(range=RangeRequest(key=b"\0", range_end=b"\0", count_only=True)),
                                  write=False, timeout=STATUS_TIMEOUT_SECONDS)
        return GroupState(group, status.leader_id, len(client.member_ids), True, count.range.count)
    except errors.EtcdError as error:
        return GroupState(group, client.leader_id, len(client.member_ids), False, None, error.message)


async def describe(meta_members: dict[int, str]) -> tuple[ShardMap, list[GroupState]]:
    """The map, and each data group's leader, health and key count."""
    meta = MetaClient(GroupClient(META_GROUP, meta_members))
    clients = {}
    try:
        state = await meta.load()
        clients = {group: GroupClient(group, {m.id: m.api_address for m in record.members})
                   for group, record in state.groups.items() if group != META_GROUP}
        states = await asyncio.gather(*(_group_state(group, client) for group, client in sorted(clients.items())))
        return state.shard_map, list(states)
    finally:
        await asyncio.gather(meta.client.close(), *(client.close() for client in clients.values()))


async def assign(meta_members: dict[int, str], prefix: bytes, group: int,
                 routers_timeout: float = ROUTERS_TIMEOUT_SECONDS) -> ShardMap:
    """Give an empty prefix to a group; a prefix that holds keys is refused (moving data comes later).

    In three steps, so that no acknowledged write is left behind in the old group:
    1. the prefix is marked moving: routers refuse writes under it, and each one
       says (in its meta record) once it routes by that map and every write it
       sent under the older one is answered;
    2. the old group is asked, through its raft log (after every write it took),
       how many keys it has under the prefix: any, and the change is undone;
    3. the new map goes in, and the routers are waited for again.
    """
    meta = MetaClient(GroupClient(META_GROUP, meta_members))
    clients = {}
    try:
        state = await meta.load()
        if group == META_GROUP or group not in state.groups:
            known = ", ".join(str(g) for g in sorted(state.groups) if g != META_GROUP)
            raise ShardMapError(f"there is no data group {group} (groups: {known})")
        new_map = state.shard_map.assign(prefix, group)
        if new_map == state.shard_map:
            return new_map
        end = prefix_end(prefix)
        frozen = state.shard_map.with_moving([(prefix, end, group)])
        frozen_revision = await meta.replace_shard_map(frozen, state.shard_map_revision)
        if not frozen_revision:
            raise ShardMapError("the shard map changed meanwhile; look at it again and retry")
        try:
            await _wait_for_routers(meta, frozen_revision, routers_timeout)
            clients = {g: GroupClient(g, {m.id: m.api_address for m in state.groups[g].members})
                       for g in state.shard_map.groups_of(prefix, end or b"\0")}
            for piece in state.shard_map.pieces(prefix, end or b"\0"):
                count = await _count_in_log_order(clients[piece.group], piece.key, piece.range_end)
                if count:
                    raise ShardMapError(
                        f"{count} keys under {prefix!r} live in group {piece.group}; moving a prefix that "
                        f"holds data is not supported yet, so it stays where it is")
        except BaseException:
            await meta.replace_shard_map(state.shard_map, frozen_revision)  # undo the freeze
            raise
        final_revision = await meta.replace_shard_map(new_map, frozen_revision)
        if not final_revision:
            raise ShardMapError("the shard map changed during the assignment; look at it again")
        await _wait_for_routers(meta, final_revision, routers_timeout)
        return new_map
    finally:
        await asyncio.gather(meta.client.close(), *(client.close() for client in clients.values()))


async def _wait_for_routers(meta: MetaClient, revision: int, timeout: float) -> None:
    """Until every router routes by the map at `revision` (or a later one)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        behind = [router for router in (await meta.load()).routers.values()
                  if router.shard_map_revision < revision]
        if not behind:
            return
        if loop.time() > deadline:
            names = ", ".join(f"{router.name} ({router.client_address})" for router in behind)
            raise ShardMapError(f"routers did not take the new shard map within {timeout:g} s: {names}; "
                                f"a router that is gone for good must be removed first")
        await asyncio.sleep(ROUTER_POLL_SECONDS)


async def _count_in_log_order(client: GroupClient, key: bytes, range_end: bytes) -> int:
    """Keys in a range, counted by a transaction: it runs after every write the group took before."""
    answer = await client.call(ShardRequest(txn=TxnRequest(success=[RequestOp(request_range=RangeRequest(
        key=key, range_end=range_end, count_only=True))])), write=True)
    return answer.txn.responses[0].response_range.count


async def replica_statuses(meta_members: dict[int, str]) -> list[tuple[int, int, StatusResponse | str]]:
    """(group, member, its status or why it did not answer) for every replica, the meta group's too."""
    meta = MetaClient(GroupClient(META_GROUP, meta_members))
    clients = {}
    try:
        state = await meta.load()
        clients = {group: GroupClient(group, {m.id: m.api_address for m in record.members})
                   for group, record in state.groups.items()}

        async def one(group: int, member: int):
            try:
                answer = await clients[group].connection(member).request(ShardRequest(status={}),
                                                                         STATUS_TIMEOUT_SECONDS)
                return group, member, answer.status
            except ReplicaUnreachable as unreachable:
                return group, member, f"unreachable ({unreachable})"

        return list(await asyncio.gather(*(one(group, member) for group, client in sorted(clients.items())
                                           for member in client.member_ids)))
    finally:
        await asyncio.gather(meta.client.close(), *(client.close() for client in clients.values()))


async def transfer_leadership(meta_members: dict[int, str], group: int, member: int) -> None:
    """Hand a group's leadership to one of its voters (etcd's MoveLeader, for one group)."""
    meta = MetaClient(GroupClient(META_GROUP, meta_members))
    client = None
    try:
        state = await meta.load()
        if group not in state.groups:
            raise ShardMapError(f"there is no group {group}")
        client = GroupClient(group, {m.id: m.api_address for m in state.groups[group].members})
        await client.call(ShardRequest(move_leader=MoveLeaderRequest(targetID=member)), write=True)
    finally:
        await asyncio.gather(meta.client.close(), *([client.close()] if client else []))
