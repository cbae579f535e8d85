"""Whole-cluster snapshots: the database Maintenance.Snapshot streams (etcd's bbolt layout with a
bucket of Tessera's own), and save -> restore -> start round trips through real clusters and the
`tessera` command. tests/e2e/test_etcdctl_snapshot.py restores them into a real etcd."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

import etcd_tools
from cluster import ClusterThread
from etcd_client import EtcdClient
from native import codec
from router.meta import MetaClient
from router.shard_client import GroupClient
from router.snapshot import (
    CHUNK_BYTES,
    DIGEST_BYTES,
    LEASES_BUCKET,
    PAGE_KEYS_MAX,
    REVOKED_LEASE_TTL,
    TESSERA_BUCKET,
    ClusterCut,
    SpooledKeys,
    write_database,
)
from tessera import snapshot
from tessera.api import etcd_backend
from tessera.api.bbolt import BoltReader, BucketSpec, write_bolt
from tessera.api.internal_pb2 import GroupRecord, LeaseRecord, Member, ShardMap, SnapshotGroupKeys, SnapshotHeader
from tessera.api.kv_pb2 import KeyValue
from tessera.api.lease_pb2 import Lease
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

LEASE_TTL = 600  # outlives the test: the restored lease must still be there
PAGE_BYTES = 4096  # bbolt's page on this host: the database is whole pages


# --- the database ---------------------------------------------------------------------


def database_of(cut: ClusterCut) -> bytes:
    with tempfile.TemporaryFile() as file:
        write_database(cut, file)
        file.seek(0)
        return file.read()


def two_groups_one_revision(spool) -> ClusterCut:
    """Group 1 and group 2 each gave revision 7 to a key of theirs; group 1 gave 9 to two (a txn)."""
    keys = SpooledKeys(spool)
    keys.add(1, [KeyValue(key=b"a", create_revision=7, mod_revision=7, version=1, value=b"from group 1"),
                 KeyValue(key=b"t1", create_revision=9, mod_revision=9, version=1, value=b"x", lease=5),
                 KeyValue(key=b"t2", create_revision=3, mod_revision=9, version=4, value=b"y")])
    keys.add(2, [KeyValue(key=b"/registry/pods/b", create_revision=7, mod_revision=7, version=1,
                          value=b"from group 2")])
    header = SnapshotHeader(revision=12, cluster_id=77, groups=[SnapshotGroupKeys(group=1, keys=3),
                                                                SnapshotGroupKeys(group=2, keys=1)])
    groups = {group: GroupRecord(id=group, members=[Member(id=1)]) for group in (0, 1, 2)}
    return ClusterCut(header, ShardMap(default_group=1), groups,
                      {5: LeaseRecord(id=5, ttl=60, remaining_ttl=42), 6: LeaseRecord(id=6, revoked=True),
                       -5: LeaseRecord(id=-5, ttl=30)}, keys)  # etcd takes any non-zero int64 id


def test_keys_two_groups_gave_one_revision_get_sub_revisions_of_their_own():
    with tempfile.TemporaryFile() as spool:
        database = BoltReader(database_of(two_groups_one_revision(spool)))
    assert database.check() == []
    history = [(codec.decode_revision(key), KeyValue.FromString(value).key)
               for key, value in database.bucket(etcd_backend.KEY_BUCKET).items()]
    assert history == [((7, 0, False), b"a"), ((7, 1, False), b"/registry/pods/b"),
                       ((9, 0, False), b"t1"), ((9, 1, False), b"t2")]
    meta = dict(database.bucket(etcd_backend.META_BUCKET).items())
    assert meta[etcd_backend.FINISHED_COMPACT_KEY] == meta[etcd_backend.SCHEDULED_COMPACT_KEY] == \
        codec.encode_revision(12, 0)
    assert meta[etcd_backend.CONSISTENT_INDEX_KEY] == etcd_backend.u64(0)
    # Keyed as etcd keys them: the id's 8 bytes, so a negative id comes last.
    assert [(etcd_backend.parse_lease_id_key(key), Lease.FromString(value)) for key, value in database.bucket(
        etcd_backend.LEASE_BUCKET).items()] == [(5, Lease(ID=5, TTL=60, RemainingTTL=42)),
                                                (6, Lease(ID=6, TTL=REVOKED_LEASE_TTL)), (-5, Lease(ID=-5, TTL=30))]
    tessera = database.bucket(TESSERA_BUCKET)
    assert [LeaseRecord.FromString(value) for _, value in tessera.bucket(LEASES_BUCKET).items()] == [
        LeaseRecord(id=5, ttl=60, remaining_ttl=42), LeaseRecord(id=6, revoked=True), LeaseRecord(id=-5, ttl=30)]
    assert [name for name, _ in database.buckets()] == sorted([*etcd_backend.ETCD_BUCKETS, TESSERA_BUCKET])


def test_etcd_restored_from_the_database_serves_every_key_of_a_shared_revision(tmp_path):
    with tempfile.TemporaryFile() as spool:
        data = database_of(two_groups_one_revision(spool))
    try:
        etcd = etcd_tools.restored_etcd(data, tmp_path)
    except etcd_tools.ToolUnavailable as reason:
        pytest.skip(str(reason))
    with etcd:
        served = json.loads(etcd.etcdctl("get", "", "--prefix", "-w", "json"))
    assert served["header"]["revision"] == 12  # the snapshot's, though no key has it
    assert [(kv["mod_revision"], kv["create_revision"], kv["version"]) for kv in served["kvs"]] == [
        (7, 7, 1), (7, 7, 1), (9, 9, 1), (9, 3, 4)]


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
        # The session's other leases may expire around the save: the snapshot holds those alive
        # both before and after it, and none that was alive at neither time.
        leases_before = asyncio.run(lease_state(source.endpoint, lease))[0]
        saved = tessera("snapshot", "save", str(file), "--endpoints", source.endpoint)
        assert saved.returncode == 0, saved.stderr
        assert saved.stdout.startswith(f"Snapshot saved at {file} (revision ")
        assert saved.stderr == ""  # progress is for terminals only
        revision = snapshot.status(file, Progress(enabled=False)).revision
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
        restored_leases, *restored_lease = asyncio.run(lease_state(copy.endpoint, lease))
        assert restored_lease == list(lease_at_snapshot[1:])
        leases_after = lease_at_snapshot[0]
        assert set(leases_before) & set(leases_after) <= set(restored_leases) <= set(leases_before) | set(leases_after)
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
    assert len(blob) % PAGE_BYTES == 0
    # Bytes still to come after each message: exact, the database is whole before the first.
    assert [message.remaining_bytes for message in data] == [
        len(blob) - sum(len(message.blob) for message in data[:index + 1]) for index in range(len(data))]
    database = BoltReader(blob)
    assert database.check() == []
    header = SnapshotHeader.FromString(database.bucket(TESSERA_BUCKET).get(b"header"))
    assert messages[0].header.revision == header.revision > 0
    assert len(list(database.bucket(etcd_backend.KEY_BUCKET).keys())) == sum(
        entry.keys for entry in header.groups) >= 40


def test_large_values_read_in_pages_cut_by_size_are_saved_whole(tessera_cluster, space, tmp_path):
    value_bytes = 16 * 1024
    keys = PAGE_KEYS_MAX + 600  # uncut, the second page read would hold 600 values: over PAGE_BYTES

    async def fill_large():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            for start in range(0, keys, 100):
                await asyncio.gather(*(client.kv.Put(PutRequest(key=space[0] + b"%05d" % number,
                                                                value=b"%05d" % number * (value_bytes // 5)))
                                       for number in range(start, min(start + 100, keys))))

    asyncio.run(fill_large())
    file = tmp_path / "large.snapshot"
    saved = tessera("snapshot", "save", str(file), "--endpoints", tessera_cluster.endpoint)
    assert saved.returncode == 0, saved.stderr
    database = BoltReader(file.read_bytes())
    large = {kv.key: kv.value for kv in map(KeyValue.FromString, (value for _, value in database.bucket(
        etcd_backend.KEY_BUCKET).items())) if kv.key.startswith(space[0])}
    assert large == {space[0] + b"%05d" % number: b"%05d" % number * (value_bytes // 5) for number in range(keys)}


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
    database = BoltReader(file.read_bytes())
    saved_leases = database.bucket(TESSERA_BUCKET).bucket(LEASES_BUCKET)
    assert LeaseRecord.FromString(saved_leases.get(etcd_backend.lease_id_key(lease))) == LeaseRecord(id=lease, revoked=True)
    # etcd's bucket has it with the shortest TTL: a restored etcd finishes the revoke too.
    assert Lease.FromString(database.bucket(etcd_backend.LEASE_BUCKET).get(etcd_backend.lease_id_key(lease))) == Lease(
        ID=lease, TTL=REVOKED_LEASE_TTL)
    assert any(KeyValue.FromString(value).lease == lease
               for _, value in database.bucket(etcd_backend.KEY_BUCKET).items())


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
    assert "saving snapshot: " in terminal.getvalue() and "(100%)" in terminal.getvalue()
    assert terminal.getvalue().endswith(ERASE_LINE)  # the line is gone once done
    terminal = io.StringIO()
    with Progress(terminal, enabled=True) as progress:
        snapshot.restore(file, tmp_path / "restored", "127.0.0.1:0", progress)
    shown = terminal.getvalue()
    assert "checking snapshot: " in shown and "(100%)" in shown
    assert f"[{summary.keys}/{summary.keys}] restoring keys" in shown


def test_a_damaged_or_truncated_file_is_refused_and_leaves_no_data_dir(tessera_cluster, space, tmp_path):
    async def fill_pages():  # enough for the key bucket to have pages of its own (a small one is inline)
        async with EtcdClient(tessera_cluster.endpoint) as client:
            await asyncio.gather(*(client.kv.Put(PutRequest(key=space[0] + b"%03d" % number, value=b"v" * 100))
                                   for number in range(100)))

    asyncio.run(fill_pages())
    file = tmp_path / "good.snapshot"
    saved = tessera("snapshot", "save", str(file), "--endpoints", tessera_cluster.endpoint)
    assert saved.returncode == 0, saved.stderr
    data = file.read_bytes()
    damaged = tmp_path / "damaged.snapshot"
    damaged.write_bytes(data[:len(data) // 2] + bytes([data[len(data) // 2] ^ 0x40]) + data[len(data) // 2 + 1:])
    truncated = tmp_path / "truncated.snapshot"
    truncated.write_bytes(data[:-1])
    # A page damaged before the checksum was taken: the checksum holds, the page does not.
    root = BoltReader(data).bucket(etcd_backend.KEY_BUCKET).root
    database = bytearray(data[:-DIGEST_BYTES])
    database[root * PAGE_BYTES:root * PAGE_BYTES + 8] = etcd_backend.u64(12345)[::-1]  # its id, little-endian
    bad_page = tmp_path / "bad-page.snapshot"
    bad_page.write_bytes(database + hashlib.sha256(database).digest())
    for bad, reason in ((damaged, "sha256 checksum mismatch: the file is damaged"),
                        (truncated, "is not a snapshot's length"),
                        (bad_page, f"page {root} (bucket key): its header says it is page 12345")):
        target = tmp_path / f"restored-{bad.stem}"
        refused = tessera("snapshot", "restore", str(bad), "--data-dir", str(target))
        assert refused.returncode == 1
        assert refused.stderr.startswith(f"tessera snapshot restore: {bad}: ") and reason in refused.stderr
        assert not target.exists() and not target.with_name(target.name + ".restoring").exists()
    occupied = tessera("snapshot", "restore", str(file), "--data-dir", str(tessera_cluster.launcher.data_dir))
    assert occupied.returncode == 1 and "already exists and is not empty" in occupied.stderr


# --- a snapshot etcd wrote -------------------------------------------------------------


@pytest.mark.parametrize("version", ["3.5", "3.4"])
def test_a_snapshot_etcd_wrote_restores_with_its_history_revisions_and_leases(tmp_path, version):
    """Imported into `tessera up`'s groups, each key where the map puts it: every range etcd served
    at any revision it had not compacted, Tessera serves the same; the leases too."""
    try:
        etcd_tools.etcd_path() if version == "3.5" else etcd_tools.etcd34_path()
    except etcd_tools.ToolUnavailable as reason:
        pytest.skip(str(reason))
    source = etcd_tools.EtcdServer(name="source", directory=tmp_path / "etcd", version=version)
    file = tmp_path / "etcd.snapshot"
    keys = ["/registry/pods/p", "/registry/events/e", "/top/k"]  # groups 2, 3 and 1
    with source:
        ctl = source.etcdctl
        lease = ctl("lease", "grant", "600").split()[1]
        for round_ in range(3):
            for key in keys:
                ctl("put", key, f"{key} v{round_}")
        for key in keys:
            ctl("del", key)
        compacted = json.loads(ctl("get", "/", "-w", "json"))["header"]["revision"]
        ctl("compaction", "--physical", str(compacted))
        for key in keys:  # new generations after the delete, one leased, one large
            ctl("put", key, "again")
        ctl("put", keys[0], "x" * 10000)
        ctl("put", keys[1], "leased", "--lease", lease)
        txn = f'create("{keys[2]}/a") = "0"\n\nput {keys[2]}/a 1\nput {keys[0]}/b 2\ndel {keys[2]}\n\n\n'
        code, out, err = etcd_tools.run_etcdctl(etcd_tools.etcdctl_path(), source.endpoint, "txn", stdin=txn)
        assert code == 0 and out.startswith("SUCCESS"), err
        ctl("snapshot", "save", str(file))
        current = json.loads(ctl("get", "/", "-w", "json"))["header"]["revision"]
        served = {revision: json.loads(ctl("get", "", "--prefix", f"--rev={revision}", "-w", "json")).get("kvs", [])
                  for revision in range(compacted, current + 1)}
        lease_then = json.loads(ctl("lease", "timetolive", lease, "--keys", "-w", "json"))

    restored_dir = tmp_path / "restored"
    restored = tessera("snapshot", "restore", str(file), "--data-dir", str(restored_dir), "--listen", "127.0.0.1:0")
    assert restored.returncode == 0, restored.stderr
    assert f"revision {current}: 4 keys (" in restored.stdout
    with ClusterThread(restored_dir) as copy:
        def tessera_ctl(*args: str) -> tuple[int, str, str]:
            return etcd_tools.run_etcdctl(etcd_tools.etcdctl_path(), copy.endpoint, *args)

        for revision, kvs in served.items():
            code, out, err = tessera_ctl("get", "", "--prefix", f"--rev={revision}", "-w", "json")
            assert code == 0, err
            assert json.loads(out).get("kvs", []) == kvs, f"at revision {revision}"
        for kv in served[current]:  # a single key's read goes to the group the map gives it: it is there
            code, out, err = tessera_ctl("get", base64.b64decode(kv["key"]).decode(), "-w", "json")
            assert code == 0 and json.loads(out)["kvs"] == [kv], err
        code, _, err = tessera_ctl("get", "", "--prefix", f"--rev={compacted - 1}")
        assert code != 0 and "required revision has been compacted" in err
        code, out, err = tessera_ctl("lease", "timetolive", lease, "--keys", "-w", "json")
        assert code == 0, err
        lease_now = json.loads(out)
        assert (lease_now["granted-ttl"], lease_now["keys"]) == (lease_then["granted-ttl"], lease_then["keys"])
        code, out, err = tessera_ctl("put", "/top/after", "a", "-w", "json")
        assert code == 0 and json.loads(out)["header"]["revision"] == current + 1, err


def test_status_of_a_snapshot_etcd_wrote_counts_its_live_keys_history_and_leases():
    golden = Path(__file__).parents[1] / "api" / "etcd-3.5.1.snapshot"  # see tests/api/make_etcd_snapshot_golden.py
    checked = tessera("snapshot", "status", str(golden))
    assert checked.returncode == 0, checked.stderr
    # 158 records (revisions 2 to 158, two at 6: a txn); 156 keys, /b deleted: 155 live.
    assert "revision 158: 155 keys (158 records of history) written by etcd, 1 leases" in checked.stdout


def test_a_bbolt_file_that_is_no_snapshot_is_refused_saying_what_it_lacks(tmp_path):
    with tempfile.TemporaryFile() as file:
        write_bolt(file, [(b"key", BucketSpec())])
        file.seek(0)
        other = etcd_tools.write_snapshot(tmp_path / "other.snapshot", file.read())
    refused = tessera("snapshot", "restore", str(other), "--data-dir", str(tmp_path / "restored"))
    assert refused.returncode == 1
    assert "neither Tessera's nor etcd's snapshot: no meta, lease bucket" in refused.stderr
