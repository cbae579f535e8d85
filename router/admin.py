"""Operator commands on the shard map: list it with each group's state, assign an empty prefix.

Both talk to the meta group and the data groups over the internal API, as a
router does. Routers follow the meta group, so an assignment reaches them
within moments.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from router.meta import META_GROUP, MetaClient
from router.shard_client import GroupClient
from router.shard_map import ShardMap, ShardMapError, prefix_end
from tessera.api import errors
from tessera.api.internal_pb2 import ShardRequest
from tessera.api.rpc_pb2 import RangeRequest

STATUS_TIMEOUT_SECONDS = 2.0


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


async def assign(meta_members: dict[int, str], prefix: bytes, group: int) -> ShardMap:
    """Give an empty prefix to a group; a prefix that holds keys is refused (moving data comes later)."""
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
        end = prefix_end(prefix) or b"\0"
        clients = {g: GroupClient(g, {m.id: m.api_address for m in state.groups[g].members})
                   for g in state.shard_map.groups_of(prefix, end)}
        for piece in state.shard_map.pieces(prefix, end):
            answer = await clients[piece.group].call(ShardRequest(range=RangeRequest(
                key=piece.key, range_end=piece.range_end, count_only=True)), write=False)
            if answer.range.count:
                raise ShardMapError(
                    f"{answer.range.count} keys under {prefix!r} live in group {piece.group}; moving a "
                    f"prefix that holds data is not supported yet, so it stays where it is")
        if not await meta.replace_shard_map(new_map, state.shard_map_revision):
            raise ShardMapError("the shard map changed meanwhile; look at it again and retry")
        return new_map
    finally:
        await asyncio.gather(meta.client.close(), *(client.close() for client in clients.values()))
