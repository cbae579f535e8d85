"""bench/load.py, etcd benchmark's vocabulary over bench/loadgen.py: flags, counts, errors by code.

Against the generator's trivial constant server (KV only) and a real
single-member etcd 3.5 (watch and lease workloads); exact request counts come
from --total, so nothing depends on timing.
"""

import json

import pytest

from bench import load
from etcd_tools import EtcdServer


def run_json(capsys, *argv: str) -> dict:
    load.main([*argv, "--json", "--no-progress"])
    return json.loads(capsys.readouterr().out)


def test_flags_mean_the_same_before_and_after_the_workload():
    before = load.parser().parse_args(["--clients", "8", "--conns", "2", "range", "--consistency", "s"])
    after = load.parser().parse_args(["range", "--clients", "8", "--conns", "2", "--consistency", "s"])
    assert before == after
    spec = load.spec_from(before)
    assert (spec.clients, spec.connections, spec.serializable, spec.op) == (8, 2, True, "range")


def test_keys_have_the_key_size_and_spread_over_the_prefixes():
    spec = load.spec_from(load.parser().parse_args(
        ["put", "--key-size", "16", "--key-space-size", "4", "--prefixes", "/a/,/b/"]))
    keys = [load.loadgen._key(spec, index) for index in range(4)]
    assert keys == [b"/a/0000000000000", b"/b/0000000000001", b"/a/0000000000002", b"/b/0000000000003"]


@pytest.mark.parametrize("processes", [1, 2])
def test_total_sends_exactly_that_many_requests(capsys, processes):
    figures = run_json(capsys, "put", "--constant-server", "--clients", "8", "--conns", "2",
                       "--processes", str(processes), "--total", "500")
    assert figures["requests"] == 500 and figures["errors"] == {}
    assert figures["ops_per_second"] > 0 and figures["latency_ms_avg"] <= figures["latency_ms_max"]


@pytest.fixture(scope="module")
def etcd():
    with EtcdServer() as server:
        yield server


def test_watch_latency_measures_every_watcher_for_every_put(capsys, etcd):
    figures = run_json(capsys, "watch-latency", "--endpoints", etcd.endpoint, "--clients", "6", "--conns", "2",
                       "--put-rate", "200", "--total", "20")
    assert figures["requests"] == 6 * 20 and figures["errors"] == {}


def test_lease_keepalive_and_limited_serializable_ranges(capsys, etcd):
    figures = run_json(capsys, "lease-keepalive", "--endpoints", etcd.endpoint, "--target-leader",
                       "--clients", "5", "--total", "100")
    assert figures["requests"] == 100 and figures["errors"] == {}
    figures = run_json(capsys, "range", "--endpoints", etcd.endpoint, "--consistency", "s", "--limit", "3",
                       "--key-space-size", "50", "--clients", "5", "--total", "100")
    assert figures["requests"] == 100 and figures["errors"] == {}


def test_failures_are_counted_by_status_code(capsys, etcd):
    # Above etcd's --max-request-bytes (1.5 MiB), within gRPC's limit: etcd's "request is too large".
    figures = run_json(capsys, "put", "--endpoints", etcd.endpoint, "--val-size", str(1600 * 1024),
                       "--clients", "2", "--total", "6")
    assert figures["requests"] == 0
    assert figures["errors"] == {"INVALID_ARGUMENT": 6}
