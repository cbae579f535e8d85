"""etcd 3.5's backend layout: the buckets of its bbolt file and what their keys and values mean.

The file itself is tessera/api/bbolt.py's business; this is what etcd puts in
it (server/mvcc/buckets, mvcc/revision.go, lease/lessor.go, etcd 3.5):

    key       revision key -> mvccpb.KeyValue: the whole history not compacted.
              A revision key is 17 bytes: the main revision (8 bytes,
              big-endian), "_", the sub revision (8 bytes, big-endian), and an
              18th byte "t" if the entry is a tombstone (a delete, whose value is
              a KeyValue with only the key). Byte order is history order.
    meta      consistent_index, term: the raft index and term applied (8 bytes
              big-endian); scheduledCompactRev, finishedCompactRev: compactions
              (a 17-byte revision key of main revision R, sub 0); confState:
              JSON of the raft membership.
    lease     lease id (int64, its 8 bytes big-endian) -> leasepb.Lease.
    members   member id (hex) -> JSON {"id", "peerURLs", "name"?, "isLearner"?};
    members_removed, alarm, auth, authUsers, authRoles: as their names say.
    cluster   clusterVersion -> "3.5.0".

On start etcd rebuilds its key index from `key`, takes its revision as the
highest main revision there or finishedCompactRev if that is higher, and
refuses reads below finishedCompactRev.
"""

from __future__ import annotations

import struct

KEY_BUCKET = b"key"
META_BUCKET = b"meta"
LEASE_BUCKET = b"lease"
ALARM_BUCKET = b"alarm"
CLUSTER_BUCKET = b"cluster"
MEMBERS_BUCKET = b"members"
MEMBERS_REMOVED_BUCKET = b"members_removed"
AUTH_BUCKET = b"auth"
AUTH_USERS_BUCKET = b"authUsers"
AUTH_ROLES_BUCKET = b"authRoles"
# Every bucket etcd 3.5 creates; a file etcd reads has them all.
ETCD_BUCKETS = (ALARM_BUCKET, AUTH_BUCKET, AUTH_ROLES_BUCKET, AUTH_USERS_BUCKET, CLUSTER_BUCKET, KEY_BUCKET,
                LEASE_BUCKET, MEMBERS_BUCKET, MEMBERS_REMOVED_BUCKET, META_BUCKET)

CONSISTENT_INDEX_KEY = b"consistent_index"
TERM_KEY = b"term"
SCHEDULED_COMPACT_KEY = b"scheduledCompactRev"
FINISHED_COMPACT_KEY = b"finishedCompactRev"
CLUSTER_VERSION_KEY = b"clusterVersion"
AUTH_REVISION_KEY = b"authRevision"
AUTH_ENABLED_KEY = b"authEnabled"  # one byte: 1 enabled, 0 not
CLUSTER_VERSION = b"3.5.0"

_U64 = struct.Struct(">Q")
_LEASE_ID = struct.Struct(">q")  # etcd's lease ids are int64, stored as their 8 bytes (uint64(id))
# Revision keys are native.codec's encode_revision/decode_revision (this module imports nothing of ours).


def u64(value: int) -> bytes:
    return _U64.pack(value)


def parse_u64(data: bytes, what: str) -> int:
    if len(data) != _U64.size:
        raise ValueError(f"{what} is {len(data)} bytes, not {_U64.size}")
    return _U64.unpack(data)[0]


def lease_id_key(lease_id: int) -> bytes:
    """The lease bucket's key of a lease: a negative id sorts after every positive one, as in etcd's."""
    return _LEASE_ID.pack(lease_id)


def parse_lease_id_key(data: bytes) -> int:
    if len(data) != _LEASE_ID.size:
        raise ValueError(f"a lease id key is {len(data)} bytes, not {_LEASE_ID.size}")
    return _LEASE_ID.unpack(data)[0]
