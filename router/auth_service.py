"""etcd's Auth service: users, roles and the auth flag, kept in the meta group.

Every change is one transaction on the meta group (`_change`): read the auth
records, work out the change with etcd's rules and errors, then write every
record it touches together with the state record (flag and auth revision),
compared on the state record's mod revision. A change that lost a race to
another router's is worked out again on the new records; nothing is ever
half written. The router installs the records it wrote at once, and every
other router when its watch of the meta group brings them.

Reads (status, get, list) and Authenticate read the records first, as etcd
answers them through raft: what one router changed, another one's answer shows.
Passwords are bcrypt hashes of etcd's default cost, made and checked off the
event loop.
"""

from __future__ import annotations

import asyncio
import logging

import bcrypt

from router.auth import (
    ROOT,
    AuthRecords,
    AuthStore,
    has_root_role,
    is_valid_permission_range,
)
from router.shard_client import GroupClient
from tessera.api import errors
from tessera.api.auth_pb2 import Role, User, UserAddOptions
from tessera.api.internal_pb2 import AuthStateRecord, ShardRequest
from tessera.api.meta_keys import AUTH_PREFIX, AUTH_STATE_KEY, prefix_range, role_key, user_key
from tessera.api.rpc_pb2 import (
    AuthDisableResponse,
    AuthenticateResponse,
    AuthEnableResponse,
    AuthRoleAddResponse,
    AuthRoleDeleteResponse,
    AuthRoleGetResponse,
    AuthRoleGrantPermissionResponse,
    AuthRoleListResponse,
    AuthRoleRevokePermissionResponse,
    AuthStatusResponse,
    AuthUserAddResponse,
    AuthUserChangePasswordResponse,
    AuthUserDeleteResponse,
    AuthUserGetResponse,
    AuthUserGrantRoleResponse,
    AuthUserListResponse,
    AuthUserRevokeRoleResponse,
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)

log = logging.getLogger("tessera.router")

BCRYPT_COST = 10  # etcd's --bcrypt-cost default (Go's bcrypt.DefaultCost)
# A change retried this often after losing races to other routers' changes gives up (and so does
# an Authenticate whose records keep changing while it checks the password).
CHANGE_ATTEMPTS = 20


def hash_password(password: str) -> bytes:
    # "2a", as Go's bcrypt writes it: the records read the same as an etcd's.
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST, prefix=b"2a"))


def password_matches(password: str, hashed: bytes) -> bool:
    try:
        return bcrypt.checkpw(password.encode(), hashed)
    except ValueError:  # not a bcrypt hash (a user added with an empty one)
        return False


def _put(key: bytes, record) -> RequestOp:
    return RequestOp(request_put=PutRequest(key=key, value=record.SerializeToString()))


def _delete(key: bytes) -> RequestOp:
    return RequestOp(request_delete_range=DeleteRangeRequest(key=key))


def _state(enabled: bool, revision: int) -> RequestOp:
    return _put(AUTH_STATE_KEY, AuthStateRecord(enabled=enabled, revision=revision))


