"""Authentication and roles on the router: etcd's auth store, read from the meta group.

The users, the roles, the auth flag and the auth revision are records of the
meta group (tessera/api/meta_keys.py, under tessera/auth/), changed only by
router/auth_service.py, each change one transaction there. Every router
follows them as it follows the shard map (router/server.py) and installs each
new set here with `AuthStore.install`: all routers serve the same users and
roles.

Checks are made where etcd makes them (the server wraps its handlers with
`Guard`). A call names its user by a token in gRPC metadata `token`, or in the
gateway's `Authorization` header. With auth enabled, a call without one gets
"user name is empty", an unknown token "invalid auth token", a key outside the
user's roles "permission denied". A permission check is an interval search:
each user's permissions, merged over its roles into sorted disjoint ranges
(`Intervals`), are built once per auth revision and found by bisection. With
auth disabled, `AuthStore.enabled` is false and no check runs.

Tokens (`--auth-token`, as etcd's flag) are etcd's simple tokens by default:
random, known only to the router that issued them (as each etcd member keeps
its own), valid for a TTL that every use extends. A simple token ends when its
user is deleted or changes password, and every one ends when auth is disabled,
on every router: each router compares the records it installs with those it
had. Or JWTs signed with a key every router is given, valid on every router
until they expire; a JWT carries the auth revision it was made at, so any
change to users or roles makes it "revision of auth store is old", as in etcd.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import re
import secrets
import string
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import jwt
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import DecodeError

from router.rpc import GO_CODE_NAMES
from router.shard_map import prefix_end
from tessera.api import errors, validation
from tessera.api.auth_pb2 import Permission, Role, User
from tessera.api.internal_pb2 import AuthStateRecord
from tessera.api.meta_keys import AUTH_ROLES_PREFIX, AUTH_STATE_KEY, AUTH_USERS_PREFIX
from tessera.api.rpc_pb2 import DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest

ROOT = "root"  # the user that may enable auth, and the role that may do anything
# etcd creates its auth store at revision 1; every change to users or roles adds one.
INITIAL_REVISION = 1
# etcd's --auth-token-ttl default: a simple token unused this long is forgotten.
SIMPLE_TOKEN_TTL_SECONDS = 300.0
# Expired tokens are dropped at most this often (a token is also checked when used). Tokens are
# made only by Authenticate, whose bcrypt check costs tens of ms, so at most a few thousand live.
TOKEN_SWEEP_SECONDS = 1.0
_TOKEN_LETTERS = string.ascii_letters
_TOKEN_LETTERS_COUNT = 16  # etcd's simple token: 16 random letters, a dot, a serial number
JWT_TTL_SECONDS = 300.0  # etcd's default `ttl` of a JWT


@dataclass(frozen=True)
class AuthRecords:
    """The meta group's auth records at one moment."""

    enabled: bool = False
    revision: int = INITIAL_REVISION
    users: dict[str, User] = field(default_factory=dict)
    roles: dict[str, Role] = field(default_factory=dict)
    # The state record's mod revision (0: never written): a change compares it, and a router
    # installs a set of records only if it is at least as new as the one it has.
    state_mod_revision: int = 0

    @classmethod
    def from_kvs(cls, kvs: Iterable) -> AuthRecords:
        """Parse the KeyValues under the auth prefix (others are ignored)."""
        enabled, revision, state_mod_revision = False, INITIAL_REVISION, 0
        users, roles = {}, {}
        for kv in kvs:
            if kv.key == AUTH_STATE_KEY:
                state = AuthStateRecord.FromString(kv.value)
                enabled, revision, state_mod_revision = state.enabled, state.revision, kv.mod_revision
            elif kv.key.startswith(AUTH_USERS_PREFIX):
                user = User.FromString(kv.value)
                users[user.name.decode()] = user
            elif kv.key.startswith(AUTH_ROLES_PREFIX):
                role = Role.FromString(kv.value)
                roles[role.name.decode()] = role
        return cls(enabled, revision, users, roles, state_mod_revision)


def has_root_role(user: User) -> bool:
    return ROOT in user.roles


