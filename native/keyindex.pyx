"""The in-memory key index: for every key, the revisions of its history.

A key's history is one bytearray of 16-byte entries in revision order: main
revision (u64) and sub revision (u64, top bit set on a tombstone), in native
byte order. That is all a lookup needs: the revision visible at main revision
R is the last entry with main <= R, and the key is absent at R if there is
none or it is a tombstone. (etcd's generations are implicit: a tombstone ends
one.) Lookups are a binary search in C; keys are kept in a SortedList for
range scans.

Lookups answer with the revision key of the record to read (native.codec's
17-byte form), which is what the store looks up in LMDB. The record itself
holds the value, lease, creation revision and version: after compaction the
index no longer has the early revisions those would be derived from.

Compaction at R keeps, per key, the entry visible at R (unless it is a
tombstone) and everything after it.
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.stdint cimport uint64_t
from libc.string cimport memmove

from sortedcontainers import SortedList

from native.endian cimport load_be64, store_be64

cdef uint64_t TOMBSTONE_FLAG = 1ULL << 63
cdef uint64_t REVISION_MAX = 0x7FFFFFFFFFFFFFFF


ctypedef struct RevisionEntry:
    uint64_t main
    uint64_t sub  # TOMBSTONE_FLAG set on a deletion


cdef inline RevisionEntry *entries_of(bytearray history):
    return <RevisionEntry *>PyByteArray_AS_STRING(history)


cdef inline Py_ssize_t count_of(bytearray history):
    return PyByteArray_GET_SIZE(history) // sizeof(RevisionEntry)


cdef Py_ssize_t last_at_or_before(RevisionEntry *entries, Py_ssize_t count, uint64_t at_main) nogil:
    """Position of the last entry with main <= at_main; -1 if there is none."""
    cdef Py_ssize_t low = 0, high = count, middle
    while low < high:
        middle = (low + high) >> 1
        if entries[middle].main <= at_main:
            low = middle + 1
        else:
            high = middle
    return low - 1


cdef bytes revision_key(RevisionEntry *entry):
    cdef bytes key = PyBytes_FromStringAndSize(NULL, 17)
    cdef unsigned char *p = <unsigned char *>PyBytes_AS_STRING(key)
    store_be64(p, entry.main)
    p[8] = b"_"
    store_be64(p + 9, entry.sub & ~TOMBSTONE_FLAG)
    return key


cdef object visible(bytearray history, object at_main):
    """The revision key visible at at_main (None: the latest), or None if absent."""
    cdef RevisionEntry *entries = entries_of(history)
    cdef Py_ssize_t position = count_of(history) - 1
    if at_main is not None:
        position = last_at_or_before(entries, position + 1, <uint64_t>at_main)
    if position < 0 or entries[position].sub & TOMBSTONE_FLAG:
        return None
    return revision_key(&entries[position])


cdef class KeyIndex:
    cdef dict _histories
    cdef object _keys

    def __init__(self):
        self._histories = {}
        self._keys = SortedList()

    def __len__(self):
        """Keys with any retained history (live or not)."""
        return len(self._histories)

    def add(self, bytes key, uint64_t main, uint64_t sub, bint tombstone=False):
        """Record a put (or a deletion) of key at (main, sub), after every revision it has."""
        if main > REVISION_MAX or sub > REVISION_MAX:
            raise ValueError(f"revision ({main}, {sub}) is outside 0..2**63-1")
        cdef bytearray history = self._histories.get(key)
        if history is None:
            history = bytearray()
            self._histories[key] = history
            self._keys.add(key)
        cdef Py_ssize_t count = count_of(history)
        cdef RevisionEntry *entries = entries_of(history)
        cdef RevisionEntry *last = &entries[count - 1]
        if count and (last.main > main or last.main == main and last.sub & ~TOMBSTONE_FLAG >= sub):
            raise ValueError(f"revision ({main}, {sub}) of {key!r} is not after the last one")
        PyByteArray_Resize(history, (count + 1) * sizeof(RevisionEntry))
        entries = entries_of(history)
        entries[count].main = main
        entries[count].sub = sub | (TOMBSTONE_FLAG if tombstone else 0)

    def add_record(self, bytes key, bytes revision_key):
        """`add` from a history record's revision key (17 bytes, 18 with the tombstone marker)."""
        cdef const unsigned char *p = <const unsigned char *>revision_key
        cdef Py_ssize_t length = len(revision_key)
        if length not in (17, 18) or p[8] != b"_" or (length == 18 and p[17] != b"t"):
            raise ValueError(f"{revision_key!r} is not a revision key")
        self.add(key, load_be64(p), load_be64(p + 9), length == 18)

    def get(self, bytes key, at_main=None):
        """The revision key of the record of key visible at main revision at_main (None: the latest).

        None when the key is absent (never written, or deleted) there.
        """
        cdef bytearray history = self._histories.get(key)
        if history is None:
            return None
        return visible(history, at_main)

    def range(self, bytes start, end, at_main=None):
        """[(key, revision key)] for the keys in [start, end) present at at_main, in key order.

        `end` None means every key from start on.
        """
        cdef list found = []
        cdef dict histories = self._histories
        for key in self._keys.irange(start, end, inclusive=(True, False)):
            revision = visible(<bytearray>histories[key], at_main)
            if revision is not None:
                found.append((key, revision))
        return found

    def page(self, bytes start, end, at_main, Py_ssize_t limit, uint64_t min_mod=0, uint64_t max_mod=0,
             bint counted=True):
        """A page of `range`: (found, count, matched) for the keys in [start, end) present at at_main.

        count: every such key; matched: those whose visible revision (the record's mod
        revision) is within [min_mod, max_mod] (0: no bound); found: the first `limit` of the
        matched (every one if limit is 0), as `range` gives them. A page costs one walk of the
        keys in C, with no Python object for a key that is not returned. Not `counted`, the
        walk stops at the first match past the page (matched is then limit + 1 if there are
        more) and count is of the keys walked: a page of a big range costs the page alone.
        """
        cdef list found = []
        cdef dict histories = self._histories
        cdef Py_ssize_t count = 0, matched = 0, position
        cdef RevisionEntry *entries
        cdef bytearray history
        cdef bint latest = at_main is None
        cdef uint64_t at = 0 if latest else <uint64_t>at_main
        for key in self._keys.irange(start, end, inclusive=(True, False)):
            history = <bytearray>histories[key]
            entries = entries_of(history)
            position = count_of(history) - 1
            if not latest:
                position = last_at_or_before(entries, position + 1, at)
            if position < 0 or entries[position].sub & TOMBSTONE_FLAG:
                continue
            count += 1
            if entries[position].main < min_mod or (max_mod and entries[position].main > max_mod):
                continue
            matched += 1
            if limit == 0 or matched <= limit:
                found.append((key, revision_key(&entries[position])))
            elif not counted:
                break
        return found, count, matched

    def visible_revisions(self, uint64_t at_main):
        """The revision key of every key present at at_main: what compaction there keeps."""
        cdef set kept = set()
        cdef bytearray history
        for history in self._histories.values():
            revision = visible(history, at_main)
            if revision is not None:
                kept.add(revision)
        return kept

    def compact(self, uint64_t at_main):
        """Forget every revision at or below at_main that no read at at_main or later needs."""
        cdef bytearray history
        cdef RevisionEntry *entries
        cdef Py_ssize_t count, first_kept
        for key in list(self._histories):
            history = self._histories[key]
            entries = entries_of(history)
            count = count_of(history)
            first_kept = last_at_or_before(entries, count, at_main)
            if first_kept >= 0 and entries[first_kept].sub & TOMBSTONE_FLAG:
                first_kept += 1  # deleted at or before at_main: the deletion goes too
            if first_kept <= 0:
                continue
            if first_kept == count:
                del self._histories[key]
                self._keys.remove(key)
                continue
            memmove(entries, entries + first_kept, (count - first_kept) * sizeof(RevisionEntry))
            PyByteArray_Resize(history, (count - first_kept) * sizeof(RevisionEntry))

    def history(self, bytes key):
        """[(main, sub, tombstone)] retained for key, oldest first (for tests and tools)."""
        cdef bytearray history = self._histories.get(key, bytearray())
        cdef RevisionEntry *entries = entries_of(history)
        return [
            (entries[i].main, entries[i].sub & ~TOMBSTONE_FLAG, bool(entries[i].sub & TOMBSTONE_FLAG))
            for i in range(count_of(history))
        ]
