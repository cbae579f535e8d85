"""The write-ahead log: raft's entries, hard state and snapshot markers, durable.

Layout. A directory of segment files named `{seq:016x}-{first_index:016x}.wal`,
each preallocated to `segment_bytes` with zeros and holding frames (see
native/walframe.pyx: 16-byte header with its own checksum, payload checksum,
8-byte alignment). A segment starts with a SEGMENT record (magic, seq, first
index) followed by the hard state and the latest snapshot marker at the time it
was opened, so older segments are never needed for those. Record payloads:

    SEGMENT     magic "TSRWAL01" | seq u64 | first_index u64
    ENTRIES     a batch from native.codec.encode_entries
    HARD_STATE  term u64 | vote u64 | commit u64
    SNAPSHOT    index u64 | term u64 | reset u8 | voters u32 | learners u32 | ids u64...

(integers little-endian). A SNAPSHOT with `reset` marks a snapshot received
from the leader: the log before it is gone. Without it, a snapshot this
replica took of its own state: entries after it remain valid.

Writing. `append` encodes a whole batch (entries and hard state) into one
buffer, writes it with one pwrite and makes it durable with one fdatasync
(`sync=False` leaves the fdatasync to a later `sync()`, for callers that batch
further). Only then is the in-memory log (`self.storage`, a MemoryStorage the
raft core reads) changed. A segment is rolled when a batch would not fit: the
old one is synced first, the new one is built under a temporary name and
renamed into place once its head is durable.

Opening replays every segment in order. Decoding a segment stops at the first
frame that is not whole and valid. If a whole valid frame stands anywhere after
that point, what stopped the decoder is damage in the middle of the log and the
open fails with WalCorruptionError naming the file and offset. Otherwise, in
the last segment, it is a torn tail (a write cut short by a crash): the bytes
from there on are zeroed, the event is logged and kept in `torn_tail`, and
appending continues from there. In any earlier segment (which was synced
before the next one was created) it is corruption. The rule errs on the side
of refusing to start: a crash that lost an early frame of an unsynced write but
kept a later one is reported, not silently cut.

Replay applies records in order to a MemoryStorage: the latest hard state
wins; the latest snapshot marker sets the log's starting point, entries at or
below it are dropped, entries written before a reset marker are ignored, and a
batch that overlaps the log replaces its suffix as raft requires. A batch that
would leave a gap is corruption.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

from native import codec, walframe
from shards import fault_control
from shards.durable import fsync_directory
from shards.entry_encoding import encode_entries
from shards.raft.storage import (
    ConfState,
    Entry,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMeta,
    SnapshotOutOfDateError,
    UnavailableError,
)

log = logging.getLogger("tessera.wal")

SEGMENT_BYTES_DEFAULT = 64 * 1024 * 1024  # etcd's segment size
SEGMENT_MAGIC = b"TSRWAL01"

RECORD_SEGMENT = 1
RECORD_ENTRIES = 2
RECORD_HARD_STATE = 3
RECORD_SNAPSHOT = 4

_SEGMENT_HEAD = struct.Struct("<8sQQ")
_HARD_STATE = struct.Struct("<QQQ")
_SNAPSHOT_HEAD = struct.Struct("<QQBII")
_SEGMENT_NAME = re.compile(r"^([0-9a-f]{16})-([0-9a-f]{16})\.wal$")
_TEMP_SUFFIX = ".tmp"


class WalError(Exception):
    """Base of the write-ahead log's errors."""


class WalCorruptionError(WalError):
    """The log is damaged somewhere other than a torn tail; the replica must not start."""

    def __init__(self, path: Path, offset: int, reason: str):
        super().__init__(f"WAL corrupt: {path} at byte offset {offset}: {reason}")
        self.path = path
        self.offset = offset
        self.reason = reason


class TornTail(NamedTuple):
    """Where a crash cut the last write short, and what was found there."""

    path: Path
    offset: int
    reason: str


@dataclass
class _Segment:
    seq: int
    first_index: int
    path: Path


def segment_name(seq: int, first_index: int) -> str:
    return f"{seq:016x}-{first_index:016x}.wal"


