"""A new raft group joins a running local cluster (`tessera group add`).

Two records say what a cluster of `tessera up` is, and each has one reader:

  the layout (<data dir>/cluster.json)  what the launcher runs: every replica, its ports and
                                         its data dir; `tessera up` reads it at every start
  the meta group's group records         what the routers route to

So a group is added to both, the layout first: the command adds the group's three members
to the layout (change_layout), the running launcher follows the layout (Launcher.
_follow_layout) and starts them as it starts the other replicas: children of its own, under
<data dir>/group-N/, stopped with the cluster and started again by the next `tessera up`.
The members found the group together, as `tessera up`'s groups are founded (no --join).
Once the group has a leader, the command records it in the meta group (admin.record_group),
and it can take keys (`tessera shards move`, `tessera shards split`). No channel to the
launcher is needed: the layout file is the launcher's input, now and at its next start.

A command that dies between the two steps leaves a group that runs but holds nothing and
is no router's; the next `tessera group add` finds it (in the layout, not in the meta group)
and finishes it rather than founding another.
"""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from router import admin
from router.meta import META_GROUP, MetaClient
from router.shard_client import GroupClient
from tessera.api.internal_pb2 import Member
from tessera.launcher import LAYOUT_FILE, Layout, change_layout


def add_group(data_dir: str | Path, group: int | None = None,
              ssl_context: ssl.SSLContext | None = None) -> tuple[int, list[Member], int]:
    """Found a group in the running cluster of `data_dir` and record it: (its id, its members,
    its leader). `group`: the id to give it (default: the next free one). A running launcher
    is the caller's to check (it starts the replicas)."""
    data_dir = Path(data_dir)
    layout = Layout.load(data_dir / LAYOUT_FILE)
    meta_members = {member: api for member, (_, api) in layout.groups[META_GROUP].items()}
    recorded = set(asyncio.run(_recorded_groups(meta_members, ssl_context)))
    unfinished = sorted(set(layout.groups) - recorded)  # a group add that died before recording
    on_disk = {int(path.name.removeprefix("group-")) for path in data_dir.glob("group-*")}
    if group is None:
        group = unfinished[0] if unfinished else max([*layout.groups, *recorded, *on_disk]) + 1
    elif group <= META_GROUP:
        raise admin.OperatorError(f"group ids of data groups are above {META_GROUP}; {group} is not")
    elif group in recorded:
        raise admin.OperatorError(f"group {group} exists already")
    elif group in on_disk and group not in unfinished:
        raise admin.OperatorError(f"{data_dir / f'group-{group}'} holds the data of an earlier group {group}; "
                                  f"give another id")

    def add(layout: Layout) -> None:
        if group not in layout.groups:  # else: an unfinished add, whose replicas run already
            layout.add_group(group)

    layout = change_layout(data_dir, add)
    members = [Member(id=member, peer_address=peer, api_address=api)
               for member, (peer, api) in sorted(layout.groups[group].items())]
    leader = asyncio.run(admin.record_group(meta_members, group, members, ssl_context=ssl_context))
    return group, members, leader


async def _recorded_groups(meta_members: dict[int, str], ssl_context: ssl.SSLContext | None) -> list[int]:
    meta = MetaClient(GroupClient(META_GROUP, meta_members, ssl_context))
    try:
        return list((await meta.load()).groups)
    finally:
        await meta.client.close()
