"""A 3-replica group of real processes: write throughput and latency through the internal API.

8-byte keys, 256-byte values, with 1 and with 256 concurrent writers on one
stream to the leader; reports puts/s, p50 and p99 latency, and the leader's
WAL fdatasyncs per second (fewer than puts/s means batching works).
"""

import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "replica"))
from replica_cluster import ReplicaGroup, ShardClient, wait_for_leader  # noqa: E402

from tessera.api.rpc_pb2 import PutRequest  # noqa: E402

VALUE = os.urandom(256)
SECONDS = float(os.environ.get("TESSERA_BENCH_SECONDS", 5))


def percentile(sorted_values, fraction):
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


async def measure(group: ReplicaGroup, writers: int) -> dict:
    leader = await wait_for_leader(group)
    latencies = []
    async with ShardClient(group.api_address(leader)) as client:
        before = (await client.request(status={})).status.wal_fsyncs
        deadline = time.perf_counter() + SECONDS
        counter = iter(range(10**9))

        async def writer():
            while time.perf_counter() < deadline:
                key = b"%08d" % next(counter)
                started = time.perf_counter()
                answer = await client.request(put=PutRequest(key=key, value=VALUE))
                assert answer.WhichOneof("response") == "put", answer
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*[writer() for _ in range(writers)])
        elapsed = time.perf_counter() - started
        after = (await client.request(status={})).status.wal_fsyncs
    latencies.sort()
    return {
        "writers": writers,
        "puts_per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "leader_wal_fsyncs_per_second": (after - before) / elapsed,
    }


@pytest.mark.parametrize("writers", [1, 256])
def test_group_write_throughput(benchmark, tmp_path, writers):
    group = ReplicaGroup(tmp_path)
    group.start_all()
    try:
        figures = benchmark.pedantic(lambda: asyncio.run(measure(group, writers)), rounds=1)
    finally:
        group.stop_all()
    benchmark.extra_info.update(figures)
    print(f"\n{figures}")
