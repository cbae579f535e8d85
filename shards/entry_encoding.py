"""Raft entries as bytes (native.codec.encode_entries), encoded once however often they are written.

A leader writes each batch to its WAL and sends the same entries to every
follower; a follower writes to its WAL the entries it received, as it received
them. Both pass the same Entry objects along (a Ready's entries are the log's,
which the messages to followers slice): a run with the same first and last
objects, and as many entries, is the same run, and the last run's bytes serve
it again. Objects, not indexes and terms, are compared, so replicas sharing a
process never share bytes.
"""

from __future__ import annotations

from typing import Sequence

from native import codec
from shards.raft.storage import Entry

# The last run encoded or decoded: its first and last entries (held, so no other object can
# take their place), its length, and its bytes.
_last: tuple = (None, None, 0, b"")


def encode_entries(entries: Sequence[Entry]) -> bytes:
    global _last
    first, last, count, data = _last
    if entries[0] is first and entries[-1] is last and len(entries) == count:
        return data
    data = codec.encode_entries(entries)
    _last = (entries[0], entries[-1], len(entries), data)
    return data


def decode_entries(data: bytes) -> list[Entry]:
    """codec.decode_entries, and the entries' bytes kept for the next encode_entries of them."""
    global _last
    entries = codec.decode_entries(data, Entry)
    if entries:
        _last = (entries[0], entries[-1], len(entries), data)
    return entries
