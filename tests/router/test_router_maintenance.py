"""Maintenance through the router: hashkv, defrag and the space alarm's runbook with the real etcdctl; Hash."""

from __future__ import annotations

import json

import pytest

import etcd_tools
from cluster import ClusterThread
from etcd_client import EtcdClient
from tessera.api.rpc_pb2 import DeleteRangeRequest, HashRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest

# Small enough to fill in a few puts of 64 KiB values.
QUOTA_BYTES = 512 * 1024


def etcdctl(endpoint: str, *args: str) -> tuple[int, str, str]:
    return etcd_tools.run_etcdctl(etcd_tools.etcdctl_path(), endpoint, *args, timeout=120)


def ok(endpoint: str, *args: str) -> str:
    code, out, err = etcdctl(endpoint, *args)
    assert code == 0, (args, out, err)
    return out


def test_hashkv_is_one_hash_over_the_groups_and_moves_with_the_data(tessera_cluster):
    endpoint = tessera_cluster.endpoint
    ok(endpoint, "put", "/registry/pods/hashed", "1")
    first = json.loads(ok(endpoint, "endpoint", "hashkv", "-w", "json"))[0]["HashKV"]
    again = json.loads(ok(endpoint, "endpoint", "hashkv", "-w", "json"))[0]["HashKV"]
    assert first["hash"] == again["hash"]  # nothing changed: every group's replicas agree on the same
    ok(endpoint, "put", "/registry/events/hashed", "2")
    assert json.loads(ok(endpoint, "endpoint", "hashkv", "-w", "json"))[0]["HashKV"]["hash"] != first["hash"]
    # At a past revision the hash is that revision's, whatever was written since.
    at = str(first["header"]["revision"])
    past = json.loads(ok(endpoint, "endpoint", "hashkv", "--rev", at, "-w", "json"))[0]["HashKV"]
    assert past["hash"] == json.loads(ok(endpoint, "endpoint", "hashkv", "--rev", at, "-w", "json"))[0][
        "HashKV"]["hash"]


def test_defrag_rewrites_every_replica_and_keeps_the_data(tessera_cluster):
    endpoint = tessera_cluster.endpoint
    ok(endpoint, "put", "/registry/pods/kept", "v")
    assert ok(endpoint, "defrag") == f"Finished defragmenting etcd member[{endpoint}]\n"
    assert ok(endpoint, "get", "/registry/pods/kept", "--print-value-only") == "v\n"


@pytest.fixture(scope="module")
def small_cluster(tmp_path_factory):
    with ClusterThread(tmp_path_factory.mktemp("quota"),
                       replica_arguments=["--quota-backend-bytes", str(QUOTA_BYTES)]) as cluster:
        yield cluster


def test_a_full_group_raises_nospace_and_etcds_runbook_clears_it(small_cluster):
    """etcd's runbook: the alarm is listed; compact, defrag and disarm; writes work again."""
    endpoint = small_cluster.endpoint
    value = "x" * 64 * 1024
    for number in range(64):
        code, _, err = etcdctl(endpoint, "put", f"/registry/pods/big{number}", value)
        if code:
            break
    else:
        raise AssertionError("the quota was never reached")
    assert "etcdserver: mvcc: database space exceeded" in err
    alarms = ok(endpoint, "alarm", "list")
    assert alarms and all(line.strip().endswith("alarm:NOSPACE") for line in alarms.splitlines()), alarms
    assert ok(endpoint, "get", "/registry/pods/big0", "--print-value-only") == value + "\n"  # reads go on
    assert etcdctl(endpoint, "put", "/other", "v")[0] == 0  # other groups are not full

    revision = json.loads(ok(endpoint, "del", "--prefix", "/registry/pods/", "-w", "json"))["header"]["revision"]
    ok(endpoint, "compaction", "--physical", str(revision))
    ok(endpoint, "defrag")
    ok(endpoint, "alarm", "disarm")
    assert ok(endpoint, "alarm", "list") == ""
    assert ok(endpoint, "put", "/registry/pods/after", "v") == "OK\n"


def test_hash_covers_every_group_and_the_meta_groups_leases(tessera_cluster):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            first = (await client.maintenance.Hash(HashRequest())).hash
            assert (await client.maintenance.Hash(HashRequest())).hash == first  # replicas agree, stable
            await client.kv.Put(PutRequest(key=b"/registry/events/hash", value=b"1"))
            after_put = (await client.maintenance.Hash(HashRequest())).hash
            assert after_put != first
            lease = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=60))).ID
            after_grant = (await client.maintenance.Hash(HashRequest())).hash
            assert after_grant != after_put  # etcd's Hash covers leases too
            await client.lease.LeaseRevoke(LeaseRevokeRequest(ID=lease))
            await client.kv.DeleteRange(DeleteRangeRequest(key=b"/registry/events/hash"))

    tessera_cluster.run(scenario())
