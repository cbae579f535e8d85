"""Memory and index rebuild of the MVCC store at scale, in a process of its own.

    python bench/mvcc_memory.py --keys 1000000

Loads `keys` keys of 8 bytes with 256-byte values in batches of 1,000, then
reports RSS (resident memory, the LMDB pages this process touched included),
the database file size, and the ratio of RSS to the raw key and value bytes;
then reopens the store and reports the index rebuild time and RSS again.
Prints one JSON object, so bench/test_bench_mvcc.py can run it and report.
"""

import argparse
import json
import os
import tempfile
import time

from shards.mvcc import MvccStore, Proposal
from tessera.api.rpc_pb2 import PutRequest

BATCH = 1000
VALUE_BYTES = 256
KEY_BYTES = 8


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(keys: int, directory: str) -> dict:
    value = os.urandom(VALUE_BYTES)
    baseline = rss_bytes()
    store = MvccStore.open(directory)
    started = time.perf_counter()
    for batch in range(keys // BATCH):
        requests = [PutRequest(key=b"%08d" % (batch * BATCH + i), value=value) for i in range(BATCH)]
        store.apply([Proposal(batch + 1, 0, requests)])
    load_seconds = time.perf_counter() - started
    raw = keys * (KEY_BYTES + VALUE_BYTES)
    loaded_rss = rss_bytes() - baseline
    file_bytes = store.db_size_bytes()
    store.close()
    started = time.perf_counter()
    store = MvccStore.open(directory)
    rebuild_seconds = time.perf_counter() - started
    reopened_rss = rss_bytes() - baseline
    assert store.revision == keys + 1
    store.close()
    return {
        "keys": keys,
        "load_puts_per_second": keys / load_seconds,
        "raw_bytes": raw,
        "file_bytes": file_bytes,
        "rss_after_load_bytes": loaded_rss,
        "rss_after_reopen_bytes": reopened_rss,
        "rss_to_raw_after_load": loaded_rss / raw,
        "rss_to_raw_after_reopen": reopened_rss / raw,
        "index_rebuild_seconds": rebuild_seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tessera-mvcc-memory-") as directory:
        print(json.dumps(measure(args.keys, directory)))


if __name__ == "__main__":
    main()
