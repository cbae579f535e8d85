"""Operator commands: the shard map (list it, assign an empty prefix), every replica's status,
leadership transfer, membership (list, add, promote, remove), new groups, defragment, alarms.

They talk to the meta group and the data groups over the internal API, as a
router does. An assignment completes only once every router routes by it.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from router.core import DEFRAGMENT_TIMEOUT_SECONDS
from router.meta import META_GROUP, MetaClient, MetaState, group_key
from router.shard_client import GroupClient, ReplicaUnreachable
from router.shard_map import ShardMap, ShardMapError, prefix_end
from tessera.api import errors
from tessera.api.internal_pb2 import GroupRecord, Member, ShardRequest, ShardResponse, StatusResponse
from tessera.api.rpc_pb2 import (
    AlarmMember,
    AlarmRequest,
    MoveLeaderRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)

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
    bytes_in_use: int = 0  # the leader's database, history included (what compact + defrag keep)


async def _group_state(group: int, client: GroupClient) -> GroupState:
    try:
        status = (await client.call(ShardRequest(status={}), write=False, any_member=True,
                                    timeout=STATUS_TIMEOUT_SECONDS)).status
        count = await client.call(ShardRequest(range=RangeRequest(key=b"\0", range_end=b"\0", count_only=True)),
                                  write=False, timeout=STATUS_TIMEOUT_SECONDS)
        return GroupState(group, status.leader_id, len(client.member_ids), True, count.range.count,
                          bytes_in_use=status.db_size_in_use)
    except errors.EtcdError as error:
        return GroupState(group, client.leader_id, len(client.member_ids), False, None, error.message)


async def describe(meta_members: dict[int, str],
                   ssl_context: ssl.SSLContext | None = None) -> tuple[MetaState, list[GroupState]]:
    """The meta records (the map, moves in progress), and each data group's leader, health,
    key count and bytes."""
    meta = MetaClient(GroupClient(META_GROUP, meta_members, ssl_context))
    clients = {}
    try:
        state = await meta.load()
        clients = {group: GroupClient(group, {m.id: m.api_address for m in record.members},
                                      meta.client.ssl_context)
                   for group, record in state.groups.items() if group != META_GROUP}
        states = await asyncio.gather(*(_group_state(group, client) for group, client in sorted(clients.items())))
        return state, list(states)
    finally:
        await asyncio.gather(meta.client.close(), *(client.close() for client in clients.values()))


async def assign(meta_members: dict[int, str], prefix: bytes, group: int,
                 routers_timeout: float = ROUTERS_TIMEOUT_SECONDS,
                 ssl_context: ssl.SSLContext | None = None) -> ShardMap:
    """Give an empty prefix to a group; a prefix that holds keys is refused (router/moves.py moves those).

    In three steps, so that no acknowledged write is left behind in the old group:
    1. the prefix is marked moving: routers hold requests under it, and each one
       says (in its meta record) once it routes by that map and every write it
       sent under the older one is answered;
    2. the old group is asked, through its raft log (after every write it took),
       how many keys it has under the prefix: any, and the change is undone;
    3. the new map goes in, and the routers are waited for again.
    """
    meta = MetaClient(GroupClient(META_GROUP, meta_members, ssl_context))
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
            clients = {g: GroupClient(g, {m.id: m.api_address for m in state.groups[g].members},
                                      meta.client.ssl_context)
                       for g in state.shard_map.groups_of(prefix, end or b"\0")}
            for piece in state.shard_map.pieces(prefix, end or b"\0"):
                count = await _count_in_log_order(clients[piece.group], piece.key, piece.range_end)
                if count:
                    raise ShardMapError(
                        f"{count} keys under {prefix!r} live in group {piece.group}, so it stays where it "
                        f"is; `tessera shards move` moves a prefix with its keys")
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


async def replica_statuses(meta_members: dict[int, str], ssl_context: ssl.SSLContext | None = None
                           ) -> list[tuple[int, int, StatusResponse | str]]:
    """(group, member, its status or why it did not answer) for every replica, the meta group's too."""
    meta = MetaClient(GroupClient(META_GROUP, meta_members, ssl_context))
    clients = {}
    try:
        state = await meta.load()
        clients = {group: GroupClient(group, {m.id: m.api_address for m in record.members},
                                      meta.client.ssl_context)
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


async def transfer_leadership(meta_members: dict[int, str], group: int, member: int,
                              ssl_context: ssl.SSLContext | None = None) -> bool:
    """Hand a group's leadership to one of its voters (etcd's MoveLeader, for one group); whether
    it moved (False: the member led already)."""
    async with _operating(meta_members, ssl_context) as (_, _, group_client):
        client = group_client(group)
        leader, _ = await _membership(client)
        if leader == member:
            return False
        await client.call(ShardRequest(move_leader=MoveLeaderRequest(targetID=member)), write=True)
        return True


# --- membership, defragment, alarms ------------------------------------------------------
#
# A group's membership is its raft configuration, which its leader answers for.
# The meta group's record of the group lists its voters: routers follow that
# record, so a learner is recorded once promoted (it serves nothing before it has
# caught up) and a removed member as soon as it is gone.

# A learner whose applied index has not moved for this long is not catching up
# (a snapshot of a few GB crosses the loopback well within it).
CATCH_UP_STALL_SECONDS = 60.0
# Random member ids (`member add --meta`): above the small ids a launcher gives, below 2**31
# so they print and sort as the others do.
MEMBER_ID_FLOOR = 1 << 16
MEMBER_ID_CEILING = 1 << 31
CATCH_UP_POLL_SECONDS = 0.2


class OperatorError(Exception):
    """A command that cannot be done as asked; the message says why."""


@dataclass
class GroupMembers:
    group: int
    leader: int  # 0 when the group could not answer
    members: list[Member]  # as the leader's raft configuration has them, learners flagged
    recorded: set[int]  # the members in the meta group's record: those routers use
    error: str = ""


@dataclass
class Defragmentation:
    """One replica's turn: yielded when it starts (`done` False) and when it is done."""

    position: int  # 1-based, of `total`
    total: int
    group: int
    member: int
    before_bytes: int = 0
    after_bytes: int = 0
    done: bool = False
    error: str = ""


@asynccontextmanager
async def _operating(meta_members: dict[int, str], ssl_context: ssl.SSLContext | None = None):
    """(meta client, meta state, a function giving one group's client); every connection closed after."""
    meta = MetaClient(GroupClient(META_GROUP, meta_members, ssl_context))
    clients: dict[int, GroupClient] = {}
    try:
        state = await meta.load()

        def group_client(group: int) -> GroupClient:
            if group not in state.groups:
                known = ", ".join(str(g) for g in sorted(state.groups))
                raise OperatorError(f"there is no group {group} (groups: {known})")
            if group not in clients:
                clients[group] = GroupClient(group, {m.id: m.api_address for m in state.groups[group].members},
                                             meta.client.ssl_context)
            return clients[group]

        yield meta, state, group_client
    finally:
        await asyncio.gather(meta.client.close(), *(client.close() for client in clients.values()))


async def _ask(client: GroupClient, member: int, request: ShardRequest,
               timeout: float = STATUS_TIMEOUT_SECONDS) -> ShardResponse:
    """One replica's own answer (not its leader's); its error raised as etcd's."""
    try:
        response = await client.connection(member).request(request, timeout)
    except ReplicaUnreachable as unreachable:
        raise OperatorError(f"group {client.group_id} member {member} is unreachable ({unreachable})") from None
    if response.WhichOneof("response") == "error":
        raise errors.from_report(response.error.code, response.error.message)
    return response


async def _membership(client: GroupClient) -> tuple[int, list[Member]]:
    """(the leader, the members as its configuration has them); the client then knows every member."""
    status = (await client.call(ShardRequest(status={}), write=False, any_member=True,
                                timeout=STATUS_TIMEOUT_SECONDS)).status
    if not status.leader_id or status.leader_id not in client.member_ids:
        raise errors.NoLeader()
    members = list((await _ask(client, status.leader_id, ShardRequest(member_list={}))).members.members)
    client.set_members({member.id: member.api_address for member in members})
    client.leader_id = status.leader_id  # writes go there first, not to a member that may be down
    return status.leader_id, members


async def _record_voters(meta: MetaClient, client: GroupClient) -> list[Member]:
    """Write the group's voters into its meta record, until the record matches raft's configuration
    (another change may land between reading it and writing the record)."""
    _, members = await _membership(client)
    while True:
        voters = [Member(id=m.id, peer_address=m.peer_address, api_address=m.api_address)
                  for m in members if not m.is_learner]
        await meta.put(group_key(client.group_id), GroupRecord(id=client.group_id, members=voters))
        _, again = await _membership(client)
        if again == members:
            return members
        members = again


async def list_members(meta_members: dict[int, str], group: int | None = None,
                       ssl_context: ssl.SSLContext | None = None) -> list[GroupMembers]:
    """Each group's members (or one group's), as raft has them and as routers know them."""
    async with _operating(meta_members, ssl_context) as (_, state, group_client):
        groups = [group] if group is not None else sorted(state.groups)
        clients = {g: group_client(g) for g in groups}

        async def one(g: int) -> GroupMembers:
            recorded = {member.id for member in state.groups[g].members}
            try:
                leader, members = await _membership(clients[g])
                return GroupMembers(g, leader, members, recorded)
            except (errors.EtcdError, OperatorError) as failure:
                return GroupMembers(g, 0, [], recorded, getattr(failure, "message", str(failure)))

        return list(await asyncio.gather(*(one(g) for g in groups)))


async def add_member(meta_members: dict[int, str], group: int, peer_address: str, api_address: str,
                     member_id: int | None = None,
                     ssl_context: ssl.SSLContext | None = None) -> tuple[Member, list[Member]]:
    """Add a learner to a group (etcd's member add --learner): it, and the members now. It must
    then be started with --join, and promoted once caught up.

    `member_id`: one the group never had (a local launcher's data dir knows every one it
    had); without it, a random id, as etcd gives its members, so that a removed member
    whose process still runs never shares its id with a new one."""
    async with _operating(meta_members, ssl_context) as (_, state, group_client):
        client = group_client(group)
        _, members = await _membership(client)
        known = {m.id for m in members} | {m.id for m in state.groups[group].members}
        while member_id is None or member_id in known:
            member_id = MEMBER_ID_FLOOR + secrets.randbelow(MEMBER_ID_CEILING - MEMBER_ID_FLOOR)
        member = Member(id=member_id, peer_address=peer_address, api_address=api_address, is_learner=True)
        answer = await client.call(ShardRequest(member_add=member), write=True)
        return member, list(answer.members.members)


async def promote_member(meta_members: dict[int, str], group: int, member: int,
                         progress: Callable[[int, int], None] | None = None,
                         stall_seconds: float = CATCH_UP_STALL_SECONDS,
                         ssl_context: ssl.SSLContext | None = None) -> None:
    """Promote a learner to a voter once it has caught up (etcd's 90% of the leader's log), then
    record it for the routers. `progress(applied, leader's commit)` is called while it catches up;
    a learner that stops advancing gets etcd's "not in sync" error."""
    async with _operating(meta_members, ssl_context) as (meta, _, group_client):
        client = group_client(group)
        leader, members = await _membership(client)
        learner = next((m for m in members if m.id == member), None)
        if learner is None:
            raise errors.MemberNotFound()
        if not learner.is_learner:
            raise errors.MemberNotLearner()
        loop = asyncio.get_running_loop()
        applied, moved_at = -1, loop.time()
        while True:
            try:
                await client.call(ShardRequest(member_promote=member), write=True)
                break
            except errors.LearnerNotReady:
                pass
            except errors.RequestTimeout:
                # Raft takes one change at a time (the add may still be applying), or the answer
                # was lost: look again, the promotion may have happened.
                _, members = await _membership(client)
                if any(m.id == member and not m.is_learner for m in members):
                    break
            try:
                now_applied = (await _ask(client, member, ShardRequest(status={}))).status.applied_index
                commit = (await _ask(client, leader, ShardRequest(status={}))).status.commit_index
            except OperatorError:  # not started yet, or the leader changed: the deadline still runs
                now_applied, commit = applied, 0
            if progress is not None and commit:
                progress(now_applied, commit)
            if now_applied != applied:
                applied, moved_at = now_applied, loop.time()
            elif loop.time() - moved_at > stall_seconds:
                raise errors.LearnerNotReady()
            await asyncio.sleep(CATCH_UP_POLL_SECONDS)
        await _record_voters(meta, client)


async def remove_member(meta_members: dict[int, str], group: int, member: int,
                        ssl_context: ssl.SSLContext | None = None) -> int:
    """Remove a member from a group, with etcd's checks (strict reconfiguration): the last voter
    stays, and a voter that is up goes only if the voters up after it are a quorum of those left.
    A leader first hands its leadership to the most caught-up voter up. The leader it leaves."""
    async with _operating(meta_members, ssl_context) as (meta, _, group_client):
        client = group_client(group)
        leader, members = await _membership(client)
        leaving = next((m for m in members if m.id == member), None)
        if leaving is None:
            raise errors.MemberNotFound()
        if not leaving.is_learner:
            voters = [m.id for m in members if not m.is_learner]
            applied = await _applied_indexes(client, voters)
            remaining = [voter for voter in voters if voter != member]
            if not remaining:
                raise errors.MemberNotEnoughStarted()
            # As etcd: a member that is down is no part of the quorum that is up, so it may go.
            up_after = [voter for voter in remaining if voter in applied]
            if member in applied and len(up_after) < len(remaining) // 2 + 1:
                raise errors.Unhealthy()
            if member == leader:
                leader = max(up_after, key=applied.__getitem__)
                await client.call(ShardRequest(move_leader=MoveLeaderRequest(targetID=leader)), write=True)
        await client.call(ShardRequest(member_remove=member), write=True)
        await _record_voters(meta, client)
        return leader


# How long a new group's replicas have to start and elect a leader (13 processes on a 2-core
# host elect well within it; three more, started together, do too).
GROUP_START_SECONDS = 30.0


async def record_group(meta_members: dict[int, str], group: int, members: list[Member],
                       timeout: float = GROUP_START_SECONDS,
                       ssl_context: ssl.SSLContext | None = None) -> int:
    """Record a new group in the meta group once its replicas (founded together, running) have a
    leader and answer a linearizable read: routers then route to it once the map gives it keys
    (the record goes in before any map that names the group). Its leader; a group recorded
    already is refused."""
    meta = MetaClient(GroupClient(META_GROUP, meta_members, ssl_context))
    client = GroupClient(group, {member.id: member.api_address for member in members}, ssl_context)
    try:
        if group in (await meta.load()).groups:
            raise OperatorError(f"group {group} exists already")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        # A member may answer a read before it has heard who leads: wait for both, to name the leader.
        while not ((health := await _group_state(group, client)).healthy and health.leader):
            if loop.time() > deadline:
                raise OperatorError(f"group {group} did not elect a leader within {timeout:g} s "
                                    f"({health.error}); see its replicas' logs")
            await asyncio.sleep(CATCH_UP_POLL_SECONDS)
        if not await meta.create(group_key(group), GroupRecord(id=group, members=members)):
            raise OperatorError(f"group {group} exists already")
        return health.leader
    finally:
        await asyncio.gather(meta.client.close(), client.close())


async def _applied_indexes(client: GroupClient, members: list[int]) -> dict[int, int]:
    """Each member's applied index, for the members that answer now."""
    async def one(member: int) -> int | None:
        try:
            return (await _ask(client, member, ShardRequest(status={}))).status.applied_index
        except (errors.EtcdError, OperatorError):
            return None

    answers = await asyncio.gather(*(one(member) for member in members))
    return {member: applied for member, applied in zip(members, answers) if applied is not None}


async def defragment(meta_members: dict[int, str],
                     ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[Defragmentation]:
    """Defragment every replica of every group, one at a time: each is busy while it rewrites its
    database, so its group keeps a quorum serving."""
    async with _operating(meta_members, ssl_context) as (_, state, group_client):
        replicas = [(group, member.id) for group, record in sorted(state.groups.items())
                    for member in record.members]
        for position, (group, member) in enumerate(replicas, start=1):
            client = group_client(group)
            step = Defragmentation(position, len(replicas), group, member)
            try:
                step.before_bytes = (await _ask(client, member, ShardRequest(status={}))).status.db_size
                yield step
                await _ask(client, member, ShardRequest(defragment={}), DEFRAGMENT_TIMEOUT_SECONDS)
                step.after_bytes = (await _ask(client, member, ShardRequest(status={}))).status.db_size
            except (errors.EtcdError, OperatorError) as failure:
                step.error = getattr(failure, "message", str(failure))
            step.done = True
            yield step


async def list_alarms(meta_members: dict[int, str],
                      ssl_context: ssl.SSLContext | None = None) -> list[tuple[int, AlarmMember]]:
    """(group, alarm) for every active alarm; alarms go through each group's raft log, so the
    leader's list is the group's."""
    async with _operating(meta_members, ssl_context) as (_, state, group_client):
        return await _alarms(state, group_client)


async def disarm_alarms(meta_members: dict[int, str],
                        ssl_context: ssl.SSLContext | None = None) -> list[tuple[int, AlarmMember]]:
    """Deactivate every active alarm (etcdctl alarm disarm); the alarms that were disarmed."""
    async with _operating(meta_members, ssl_context) as (_, state, group_client):
        active = await _alarms(state, group_client)
        for group, alarm in active:
            await group_client(group).call(ShardRequest(alarm=AlarmRequest(
                action=AlarmRequest.DEACTIVATE, memberID=alarm.memberID, alarm=alarm.alarm)), write=True)
        return active


async def _alarms(state: MetaState, group_client) -> list[tuple[int, AlarmMember]]:
    async def one(group: int) -> list[tuple[int, AlarmMember]]:
        client = group_client(group)
        leader, _ = await _membership(client)
        status = (await _ask(client, leader, ShardRequest(status={}))).status
        return [(group, alarm) for alarm in status.alarms]

    return [found for group_alarms in await asyncio.gather(*(one(group) for group in sorted(state.groups)))
            for found in group_alarms]
