"""The MVCC store: etcd's key-value semantics on LMDB.

Every change gets a revision and history is kept until compacted, so a read can
be served at any retained revision. The store knows nothing of raft beyond
"apply this batch of proposals at these raft indexes".

On disk, one LMDB environment with named databases:

    history   revision key (native.codec, 17 bytes, 18 with the tombstone
              marker) -> the KeyValue as etcd's wire encodes it (mvccpb), so a
              record goes into a response without being re-encoded
    meta      applied raft index, current revision, compaction revisions
    leases    lease id (8 bytes, big-endian) + key -> empty: the attachments
    revoked   lease id -> revision of the revoke: a put with it must fail
    alarms    member id (8 bytes) + alarm type (1 byte) -> empty: while a
              NOSPACE alarm is raised, writes that add data are refused; while
              a CORRUPT one is, every write of data (etcd's appliers)
    members   member id (8 bytes) -> the group member's record (opaque here):
              membership applied with the rest, carried by snapshots

In memory, a KeyIndex (native.keyindex) from key to its revisions, rebuilt
from `history` on open; its lookups answer with the revision key to read. Records are encoded and decoded by native.codec
(`encode_key_value`, `decode_key_value`: the same bytes protobuf gives, as a
plain tuple), so the write path builds no protobuf object per record. A run
of plain puts (PlainPut: a key and a value, the common write) is applied by
native.store_apply in one compiled loop, with no Python frame per put.

Revisions follow ARCHITECTURE decision 3. A store starts at revision 1. A
request that changes anything gets main revision max(current + 1, floor),
where the floor travels with its proposal; the changes of one request (a
transaction's puts and deletes, a range delete's keys) share it and get sub
revisions 0, 1, 2... A request that changes nothing leaves the revision alone.
`RaiseRevision` lifts the revision without a change or an event.

A prefix moving between groups (router/moves.py) arrives as `ImportKeys`
and leaves as `DropRange`. Both write under a revision of the group's own,
with sub revisions from MOVED_SUB_BASE up: records that keep the create
and mod revisions, version and lease they had in the source group, and
tombstones. They make no events, and the change feed skips them: a
watcher of the prefix saw those changes from the group they happened in.
The last import records a *range floor*: the history of the range before
it stayed behind, so a read there below the floor is answered as etcd
answers one below a compaction.

Applying is idempotent: a batch is one LMDB write transaction that also
stores the applied raft index, and proposals at or below that index are
skipped. Everything a request can fail on is checked before it changes
anything, so a failed request leaves no trace but its error.

Compaction is recorded when applied (reads below it fail at once) and
removes the superseded history in bounded steps (`compact_step`), so a large
compaction never holds up applies; a restart finishes it.

Durability. The store is not a durability point of its own: the WAL is
(ARCHITECTURE decision 9), and a restart replays it from the applied index
the store last made durable. So commits do not flush: LMDB runs with
MDB_NOSYNC, and a commit is a few writes into the page cache. A kill -9
loses nothing (the kernel holds every page); a power loss may lose any write
since the last flush, in any order. LMDB keeps its integrity under that only
if the file system keeps write order, which Linux file systems do not for
overwrites: the newer meta page may reach the disk before the pages it points
at, and a page of the last flushed snapshot may be overwritten in place once
LMDB reuses it. (MDB_NOMETASYNC keeps integrity, but flushes the data pages
at every commit: the cost this design removes.) Three rules keep it whole:

  * a durable point: every `batch_interval_seconds` (500 ms) or `batch_limit_entries`
    applied entries (etcd's backend commits every 100 ms or 10,000 entries),
    a thread fdatasyncs the file (LMDB's sync releases the GIL, so applies go
    on meanwhile) and then records, in `durable-point` (written whole: write,
    fsync, rename), the transaction it flushed, the raft index applied there
    and the file's two meta pages as they were then;
  * a read transaction stays open at the durable point's transaction until
    the next point is recorded: LMDB never reuses a page a reader can see, so
    no write after the durable point touches a page of its snapshot;
  * opening writes the recorded meta pages back before LMDB reads them, so
    the store always opens at its durable point, whatever reached the disk
    after it (a kill -9 only costs the replay of what came after).

Replacing the database file (a snapshot installed, a defragment) first
flushes the whole file and removes the record, so a record never describes
another file than the one beside it; a file without a record is opened as
it is and gets its first durable point at once. For the same reason nothing
but the store may write the file while a record is beside it: another writer
must remove the record first (and commit with LMDB's default, synced, flags).
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import lmdb

from native import codec, crc
from native.keyindex import KeyIndex
from native.store_apply import PlainPutWriter
from shards.durable import fsync_directory, write_file_durably
from shards.fault_control import STORE_SYNCED, STORE_DURABLE, failpoint
from tessera.api import errors
from tessera.api.ordering import effective_sort, sort_results
from tessera.api.validation import key_in_range
from tessera.api.kv_pb2 import Event, KeyValue
from tessera.api.rpc_pb2 import (
    CORRUPT,
    NONE,
    NOSPACE,
    AlarmMember,
    AlarmRequest,
    AlarmResponse,
    Compare,
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    TxnRequest,
    TxnResponse,
)

QUOTA_BYTES_DEFAULT = 2 * 1024**3  # etcd's --quota-backend-bytes
# Records removed per write transaction by compact_step: small enough that an
# apply waiting behind it is not held up noticeably.
COMPACT_BATCH_RECORDS = 10_000
FIRST_REVISION = 1  # an empty etcd reports revision 1; its first write gets 2
SUB_REVISION_MAX = 2**63 - 1
# The store's durable point at least this often (etcd's --backend-batch-interval, whose backend
# commits every 100 ms): each costs two fsyncs and a rename on a thread of their own, and a longer
# interval only lengthens the WAL a restart replays (BATCH_LIMIT_ENTRIES at most).
BATCH_INTERVAL_SECONDS = 0.5
BATCH_LIMIT_ENTRIES = 10_000  # etcd's --backend-batch-limit: or after this many applied entries

DURABLE_POINT_FILE = "durable-point"
# magic, LMDB transaction id, applied raft index, page size; the two meta pages follow, then a CRC32C.
_DURABLE_POINT_HEADER = struct.Struct("<4sQQI")
_DURABLE_POINT_MAGIC = b"TDP1"
_CRC = struct.Struct("<I")
# Where LMDB 0.9 (64-bit) keeps a meta page's magic and transaction id: after
# the 16-byte page header, mm_magic first and mm_txnid last of MDB_meta.
_LMDB_META_MAGIC = struct.Struct("=I")
_LMDB_META_TXNID = struct.Struct("=Q")
_LMDB_MAGIC = 0xBEEFC0DE
_LMDB_META_MAGIC_OFFSET = 16
_LMDB_META_TXNID_OFFSET = 16 + 128

_U64 = struct.Struct(">Q")
_META_APPLIED_INDEX = b"applied_index"
_META_REVISION = b"revision"
_META_COMPACTED = b"compacted_revision"
_META_COMPACT_FINISHED = b"compact_finished_revision"
# + a range's start -> u64 floor revision + the range's end (see ImportKeys.final).
_META_RANGE_FLOOR = b"range_floor/"
# Sub revisions of records a move wrote (ImportKeys, DropRange): no request
# has that many changes, so they never meet a client write's sub revisions.
MOVED_SUB_BASE = 1 << 62


class RaiseRevision(NamedTuple):
    """Lift the store's revision to at least `revision`: no change, no event."""

    revision: int


