"""Router tests share the session's cluster with the e2e tests: each works under key prefixes of
its own (`space`) and leaves no key behind."""

import asyncio
import itertools

import pytest

from etcd_client import EtcdClient
from tessera.api.rpc_pb2 import DeleteRangeRequest

_spaces = itertools.count()


@pytest.fixture
def space():
    """Key prefixes of this test in each group: (group 1, group 2, group 3)."""
    name = f"t{next(_spaces)}-{id(object()):x}"
    return (f"/top/{name}/".encode(), f"/registry/pods/{name}/".encode(), f"/registry/events/{name}/".encode())


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
