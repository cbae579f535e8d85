"""Whole-cluster snapshots in etcd's own format, and the stream Maintenance.Snapshot sends.

A snapshot is logical: every data group's keys as they are at one global
revision R, plus the meta group's shard map, groups and leases. R is the
highest revision the router knows once every group's has been read
(`Router.sync_revision`), and every group is read at R as a cross-group range
is (`Router.read`: a group below R is raised to it first), so the reads are
repeatable and together one consistent cut. They go page by page; each page's
records are spooled to a temporary file, so the router holds one page and a
small index entry per key. History before R is not in a snapshot: a restored
cluster starts at R, compacted there. A compaction past R while the pages are
read ends the snapshot with etcd's "required revision has been compacted";
taking it again picks a newer R.

The meta records are read after R is fixed. A lease whose record is gone by
then (its revoke finished after R) still has keys at R: it is saved as a
revoked lease, so the restored cluster finishes the revoke rather than keep
keys whose lease it does not know.

The file is a bbolt database laid out as etcd 3.5's backend is
(tessera/api/bbolt.py writes it, tessera/api/etcd_backend.py names the
layout), so `etcdctl snapshot status` and `etcdutl snapshot restore` take it
and a real etcd starts from the restored data dir:

    key       every key live at R, once: revision key (mod revision, sub) ->
              the KeyValue as read at R (create and mod revision, version,
              value, lease). Groups give revisions independently, so two
              groups may have given the same revision to different keys (and
              a txn in one group gives one revision to several). Keys sharing
              a mod revision get sub revisions 0, 1, 2, ... in (group, key)
              order, so each has a revision key of its own and etcd indexes
              every one. No tombstones: nothing before R is kept.
    meta      scheduledCompactRev = finishedCompactRev = R: etcd refuses reads
              below R, as a restored Tessera does, and takes R as its revision
              even when no key has it (the last change at R was a delete, or a
              group was only raised to R). consistent_index and term are 0:
              Tessera's raft indexes are its groups', none is etcd's, and 0 is
              what etcd reads as "none saved", so an etcd restored by etcdutl
              applies every entry after its restore.
    lease     every lease: id (int64, 8 bytes big-endian) -> leasepb.Lease {ID, TTL,
              RemainingTTL}. A lease marked revoked is given TTL 1, so etcd
              expires it (after its minimum TTL) and deletes its keys: the
              revoke Tessera had under way, finished.
    cluster   clusterVersion "3.5.0".
    auth      authEnabled (one byte) and authRevision (8 bytes big-endian), as
              the meta group holds them; authUsers and authRoles: each user
              and role by name, authpb.User (its bcrypt hash) and authpb.Role,
              so an etcd restored from the file has the same users and roles.
    alarm, members, members_removed: empty (etcdutl's restore writes the new
              cluster's members itself).
    tessera   what only Tessera reads; etcd ignores a bucket it does not know:
                header      SnapshotHeader: R, the cluster id, the time, each
                            data group's key count
                shard_map   ShardMap (a range still moving is left out: it holds
                            no keys, and restored it would refuse writes for good)
                groups      bucket: group id (8 bytes, big-endian) -> GroupRecord
                leases      bucket: lease id (as etcd's lease bucket) -> LeaseRecord,
                            with Tessera's revoked mark and remaining TTL
              Each key's group is the one the shard map gives it.

On the wire, as etcd sends it: the database in blobs of 32 KiB, then one last
message whose blob is the sha256 of the database. `remaining_bytes` is the
blob bytes still to come after the message, the checksum not counted (etcd's
meaning). The database is written whole before the first blob goes, so the
first message can say the exact size; the first message also carries a
header at R.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import tempfile
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, BinaryIO, Iterator

from native import codec
from router.auth import AuthRecords
from router.core import Router
from router.meta import MetaClient
from tessera.api import etcd_backend as etcd
from tessera.api.bbolt import BucketSpec, write_bolt
from tessera.api.internal_pb2 import GroupRecord, LeaseRecord, SnapshotGroupKeys, SnapshotHeader
from tessera.api.internal_pb2 import ShardMap as ShardMapRecord
from tessera.api.lease_pb2 import Lease
from tessera.api.rpc_pb2 import RangeRequest, SnapshotResponse

DIGEST_BYTES = 32  # sha256, after the database
# One range read is a page: what the router holds at a time. Pages of small keys are
# PAGE_KEYS_MAX long; with large values (etcd allows 1.5 MiB) the next page is cut to
# about PAGE_BYTES from the sizes of the one before.
PAGE_KEYS_MAX = 1000
PAGE_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 32 * 1024  # blob bytes per SnapshotResponse, as etcd sends them
REVOKED_LEASE_TTL = 1  # an etcd that restores a lease under revoke expires it at once

# The bucket of what only Tessera reads, and its keys.
TESSERA_BUCKET = b"tessera"
HEADER_KEY = b"header"
SHARD_MAP_KEY = b"shard_map"
GROUPS_BUCKET = b"groups"
LEASES_BUCKET = b"leases"


@dataclass
class SpooledKeys:
    """The keys read at R: their records in a temporary file, an index entry each in memory."""

    file: BinaryIO
    # (mod revision, group, key, offset, length): sorted, the key bucket's order
    index: list[tuple[int, int, bytes, int, int]] = field(default_factory=list)
    groups: dict[int, int] = field(default_factory=dict)  # data group -> keys
    leases: set[int] = field(default_factory=set)  # leases keys are attached to

    def add(self, group: int, kvs) -> None:
        self.file.seek(0, 2)
        for kv in kvs:
            record = kv.SerializeToString()
            self.index.append((kv.mod_revision, group, kv.key, self.file.tell(), len(record)))
            self.file.write(record)
            if kv.lease:
                self.leases.add(kv.lease)
        self.groups[group] = self.groups.get(group, 0) + len(kvs)

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(revision key, KeyValue) in revision order, keys sharing a revision on distinct sub revisions."""
        self.index.sort()
        for mod_revision, entries in itertools.groupby(self.index, key=lambda entry: entry[0]):
            for sub, (_, _, _, offset, length) in enumerate(entries):
                self.file.seek(offset)
                yield codec.encode_revision(mod_revision, sub), self.file.read(length)


