"""The corruption check: the replicas of each group compare HashKV at one revision, at start and
periodically; a replica that disagrees with the others gets a CORRUPT alarm, raised through its
group's raft log, as etcd's corruption checker raises it for a member.
"""

from __future__ import annotations

import asyncio
import collections
import logging

from tessera.api import errors
from tessera.api.internal_pb2 import ShardRequest
from tessera.api.rpc_pb2 import CORRUPT, AlarmRequest

log = logging.getLogger("tessera.router")

CHECK_INTERVAL_SECONDS = 300.0


async def check_group(router, group: int) -> list[int]:
    """Compare a group's replicas now; the members found corrupt (and alarmed)."""
    answers = await router.replica_hashes(group, router.revision)
    votes = collections.Counter(answer.hash for answer in answers.values())
    if len(votes) < 2:
        return []
    agreed, count = votes.most_common(1)[0]
    if count * 2 <= len(answers):
        log.error("group %d: no majority of replicas agrees on HashKV; alarming all %s", group, sorted(answers))
        agreed = None
    corrupt = sorted(member for member, answer in answers.items() if answer.hash != agreed)
    for member in corrupt:
        log.error("group %d member %d: HashKV differs from its group's; raising the CORRUPT alarm", group, member)
        await router.write(group, ShardRequest(alarm=AlarmRequest(
            action=AlarmRequest.ACTIVATE, memberID=member, alarm=CORRUPT)))
    return corrupt


async def run(router, interval: float = CHECK_INTERVAL_SECONDS) -> None:
    """Check every group at start, then every `interval` seconds."""
    while True:
        for group in sorted(router.groups):
            try:
                await check_group(router, group)
            except errors.EtcdError as error:
                log.warning("corruption check of group %d could not run (%s)", group, error.message)
        await asyncio.sleep(interval)