class AuthInfo(NamedTuple):
    """Who a call is, and the auth revision its token was checked at."""

    user: str
    revision: int


# --- permissions ------------------------------------------------------------------------


class Intervals:
    """A union of key ranges, kept as sorted disjoint [start, end) ranges; end None: no end.

    `covers(key, end)` is etcd's question for a range request (is all of [key, end) inside
    the union?), `covers(key)` its question for one key; both one bisection.
    """

    __slots__ = ("_starts", "_ends")

    def __init__(self, ranges: Iterable[tuple[bytes, bytes | None]]):
        starts: list[bytes] = []
        ends: list[bytes | None] = []
        for start, end in sorted(ranges, key=lambda r: r[0]):
            if starts and (ends[-1] is None or start <= ends[-1]):  # touches the last: one range
                if ends[-1] is not None and (end is None or end > ends[-1]):
                    ends[-1] = end
                continue
            starts.append(start)
            ends.append(end)
        self._starts, self._ends = starts, ends

    def covers(self, key: bytes, end: bytes | None = b"") -> bool:
        """Whether [key, end) is inside the union; end b"": the key alone; None: to the end."""
        position = bisect.bisect_right(self._starts, key) - 1
        if position < 0:
            return False
        last = self._ends[position]
        if last is not None and key >= last:
            return False  # the key is in a gap
        if end == b"" or (end is not None and end <= key):
            return True  # one key, or a range that holds none: etcd asks only about its start
        return last is None or (end is not None and end <= last)


def permission_range(permission: Permission) -> tuple[bytes, bytes | None]:
    """A granted permission as a key range: one key, [key, range_end), or from key on."""
    if not permission.range_end:
        return permission.key, permission.key + b"\0"
    if permission.range_end == b"\0":
        return permission.key, None
    return permission.key, permission.range_end


def is_valid_permission_range(key: bytes, range_end: bytes) -> bool:
    """etcd grants a permission on one key, on [key, range_end) with key < range_end, or from key on."""
    return bool(key) and (not range_end or key < range_end or range_end == b"\0")


class UserPermissions(NamedTuple):
    is_root: bool
    read: Intervals
    write: Intervals


def merged_permissions(records: AuthRecords, user: User) -> UserPermissions:
    read, write = [], []
    for name in user.roles:
        role = records.roles.get(name)
        for permission in role.keyPermission if role is not None else ():
            key_range = permission_range(permission)
            if permission.permType in (Permission.READ, Permission.READWRITE):
                read.append(key_range)
            if permission.permType in (Permission.WRITE, Permission.READWRITE):
                write.append(key_range)
    return UserPermissions(has_root_role(user), Intervals(read), Intervals(write))


# --- tokens -------------------------------------------------------------------------------


class SimpleTokens:
    """etcd's simple tokens on one router: token -> user, each with a deadline that use extends."""

    def __init__(self, ttl_seconds: float = SIMPLE_TOKEN_TTL_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._users: dict[str, str] = {}
        self._deadlines: dict[str, float] = {}
        self._serial = 0
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._users)

    def assign(self, user: str, _revision: int = 0) -> str:
        now = self._clock()
        if now >= self._next_sweep:
            self._next_sweep = now + TOKEN_SWEEP_SECONDS
            for token in [token for token, deadline in self._deadlines.items() if deadline < now]:
                self._forget(token)
        self._serial += 1
        token = "".join(secrets.choice(_TOKEN_LETTERS) for _ in range(_TOKEN_LETTERS_COUNT)) + f".{self._serial}"
        self._users[token] = user
        self._deadlines[token] = now + self.ttl_seconds
        return token

    def info(self, token: str, revision: int) -> AuthInfo | None:
        """The token's user at the auth revision now, its deadline moved on; None for an unknown
        or expired token."""
        deadline = self._deadlines.get(token)
        if deadline is None:
            return None
        now = self._clock()
        if now > deadline:
            self._forget(token)
            return None
        self._deadlines[token] = now + self.ttl_seconds
        return AuthInfo(self._users[token], revision)

    def invalidate_user(self, user: str) -> None:
        for token in [token for token, owner in self._users.items() if owner == user]:
            self._forget(token)

    def clear(self) -> None:
        self._users.clear()
        self._deadlines.clear()

    def _forget(self, token: str) -> None:
        del self._users[token]
        del self._deadlines[token]


