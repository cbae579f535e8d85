"""An idle group goes quiet: no raft traffic, no timers. A write wakes it; so does a request after its leader died,
and a request to a quiet leader that has lost its followers, which then steps down."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from replica_cluster import ReplicaGroup, ShardClient, run_scenario, wait_for_leader

from tessera.api.rpc_pb2 import PutRequest, RangeRequest

QUIET_POLLS = 5  # scrapes 0.2 s apart with no raft byte sent: ten heartbeat intervals
POLLS_MAX = 100


def raft_bytes_sent(group: ReplicaGroup, member: int) -> float:
    """What the member has sent its peers (a scrape of /metrics wakes nothing)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{group.metrics_ports[member]}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
               if sample.name == "etcd_network_peer_sent_bytes_total")


async def wait_until_quiet(group: ReplicaGroup, members) -> None:
    last, quiet = None, 0
    for _ in range(POLLS_MAX):
        sent = [raft_bytes_sent(group, member) for member in members]
        quiet = quiet + 1 if sent == last else 0
        if quiet == QUIET_POLLS:
            return
        last = sent
        await asyncio.sleep(0.2)
    raise AssertionError(f"the group did not go quiet\n{group.logs()}")


async def write_and_wait_until_quiet(group: ReplicaGroup) -> int:
    """Write once, then wait until the group is quiet; returns the leader."""
    leader = await wait_for_leader(group)
    async with ShardClient(group.api_address(leader)) as client:
        assert (await client.request(put=PutRequest(key=b"k", value=b"1"))).WhichOneof("response") == "put"
    await wait_until_quiet(group, group.processes)
    return leader


def test_an_idle_group_goes_quiet_and_a_write_wakes_it(tmp_path):
    group = ReplicaGroup(tmp_path, metrics=True)

    async def scenario():
        leader = await write_and_wait_until_quiet(group)
        async with ShardClient(group.api_address(leader)) as client:
            answer = await client.request(put=PutRequest(key=b"k", value=b"2"))
            assert answer.WhichOneof("response") == "put"
            read = await client.request(range=RangeRequest(key=b"k"))  # linearizable: a heartbeat round
            assert read.range.kvs[0].value == b"2"
            await wait_until_quiet(group, group.processes)  # and quiet again
        for member in group.processes:  # every replica applied the write before going quiet
            async with ShardClient(group.api_address(member)) as client:
                local = await client.request(range=RangeRequest(key=b"k", serializable=True))
                assert local.range.kvs[0].value == b"2"

    run_scenario(group, scenario)


def test_a_quiet_group_whose_leader_dies_elects_another_once_asked(tmp_path):
    group = ReplicaGroup(tmp_path, metrics=True)

    async def scenario():
        leader = await write_and_wait_until_quiet(group)
        group.kill(leader)
        # wait_for_leader asks each survivor its status, as a router that lost the leader does.
        successor = await wait_for_leader(group, members=list(group.processes))
        assert successor != leader
        async with ShardClient(group.api_address(successor)) as client:
            assert (await client.request(put=PutRequest(key=b"k", value=b"2"))).WhichOneof("response") == "put"

    run_scenario(group, scenario)


def test_a_quiet_leader_cut_off_from_its_followers_steps_down_once_a_request_wakes_it(tmp_path):
    """Check-quorum needs ticks: a quiet leader alone keeps its role until a request wakes it (a status,
    which every router asks of every leader every few seconds, does not), then steps down."""
    group = ReplicaGroup(tmp_path, metrics=True)

    async def scenario():
        leader = await write_and_wait_until_quiet(group)
        followers = [member for member in group.processes if member != leader]
        for member in followers:
            os.kill(group.processes[member].pid, signal.SIGSTOP)
        try:
            async with ShardClient(group.api_address(leader)) as client:
                assert (await client.request(status={})).status.leader_id == leader  # asleep, unaware
                read = await client.request(range=RangeRequest(key=b"k"))  # linearizable: it wakes the leader
                assert (read.error.code, read.error.message) == ("UNAVAILABLE", "etcdserver: leader changed"), read
                assert (await client.request(status={})).status.leader_id != leader
        finally:
            for member in followers:
                os.kill(group.processes[member].pid, signal.SIGCONT)

    run_scenario(group, scenario)