def encode_hard_state(hard_state: HardState) -> bytes:
    return _HARD_STATE.pack(*hard_state)


def decode_hard_state(payload: bytes) -> HardState:
    return HardState(*_HARD_STATE.unpack(payload))


def encode_snapshot_marker(meta: SnapshotMeta, reset: bool) -> bytes:
    voters, learners = meta.conf_state
    head = _SNAPSHOT_HEAD.pack(meta.index, meta.term, reset, len(voters), len(learners))
    return head + struct.pack(f"<{len(voters) + len(learners)}Q", *voters, *learners)


def decode_snapshot_marker(payload: bytes) -> tuple[SnapshotMeta, bool]:
    index, term, reset, voter_count, learner_count = _SNAPSHOT_HEAD.unpack_from(payload)
    ids = struct.unpack_from(f"<{voter_count + learner_count}Q", payload, _SNAPSHOT_HEAD.size)
    if _SNAPSHOT_HEAD.size + 8 * len(ids) != len(payload):
        raise ValueError(f"snapshot marker of {len(payload)} bytes has trailing data")
    conf_state = ConfState(voters=ids[:voter_count], learners=ids[voter_count:])
    return SnapshotMeta(index, term, conf_state), bool(reset)


def _preallocate(fd: int, size: int) -> None:
    """Reserve `size` zero bytes; a filesystem without fallocate gets a sparse file."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError:
        os.ftruncate(fd, max(size, os.fstat(fd).st_size))


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


class WriteAheadLog:
    """One replica's log on disk; `storage` is its in-memory view for the raft core."""

    def __init__(self, directory: Path, segment_bytes: int):
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.storage = MemoryStorage()
        self.torn_tail: TornTail | None = None
        self._segments: list[_Segment] = []
        self._fd = -1
        self._offset = 0  # where the next frame of the last segment goes
        self._head_end = 0  # where the last segment's head records end
        self._unsynced = False
        self.fsync_count = 0  # fdatasyncs of appended data: shows whether batching works
        # Told each fdatasync's duration in seconds, on the thread that ran it (for a latency histogram).
        self.on_fsync: Callable[[float], None] = lambda seconds: None
        self._faults = fault_control.from_environment()  # None outside chaos runs

    # --- opening -----------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike, *, segment_bytes: int = SEGMENT_BYTES_DEFAULT):
        """Open (creating if need be) the log in `directory` and replay it."""
        if segment_bytes < 4096:
            raise ValueError(f"segment_bytes must be at least 4096, not {segment_bytes}")
        wal = cls(Path(directory), segment_bytes)
        wal.directory.mkdir(parents=True, exist_ok=True)
        wal._remove_temporary_segments()
        wal._segments = wal._list_segments()
        if wal._segments:
            wal._replay()
        else:
            wal._start_segment(seq=0, first_index=1)
        return wal

    def _remove_temporary_segments(self) -> None:
        for path in self.directory.glob("*" + _TEMP_SUFFIX):
            log.info("removing unfinished segment %s", path)
            path.unlink()

    def _list_segments(self) -> list[_Segment]:
        segments = []
        for path in sorted(self.directory.iterdir()):
            match = _SEGMENT_NAME.match(path.name)
            if match:
                segments.append(_Segment(int(match[1], 16), int(match[2], 16), path))
        for previous, segment in zip(segments, segments[1:]):
            if segment.seq != previous.seq + 1:
                raise WalCorruptionError(
                    segment.path, 0, f"segment {previous.seq + 1:016x} is missing before it"
                )
        return segments

    def _replay(self) -> None:
        records = []
        for position, segment in enumerate(self._segments):
            is_last = position == len(self._segments) - 1
            frames, stop = self._read_segment(segment, is_last)
            records += [self._decode_record(segment, *frame) for frame in frames[1:]]
        self._apply_records(records)
        # Appending continues in the last segment, after its last whole frame.
        self._fd = os.open(self._segments[-1].path, os.O_RDWR)
        self._offset = stop
        self._head_end = frames[3][1] if len(frames) > 3 else stop

    @staticmethod
    def _decode_record(segment: _Segment, record_type: int, offset: int, payload: bytes):
        """(type, decoded payload, segment, offset) of one replayed frame."""
        try:
            if record_type == RECORD_ENTRIES:
                value = codec.decode_entries(payload, Entry)
            elif record_type == RECORD_HARD_STATE:
                value = decode_hard_state(payload)
            elif record_type == RECORD_SNAPSHOT:
                value = decode_snapshot_marker(payload)
            else:
                raise ValueError(f"unknown record type {record_type}")
        except (ValueError, struct.error) as error:  # checksummed, yet not what we write
            raise WalCorruptionError(segment.path, offset, f"undecodable record: {error}") from None
        return record_type, value, segment, offset

    def _read_segment(self, segment: _Segment, is_last: bool) -> tuple[list, int]:
        """The segment's whole valid frames (its header first) and where they end."""
        data = segment.path.read_bytes()
        frames, stop, reason = walframe.decode_frames(data)
        why = walframe.STOP_REASONS[reason]
        if stop < len(data) and data.count(0, stop) != len(data) - stop:
            later = walframe.find_valid_frame(data, stop)
            if later >= 0:
                raise WalCorruptionError(
                    segment.path, stop, f"{why} frame, yet a valid frame follows at {later}"
                )
            if not is_last:
                raise WalCorruptionError(segment.path, stop, f"{why} frame in a closed segment")
            self._cut_torn_tail(segment, stop, why)
        # A segment gets its name only once its head is durable (see _start_segment).
        if not frames or frames[0][0] != RECORD_SEGMENT:
            raise WalCorruptionError(segment.path, 0, "segment does not start with its header")
        magic, seq, first_index = _SEGMENT_HEAD.unpack(frames[0][2])
        if magic != SEGMENT_MAGIC or (seq, first_index) != (segment.seq, segment.first_index):
            raise WalCorruptionError(
                segment.path, 0, f"header says {magic!r} seq {seq} first index {first_index}"
            )
        return frames, stop

    def _cut_torn_tail(self, segment: _Segment, offset: int, why: str) -> None:
        self.torn_tail = TornTail(segment.path, offset, why)
        log.warning("WAL torn tail in %s at byte offset %d (%s): cut back to there",
                    segment.path, offset, why)
        fd = os.open(segment.path, os.O_RDWR)
        try:
            os.ftruncate(fd, offset)
            _preallocate(fd, self.segment_bytes)
            os.fsync(fd)
        finally:
            os.close(fd)

    def _apply_records(self, records: list) -> None:
        # The latest snapshot marker is where the log starts; a reset marker
        # voids every batch written before it.
        latest_snapshot = None
        reset_at = -1
        for position, (record_type, value, _, _) in enumerate(records):
            if record_type == RECORD_SNAPSHOT:
                latest_snapshot, reset = value
                if reset:
                    reset_at = position
        storage = self.storage
        if latest_snapshot is not None:
            storage.apply_snapshot(Snapshot(latest_snapshot))
        for position, (record_type, value, segment, offset) in enumerate(records):
            if record_type == RECORD_HARD_STATE:
                storage.set_hard_state(value)
            elif record_type == RECORD_ENTRIES and position > reset_at:
                try:
                    storage.append(value)
                except UnavailableError as gap:
                    raise WalCorruptionError(segment.path, offset, str(gap)) from None

    # --- segments ------------------------------------------------------------------

    def _start_segment(self, seq: int, first_index: int) -> None:
        """Create, fill the head of, and switch to a new last segment."""
        path = self.directory / segment_name(seq, first_index)
        temporary = path.with_name(path.name + _TEMP_SUFFIX)
        head = walframe.encode_frames([
            (RECORD_SEGMENT, _SEGMENT_HEAD.pack(SEGMENT_MAGIC, seq, first_index)),
            (RECORD_HARD_STATE, encode_hard_state(self.storage.hard_state)),
            (RECORD_SNAPSHOT, encode_snapshot_marker(self.storage.snapshot().meta, reset=False)),
        ])
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _preallocate(fd, max(self.segment_bytes, len(head)))
            _pwrite_all(fd, head, 0)
            os.fsync(fd)
            os.rename(temporary, path)
            fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._offset = self._head_end = len(head)
        self._segments.append(_Segment(seq, first_index, path))

    def _roll(self, first_index: int) -> None:
        self.sync()
        self._start_segment(self._segments[-1].seq + 1, first_index)

    # --- writing -------------------------------------------------------------------

    def append(
        self, entries: Sequence[Entry], hard_state: HardState | None = None, *, sync: bool = True
    ) -> None:
        """Make entries and a hard state durable in one write, then add them to `storage`."""
        if entries and entries[0].index > self.storage.last_index() + 1:
            # Refused before anything is written: a durable gap would make the log unopenable.
            raise UnavailableError(
                f"appending at {entries[0].index} would leave a gap after {self.storage.last_index()}"
            )
        frames = []
        if entries:
            frames.append((RECORD_ENTRIES, encode_entries(entries)))
        if hard_state is not None and hard_state != self.storage.hard_state:
            frames.append((RECORD_HARD_STATE, encode_hard_state(hard_state)))
        if not frames:
            return
        next_index = entries[0].index if entries else self.storage.last_index() + 1
        self._write(walframe.encode_frames(frames), next_index, sync)
        if entries:
            self.storage.append(entries)
        if hard_state is not None:
            self.storage.set_hard_state(hard_state)

    def save_snapshot(self, snapshot: Snapshot, *, sync: bool = True) -> None:
        """Install a snapshot received from the leader: it replaces the whole log."""
        self._write_snapshot_marker(snapshot.meta, reset=True, sync=sync)
        self.storage.apply_snapshot(snapshot)

    def create_snapshot(
        self, index: int, conf_state: ConfState, data: bytes, *,
        keep_entries: int = 0, sync: bool = True,
    ) -> Snapshot:
        """Record a snapshot of this replica's applied state at `index`.

        The in-memory log keeps `keep_entries` entries before the snapshot for
        followers that are a little behind (etcd keeps 5,000); a restart starts
        the log right after the snapshot.
        """
        if index <= self.storage.snapshot().meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than {self.storage.snapshot().meta.index}"
            )
        meta = SnapshotMeta(index, self.storage.term(index), conf_state)
        self._write_snapshot_marker(meta, reset=False, sync=sync)
        snapshot = self.storage.create_snapshot(index, conf_state, data)
        compact_to = index - keep_entries
        if compact_to >= self.storage.first_index():
            self.storage.compact(compact_to)
        return snapshot

    def _write_snapshot_marker(self, meta: SnapshotMeta, *, reset: bool, sync: bool) -> None:
        frame = walframe.encode_frame(RECORD_SNAPSHOT, encode_snapshot_marker(meta, reset))
        self._write(frame, self.storage.last_index() + 1, sync)

    def _write(self, data: bytes, next_index: int, sync: bool) -> None:
        if self._fd < 0:
            raise WalError("the write-ahead log is closed")
        if self._offset + len(data) > self.segment_bytes and self._offset > self._head_end:
            self._roll(next_index)
        _pwrite_all(self._fd, data, self._offset)
        self._offset += len(data)
        self._unsynced = True
        if sync:
            self.sync()

    def sync(self) -> None:
        """Make everything written so far durable (one fdatasync)."""
        if self._unsynced:
            started = time.perf_counter()
            if self._faults is not None:  # an injected slow disk, timed as part of the fdatasync
                time.sleep(self._faults.fsync_delay_seconds(os.path.realpath(self.directory)))
            os.fdatasync(self._fd)
            self.on_fsync(time.perf_counter() - started)
            self._unsynced = False
            self.fsync_count += 1

    # --- releasing -------------------------------------------------------------------

    def release_to(self, index: int) -> list[Path]:
        """Delete the segments whose entries are all at or below `index` (a snapshot's).

        The last segment always stays. Returns the paths removed, oldest first.
        """
        released = []
        while len(self._segments) > 1 and self._segments[1].first_index <= index + 1:
            segment = self._segments.pop(0)
            segment.path.unlink()
            released.append(segment.path)
        return released

    @property
    def segment_paths(self) -> list[Path]:
        return [segment.path for segment in self._segments]

    def close(self) -> None:
        if self._fd >= 0:
            self.sync()
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> WriteAheadLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
