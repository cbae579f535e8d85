"""`tessera snapshot save` and `restore`: a whole cluster into one file, and into a new cluster.

save asks a router for etcd's Maintenance.Snapshot (router/snapshot.py
produces it and defines the file: etcd's bbolt database with a bucket of
Tessera's own), writes what arrives to FILE.part, checks the sha256 at its end
and every page of the database, then fsyncs it and renames it to FILE, as
etcdctl does.

restore checks the file's checksum first, then builds a new cluster's data
directory under DIR.restoring and renames it to DIR once whole, so a failed
restore leaves nothing that `tessera up` would start:

  - cluster.json: the saved groups, each with its saved member ids, on free
    ports of this host, and the saved shard map;
  - every replica's store (group-G/member-M/mvcc): its group's keys (those
    of the `key` bucket the saved shard map gives it) with their create and
    mod revisions, versions and leases, the store at the snapshot's
    revision R and compacted there (MvccStore.bulk_load), loaded once per group
    and copied to the group's other members;
  - the meta group's store: a new cluster id (a restored cluster is a new
    cluster, as etcd's restore makes one), the group records with the new
    addresses, the shard map, the lease records as saved (remaining TTLs
    as of their last checkpoint), and the users, roles, auth flag and auth
    revision of etcd's auth buckets.

A snapshot etcd wrote (no `tessera` bucket) is imported instead: a new
cluster of `tessera up`'s groups and map, every record of etcd's `key` bucket
(the history it had not compacted, tombstones included) in the store of the
group the map gives its key, at etcd's revision and compaction
(MvccStore.load_history), etcd's leases as lease records, and etcd's users
and roles.

No raft log is written: `tessera up --data-dir DIR` starts every group as a
new one, and each group's first write gets a revision above R. The history
before R is not in a Tessera snapshot: reads and watches below R are refused
as compacted (an imported etcd snapshot keeps etcd's history down to its
compaction).
"""

from __future__ import annotations

import hashlib
import itertools
import mmap
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc

from native import codec
from router.shard_map import ShardMap, prefix_end
from router.snapshot import (
    DIGEST_BYTES,
    GROUPS_BUCKET,
    HEADER_KEY,
    LEASES_BUCKET,
    SHARD_MAP_KEY,
    TESSERA_BUCKET,
)
from shards.durable import fsync_directory
from shards.mvcc import FIRST_REVISION, MvccStore
from tessera.api import etcd_backend as etcd
from tessera.api import rpc_pb2_grpc
from tessera.api.bbolt import BoltFormatError, BoltReader, Bucket
from tessera.api.auth_pb2 import Role, User
from tessera.api.internal_pb2 import AuthStateRecord, ClusterRecord, GroupRecord, LeaseRecord, Member, SnapshotHeader
from tessera.api.internal_pb2 import ShardMap as ShardMapRecord
from tessera.api.kv_pb2 import KeyValue
from tessera.api.lease_pb2 import Lease
from tessera.api.meta_keys import (
    AUTH_STATE_KEY,
    CLUSTER_KEY,
    META_GROUP,
    SHARDS_KEY,
    group_key,
    lease_key,
    role_key,
    user_key,
)
from tessera.api.rpc_pb2 import SnapshotRequest
from tessera.launcher import LAYOUT_FILE, Layout, replica_data_dir
from tessera.progress import Progress, size_text

READ_BYTES = 1024 * 1024  # file bytes per read while checking
BLOCK_BYTES = 512  # etcd's client and restore: a file whose length is 32 more than a multiple has a sha256
PAGE_KEYS = 1000  # keys per store transaction while restoring


class SnapshotError(Exception):
    """A snapshot could not be saved or restored; the message says why, for the operator."""


@dataclass
class SnapshotSummary:
    revision: int
    groups: int  # data groups
    keys: int
    leases: int
    size_bytes: int
    history_records: int | None = None  # a snapshot etcd wrote: the records of its history

    def __str__(self) -> str:
        where = f"in {self.groups} groups" if self.groups else "written by etcd"
        history = f" ({self.history_records} records of history)" if self.history_records is not None else ""
        return (f"revision {self.revision}: {self.keys} keys{history} {where}, {self.leases} leases, "
                f"{size_text(self.size_bytes)}")


# --- save ----------------------------------------------------------------------------