class AuthService:
    def __init__(self, router, meta: GroupClient, store: AuthStore):
        self.router = router
        self.meta = meta
        self.store = store

    async def load(self) -> AuthRecords:
        """The auth records now (a linearizable read of the meta group), installed here too."""
        start, end = prefix_range(AUTH_PREFIX)
        response = await self.meta.call(ShardRequest(range=RangeRequest(key=start, range_end=end)), write=False)
        records = AuthRecords.from_kvs(response.range.kvs)
        self.store.install(records)
        return records

    async def _change(self, change) -> None:
        """Run `change(records) -> [RequestOp] | None` (None: nothing to write) as one transaction."""
        for _ in range(CHANGE_ATTEMPTS):
            records = await self.load()
            ops = change(records)
            if ops is None:
                return
            txn = TxnRequest(compare=[Compare(key=AUTH_STATE_KEY, target=Compare.MOD, result=Compare.EQUAL,
                                              mod_revision=records.state_mod_revision)], success=ops)
            if (await self.meta.call(ShardRequest(txn=txn), write=True)).txn.succeeded:
                await self.load()
                return
        raise errors.RequestTimeout()

    def _header(self):
        return self.router.header()

    # --- the flag ---

    async def auth_enable(self, _request) -> AuthEnableResponse:
        def change(records: AuthRecords):
            if records.enabled:
                return None
            root = records.users.get(ROOT)
            if root is None:
                raise errors.RootUserNotExist()
            if not has_root_role(root):
                raise errors.RootRoleNotExist()
            return [_state(True, records.revision)]  # as etcd: enabling keeps the revision

        await self._change(change)
        log.info("authentication enabled")
        return AuthEnableResponse(header=self._header())

    async def auth_disable(self, _request) -> AuthDisableResponse:
        def change(records: AuthRecords):
            return [_state(False, records.revision + 1)] if records.enabled else None

        await self._change(change)
        log.info("authentication disabled")
        return AuthDisableResponse(header=self._header())

    async def auth_status(self, _request) -> AuthStatusResponse:
        records = await self.load()
        return AuthStatusResponse(header=self._header(), enabled=records.enabled, authRevision=records.revision)

    async def authenticate(self, request) -> AuthenticateResponse:
        for _ in range(CHANGE_ATTEMPTS):
            records = await self.load()
            if not records.enabled:
                raise errors.AuthNotEnabled()
            user = records.users.get(request.name)
            if user is None:
                raise errors.AuthFailed()
            if user.options.no_password:
                raise errors.NoPasswordUser()
            if not await asyncio.to_thread(password_matches, request.password, user.password):
                log.info("invalid password for user %r", request.name)
                raise errors.AuthFailed()
            if self.store.records.revision == records.revision:
                token = self.store.tokens.assign(request.name, records.revision)
                return AuthenticateResponse(header=self._header(), token=token)
            # The records changed while the password was checked (a new password?): again.
        raise errors.RequestTimeout()

    # --- users ---

    async def user_add(self, request) -> AuthUserAddResponse:
        no_password = request.HasField("options") and request.options.no_password
        # As etcd: the server hashes the password it is given (a hashedPassword sent is replaced).
        password = b"" if no_password else await asyncio.to_thread(hash_password, request.password)

        def change(records: AuthRecords):
            if not request.name:
                raise errors.UserEmpty()
            if request.name in records.users:
                raise errors.UserAlreadyExist()
            user = User(name=request.name.encode(), password=password,
                        options=UserAddOptions(no_password=no_password))
            return [_put(user_key(request.name), user), _state(records.enabled, records.revision + 1)]

        await self._change(change)
        return AuthUserAddResponse(header=self._header())

    async def user_delete(self, request) -> AuthUserDeleteResponse:
        def change(records: AuthRecords):
            if records.enabled and request.name == ROOT:
                raise errors.InvalidAuthMgmt()
            if request.name not in records.users:
                raise errors.UserNotFound()
            return [_delete(user_key(request.name)), _state(records.enabled, records.revision + 1)]

        await self._change(change)
        return AuthUserDeleteResponse(header=self._header())

    async def user_change_password(self, request) -> AuthUserChangePasswordResponse:
        password = await asyncio.to_thread(hash_password, request.password)

        def change(records: AuthRecords):
            user = records.users.get(request.name)
            if user is None:
                raise errors.UserNotFound()
            changed = User()
            changed.CopyFrom(user)
            # A user without a password keeps none (it authenticates by certificate only).
            changed.password = b"" if user.options.no_password else password
            return [_put(user_key(request.name), changed), _state(records.enabled, records.revision + 1)]

        await self._change(change)
        return AuthUserChangePasswordResponse(header=self._header())

    async def user_grant_role(self, request) -> AuthUserGrantRoleResponse:
        def change(records: AuthRecords):
            user = records.users.get(request.user)
            if user is None:
                raise errors.UserNotFound()
            if request.role != ROOT and request.role not in records.roles:
                raise errors.RoleNotFound()  # the root role needs no record
            if request.role in user.roles:
                return None  # granted already: etcd changes nothing, not even the revision
            changed = User()
            changed.CopyFrom(user)
            roles = sorted([*user.roles, request.role])
            del changed.roles[:]
            changed.roles.extend(roles)
            return [_put(user_key(request.user), changed), _state(records.enabled, records.revision + 1)]

        await self._change(change)
        return AuthUserGrantRoleResponse(header=self._header())

    async def user_revoke_role(self, request) -> AuthUserRevokeRoleResponse:
        def change(records: AuthRecords):
            if records.enabled and request.name == ROOT and request.role == ROOT:
                raise errors.InvalidAuthMgmt()
            user = records.users.get(request.name)
            if user is None:
                raise errors.UserNotFound()
            if request.role not in user.roles:
                raise errors.RoleNotGranted()
            changed = User()
            changed.CopyFrom(user)
            del changed.roles[:]
            changed.roles.extend(role for role in user.roles if role != request.role)
            return [_put(user_key(request.name), changed), _state(records.enabled, records.revision + 1)]

        await self._change(change)
        return AuthUserRevokeRoleResponse(header=self._header())

    async def user_get(self, request) -> AuthUserGetResponse:
        user = (await self.load()).users.get(request.name)
        if user is None:
            raise errors.UserNotFound()
        return AuthUserGetResponse(header=self._header(), roles=user.roles)

    async def user_list(self, _request) -> AuthUserListResponse:
        return AuthUserListResponse(header=self._header(), users=sorted((await self.load()).users))

    # --- roles ---

    async def role_add(self, request) -> AuthRoleAddResponse:
        def change(records: AuthRecords):
            if not request.name:
                raise errors.RoleEmpty()
            if request.name in records.roles:
                raise errors.RoleAlreadyExist()
            role = Role(name=request.name.encode())
            return [_put(role_key(request.name), role), _state(records.enabled, records.revision + 1)]

        await self._change(change)
        return AuthRoleAddResponse(header=self._header())

    async def role_delete(self, request) -> AuthRoleDeleteResponse:
        def change(records: AuthRecords):
            if records.enabled and request.role == ROOT:
                raise errors.InvalidAuthMgmt()
            if request.role not in records.roles:
                raise errors.RoleNotFound()
            ops = [_delete(role_key(request.role))]
            for name, user in records.users.items():  # the role leaves every user that had it
                if request.role in user.roles:
                    changed = User()
                    changed.CopyFrom(user)
                    del changed.roles[:]
                    changed.roles.extend(role for role in user.roles if role != request.role)
                    ops.append(_put(user_key(name), changed))
            return [*ops, _state(records.enabled, records.revision + 1)]

        await self._change(change)
        return AuthRoleDeleteResponse(header=self._header())

    async def role_grant_permission(self, request) -> AuthRoleGrantPermissionResponse:
        def change(records: AuthRecords):
            if not request.HasField("perm"):
                raise errors.PermissionNotGiven()
            granted = request.perm
            if not is_valid_permission_range(granted.key, granted.range_end):
                raise errors.InvalidAuthMgmt()
            role = records.roles.get(request.name)
            if role is None:
                raise errors.RoleNotFound()
            changed = Role()
            changed.CopyFrom(role)
            for permission in changed.keyPermission:
                if (permission.key, permission.range_end) == (granted.key, granted.range_end):
                    permission.permType = granted.permType  # the same range again: its type changes
                    break
            else:
                permissions = sorted([*role.keyPermission, granted], key=lambda p: p.key)
                del changed.keyPermission[:]
                changed.keyPermission.extend(permissions)
            return [_put(role_key(request.name), changed), _state(records.enabled, records.revision + 1)]

        await self._change(change)
        return AuthRoleGrantPermissionResponse(header=self._header())

    async def role_revoke_permission(self, request) -> AuthRoleRevokePermissionResponse:
        def change(records: AuthRecords):
            role = records.roles.get(request.role)
            if role is None:
                raise errors.RoleNotFound()
            kept = [permission for permission in role.keyPermission
                    if (permission.key, permission.range_end) != (request.key, request.range_end)]
            if len(kept) == len(role.keyPermission):
                raise errors.PermissionNotGranted()
            changed = Role(name=role.name, keyPermission=kept)
            return [_put(role_key(request.role), changed), _state(records.enabled, records.revision + 1)]

        await self._change(change)
        return AuthRoleRevokePermissionResponse(header=self._header())

    async def role_get(self, request) -> AuthRoleGetResponse:
        role = (await self.load()).roles.get(request.role)
        if role is None:
            raise errors.RoleNotFound()
        return AuthRoleGetResponse(header=self._header(), perm=role.keyPermission)

    async def role_list(self, _request) -> AuthRoleListResponse:
        return AuthRoleListResponse(header=self._header(), roles=sorted((await self.load()).roles))
