"""Through Tessera's router with bench/loadgen.py, beside the same load sent straight to a group.

The cluster is `tessera up`'s (meta + 3 data groups x 3 replicas + router),
started by the launcher. Cases: puts from 1 and 256 clients with keys in one
group (/a/) and spread over three (/a/, /registry/pods/, /registry/events/);
the router's own cost shows against `test_direct_to_group`, the same puts sent
to group 1's leader over the internal API, with no router. Server CPU per
request sums the router and every replica.

    pytest bench/test_bench_router.py --benchmark-only
"""

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from bench.loadgen import process_cpu_seconds, run_load  # noqa: E402
from cluster import ClusterThread  # noqa: E402
from router.shard_client import GroupClient  # noqa: E402
from tessera.api.internal_pb2 import ShardRequest  # noqa: E402
from tessera.api.rpc_pb2 import PutRequest  # noqa: E402
from tessera.launcher import GROUPS, MEMBERS  # noqa: E402

SECONDS = float(os.environ.get("TESSERA_BENCH_SECONDS", 5))
ONE_GROUP = ("/a/",)
THREE_GROUPS = ("/a/", "/registry/pods/", "/registry/events/")


@pytest.fixture(scope="module")
def tessera(tmp_path_factory):
    with ClusterThread(tmp_path_factory.mktemp("bench-router")) as cluster:
        yield cluster


def cluster_cpu_seconds(cluster: ClusterThread) -> float:
    pids = [cluster.launcher.pid(group, member) for group in GROUPS for member in MEMBERS]
    return sum(process_cpu_seconds(pid) for pid in [*pids, cluster.launcher.router_pid] if pid)


@pytest.mark.parametrize("prefixes", [ONE_GROUP, THREE_GROUPS], ids=["one-group", "three-groups"])
@pytest.mark.parametrize("clients", [1, 256])
def test_router_put(benchmark, report_load, tessera, clients, prefixes):
    cpu = {}

    def on_window(edge: str) -> None:
        cpu[edge] = cluster_cpu_seconds(tessera)

    result = benchmark.pedantic(run_load, args=(tessera.endpoint,), rounds=1, iterations=1, kwargs=dict(
        clients=clients, op="put", prefixes=prefixes, duration=SECONDS, on_window=on_window))
    report_load(result, server_cpu_us_per_op=(cpu["end"] - cpu["start"]) * 1e6 / max(1, result.overall.requests))
    assert not result.errors, result.summary()


@pytest.mark.parametrize("clients", [1, 256])
def test_direct_to_group(benchmark, report_rate, tessera, clients):
    """The same puts to group 1's leader over the internal API: what the router adds, by difference."""
    layout = tessera.launcher.layout
    members = {member: layout.api_address(1, member) for member in MEMBERS}
    value = b"x" * 256

    async def load() -> tuple[int, list[float]]:
        client = GroupClient(1, members)
        latencies: list[float] = []
        stop = time.monotonic() + SECONDS

        async def writer(number: int) -> None:
            key = b"/direct/%d" % number
            while time.monotonic() < stop:
                started = time.perf_counter()
                await client.call(ShardRequest(put=PutRequest(key=key, value=value)), write=True)
                latencies.append(time.perf_counter() - started)

        await client.call(ShardRequest(status={}), write=False)  # find the leader first
        await asyncio.gather(*(writer(n) for n in range(clients)))
        await client.close()
        return len(latencies), sorted(latencies)

    count, latencies = benchmark.pedantic(lambda: asyncio.run(load()), rounds=1, iterations=1)
    report_rate(count, "puts")
    benchmark.extra_info.update(p50_ms=latencies[len(latencies) // 2] * 1e3,
                                p99_ms=latencies[int(len(latencies) * 0.99)] * 1e3)
