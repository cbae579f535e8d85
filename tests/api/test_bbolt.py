"""bbolt's page format (tessera/api/bbolt.py): read from real etcd's file, written and read back,
written files taken by etcd's own tools, damage refused with the page named.

The golden file, etcd-3.5.1.snapshot, is what `etcdctl snapshot save` of a real
etcd 3.5.1 gave (make_etcd_snapshot_golden.py made it and says what is in it);
etcd-3.5.1.snapshot.json is that etcd's own `get --prefix -w json` at the time.
"""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import subprocess
from pathlib import Path

import pytest

import etcd_tools
from native import codec
from tessera.api import etcd_backend
from tessera.api.bbolt import (
    BRANCH_PAGE,
    LEAF_PAGE,
    NO_FREELIST,
    PAGE_HEADER_BYTES,
    BoltFormatError,
    BoltReader,
    Bucket,
    BucketSpec,
    write_bolt,
)
from tessera.api.kv_pb2 import KeyValue
from tessera.api.lease_pb2 import Lease

HERE = Path(__file__).parent
GOLDEN = (HERE / "etcd-3.5.1.snapshot").read_bytes()
ETCD_VIEW = json.loads((HERE / "etcd-3.5.1.snapshot.json").read_text())
DIGEST_BYTES = 32


def _tool(lookup):
    try:
        return lookup()
    except etcd_tools.ToolUnavailable as reason:
        pytest.skip(str(reason))


def as_spec(bucket: Bucket) -> BucketSpec:
    """A bucket read, as the writer takes one (sub-buckets too)."""
    return BucketSpec([(key, as_spec(value) if isinstance(value, Bucket) else value)
                       for key, value in bucket.items()], bucket.sequence)


def as_dict(bucket: Bucket) -> dict:
    return {key: as_dict(value) if isinstance(value, Bucket) else value for key, value in bucket.items()}


def written(buckets, page_size: int = 4096) -> bytes:
    out = io.BytesIO()
    write_bolt(out, buckets, page_size)
    return out.getvalue()