class JWTTokens:
    """etcd's JWT tokens: claims username, revision and exp, signed with the private key (or the
    HMAC secret), checked with the public key; a router given only a public key checks tokens
    and makes none."""

    def __init__(self, sign_method: str, private_key: bytes | None, public_key: bytes | None,
                 ttl_seconds: float = JWT_TTL_SECONDS, clock: Callable[[], float] = time.time):
        if sign_method not in jwt.algorithms.get_default_algorithms() or sign_method == "none":
            raise ValueError(f"unknown JWT sign-method {sign_method!r} (RS256, ES256, PS256, HS256, ...)")
        self.sign_method = sign_method
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        if sign_method.startswith("HS"):
            if not private_key:
                raise ValueError(f"sign-method {sign_method} needs priv-key (the shared secret)")
            self._signing_key = self._verifying_key = private_key
            return
        self._signing_key = serialization.load_pem_private_key(private_key, None) if private_key else None
        if public_key:
            self._verifying_key = serialization.load_pem_public_key(public_key)
        elif self._signing_key is not None:
            self._verifying_key = self._signing_key.public_key()
        else:
            raise ValueError("a JWT needs pub-key or priv-key")

    def assign(self, user: str, revision: int) -> str:
        if self._signing_key is None:
            raise errors.Reported("UNKNOWN", "auth: token signing attempted with verify-only key")
        claims = {"username": user, "revision": revision, "exp": int(self._clock() + self.ttl_seconds)}
        return jwt.encode(claims, self._signing_key, algorithm=self.sign_method)

    def info(self, token: str, _revision: int) -> AuthInfo | None:
        """The token's user and the auth revision it was made at; None unless it is ours and alive."""
        try:  # the expiry is checked below, on this object's clock
            claims = jwt.decode(token, self._verifying_key, algorithms=[self.sign_method],
                                options={"verify_exp": False})
        except jwt.PyJWTError:
            return None
        user, revision, expiry = claims.get("username"), claims.get("revision"), claims.get("exp")
        if not isinstance(user, str) or not isinstance(revision, (int, float)):
            return None
        if not isinstance(expiry, (int, float)) or expiry <= self._clock():
            return None
        return AuthInfo(user, int(revision))

    def invalidate_user(self, _user: str) -> None:
        """A JWT lives until it expires (a change of auth revision makes it old)."""

    def clear(self) -> None:
        """As invalidate_user."""


_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s)")
_GO_DURATION_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def _go_duration_seconds(text: str) -> float:
    """A Go duration ("5m", "1h30m", "90s") in seconds."""
    parts = _GO_DURATION.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * _GO_DURATION_SECONDS[unit] for number, unit in parts)


def token_provider(option: str, simple_ttl_seconds: float = SIMPLE_TOKEN_TTL_SECONDS):
    """The tokens etcd's --auth-token names: "simple", or "jwt,pub-key=FILE,priv-key=FILE,
    sign-method=RS256,ttl=5m" (each key once). ValueError says what is wrong."""
    kind, *pairs = option.split(",")
    settings: dict[str, str] = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or name in settings:
            raise ValueError(f"invalid auth token option {option!r}: {pair!r}")
        settings[name] = value
    if kind == "simple":
        return SimpleTokens(simple_ttl_seconds)
    if kind != "jwt":
        raise ValueError(f"unknown auth token type {kind!r} (simple or jwt)")

    def read(name: str) -> bytes | None:
        path = settings.get(name)
        return Path(path).read_bytes() if path else None

    return JWTTokens(settings.get("sign-method", ""), read("priv-key"), read("pub-key"),
                     _go_duration_seconds(settings["ttl"]) if settings.get("ttl") else JWT_TTL_SECONDS)


# --- the store -------------------------------------------------------------------------


