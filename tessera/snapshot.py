"""`tessera snapshot save` and `restore`: a whole cluster into one file, and into a new cluster.

save asks a router for etcd's Maintenance.Snapshot (router/snapshot.py
produces it and defines the file format), writes what arrives to FILE.part
while checking its records and, at the end, its checksum, then fsyncs it and
renames it to FILE, as etcdctl does.

restore checks the file's checksum first, then builds a new cluster's data
directory under DIR.restoring and renames it to DIR once whole, so a failed
restore leaves nothing that `tessera up` would start:

  - cluster.json: the saved groups, each with its saved member ids, on free
    ports of this host, and the saved shard map;
  - every replica's store (group-G/member-M/mvcc): its group's keys with their
    create and mod revisions, versions and leases, the store at the snapshot's
    revision R and compacted there (MvccStore.bulk_load), loaded once per group
    and copied to the group's other members;
  - the meta group's store: a new cluster id (a restored cluster is a new
    cluster, as etcd's restore makes one), the group records with the new
    addresses, the shard map, and the lease records as saved (remaining TTLs
    as of their last checkpoint).

No raft log is written: `tessera up --data-dir DIR` starts every group as a
new one, and each group's first write gets a revision above R. The history
before R is not in a snapshot: reads and watches below R are refused as
compacted.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc

from router.shard_map import ShardMap, prefix_end
from router.snapshot import BLOCK_BYTES, DIGEST_BYTES, SnapshotDecoder, SnapshotFormatError
from shards.durable import fsync_directory
from shards.mvcc import MvccStore
from tessera.api import rpc_pb2_grpc
from tessera.api.internal_pb2 import ClusterRecord, GroupRecord, Member, SnapshotHeader, SnapshotRecord
from tessera.api.internal_pb2 import ShardMap as ShardMapRecord
from tessera.api.kv_pb2 import KeyValue
from tessera.api.meta_keys import CLUSTER_KEY, META_GROUP, SHARDS_KEY, group_key, lease_key
from tessera.api.rpc_pb2 import SnapshotRequest
from tessera.launcher import LAYOUT_FILE, Layout, replica_data_dir
from tessera.progress import Progress, size_text

READ_BYTES = 1024 * 1024  # file bytes per read while checking or restoring


class SnapshotError(Exception):
    """A snapshot could not be saved or restored; the message says why, for the operator."""


@dataclass
class SnapshotSummary:
    revision: int
    groups: int  # data groups
    keys: int
    leases: int
    size_bytes: int

    def __str__(self) -> str:
        return (f"revision {self.revision}: {self.keys} keys in {self.groups} groups, {self.leases} leases, "
                f"{size_text(self.size_bytes)}")


# --- save ----------------------------------------------------------------------------


def save(path: str | os.PathLike, endpoint: str, progress: Progress) -> SnapshotSummary:
    """Save the cluster behind the router at `endpoint` into `path`."""
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    decoder = SnapshotDecoder()
    keys_total = leases = 0
    channel = grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", -1)])
    try:
        with open(partial, "wb") as file:
            for response in rpc_pb2_grpc.MaintenanceStub(channel).Snapshot(SnapshotRequest()):
                file.write(response.blob)
                for record in decoder.feed(response.blob):
                    if record.WhichOneof("record") == "header":
                        keys_total = sum(entry.keys for entry in record.header.groups)
                    leases += record.WhichOneof("record") == "lease"
                progress.show(f"saving snapshot: {decoder.keys}/{keys_total} keys, {size_text(decoder.size_bytes)}")
            header = decoder.close()
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
        fsync_directory(path.parent)
    except grpc.RpcError as error:
        raise SnapshotError(f"{endpoint}: {error.code().name}: {error.details()}") from None
    except SnapshotFormatError as error:
        raise SnapshotError(f"the snapshot from {endpoint} is not whole: {error}") from None
    finally:
        channel.close()
        partial.unlink(missing_ok=True)
    return SnapshotSummary(header.revision, len(header.groups), decoder.keys, leases, decoder.size_bytes)


# --- reading a file ------------------------------------------------------------------


def verify_checksum(path: Path, progress: Progress) -> None:
    """Check the file's length and sha256 (its last 32 bytes) before anything reads its records."""
    size = path.stat().st_size
    if size % BLOCK_BYTES != DIGEST_BYTES:
        raise SnapshotError(f"{path}: {size} bytes is not a snapshot's length (a multiple of {BLOCK_BYTES} "
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


def read_records(path: Path) -> Iterator[SnapshotRecord]:
    """The file's records in order; the structure and the checksum are checked as they come."""
    decoder = SnapshotDecoder()
    try:
        with open(path, "rb") as file:
            while data := file.read(READ_BYTES):
                yield from decoder.feed(data)
        decoder.close()
    except SnapshotFormatError as error:
        raise SnapshotError(f"{path}: {error}") from None


def status(path: Path, progress: Progress) -> SnapshotSummary:
    """What a file holds, once its checksum and its structure are checked."""
    verify_checksum(path, progress)
    header, keys, leases = None, 0, 0
    for record in read_records(path):
        kind = record.WhichOneof("record")
        header = record.header if kind == "header" else header
        keys += len(record.keys.kvs)
        leases += kind == "lease"
    return SnapshotSummary(header.revision, len(header.groups), keys, leases, path.stat().st_size)


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
        summary = _restore_into(path, staging, listen, progress)
        if data_dir.exists():
            data_dir.rmdir()
        os.replace(staging, data_dir)
        fsync_directory(data_dir.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _restore_into(path: Path, staging: Path, listen: str, progress: Progress) -> SnapshotSummary:
    header: SnapshotHeader | None = None
    shard_map: ShardMapRecord | None = None
    groups: dict[int, GroupRecord] = {}
    leases = []
    loaded: dict[int, int] = {}  # data group -> keys loaded
    for group, run in itertools.groupby(read_records(path), key=_keys_group):
        if group is not None:  # one data group's pages of keys
            if group not in groups:
                raise SnapshotError(f"{path}: keys of group {group} come before its group record")
            keys_total = sum(entry.keys for entry in header.groups)
            done = sum(loaded.values())
            pages = (record.keys.kvs for record in run)
            loaded[group] = _load_store(staging, groups[group], header.revision, _counting(
                pages, lambda count: progress.count(done + count, keys_total, "restoring keys")))
            continue
        for record in run:
            kind = record.WhichOneof("record")
            if kind == "header":
                header = record.header
            elif kind == "shard_map":
                shard_map = record.shard_map
            elif kind == "group":
                groups[record.group.id] = record.group
            elif kind == "lease":
                leases.append(record.lease)
    if META_GROUP not in groups:
        raise SnapshotError(f"{path}: no record of the meta group")
    for group, record in groups.items():
        if group != META_GROUP and group not in loaded:
            loaded[group] = _load_store(staging, record, header.revision, [])  # no keys at R
    layout = _layout(groups, ShardMap.from_record(shard_map), listen)
    _load_store(staging, _layout_groups(layout)[META_GROUP], header.revision,
                [_meta_records(layout, shard_map, leases, header.revision)])
    layout.save(staging / LAYOUT_FILE)
    return SnapshotSummary(header.revision, len(groups) - 1, sum(loaded.values()), len(leases),
                           path.stat().st_size)


def _keys_group(record: SnapshotRecord) -> int | None:
    return record.keys.group if record.WhichOneof("record") == "keys" else None


def _counting(pages, report) -> Iterator:
    """The pages, calling `report(keys so far)` after each."""
    count = 0
    for page in pages:
        yield page
        count += len(page)
        report(count)


def _load_store(staging: Path, group: GroupRecord, revision: int, pages) -> int:
    """Load the first member's store, then copy its database to the others; the keys loaded."""
    members = sorted(member.id for member in group.members)
    if not members:
        raise SnapshotError(f"group {group.id} has no members in the snapshot")
    first = _store_path(staging, group.id, members[0])
    with MvccStore.open(first) as store:
        try:
            count = store.bulk_load(pages, revision)
        except ValueError as error:  # whole, yet not a snapshot this revision can hold
            raise SnapshotError(f"group {group.id}: {error}") from None
    for member in members[1:]:
        copy = _store_path(staging, group.id, member)
        copy.mkdir(parents=True)
        shutil.copyfile(first / "data.mdb", copy / "data.mdb")
        with open(copy / "data.mdb", "rb+") as file:
            os.fsync(file.fileno())
        fsync_directory(copy)
    return count


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


def _meta_records(layout: Layout, shard_map: ShardMapRecord, leases, revision: int) -> list[KeyValue]:
    records = {CLUSTER_KEY: ClusterRecord(cluster_id=secrets.randbits(63) or 1), SHARDS_KEY: shard_map}
    records.update((group_key(group), record) for group, record in _layout_groups(layout).items())
    records.update((lease_key(lease.id), lease) for lease in leases)
    return [KeyValue(key=key, create_revision=revision, mod_revision=revision, version=1,
                     value=record.SerializeToString()) for key, record in sorted(records.items())]
