"""The operator's membership and maintenance commands on a cluster of this module's own:
tessera member list|add|promote|remove|move, tessera defrag, tessera alarm list|disarm.

The commands run as processes, as an operator runs them, against the data dir of
a running launcher; the launcher follows the layout they change.
"""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from cluster import ClusterThread
from etcd_client import EtcdClient
from test_operator_cli import leaders, tessera

from tessera.api.rpc_pb2 import NOSPACE, AlarmRequest, PutRequest, RangeRequest
from tessera.launcher import Layout, free_ports
from tessera.progress import Progress

PODS = b"/registry/pods/members/"  # group 2
EVENTS = b"/registry/events/members/"  # group 3
CONVERGE_SECONDS = 30.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ClusterThread(tmp_path_factory.mktemp("operator-members")) as cluster:
        yield cluster


def until(condition, what: str, timeout: float = CONVERGE_SECONDS):
    """Poll `condition` until it gives a true value, which is returned."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        time.sleep(0.1)
    return value


def put_keys(cluster, prefix: bytes, count: int) -> None:
    async def put_all():
        async with EtcdClient(cluster.endpoint) as client:
            for number in range(count):
                await client.kv.Put(PutRequest(key=prefix + b"%03d" % number, value=b"v%d" % number), timeout=10)

    asyncio.run(put_all())


def keys_through_router(cluster, prefix: bytes) -> list[bytes]:
    async def read():
        async with EtcdClient(cluster.endpoint) as client:
            answer = await client.kv.Range(RangeRequest(key=prefix, range_end=prefix[:-1] + b"0"), timeout=10)
            return [kv.key for kv in answer.kvs]

    return asyncio.run(read())


def keys_on_replica(cluster, group: int, member: int, prefix: bytes) -> list[bytes]:
    """A serializable read straight to one replica: what its own store holds."""
    answer = cluster.run(cluster.launcher.request(group, member, range=RangeRequest(
        key=prefix, range_end=prefix[:-1] + b"0", serializable=True)))
    return [kv.key for kv in answer.range.kvs]


def members(cluster, group: int) -> dict[int, tuple[str, str, str, str]]:
    """`tessera member list GROUP`: member -> (role, peer, api, routed)."""
    listed = tessera(cluster, "member", "list", str(group))
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    return {int(row[1]): tuple(row[2:]) for row in rows}


def status_rows(cluster) -> list[tuple[int, int]]:
    status = tessera(cluster, "status")
    assert status.returncode == 0, status.stderr
    return [(int(row.split()[0]), int(row.split()[1])) for row in status.stdout.splitlines()[1:]]


def test_an_added_replica_catches_up_is_promoted_and_holds_the_data(cluster):
    put_keys(cluster, PODS, 200)
    added = tessera(cluster, "member", "add", "2")
    assert added.returncode == 0, added.stderr
    assert "group 2: member 4 added as a learner" in added.stdout
    assert added.stdout.endswith("group 2: member 4 caught up and promoted to voter\n"), added.stdout
    assert added.stderr == ""  # no progress line off a terminal

    everything = tessera(cluster, "member", "list")
    assert {int(line.split()[0]) for line in everything.stdout.splitlines()[1:]} == {0, 1, 2, 3}
    listed = members(cluster, 2)
    assert sorted(listed) == [1, 2, 3, 4]
    assert listed[4][0] == "voter" and listed[4][3] == "yes"  # routers use it now
    layout = Layout.load(cluster.launcher.layout_path)
    assert listed[4][1:3] == layout.groups[2][4] and (2, 4) in layout.joined
    assert any("group 2 member 4 added to the cluster" in line for line in cluster.reports)

    expected = [PODS + b"%03d" % number for number in range(200)]
    until(lambda: keys_on_replica(cluster, 2, 4, PODS) == expected, "member 4 holds every key")
    assert sorted(member for group, member in status_rows(cluster) if group == 2) == [1, 2, 3, 4]


def test_removing_a_leader_hands_over_and_the_group_keeps_serving(cluster):
    leader = cluster.leader(2)
    removed = tessera(cluster, "member", "remove", "2", str(leader))
    assert removed.returncode == 0, removed.stderr
    new_leader = int(removed.stdout.split("(member ")[1].split()[0])
    assert new_leader != leader
    assert f"group 2: member {leader} removed" in removed.stdout

    assert leader not in members(cluster, 2)
    until(lambda: any(f"group 2 member {leader} removed from the cluster and stopped" in line
                      for line in cluster.reports), "the launcher stops the removed replica")
    assert leader not in Layout.load(cluster.launcher.layout_path).groups[2]
    assert sorted(member for group, member in status_rows(cluster) if group == 2) == sorted({1, 2, 3, 4} - {leader})

    put_keys(cluster, PODS + b"after/", 20)  # the router writes to the group as it is now
    assert len(keys_through_router(cluster, PODS + b"after/")) == 20
    staying = 4 if leader != 4 else new_leader
    until(lambda: len(keys_on_replica(cluster, 2, staying, PODS + b"after/")) == 20, "a replica applies new writes")


def test_move_a_replica_to_new_addresses(cluster):
    put_keys(cluster, EVENTS, 50)
    peer, api = (f"127.0.0.1:{port}" for port in free_ports(2))
    moved = tessera(cluster, "member", "move", "3", "1", "--peer", peer, "--api", api)
    assert moved.returncode == 0, moved.stderr
    assert moved.stdout.endswith("group 3: member 1 moved to member 4\n"), moved.stdout

    listed = members(cluster, 3)
    assert sorted(listed) == [2, 3, 4]
    assert listed[4][1:] == (peer, api, "yes")
    expected = [EVENTS + b"%03d" % number for number in range(50)]
    until(lambda: keys_on_replica(cluster, 3, 4, EVENTS) == expected, "the moved replica holds every key")
    put_keys(cluster, EVENTS + b"after/", 5)
    assert len(keys_through_router(cluster, EVENTS + b"after/")) == 5
    assert sorted(leaders(tessera(cluster, "status").stdout)) == [0, 1, 2, 3]


def test_a_learner_stays_out_of_the_routers_view_and_can_be_removed(cluster):
    added = tessera(cluster, "member", "add", "1", "--learner")
    assert added.returncode == 0, added.stderr
    assert "promoted" not in added.stdout
    listed = members(cluster, 1)
    assert listed[4][0] == "learner" and listed[4][3] == "no"  # routers send it nothing
    removed = tessera(cluster, "member", "remove", "1", "4")
    assert removed.returncode == 0, removed.stderr
    assert sorted(members(cluster, 1)) == [1, 2, 3]
    until(lambda: any("group 1 member 4 removed from the cluster and stopped" in line for line in cluster.reports),
          "the launcher stops the learner")


def test_move_a_meta_group_replica(cluster):
    moved = tessera(cluster, "member", "move", "0", "3")
    assert moved.returncode == 0, moved.stderr
    assert sorted(members(cluster, 0)) == [1, 2, 4]
    assert sorted(member for group, member in status_rows(cluster) if group == 0) == [1, 2, 4]
    put_keys(cluster, PODS + b"meta-moved/", 1)  # the router still reaches the meta group and routes


@pytest.mark.parametrize("args, error", [
    (("member", "remove", "9", "1"), "tessera member remove: there is no group 9 (groups: 0, 1, 2, 3)"),
    (("member", "remove", "1", "42"), "tessera member remove: etcdserver: member not found"),
    (("member", "promote", "1", "42"), "tessera member promote: etcdserver: member not found"),
    (("member", "promote", "1", "2"), "tessera member promote: etcdserver: can only promote a learner member"),
    (("member", "move", "1", "42"), "tessera member move: etcdserver: member not found"),
    (("member", "list", "7"), "tessera member list: there is no group 7 (groups: 0, 1, 2, 3)"),
])
def test_bad_input_is_refused_with_etcds_messages(cluster, args, error):
    refused = tessera(cluster, *args)
    assert (refused.returncode, refused.stderr) == (1, error + "\n")


def test_a_bad_address_is_refused_before_anything_changes(cluster):
    refused = tessera(cluster, "member", "add", "1", "--peer", "nowhere")
    assert refused.returncode == 2 and "'nowhere' is not HOST:PORT" in refused.stderr
    assert sorted(members(cluster, 1)) == [1, 2, 3]


def test_removing_a_voter_that_quorum_needs_is_refused(cluster):
    leader = cluster.leader(1)
    down, up = [member for member in (1, 2, 3) if member != leader]
    cluster.kill(1, down)
    try:
        refused = tessera(cluster, "member", "remove", "1", str(up))
        # etcd's strict reconfiguration check: one voter of the two left would be up.
        assert (refused.returncode, refused.stderr) == (1, "tessera member remove: etcdserver: unhealthy cluster\n")
        assert sorted(members(cluster, 1)) == [1, 2, 3]
    finally:
        cluster.restart(1, down)
    cluster.leader(1)


def test_a_group_shrinks_to_one_voter_keeps_it_and_grows_back(cluster):
    leader = cluster.leader(1)
    for follower in (member for member in (1, 2, 3) if member != leader):
        removed = tessera(cluster, "member", "remove", "1", str(follower))
        assert removed.returncode == 0, removed.stderr
    assert sorted(members(cluster, 1)) == [leader]
    refused = tessera(cluster, "member", "remove", "1", str(leader))
    assert (refused.returncode, refused.stderr) == (
        1, "tessera member remove: etcdserver: re-configuration failed due to not enough started members\n")
    put_keys(cluster, b"/one-voter/", 3)  # group 1 alone commits
    for _ in range(2):
        added = tessera(cluster, "member", "add", "1")
        assert added.returncode == 0, added.stderr
    assert sorted(members(cluster, 1)) == [leader, 5, 6]  # ids 1-4 were used here before
    put_keys(cluster, b"/three-voters/", 3)
    assert len(keys_through_router(cluster, b"/three-voters/")) == 3


def test_defrag_goes_over_every_replica_one_at_a_time(cluster):
    defrag = tessera(cluster, "defrag")
    assert defrag.returncode == 0, defrag.stderr
    lines = defrag.stdout.splitlines()
    replicas = status_rows(cluster)
    assert len(lines) == len(replicas) + 1
    for position, (line, (group, member)) in enumerate(zip(lines, replicas), start=1):
        assert line.startswith(f"[{position}/{len(replicas)}] group {group} member {member}: "), line
        assert " -> " in line and line.endswith("B"), line
    assert lines[-1].startswith("defragmented: ")


def test_alarm_list_and_disarm(cluster):
    async def activate():
        async with EtcdClient(cluster.endpoint) as client:
            await client.maintenance.Alarm(AlarmRequest(action=AlarmRequest.ACTIVATE, memberID=2, alarm=NOSPACE),
                                           timeout=10)

    assert tessera(cluster, "alarm", "list").stdout == ""
    asyncio.run(activate())  # in every data group, as the router raises it
    raised = "".join(f"memberID:2 alarm:NOSPACE (group {group})\n" for group in (1, 2, 3))
    listed = tessera(cluster, "alarm", "list")
    assert (listed.returncode, listed.stdout) == (0, raised), listed.stderr
    disarmed = tessera(cluster, "alarm", "disarm")
    assert (disarmed.returncode, disarmed.stdout) == (0, raised), disarmed.stderr
    assert tessera(cluster, "alarm", "list").stdout == ""
    put_keys(cluster, PODS + b"disarmed/", 1)  # writes are taken again


def test_progress_is_one_line_rewritten_on_a_terminal_and_nothing_elsewhere():
    terminal = io.StringIO()
    with Progress(terminal, enabled=True) as progress:
        progress.count(1, 4, "defragmenting group 0 member 1")
        progress.bytes(1_500_000, 6_000_000, "saving")
        progress.bytes(2048, None, "saving")
    erase = "\r\x1b[K"
    assert terminal.getvalue() == (f"{erase}[1/4] defragmenting group 0 member 1{erase}saving: 1.5 MB of 6.0 MB (25%)"
                                   f"{erase}saving: 2.0 kB{erase}")
    pipe = io.StringIO()  # not a terminal
    with Progress(pipe) as progress:
        progress.count(1, 2, "step")
    assert pipe.getvalue() == ""


def test_the_cluster_resumes_with_its_new_membership(cluster):
    """A restart of the launcher runs the members the commands left, joined ones with --join."""
    def membership():  # who leads may change
        return {group: {member: ("voter" if role == "leader" else role, *rest)
                        for member, (role, *rest) in members(cluster, group).items()} for group in (0, 1, 2, 3)}

    before = membership()
    cluster.run(cluster.launcher.stop())
    cluster.run(cluster.launcher.start())
    assert membership() == before
    assert len(keys_through_router(cluster, PODS)) == 200 + 20 + 1 + 1
    assert len(keys_through_router(cluster, EVENTS)) == 50 + 5
    assert len(keys_through_router(cluster, b"/three-voters/")) == 3