class AuthStore:
    """This router's copy of the auth records, its tokens, and the permission checks."""

    def __init__(self, tokens: SimpleTokens | JWTTokens | None = None):
        self.records = AuthRecords()
        self.enabled = False
        self.tokens = tokens if tokens is not None else SimpleTokens()  # an empty one is falsy
        self._permissions: dict[str, UserPermissions | None] = {}  # of self.records' revision

    def install(self, records: AuthRecords) -> None:
        """Take a newer set of records; tokens of users deleted or with a new password end."""
        if records.state_mod_revision <= self.records.state_mod_revision:
            # The same records (every change rewrites the state record), or an older read than
            # the one installed (a watch reload racing a local change): the cache stays.
            return
        if not records.enabled:
            self.tokens.clear()
        else:
            for name, user in self.records.users.items():
                current = records.users.get(name)
                if current is None or current.password != user.password:
                    self.tokens.invalidate_user(name)
        self.records = records
        self.enabled = records.enabled
        self._permissions = {}

    def caller(self, metadata, common_name: str | None = None) -> AuthInfo | None:
        """The call's user, from its token (None: it has none); an unknown token is refused.

        Without a token, the Common Name of the client certificate its connection verified
        (`common_name`) is the user, as etcd does with client certificate auth. As etcd, neither
        is looked at while auth is disabled.
        """
        if not self.enabled:
            return None
        token = None
        for name, value in metadata:
            if name == "token":
                token = value
                break
            if name == "authorization" and token is None:
                token = value.removeprefix("Bearer ")
        if token is None:
            return AuthInfo(common_name, self.records.revision) if common_name else None
        info = self.tokens.info(token, self.records.revision)
        if info is None:
            raise errors.InvalidAuthToken()
        return info

    def _permissions_of(self, user: str) -> UserPermissions | None:
        try:
            return self._permissions[user]
        except KeyError:
            record = self.records.users.get(user)
            merged = None if record is None else merged_permissions(self.records, record)
            self._permissions[user] = merged
            return merged

    def check(self, info: AuthInfo | None, key: bytes, range_end: bytes = b"", write: bool = False) -> None:
        """etcd's permission check of one key (range_end b"") or range, for reading or writing."""
        if not self.enabled:
            return
        if info is None:
            raise errors.UserEmpty()
        if info.revision < self.records.revision:
            raise errors.AuthOldRevision()
        permissions = self._permissions_of(info.user)
        if permissions is None:
            raise errors.PermissionDenied()
        if permissions.is_root:
            return
        intervals = permissions.write if write else permissions.read
        if not intervals.covers(key, None if range_end == b"\0" else range_end):
            raise errors.PermissionDenied()

    def check_admin(self, info: AuthInfo | None) -> None:
        """Only a user with the root role, while auth is enabled."""
        if not self.enabled:
            return
        if info is None:
            raise errors.UserEmpty()
        user = self.records.users.get(info.user)
        if user is None:
            raise errors.UserNotFound()
        if not has_root_role(user):
            raise errors.PermissionDenied()

    def is_admin(self, info: AuthInfo | None) -> bool:
        try:
            self.check_admin(info)
        except errors.EtcdError:
            return False
        return True

    def require_user(self, info: AuthInfo | None) -> None:
        """Any authenticated user, while auth is enabled."""
        if self.enabled and info is None:
            raise errors.UserEmpty()

    # --- requests, as etcd's appliers check them ---

    def check_range(self, info: AuthInfo | None, request: RangeRequest) -> None:
        self.check(info, request.key, request.range_end)

    def check_put(self, info: AuthInfo | None, request: PutRequest) -> None:
        """A put's key; its previous value is a read. (A lease's keys: Guard.put.)"""
        self.check(info, request.key, write=True)
        if request.prev_kv:
            self.check(info, request.key)

    def check_delete(self, info: AuthInfo | None, request: DeleteRangeRequest) -> None:
        if request.prev_kv:
            self.check(info, request.key, request.range_end)
        self.check(info, request.key, request.range_end, write=True)

    def check_txn(self, info: AuthInfo | None, request: TxnRequest) -> None:
        """Every compare is a read; every operation of both branches, nested ones too, as its kind."""
        for compare in request.compare:
            self.check(info, compare.key, compare.range_end)
        for op in (*request.success, *request.failure):
            kind = op.WhichOneof("request")
            if kind == "request_range":
                self.check_range(info, op.request_range)
            elif kind == "request_put":
                self.check_put(info, op.request_put)
            elif kind == "request_delete_range":
                self.check_delete(info, op.request_delete_range)
            elif kind == "request_txn":
                self.check_txn(info, op.request_txn)