class RevokeLease(NamedTuple):
    """Delete every key attached to a lease, and refuse that lease from now on."""

    lease_id: int


class RegrantLease(NamedTuple):
    """A revoked lease's id granted again: take puts with it again."""

    lease_id: int


class SetMember(NamedTuple):
    """Record (or replace) a group member's record."""

    member_id: int
    record: bytes


class RemoveMember(NamedTuple):
    member_id: int


class PlainPut(NamedTuple):
    """A put with a key and a value and nothing more, as native.codec.decode_plain_put reads it
    from a raft entry: applied as its PutRequest would be, with no protobuf object built."""

    key: bytes
    value: bytes
    # The PutRequest fields a plain put leaves unset (class attributes, not fields).
    lease = 0
    prev_kv = ignore_value = ignore_lease = False


class ImportKeys(NamedTuple):
    """Records of a moving range [key, range_end) from the group it leaves, no events.

    `puts`: KeyValues as the source has them; `deletes`: keys the source no longer
    has. `final`: reads of the range below this revision are "compacted" from now on.
    """

    key: bytes
    range_end: bytes
    puts: Sequence[KeyValue]
    deletes: Sequence[bytes]
    final: bool


class DropRange(NamedTuple):
    """A range that moved to another group: its keys deleted, no events."""

    key: bytes
    range_end: bytes


class Proposal(NamedTuple):
    """What one committed raft entry asks of the store."""

    index: int  # raft index
    floor: int  # the lowest main revision its changes may take
    requests: Sequence  # PutRequest (or PlainPut), DeleteRangeRequest, TxnRequest, CompactionRequest, ...
    # Leases the router does not know: a put with one, on the path a txn takes, is refused.
    unknown_leases: frozenset = frozenset()
    # Whether anyone waits for the responses: a follower's entries, and a leader's
    # entries replayed after a restart, are applied without building any.
    respond: bool = True


class ChangeEvent(NamedTuple):
    """One change, for the watch feed, in revision order."""

    type: int  # Event.PUT or Event.DELETE
    revision: int  # main revision
    key: bytes
    kv: bytes  # the KeyValue (for a delete: key and mod_revision)
    prev_kv: bytes | None  # the KeyValue it replaced, if the key existed


