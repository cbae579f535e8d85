"""Whole-cluster snapshots: their file format, and the stream Maintenance.Snapshot sends.

A snapshot is logical: every data group's keys as they are at one global
revision R, plus the meta group's shard map, groups and leases. R is the
highest revision the router knows once every group's has been read
(`Router.sync_revision`), and every group is read at R as a cross-group range
is (`Router.read`: a group below R is raised to it first), so the reads are
repeatable and together one consistent cut. They go page by page, so the
router holds one page of keys at a time. History before R is not in a
snapshot: a restored cluster starts at R, compacted there. A compaction past
R while the pages are read ends the snapshot with etcd's "required revision
has been compacted"; taking it again picks a newer R.

The meta records are read after R is fixed. A lease whose record is gone by
then (its revoke finished after R) still has keys at R: it is saved as a
revoked lease, so the restored cluster finishes the revoke rather than keep
keys whose lease it does not know.

The file (integers big-endian):

    magic      8 bytes  b"TSRASNAP"
    version    4 bytes  1
    records    each a 4-byte length, then a SnapshotRecord (tessera/api/internal.proto):
               the header, the shard map, every group (the meta group too), each data
               group's keys in pages (a group's pages together, keys ascending), every
               lease, the end
    padding    zero bytes, up to a multiple of 512 bytes from the start of the file
    checksum   sha256 of everything before it, 32 bytes

The padding and checksum are what etcd 3.5's client requires of a snapshot
stream (`etcdctl snapshot save` refuses one whose length is not 32 more than
a multiple of 512) and where etcd's restore finds the sha256 to check.

On the wire, as etcd sends it: blobs of 32 KiB, then one last message whose
blob is the checksum. `remaining_bytes` is the blob bytes still to come after
the message, the checksum not counted (etcd's meaning). etcd knows its
database's size; a logical snapshot knows its size only once the last key is
read, so until then it is an estimate (the keys not yet read, at the mean size
of those read so far) and never 0; after that it is exact.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
import time
from typing import AsyncIterator

from google.protobuf.message import DecodeError

from router.core import Router
from router.meta import MetaClient
from tessera.api.internal_pb2 import (
    LeaseRecord,
    SnapshotEnd,
    SnapshotGroupKeys,
    SnapshotHeader,
    SnapshotKeys,
    SnapshotRecord,
)
from tessera.api.rpc_pb2 import RangeRequest, SnapshotResponse

MAGIC = b"TSRASNAP"
FORMAT_VERSION = 1
BLOCK_BYTES = 512  # etcd's client: the length before the checksum is a multiple of this
DIGEST_BYTES = 32  # sha256
RECORD_BYTES_MAX = 2**32 - 1  # what the 4-byte length can say
# One range read, and one record, is a page: what the router holds at a time. Pages of
# small keys are PAGE_KEYS_MAX long; with large values (etcd allows 1.5 MiB) the next
# page is cut to about PAGE_BYTES from the sizes of the one before.
PAGE_KEYS_MAX = 1000
PAGE_BYTES = 4 * 1024 * 1024
CHUNK_BYTES = 32 * 1024  # blob bytes per SnapshotResponse, as etcd sends them

_VERSION = struct.Struct(">I")
_LENGTH = struct.Struct(">I")
_PREAMBLE_BYTES = len(MAGIC) + _VERSION.size


class SnapshotFormatError(Exception):
    """The bytes are not a whole, intact Tessera snapshot; the message says what is wrong."""


class SnapshotEncoder:
    """Turns records into the file's bytes, hashing as it goes."""

    def __init__(self):
        self._sha256 = hashlib.sha256()
        self.size_bytes = 0
        self.records = 0

    def _out(self, data: bytes) -> bytes:
        self._sha256.update(data)
        self.size_bytes += len(data)
        return data

    def start(self) -> bytes:
        return self._out(MAGIC + _VERSION.pack(FORMAT_VERSION))

    def record(self, record: SnapshotRecord) -> bytes:
        body = record.SerializeToString()
        if len(body) > RECORD_BYTES_MAX:
            raise SnapshotFormatError(f"a record of {len(body)} bytes is over the format's limit")
        self.records += 1
        return self._out(_LENGTH.pack(len(body)) + body)

    def finish(self) -> tuple[bytes, bytes]:
        """(the end record and the padding, the checksum of the whole file before it)."""
        tail = self.record(SnapshotRecord(end=SnapshotEnd(records=self.records)))
        tail += self._out(bytes(-self.size_bytes % BLOCK_BYTES))
        return tail, self._sha256.digest()


