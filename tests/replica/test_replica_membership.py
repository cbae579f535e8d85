"""Membership changes on a real group: a learner joins, catches up, is promoted; a member leaves."""

import asyncio
import time

from replica_cluster import STARTUP_SECONDS, ShardClient, put_many, wait_for_leader, wait_until_caught_up
from router.shard_client import ReplicaUnreachable


def member_table(answer):
    return {m.id: m.is_learner for m in answer.members.members}


def test_a_learner_joins_catches_up_is_promoted_and_a_member_leaves(group):
    async def scenario():
        leader = await wait_for_leader(group)
        async with ShardClient(group.api_address(leader)) as client:
            await put_many(client, b"before-", 100)
            group.add_member(4)
            added = await client.request(member_add=dict(
                id=4, peer_address=group.peer_address(4), api_address=group.api_address(4), is_learner=True))
            assert member_table(added) == {1: False, 2: False, 3: False, 4: True}, added
            group.start(4)
            await wait_until_caught_up(group, 4, leader)
            promoted = await client.request(member_promote=4)
            assert member_table(promoted) == {1: False, 2: False, 3: False, 4: False}, promoted
            leaving = next(m for m in (1, 2, 3) if m != leader)
            removed = await client.request(member_remove=leaving)
            assert leaving not in member_table(removed)
            group.kill(leaving)
            await put_many(client, b"after-", 100)  # a quorum of the three that remain
            listed = await client.request(member_list={})
            assert sorted(member_table(listed)) == sorted({1, 2, 3, 4} - {leaving})
        # The joined member keeps its membership and data over a restart.
        group.kill(4)
        group.start(4)
        await wait_until_caught_up(group, 4, leader)
        async with ShardClient(group.api_address(4)) as client:
            assert sorted(member_table(await client.request(member_list={}))) == sorted({1, 2, 3, 4} - {leaving})
        # Once the joined member leads, "not leader" answers say where it is.
        async with ShardClient(group.api_address(leader)) as client:
            moved = await client.request(move_leader=dict(targetID=4))
            assert moved.WhichOneof("response") == "move_leader", moved
        async with ShardClient(group.api_address(leader)) as client:
            answer = await client.request(put=dict(key=b"k", value=b"v"))
            assert (answer.error.leader_id, answer.error.leader_address) == (4, group.api_address(4)), answer

    asyncio.run(scenario())


def test_a_restarted_member_answers_membership_from_its_log_at_once(group):
    """Membership lives in the log (the conf changes that founded the group): a restarted member's
    very first answer lists every member, not the empty configuration it starts from before the
    log is replayed."""
    async def first_member_list(member: int):
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                async with ShardClient(group.api_address(member)) as client:
                    return await client.request(member_list={})
            except ReplicaUnreachable:
                assert time.monotonic() < deadline, group.logs()
                await asyncio.sleep(0.01)

    async def scenario():
        await wait_for_leader(group)
        for restarted in (1, 2):
            group.kill(restarted)
            group.start(restarted)
            assert member_table(await first_member_list(restarted)) == {1: False, 2: False, 3: False}

    asyncio.run(scenario())


def test_membership_requests_get_etcds_errors(group):
    async def scenario():
        leader = await wait_for_leader(group)
        async with ShardClient(group.api_address(leader)) as client:
            async def error_of(**request):
                answer = await client.request(**request)
                return answer.error.code, answer.error.message

            taken = dict(id=2, peer_address="127.0.0.1:1", api_address="127.0.0.1:2")
            assert await error_of(member_add=taken) == ("FAILED_PRECONDITION", "etcdserver: member ID already exist")
            same_peer = dict(id=9, peer_address=group.peer_address(2), api_address="127.0.0.1:2")
            assert await error_of(member_add=same_peer) == (
                "FAILED_PRECONDITION", "etcdserver: Peer URLs already exists")
            assert await error_of(member_remove=42) == ("NOT_FOUND", "etcdserver: member not found")
            assert await error_of(member_promote=2) == (
                "FAILED_PRECONDITION", "etcdserver: can only promote a learner member")
            absent = dict(id=5, peer_address="127.0.0.1:3", api_address="127.0.0.1:4", is_learner=True)
            assert member_table(await client.request(member_add=absent))[5] is True
            assert await error_of(member_promote=5) == (  # never started: nothing replicated to it
                "FAILED_PRECONDITION", "etcdserver: can only promote a learner member which is in sync with leader")
            another = dict(id=6, peer_address="127.0.0.1:5", api_address="127.0.0.1:6", is_learner=True)
            assert await error_of(member_add=another) == (
                "FAILED_PRECONDITION", "etcdserver: too many learner members in cluster")
        follower = next(m for m in group.processes if m != leader)
        async with ShardClient(group.api_address(follower)) as client:
            answer = await client.request(member_remove=leader)
            assert answer.error.message == "etcdserver: not leader"

    asyncio.run(scenario())
