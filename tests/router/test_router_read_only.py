"""A read-only router (a proxy beside clients, knowing only the meta group): reads and watches, no writes."""

from __future__ import annotations


import grpc
import pytest

from etcd_client import EtcdClient
from router.meta import META_GROUP
from router.server import RouterServer
from tessera.api.rpc_pb2 import (
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)
from tessera.launcher import free_ports

READ_ONLY = (grpc.StatusCode.FAILED_PRECONDITION,
             "tessera: this router is read-only; send writes to a router that is not")


async def refused(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details()


def test_a_read_only_router_serves_reads_and_watches_and_refuses_writes(tessera_cluster):
    layout = tessera_cluster.launcher.layout
    meta = {member: layout.api_address(META_GROUP, member) for member in (1, 2, 3)}

    async def scenario():
        proxy = RouterServer(f"127.0.0.1:{free_ports(1)[0]}", meta, name="read-only-test", read_only=True)
        await proxy.start()
        try:
            async with EtcdClient(tessera_cluster.endpoint) as writer, EtcdClient(proxy.listen) as reader:
                watch = reader.watch()
                await watch.create(key=b"/registry/pods/proxied", range_end=b"/registry/pods/proxied0")
                written = await writer.kv.Put(PutRequest(key=b"/registry/pods/proxied/a", value=b"v"))
                events = await watch.events_until(lambda events: events)
                assert events[0].kv.mod_revision == written.header.revision
                read = await reader.kv.Range(RangeRequest(key=b"/registry/pods/proxied/a"))
                assert [kv.value for kv in read.kvs] == [b"v"]
                only_reads = await reader.kv.Txn(TxnRequest(success=[RequestOp(request_range=RangeRequest(
                    key=b"/registry/pods/proxied/a"))]))
                assert only_reads.succeeded and only_reads.responses[0].response_range.kvs

                assert await refused(reader.kv.Put(PutRequest(key=b"/registry/pods/proxied/b"))) == READ_ONLY
                assert await refused(reader.kv.Txn(TxnRequest(success=[RequestOp(
                    request_put=PutRequest(key=b"/registry/pods/proxied/b"))]))) == READ_ONLY
                assert await refused(reader.lease.LeaseGrant(LeaseGrantRequest(TTL=60))) == READ_ONLY
                keepalive = reader.lease.LeaseKeepAlive()
                await keepalive.write(LeaseKeepAliveRequest(ID=1))
                assert await refused(keepalive.read()) == READ_ONLY
                watch.cancel()
        finally:
            await proxy.stop()

    tessera_cluster.run(scenario())
