"""The MVCC store: apply throughput, read latency, and memory and rebuild at 1M keys."""

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shards.mvcc import MvccStore, Proposal
from tessera.api.rpc_pb2 import PutRequest, RangeRequest

VALUE = os.urandom(256)
BATCH = 1000


@pytest.fixture
def store(tmp_path):
    with MvccStore.open(tmp_path / "mvcc") as mvcc:
        yield mvcc


def test_apply_batches_of_1000_puts(benchmark, report_rate, store):
    """One proposal per put, 1,000 proposals per apply (one LMDB transaction), new keys."""
    raft_index = itertools.count(1)
    key = itertools.count()

    def apply_batch():
        store.apply([
            Proposal(next(raft_index), 0, [PutRequest(key=b"%08d" % (next(key) * 7919 % 10**8), value=VALUE)])
            for _ in range(BATCH)
        ])

    benchmark.pedantic(apply_batch, rounds=100, warmup_rounds=2)
    report_rate(BATCH, "puts")


@pytest.fixture
def loaded(store):
    store.apply([Proposal(1, 0, [PutRequest(key=b"%08d" % i, value=VALUE) for i in range(100_000)])])
    return store


def test_point_read_latest(benchmark, report_rate, loaded):
    request = RangeRequest(key=b"%08d" % 54321)
    response = benchmark(loaded.range, request)
    assert response.kvs[0].value == VALUE
    report_rate(1, "reads")


def test_range_of_100_keys_latest(benchmark, report_rate, loaded):
    request = RangeRequest(key=b"%08d" % 50000, range_end=b"%08d" % 50100)
    response = benchmark(loaded.range, request)
    assert len(response.kvs) == 100
    report_rate(100, "keys")


def test_memory_and_rebuild_of_1m_keys(benchmark):
    """RSS to raw data and index rebuild time, measured by bench/mvcc_memory.py in its own process."""
    script = Path(__file__).with_name("mvcc_memory.py")
    keys = int(os.environ.get("TESSERA_BENCH_KEYS", 1_000_000))

    def run():
        output = subprocess.run(
            [sys.executable, str(script), "--keys", str(keys)], check=True, capture_output=True, text=True
        ).stdout
        return json.loads(output)

    figures = benchmark.pedantic(run, rounds=1)
    benchmark.extra_info.update(figures)
    print("\n" + json.dumps(figures, indent=2))