def save(path: str | os.PathLike, endpoint: str, progress: Progress,
         credentials: grpc.ChannelCredentials | None = None) -> SnapshotSummary:
    """Save the cluster behind the router at `endpoint` into `path`; over TLS with `credentials`."""
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    options = [("grpc.max_receive_message_length", -1)]
    channel = (grpc.secure_channel(endpoint, credentials, options=options) if credentials is not None
               else grpc.insecure_channel(endpoint, options=options))
    try:
        with open(partial, "wb") as file:
            # The last message is the checksum: hash every blob but the newest.
            sha256, newest, size = hashlib.sha256(), b"", 0
            for response in rpc_pb2_grpc.MaintenanceStub(channel).Snapshot(SnapshotRequest()):
                sha256.update(newest)
                newest = response.blob
                file.write(newest)
                size += len(newest)
                progress.bytes(size - len(newest), size - len(newest) + response.remaining_bytes, "saving snapshot")
            file.flush()
            os.fsync(file.fileno())
        if len(newest) != DIGEST_BYTES or sha256.digest() != newest:
            raise SnapshotError(f"the snapshot from {endpoint} is not whole: it does not end in its sha256")
        summary = status(partial, progress, checksum_verified=True)
        os.replace(partial, path)
        fsync_directory(path.parent)
    except grpc.RpcError as error:
        raise SnapshotError(f"{endpoint}: {error.code().name}: {error.details()}") from None
    finally:
        channel.close()
        partial.unlink(missing_ok=True)
    return summary


# --- reading a file ------------------------------------------------------------------


def verify_checksum(path: Path, progress: Progress) -> None:
    """Check the file's length and sha256 (its last 32 bytes) before anything reads its pages."""
    size = path.stat().st_size
    if size % BLOCK_BYTES != DIGEST_BYTES:
        raise SnapshotError(f"{path}: {size} bytes is not a snapshot's length (a database of whole pages "
                            f"plus a {DIGEST_BYTES}-byte checksum): the file is truncated or not a snapshot")
    sha256 = hashlib.sha256()
    covered = size - DIGEST_BYTES
    with open(path, "rb") as file:
        hashed = 0
        while hashed < covered:
            data = file.read(min(READ_BYTES, covered - hashed))
            if not data:
                raise SnapshotError(f"{path}: the file shrank while it was read")
            sha256.update(data)
            hashed += len(data)
            progress.bytes(hashed, covered, "checking snapshot")
        if sha256.digest() != file.read(DIGEST_BYTES):
            raise SnapshotError(f"{path}: sha256 checksum mismatch: the file is damaged")


def open_database(path: Path) -> BoltReader:
    """The snapshot's bbolt database, read in place (mapped; unmapped once the reader and its pages are gone)."""
    with open(path, "rb") as file:
        return BoltReader(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ))


class TesseraContents:
    """What the `tessera` bucket of a snapshot holds (router/snapshot.py), decoded and checked."""

    def __init__(self, database: BoltReader, path: Path):
        bucket = database.bucket(TESSERA_BUCKET)
        if bucket is None:
            raise SnapshotError(f"{path}: no {TESSERA_BUCKET.decode()} bucket: not a Tessera snapshot")
        header, shard_map = bucket.get(HEADER_KEY), bucket.get(SHARD_MAP_KEY)
        groups, leases = bucket.bucket(GROUPS_BUCKET), bucket.bucket(LEASES_BUCKET)
        if not isinstance(header, bytes) or not isinstance(shard_map, bytes) or groups is None or leases is None:
            raise SnapshotError(f"{path}: the {TESSERA_BUCKET.decode()} bucket lacks its header, shard map, "
                                f"groups or leases")
        self.header = SnapshotHeader.FromString(header)
        self.shard_map = ShardMapRecord.FromString(shard_map)
        self.groups = {record.id: record for record in (GroupRecord.FromString(value) for _, value in groups.items())}
        self.leases = [LeaseRecord.FromString(value) for _, value in leases.items()]
        if META_GROUP not in self.groups:
            raise SnapshotError(f"{path}: no record of the meta group")

    @property
    def keys(self) -> int:
        return sum(entry.keys for entry in self.header.groups)