def etcdutl_status(data: bytes, tmp_path: Path) -> dict:
    path = etcd_tools.write_snapshot(tmp_path / "status.db", data)
    result = subprocess.run([str(_tool(etcd_tools.etcdutl_path)), "snapshot", "status", str(path), "-w", "json"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- reading etcd's own file -----------------------------------------------------------


def test_etcds_snapshot_is_read_with_every_bucket_and_no_page_out_of_place():
    reader = BoltReader(GOLDEN)  # the sha256 after the last page is ignored
    assert reader.page_size == 4096
    assert reader.meta.freelist == NO_FREELIST  # etcd 3.5 does not write its free list
    assert reader.check() == []
    assert [name for name, _ in reader.buckets()] == list(etcd_backend.ETCD_BUCKETS)
    key_pages = list(reader.bucket(etcd_backend.KEY_BUCKET)._pages())
    # The golden file has each kind of page the format has: a branch page, leaves, an
    # overflow leaf (the 20,000-byte value), and inline buckets (all but `key`).
    assert key_pages[0].flags == BRANCH_PAGE
    assert any(page.flags == LEAF_PAGE and page.overflow for page in key_pages)
    assert all(bucket.root == 0 for name, bucket in reader.buckets() if name != etcd_backend.KEY_BUCKET)


def test_etcds_key_bucket_holds_the_history_etcd_served():
    history = [(codec.decode_revision(key), KeyValue.FromString(value))
               for key, value in BoltReader(GOLDEN).bucket(etcd_backend.KEY_BUCKET).items()]
    # Latest record of each key, deletes dropping it: exactly what etcd answered.
    latest = {}
    for (_, _, tombstone), kv in history:
        if tombstone:
            latest.pop(kv.key, None)
        else:
            latest[kv.key] = kv
    served = {base64.b64decode(kv["key"]): kv for kv in ETCD_VIEW["kvs"]}
    assert sorted(latest) == sorted(served)
    for key, kv in latest.items():
        expected = served[key]
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
            base64.b64decode(expected.get("value", "")), expected["create_revision"], expected["mod_revision"],
            expected["version"], expected.get("lease", 0))
    revisions = [revision for revision, _ in history]
    assert revisions[:5] == [(2, 0, False), (3, 0, False), (4, 0, False), (5, 0, True), (6, 0, False)]
    assert revisions[5] == (6, 1, False)  # the txn's second put: same revision, next sub revision
    assert history[3][1] == KeyValue(key=b"/b")  # a tombstone's value holds only the key
    assert len(latest[b"/big"].value) == 20000
    assert revisions[-1][0] == ETCD_VIEW["header"]["revision"]


def test_etcds_meta_and_lease_buckets():
    reader = BoltReader(GOLDEN)
    meta = reader.bucket(etcd_backend.META_BUCKET)
    assert etcd_backend.parse_u64(meta.get(etcd_backend.CONSISTENT_INDEX_KEY), "consistent_index") > 0
    assert etcd_backend.parse_u64(meta.get(etcd_backend.TERM_KEY), "term") >= 1
    leases = list(reader.bucket(etcd_backend.LEASE_BUCKET).items())
    assert [(etcd_backend.parse_lease_id_key(key), Lease.FromString(value).ID, Lease.FromString(value).TTL)
            for key, value in leases] == [(ETCD_VIEW["lease"], ETCD_VIEW["lease"], 600)]
    assert reader.bucket(etcd_backend.CLUSTER_BUCKET).get(etcd_backend.CLUSTER_VERSION_KEY) == b"3.5.0"
    assert reader.bucket(b"no such bucket") is None


def test_get_walks_one_path_and_finds_what_items_lists():
    key_bucket = BoltReader(GOLDEN).bucket(etcd_backend.KEY_BUCKET)
    items = dict(key_bucket.items())
    for key, value in items.items():
        assert key_bucket.get(key) == value
    assert key_bucket.get(b"\x00") is None and key_bucket.get(b"\xff" * 20) is None


# --- writing -----------------------------------------------------------------------------


def test_etcds_file_written_again_reads_the_same_and_etcdutl_hashes_it_the_same(tmp_path):
    reader = BoltReader(GOLDEN)
    data = written([(name, as_spec(bucket)) for name, bucket in reader.buckets()])
    again = BoltReader(data)
    assert again.check() == [] and again.freelist() == []
    assert as_dict(again.root) == as_dict(reader.root)
    # etcdutl checks every page (bbolt's Tx.Check) and hashes every bucket's keys and values.
    ours, etcds = etcdutl_status(data, tmp_path), etcdutl_status(GOLDEN[:-DIGEST_BYTES], tmp_path)
    assert (ours["hash"], ours["revision"], ours["totalKey"]) == (etcds["hash"], etcds["revision"], etcds["totalKey"])


def test_etcd_restored_from_the_written_file_serves_what_etcd_served(tmp_path):
    reader = BoltReader(GOLDEN)
    data = written([(name, as_spec(bucket)) for name, bucket in reader.buckets()])
    with _tool(lambda: etcd_tools.restored_etcd(data, tmp_path)) as etcd:
        answer = json.loads(etcd.etcdctl("get", "", "--prefix", "-w", "json"))
    assert answer["kvs"] == ETCD_VIEW["kvs"]
    assert answer["header"]["revision"] == ETCD_VIEW["header"]["revision"]


def random_tree(rng: random.Random, depth: int = 0) -> dict:
    """Buckets of every shape: empty, inline, many pages, values past a page, nested."""
    shape = rng.choice(["empty", "small", "many", "large values", "nested"] if depth < 3 else ["small", "many"])
    keys = {"empty": 0, "small": rng.randint(1, 5), "many": rng.randint(200, 3000),
            "large values": rng.randint(1, 20), "nested": rng.randint(1, 8)}[shape]
    tree = {}
    for _ in range(keys):
        key = rng.randbytes(rng.randint(1, 40 if shape != "many" else 200))
        if shape == "nested" and rng.random() < 0.5:
            tree[key] = random_tree(rng, depth + 1)
        elif shape == "large values":
            tree[key] = rng.randbytes(rng.choice([0, 100, 5000, 70000]))
        else:
            tree[key] = rng.randbytes(rng.randint(0, 60))
    return tree


def spec_of(tree: dict) -> BucketSpec:
    return BucketSpec([(key, spec_of(value) if isinstance(value, dict) else value)
                       for key, value in sorted(tree.items())])


@pytest.mark.parametrize("seed", range(12))
def test_what_is_written_reads_back_the_same_and_checks_clean(seed):
    rng = random.Random(seed)
    tree = {b"bucket %d" % index: random_tree(rng) for index in range(rng.randint(1, 6))}
    page_size = rng.choice([4096, 4096, 1024, 16384])
    reader = BoltReader(written([(name, spec_of(value)) for name, value in sorted(tree.items())], page_size))
    assert reader.page_size == page_size
    assert reader.check() == []
    assert as_dict(reader.root) == tree


def test_a_big_bucket_has_two_branch_levels_and_a_small_one_is_inline():
    big = {b"%0100d" % index: b"v" for index in range(5000)}
    reader = BoltReader(written([(b"big", spec_of(big)), (b"small", spec_of({b"k": b"v"}))]))
    pages = list(reader.bucket(b"big")._pages())
    root_children = reader._branch_elements(pages[0])
    assert pages[0].flags == BRANCH_PAGE and reader.page(root_children[0][1]).flags == BRANCH_PAGE
    assert reader.bucket(b"small").root == 0
    assert dict(reader.bucket(b"big").items()) == big


def test_etcd_tools_take_a_written_file_with_nested_and_large_buckets(tmp_path):
    rng = random.Random(7)
    tree = {b"a": random_tree(rng), b"key": {b"%017d" % index: rng.randbytes(3000) for index in range(50)},
            b"nested": {b"inner": {b"%05d" % index: b"x" * 50 for index in range(400)}, b"z": b"1"}}
    data = written([(name, spec_of(value)) for name, value in sorted(tree.items())])
    status = etcdutl_status(data, tmp_path)
    assert status["totalSize"] == len(data)
    assert status["totalKey"] == sum(len(value) for value in tree.values())


def test_the_writer_refuses_keys_out_of_order_empty_or_too_long():
    for items, message in (([(b"b", b""), (b"a", b"")], "is not after"),
                           ([(b"", b"")], "empty key"),
                           ([(b"k" * 32769, b"")], "bbolt's limit")):
        with pytest.raises(ValueError, match=message):
            written([(b"bucket", BucketSpec(items))])


# --- damage ---------------------------------------------------------------------------


def golden_db() -> bytearray:
    return bytearray(GOLDEN[:-DIGEST_BYTES])


def read_everything(data) -> None:
    reader = BoltReader(data)
    reader.check()
    as_dict(reader.root)


def test_a_truncated_file_is_refused_saying_how_many_pages_are_missing():
    for cut in (0, 50, 4096 + 20, len(GOLDEN) // 2, len(GOLDEN) - DIGEST_BYTES - 1):
        with pytest.raises(BoltFormatError, match="truncated|not a bbolt file"):
            BoltReader(GOLDEN[:cut])


def test_one_damaged_meta_page_falls_back_to_the_other_both_damaged_is_refused():
    # The writer's two metas are transactions 0 and 1 (a snapshot's are one transaction twice).
    data = bytearray(written([(b"bucket", spec_of({b"k": b"v"}))]))
    assert BoltReader(data).meta.txid == 1
    data[4096 + PAGE_HEADER_BYTES + 40] ^= 0xFF  # inside meta 1: its checksum fails
    fallback = BoltReader(data)
    assert fallback.meta.txid == 0 and as_dict(fallback.root) == {b"bucket": {b"k": b"v"}}
    data[PAGE_HEADER_BYTES + 40] ^= 0xFF
    with pytest.raises(BoltFormatError, match="both meta pages are damaged: page 0: meta checksum mismatch; "
                                              "page 1: meta checksum mismatch"):
        BoltReader(data)


def test_a_page_whose_header_names_another_page_is_refused_by_number():
    reader = BoltReader(GOLDEN)
    leaf = next(page for page in reader.bucket(etcd_backend.KEY_BUCKET)._pages() if page.flags == LEAF_PAGE)
    data = golden_db()
    struct.pack_into("<Q", data, leaf.id * 4096, 999)
    with pytest.raises(BoltFormatError, match=f"page {leaf.id} \\(bucket key\\): its header says it is page 999"):
        read_everything(data)


def test_an_element_pointing_past_its_page_is_refused_by_number():
    reader = BoltReader(GOLDEN)
    leaf = next(page for page in reader.bucket(etcd_backend.KEY_BUCKET)._pages()
                if page.flags == LEAF_PAGE and not page.overflow)
    data = golden_db()
    struct.pack_into("<I", data, leaf.id * 4096 + PAGE_HEADER_BYTES + 4, 10**6)  # element 0's pos
    with pytest.raises(BoltFormatError, match=f"page {leaf.id}: element 0 points past the end of its page"):
        read_everything(data)


def test_branch_pages_that_loop_are_refused_not_followed():
    reader = BoltReader(GOLDEN)
    branch = reader.bucket(etcd_backend.KEY_BUCKET).root
    data = golden_db()
    struct.pack_into("<Q", data, branch * 4096 + PAGE_HEADER_BYTES + 8, branch)  # child 0: itself
    with pytest.raises(BoltFormatError, match=f"page {branch}: referenced twice in bucket key's tree"):
        read_everything(data)


def test_random_damage_reads_or_is_refused_never_crashes():
    rng = random.Random(1)
    refused = 0
    for _ in range(400):
        data = golden_db()
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data))
            data[at:at + 8] = rng.randbytes(8) if rng.random() < 0.5 else bytes(8)
        try:
            read_everything(data)
        except BoltFormatError as error:
            refused += 1
            assert "page" in str(error) or "truncated" in str(error)
    assert refused > 50  # the damage reached the pages, not only free space
