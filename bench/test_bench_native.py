"""CRC32C, the entry codec and the key index: the compiled hot path against its yardsticks."""

import os
import sys
import zlib
from pathlib import Path

import pytest

from native import codec, crc
from native.keyindex import KeyIndex
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


INDEXED_KEYS = [b"/registry/pods/default/pod-%06d" % number for number in range(100_000)]
LOOKUPS = INDEXED_KEYS[::100]


@pytest.fixture(scope="module")
def key_index():
    index = KeyIndex()
    for revision, key in enumerate(INDEXED_KEYS, start=1):
        index.add(key, revision, 0)
    return index


def test_key_index_point_lookups(benchmark, report_rate, key_index):
    """The revision of 1,000 keys of 100,000, latest and at an older revision."""
    def look_up():
        for key in LOOKUPS:
            key_index.get(key)
            key_index.get(key, 50_000)

    benchmark(look_up)
    assert codec.decode_revision(key_index.get(LOOKUPS[-1]))[0] == len(INDEXED_KEYS) - 99
    report_rate(2 * len(LOOKUPS), "lookups")


def test_key_index_range_of_100_keys(benchmark, report_rate, key_index):
    found = benchmark(key_index.range, INDEXED_KEYS[5_000], INDEXED_KEYS[5_100])
    assert [key for key, _ in found] == INDEXED_KEYS[5_000:5_100]
    report_rate(len(found), "keys")

