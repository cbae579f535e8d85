"""Pure-Python key index, by etcd's generations: the reference native.keyindex is held to.

It answers the same questions with a different algorithm (explicit
generations of packed revisions rather than one flat list searched for the
last revision at or before R), so the two check each other.

A key's history is a list of generations. A generation starts when the key is
created and ends with the tombstone that deletes it; the last generation is
the open one (empty while the key is deleted). Revisions are (main, sub)
pairs packed into one int, `main << SUB_BITS | sub`, so a generation is a
sorted list of ints and bisect finds the revision visible at any main
revision. Keys are kept in a sorted list for range scans.

The index answers only which revision of a key is visible at a main revision;
the record at that revision (value, lease, creation revision, version) is read
from the store. Compaction drops a generation's early revisions, so neither
the creation revision nor the version could be derived from what remains.
"""

from __future__ import annotations

from bisect import bisect_right
from sortedcontainers import SortedList

from reference_codec import encode_revision

SUB_BITS = 32  # sub revisions per main revision: one per change in a transaction
SUB_MASK = (1 << SUB_BITS) - 1


def pack_revision(main: int, sub: int) -> int:
    return main << SUB_BITS | sub


def revision_key(revision: int) -> bytes:
    return encode_revision(revision >> SUB_BITS, revision & SUB_MASK)


class KeyIndex:
    def __init__(self) -> None:
        self._keys = SortedList()
        self._generations: dict[bytes, list[list[int]]] = {}

    def __len__(self) -> int:
        """Keys with any retained history (live or not)."""
        return len(self._generations)

    def add(self, key: bytes, main: int, sub: int, tombstone: bool = False) -> None:
        if tombstone:
            self._tombstone(key, pack_revision(main, sub))
        else:
            self._put(key, pack_revision(main, sub))

    def _put(self, key: bytes, revision: int) -> None:
        generations = self._generations.get(key)
        if generations is None:
            self._generations[key] = [[revision]]
            self._keys.add(key)
        else:
            generations[-1].append(revision)

    def _tombstone(self, key: bytes, revision: int) -> None:
        """Close the key's open generation with a deletion at `revision`."""
        generations = self._generations.get(key)
        if generations is None:
            # A deletion whose puts were compacted away first.
            self._generations[key] = [[revision], []]
            self._keys.add(key)
        else:
            generations[-1].append(revision)
            generations.append([])

    def get(self, key: bytes, at_main: int | None = None) -> bytes | None:
        """The revision of the key visible at main revision `at_main` (None: the latest).

        None when the key is absent (never written, or deleted) at that revision.
        """
        generations = self._generations.get(key)
        if generations is None:
            return None
        if at_main is None:
            current = generations[-1]
            return revision_key(current[-1]) if current else None
        revision = _visible(generations, at_main)
        return None if revision is None else revision_key(revision)

    def range(self, start: bytes, end: bytes | None, at_main: int | None = None) -> list[tuple[bytes, bytes]]:
        """(key, revision key) for the keys in [start, end) present at `at_main`, in key order."""
        found = []
        for key in self._keys.irange(start, end, inclusive=(True, False)):
            revision = self.get(key, at_main)
            if revision is not None:
                found.append((key, revision))
        return found

    def visible_revisions(self, at_main: int) -> set[bytes]:
        """The revision of every key present at `at_main`: what compaction there must keep."""
        kept = set()
        for generations in self._generations.values():
            revision = _visible(generations, at_main)
            if revision is not None:
                kept.add(revision_key(revision))
        return kept

    def compact(self, at_main: int) -> None:
        """Forget every revision at or below `at_main` that no read at `at_main` or later needs."""
        for key in list(self._generations):
            generations = self._generations[key]
            kept = []
            for position, generation in enumerate(generations):
                is_open = position == len(generations) - 1
                if not generation:
                    kept.append(generation)
                    continue
                if not is_open and generation[-1] >> SUB_BITS <= at_main:
                    continue  # deleted at or before at_main: nothing of it is readable
                first_kept = bisect_right(generation, pack_revision(at_main, SUB_MASK)) - 1
                kept.append(generation[max(first_kept, 0):])
            if any(kept):
                self._generations[key] = kept
            else:
                del self._generations[key]
                self._keys.remove(key)

    def history(self, key: bytes) -> list[tuple[int, int, bool]]:
        """(main, sub, tombstone) retained for key, oldest first."""
        generations = self._generations.get(key, [])
        return [
            (revision >> SUB_BITS, revision & SUB_MASK, position < len(generations) - 1 and revision == generation[-1])
            for position, generation in enumerate(generations)
            for revision in generation
        ]


def _visible(generations: list[list[int]], at_main: int) -> int | None:
    bound = pack_revision(at_main, SUB_MASK)
    for position in range(len(generations) - 1, -1, -1):
        generation = generations[position]
        if not generation or generation[0] > bound:
            continue  # empty, or created after at_main
        latest = bisect_right(generation, bound) - 1
        is_closed = position != len(generations) - 1
        if is_closed and latest == len(generation) - 1:
            return None  # the tombstone is what is visible: deleted at at_main
        return generation[latest]
    return None
