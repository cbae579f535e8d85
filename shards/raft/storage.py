"""The log and persisted state as the raft core sees them.

The core never touches files. It reads its log, hard state and latest snapshot
through the `Storage` interface below, which two classes implement:
`MemoryStorage` (this module: the in-memory log, used directly by tests and
simulations) and the write-ahead log in `shards.wal`, which keeps a
`MemoryStorage` as its in-memory view and makes every change to it durable
first.

Indexing follows etcd's raft: the storage holds entries (snapshot.index,
last_index]; `term(i)` answers for i in [snapshot.index, last_index], so the
term of the entry just below the first one (the snapshot's) is always known.
"""

from __future__ import annotations

from enum import IntEnum
from functools import partial
from typing import NamedTuple, Protocol, Sequence


class EntryType(IntEnum):
    NORMAL = 0
    CONF_CHANGE = 1


class Entry(NamedTuple):
    """One raft log entry. A tuple, so the native codec encodes it directly."""

    term: int
    index: int
    type: int = EntryType.NORMAL
    data: bytes = b""


# Entry from a 4-tuple with no Python frame per entry (Entry._make is Python code): for map().
make_entry = partial(tuple.__new__, Entry)


class HardState(NamedTuple):
    """What raft must persist before it sends a message that depends on it."""

    term: int = 0
    vote: int = 0
    commit: int = 0


class ConfState(NamedTuple):
    """Group membership: voting members and learners, by member id."""

    voters: tuple[int, ...] = ()
    learners: tuple[int, ...] = ()


class SnapshotMeta(NamedTuple):
    index: int = 0
    term: int = 0
    conf_state: ConfState = ConfState()


class Snapshot(NamedTuple):
    meta: SnapshotMeta = SnapshotMeta()
    data: bytes = b""


# Bytes an entry costs beyond its payload when a batch is sized (the codec's
# per-entry header: term, index, type, length).
ENTRY_OVERHEAD_BYTES = 21


def entry_size(entry: Entry) -> int:
    return ENTRY_OVERHEAD_BYTES + len(entry.data)


class StorageError(Exception):
    """Base of the errors a storage raises for indexes it cannot serve."""


class CompactedError(StorageError):
    """The requested index is at or below the snapshot: only the snapshot has it."""


class UnavailableError(StorageError):
    """The requested index is above the last entry."""


class SnapshotOutOfDateError(StorageError):
    """A snapshot older than the one already held was offered."""


class Storage(Protocol):
    def initial_state(self) -> tuple[HardState, ConfState]: ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries [lo, hi); at least one when lo < hi, then up to max_bytes."""

    def term(self, index: int) -> int: ...

    def first_index(self) -> int: ...

    def last_index(self) -> int: ...

    def snapshot(self) -> Snapshot: ...


def limit_size(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of entries within max_bytes, but never empty."""
    if max_bytes is None or not entries:
        return entries
    total = 0
    for count, entry in enumerate(entries):
        total += entry_size(entry)
        if total > max_bytes and count > 0:
            return entries[:count]
    return entries


class MemoryStorage:
    """The log in memory: entries after the snapshot, the hard state, the snapshot.

    `_entries[0]` is a placeholder carrying the snapshot's index and term, so
    the entry with index i sits at position i - snapshot index.
    """

    def __init__(self) -> None:
        self._hard_state = HardState()
        self._snapshot = Snapshot()
        self._entries: list[Entry] = [Entry(term=0, index=0)]

    # --- Storage interface ---------------------------------------------------

    def initial_state(self) -> tuple[HardState, ConfState]:
        return self._hard_state, self._snapshot.meta.conf_state

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        offset = self._entries[0].index
        if lo <= offset:
            raise CompactedError(f"index {lo} is compacted (snapshot at {offset})")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1} requested, last is {self.last_index()}")
        return limit_size(self._entries[lo - offset : hi - offset], max_bytes)

    def term(self, index: int) -> int:
        offset = self._entries[0].index
        if index < offset:
            raise CompactedError(f"term of {index} is compacted (snapshot at {offset})")
        if index - offset >= len(self._entries):
            raise UnavailableError(f"term of {index} requested, last is {self.last_index()}")
        return self._entries[index - offset].term

    def first_index(self) -> int:
        return self._entries[0].index + 1

    def last_index(self) -> int:
        return self._entries[0].index + len(self._entries) - 1

    def snapshot(self) -> Snapshot:
        return self._snapshot

    # --- Changes (made durable first by the caller, or by the WAL) -------------

    @property
    def hard_state(self) -> HardState:
        return self._hard_state

    def set_hard_state(self, hard_state: HardState) -> None:
        self._hard_state = hard_state

    def append(self, entries: Sequence[Entry]) -> None:
        """Append entries, replacing any existing suffix they overlap (raft's rule)."""
        if not entries:
            return
        offset = self._entries[0].index
        first = entries[0].index
        if first > self.last_index() + 1:
            raise UnavailableError(
                f"appending at {first} would leave a gap after {self.last_index()}"
            )
        if first <= offset:
            # The part at or below the snapshot is already covered by it.
            entries = entries[offset + 1 - first :]
            if not entries:
                return
            first = entries[0].index
        del self._entries[first - offset :]
        self._entries.extend(entries)

    def apply_snapshot(self, snapshot: Snapshot) -> None:
        """Replace the whole log by a snapshot received from the leader."""
        if snapshot.meta.index < self._snapshot.meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {snapshot.meta.index} is older than {self._snapshot.meta.index}"
            )
        self._snapshot = snapshot
        self._entries = [Entry(term=snapshot.meta.term, index=snapshot.meta.index)]

    def create_snapshot(self, index: int, conf_state: ConfState, data: bytes) -> Snapshot:
        """Record a snapshot of the state machine at an applied index in the log."""
        if index <= self._snapshot.meta.index:
            raise SnapshotOutOfDateError(
                f"snapshot at {index} is not newer than {self._snapshot.meta.index}"
            )
        if index > self.last_index():
            raise UnavailableError(f"snapshot at {index} is past the last entry {self.last_index()}")
        self._snapshot = Snapshot(SnapshotMeta(index, self.term(index), conf_state), data)
        return self._snapshot

    def compact(self, index: int) -> None:
        """Drop the entries up to index; the entry at index becomes the placeholder."""
        offset = self._entries[0].index
        if index <= offset:
            raise CompactedError(f"index {index} is already compacted (at {offset})")
        if index > self.last_index():
            raise UnavailableError(f"compacting to {index} past the last entry {self.last_index()}")
        placeholder = Entry(term=self._entries[index - offset].term, index=index)
        self._entries = [placeholder] + self._entries[index - offset + 1 :]
