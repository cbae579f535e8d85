"""The router while replicas die: no wrong answer, no lost acknowledged write, watches go on.

These tests kill processes, so they run on a cluster of their own, without
supervision: each test restarts what it killed.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import lmdb
import pytest

from cluster import ClusterThread
from etcd_client import EtcdClient
from router.meta import META_GROUP
from router.server import RouterServer
from shards.mvcc import DURABLE_POINT_FILE
from tessera.api.kv_pb2 import KeyValue
from tessera.api.rpc_pb2 import (
    CORRUPT,
    AlarmRequest,
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    PutRequest,
    RangeRequest,
)
from tessera.launcher import free_ports, replica_data_dir

# What a client may see while a group elects a new leader: retry later, outcome unknown.
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ClusterThread(tmp_path_factory.mktemp("faults")) as running:
        yield running


def test_killing_a_group_leader_under_load_loses_no_acknowledged_write(cluster):
    group = 2
    leader = cluster.leader(group)

    async def load():
        async with EtcdClient(cluster.endpoint) as client:
            acknowledged: dict[bytes, bytes] = {}
            failures: list[grpc.StatusCode] = []
            stop = asyncio.Event()

            async def writer(number: int) -> None:
                round_ = 0
                while not stop.is_set():
                    key, value = b"/registry/pods/load/%d" % number, b"%d" % round_
                    try:
                        await client.kv.Put(PutRequest(key=key, value=value), timeout=10)
                        acknowledged[key] = value
                    except grpc.aio.AioRpcError as error:
                        failures.append(error.code())
                        await asyncio.sleep(0.05)
                    round_ += 1

            writers = [asyncio.create_task(writer(n)) for n in range(32)]
            await asyncio.sleep(1.0)
            before = len(acknowledged)
            cluster.kill(group, leader)
            killed_at = time.monotonic()
            await asyncio.sleep(4.0)
            stop.set()
            await asyncio.gather(*writers)
            return acknowledged, failures, before, killed_at

    acknowledged, failures, before, _ = asyncio.run(load())
    assert before > 0
    assert set(failures) <= TRANSIENT, failures
    cluster.restart(group, leader)
    assert cluster.leader(group) in (1, 2, 3)

    async def check():
        async with EtcdClient(cluster.endpoint) as client:
            stored = await client.kv.Range(RangeRequest(key=b"/registry/pods/load/", range_end=b"/registry/pods/load0"))
            values = {kv.key: kv.value for kv in stored.kvs}
        # Each writer's last acknowledged round is stored, or a later one whose answer was lost.
        for key, value in acknowledged.items():
            assert int(values[key]) >= int(value), (key, value, values.get(key))
    asyncio.run(check())


def test_a_watch_goes_on_when_the_replica_serving_it_dies(cluster):
    group = 3
    prefix = b"/registry/events/failover/"

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            watch = client.watch()
            await watch.create(key=prefix, range_end=prefix[:-1] + b"0")
            revisions = []
            for n in range(5):
                revisions.append((await client.kv.Put(PutRequest(key=prefix + b"%d" % n, value=b"a"))).header.revision)
            leader = cluster.leader(group)  # the router watches at the leader it knows
            cluster.kill(group, leader)
            for n in range(5, 10):
                for _ in range(100):
                    try:
                        response = await client.kv.Put(PutRequest(key=prefix + b"%d" % n, value=b"b"), timeout=10)
                        revisions.append(response.header.revision)
                        break
                    except grpc.aio.AioRpcError as error:
                        assert error.code() in TRANSIENT
                        await asyncio.sleep(0.1)
            events = await watch.events_until(lambda events: len(events) >= len(revisions), timeout=30)
            watch.cancel()
            return leader, revisions, [event.kv.mod_revision for event in events]

    leader, written, seen = asyncio.run(scenario())
    cluster.restart(group, leader)
    assert seen == written  # every event once, in order, across the move to another replica


def test_a_hasleader_watch_ends_when_its_group_loses_its_leader(cluster):
    group = 3
    survivors = [1, 2, 3]

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            watch = client.watch(metadata=(("hasleader", "true"),))
            await watch.create(key=b"/registry/events/", range_end=b"/registry/events0")
            for member in survivors[:2]:
                cluster.kill(group, member)
            started = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as ended:
                while True:
                    await watch.next(timeout=20)
            return ended.value, time.monotonic() - started

    error, seconds = asyncio.run(scenario())
    for member in survivors[:2]:
        cluster.restart(group, member)
    assert (error.code(), error.details()) == (grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader")
    assert seconds < 10  # etcd: three election timeouts without a leader
    assert cluster.leader(group) in survivors


def test_leases_expire_or_live_on_through_a_meta_leader_failover(cluster):
    """No key outlives its lease by more than the failover; a lease kept alive survives it."""
    keys = [b"/top/leased", b"/registry/pods/leased", b"/registry/events/leased"]
    meta_leader = cluster.leader(0)

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            lapsing = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=2))).ID
            kept = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=2))).ID
            for key in keys:
                await client.kv.Put(PutRequest(key=key + b"-lapsing", lease=lapsing))
                await client.kv.Put(PutRequest(key=key + b"-kept", lease=kept))
            keepalive = client.lease.LeaseKeepAlive()
            cluster.kill(0, meta_leader)
            granted = time.monotonic()
            while time.monotonic() - granted < 6:  # 2 s of TTL, and a failover's worth more
                await keepalive.write(LeaseKeepAliveRequest(ID=kept))
                assert (await keepalive.read()).TTL == 2
                await asyncio.sleep(0.5)
            keepalive.cancel()
            for key in keys:
                assert not (await client.kv.Range(RangeRequest(key=key + b"-lapsing"))).kvs, key
                assert (await client.kv.Range(RangeRequest(key=key + b"-kept"))).kvs, key
            alive = await client.lease.LeaseTimeToLive(LeaseTimeToLiveRequest(ID=kept, keys=True))
            assert sorted(alive.keys) == sorted(key + b"-kept" for key in keys)
            await client.lease.LeaseRevoke(LeaseRevokeRequest(ID=kept))

    try:
        asyncio.run(scenario())
    finally:
        cluster.restart(0, meta_leader)
    assert cluster.leader(0) in (1, 2, 3)


def test_a_replica_whose_data_differs_is_found_and_alarmed_corrupt(cluster):
    """One follower's stored value is changed behind raft's back; the check names that member."""
    group = 2
    leader = cluster.leader(group)
    follower = next(member for member in (1, 2, 3) if member != leader)
    layout = cluster.launcher.layout

    async def write():
        async with EtcdClient(cluster.endpoint) as client:
            await client.kv.Put(PutRequest(key=b"/registry/pods/checked", value=b"true"))
    asyncio.run(write())
    wait_until_caught_up(cluster, group, follower)
    cluster.kill(group, follower)
    store_directory = replica_data_dir(cluster.launcher.data_dir, group, follower) / "mvcc"
    # A writer other than the store drops its durable point record: the file then opens as it is left.
    (store_directory / DURABLE_POINT_FILE).unlink()
    store = lmdb.open(str(store_directory), max_dbs=8, map_size=1 << 30)
    history = store.open_db(b"history")
    with store.begin(write=True, db=history) as txn:
        cursor = txn.cursor()
        assert cursor.last()
        revision_key, record = cursor.item()
        changed = KeyValue.FromString(record)
        changed.value = b"flipped"
        txn.put(revision_key, changed.SerializeToString())
    store.close()
    cluster.restart(group, follower)
    cluster.leader(group)

    async def check():
        meta = {member: layout.api_address(META_GROUP, member) for member in (1, 2, 3)}
        server = RouterServer(f"127.0.0.1:{free_ports(1)[0]}", meta, name="corruption-check-test",
                              corruption_check_interval=0.2)
        await server.start()
        try:
            async with EtcdClient(server.listen) as client:
                for _ in range(100):
                    alarms = (await client.maintenance.Alarm(AlarmRequest(action=AlarmRequest.GET))).alarms
                    if alarms:
                        break
                    await asyncio.sleep(0.1)
                assert [(alarm.memberID, alarm.alarm) for alarm in alarms] == [(follower, CORRUPT)]
                await client.maintenance.Alarm(AlarmRequest(action=AlarmRequest.DEACTIVATE, memberID=follower,
                                                            alarm=CORRUPT))
        finally:
            await server.stop()
    cluster.run(check())


def wait_until_caught_up(cluster, group: int, member: int) -> None:
    """Until the member has applied what its leader has."""
    async def caught_up() -> bool:
        leader = await cluster.launcher.leader(group)
        wanted = (await cluster.launcher.status(group, leader)).applied_index
        for _ in range(200):
            if (await cluster.launcher.status(group, member)).applied_index >= wanted:
                return True
            await asyncio.sleep(0.05)
        return False
    assert cluster.run(caught_up())
