"""The raft log as the core sees it: durable storage plus an unstable tail.

Entries the core has accepted but the caller has not yet persisted live in
`Unstable` (and, on a follower that received one, a snapshot not yet
installed). Everything older is read through the `Storage` interface. The
caller persists the unstable part from a Ready and then calls `stable_to`,
after which those entries are served from storage.

Indexes: entries [first_index, last_index] are available; the term of
first_index - 1 (the snapshot's) is also known. `committed` and `applied`
only grow, and applied <= committed <= last_index.

Per-entry Python work is kept low: appends and reads slice lists, and batch
sizes are measured with a C-speed sum when the whole batch fits.
"""

from __future__ import annotations

from operator import itemgetter

from shards.raft.errors import RaftInvariantError
from shards.raft.storage import (
    ENTRY_OVERHEAD_BYTES,
    CompactedError,
    Entry,
    EntryType,
    Snapshot,
    Storage,
    StorageError,
    UnavailableError,
    limit_size,
)

_entry_data = itemgetter(3)


def batch_size_bytes(entries: list[Entry]) -> int:
    return ENTRY_OVERHEAD_BYTES * len(entries) + sum(map(len, map(_entry_data, entries)))


def limit_batch(entries: list[Entry], max_bytes: int | None) -> list[Entry]:
    """The longest prefix of entries within max_bytes, but never empty."""
    if max_bytes is None or batch_size_bytes(entries) <= max_bytes:
        return entries
    return limit_size(entries, max_bytes)


class Unstable:
    """Entries (and possibly a snapshot) not yet persisted by the caller.

    `entries[i]` has index `offset + i`; with a snapshot, offset is the
    snapshot's index + 1.
    """

    __slots__ = ("snapshot", "entries", "offset")

    def __init__(self, offset: int) -> None:
        self.snapshot: Snapshot | None = None
        self.entries: list[Entry] = []
        self.offset = offset

    def maybe_term(self, index: int) -> int | None:
        if index < self.offset:
            snapshot = self.snapshot
            if snapshot is not None and snapshot.meta.index == index:
                return snapshot.meta.term
            return None
        position = index - self.offset
        if position < len(self.entries):
            return self.entries[position].term
        return None

    def stable_to(self, index: int, term: int) -> None:
        """Entries up to index were persisted, if they still have that term."""
        if index < self.offset or self.maybe_term(index) != term:
            return  # already stable, or overwritten since the Ready was made
        del self.entries[: index + 1 - self.offset]
        self.offset = index + 1

    def stable_snap_to(self, index: int) -> None:
        if self.snapshot is not None and self.snapshot.meta.index == index:
            self.snapshot = None

    def restore(self, snapshot: Snapshot) -> None:
        self.offset = snapshot.meta.index + 1
        self.entries = []
        self.snapshot = snapshot

    def truncate_and_append(self, entries: list[Entry]) -> None:
        first = entries[0].index
        end = self.offset + len(self.entries)
        if first == end:
            self.entries.extend(entries)
        elif first <= self.offset:
            # Replaces all unstable entries (and the stored ones from `first`
            # on, once this batch is persisted).
            self.offset = first
            self.entries = list(entries)
        else:
            del self.entries[first - self.offset :]
            self.entries.extend(entries)