class EtcdHistory:
    """A snapshot etcd wrote (no tessera bucket): its history, revision, compaction and leases.

    etcd's revision is its last change's, or its compaction's if that is higher
    (etcd's own rule on start); the compaction is the one etcd finished, or the
    one it had scheduled (etcd resumes that on start). A lease that live keys
    name but the lease bucket lacks is taken as revoked, as a Tessera snapshot
    takes it: the restored cluster finishes the revoke. Reading it takes one
    pass over the history, holding the live keys (not their values).
    """

    def __init__(self, database: BoltReader, path: Path):
        buckets = {name: database.bucket(name) for name in (etcd.KEY_BUCKET, etcd.META_BUCKET, etcd.LEASE_BUCKET)}
        missing = [name.decode() for name, bucket in buckets.items() if bucket is None]
        if missing:
            raise SnapshotError(f"{path}: neither Tessera's nor etcd's snapshot: no {', '.join(missing)} bucket")
        self.path = path
        self.keys_bucket = buckets[etcd.KEY_BUCKET]
        meta = buckets[etcd.META_BUCKET]
        self.compacted = max((_revision_of(path, value)[0] for value in (
            meta.get(etcd.FINISHED_COMPACT_KEY), meta.get(etcd.SCHEDULED_COMPACT_KEY)) if isinstance(value, bytes)),
            default=0)
        self.records = last = 0
        leases_of_keys: dict[bytes, int] = {}  # live key -> its lease
        self.live_keys = set()
        for _, kv, (main, _, tombstone) in self.history():
            self.records += 1
            last = main
            if tombstone:
                self.live_keys.discard(kv.key)
                leases_of_keys.pop(kv.key, None)
            else:
                self.live_keys.add(kv.key)
                leases_of_keys[kv.key] = kv.lease
        self.revision = max(last, self.compacted, FIRST_REVISION)
        self.leases = [LeaseRecord(id=lease.ID, ttl=lease.TTL, remaining_ttl=lease.RemainingTTL)
                       for lease in (Lease.FromString(value) for _, value in buckets[etcd.LEASE_BUCKET].items())]
        known = {lease.id for lease in self.leases}
        self.leases += [LeaseRecord(id=lease_id, revoked=True)
                        for lease_id in sorted(set(leases_of_keys.values()) - known - {0})]

    def history(self) -> Iterator[tuple[bytes, KeyValue, tuple[int, int, bool]]]:
        """Every record of the key bucket: (revision key, record, (main, sub, tombstone)), in revision order."""
        for revision_key, value in self.keys_bucket.items():
            yield revision_key, KeyValue.FromString(value), _revision_of(self.path, revision_key)

    def summary(self) -> SnapshotSummary:
        return SnapshotSummary(self.revision, 0, len(self.live_keys), len(self.leases), self.path.stat().st_size,
                               history_records=self.records)


def _import_etcd(history: EtcdHistory, auth: dict[bytes, object], staging: Path, listen: str,
                 progress: Progress) -> SnapshotSummary:
    """A snapshot etcd wrote, as a new cluster of `tessera up`'s groups and map: each key's whole
    uncompacted history (revisions, versions, leases as etcd kept them) in the group the map gives it."""
    layout = Layout.new(listen)
    shard_map = ShardMap.initial(layout.prefixes, layout.default_group)
    groups = _layout_groups(layout)
    done = 0
    for group in sorted(groups.keys() - {META_GROUP}):
        # One pass over the key bucket per group: memory stays one page, whatever the snapshot's size.
        mine = ((revision_key, kv) for revision_key, kv, _ in history.history() if shard_map.group_of(kv.key) == group)
        pages = _pages(mine, lambda count: progress.count(done + count, history.records, "importing etcd's history"))
        done += _load_store(staging, groups[group],
                            lambda store: store.load_history(pages, history.revision, history.compacted))
    _finish_meta(staging, layout, shard_map.to_record(), history.leases, history.revision, auth)
    summary = history.summary()
    summary.groups = len(groups) - 1
    return summary


def _revision_of(path: Path, revision_key: bytes) -> tuple[int, int, bool]:
    try:
        return codec.decode_revision(revision_key)
    except codec.CodecError:
        raise SnapshotError(f"{path}: key bucket key {revision_key.hex()} is not a revision") from None


