"""The store's durable point: whatever part of the later writes a power loss keeps, the store opens whole there.

After a power loss the database file holds, page by page, either what it held
at the durable point or what a later commit wrote, in any mix (the page cache
is written back in no particular order). These tests build such files from
the file as it was at the durable point and as it was at the crash, and open
each: the store must come back exactly at the durable point, and LMDB's own
offline verifier must find the file sound.
"""

from __future__ import annotations

import os
import random
import shutil

import lmdb.verify
import pytest

from shards.mvcc import DURABLE_POINT_FILE, MvccStore, Proposal, StoreInvariantError
from tessera.api.rpc_pb2 import CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest

PAGE_BYTES = os.sysconf("SC_PAGESIZE")  # LMDB's page size is the system's
NO_BACKGROUND_POINTS = {"batch_interval_seconds": 3600.0, "batch_limit_entries": 10**9}


def churn(store: MvccStore, first_index: int, batches: int, seed: int) -> int:
    """Overwrite, delete and compact enough that LMDB frees and reuses many pages; the next raft index."""
    rng = random.Random(seed)
    index = first_index
    for _ in range(batches):
        requests = [PutRequest(key=b"key-%03d" % rng.randrange(60), value=rng.randbytes(rng.randrange(50, 3000)))
                    for _ in range(rng.randrange(1, 8))]
        if rng.random() < 0.2:
            start = rng.randrange(60)
            requests.append(DeleteRangeRequest(key=b"key-%03d" % start, range_end=b"key-%03d" % (start + 5)))
        store.apply([Proposal(index, 0, requests)])
        index += 1
        if rng.random() < 0.05:
            store.apply([Proposal(index, 0, [CompactionRequest(revision=store.revision - 10)])])
            index += 1
            while not store.compact_step():
                pass
    return index


def observable(store: MvccStore):
    kvs = store.range(RangeRequest(key=b"\0", range_end=b"\0")).kvs
    return (store.applied_index, store.revision, store.compacted_revision, store.hash(),
            [kv.SerializeToString() for kv in kvs])


@pytest.fixture(scope="module")
def crash(tmp_path_factory):
    """(the file at the durable point, the file at the crash, the durable point record, the state there)."""
    directory = tmp_path_factory.mktemp("store")
    store = MvccStore.open(directory, **NO_BACKGROUND_POINTS)
    index = churn(store, 1, 300, seed=1)
    store.make_durable()
    durable = ((directory / "data.mdb").read_bytes(), (directory / DURABLE_POINT_FILE).read_bytes(),
               observable(store))
    churn(store, index, 300, seed=2)
    crashed = (directory / "data.mdb").read_bytes()  # what the page cache holds: a kill -9 keeps all of it
    store.close()
    return durable[0], crashed, durable[1], durable[2]


def pages(image: bytes) -> list[bytes]:
    return [image[offset:offset + PAGE_BYTES] for offset in range(0, len(image), PAGE_BYTES)]


def mixed(durable: bytes, crashed: bytes, seed: int) -> bytes:
    """Each page from one file or the other; pages past the durable file's end were written or not."""
    rng = random.Random(seed)
    old, new = pages(durable), pages(crashed)
    length = rng.choice((len(old), len(new)))
    return b"".join(rng.choice((old[i], new[i])) if i < len(old) else new[i] for i in range(length))


IMAGES = {
    "every write after the durable point lost": lambda durable, crashed: durable,
    "every write kept (a kill -9)": lambda durable, crashed: crashed,
    "the new meta pages written, no data page": lambda durable, crashed: crashed[:2 * PAGE_BYTES] + durable[2 * PAGE_BYTES:],
    "every data page written, the meta pages not": lambda durable, crashed: durable[:2 * PAGE_BYTES] + crashed[2 * PAGE_BYTES:],
    **{f"a random mix of pages, seed {seed}": (lambda durable, crashed, seed=seed: mixed(durable, crashed, seed))
       for seed in range(8)},
}


@pytest.mark.parametrize("image", IMAGES)
def test_the_store_opens_whole_at_its_durable_point_whatever_reached_the_disk(tmp_path, crash, image):
    durable, crashed, record, expected = crash
    assert durable[2 * PAGE_BYTES:] != crashed[2 * PAGE_BYTES:len(durable)]  # the churn rewrote pages
    (tmp_path / "data.mdb").write_bytes(IMAGES[image](durable, crashed))
    (tmp_path / DURABLE_POINT_FILE).write_bytes(record)
    store = MvccStore.open(tmp_path, **NO_BACKGROUND_POINTS)
    try:
        assert observable(store) == expected
        assert store.durable_applied_index == expected[0]
    finally:
        store.close()
    assert lmdb.verify.verify(str(tmp_path)) == []


def test_the_durable_point_follows_applies_and_a_reopen_starts_there(tmp_path):
    store = MvccStore.open(tmp_path, **NO_BACKGROUND_POINTS)
    churn(store, 1, 20, seed=3)
    assert store.durable_applied_index == 0  # nothing made durable since the empty file's first point
    store.make_durable()
    durable_index, expected = store.durable_applied_index, observable(store)
    assert durable_index == store.applied_index
    churn(store, durable_index + 1, 20, seed=4)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    for name in ("data.mdb", DURABLE_POINT_FILE):
        shutil.copy(tmp_path / name, crashed / name)  # as a kill -9 leaves them: applied past the point
    store.close()
    reopened = MvccStore.open(crashed, **NO_BACKGROUND_POINTS)
    try:
        assert observable(reopened) == expected  # back at the point: the WAL replays the rest
    finally:
        reopened.close()


def test_a_background_point_is_taken_once_due_and_adopted_once_flushed(tmp_path):
    store = MvccStore.open(tmp_path, batch_interval_seconds=3600.0, batch_limit_entries=10)
    try:
        for index in range(1, 10):
            store.apply([Proposal(index, 0, [PutRequest(key=b"k", value=b"%d" % index)])])
        assert store.advance_durability() is None  # 9 entries behind: not due
        store.apply([Proposal(10, 0, [PutRequest(key=b"k", value=b"10")])])
        flushing = store.advance_durability()
        assert flushing is not None and store.durable_applied_index == 0
        flushing.result()
        assert store.advance_durability() is None and store.durable_applied_index == 10
    finally:
        store.close()


def test_a_damaged_durable_point_record_refuses_to_open(tmp_path):
    MvccStore.open(tmp_path).close()
    record = bytearray((tmp_path / DURABLE_POINT_FILE).read_bytes())
    record[30] ^= 1
    (tmp_path / DURABLE_POINT_FILE).write_bytes(bytes(record))
    with pytest.raises(StoreInvariantError, match="damaged"):
        MvccStore.open(tmp_path)
