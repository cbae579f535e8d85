"""Whole-cluster snapshots: the file format, Maintenance.Snapshot on the router, and
save -> restore -> start round trips through real clusters and the `tessera` command."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from cluster import ClusterThread
from etcd_client import EtcdClient
from router.meta import MetaClient
from router.shard_client import GroupClient
from router.snapshot import (
    BLOCK_BYTES,
    CHUNK_BYTES,
    DIGEST_BYTES,
    PAGE_BYTES,
    PAGE_KEYS_MAX,
    SnapshotDecoder,
    SnapshotEncoder,
    SnapshotFormatError,
)
from tessera import snapshot
from tessera.api.internal_pb2 import (
    GroupRecord,
    LeaseRecord,
    ShardMap,
    SnapshotGroupKeys,
    SnapshotHeader,
    SnapshotKeys,
    SnapshotRecord,
)
from tessera.api.kv_pb2 import KeyValue
from tessera.api.meta_keys import META_GROUP, lease_key
from tessera.api.rpc_pb2 import (
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseLeasesRequest,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    SnapshotRequest,
    TxnRequest,
)
from tessera.launcher import LAYOUT_FILE, Layout
from tessera.progress import ERASE_LINE, Progress
from tessera.snapshot import read_records

LEASE_TTL = 600  # outlives the test: the restored lease must still be there


# --- the file format -----------------------------------------------------------------


def encode(records: list[SnapshotRecord]) -> bytes:
    encoder = SnapshotEncoder()
    data = encoder.start() + b"".join(encoder.record(record) for record in records)
    tail, digest = encoder.finish()
    return data + tail + digest


SAMPLE = [
    SnapshotRecord(header=SnapshotHeader(revision=9, cluster_id=7, groups=[
        SnapshotGroupKeys(group=1, keys=3), SnapshotGroupKeys(group=2, keys=0)])),
    SnapshotRecord(shard_map=ShardMap(default_group=1)),
    SnapshotRecord(group=GroupRecord(id=0)),
    SnapshotRecord(keys=SnapshotKeys(group=1, kvs=[KeyValue(key=b"a", value=b"x" * 700), KeyValue(key=b"b")])),
    SnapshotRecord(keys=SnapshotKeys(group=1, kvs=[KeyValue(key=b"c", lease=5)])),
    SnapshotRecord(lease=LeaseRecord(id=5, ttl=60, remaining_ttl=42)),
]


def decode(data: bytes, piece_bytes: int) -> tuple[list[SnapshotRecord], SnapshotHeader]:
    decoder = SnapshotDecoder()
    records = []
    for start in range(0, len(data), piece_bytes):
        records += decoder.feed(data[start:start + piece_bytes])
    return records, decoder.close()


@pytest.mark.parametrize("piece_bytes", [1, 7, 512, 1 << 20], ids=["bytewise", "7", "512", "whole"])
def test_a_file_decodes_to_its_records_however_it_is_cut(piece_bytes):
    data = encode(SAMPLE)
    assert len(data) % BLOCK_BYTES == DIGEST_BYTES  # what etcdctl snapshot save requires
    assert hashlib.sha256(data[:-DIGEST_BYTES]).digest() == data[-DIGEST_BYTES:]
    records, header = decode(data, piece_bytes)
    assert records[:-1] == SAMPLE and records[-1].end.records == len(SAMPLE)
    assert header == SAMPLE[0].header


def test_the_format_is_the_golden_files():
    """Version 1 as written and read: a change that alters it needs a new version."""
    golden = (Path(__file__).parent / "snapshot_format_v1.golden").read_bytes()
    assert encode(SAMPLE) == golden
    assert decode(golden, 100)[0][:-1] == SAMPLE


@pytest.mark.parametrize("damage, message", [
    (lambda data: data[:100] + bytes([data[100] ^ 1]) + data[101:], "sha256 checksum mismatch"),
    (lambda data: data[:-1], "truncated"),
    (lambda data: data[:-DIGEST_BYTES - BLOCK_BYTES], "truncated"),
    (lambda data: data + b"\0", "bytes after the checksum"),
    (lambda data: b"\x7fELF" + data[4:], "not a Tessera snapshot"),
    (lambda data: data[:8] + b"\0\0\0\x09" + data[12:], "format version 9"),
])
def test_a_damaged_file_is_refused(damage, message):
    with pytest.raises(SnapshotFormatError, match=message):
        decode(damage(encode(SAMPLE)), 4096)


@pytest.mark.parametrize("records, message", [
    (SAMPLE[1:], "the header is not the first record"),
    (SAMPLE[:1] + SAMPLE, "a second header"),
    ([SAMPLE[0], *SAMPLE[2:]], "0 shard maps"),
    (SAMPLE[:4] + SAMPLE[5:], r"key counts differ from the header's .* 1: 1"),
    (SAMPLE[:3] + SAMPLE[4:5] + SAMPLE[3:4] + SAMPLE[5:], r"key b'a' is not after b'c'"),
    (SAMPLE[:3] + [SnapshotRecord(keys=SnapshotKeys(group=3, kvs=[KeyValue(key=b"z")]))], "keys of group 3"),
])
def test_records_out_of_place_are_refused(records, message):
    with pytest.raises(SnapshotFormatError, match=message):
        decode(encode(records), 4096)


# --- through a cluster ---------------------------------------------------------------


def tessera(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tessera.cli", *args], capture_output=True, text=True,
                          timeout=120)


async def fill(endpoint: str, space: tuple[bytes, ...], moved: bytes) -> int:
    """Keys in every group (versions, a delete, two keys of one revision, big values, a lease
    with keys in two groups, a key under the moved prefix); the lease's id."""
    async with EtcdClient(endpoint) as client:
        kv = client.kv
        lease = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=LEASE_TTL))).ID
        for prefix in space:
            for number in range(20):
                await kv.Put(PutRequest(key=prefix + b"k%02d" % number, value=b"v" * 4000))
            await kv.Put(PutRequest(key=prefix + b"k00", value=b"second version"))
            await kv.DeleteRange(DeleteRangeRequest(key=prefix + b"k01"))
        await kv.Txn(TxnRequest(success=[RequestOp(request_put=PutRequest(key=space[0] + b"same-a", value=b"1")),
                                         RequestOp(request_put=PutRequest(key=space[0] + b"same-b", value=b"2"))]))
        await kv.Put(PutRequest(key=space[0] + b"leased", value=b"l1", lease=lease))
        await kv.Put(PutRequest(key=space[1] + b"leased", value=b"l2", lease=lease))
        await kv.Put(PutRequest(key=moved + b"k", value=b"in group 3"))
        return lease


