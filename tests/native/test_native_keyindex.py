"""native.keyindex against its pure-Python twin (etcd's generations), on random histories."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from reference_keyindex import KeyIndex as ReferenceKeyIndex

from native import codec
from native.keyindex import KeyIndex

KEYS = [b"a", b"ab", b"b", b"c", b"c\x00", b"d"]
keys = st.sampled_from(KEYS)
ends = st.sampled_from([None, b"b", b"c", b"zz", b"a"])


class IndexAgainstReference(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.native, self.reference = KeyIndex(), ReferenceKeyIndex()
        self.main = 1
        self.live: set[bytes] = set()

    def add(self, key, sub, tombstone):
        self.native.add(key, self.main, sub, tombstone)
        self.reference.add(key, self.main, sub, tombstone)

    @rule(changes=st.lists(st.tuples(keys, st.booleans()), min_size=1, max_size=4, unique_by=lambda c: c[0]))
    def write(self, changes):
        """One revision: puts and deletions (of live keys only, as the store makes them)."""
        self.main += 1
        sub = 0
        for key, delete in changes:
            if delete and key not in self.live:
                continue
            self.add(key, sub, delete)
            (self.live.discard if delete else self.live.add)(key)
            sub += 1

    @rule(data=st.data())
    def compact(self, data):
        at = data.draw(st.integers(min_value=1, max_value=self.main))
        self.native.compact(at)
        self.reference.compact(at)

    @rule(key=keys, data=st.data())
    def get(self, key, data):
        at = data.draw(st.one_of(st.none(), st.integers(min_value=0, max_value=self.main + 1)))
        assert self.native.get(key, at) == self.reference.get(key, at)

    @rule(start=keys, end=ends, data=st.data())
    def range(self, start, end, data):
        at = data.draw(st.one_of(st.none(), st.integers(min_value=0, max_value=self.main + 1)))
        assert self.native.range(start, end, at) == self.reference.range(start, end, at)

    @rule(data=st.data())
    def visible(self, data):
        at = data.draw(st.integers(min_value=0, max_value=self.main + 1))
        assert self.native.visible_revisions(at) == self.reference.visible_revisions(at)

    @invariant()
    def same_histories(self):
        assert len(self.native) == len(self.reference)
        for key in KEYS:
            assert self.native.history(key) == self.reference.history(key)


TestIndexAgainstReference = IndexAgainstReference.TestCase
TestIndexAgainstReference.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_lookups_give_the_revision_key_of_the_record():
    index = KeyIndex()
    index.add(b"k", 7, 3)
    assert index.get(b"k") == codec.encode_revision(7, 3)
    assert codec.decode_revision(index.get(b"k", 7)) == (7, 3, False)


def test_add_record_reads_revision_keys_with_and_without_the_tombstone_marker():
    index = KeyIndex()
    index.add_record(b"k", codec.encode_revision(2, 0))
    index.add_record(b"k", codec.encode_revision(3, 0, tombstone=True))
    assert index.history(b"k") == [(2, 0, False), (3, 0, True)]
    assert index.get(b"k") is None and index.get(b"k", 2) == codec.encode_revision(2, 0)
    for bad in (b"short", codec.encode_revision(4, 0)[:8] + b"x" + bytes(8), codec.encode_revision(4, 0) + b"x"):
        with pytest.raises(ValueError, match="not a revision key"):
            index.add_record(b"k", bad)


@pytest.mark.parametrize("main, sub", [(3, 0), (2, 5), (1, 9)])
def test_revisions_must_go_forward(main, sub):
    index = KeyIndex()
    index.add(b"k", 3, 0)
    with pytest.raises(ValueError, match="not after"):
        index.add(b"k", main, sub)


def test_revisions_outside_int64_are_refused():
    with pytest.raises(ValueError):
        KeyIndex().add(b"k", 2**63, 0)
    with pytest.raises(OverflowError):
        KeyIndex().add(b"k", -1, 0)


@given(mains=st.lists(st.integers(min_value=1, max_value=2**63 - 1), min_size=1, max_size=30, unique=True))
def test_large_revisions_search_correctly(mains):
    mains.sort()
    index = KeyIndex()
    for main in mains:
        index.add(b"k", main, 0)
    for main in mains:
        assert index.get(b"k", main) == codec.encode_revision(main, 0)
    assert index.get(b"k", mains[0] - 1) is None