def key_values(path: Path, keys: Bucket, revision: int) -> Iterator[KeyValue]:
    """The records of a Tessera snapshot's `key` bucket, each checked to be a key live at `revision`."""
    for revision_key, value in keys.items():
        main, _, tombstone = _revision_of(path, revision_key)
        kv = KeyValue.FromString(value)
        if tombstone or kv.mod_revision != main or main > revision:
            raise SnapshotError(f"revision key {revision_key.hex()} ({kv.key!r}) is not a key live at the "
                                f"snapshot's revision {revision}")
        yield kv


def status(path: Path, progress: Progress, checksum_verified: bool = False) -> SnapshotSummary:
    """What a file holds, once its checksum and every page of its database are checked."""
    if not checksum_verified:
        verify_checksum(path, progress)
    try:
        database = open_database(path)
        problems = database.check()
        if problems:
            raise SnapshotError(f"{path}: the database's pages are not whole: " + "; ".join(problems[:10]))
        if database.bucket(TESSERA_BUCKET) is None:
            return EtcdHistory(database, path).summary()
        contents = TesseraContents(database, path)
        keys = sum(1 for _ in key_values(path, database.bucket(etcd.KEY_BUCKET), contents.header.revision))
    except BoltFormatError as error:
        raise SnapshotError(f"{path}: {error}") from None
    if keys != contents.keys:
        raise SnapshotError(f"{path}: {keys} keys; the header counts {contents.keys}")
    return SnapshotSummary(contents.header.revision, len(contents.header.groups), keys, len(contents.leases),
                           path.stat().st_size)


# --- restore -------------------------------------------------------------------------


def restore(path: str | os.PathLike, data_dir: str | os.PathLike, listen: str,
            progress: Progress) -> SnapshotSummary:
    """Make `data_dir` a new cluster holding the snapshot in `path`; `listen`: its router's address."""
    path, data_dir = Path(path), Path(data_dir).resolve()
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise SnapshotError(f"{data_dir} already exists and is not empty; restore makes a new data dir")
    verify_checksum(path, progress)
    staging = data_dir.with_name(data_dir.name + ".restoring")
    shutil.rmtree(staging, ignore_errors=True)  # what an interrupted restore left
    try:
        summary = _restore_into(open_database(path), path, staging, listen, progress)
        if data_dir.exists():
            data_dir.rmdir()
        os.replace(staging, data_dir)
        fsync_directory(data_dir.parent)
    except BoltFormatError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise SnapshotError(f"{path}: {error}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _restore_into(database: BoltReader, path: Path, staging: Path, listen: str,
                  progress: Progress) -> SnapshotSummary:
    if database.bucket(TESSERA_BUCKET) is None:
        return _import_etcd(EtcdHistory(database, path), auth_records(database), staging, listen, progress)
    contents = TesseraContents(database, path)
    revision = contents.header.revision
    shard_map = ShardMap.from_record(contents.shard_map)
    counts = {entry.group: entry.keys for entry in contents.header.groups}
    loaded = 0
    for group, record in sorted(contents.groups.items()):
        if group == META_GROUP:
            continue
        # One pass over the key bucket per group: memory stays one page, whatever the snapshot's size.
        mine = (kv for kv in key_values(path, database.bucket(etcd.KEY_BUCKET), revision)
                if shard_map.group_of(kv.key) == group)
        pages = _pages(mine, lambda count: progress.count(loaded + count, contents.keys, "restoring keys"))
        count = _load_store(staging, record, lambda store: store.bulk_load(pages, revision))
        if count != counts.get(group, 0):
            raise SnapshotError(f"{path}: group {group} has {count} keys by the shard map; "
                                f"the header counts {counts.get(group, 0)}")
        loaded += count
    if loaded != contents.keys:
        raise SnapshotError(f"{path}: {loaded} keys belong to the snapshot's groups; the header counts "
                            f"{contents.keys}")
    layout = _layout(contents.groups, shard_map, listen)
    _finish_meta(staging, layout, contents.shard_map, contents.leases, revision, auth_records(database))
    return SnapshotSummary(revision, len(contents.groups) - 1, loaded, len(contents.leases), path.stat().st_size)