async def everything(endpoint: str, revision: int = 0) -> list[KeyValue]:
    async with EtcdClient(endpoint) as client:
        return list((await client.kv.Range(RangeRequest(key=b"\0", range_end=b"\0", revision=revision))).kvs)


async def lease_state(endpoint: str, lease: int) -> tuple[list[int], int, list[bytes]]:
    async with EtcdClient(endpoint) as client:
        leases = [status.ID for status in (await client.lease.LeaseLeases(LeaseLeasesRequest())).leases]
        ttl = await client.lease.LeaseTimeToLive(LeaseTimeToLiveRequest(ID=lease, keys=True))
        return leases, ttl.grantedTTL, sorted(ttl.keys)


async def meta_state(data_dir: Path):
    members = {member: api for member, (_, api) in Layout.load(data_dir / LAYOUT_FILE).groups[META_GROUP].items()}
    meta = MetaClient(GroupClient(META_GROUP, members))
    try:
        return await meta.load()
    finally:
        await meta.client.close()


async def snapshot_messages(endpoint: str) -> list:
    async with EtcdClient(endpoint) as client:
        return [message async for message in client.maintenance.Snapshot(SnapshotRequest(), timeout=60)]


def test_snapshot_save_restore_start_gives_the_same_keys_leases_and_map(tessera_cluster, space, tmp_path):
    source = tessera_cluster
    moved = b"/snapshot-moved-%d/" % id(space)
    assigned = tessera("shards", "assign", moved.decode(), "3", "--data-dir", str(source.launcher.data_dir))
    assert assigned.returncode == 0, assigned.stderr
    lease = asyncio.run(fill(source.endpoint, space, moved))
    file = tmp_path / "cluster.snapshot"
    try:
        saved = tessera("snapshot", "save", str(file), "--endpoints", source.endpoint)
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout.startswith(f"Snapshot saved at {file} (revision ")
        assert saved.stderr == ""  # progress is for terminals only
        revision = next(read_records(file)).header.revision
        kvs_at_snapshot = asyncio.run(everything(source.endpoint, revision))
        source_map = asyncio.run(meta_state(source.launcher.data_dir)).shard_map
        lease_at_snapshot = asyncio.run(lease_state(source.endpoint, lease))
    finally:
        async def revoke():
            async with EtcdClient(source.endpoint) as client:
                await client.lease.LeaseRevoke(LeaseRevokeRequest(ID=lease))
        asyncio.run(revoke())
    assert len(kvs_at_snapshot) >= 3 * 19 + 4  # the test's own, and whatever the session left
    assert lease_at_snapshot[1:] == (LEASE_TTL, sorted([space[0] + b"leased", space[1] + b"leased"]))

    checked = tessera("snapshot", "status", str(file))
    assert checked.returncode == 0, checked.stderr
    assert f"revision {revision}: {len(kvs_at_snapshot)} keys in 3 groups" in checked.stdout

    restored_dir = tmp_path / "restored"
    restored = tessera("snapshot", "restore", str(file), "--data-dir", str(restored_dir), "--listen", "127.0.0.1:0")
    assert restored.returncode == 0, restored.stderr
    assert f"tessera up --data-dir {restored_dir}" in restored.stdout
    with ClusterThread(restored_dir) as copy:
        kvs = asyncio.run(everything(copy.endpoint))
        assert kvs == kvs_at_snapshot  # keys, values, create/mod revisions, versions, leases
        assert asyncio.run(lease_state(copy.endpoint, lease)) == lease_at_snapshot
        restored_meta = asyncio.run(meta_state(restored_dir))
        assert restored_meta.shard_map == source_map and restored_meta.shard_map.group_of(moved) == 3
        assert restored_meta.cluster_id != asyncio.run(meta_state(source.launcher.data_dir)).cluster_id

        async def history_and_next_write():
            async with EtcdClient(copy.endpoint) as client:
                with pytest.raises(grpc.aio.AioRpcError) as before:
                    await client.kv.Range(RangeRequest(key=space[0] + b"k00", revision=revision - 1))
                assert (before.value.code(), before.value.details()) == (
                    grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted")
                written = await client.kv.Put(PutRequest(key=space[2] + b"after", value=b"new"))
                return written.header.revision

        assert asyncio.run(history_and_next_write()) > revision


def test_the_snapshot_stream_is_etcds_blobs_then_the_checksum(tessera_cluster, space):
    async def fill_big():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            for number in range(40):
                await client.kv.Put(PutRequest(key=space[number % 3] + b"%02d" % number, value=b"x" * 4000))

    asyncio.run(fill_big())
    messages = asyncio.run(snapshot_messages(tessera_cluster.endpoint))
    *data, checksum = messages
    blob = b"".join(message.blob for message in data)
    assert len(data) > 2 and all(0 < len(message.blob) <= CHUNK_BYTES for message in data)
    assert checksum.remaining_bytes == 0 and checksum.blob == hashlib.sha256(blob).digest()
    assert len(blob) % BLOCK_BYTES == 0
    # Bytes still to come: positive until the last blob, which has none after it.
    assert all(message.remaining_bytes > 0 for message in data[:-1]) and data[-1].remaining_bytes == 0
    records, header = decode(blob + checksum.blob, 1 << 20)
    assert messages[0].header.revision == header.revision > 0
    assert sum(len(record.keys.kvs) for record in records) >= 40


def test_pages_of_large_values_are_cut_to_about_page_bytes(tessera_cluster, space, tmp_path):
    value_bytes = 16 * 1024
    keys = PAGE_KEYS_MAX + 600  # uncut, the second page would hold 600 values: over PAGE_BYTES

    async def fill_large():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            for start in range(0, keys, 100):
                await asyncio.gather(*(client.kv.Put(PutRequest(key=space[0] + b"%05d" % number,
                                                                value=b"x" * value_bytes))
                                       for number in range(start, min(start + 100, keys))))

    asyncio.run(fill_large())
    file = tmp_path / "large.snapshot"
    saved = tessera("snapshot", "save", str(file), "--endpoints", tessera_cluster.endpoint)
    assert saved.returncode == 0, saved.stderr
    pages = [len(record.keys.kvs) for record in read_records(file) if record.keys.group == 1]
    assert pages[0] == PAGE_KEYS_MAX and sum(pages) >= keys
    assert all(page * value_bytes <= PAGE_BYTES for page in pages[1:])


def test_keys_of_a_lease_the_meta_group_no_longer_has_are_saved_with_the_lease_marked_revoked(
        tessera_cluster, space, tmp_path):
    """As when a revoke finishes between the revision the keys are read at and the read of
    the lease records: the restored cluster must finish that revoke, not keep the keys."""
    async def attach_then_drop_the_record():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            lease = (await client.lease.LeaseGrant(LeaseGrantRequest(TTL=LEASE_TTL))).ID
            await client.kv.Put(PutRequest(key=space[2] + b"orphan", value=b"o", lease=lease))
        state = await meta_state(tessera_cluster.launcher.data_dir)
        meta = MetaClient(GroupClient(META_GROUP, {member.id: member.api_address
                                                   for member in state.groups[META_GROUP].members}))
        try:
            assert await meta.delete(lease_key(lease))
        finally:
            await meta.client.close()
        return lease

    lease = asyncio.run(attach_then_drop_the_record())
    file = tmp_path / "orphan.snapshot"
    saved = tessera("snapshot", "save", str(file), "--endpoints", tessera_cluster.endpoint)
    assert saved.returncode == 0, saved.stderr
    records = list(read_records(file))
    assert [record.lease for record in records if record.lease.id == lease] == [LeaseRecord(id=lease, revoked=True)]
    assert any(kv.lease == lease for record in records for kv in record.keys.kvs)


def test_save_and_restore_show_progress_on_a_terminal(tessera_cluster, space, tmp_path):
    async def fill_some():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            for number in range(5):
                await client.kv.Put(PutRequest(key=space[number % 3] + b"%d" % number, value=b"v"))

    asyncio.run(fill_some())
    terminal = io.StringIO()
    file = tmp_path / "progress.snapshot"
    with Progress(terminal, enabled=True) as progress:
        summary = snapshot.save(file, tessera_cluster.endpoint, progress)
    assert summary.keys >= 5
    assert f"saving snapshot: {summary.keys}/{summary.keys} keys, " in terminal.getvalue()
    assert terminal.getvalue().endswith(ERASE_LINE)  # the line is gone once done
    terminal = io.StringIO()
    with Progress(terminal, enabled=True) as progress:
        snapshot.restore(file, tmp_path / "restored", "127.0.0.1:0", progress)
    shown = terminal.getvalue()
    assert "checking snapshot: " in shown and "(100%)" in shown
    assert f"[{summary.keys}/{summary.keys}] restoring keys" in shown


def test_a_damaged_or_truncated_file_is_refused_and_leaves_no_data_dir(tessera_cluster, tmp_path):
    file = tmp_path / "good.snapshot"
    saved = tessera("snapshot", "save", str(file), "--endpoints", tessera_cluster.endpoint)
    assert saved.returncode == 0, saved.stderr
    data = file.read_bytes()
    damaged = tmp_path / "damaged.snapshot"
    damaged.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x40]) + data[len(data) // 2 + 1:])
    truncated = tmp_path / "truncated.snapshot"
    truncated.write_bytes(data[:-1])
    for bad, reason in ((damaged, "sha256 checksum mismatch: the file is damaged"),
                        (truncated, "is not a snapshot's length")):
        target = tmp_path / f"restored-{bad.stem}"
        refused = tessera("snapshot", "restore", str(bad), "--data-dir", str(target))
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"tessera snapshot restore: {bad}: ") and reason in refused.stderr
        assert not target.exists() and not target.with_name(target.name + ".restoring").exists()
    occupied = tessera("snapshot", "restore", str(file), "--data-dir", str(tessera_cluster.launcher.data_dir))
    assert occupied.returncode == 1 and "already exists and is not empty" in occupied.stderr
