"""The WAL is the only durability point: a replica that crashes anywhere on the way to its store's
durable point, or loses every store write after it, comes back with every acknowledged write.

Each test runs a group of one replica: with no peer to catch up from, what it
acknowledged can only come back from its own WAL and store.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from replica_cluster import ReplicaGroup, ShardClient, read_all, run_scenario, wait_for_leader

from router.shard_client import ReplicaUnreachable
from shards.fault_control import (
    DURABILITY_BOUNDARIES,
    FAILPOINT_VARIABLE,
    STORE_APPLIED,
    STORE_DURABLE,
    STORE_SYNCED,
    WAL_SYNCED,
)
from shards.mvcc import DURABLE_POINT_FILE, MvccStore
from tessera.api.rpc_pb2 import PutRequest

PAGE_BYTES = os.sysconf("SC_PAGESIZE")  # LMDB's page size is the system's
# How often the replica passes each boundary before it is killed there: well into the load
# (a WAL sync and an apply per batch; a durable point every DURABLE_POINT_MS, one at start).
HITS = {WAL_SYNCED: 40, STORE_APPLIED: 40, STORE_SYNCED: 8, STORE_DURABLE: 8}
DURABLE_POINT_MS = 100  # more often than by default: many points within the bounded load
WAVE_WRITES = 50  # concurrent puts, so batches hold many entries
WAVES_MAX = 400  # a bound on the load: the failpoint fires long before


async def put_wave(client: ShardClient, first: int, acknowledged: dict) -> None:
    keys = [b"key-%06d" % i for i in range(first, first + WAVE_WRITES)]
    answers = await asyncio.gather(*[client.request(timeout=5.0, put=PutRequest(key=key, value=key[::-1]))
                                     for key in keys], return_exceptions=True)
    for key, answer in zip(keys, answers):
        if not isinstance(answer, BaseException) and answer.WhichOneof("response") == "put":
            acknowledged[key] = key[::-1]


async def restart_and_check(group: ReplicaGroup, acknowledged: dict) -> None:
    """Start the replica again as it is configured now: every acknowledged write must be there."""
    group.start(1)
    await wait_for_leader(group)
    stored = await read_all(group, 1)
    assert {key: stored.get(key) for key in acknowledged} == acknowledged


@pytest.mark.parametrize("boundary", DURABILITY_BOUNDARIES)
def test_a_replica_killed_at_a_durability_boundary_loses_no_acknowledged_write(tmp_path, boundary):
    group = ReplicaGroup(tmp_path, size=1, environment={FAILPOINT_VARIABLE: f"{boundary}@{HITS[boundary]}"},
                         extra_arguments=["--backend-batch-interval", str(DURABLE_POINT_MS)])

    async def scenario():
        await wait_for_leader(group)
        process = group.processes[1]
        acknowledged: dict[bytes, bytes] = {}
        async with ShardClient(group.api_address(1)) as client:
            for wave in range(WAVES_MAX):
                try:
                    await put_wave(client, wave * WAVE_WRITES, acknowledged)
                except ReplicaUnreachable:
                    pass
                if process.poll() is not None:
                    break
        assert process.wait(timeout=10) == -signal.SIGKILL, f"not killed at {boundary}\n{group.logs()}"
        assert acknowledged, "nothing was acknowledged before the kill"
        del group.processes[1]
        group.environment.clear()
        await restart_and_check(group, acknowledged)

    run_scenario(group, scenario)


@pytest.mark.parametrize("image", ["the file as it was then", "its newest meta pages over the file as it was"])
def test_a_replica_that_lost_every_store_write_after_its_durable_point_loses_no_acknowledged_write(tmp_path, image):
    # The store's last durable point is made here, before the replica starts, and set aside;
    # with its background points held off, the replica makes none after it.
    store_directory = tmp_path / "member-1" / "mvcc"
    MvccStore.open(store_directory).close()
    as_it_was = (store_directory / "data.mdb").read_bytes()
    record = (store_directory / DURABLE_POINT_FILE).read_bytes()
    group = ReplicaGroup(tmp_path, size=1,
                         extra_arguments=["--backend-batch-interval", "3600000", "--backend-batch-limit", "1000000000"])

    async def scenario():
        await wait_for_leader(group)
        acknowledged: dict[bytes, bytes] = {}
        async with ShardClient(group.api_address(1)) as client:
            for wave in range(6):
                await put_wave(client, wave * WAVE_WRITES, acknowledged)
        assert len(acknowledged) == 6 * WAVE_WRITES
        group.kill(1)
        assert (store_directory / DURABLE_POINT_FILE).read_bytes() == record  # still the last durable point
        crashed = (store_directory / "data.mdb").read_bytes()
        assert crashed != as_it_was
        lost = as_it_was if image == "the file as it was then" else crashed[:2 * PAGE_BYTES] + as_it_was[2 * PAGE_BYTES:]
        (store_directory / "data.mdb").write_bytes(lost)
        group.extra_arguments.clear()
        await restart_and_check(group, acknowledged)

    run_scenario(group, scenario)