class DurablePoint(NamedTuple):
    """A state of the store that is on disk whole: what `durable-point` records."""

    txnid: int  # the LMDB transaction
    applied_index: int  # the raft index applied there
    meta_pages: bytes  # the database file's two meta pages as they were after that transaction

    def encode(self) -> bytes:
        body = _DURABLE_POINT_HEADER.pack(_DURABLE_POINT_MAGIC, self.txnid, self.applied_index,
                                          len(self.meta_pages) // 2) + self.meta_pages
        return body + _CRC.pack(crc.crc32c(body))

    @classmethod
    def decode(cls, data: bytes, where: Path) -> DurablePoint:
        body, checksum = data[:-_CRC.size], data[-_CRC.size:]
        if len(data) < _DURABLE_POINT_HEADER.size + _CRC.size or _CRC.pack(crc.crc32c(body)) != checksum:
            raise StoreInvariantError(f"{where} is damaged (it is only ever replaced whole)")
        magic, txnid, applied_index, page_bytes = _DURABLE_POINT_HEADER.unpack_from(body)
        meta_pages = body[_DURABLE_POINT_HEADER.size:]
        if magic != _DURABLE_POINT_MAGIC or len(meta_pages) != 2 * page_bytes:
            raise StoreInvariantError(f"{where} is not a durable point record")
        point = cls(txnid, applied_index, meta_pages)
        point.check_meta_pages(where)
        return point

    def check_meta_pages(self, where: Path) -> None:
        """The newer of the two meta pages must be the recorded transaction's."""
        page_bytes = len(self.meta_pages) // 2
        txnids = []
        for page in (self.meta_pages[:page_bytes], self.meta_pages[page_bytes:]):
            if _LMDB_META_MAGIC.unpack_from(page, _LMDB_META_MAGIC_OFFSET)[0] != _LMDB_MAGIC:
                raise StoreInvariantError(f"{where}: a meta page without LMDB's magic")
            txnids.append(_LMDB_META_TXNID.unpack_from(page, _LMDB_META_TXNID_OFFSET)[0])
        if max(txnids) != self.txnid:
            raise StoreInvariantError(f"{where}: meta pages of transactions {txnids}, not of {self.txnid}")


class ApplyResult(NamedTuple):
    # Per proposal: None if already applied or nobody waits (Proposal.respond), else a
    # response (None: a header alone; bytes: a plain put's PutResponse, encoded) or EtcdError
    # per request.
    responses: list
    events: list[ChangeEvent]
    commit_seconds: float  # the LMDB commit alone (etcd's backend commit duration)


# Positions in a record tuple from native.codec.decode_key_value.
KEY, CREATE, MOD, VERSION, VALUE, LEASE = range(6)


def _u64(value: int) -> bytes:
    return _U64.pack(value)


def _lease_prefix(lease_id: int) -> bytes:
    """A lease id (etcd's int64, negative ones included) as 8 bytes: its two's complement."""
    return _U64.pack(lease_id & 0xFFFF_FFFF_FFFF_FFFF)


def _keys_under(cursor, prefix: bytes) -> list[bytes]:
    """From a cursor placed at `prefix`, the rest of each key that starts with it."""
    keys = []
    for attachment in cursor.iternext(values=False):
        if not attachment.startswith(prefix):
            break
        keys.append(attachment[len(prefix):])
    return keys


def _last_key_of(main: int) -> bytes:
    """The greatest revision key with this main revision: history up to main sorts at or below it."""
    return codec.encode_revision(main, SUB_REVISION_MAX, tombstone=True)


def _range_end(range_end: bytes) -> bytes | None:
    """The exclusive end of a request's range; None for "every key from the start on"."""
    return None if range_end == b"\0" else range_end


class MvccStore:
    def __init__(self, path: Path, quota_bytes: int, map_size_bytes: int | None,
                 batch_interval_seconds: float, batch_limit_entries: int):
        self.path = path
        self.quota_bytes = quota_bytes
        self.batch_interval_seconds = batch_interval_seconds
        self.batch_limit_entries = batch_limit_entries
        # The map is address space, not disk: room for a full quota plus the
        # copy-on-write pages a transaction needs while the quota is exceeded.
        # It doubles whenever a transaction finds it full.
        self.map_size_bytes = map_size_bytes or 2 * quota_bytes + 2**30
        self._env: lmdb.Environment | None = None
        self._index = KeyIndex()
        self.revision = FIRST_REVISION
        self.compacted_revision = 0
        self._compact_finished = 0
        self._compact_resume_key = b""  # where compact_step goes on from
        self.applied_index = 0
        self.alarms: set[tuple[int, int]] = set()  # (member id, alarm type)
        # A NOSPACE alarm is raised: writes that add data are refused until it is cleared.
        self.space_exceeded = False
        # A CORRUPT alarm is raised: every write of data is refused until it is cleared.
        self.corrupt = False
        # Durability (see the module's docstring): the point on disk, and the one being flushed.
        self.durable_applied_index = 0
        self._durable: DurablePoint | None = None
        self._durable_pin: lmdb.Transaction | None = None  # a reader at the durable point's transaction
        self._flushing: tuple[Future, DurablePoint, lmdb.Transaction] | None = None
        self._flush_started = 0.0  # time.monotonic() when the last durable point was taken
        self._committed_since_durable = False  # a write transaction committed after the last point taken
        self._flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-sync")
        self._data_fd = -1  # data.mdb, read only: where the meta pages are read from

    # --- opening and closing -----------------------------------------------------------

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, quota_bytes: int = QUOTA_BYTES_DEFAULT,
        map_size_bytes: int | None = None, batch_interval_seconds: float = BATCH_INTERVAL_SECONDS,
        batch_limit_entries: int = BATCH_LIMIT_ENTRIES,
    ) -> MvccStore:
        store = cls(Path(path), quota_bytes, map_size_bytes, batch_interval_seconds, batch_limit_entries)
        store.path.mkdir(parents=True, exist_ok=True)
        store._open_environment()
        return store

    def _open_environment(self) -> None:
        record_path = self.path / DURABLE_POINT_FILE
        recorded = DurablePoint.decode(record_path.read_bytes(), record_path) if record_path.exists() else None
        if recorded is not None:
            self._roll_back_to(recorded)
        # sync=False is MDB_NOSYNC: commits do not flush (the module's docstring says why that is safe here).
        self._env = lmdb.open(str(self.path), map_size=self.map_size_bytes, max_dbs=8, sync=False,
                              readahead=False)
        env = self._env
        self._history = env.open_db(b"history")
        self._meta = env.open_db(b"meta")
        self._leases = env.open_db(b"leases")
        self._revoked = env.open_db(b"revoked")
        self._alarms_db = env.open_db(b"alarms")
        self._members = env.open_db(b"members")
        self._plain_puts = PlainPutWriter(self._history, self._leases, PlainPut, ChangeEvent, Event.PUT,
                                          _missing_record)
        self._load()
        self._data_fd = os.open(self.path / "data.mdb", os.O_RDONLY)
        if recorded is None:
            self._committed_since_durable = True  # a new or replaced file: its first durable point now
            self.make_durable()
            return
        if self._env.info()["last_txnid"] != recorded.txnid or self.applied_index != recorded.applied_index:
            raise StoreInvariantError(
                f"{self.path}: rolled back to the durable point (transaction {recorded.txnid}, applied index "
                f"{recorded.applied_index}) but LMDB opened at transaction {self._env.info()['last_txnid']}, "
                f"applied index {self.applied_index}")
        self._durable, self._durable_pin = recorded, self._env.begin()
        self.durable_applied_index = recorded.applied_index
        self._flush_started = time.monotonic()

    def _roll_back_to(self, point: DurablePoint) -> None:
        """Put the durable point's meta pages back: LMDB then opens at its transaction.

        Every page its snapshot uses was flushed before it was recorded and has
        not been written since (a reader pinned it), so the store is whole there.
        """
        data_file = self.path / "data.mdb"
        if not data_file.exists():
            raise StoreInvariantError(f"{self.path / DURABLE_POINT_FILE} records a durable point of "
                                      f"{data_file}, which is gone")
        fd = os.open(data_file, os.O_WRONLY)
        try:
            if os.pwrite(fd, point.meta_pages, 0) != len(point.meta_pages):
                raise OSError(f"short write of the meta pages of {data_file}")
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def _load(self) -> None:
        """Read the meta records and rebuild the key index from history."""
        index = KeyIndex()
        with self._env.begin() as txn:
            meta, range_floors = {}, []
            for key, value in txn.cursor(db=self._meta):
                if key.startswith(_META_RANGE_FLOOR):
                    range_floors.append((key[len(_META_RANGE_FLOOR):], value[8:], _U64.unpack(value[:8])[0]))
                else:
                    meta[key] = _U64.unpack(value)[0]
            for revision_key, record in txn.cursor(db=self._history):
                index.add_record(codec.decode_key_value(record)[KEY], revision_key)
            self.alarms = {(_U64.unpack(key[:8])[0], key[8]) for key, _ in txn.cursor(db=self._alarms_db)}
        self._alarms_changed()
        self._index = index
        self._range_floors = range_floors
        self.applied_index = meta.get(_META_APPLIED_INDEX, 0)
        self.revision = meta.get(_META_REVISION, FIRST_REVISION)
        self.compacted_revision = meta.get(_META_COMPACTED, 0)
        self._compact_finished = meta.get(_META_COMPACT_FINISHED, 0)
        if self.compacted_revision:
            self._index.compact(self.compacted_revision)
        self._in_use_bytes = self.db_size_in_use_bytes()

    def close(self) -> None:
        """Make everything applied durable (a clean stop replays nothing), then close."""
        if self._env is not None:
            self.make_durable()
            self._close_environment()
            self._flusher.shutdown(wait=True)

    def _close_environment(self) -> None:
        self._durable_pin.abort()
        self._durable_pin = self._durable = None
        self._env.close()
        self._env = None
        os.close(self._data_fd)
        self._data_fd = -1

    def __enter__(self) -> MvccStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # --- reads ---------------------------------------------------------------------------

    def range(self, request: RangeRequest, counted: bool = True) -> RangeResponse:
        """A Range at the latest or a retained revision, as etcd answers it; not `counted`, a page
        in key order costs the page alone, and its count is not the range's."""
        with self._env.begin() as txn:
            return self._range(txn, request, self.revision, counted)

    def _range(self, txn, request: RangeRequest, current: int, counted: bool = True) -> RangeResponse:
        at = request.revision if request.revision > 0 else current
        if at > current:
            raise errors.FutureRevision()
        if at < self.compacted_revision or (at < current and self.below_range_floor(
                request.key, request.range_end, at)):
            raise errors.Compacted()
        response = RangeResponse()
        response.header.revision = current
        sort_order, _ = effective_sort(request)
        filtered = (request.min_mod_revision or request.max_mod_revision
                    or request.min_create_revision or request.max_create_revision)
        if (request.range_end and sort_order == RangeRequest.NONE and request.min_mod_revision >= 0
                and request.max_mod_revision >= 0 and not (request.min_create_revision or request.max_create_revision)):
            # In key order, filtered by mod revision at most (a key's visible revision is its
            # record's mod revision): the index walks the range once and hands out one page, and
            # only the page's records are read. A paged list of a big prefix costs a page, not all of it.
            found, response.count, matched = self._index.page(
                request.key, _range_end(request.range_end), at, 0 if request.count_only else max(request.limit, 0),
                request.min_mod_revision, request.max_mod_revision, counted)
            if request.count_only:
                return response
            response.more = 0 < request.limit < matched
        else:
            if request.range_end:
                found = self._index.range(request.key, _range_end(request.range_end), at)
            else:
                revision = self._index.get(request.key, at)
                found = [] if revision is None else [(request.key, revision)]
            response.count = len(found)
            if request.count_only:
                return response
            if filtered or sort_order != RangeRequest.NONE:
                kvs = [self._record(txn, revision) for _, revision in found]
                if filtered:
                    kvs = [kv for kv in kvs if _passes_filters(kv, request)]
                sort_results(kvs, request)
                if 0 < request.limit < len(kvs):
                    kvs = kvs[: request.limit]
                    response.more = True
                response.kvs.extend(kvs)
                found = ()
        # Records in the index's (key) order: parsed straight into the response.
        add_kv = response.kvs.add
        for _, revision in found:
            add_kv().MergeFromString(self._record_bytes(txn, revision))
        if request.keys_only:
            for kv in response.kvs:
                kv.value = b""
        return response

    def below_range_floor(self, key: bytes, range_end: bytes, at: int) -> bool:
        """Whether a read of (key, range_end) at `at` reaches below the floor of a range moved in."""
        return any(at < floor and _ranges_meet(key, range_end, start, end)
                   for start, end, floor in self._range_floors)

    def changes(
        self, start_revision: int, key: bytes, range_end: bytes = b"", limit: int = 10_000,
    ) -> tuple[list[ChangeEvent], int]:
        """The events at start_revision and after for keys in the range, as apply produced them.

        Returns (events, next revision to read from): at most `limit` events,
        but never part of a revision, so a watch that pages through history
        with it sees every revision whole. Raises Compacted below the
        compacted revision, as a watch from there must be cancelled, and
        BelowMovedHistory below the floor of a range that moved in.
        """
        if start_revision < self.compacted_revision:
            raise errors.Compacted()
        floor = max((floor for start, end, floor in self._range_floors
                     if start_revision < floor and _ranges_meet(key, range_end, start, end)), default=0)
        if floor:
            raise BelowMovedHistory(floor)
        events: list[ChangeEvent] = []
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._history)
            present = cursor.set_range(codec.encode_revision(max(start_revision, 1), 0))
            while present:
                revision_key, record = cursor.item()
                main, sub, tombstone = codec.decode_revision(revision_key)
                if len(events) >= limit and events[-1].revision != main:
                    return events, main
                if sub >= MOVED_SUB_BASE:
                    present = cursor.next()
                    continue
                record_key = codec.decode_key_value(record)[KEY]
                if key_in_range(record_key, key, range_end) and main > self.compacted_revision:
                    previous = self._index.get(record_key, main - 1)
                    events.append(ChangeEvent(
                        Event.DELETE if tombstone else Event.PUT, main, record_key, record,
                        self._record_bytes(txn, previous) if previous is not None else None,
                    ))
                present = cursor.next()
        return events, self.revision + 1

    def lease_keys(self, lease_id: int) -> list[bytes]:
        """The keys attached to a lease, in key order."""
        prefix = _lease_prefix(lease_id)
        with self._env.begin() as txn:
            cursor = txn.cursor(db=self._leases)
            return _keys_under(cursor, prefix) if cursor.set_range(prefix) else []

    def _record(self, txn, revision_key: bytes) -> KeyValue:
        """The record at a revision the index gave, as the message a response carries."""
        return KeyValue.FromString(self._record_bytes(txn, revision_key))

    def _record_bytes(self, txn, revision_key: bytes) -> bytes:
        """The stored KeyValue at a revision the index gave."""
        record = txn.get(revision_key, db=self._history)
        if record is None:
            raise _missing_record(revision_key)
        return record

    # --- applying ------------------------------------------------------------------------

    def apply(self, proposals: Sequence[Proposal]) -> ApplyResult:
        """Apply committed proposals in one write transaction; skip those applied before."""
        while True:
            try:
                result = self._apply_batch(proposals)
                # The records written, until the next durable point counts the pages exactly:
                # counting them takes a read transaction and a stat of every database.
                self._in_use_bytes += sum(len(event.kv) for event in result.events)
                return result
            except lmdb.MapFullError:
                self._grow_map()
            except BaseException:
                # The write transaction was aborted: memory must match disk again.
                self._load()
                raise

    def _apply_batch(self, proposals: Sequence[Proposal]) -> ApplyResult:
        events: list[ChangeEvent] = []
        responses: list = []
        txn = self._env.begin(write=True)
        try:
            position, count = 0, len(proposals)
            while position < count:
                if not (self.corrupt or self.space_exceeded):  # runs of plain puts: one native loop
                    position, self.applied_index, self.revision = self._plain_puts.write(
                        txn, self._index, proposals, position, self.applied_index, self.revision, events,
                        responses)
                    if position == count:
                        break
                proposal = proposals[position]
                position += 1
                if proposal.index <= self.applied_index:
                    responses.append(None)
                    continue
                answers = [
                    self._apply_request(txn, request, proposal.floor, events, proposal.unknown_leases,
                                        proposal.respond)
                    for request in proposal.requests
                ]
                responses.append(answers if proposal.respond else None)
                self.applied_index = proposal.index
            txn.put(_META_APPLIED_INDEX, _u64(self.applied_index), db=self._meta)
            txn.put(_META_REVISION, _u64(self.revision), db=self._meta)
        except BaseException:
            txn.abort()
            raise
        started = time.perf_counter()
        txn.commit()
        self._committed_since_durable = True
        return ApplyResult(responses, events, time.perf_counter() - started)

    def _apply_request(self, txn, request, floor: int, events: list[ChangeEvent], unknown_leases=frozenset(),
                       respond: bool = True):
        if type(request) is PlainPut or type(request) is PutRequest:
            return self._apply_put(txn, request, floor, events, unknown_leases, respond)
        change = _Change(self, txn, floor, events, unknown_leases)
        apply = _APPLY.get(type(request))
        if apply is None:
            raise TypeError(f"the store does not apply {type(request).__name__}")
        if self.corrupt and _writes_data(request):
            return errors.Corrupt()
        try:
            response = apply(change, request)
        except errors.EtcdError as error:
            return error
        change.finish()
        if response is not None:
            response.header.revision = self.revision
        return response

    def _apply_put(self, txn, request: PutRequest | PlainPut, floor: int, events: list[ChangeEvent],
                   unknown_leases, respond: bool):
        """A put on its own, the write path's common case: what _Change does, without one."""
        if self.corrupt:
            return errors.Corrupt()
        try:
            self._check_put(txn, request, unknown_leases)
        except errors.EtcdError as error:
            return error
        self.revision = main = max(self.revision + 1, floor)
        previous_bytes = self._write_put(txn, request, main, 0, events)
        if not respond:
            return None
        response = _put_response(request, previous_bytes)
        response.header.revision = main
        return response

    def _write_put(self, txn, request: PutRequest | PlainPut, main: int, sub: int,
                   events: list[ChangeEvent]) -> bytes | None:
        """Write a put at revision (main, sub); returns the record it replaced, if the key existed."""
        key = request.key
        index = self._index
        previous_revision = index.get(key)
        if previous_revision is None:
            previous_bytes = None
            create, version, previous_lease = main, 1, 0
            value = request.value
            lease = request.lease
        else:
            previous_bytes = self._record_bytes(txn, previous_revision)
            previous = codec.decode_key_value(previous_bytes)
            create, version, previous_lease = previous[CREATE], previous[VERSION] + 1, previous[LEASE]
            value = previous[VALUE] if request.ignore_value else request.value
            lease = previous_lease if request.ignore_lease else request.lease
        record = codec.encode_key_value(key, create, main, version, value, lease)
        txn.put(codec.encode_revision(main, sub), record, db=self._history)
        index.add(key, main, sub)
        if previous_lease != lease:
            if previous_lease:
                txn.delete(_lease_prefix(previous_lease) + key, db=self._leases)
            if lease:
                txn.put(_lease_prefix(lease) + key, b"", db=self._leases)
        events.append(ChangeEvent(Event.PUT, main, key, record, previous_bytes))
        return previous_bytes

    def _check_put(self, txn, request: PutRequest | PlainPut, unknown_leases=frozenset()) -> None:
        if self.space_exceeded:
            raise errors.NoSpace()
        if (request.ignore_value or request.ignore_lease) and self._index.get(request.key) is None:
            raise errors.KeyNotFound()
        if request.lease and (request.lease in unknown_leases
                              or txn.get(_lease_prefix(request.lease), db=self._revoked) is not None):
            raise errors.LeaseNotFound()

    def _compact(self, txn, revision: int) -> CompactionResponse:
        if revision <= self.compacted_revision:
            raise errors.Compacted()
        if revision > self.revision:
            raise errors.FutureRevision()
        self.compacted_revision = revision
        self._compact_resume_key = b""  # what is superseded now may lie behind the last scan
        self._index.compact(revision)
        txn.put(_META_COMPACTED, _u64(revision), db=self._meta)
        return CompactionResponse()

    def _alarm(self, txn, request: AlarmRequest) -> AlarmResponse:
        response = AlarmResponse()
        member_alarm = (request.memberID, request.alarm)
        alarm_key = _u64(request.memberID) + bytes([request.alarm])
        if request.action == AlarmRequest.ACTIVATE:
            if request.alarm == NONE:  # etcd raises no alarm of type NONE
                return response
            self.alarms.add(member_alarm)
            txn.put(alarm_key, b"", db=self._alarms_db)
            response.alarms.add(memberID=request.memberID, alarm=request.alarm)
        elif request.action == AlarmRequest.DEACTIVATE:
            if member_alarm in self.alarms:
                self.alarms.discard(member_alarm)
                txn.delete(alarm_key, db=self._alarms_db)
                response.alarms.add(memberID=request.memberID, alarm=request.alarm)
        else:
            response.alarms.extend(AlarmMember(memberID=m, alarm=a) for m, a in sorted(self.alarms))
        self._alarms_changed()
        return response

    def _alarms_changed(self) -> None:
        kinds = {alarm for _, alarm in self.alarms}
        self.space_exceeded, self.corrupt = NOSPACE in kinds, CORRUPT in kinds

    # --- compaction --------------------------------------------------------------------

    @property
    def compaction_pending(self) -> bool:
        return self._compact_finished < self.compacted_revision

    def compact_step(self, max_records: int = COMPACT_BATCH_RECORDS) -> bool:
        """Remove up to max_records superseded records; True once the compaction is done."""
        if not self.compaction_pending:
            return True
        target = self.compacted_revision
        kept = self._index.visible_revisions(target)
        end = _last_key_of(target)
        removed = 0
        done = False
        with self._env.begin(write=True) as txn:
            cursor = txn.cursor(db=self._history)
            cursor.set_range(self._compact_resume_key)
            while removed < max_records:
                revision_key = cursor.key()  # empty once past the last record
                if not revision_key or revision_key > end:
                    done = True
                    break
                if revision_key in kept:
                    cursor.next()
                else:
                    cursor.delete()  # moves to the next record
                    removed += 1
            self._compact_resume_key = cursor.key() or end
            if done:
                self._compact_finished = target
                txn.put(_META_COMPACT_FINISHED, _u64(target), db=self._meta)
        self._committed_since_durable = True
        return done

    # --- restoring a snapshot --------------------------------------------------------------

    def bulk_load(self, pages: Iterable[Sequence[KeyValue]], revision: int) -> int:
        """Fill an empty store with the records of a snapshot taken at `revision`; the keys loaded.

        Each record keeps its create and mod revisions, version and lease (attached as a
        put attaches it); sub revisions follow the load order, so keys that share a mod
        revision stay distinct. The store ends at `revision`, compacted there: the history
        before it is not in a snapshot, so reads and watches below it are refused as
        etcd refuses them after a compaction. One write transaction per page; a load
        that fails leaves the pages before it, and the store is to be discarded.
        """
        loaded = 0

        def changes(page: Sequence[KeyValue]):
            nonlocal loaded
            for kv in page:
                if not 0 < kv.create_revision <= kv.mod_revision <= revision or kv.version < 1:
                    raise ValueError(f"key {kv.key!r}: revisions {kv.create_revision}/{kv.mod_revision} "
                                     f"(version {kv.version}) do not fit a snapshot at {revision}")
                yield kv.mod_revision, loaded, False, kv
                loaded += 1

        self._fill((changes(page) for page in pages), revision, compacted=revision, compaction_done=True)
        return loaded

    def load_history(self, pages: Iterable[Sequence[tuple[bytes, KeyValue]]], revision: int, compacted: int) -> int:
        """Fill an empty store with history as etcd's backend keeps it; the records loaded.

        `pages` hold (revision key, KeyValue) in revision order, as etcd's `key` bucket
        does: a put's record as it was written, a tombstone's with only its key (its mod
        revision is set here, as this store keeps tombstones). The store ends at
        `revision` and compacted at `compacted` (0: never); history below it that etcd
        had not removed yet is removed by compaction steps, as after any compaction.
        Failure leaves a store to be discarded, as bulk_load's does.
        """
        loaded = 0

        def changes(page):
            nonlocal loaded
            for revision_key, kv in page:
                main, sub, tombstone = codec.decode_revision(revision_key)
                if tombstone:
                    kv = KeyValue(key=kv.key, mod_revision=main)
                elif not (0 < kv.create_revision <= kv.mod_revision == main <= revision and kv.version >= 1):
                    raise ValueError(f"key {kv.key!r} at revision {main}: revisions {kv.create_revision}/"
                                     f"{kv.mod_revision} (version {kv.version}) are not a put's at {main}")
                yield main, sub, tombstone, kv
                loaded += 1

        self._fill((changes(page) for page in pages), revision, compacted=compacted, compaction_done=False)
        return loaded

    def _fill(self, pages, revision: int, compacted: int, compaction_done: bool) -> None:
        """Write pages of changes (main, sub, tombstone, KeyValue), in revision order per key, into
        an empty store, then its revision and its compaction, done or still to do."""
        if self.applied_index or self.revision != FIRST_REVISION or len(self._index):
            raise StoreInvariantError(f"loading a snapshot needs an empty store; {self.path} is not")
        leases: dict[bytes, int] = {}  # key -> the lease its latest record has
        try:
            for page in pages:
                with self._env.begin(write=True) as txn:
                    for main, sub, tombstone, kv in page:
                        txn.put(codec.encode_revision(main, sub, tombstone), codec.encode_key_value(
                            kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease),
                            db=self._history)
                        self._index.add(kv.key, main, sub, tombstone=tombstone)
                        previous = leases.pop(kv.key, 0)
                        if previous and previous != kv.lease:
                            txn.delete(_lease_prefix(previous) + kv.key, db=self._leases)
                        if kv.lease:
                            leases[kv.key] = kv.lease
                            txn.put(_lease_prefix(kv.lease) + kv.key, b"", db=self._leases)
                self._committed_since_durable = True
        except BaseException:
            self._load()  # the page's transaction was aborted: memory must match disk again
            raise
        with self._env.begin(write=True) as txn:
            for name, value in ((_META_REVISION, revision), (_META_COMPACTED, compacted),
                                (_META_COMPACT_FINISHED, compacted if compaction_done else 0)):
                txn.put(name, _u64(value), db=self._meta)
        self._committed_since_durable = True
        self.make_durable()
        self._load()

    def hash_kv(self, revision: int = 0) -> tuple[int, int]:
        """(CRC32C over the history readable at `revision`, compacted revision).

        Replicas with equal histories give equal hashes, however far their
        physical compaction has got.
        """
        at = revision or self.revision
        if at > self.revision:
            raise errors.FutureRevision()
        if at < self.compacted_revision:
            raise errors.Compacted()
        kept = self._index.visible_revisions(self.compacted_revision) if self.compacted_revision else set()
        compacted_end = _last_key_of(self.compacted_revision)
        end = _last_key_of(at)
        checksum = 0
        with self._env.begin() as txn:
            for revision_key, record in txn.cursor(db=self._history):
                if revision_key > end:
                    break
                if revision_key <= compacted_end and revision_key not in kept:
                    continue  # superseded, whether or not compact_step has removed it yet
                checksum = crc.crc32c(record, crc.crc32c(revision_key, checksum))
        return checksum, self.compacted_revision

    def members(self) -> dict[int, bytes]:
        """The group members' records, by member id."""
        with self._env.begin() as txn:
            return {_U64.unpack(key)[0]: value for key, value in txn.cursor(db=self._members)}

    def hash(self) -> int:
        """CRC32C over every record of the key space's databases (etcd's Hash).

        Unlike hash_kv it sees the raw records, so it also differs while one
        replica's physical compaction is further along than another's.
        """
        checksum = 0
        with self._env.begin() as txn:
            for name, db in ((b"history", self._history), (b"leases", self._leases),
                             (b"revoked", self._revoked), (b"alarms", self._alarms_db)):
                checksum = crc.crc32c(name, checksum)
                for key, value in txn.cursor(db=db):
                    checksum = crc.crc32c(value, crc.crc32c(key, checksum))
        return checksum

    def db_size_bytes(self) -> int:
        """The database file's size: what the disk holds."""
        return os.path.getsize(self.path / "data.mdb")

    def db_size_in_use_bytes(self) -> int:
        """The pages holding data; the rest of the file is free space a defragment gives back."""
        pages = 2  # LMDB's two meta pages
        with self._env.begin() as txn:
            for db in (None, self._history, self._meta, self._leases, self._revoked, self._alarms_db,
                       self._members):
                stat = txn.stat(db) if db is not None else self._env.stat()
                pages += stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
        return pages * self._env.stat()["psize"]

    def quota_exceeded(self, incoming_bytes: int = 0) -> bool:
        """Whether a write of about `incoming_bytes` would pass the quota (checked before proposing).

        Uses the pages in use as of the last durable point (every `batch_interval_seconds` under
        writes) plus the records applied since, so the check costs nothing per request; the
        pages are counted exactly before a write is refused.
        """
        if self._in_use_bytes + incoming_bytes <= self.quota_bytes:
            return False
        self._in_use_bytes = self.db_size_in_use_bytes()
        return self._in_use_bytes + incoming_bytes > self.quota_bytes

    def defragment(self) -> None:
        """Rewrite the database compactly, giving free pages back to the file system."""
        copy = self.path.with_name(self.path.name + ".defrag")
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        self._env.copy(str(copy), compact=True)
        fd = os.open(copy / "data.mdb", os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._retire_durable_point()
        self._close_environment()
        os.replace(copy / "data.mdb", self.path / "data.mdb")
        fsync_directory(self.path)
        shutil.rmtree(copy)
        self._open_environment()

    def copy_bytes(self) -> tuple[int, bytes]:
        """(applied raft index, a compact copy of the database as of it): a snapshot to send."""
        with tempfile.TemporaryFile(dir=self.path) as copy:
            applied_index = self.applied_index  # one thread applies; the copy sees this state
            self._env.copyfd(copy.fileno(), compact=True)
            copy.seek(0)
            return applied_index, copy.read()

    def replace_database(self, database_file: Path) -> None:
        """Make `database_file` (a copy from copy_bytes, made durable) this store's database."""
        self._retire_durable_point()
        self._close_environment()
        os.replace(database_file, self.path / "data.mdb")
        fsync_directory(self.path)
        self._open_environment()

    # --- durability (see the module's docstring) ----------------------------------------------

    def advance_durability(self) -> Future | None:
        """Adopt a durable point once flushed; take the next when one is due. Returns the flush under way.

        Called from the thread that applies, which alone opens and ends the pins.
        A failed flush raises here: the replica must restart from disk.
        """
        if self._flushing is not None:
            flushed, point, pin = self._flushing
            if not flushed.done():
                return flushed
            self._flushing = None
            flushed.result()
            self._adopt(point, pin)
        if not self._committed_since_durable:
            return None
        behind = self.applied_index - self.durable_applied_index
        if behind < self.batch_limit_entries and time.monotonic() - self._flush_started < self.batch_interval_seconds:
            return None
        point, pin = self._take_durable_point()
        self._flushing = (self._flusher.submit(self._flush, point), point, pin)
        return self._flushing[0]

    def make_durable(self) -> None:
        """Flush and record a durable point of everything committed, here and now."""
        if self._flushing is not None:
            flushed, point, pin = self._flushing
            self._flushing = None
            flushed.result()
            self._adopt(point, pin)
        if self._committed_since_durable:
            point, pin = self._take_durable_point()
            self._flush(point)
            self._adopt(point, pin)

    def _take_durable_point(self) -> tuple[DurablePoint, lmdb.Transaction]:
        """The state as last committed, pinned by a reader, for a flush to make durable."""
        pin = self._env.begin()
        page_bytes = self._env.stat()["psize"]
        point = DurablePoint(pin.id(), self.applied_index, os.pread(self._data_fd, 2 * page_bytes, 0))
        point.check_meta_pages(self.path / "data.mdb")
        self._committed_since_durable = False
        self._flush_started = time.monotonic()
        self._in_use_bytes = self.db_size_in_use_bytes()
        return point, pin

    def _flush(self, point: DurablePoint) -> None:
        """On the flusher's thread (or, from make_durable, the caller's): sync the file, then record the point."""
        self._env.sync(True)
        failpoint(STORE_SYNCED)
        write_file_durably(self.path / DURABLE_POINT_FILE, point.encode())
        failpoint(STORE_DURABLE)

    def _adopt(self, point: DurablePoint, pin: lmdb.Transaction) -> None:
        """The recorded point is the one a restart opens at: the older pin may go."""
        if self._durable_pin is not None:
            self._durable_pin.abort()
        self._durable, self._durable_pin = point, pin
        self.durable_applied_index = point.applied_index

    def _retire_durable_point(self) -> None:
        """Before the file is replaced: flush it whole, then drop the record that describes it."""
        self.make_durable()
        (self.path / DURABLE_POINT_FILE).unlink()
        fsync_directory(self.path)

    def _grow_map(self) -> None:
        """Double the map after an aborted write (memory is reloaded to match the disk first).

        The pin is taken again after the remap, at the durable point made just before it.
        """
        self._load()
        self.make_durable()
        self._durable_pin.abort()
        self.map_size_bytes *= 2
        self._env.set_mapsize(self.map_size_bytes)
        self._durable_pin = self._env.begin()
        if self._durable_pin.id() != self._durable.txnid:
            raise StoreInvariantError(f"{self.path}: a write transaction ran while the map grew")


class BelowMovedHistory(Exception):
    """The change feed asked from below the floor of a range that moved in: the history before
    `floor` stayed in the group the range came from."""

    def __init__(self, floor: int):
        super().__init__(f"history below revision {floor} of a range that moved in is in another group")
        self.floor = floor


class StoreInvariantError(Exception):
    """The store's memory and disk disagree: the replica must restart from disk."""


def _ranges_meet(key: bytes, range_end: bytes, start: bytes, end: bytes) -> bool:
    """Whether a request's (key, range_end) and a range [start, end) (end b"": no end) share a key."""
    if not range_end:
        return start <= key and (not end or key < end)
    return (range_end == b"\0" or start < range_end) and (not end or key < end)


def _passes_filters(kv: KeyValue, request: RangeRequest) -> bool:
    return not (
        (request.min_mod_revision and kv.mod_revision < request.min_mod_revision)
        or (request.max_mod_revision and kv.mod_revision > request.max_mod_revision)
        or (request.min_create_revision and kv.create_revision < request.min_create_revision)
        or (request.max_create_revision and kv.create_revision > request.max_create_revision)
    )




class _Change:
    """The changes one request makes: they share a main revision and count sub revisions."""

    def __init__(self, store: MvccStore, txn, floor: int, events: list[ChangeEvent], unknown_leases=frozenset()):
        self.store = store
        self.txn = txn
        self.unknown_leases = unknown_leases
        self.main = max(store.revision + 1, floor)
        self.sub = 0
        self.events = events

    @property
    def read_revision(self) -> int:
        """The revision reads inside the request are at: its own changes included.

        Before any change that is main - 1, which the floor makes the store's
        revision (see finish), so a read here is at the revision etcd would name.
        """
        return self.main if self.sub else self.main - 1

    def finish(self) -> None:
        # A request that changes nothing still lifts the store to its floor - 1: the
        # router told its client about revisions up to there, so nothing may be written
        # at or below them later (ARCHITECTURE decision 3).
        self.store.revision = self.main if self.sub else max(self.store.revision, self.main - 1)

    def _next_revision(self) -> tuple[int, int]:
        revision = (self.main, self.sub)
        self.sub += 1
        return revision

    def put(self, request: PutRequest) -> PutResponse:
        main, sub = self._next_revision()
        return _put_response(request, self.store._write_put(self.txn, request, main, sub, self.events))

    def delete_range(self, request: DeleteRangeRequest) -> DeleteRangeResponse:
        index = self.store._index
        if request.range_end:
            keys = [key for key, _ in index.range(request.key, _range_end(request.range_end))]
        else:
            keys = [request.key] if index.get(request.key) is not None else []
        response = DeleteRangeResponse(deleted=len(keys))
        for key in keys:
            previous_bytes = self._delete_key(key)
            if request.prev_kv:
                response.prev_kvs.add().MergeFromString(previous_bytes)
        return response

    def _delete_key(self, key: bytes) -> bytes:
        """Delete a present key; returns the record it had."""
        store, txn = self.store, self.txn
        previous_bytes = store._record_bytes(txn, store._index.get(key))
        lease = codec.decode_key_value(previous_bytes)[LEASE]
        main, sub = self._next_revision()
        tombstone = codec.encode_key_value(key, 0, main, 0, b"", 0)
        txn.put(codec.encode_revision(main, sub, tombstone=True), tombstone, db=store._history)
        store._index.add(key, main, sub, tombstone=True)
        if lease:
            txn.delete(_lease_prefix(lease) + key, db=store._leases)
        self.events.append(ChangeEvent(Event.DELETE, main, key, tombstone, previous_bytes))
        return previous_bytes

    def _next_moved_revision(self) -> tuple[int, int]:
        main, sub = self._next_revision()
        return main, MOVED_SUB_BASE + sub

    def _write_moved(self, kv: KeyValue) -> None:
        """One record of a range moving in, as the source group had it."""
        store, txn = self.store, self.txn
        previous_revision = store._index.get(kv.key)
        previous_lease = codec.decode_key_value(store._record_bytes(txn, previous_revision))[LEASE] \
            if previous_revision is not None else 0
        main, sub = self._next_moved_revision()
        txn.put(codec.encode_revision(main, sub), codec.encode_key_value(
            kv.key, kv.create_revision, kv.mod_revision, kv.version, kv.value, kv.lease), db=store._history)
        store._index.add(kv.key, main, sub)
        if previous_lease != kv.lease:
            if previous_lease:
                txn.delete(_lease_prefix(previous_lease) + kv.key, db=store._leases)
            if kv.lease:
                txn.put(_lease_prefix(kv.lease) + kv.key, b"", db=store._leases)

    def _drop_moved(self, key: bytes) -> None:
        """A key of a moving range deleted with no event (a tombstone with a moved sub revision)."""
        store, txn = self.store, self.txn
        revision = store._index.get(key)
        if revision is None:
            return
        lease = codec.decode_key_value(store._record_bytes(txn, revision))[LEASE]
        main, sub = self._next_moved_revision()
        txn.put(codec.encode_revision(main, sub, tombstone=True), codec.encode_key_value(key, 0, main, 0, b"", 0),
                db=store._history)
        store._index.add(key, main, sub, tombstone=True)
        if lease:
            txn.delete(_lease_prefix(lease) + key, db=store._leases)

    def import_keys(self, request: ImportKeys) -> None:
        store = self.store
        if store.space_exceeded and request.puts:
            raise errors.NoSpace()
        for kv in request.puts:
            if not key_in_range(kv.key, request.key, request.range_end):
                raise StoreInvariantError(f"import of {kv.key!r} outside [{request.key!r}, {request.range_end!r})")
            self._write_moved(kv)
        for key in request.deletes:
            self._drop_moved(key)
        if request.final:
            floor = self.main if self.sub else max(store.revision, self.main - 1)
            end = b"" if request.range_end == b"\0" else request.range_end  # b"": to the end of the keyspace
            self.txn.put(_META_RANGE_FLOOR + request.key, _u64(floor) + end, db=store._meta)
            store._range_floors = [entry for entry in store._range_floors if entry[0] != request.key]
            store._range_floors.append((request.key, end, floor))

    def drop_range(self, request: DropRange) -> None:
        for key, _ in self.store._index.range(request.key, _range_end(request.range_end)):
            self._drop_moved(key)

    def checked_put(self, request: PutRequest) -> PutResponse:
        self.store._check_put(self.txn, request, self.unknown_leases)
        return self.put(request)

    def compact(self, request: CompactionRequest) -> CompactionResponse:
        return self.store._compact(self.txn, request.revision)

    def alarm(self, request: AlarmRequest) -> AlarmResponse:
        return self.store._alarm(self.txn, request)

    def raise_revision(self, request: RaiseRevision) -> None:
        self.store.revision = max(self.store.revision, request.revision)

    def regrant_lease(self, request: RegrantLease) -> None:
        self.txn.delete(_lease_prefix(request.lease_id), db=self.store._revoked)

    def set_member(self, request: SetMember) -> None:
        self.txn.put(_u64(request.member_id), request.record, db=self.store._members)

    def remove_member(self, request: RemoveMember) -> None:
        self.txn.delete(_u64(request.member_id), db=self.store._members)

    def revoke_lease(self, request: RevokeLease) -> None:
        store, txn = self.store, self.txn
        prefix = _lease_prefix(request.lease_id)
        cursor = txn.cursor(db=store._leases)
        for key in _keys_under(cursor, prefix) if cursor.set_range(prefix) else []:
            self._delete_key(key)
        txn.put(prefix, b"", db=store._revoked)

    def transaction(self, request: TxnRequest) -> TxnResponse:
        # Which branch runs, at every nesting level, is decided on the state
        # before the transaction, and every operation on that path is checked
        # before any runs: a transaction fails whole or not at all.
        if self.store.space_exceeded and any(
            op.WhichOneof("request") == "request_put" for op in (*request.success, *request.failure)
        ):
            raise errors.NoSpace()
        path = self._branch_path(request)
        self._check_path(request, path)
        response = TxnResponse()
        self._run(request, path, response)
        return response

    def _branch_path(self, request: TxnRequest) -> list[bool]:
        """Depth-first, the outcome of each transaction that would run."""
        succeeded = all(self._compare(compare) for compare in request.compare)
        path = [succeeded]
        for op in request.success if succeeded else request.failure:
            if op.WhichOneof("request") == "request_txn":
                path += self._branch_path(op.request_txn)
        return path

    def _check_path(self, request: TxnRequest, path: list[bool], position: int = 0) -> int:
        succeeded = path[position]
        position += 1
        for op in request.success if succeeded else request.failure:
            kind = op.WhichOneof("request")
            if kind == "request_put":
                self.store._check_put(self.txn, op.request_put, self.unknown_leases)
            elif kind == "request_range":
                self._check_range_revision(op.request_range)
            elif kind == "request_txn":
                position = self._check_path(op.request_txn, path, position)
        return position

    def _check_range_revision(self, request: RangeRequest) -> None:
        if request.revision > self.store.revision:
            raise errors.FutureRevision()
        if 0 < request.revision < self.store.compacted_revision or (
                0 < request.revision and self.store.below_range_floor(
                    request.key, request.range_end, request.revision)):
            raise errors.Compacted()

    def _run(self, request: TxnRequest, path: list[bool], response: TxnResponse, position: int = 0) -> int:
        response.succeeded = path[position]
        position += 1
        for op in request.success if response.succeeded else request.failure:
            result = response.responses.add()
            kind = op.WhichOneof("request")
            if kind == "request_range":
                result.response_range.CopyFrom(
                    self.store._range(self.txn, op.request_range, self.read_revision)
                )
            elif kind == "request_put":
                result.response_put.CopyFrom(self.put(op.request_put))
                result.response_put.header.revision = self.main  # as etcd: the revision it wrote
            elif kind == "request_delete_range":
                result.response_delete_range.CopyFrom(self.delete_range(op.request_delete_range))
                # As etcd: the transaction's new revision once anything changed, else the current one.
                result.response_delete_range.header.revision = self.read_revision
            else:
                result.response_txn.header.SetInParent()  # etcd sends a nested answer an empty header
                position = self._run(op.request_txn, path, result.response_txn, position)
        return position

    def _compare(self, compare: Compare) -> bool:
        store = self.store
        if compare.range_end:
            end = _range_end(compare.range_end)
            revisions = [revision for _, revision in store._index.range(compare.key, end)]
        else:
            revision = store._index.get(compare.key)
            revisions = [] if revision is None else [revision]
        if not revisions:
            # A missing key compares as a zero record, but never equal on value:
            # an empty value and no value cannot be told apart on the wire.
            return compare.target != Compare.VALUE and _compare_record(compare, _ZERO_RECORD)
        return all(
            _compare_record(compare, codec.decode_key_value(store._record_bytes(self.txn, revision)))
            for revision in revisions
        )


# What applying each kind of request does, and its response (None: the answer is a header alone).
_APPLY = {
    PutRequest: _Change.checked_put,
    DeleteRangeRequest: _Change.delete_range,
    TxnRequest: _Change.transaction,
    CompactionRequest: _Change.compact,
    AlarmRequest: _Change.alarm,
    RaiseRevision: _Change.raise_revision,
    RevokeLease: _Change.revoke_lease,
    RegrantLease: _Change.regrant_lease,
    SetMember: _Change.set_member,
    RemoveMember: _Change.remove_member,
    ImportKeys: _Change.import_keys,
    DropRange: _Change.drop_range,
}


def _missing_record(revision_key: bytes) -> StoreInvariantError:
    main, sub, _ = codec.decode_revision(revision_key)
    return StoreInvariantError(f"the index points at revision {main}.{sub}, which history lacks")


def _put_response(request: PutRequest | PlainPut, previous_bytes: bytes | None) -> PutResponse:
    response = PutResponse()
    if request.prev_kv and previous_bytes is not None:
        response.prev_kv.MergeFromString(previous_bytes)
    return response


def _writes_data(request) -> bool:
    """What etcd refuses while a CORRUPT alarm is raised: every client write, a transaction
    unless all its operations are ranges (etcd serves those as reads), and a compaction."""
    if isinstance(request, TxnRequest):
        return any(op.WhichOneof("request") != "request_range" for op in (*request.success, *request.failure))
    return isinstance(request, (PutRequest, DeleteRangeRequest, CompactionRequest))


_ZERO_RECORD = (b"", 0, 0, 0, b"", 0)
# Where each compare target sits in a record, and the Compare field holding the operand.
_COMPARE_FIELDS = {
    Compare.VERSION: (VERSION, "version"),
    Compare.CREATE: (CREATE, "create_revision"),
    Compare.MOD: (MOD, "mod_revision"),
    Compare.VALUE: (VALUE, "value"),
    Compare.LEASE: (LEASE, "lease"),
}


def _compare_record(compare: Compare, record: tuple) -> bool:
    position, operand = _COMPARE_FIELDS[compare.target]
    actual, expected = record[position], getattr(compare, operand)
    if compare.result == Compare.EQUAL:
        return actual == expected
    if compare.result == Compare.NOT_EQUAL:
        return actual != expected
    if compare.result == Compare.GREATER:
        return actual > expected
    return actual < expected
