"""The shard map: lookups, cutting ranges at group boundaries, and the changes it refuses."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.shard_map import Piece, ShardMap, ShardMapError, prefix_end
from tessera.api.validation import key_in_range

KUBERNETES = ShardMap([], 1).assign(b"/registry/pods/", 2).assign(b"/registry/events/", 3)


def test_prefix_end_is_etcds():
    assert prefix_end(b"/a/") == b"/a0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b""  # to the end of the keyspace


def test_keys_go_to_their_prefix_group_and_the_rest_to_the_default():
    assert KUBERNETES.group_of(b"/registry/pods/default/nginx") == 2
    assert KUBERNETES.group_of(b"/registry/events/x") == 3
    assert KUBERNETES.group_of(b"/registry/pods") == 1  # not under the prefix
    assert KUBERNETES.group_of(b"compact_rev_key") == 1
    assert KUBERNETES.groups == {1, 2, 3}


def test_a_single_key_is_one_piece():
    assert KUBERNETES.pieces(b"/registry/pods/a", b"") == [Piece(2, b"/registry/pods/a", b"")]


def test_a_prefix_inside_one_group_is_not_cut():
    assert KUBERNETES.pieces(b"/registry/pods/", b"/registry/pods0") == [
        Piece(2, b"/registry/pods/", b"/registry/pods0")]


def test_the_whole_keyspace_is_cut_at_every_boundary_in_key_order():
    assert KUBERNETES.pieces(b"\0", b"\0") == [
        Piece(1, b"\0", b"/registry/events/"),
        Piece(3, b"/registry/events/", b"/registry/events0"),
        Piece(1, b"/registry/events0", b"/registry/pods/"),
        Piece(2, b"/registry/pods/", b"/registry/pods0"),
        Piece(1, b"/registry/pods0", b"\0"),
    ]


def test_an_empty_range_has_no_pieces():
    assert KUBERNETES.pieces(b"b", b"a") == []


def test_overlapping_assignments_are_refused():
    with pytest.raises(ShardMapError, match="overlaps"):
        KUBERNETES.assign(b"/registry/", 4)
    with pytest.raises(ShardMapError, match="overlaps"):
        KUBERNETES.assign(b"/registry/pods/x/", 4)
    with pytest.raises(ShardMapError, match="empty prefix"):
        KUBERNETES.assign(b"", 4)


def test_the_map_survives_its_record():
    assert ShardMap.from_record(KUBERNETES.to_record()) == KUBERNETES


keys = st.binary(min_size=1, max_size=3)


def _assigned(prefixes: list[bytes]) -> ShardMap:
    """A map of the default group 1 and each prefix that does not cut another's range, on groups 2 on."""
    shard_map = ShardMap([], 1)
    for number, prefix in enumerate(prefixes, start=2):
        try:
            shard_map = shard_map.assign(prefix, number)
        except ShardMapError:
            pass
    return shard_map


@given(prefixes=st.lists(st.binary(min_size=1, max_size=2), max_size=4), key=keys,
       range_end=st.one_of(st.just(b""), st.just(b"\0"), keys), probes=st.lists(keys, max_size=20))
def test_pieces_partition_a_range_by_owner(prefixes, key, range_end, probes):
    shard_map = _assigned(prefixes)
    pieces = shard_map.pieces(key, range_end)
    assert [p.key for p in pieces] == sorted(p.key for p in pieces)
    for probe in [key, *probes]:
        owners = [p.group for p in pieces if key_in_range(probe, p.key, p.range_end)]
        if key_in_range(probe, key, range_end):
            assert owners == [shard_map.group_of(probe)], (probe, pieces)
        else:
            assert owners == [], (probe, pieces)


def test_a_moving_range_is_seen_by_keys_and_ranges_that_touch_it():
    moving = KUBERNETES.with_moving([(b"/registry/leases/", b"/registry/leases0", 3)])
    assert moving.is_moving(b"/registry/leases/a", b"")
    assert moving.is_moving(b"/registry/", b"/registry0")  # a range over it
    assert moving.is_moving(b"\0", b"\0")
    assert not moving.is_moving(b"/registry/pods/a", b"")
    assert not moving.is_moving(b"/registry/leases0", b"/registry/pods/")
    assert ShardMap.from_record(moving.to_record()) == moving != KUBERNETES


def test_a_split_cuts_a_range_and_the_default_groups_stretch():
    split = KUBERNETES.assign_range(b"/registry/pods/m", b"/registry/pods0", 4)
    assert split.ranges == [(b"/registry/events/", b"/registry/events0", 3),
                            (b"/registry/pods/", b"/registry/pods/m", 2),
                            (b"/registry/pods/m", b"/registry/pods0", 4)]
    assert KUBERNETES.stretch_of(b"/registry/pods/x") == (b"/registry/pods/", b"/registry/pods0", 2)
    assert KUBERNETES.stretch_of(b"/top") == (b"/registry/pods0", b"", 1)  # the default group's, to the end
    assert KUBERNETES.stretch_of(b"/a") == (b"", b"/registry/events/", 1)
    to_the_end = KUBERNETES.assign_range(b"/top", b"", 4)
    assert to_the_end.group_of(b"/top") == to_the_end.group_of(b"\xff") == 4
    assert to_the_end.group_of(b"/registry/pods1") == 1


@given(prefixes=st.lists(st.binary(min_size=1, max_size=2), max_size=4), start=keys,
       end=st.one_of(st.just(b""), keys), probes=st.lists(keys, max_size=20))
def test_a_range_assigned_takes_its_keys_and_leaves_every_other_key_where_it_was(prefixes, start, end, probes):
    shard_map = _assigned(prefixes)
    if end and end <= start:
        return
    assigned = shard_map.assign_range(start, end, 9)
    assert ShardMap.from_record(assigned.to_record()) == assigned
    for probe in [start, *probes, *(end and [end])]:
        inside = start <= probe and (not end or probe < end)
        assert assigned.group_of(probe) == (9 if inside else shard_map.group_of(probe)), probe
