"""etcd's client-visible errors: each a class with its gRPC status code and exact message.

Clients match on these strings (etcd 3.5's rpctypes), so they are API. Code
anywhere in Tessera raises these classes; the gRPC edge turns one into a
status with `STATUS_CODES[error.code]` and `error.message`.
"""


class EtcdError(Exception):
    """An error a client sees. `code` names a gRPC status code (STATUS_CODES)."""

    code = "UNKNOWN"
    message = "etcdserver: unknown error"

    def __init__(self) -> None:
        super().__init__(self.message)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other)

    def __hash__(self) -> int:
        return hash(type(self))


class EmptyKey(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: key is not provided"


class KeyNotFound(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: key not found"


class ValueProvided(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: value is provided"


class LeaseProvided(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: lease is provided"


class TooManyOps(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: too many operations in txn request"


class DuplicateKey(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: duplicate key given in txn request"


class Corrupt(EtcdError):
    code = "DATA_LOSS"
    message = "etcdserver: corrupt cluster"


class InvalidSortOption(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid sort option"


class Compacted(EtcdError):
    code = "OUT_OF_RANGE"
    message = "etcdserver: mvcc: required revision has been compacted"


# The cancel_reason of a replica's cancel of a watch from below the floor of a range that moved
# in (shards/mvcc.py BelowMovedHistory; compact_revision: the floor). The router passes it on as
# etcd's compacted cancel with no reason, or resumes there a watch that followed the range.
MOVED_HISTORY_CANCEL_REASON = "tessera: the history before this range moved in is in another group"


class FutureRevision(EtcdError):
    code = "OUT_OF_RANGE"
    message = "etcdserver: mvcc: required revision is a future revision"


class NoSpace(EtcdError):
    code = "RESOURCE_EXHAUSTED"
    message = "etcdserver: mvcc: database space exceeded"


class LeaseNotFound(EtcdError):
    code = "NOT_FOUND"
    message = "etcdserver: requested lease not found"


class NoLeader(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: no leader"


class NotLeader(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: not leader"


class LeaderChanged(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: leader changed"


class RequestTimeout(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: request timed out"


class TooManyRequests(EtcdError):
    code = "RESOURCE_EXHAUSTED"
    message = "etcdserver: too many requests"


class Stopped(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: server stopped"


class BadLeaderTransferee(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: bad leader transferee"


class MemberExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: member ID already exist"


class PeerURLExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: Peer URLs already exists"


class MemberNotFound(EtcdError):
    code = "NOT_FOUND"
    message = "etcdserver: member not found"


class MemberNotLearner(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: can only promote a learner member"


class LearnerNotReady(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: can only promote a learner member which is in sync with leader"


class TooManyLearners(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: too many learner members in cluster"


class MemberNotEnoughStarted(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: re-configuration failed due to not enough started members"


class Unhealthy(EtcdError):
    code = "UNAVAILABLE"
    message = "etcdserver: unhealthy cluster"


class LeaseExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: lease already exists"


class LeaseTTLTooLarge(EtcdError):
    code = "OUT_OF_RANGE"
    message = "etcdserver: too large lease TTL"


class RequestTooLarge(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: request is too large"


class AuthNotEnabled(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: authentication is not enabled"


class RootUserNotExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: root user does not exist"


class UserNotFound(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: user name not found"


class RoleNotFound(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: role name not found"


class RootRoleNotExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: root user does not have root role"


class UserAlreadyExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: user name already exists"


class UserEmpty(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: user name is empty"


class RoleAlreadyExist(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: role name already exists"


class RoleEmpty(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: role name is empty"


class AuthFailed(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: authentication failed, invalid user ID or password"


class NoPasswordUser(EtcdError):
    """etcd maps no status to this one, so clients see its internal text with code UNKNOWN."""

    code = "UNKNOWN"
    message = "auth: authentication failed, password was given for no password user"


class PermissionNotGiven(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: permission not given"


class PermissionDenied(EtcdError):
    code = "PERMISSION_DENIED"
    message = "etcdserver: permission denied"


class RoleNotGranted(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: role is not granted to the user"


class PermissionNotGranted(EtcdError):
    code = "FAILED_PRECONDITION"
    message = "etcdserver: permission is not granted to the role"


class InvalidAuthToken(EtcdError):
    code = "UNAUTHENTICATED"
    message = "etcdserver: invalid auth token"


class InvalidAuthMgmt(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: invalid auth management"


class AuthOldRevision(EtcdError):
    code = "INVALID_ARGUMENT"
    message = "etcdserver: revision of auth store is old"


class ReadOnlyRouter(EtcdError):
    """Tessera's own: a router started with --read-only (a proxy beside clients) takes no writes."""

    code = "FAILED_PRECONDITION"
    message = "tessera: this router is read-only; send writes to a router that is not"


class Reported(EtcdError):
    """An error another process reported as (status code name, message): passed on unchanged."""

    def __init__(self, code: str, message: str) -> None:
        Exception.__init__(self, message)
        self.code, self.message = code, message

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EtcdError) and (self.code, self.message) == (other.code, other.message)

    def __hash__(self) -> int:
        return hash((self.code, self.message))


def from_report(code: str, message: str) -> EtcdError:
    """The error class with this code and message, or a Reported one carrying them."""
    kind = _BY_REPORT.get((code, message))
    return kind() if kind else Reported(code, message)


class TxnSpansGroups(EtcdError):
    """Tessera's own: cross-group transactions are not built yet (ARCHITECTURE decision 7)."""

    code = "FAILED_PRECONDITION"

    def __init__(self, groups) -> None:
        self.message = ("tessera: a transaction must keep its keys in one shard group; this one "
                        f"touches groups {', '.join(str(group) for group in sorted(groups))}")
        Exception.__init__(self, self.message)


_BY_REPORT = {
    (kind.code, kind.message): kind for kind in list(globals().values())
    if isinstance(kind, type) and issubclass(kind, EtcdError) and "message" in kind.__dict__
}


# gRPC's status codes by name (the numbers are gRPC's wire values); the edge sends these.
STATUS_CODES = {
    "OK": 0, "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4, "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9,
    "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12, "INTERNAL": 13, "UNAVAILABLE": 14,
    "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
