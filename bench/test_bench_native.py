"""CRC32C and the entry codec: the compiled hot path against its yardsticks."""

import os
import sys
import zlib
from pathlib import Path

import pytest

from native import codec, crc
from shards.raft.storage import Entry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "native"))
import reference_crc  # noqa: E402  (the pure-Python twin, for scale)

MIB = 1024 * 1024
CRC_BUFFER = os.urandom(4 * MIB)
BATCH = [Entry(7, index, 0, os.urandom(256)) for index in range(1, 1001)]
ENCODED_BATCH = codec.encode_entries(BATCH)


@pytest.mark.parametrize(
    "kernel",
    [crc.crc32c, crc.crc32c_table, zlib.crc32],
    ids=[f"native-{crc.KERNEL}", "native-table", "zlib-crc32"],
)
def test_crc32c_throughput(benchmark, report_rate, kernel):
    benchmark(kernel, CRC_BUFFER)
    report_rate(len(CRC_BUFFER) / 1e6, "MB")


def test_crc32c_pure_python_reference(benchmark, report_rate):
    data = CRC_BUFFER[: 64 * 1024]
    benchmark.pedantic(reference_crc.crc32c, (data,), rounds=3)
    report_rate(len(data) / 1e6, "MB")


def test_entry_batch_encode(benchmark, report_rate):
    benchmark(codec.encode_entries, BATCH)
    report_rate(len(BATCH), "entries")


def test_entry_batch_decode(benchmark, report_rate):
    decoded = benchmark(codec.decode_entries, ENCODED_BATCH, Entry)
    assert decoded == BATCH
    report_rate(len(BATCH), "entries")