class SnapshotDecoder:
    """Fed a file's bytes in pieces of any size, gives back its records; `close` checks the rest.

    Besides the checksum it checks the structure: one header first, one shard map, key
    pages only of groups the header names, each group's pages together and its keys
    ascending, as many keys per group as the header says, and the end last.
    """

    def __init__(self):
        self._buffer = bytearray()
        self._sha256 = hashlib.sha256()
        self.size_bytes = 0  # fed so far
        self.header: SnapshotHeader | None = None
        self.records = 0
        self.keys = 0
        self._started = False
        self._shard_maps = 0
        self._trailer_bytes: int | None = None  # padding and checksum, known once the end is read
        self._keys_left: dict[int, int] = {}  # per group, from the header
        self._done_groups: set[int] = set()
        self._group: int | None = None  # whose key pages are being read
        self._last_key = b""

    def feed(self, data: bytes) -> list[SnapshotRecord]:
        self._buffer += data
        self.size_bytes += len(data)
        records = []
        if not self._started:
            if len(self._buffer) < _PREAMBLE_BYTES:
                return records
            if self._buffer[:len(MAGIC)] != MAGIC:
                raise SnapshotFormatError("not a Tessera snapshot (etcd's own snapshot format is not read yet)")
            version, = _VERSION.unpack_from(self._buffer, len(MAGIC))
            if version != FORMAT_VERSION:
                raise SnapshotFormatError(f"snapshot format version {version}; this Tessera reads {FORMAT_VERSION}")
            self._consume(_PREAMBLE_BYTES)
            self._started = True
        while self._trailer_bytes is None and len(self._buffer) >= _LENGTH.size:
            length, = _LENGTH.unpack_from(self._buffer)
            if len(self._buffer) < _LENGTH.size + length:
                break
            body = bytes(self._buffer[_LENGTH.size:_LENGTH.size + length])
            self._consume(_LENGTH.size + length)
            try:
                record = SnapshotRecord.FromString(body)
            except DecodeError as error:
                raise SnapshotFormatError(f"record {self.records + 1} does not parse ({error})") from None
            self._check(record)
            records.append(record)
        if self._trailer_bytes is not None and len(self._buffer) > self._trailer_bytes:
            raise SnapshotFormatError("bytes after the checksum")
        return records

    def _consume(self, count: int) -> None:
        self._sha256.update(self._buffer[:count])
        del self._buffer[:count]

    def _check(self, record: SnapshotRecord) -> None:
        kind = record.WhichOneof("record")
        if (self.header is None) != (kind == "header"):
            raise SnapshotFormatError("the header is not the first record" if self.header is None
                                      else "a second header")
        if kind == "header":
            self.header = record.header
            self._keys_left = {entry.group: entry.keys for entry in record.header.groups}
        elif kind == "shard_map":
            self._shard_maps += 1
        elif kind == "keys":
            self._check_keys(record.keys)
        elif kind == "end":
            self._check_end(record.end)
        elif kind is None:
            raise SnapshotFormatError(f"record {self.records + 1} is of a kind this Tessera does not know")
        self.records += 1

    def _check_keys(self, page: SnapshotKeys) -> None:
        if page.group != self._group:
            if page.group not in self._keys_left or page.group in self._done_groups:
                raise SnapshotFormatError(f"keys of group {page.group} out of place")
            if self._group is not None:
                self._done_groups.add(self._group)
            self._group, self._last_key = page.group, b""
        for kv in page.kvs:
            if kv.key <= self._last_key:
                raise SnapshotFormatError(f"group {page.group}: key {kv.key!r} is not after {self._last_key!r}")
            self._last_key = kv.key
        self._keys_left[page.group] -= len(page.kvs)
        self.keys += len(page.kvs)

    def _check_end(self, end: SnapshotEnd) -> None:
        if end.records != self.records:
            raise SnapshotFormatError(f"the end counts {end.records} records before it; there are {self.records}")
        if self._shard_maps != 1:
            raise SnapshotFormatError(f"{self._shard_maps} shard maps; a snapshot has one")
        short = {group: left for group, left in self._keys_left.items() if left}
        if short:
            raise SnapshotFormatError("key counts differ from the header's (group: keys missing) "
                                      + ", ".join(f"{group}: {left}" for group, left in sorted(short.items())))
        self._trailer_bytes = -self.size_bytes_consumed % BLOCK_BYTES + DIGEST_BYTES

    @property
    def size_bytes_consumed(self) -> int:
        return self.size_bytes - len(self._buffer)

    def close(self) -> SnapshotHeader:
        """After the last byte: check the padding and the checksum; the header."""
        if self._trailer_bytes is None:
            raise SnapshotFormatError(f"truncated: no end record in {self.size_bytes} bytes")
        if len(self._buffer) != self._trailer_bytes:
            raise SnapshotFormatError(f"truncated: {len(self._buffer)} of {self._trailer_bytes} bytes "
                                      f"of padding and checksum")
        padding = len(self._buffer) - DIGEST_BYTES
        if any(self._buffer[:padding]):
            raise SnapshotFormatError("the padding after the end record is not zero")
        self._consume(padding)
        if self._sha256.digest() != bytes(self._buffer):
            raise SnapshotFormatError("sha256 checksum mismatch: the file is damaged")
        return self.header