def auth_records(database: BoltReader) -> dict[bytes, object]:
    """The meta group's auth records (tessera/api/meta_keys.py) from etcd's auth buckets, which
    Tessera's snapshots have too: none where the auth bucket has no revision (auth never used)."""
    auth = database.bucket(etcd.AUTH_BUCKET)
    revision = auth.get(etcd.AUTH_REVISION_KEY) if auth is not None else None
    if revision is None:
        return {}
    enabled = auth.get(etcd.AUTH_ENABLED_KEY) == b"\1"
    records: dict[bytes, object] = {
        AUTH_STATE_KEY: AuthStateRecord(enabled=enabled, revision=etcd.parse_u64(revision, "authRevision"))}
    for bucket_name, message_type, key_of in ((etcd.AUTH_USERS_BUCKET, User, user_key),
                                              (etcd.AUTH_ROLES_BUCKET, Role, role_key)):
        bucket = database.bucket(bucket_name)
        for name, value in bucket.items() if bucket is not None else ():
            records[key_of(name.decode())] = message_type.FromString(value)
    return records


def _finish_meta(staging: Path, layout: Layout, shard_map: ShardMapRecord, leases, revision: int,
                 auth: dict[bytes, object]) -> None:
    """The meta group's store (the cluster, groups, map, leases and auth records at `revision`), and the
    layout file."""
    records = _meta_records(layout, shard_map, leases, revision, auth)
    _load_store(staging, _layout_groups(layout)[META_GROUP], lambda store: store.bulk_load([records], revision))
    layout.save(staging / LAYOUT_FILE)


def _pages(kvs: Iterator[KeyValue], report) -> Iterator[list[KeyValue]]:
    """`kvs` in pages of PAGE_KEYS, calling `report(keys so far)` after each."""
    count = 0
    while page := list(itertools.islice(kvs, PAGE_KEYS)):
        yield page
        count += len(page)
        report(count)


def _load_store(staging: Path, group: GroupRecord, fill):
    """Fill the first member's store (`fill(store)`), then copy its database to the others; what fill gave."""
    members = sorted(member.id for member in group.members)
    if not members:
        raise SnapshotError(f"group {group.id} has no members in the snapshot")
    first = _store_path(staging, group.id, members[0])
    with MvccStore.open(first) as store:
        try:
            result = fill(store)
        except ValueError as error:  # whole, yet not a history this store can hold
            raise SnapshotError(f"group {group.id}: {error}") from None
    for member in members[1:]:
        copy = _store_path(staging, group.id, member)
        copy.mkdir(parents=True)
        shutil.copyfile(first / "data.mdb", copy / "data.mdb")
        with open(copy / "data.mdb", "rb+") as file:
            os.fsync(file.fileno())
        fsync_directory(copy)
    return result


def _store_path(staging: Path, group: int, member: int) -> Path:
    """The replica's MVCC store: "mvcc" in its data dir, as shards.replica opens it."""
    return replica_data_dir(staging, group, member) / "mvcc"


def _layout(groups: dict[int, GroupRecord], shard_map: ShardMap, listen: str) -> Layout:
    layout = Layout.new(listen, {group: sorted(member.id for member in record.members)
                                 for group, record in sorted(groups.items())})
    # The layout's map is what `tessera up` shows; the meta group holds the map itself.
    layout.prefixes = {start: group for start, end, group in shard_map.ranges if end == prefix_end(start)}
    layout.default_group = shard_map.default_group
    return layout


def _layout_groups(layout: Layout) -> dict[int, GroupRecord]:
    """The meta group's record of each group of `layout`: its members at their new addresses."""
    return {group: GroupRecord(id=group, members=[Member(id=member, peer_address=peer, api_address=api)
                                                   for member, (peer, api) in sorted(members.items())])
            for group, members in layout.groups.items()}


def _meta_records(layout: Layout, shard_map: ShardMapRecord, leases, revision: int,
                  auth: dict[bytes, object]) -> list[KeyValue]:
    records = {CLUSTER_KEY: ClusterRecord(cluster_id=secrets.randbits(63) or 1), SHARDS_KEY: shard_map, **auth}
    records.update((group_key(group), record) for group, record in _layout_groups(layout).items())
    records.update((lease_key(lease.id), lease) for lease in leases)
    return [KeyValue(key=key, create_revision=revision, mod_revision=revision, version=1,
                     value=record.SerializeToString()) for key, record in sorted(records.items())]