class Guard:
    """Each call's checks, where etcd makes them; router/server.py runs them, while auth is
    enabled, before the handler (`confirm(guard.put, request, call)`) and on the fast path (`fast`).

    A refusal for want of permission is confirmed on the records as the meta group has them now
    (`refresh`), so a grant made through another router counts here at once, before this
    router's watch brings it. A revoke reaches a router with its watch, a moment later. Refusals
    share reads: one waits for a read begun after it was refused, so a burst of them costs the
    meta group two reads, not one each.
    """

    def __init__(self, store: AuthStore, leases, refresh):
        self.store = store
        self.leases = leases  # router.leases.Lessor: the keys attached to a lease, in every group
        self.refresh = refresh  # coroutine function: read and install the auth records
        self._refusals = itertools.count(1)  # each refusal's number, in the order they came
        self._fresh_for = 0  # refusals up to this number have seen records read after them
        self._refreshing = asyncio.Lock()

    def caller(self, call) -> AuthInfo | None:
        return self.store.caller(call.metadata, call.client_common_name)

    async def confirm(self, check, request, call) -> None:
        try:
            await check(request, call)
        except errors.PermissionDenied:
            await self._records_read_after(next(self._refusals))
            await check(request, call)

    async def _records_read_after(self, refusal: int) -> None:
        async with self._refreshing:
            if self._fresh_for >= refusal:
                return  # a read begun after this refusal came has been installed
            fresh_for = next(self._refusals)  # every refusal before this read began
            await self.refresh()
            self._fresh_for = fresh_for

    # A KV request's form is checked before its permissions, as etcd's gRPC layer checks it
    # before its server does (an empty key is "key is not provided" for anyone).

    async def range(self, request: RangeRequest, call) -> None:
        validation.check_range(request)
        self.store.check_range(self.caller(call), request)

    async def put(self, request: PutRequest, call) -> None:
        validation.check_put(request)
        info = self.caller(call)
        self.store.check_put(info, request)
        if request.lease:
            await self._lease_keys_writable(info, request.lease)

    async def delete_range(self, request: DeleteRangeRequest, call) -> None:
        validation.check_delete(request)
        self.store.check_delete(self.caller(call), request)

    async def txn(self, request: TxnRequest, call) -> None:
        validation.check_txn(request)
        info = self.caller(call)
        self.store.check_txn(info, request)
        for lease in _txn_put_leases(request):
            await self._lease_keys_writable(info, lease)

    async def admin(self, _request, call) -> None:
        """Compaction, maintenance that changes or reads everything, auth management: root only."""
        self.store.check_admin(self.caller(call))

    async def user(self, _request, call) -> None:
        """Calls etcd serves to any authenticated user (Status, LeaseGrant, an alarm list, ...)."""
        self.store.require_user(self.caller(call))

    async def user_get(self, request, call) -> None:
        """Root, or a user asking about itself."""
        info = self.caller(call)
        if info is None or info.user != request.name:
            self.store.check_admin(info)

    async def role_get(self, request, call) -> None:
        """Root, or a user asking about a role it has."""
        info = self.caller(call)
        user = self.store.records.users.get(info.user) if info is not None else None
        if user is None or request.role not in user.roles:
            self.store.check_admin(info)

    async def alarm(self, request, call) -> None:
        if request.action == request.GET:
            await self.user(request, call)
        else:
            await self.admin(request, call)

    async def lease_revoke(self, request, call) -> None:
        """Revoking a lease deletes its keys: the user must be able to write every one."""
        info = self.caller(call)
        self.store.require_user(info)
        await self._lease_keys_writable(info, request.ID)

    async def lease_time_to_live(self, request, call) -> None:
        """With keys, the answer shows them: the user must be able to read every one."""
        info = self.caller(call)
        self.store.require_user(info)
        if request.keys and not self.store.is_admin(info):
            for key in await self.leases.attached_keys(request.ID):
                self.store.check(info, key)

    # Lock and Election run etcd's client recipes on the keys under "NAME/" (router/concurrency.py):
    # each call needs the KV permissions its recipe uses there.

    async def lock(self, request, call) -> None:
        """Lock and Campaign: a key of the caller's under NAME/ written, the others read."""
        info = self.caller(call)
        start, end = _contenders(request.name)
        self.store.check(info, start, end)
        self.store.check(info, start, end, write=True)

    async def unlock(self, request, call) -> None:
        self.store.check(self.caller(call), request.key, write=True)

    async def proclaim(self, request, call) -> None:
        """The leader's key compared, then written."""
        info = self.caller(call)
        self.store.check(info, request.leader.key)
        self.store.check(info, request.leader.key, write=True)

    async def resign(self, request, call) -> None:
        self.store.check(self.caller(call), request.leader.key, write=True)

    async def leader(self, request, call) -> None:
        """Leader and Observe read the contenders under NAME/."""
        self.store.check(self.caller(call), *_contenders(request.name))

    async def lease_leases(self, _request, call) -> None:
        """The list names every lease: a user other than root must be able to read all their keys."""
        info = self.caller(call)
        self.store.require_user(info)
        if self.store.is_admin(info):
            return
        for lease in (await self.leases.leases()).leases:
            for key in await self.leases.attached_keys(lease.ID):
                self.store.check(info, key)

    async def _lease_keys_writable(self, info: AuthInfo | None, lease: int) -> None:
        if self.store.is_admin(info):
            return
        for key in await self.leases.attached_keys(lease):
            self.store.check(info, key, write=True)

    async def watch_refusal(self, key: bytes, range_end: bytes, call) -> str | None:
        """Why a watch on [key, range_end) may not be created (etcd's cancel reason), or None."""
        async def check(_request, call) -> None:
            self.store.check(self.caller(call), key, range_end)

        try:
            await self.confirm(check, None, call)
        except (errors.InvalidAuthToken, errors.AuthOldRevision, errors.UserEmpty) as error:
            refusal = error
        except errors.EtcdError:
            refusal = errors.PermissionDenied()
        else:
            return None
        # etcd puts the text of its gRPC error there, code and all.
        return f"rpc error: code = {GO_CODE_NAMES[refusal.code]} desc = {refusal.message}"

    def fast(self, parse, validate, check, fast_handler, data_bytes_max: int | None = None):
        """A fast-path handler that first checks the request while auth is enabled: one test of a
        flag otherwise. A request that does not parse, or is refused for want of permission, goes
        to the general path, which answers it (the refusal confirmed there); so does one over
        `data_bytes_max`, which etcd refuses as too large before it looks at permissions."""
        store = self.store

        def handle(data: bytes, responder) -> None:
            if store.enabled:
                if data_bytes_max is not None and len(data) > data_bytes_max:
                    return responder.fallback()
                try:
                    request = parse(data)
                    validate(request)
                    check(store.caller(responder.metadata, responder.client_common_name), request)
                except errors.PermissionDenied:
                    return responder.fallback()
                except errors.EtcdError as error:
                    return responder.fail(error)
                except DecodeError:
                    pass
            fast_handler(data, responder)

        return handle


def _contenders(name: bytes) -> tuple[bytes, bytes]:
    prefix = name + b"/"
    return prefix, prefix_end(prefix) or b"\0"


def _txn_put_leases(request: TxnRequest) -> Iterable[int]:
    for op in (*request.success, *request.failure):
        kind = op.WhichOneof("request")
        if kind == "request_put" and op.request_put.lease:
            yield op.request_put.lease
        elif kind == "request_txn":
            yield from _txn_put_leases(op.request_txn)