@dataclass
class ClusterCut:
    """Everything a snapshot holds, read at one revision."""

    header: SnapshotHeader
    shard_map: ShardMapRecord
    groups: dict[int, GroupRecord]
    leases: dict[int, LeaseRecord]
    keys: SpooledKeys
    auth: AuthRecords = field(default_factory=AuthRecords)


async def read_cluster(router: Router, meta: MetaClient, spool: BinaryIO) -> ClusterCut:
    """Every group's keys at the router's revision into `spool`, then the meta group's records."""
    await router.sync_revision()
    revision = router.revision
    keys = SpooledKeys(spool)
    for group in sorted(router.groups):
        keys.groups[group] = 0
        key, limit = b"\0", PAGE_KEYS_MAX
        while True:
            answer = await router.read(group, RangeRequest(key=key, range_end=b"\0", revision=revision,
                                                           limit=limit))
            keys.add(group, answer.kvs)
            if not answer.more:
                break
            key = answer.kvs[-1].key + b"\0"
            limit = max(1, min(PAGE_KEYS_MAX, len(answer.kvs) * PAGE_BYTES // answer.ByteSize()))
    state = await meta.load()
    leases = dict(state.leases)
    for lease_id in keys.leases - set(leases):
        leases[lease_id] = LeaseRecord(id=lease_id, revoked=True)
    header = SnapshotHeader(revision=revision, cluster_id=router.cluster_id, created_unix_seconds=int(time.time()),
                            groups=[SnapshotGroupKeys(group=group, keys=count)
                                    for group, count in sorted(keys.groups.items())])
    return ClusterCut(header, state.shard_map.with_moving([]).to_record(), dict(state.groups), leases, keys,
                      state.auth)


def write_database(cut: ClusterCut, file: BinaryIO) -> None:
    """The snapshot's bbolt database (layout above) into `file`."""
    revision = cut.header.revision
    compacted = codec.encode_revision(revision, 0)
    leases = sorted((etcd.lease_id_key(lease_id), record) for lease_id, record in cut.leases.items())
    etcd_leases = [(key, Lease(ID=record.id, TTL=REVOKED_LEASE_TTL if record.revoked else record.ttl,
                               RemainingTTL=0 if record.revoked else record.remaining_ttl).SerializeToString())
                   for key, record in leases]
    tessera = BucketSpec([
        (GROUPS_BUCKET, BucketSpec([(etcd.u64(group), record.SerializeToString())
                                    for group, record in sorted(cut.groups.items())])),
        (HEADER_KEY, cut.header.SerializeToString()),
        (LEASES_BUCKET, BucketSpec([(key, record.SerializeToString()) for key, record in leases])),
        (SHARD_MAP_KEY, cut.shard_map.SerializeToString()),
    ])
    auth = cut.auth
    buckets = {
        etcd.AUTH_BUCKET: BucketSpec([(etcd.AUTH_ENABLED_KEY, b"\1" if auth.enabled else b"\0"),
                                      (etcd.AUTH_REVISION_KEY, etcd.u64(auth.revision))]),
        etcd.AUTH_ROLES_BUCKET: BucketSpec([(name.encode(), role.SerializeToString())
                                            for name, role in sorted(auth.roles.items())]),
        etcd.AUTH_USERS_BUCKET: BucketSpec([(name.encode(), user.SerializeToString())
                                            for name, user in sorted(auth.users.items())]),
        etcd.CLUSTER_BUCKET: BucketSpec([(etcd.CLUSTER_VERSION_KEY, etcd.CLUSTER_VERSION)]),
        etcd.KEY_BUCKET: BucketSpec(cut.keys.items()),
        etcd.LEASE_BUCKET: BucketSpec(etcd_leases),
        etcd.META_BUCKET: BucketSpec([(etcd.CONSISTENT_INDEX_KEY, etcd.u64(0)),
                                      (etcd.FINISHED_COMPACT_KEY, compacted),
                                      (etcd.SCHEDULED_COMPACT_KEY, compacted),
                                      (etcd.TERM_KEY, etcd.u64(0))]),
        TESSERA_BUCKET: tessera,
    }
    write_bolt(file, [(name, buckets.get(name, BucketSpec())) for name in sorted({*etcd.ETCD_BUCKETS, *buckets})])
    file.flush()


async def snapshot_stream(router: Router, meta: MetaClient) -> AsyncIterator[SnapshotResponse]:
    """The snapshot as etcd's Maintenance.Snapshot sends one: blobs of the database, then its sha256."""
    with tempfile.TemporaryFile(prefix="tessera-snapshot-keys-") as spool, \
            tempfile.TemporaryFile(prefix="tessera-snapshot-db-") as database:
        cut = await read_cluster(router, meta, spool)
        await asyncio.to_thread(write_database, cut, database)  # CPU and disk: off the event loop
        spool.close()
        size = database.tell()
        database.seek(0)
        sha256 = hashlib.sha256()
        header = router.header(cut.header.revision)
        sent = 0
        while blob := database.read(CHUNK_BYTES):
            sha256.update(blob)
            sent += len(blob)
            yield SnapshotResponse(header=header, remaining_bytes=size - sent, blob=blob)
            header = None
        yield SnapshotResponse(remaining_bytes=0, blob=sha256.digest())
