"""A tiny, obviously-correct model of etcd's MVCC semantics: the reference for shards.mvcc.

It keeps a full copy of the key space at every revision, which is fine for the
few dozen operations a property test makes and leaves nothing to get clever about.
A record is (key, create_revision, mod_revision, version, value, lease).
"""

from __future__ import annotations

from tessera.api import errors

FIRST_REVISION = 1


def in_range(key: bytes, start: bytes, end: bytes) -> bool:
    """etcd's key ranges: empty end is the key alone, "\\0" is everything from start."""
    if not end:
        return key == start
    return start <= key and (end == b"\0" or key < end)


class Model:
    def __init__(self) -> None:
        self.revision = FIRST_REVISION
        self.compacted = 0
        self.states: dict[int, dict[bytes, tuple]] = {FIRST_REVISION: {}}

    @property
    def current(self) -> dict[bytes, tuple]:
        return self.states[self.revision]

    def _commit(self, state: dict) -> None:
        self.revision += 1
        self.states[self.revision] = state

    def range(self, key, end=b"", revision=0, limit=0, count_only=False, keys_only=False,
              sort_target=None, descend=False, state=None, revision_filters=(0, 0, 0, 0)):
        """`revision_filters`: etcd's min and max mod revision, min and max create revision
        (0: none); they drop keys after the count, before the limit, as etcd's do."""
        at = revision or self.revision
        if at > self.revision:
            raise errors.FutureRevision()
        if at < self.compacted:
            raise errors.Compacted()
        state = self.states[at] if state is None else state
        kvs = sorted(kv for k, kv in state.items() if in_range(k, key, end))
        count = len(kvs)
        if count_only:
            return [], False, count
        min_mod, max_mod, min_create, max_create = revision_filters
        kvs = [kv for kv in kvs if not (min_mod and kv[2] < min_mod or max_mod and kv[2] > max_mod
                                        or min_create and kv[1] < min_create or max_create and kv[1] > max_create)]
        if sort_target is not None:
            kvs.sort(key=lambda kv: kv[sort_target], reverse=descend)
        more = 0 < limit < len(kvs)
        if more:
            kvs = kvs[:limit]
        if keys_only:
            kvs = [kv[:4] + (b"",) + kv[5:] for kv in kvs]
        return kvs, more, count

    @staticmethod
    def _put(state, key, value, lease, revision):
        previous = state.get(key)
        create = previous[1] if previous else revision
        version = previous[3] + 1 if previous else 1
        state[key] = (key, create, revision, version, value, lease)
        return previous

    def put(self, key, value, lease=0):
        state = dict(self.current)
        previous = self._put(state, key, value, lease, self.revision + 1)
        self._commit(state)
        return previous

    @staticmethod
    def _delete(state, key, end):
        doomed = sorted(k for k in state if in_range(k, key, end))
        return [state.pop(k) for k in doomed]

    def delete(self, key, end=b""):
        state = dict(self.current)
        previous = self._delete(state, key, end)
        if previous:
            self._commit(state)
        return previous

    def compare(self, key, field, op, expected):
        """field: 1 create, 2 mod, 3 version, 4 value; op: '=', '!=', '<', '>'."""
        kv = self.current.get(key)
        if kv is None:
            if field == 4:
                return False
            actual = 0
        else:
            actual = kv[field]
        return {"=": actual == expected, "!=": actual != expected,
                "<": actual < expected, ">": actual > expected}[op]

    def txn(self, compares, success, failure):
        """compares: (key, field, op, expected); ops: ("put", key, value) | ("delete", key, end) | ("range", key, end)."""
        succeeded = all(self.compare(*c) for c in compares)
        state = dict(self.current)
        revision = self.revision + 1
        changed = False
        results = []
        for op in success if succeeded else failure:
            if op[0] == "put":
                self._put(state, op[1], op[2], 0, revision)
                changed = True
                results.append(("put",))
            elif op[0] == "delete":
                deleted = self._delete(state, op[1], op[2])
                changed = changed or bool(deleted)
                results.append(("delete", len(deleted)))
            else:
                kvs, _, count = self.range(op[1], op[2], state=state)
                results.append(("range", kvs, count))
        if changed:
            self._commit(state)
        return succeeded, results

    def compact(self, revision):
        if revision <= self.compacted:
            raise errors.Compacted()
        if revision > self.revision:
            raise errors.FutureRevision()
        self.compacted = revision
        for old in [r for r in self.states if r < revision]:
            del self.states[old]
