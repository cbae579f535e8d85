"""Router tests share the session's cluster with the e2e tests: each leaves no key behind."""

import asyncio

import pytest

from etcd_client import EtcdClient
from tessera.api.rpc_pb2 import DeleteRangeRequest


@pytest.fixture(autouse=True)
def leave_no_keys(request):
    yield
    if "tessera_cluster" in request.fixturenames:
        endpoint = request.getfixturevalue("tessera_cluster").endpoint

        async def delete_everything():
            async with EtcdClient(endpoint) as client:
                await client.kv.DeleteRange(DeleteRangeRequest(key=b"\0", range_end=b"\0"), timeout=30,
                                            wait_for_ready=True)

        asyncio.run(delete_everything())
