"""A small asyncio etcd v3 client over our generated stubs, for tests that need more than etcdctl."""

from __future__ import annotations

import asyncio

import grpc

from tessera.api import rpc_pb2_grpc
from tessera.api.rpc_pb2 import WatchCreateRequest, WatchRequest, WatchResponse


class EtcdClient:
    def __init__(self, endpoint: str):
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.watch_stub = rpc_pb2_grpc.WatchStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.cluster = rpc_pb2_grpc.ClusterStub(self.channel)

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.channel.close()

    def watch(self, metadata=()) -> WatchStream:
        return WatchStream(self.watch_stub.Watch(metadata=metadata))


class WatchStream:
    def __init__(self, call):
        self.call = call

    async def create(self, timeout: float = 10.0, **fields) -> WatchResponse:
        await self.call.write(WatchRequest(create_request=WatchCreateRequest(**fields)))
        response = await self.next(timeout)
        assert response.created, response
        return response

    async def send(self, **fields) -> None:
        await self.call.write(WatchRequest(**fields))

    async def next(self, timeout: float = 10.0) -> WatchResponse:
        return await asyncio.wait_for(self.call.read(), timeout)

    async def events_until(self, done, timeout: float = 20.0) -> list:
        """Collect events until `done(events)` holds; fail after `timeout`."""
        events = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done(events):
            response = await self.next(deadline - loop.time())
            assert not response.canceled, response
            events.extend(response.events)
        return events

    def cancel(self) -> None:
        self.call.cancel()
