"""Which group owns which keys: sorted, non-overlapping ranges, the rest to a default group.

The map is kept as a partition of the whole keyspace: `starts[i]` begins the
segment that `groups[i]` owns, which ends where the next begins. A lookup is
one bisection; a range request is cut at the segment boundaries it crosses.
"""

from __future__ import annotations

import bisect
from typing import NamedTuple

from tessera.api.internal_pb2 import ShardMap as ShardMapRecord
from tessera.api.internal_pb2 import ShardRange


class ShardMapError(ValueError):
    """A change the map cannot take (the message says why, for the operator)."""


class Piece(NamedTuple):
    """The part of a request's key range one group owns, in etcd's (key, range_end) form."""

    group: int
    key: bytes
    range_end: bytes


def prefix_end(prefix: bytes) -> bytes:
    """The first key after every key that starts with `prefix` (etcd's GetPrefixRangeEnd).

    b"" for a prefix of only 0xff bytes, meaning "to the end of the keyspace".
    """
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return b""
    return stripped[:-1] + bytes([stripped[-1] + 1])


class ShardMap:
    def __init__(self, ranges: list[tuple[bytes, bytes, int]], default_group: int,
                 moving: list[tuple[bytes, bytes, int]] = ()):
        """`ranges`: (start, end, group), end b"" meaning to the end of the keyspace.

        `moving`: ranges on their way to the group named; writes there wait (see is_moving).
        """
        self.ranges = sorted(ranges)
        self.default_group = default_group
        self.moving = sorted(moving)
        for (_, end, _), (next_start, _, _) in zip(self.ranges, self.ranges[1:]):
            if not end or end > next_start:
                raise ShardMapError("shard ranges overlap")
        self._starts = [b""]
        self._groups = [default_group]
        for start, end, group in self.ranges:
            if start == self._starts[-1]:
                self._groups[-1] = group
            else:
                self._starts.append(start)
                self._groups.append(group)
            if end:
                self._starts.append(end)
                self._groups.append(default_group)

    @classmethod
    def from_record(cls, record: ShardMapRecord) -> ShardMap:
        return cls([(r.start, r.end, r.group) for r in record.ranges], record.default_group,
                   [(r.start, r.end, r.group) for r in record.moving])

    @classmethod
    def initial(cls, prefixes: dict[bytes, int], default_group: int) -> ShardMap:
        """A new cluster's map: each prefix to its group, every other key to `default_group`."""
        shard_map = cls([], default_group)
        for prefix, group in sorted(prefixes.items()):
            shard_map = shard_map.assign(prefix, group)
        return shard_map

    def to_record(self) -> ShardMapRecord:
        return ShardMapRecord(
            ranges=[ShardRange(start=start, end=end, group=group) for start, end, group in self.ranges],
            default_group=self.default_group,
            moving=[ShardRange(start=start, end=end, group=group) for start, end, group in self.moving])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ShardMap) and (self.ranges, self.default_group, self.moving) == (
            other.ranges, other.default_group, other.moving)

    def with_moving(self, moving: list[tuple[bytes, bytes, int]]) -> ShardMap:
        return ShardMap(self.ranges, self.default_group, moving)

    def is_moving(self, key: bytes, range_end: bytes) -> bool:
        """Whether (key, range_end) touches a range that is changing groups."""
        for start, end, _ in self.moving:
            if not range_end:
                if start <= key and (not end or key < end):
                    return True
            elif (range_end == b"\0" or start < range_end) and (not end or key < end):
                return True
        return False

    @property
    def groups(self) -> set[int]:
        return {self.default_group, *(group for _, _, group in self.ranges)}

    def group_of(self, key: bytes) -> int:
        return self._groups[bisect.bisect_right(self._starts, key) - 1]

    def pieces(self, key: bytes, range_end: bytes) -> list[Piece]:
        """The groups a request on (key, range_end) touches, cut at their boundaries, in key order."""
        if not range_end:
            return [Piece(self.group_of(key), key, b"")]
        to_the_end = range_end == b"\0"
        if not to_the_end and range_end <= key:
            return []  # etcd: an empty range
        first = bisect.bisect_right(self._starts, key) - 1
        pieces = []
        for position in range(first, len(self._starts)):
            start = max(key, self._starts[position])
            if not to_the_end and start >= range_end:
                break
            if position + 1 < len(self._starts):
                segment_end = self._starts[position + 1]
                end = segment_end if to_the_end else min(segment_end, range_end)
            else:
                end = range_end
            pieces.append(Piece(self._groups[position], start, end))
        return pieces

    def groups_of(self, key: bytes, range_end: bytes) -> set[int]:
        return {piece.group for piece in self.pieces(key, range_end)}

    def stretch_of(self, key: bytes) -> tuple[bytes, bytes, int]:
        """The segment of the partition that holds `key`: (start, end, group), end b"" meaning
        to the end of the keyspace; what `tessera shards split` cuts."""
        position = bisect.bisect_right(self._starts, key) - 1
        end = self._starts[position + 1] if position + 1 < len(self._starts) else b""
        return self._starts[position], end, self._groups[position]

    def assign_range(self, start: bytes, end: bytes, group: int) -> ShardMap:
        """A new map with [start, end) on `group` (end b"": to the end of the keyspace); a range it
        overlaps keeps what lies outside it, so a range can be cut in two. No fences kept."""
        ranges = [(start, end, group)]
        for other_start, other_end, owner in self.ranges:
            if other_start < start:  # the part before
                ranges.append((other_start, other_end if other_end and other_end <= start else start, owner))
            if end and (not other_end or other_end > end):  # the part after
                ranges.append((max(other_start, end), other_end, owner))
        return ShardMap(ranges, self.default_group)

    def assign(self, prefix: bytes, group: int) -> ShardMap:
        """A new map with [prefix, prefix_end) on `group`; it may not cut an existing range."""
        if not prefix:
            raise ShardMapError("the empty prefix is the default group's; give a non-empty prefix")
        end = prefix_end(prefix)
        for start, existing_end, owner in self.ranges:
            if start == prefix and existing_end == end:
                if owner == group:
                    return self
                continue  # reassigning the same range
            if start < (end or b"\xff" * (len(start) + 1)) and (not existing_end or prefix < existing_end):
                raise ShardMapError(
                    f"prefix {prefix!r} overlaps the range [{start!r}, {existing_end!r}) of group {owner}")
        ranges = [r for r in self.ranges if (r[0], r[1]) != (prefix, end)]
        return ShardMap([*ranges, (prefix, end, group)], self.default_group)