# --- producing a snapshot ------------------------------------------------------------


async def snapshot_records(router: Router, meta: MetaClient) -> AsyncIterator[SnapshotRecord]:
    """Every record of a snapshot of the cluster at the router's revision, in the file's order."""
    await router.sync_revision()
    revision = router.revision
    groups = sorted(router.groups)
    counts = await asyncio.gather(*(router.read(group, RangeRequest(
        key=b"\0", range_end=b"\0", revision=revision, count_only=True)) for group in groups))
    state = await meta.load()
    yield SnapshotRecord(header=SnapshotHeader(
        revision=revision, cluster_id=router.cluster_id, created_unix_seconds=int(time.time()),
        groups=[SnapshotGroupKeys(group=group, keys=answer.count) for group, answer in zip(groups, counts)]))
    # A range on its way to another group is a change under way, not part of the map: it
    # holds no keys (router.admin.assign), and restored it would refuse writes for good.
    yield SnapshotRecord(shard_map=state.shard_map.with_moving([]).to_record())
    for _, record in sorted(state.groups.items()):
        yield SnapshotRecord(group=record)
    leases_of_keys = set()
    for group in groups:
        key, limit = b"\0", PAGE_KEYS_MAX
        while True:
            answer = await router.read(group, RangeRequest(key=key, range_end=b"\0", revision=revision,
                                                           limit=limit))
            if answer.kvs:
                leases_of_keys.update(kv.lease for kv in answer.kvs if kv.lease)
                yield SnapshotRecord(keys=SnapshotKeys(group=group, kvs=answer.kvs))
            if not answer.more:
                break
            key = answer.kvs[-1].key + b"\0"
            limit = max(1, min(PAGE_KEYS_MAX, len(answer.kvs) * PAGE_BYTES // answer.ByteSize()))
    for _, record in sorted(state.leases.items()):
        yield SnapshotRecord(lease=record)
    for lease_id in sorted(leases_of_keys - set(state.leases)):
        yield SnapshotRecord(lease=LeaseRecord(id=lease_id, revoked=True))


async def snapshot_stream(router: Router, meta: MetaClient) -> AsyncIterator[SnapshotResponse]:
    """The snapshot as etcd's Maintenance.Snapshot sends one: blobs, then the checksum.

    The first message carries a header at the snapshot's revision (clients read it there).
    """
    encoder = SnapshotEncoder()
    pending = bytearray(encoder.start())
    header = None
    keys_left = keys_read = 0
    async for record in snapshot_records(router, meta):
        if record.WhichOneof("record") == "header":
            header = router.header(record.header.revision)
            keys_left = sum(entry.keys for entry in record.header.groups)
        pending += encoder.record(record)
        keys_read += len(record.keys.kvs)
        keys_left -= len(record.keys.kvs)
        while len(pending) >= CHUNK_BYTES:
            estimate = len(pending) - CHUNK_BYTES + keys_left * encoder.size_bytes // max(keys_read, 1)
            yield _take_chunk(pending, max(estimate, 1), header)
            header = None
    tail, digest = encoder.finish()
    pending += tail
    while pending:
        yield _take_chunk(pending, max(len(pending) - CHUNK_BYTES, 0), header)
        header = None
    yield SnapshotResponse(remaining_bytes=0, blob=digest)


def _take_chunk(pending: bytearray, remaining_bytes: int, header) -> SnapshotResponse:
    blob = bytes(pending[:CHUNK_BYTES])
    del pending[:CHUNK_BYTES]
    return SnapshotResponse(header=header, remaining_bytes=remaining_bytes, blob=blob)
