"""Auto-compaction: which revision each of etcd's two modes picks, and a router that compacts by itself."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from etcd_client import EtcdClient
from router.compactor import AutoCompactor
from router.meta import META_GROUP
from router.server import RouterServer
from tessera.api.rpc_pb2 import PutRequest, RangeRequest
from tessera.cli import compaction_retention
from tessera.launcher import free_ports


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _Revisions:
    """The one thing AutoCompactor reads of the router when it picks a target."""

    revision = 0


def test_revision_mode_keeps_the_last_n_revisions():
    router = _Revisions()
    compactor = AutoCompactor(router, "revision", 100)
    router.revision = 1_000
    assert compactor.target() == 900
    assert compactor.check_seconds == 300  # etcd's revision compactor looks every 5 minutes


def test_periodic_mode_compacts_to_what_was_current_a_retention_ago():
    router, clock = _Revisions(), _Clock()
    compactor = AutoCompactor(router, "periodic", 3600, clock=clock)
    assert compactor.check_seconds == 360  # a tenth of the retention, as etcd samples
    targets = []
    for minute in range(0, 121, 6):
        clock.now, router.revision = minute * 60.0, 100 + minute
        targets.append(compactor.target())
    assert targets[:10] == [0] * 10  # nothing is an hour old yet
    assert targets[10] == 100  # at 60 minutes: the revision of minute 0
    assert targets[-1] == 160  # at 120 minutes: the revision of minute 60


@pytest.mark.parametrize("mode, text, expected", [
    ("periodic", "30m", 1800), ("periodic", "1h", 3600), ("periodic", "90s", 90), ("periodic", "2", 7200),
    ("revision", "1000", 1000),
])
def test_retention_is_read_as_etcd_reads_it(mode, text, expected):
    assert compaction_retention(mode, text) == expected


def test_a_router_in_revision_mode_compacts_every_group_by_itself(tessera_cluster):
    layout = tessera_cluster.launcher.layout
    meta_members = {member: layout.api_address(META_GROUP, member) for member in (1, 2, 3)}

    async def scenario():
        server = RouterServer(f"127.0.0.1:{free_ports(1)[0]}", meta_members, name="auto-compaction-test",
                              auto_compaction=("revision", 5, 0.1))
        await server.start()
        try:
            async with EtcdClient(server.listen) as client:
                revisions = [(await client.kv.Put(PutRequest(key=prefix + b"auto", value=b"v"))).header.revision
                             for prefix in (b"/top/", b"/registry/pods/", b"/registry/events/") * 4]
                for key in (b"/top/auto", b"/registry/pods/auto", b"/registry/events/auto"):  # every group
                    for _ in range(100):
                        try:
                            await client.kv.Range(RangeRequest(key=key, revision=revisions[0]))
                        except grpc.aio.AioRpcError as error:
                            assert error.details() == "etcdserver: mvcc: required revision has been compacted"
                            break
                        await asyncio.sleep(0.1)
                    else:
                        raise AssertionError(f"{key!r}'s group was never compacted")
                kept = await client.kv.Range(RangeRequest(key=b"/top/auto", revision=revisions[-1] - 4))
                assert kept.kvs  # the last revisions are kept
        finally:
            await server.stop()

    tessera_cluster.run(scenario())
