"""WAL append: batched (1,000 entries of 256 bytes per fdatasync) and one entry per fdatasync.

The log lives in a temporary directory on the disk the tests use; each timed
call is one append with one fdatasync.
"""

import itertools
import os

import pytest

from shards.raft.storage import Entry, HardState
from shards.wal import WriteAheadLog

PAYLOAD = os.urandom(256)


@pytest.fixture
def wal(tmp_path):
    with WriteAheadLog.open(tmp_path / "wal") as log:
        yield log


@pytest.mark.parametrize("entries_per_batch", [1000, 1], ids=["batch-1000", "batch-1"])
def test_wal_append_with_fdatasync(benchmark, report_rate, wal, entries_per_batch):
    next_index = itertools.count(1)

    def append_one_batch():
        first = next(next_index) * entries_per_batch - entries_per_batch + 1
        entries = [Entry(1, index, 0, PAYLOAD) for index in range(first, first + entries_per_batch)]
        wal.append(entries, HardState(1, 1, first - 1))

    benchmark.pedantic(append_one_batch, rounds=200 if entries_per_batch > 1 else 1000, warmup_rounds=5)
    report_rate(entries_per_batch, "entries")
    assert wal.storage.last_index() >= 200 * entries_per_batch