class RaftLog:
    def __init__(self, storage: Storage, max_committed_size_per_ready_bytes: int) -> None:
        self.storage = storage
        self.max_committed_size_per_ready_bytes = max_committed_size_per_ready_bytes
        first_index = storage.first_index()
        last_index = storage.last_index()
        self.unstable = Unstable(last_index + 1)
        # Everything up to the snapshot is committed and applied by definition.
        self.committed = first_index - 1
        self.applied = first_index - 1

    # --- Bounds and terms ----------------------------------------------------

    def first_index(self) -> int:
        snapshot = self.unstable.snapshot
        return snapshot.meta.index + 1 if snapshot is not None else self.storage.first_index()

    def last_index(self) -> int:
        unstable = self.unstable
        if unstable.entries:
            return unstable.offset + len(unstable.entries) - 1
        if unstable.snapshot is not None:
            return unstable.snapshot.meta.index
        return self.storage.last_index()

    def last_term(self) -> int:
        return self.term(self.last_index())

    def term(self, index: int) -> int:
        """The term of entry `index`; CompactedError/UnavailableError outside the log."""
        unstable = self.unstable
        position = index - unstable.offset
        if position >= 0:
            if position < len(unstable.entries):
                return unstable.entries[position].term
            raise UnavailableError(f"term of {index} requested, last is {self.last_index()}")
        snapshot = unstable.snapshot
        if snapshot is not None:
            if index == snapshot.meta.index:
                return snapshot.meta.term
            raise CompactedError(f"term of {index} is below the snapshot at {snapshot.meta.index}")
        # Below the unstable tail: the storage has it, or has compacted it.
        return self.storage.term(index)

    def term_or_zero(self, index: int) -> int:
        try:
            return self.term(index)
        except StorageError:
            return 0

    def match_term(self, index: int, term: int) -> bool:
        try:
            return self.term(index) == term
        except StorageError:
            return False

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Is a log ending at (last_index, last_term) at least as up to date as ours?"""
        our_term = self.last_term()
        return last_term > our_term or (last_term == our_term and last_index >= self.last_index())

    # --- Appending -----------------------------------------------------------

    def append(self, entries: list[Entry]) -> int:
        if entries:
            if entries[0].index - 1 < self.committed:
                raise RaftInvariantError(
                    f"append at {entries[0].index} would overwrite committed {self.committed}"
                )
            self.unstable.truncate_and_append(entries)
        return self.last_index()

    def maybe_append(
        self, prev_index: int, prev_term: int, leader_commit: int, entries: list[Entry]
    ) -> int | None:
        """A follower's append: the new last index, or None if prev does not match."""
        if not self.match_term(prev_index, prev_term):
            return None
        last_new_index = prev_index + len(entries)
        conflict_index = self.find_conflict(entries)
        if conflict_index:
            if conflict_index <= self.committed:
                raise RaftInvariantError(
                    f"entry {conflict_index} conflicts with committed {self.committed}"
                )
            self.append(entries[conflict_index - prev_index - 1 :])
        self.commit_to(min(leader_commit, last_new_index))
        return last_new_index

    def find_conflict(self, entries: list[Entry]) -> int:
        """Index of the first entry not in our log (0 if all are).

        By the log matching property, if the last entry matches, all do.
        """
        if not entries or self.match_term(entries[-1].index, entries[-1].term):
            return 0
        last_index = self.last_index()
        for entry in entries:
            if entry.index > last_index or not self.match_term(entry.index, entry.term):
                return entry.index
        return 0

    def find_conflict_by_term(self, index: int, term: int) -> tuple[int, int]:
        """The largest (i, term(i)) with i <= index and term(i) <= term.

        Lets a rejected leader skip a whole term of conflicting entries.
        """
        while index > 0:
            try:
                our_term = self.term(index)
            except StorageError:
                return index, 0
            if our_term <= term:
                return index, our_term
            index -= 1
        return 0, 0

    # --- Commit and apply ----------------------------------------------------

    def commit_to(self, index: int) -> None:
        if index > self.committed:
            if index > self.last_index():
                raise RaftInvariantError(
                    f"commit {index} is past the last index {self.last_index()}"
                )
            self.committed = index

    def maybe_commit(self, index: int, term: int) -> bool:
        """Commit up to index if it holds an entry of `term` (the leader's own)."""
        if index > self.committed and self.term_or_zero(index) == term:
            self.commit_to(index)
            return True
        return False

    def applied_to(self, index: int) -> None:
        if index == 0:
            return
        if index > self.committed or index < self.applied:
            raise RaftInvariantError(
                f"applied {index} outside [{self.applied}, {self.committed}]"
            )
        self.applied = index

    def has_next_committed_entries(self) -> bool:
        return self.unstable.snapshot is None and self.committed > self.applied

    def next_committed_entries(self) -> list[Entry]:
        if not self.has_next_committed_entries():
            return []
        return self.slice(
            self.applied + 1, self.committed + 1, self.max_committed_size_per_ready_bytes
        )

    def has_unapplied_conf_changes(self) -> bool:
        if self.committed <= self.applied:
            return False
        entries = self.slice(self.applied + 1, self.committed + 1, None)
        return any(entry.type == EntryType.CONF_CHANGE for entry in entries)

    # --- Persistence hand-off ------------------------------------------------

    def stable_to(self, index: int, term: int) -> None:
        self.unstable.stable_to(index, term)

    def stable_snap_to(self, index: int) -> None:
        self.unstable.stable_snap_to(index)

    def snapshot(self) -> Snapshot:
        if self.unstable.snapshot is not None:
            return self.unstable.snapshot
        return self.storage.snapshot()

    def restore(self, snapshot: Snapshot) -> None:
        self.committed = snapshot.meta.index
        self.unstable.restore(snapshot)

    # --- Reading -------------------------------------------------------------

    def entries_from(self, index: int, max_bytes: int | None) -> list[Entry]:
        if index > self.last_index():
            return []
        return self.slice(index, self.last_index() + 1, max_bytes)

    def slice(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Entries [lo, hi), limited to max_bytes but never empty when lo < hi."""
        if lo >= hi:
            return []
        if lo < self.first_index():
            raise CompactedError(f"entries from {lo} are compacted")
        if hi > self.last_index() + 1:
            raise UnavailableError(f"entries up to {hi - 1}, last is {self.last_index()}")
        offset = self.unstable.offset
        if lo >= offset:
            return limit_batch(self.unstable.entries[lo - offset : hi - offset], max_bytes)
        stored = self._stored_entries(lo, min(hi, offset), max_bytes)
        if hi <= offset or len(stored) < min(hi, offset) - lo:
            return stored
        fresh = self.unstable.entries[: hi - offset]
        return limit_batch(stored + fresh, max_bytes)

    def _stored_entries(self, lo: int, hi: int, max_bytes: int | None) -> list[Entry]:
        """Stored entries [lo, hi) within max_bytes (at least one).

        Asks the storage for no more entries than could fit (each costs at
        least ENTRY_OVERHEAD_BYTES) and sizes the batch here, where a batch
        that fits whole is measured at C speed.
        """
        if max_bytes is not None:
            hi = min(hi, lo + max_bytes // ENTRY_OVERHEAD_BYTES + 1)
        return limit_batch(self.storage.entries(lo, hi), max_bytes)

    def unstable_entries(self) -> list[Entry]:
        return list(self.unstable.entries)
