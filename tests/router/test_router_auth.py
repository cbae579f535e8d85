"""Authentication and roles over gRPC and the gateway: bad input gets etcd's code and message,
compared call by call with a real etcd 3.5; and what several routers share (the meta group's
users and roles) and do not share (each one's simple tokens).

This module has a cluster of its own (auth enabled on the session's cluster would lock the other
tests out if a step failed) with two routers of its own, B's tokens living 2 s, and an etcd
whose tokens live 2 s too.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.request

import grpc
import pytest

from cluster import ClusterThread
from etcd_tools import EtcdServer, ToolUnavailable
from router.server import RouterServer
from tessera.api import rpc_pb2_grpc
from tessera.api.auth_pb2 import Permission, UserAddOptions
from tessera.api.meta_keys import META_GROUP
from tessera.api.rpc_pb2 import (
    AuthDisableRequest,
    AuthenticateRequest,
    AuthEnableRequest,
    AuthRoleAddRequest,
    AuthRoleDeleteRequest,
    AuthRoleGrantPermissionRequest,
    AuthRoleRevokePermissionRequest,
    AuthStatusRequest,
    AuthUserAddRequest,
    AuthUserChangePasswordRequest,
    AuthUserDeleteRequest,
    AuthUserGetRequest,
    AuthUserGrantRoleRequest,
    AuthUserRevokeRoleRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseLeasesRequest,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    PutRequest,
    RangeRequest,
    WatchCreateRequest,
    WatchRequest,
)
from tessera.launcher import free_ports

TOKEN_TTL_SECONDS = 2


@pytest.fixture(scope="module")
def etcd():
    try:
        with EtcdServer(name="auth-grpc", extra_args=[f"--auth-token-ttl={TOKEN_TTL_SECONDS}"]) as server:
            yield server
    except ToolUnavailable as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ClusterThread(tmp_path_factory.mktemp("tessera-auth")) as cluster:
        yield cluster


def _start_routers(cluster, options: list[dict]) -> list[RouterServer]:
    """Routers of the cluster, one with each of `options`, started on the cluster's loop (where
    their channels must live)."""
    layout = cluster.launcher.layout
    meta = {member: layout.api_address(META_GROUP, member) for member in (1, 2, 3)}

    async def start() -> list[RouterServer]:
        servers = [RouterServer(f"127.0.0.1:{port}", meta, name=f"auth-test-{port}", **router_options)
                   for port, router_options in zip(free_ports(len(options)), options)]
        for server in servers:
            await server.start()
        return servers

    return cluster.run(start())


@pytest.fixture(scope="module")
def routers(cluster):
    """Two routers of one cluster: (A, B), B's tokens living TOKEN_TTL_SECONDS."""
    servers = _start_routers(cluster, [{}, {"auth_token_ttl": TOKEN_TTL_SECONDS}])
    yield servers
    for server in servers:
        cluster.run(server.stop())


class Client:
    def __init__(self, endpoint: str):
        self.channel = grpc.aio.insecure_channel(endpoint)
        self.auth = rpc_pb2_grpc.AuthStub(self.channel)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
        self.watch = rpc_pb2_grpc.WatchStub(self.channel)


async def outcome(call) -> tuple[str, str]:
    """("OK", "") or (status code name, message)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code().name, error.details()
    return "OK", ""


def token(value: str) -> tuple[tuple[str, str]]:
    return (("token", value),)


async def both(clients, make_call, expected: tuple[str, str]) -> None:
    """Make the same call on Tessera and etcd; both must answer `expected`."""
    answers = [await outcome(make_call(client)) for client in clients]
    assert answers == [expected, expected], answers


OK = ("OK", "")
USER_EMPTY = ("INVALID_ARGUMENT", "etcdserver: user name is empty")
USER_NOT_FOUND = ("FAILED_PRECONDITION", "etcdserver: user name not found")
ROLE_NOT_FOUND = ("FAILED_PRECONDITION", "etcdserver: role name not found")
AUTH_FAILED = ("INVALID_ARGUMENT", "etcdserver: authentication failed, invalid user ID or password")
INVALID_TOKEN = ("UNAUTHENTICATED", "etcdserver: invalid auth token")
DENIED = ("PERMISSION_DENIED", "etcdserver: permission denied")
INVALID_MGMT = ("INVALID_ARGUMENT", "etcdserver: invalid auth management")


def test_bad_input_gets_etcds_code_and_message(routers, etcd):
    async def scenario():
        clients = [Client(routers[0].listen), Client(etcd.endpoint)]
        auth = [client.auth for client in clients]

        async def check(make_call, expected):
            await both(auth, make_call, expected)

        await check(lambda a: a.Authenticate(AuthenticateRequest(name="root", password="x")),
                    ("FAILED_PRECONDITION", "etcdserver: authentication is not enabled"))
        await check(lambda a: a.AuthEnable(AuthEnableRequest()),
                    ("FAILED_PRECONDITION", "etcdserver: root user does not exist"))
        await check(lambda a: a.UserAdd(AuthUserAddRequest(name="", password="x")), USER_EMPTY)
        await check(lambda a: a.RoleAdd(AuthRoleAddRequest(name="")),
                    ("INVALID_ARGUMENT", "etcdserver: role name is empty"))
        await check(lambda a: a.UserAdd(AuthUserAddRequest(name="root", password="rootpw")), OK)
        await check(lambda a: a.AuthEnable(AuthEnableRequest()),
                    ("FAILED_PRECONDITION", "etcdserver: root user does not have root role"))
        await check(lambda a: a.UserAdd(AuthUserAddRequest(name="root", password="again")),
                    ("FAILED_PRECONDITION", "etcdserver: user name already exists"))
        await check(lambda a: a.UserAdd(AuthUserAddRequest(name="cert", options=UserAddOptions(no_password=True))),
                    OK)
        await check(lambda a: a.UserAdd(AuthUserAddRequest(name="alice", password="alicepw")), OK)
        await check(lambda a: a.RoleAdd(AuthRoleAddRequest(name="app")), OK)
        await check(lambda a: a.RoleAdd(AuthRoleAddRequest(name="app")),
                    ("FAILED_PRECONDITION", "etcdserver: role name already exists"))
        await check(lambda a: a.RoleGrantPermission(AuthRoleGrantPermissionRequest(name="app")),
                    ("INVALID_ARGUMENT", "etcdserver: permission not given"))
        for key, range_end in ((b"b", b"a"), (b"", b""), (b"a", b"a")):
            # Refused since etcd 3.5.13 (the version Tessera reports); etcd 3.5.1 grants them.
            assert await outcome(auth[0].RoleGrantPermission(AuthRoleGrantPermissionRequest(
                name="app", perm=Permission(key=key, range_end=range_end)))) == INVALID_MGMT
        await check(lambda a: a.RoleGrantPermission(AuthRoleGrantPermissionRequest(
            name="nosuch", perm=Permission(key=b"/app/"))), ROLE_NOT_FOUND)
        await check(lambda a: a.RoleGrantPermission(AuthRoleGrantPermissionRequest(
            name="app", perm=Permission(permType=Permission.READWRITE, key=b"/app/", range_end=b"/app0"))), OK)
        await check(lambda a: a.UserGrantRole(AuthUserGrantRoleRequest(user="root", role="root")), OK)
        await check(lambda a: a.UserGrantRole(AuthUserGrantRoleRequest(user="root", role="root")), OK)  # twice
        await check(lambda a: a.UserGrantRole(AuthUserGrantRoleRequest(user="alice", role="app")), OK)
        await check(lambda a: a.UserGrantRole(AuthUserGrantRoleRequest(user="nobody", role="app")), USER_NOT_FOUND)
        await check(lambda a: a.UserGrantRole(AuthUserGrantRoleRequest(user="alice", role="nosuch")),
                    ROLE_NOT_FOUND)
        await check(lambda a: a.UserRevokeRole(AuthUserRevokeRoleRequest(name="root", role="app")),
                    ("FAILED_PRECONDITION", "etcdserver: role is not granted to the user"))
        await check(lambda a: a.RoleRevokePermission(AuthRoleRevokePermissionRequest(role="app", key=b"/x")),
                    ("FAILED_PRECONDITION", "etcdserver: permission is not granted to the role"))
        await check(lambda a: a.UserDelete(AuthUserDeleteRequest(name="nobody")), USER_NOT_FOUND)
        await check(lambda a: a.RoleDelete(AuthRoleDeleteRequest(role="nobody")), ROLE_NOT_FOUND)
        await check(lambda a: a.UserChangePassword(AuthUserChangePasswordRequest(name="nobody", password="x")),
                    USER_NOT_FOUND)
        await check(lambda a: a.UserGet(AuthUserGetRequest(name="nobody")), USER_NOT_FOUND)
        await check(lambda a: a.AuthEnable(AuthEnableRequest()), OK)

        await check(lambda a: a.Authenticate(AuthenticateRequest(name="root", password="wrong")), AUTH_FAILED)
        await check(lambda a: a.Authenticate(AuthenticateRequest(name="nobody", password="x")), AUTH_FAILED)
        await check(lambda a: a.Authenticate(AuthenticateRequest(name="cert", password="x")),
                    ("UNKNOWN", "auth: authentication failed, password was given for no password user"))
        await check(lambda a: a.AuthStatus(AuthStatusRequest()), USER_EMPTY)
        kvs = [client.kv for client in clients]
        await both(kvs, lambda kv: kv.Range(RangeRequest(key=b"/app/x")), USER_EMPTY)
        await both(kvs, lambda kv: kv.Range(RangeRequest(key=b"/app/x"), metadata=token("forged.1")), INVALID_TOKEN)
        # Too large is told before who asks is looked at.
        await both(kvs, lambda kv: kv.Put(PutRequest(key=b"/app/big", value=b"x" * (1536 * 1024))),
                   ("INVALID_ARGUMENT", "etcdserver: request is too large"))

        root = [(await a.Authenticate(AuthenticateRequest(name="root", password="rootpw"))).token for a in auth]
        alice = [(await a.Authenticate(AuthenticateRequest(name="alice", password="alicepw"))).token for a in auth]
        statuses = [await a.AuthStatus(AuthStatusRequest(), metadata=token(t)) for a, t in zip(auth, root)]
        assert [(s.enabled, s.authRevision) for s in statuses] == [(True, statuses[1].authRevision)] * 2

        async def each(make_call, tokens, expected):
            answers = [await outcome(make_call(client, t)) for client, t in zip(clients, tokens)]
            assert answers == [expected, expected], answers

        await each(lambda c, t: c.kv.Put(PutRequest(key=b"/app/x", value=b"1"), metadata=token(t)), alice, OK)
        await each(lambda c, t: c.kv.Put(PutRequest(key=b"/other", value=b"1"), metadata=token(t)), alice, DENIED)
        # A request's form is checked before its permissions.
        await each(lambda c, t: c.kv.Put(PutRequest(key=b"", value=b"1"), metadata=token(t)), alice,
                   ("INVALID_ARGUMENT", "etcdserver: key is not provided"))
        await each(lambda c, t: c.kv.Range(RangeRequest(key=b""), metadata=token(t)), alice,
                   ("INVALID_ARGUMENT", "etcdserver: key is not provided"))
        await each(lambda c, t: c.auth.UserGet(AuthUserGetRequest(name="root"), metadata=token(t)), alice, DENIED)
        await each(lambda c, t: c.auth.UserDelete(AuthUserDeleteRequest(name="root"), metadata=token(t)),
                   root, INVALID_MGMT)
        # A lease with a key alice may not write: she may not revoke it, nor see its keys.
        leases = [(await c.lease.LeaseGrant(LeaseGrantRequest(TTL=60), metadata=token(t))).ID
                  for c, t in zip(clients, root)]
        for client, lease, root_token in zip(clients, leases, root):
            await client.kv.Put(PutRequest(key=b"/other", value=b"v", lease=lease), metadata=token(root_token))
        answers = [await outcome(c.lease.LeaseRevoke(LeaseRevokeRequest(ID=lease), metadata=token(t)))
                   for c, lease, t in zip(clients, leases, alice)]
        assert answers == [DENIED, DENIED]
        # Checked since etcd 3.5.13 (the version Tessera reports); etcd 3.5.1 shows her the keys,
        # and lists the leases.
        assert await outcome(clients[0].lease.LeaseTimeToLive(LeaseTimeToLiveRequest(ID=leases[0], keys=True),
                                                              metadata=token(alice[0]))) == DENIED
        assert await outcome(clients[0].lease.LeaseLeases(LeaseLeasesRequest(), metadata=token(alice[0]))) == DENIED
        assert await outcome(clients[0].lease.LeaseLeases(LeaseLeasesRequest(), metadata=token(root[0]))) == OK
        answers = [await outcome(c.kv.Put(PutRequest(key=b"/app/y", value=b"v", lease=lease), metadata=token(t)))
                   for c, lease, t in zip(clients, leases, alice)]
        assert answers == [DENIED, DENIED]  # attaching the lease would let her keys go with it
        # A watch she may not read: created and canceled at once, with the reason.
        for client, alice_token, invalid_id in zip(clients, alice, (-1, 0)):
            stream = client.watch.Watch(metadata=token(alice_token))
            await stream.write(WatchRequest(create_request=WatchCreateRequest(key=b"/other")))
            answer = await asyncio.wait_for(stream.read(), 10)
            # The id: -1 since etcd 3.5.13 (which Tessera reports); etcd 3.5.1 echoes the request's.
            assert (answer.created, answer.canceled, answer.watch_id, answer.cancel_reason) == (
                True, True, invalid_id, "rpc error: code = PermissionDenied desc = etcdserver: permission denied")
            await stream.write(WatchRequest(create_request=WatchCreateRequest(key=b"/app/", range_end=b"/app0")))
            answer = await asyncio.wait_for(stream.read(), 10)
            assert answer.created and not answer.canceled
            stream.cancel()
        # Deleting a user ends its tokens.
        await each(lambda c, t: c.auth.UserDelete(AuthUserDeleteRequest(name="alice"), metadata=token(t)), root, OK)
        await each(lambda c, t: c.kv.Range(RangeRequest(key=b"/app/x"), metadata=token(t)), alice, INVALID_TOKEN)
        await each(lambda c, t: c.auth.AuthDisable(AuthDisableRequest(), metadata=token(t)), root, OK)
        for client in clients:
            for user in ("root", "cert"):
                await client.auth.UserDelete(AuthUserDeleteRequest(name=user))
            await client.auth.RoleDelete(AuthRoleDeleteRequest(role="app"))
            await client.channel.close()

    asyncio.run(scenario())


async def _setup_root(auth) -> str:
    """Auth enabled with a root user (a test's own names), its token on this router."""
    await auth.UserAdd(AuthUserAddRequest(name="root", password="rootpw"))
    await auth.UserGrantRole(AuthUserGrantRoleRequest(user="root", role="root"))
    await auth.AuthEnable(AuthEnableRequest())
    return (await auth.Authenticate(AuthenticateRequest(name="root", password="rootpw"))).token


async def _teardown(auth, root_token: str, users=(), roles=()) -> None:
    """Back to no auth, and none of the test's users and roles."""
    await auth.AuthDisable(AuthDisableRequest(), metadata=token(root_token))
    for user in ("root", *users):
        await auth.UserDelete(AuthUserDeleteRequest(name=user))
    for role in roles:
        await auth.RoleDelete(AuthRoleDeleteRequest(role=role))


def test_routers_share_users_and_roles_but_not_tokens(routers):
    """A change made through one router holds on the other at once; each router's tokens are its own."""
    async def scenario():
        a, b = Client(routers[0].listen), Client(routers[1].listen)
        try:
            root = await _setup_root(a.auth)
            root_md = token(root)
            await a.auth.UserAdd(AuthUserAddRequest(name="carol", password="carolpw"), metadata=root_md)
            await a.auth.RoleAdd(AuthRoleAddRequest(name="shared"), metadata=root_md)
            await a.auth.UserGrantRole(AuthUserGrantRoleRequest(user="carol", role="shared"), metadata=root_md)
            # A user added through A authenticates on B at once.
            carol_b = (await b.auth.Authenticate(AuthenticateRequest(name="carol", password="carolpw"))).token
            assert await outcome(b.kv.Put(PutRequest(key=b"/shared/x", value=b"1"), metadata=token(carol_b))) == DENIED
            # A grant made through A holds on B for the very next call.
            await a.auth.RoleGrantPermission(AuthRoleGrantPermissionRequest(name="shared", perm=Permission(
                permType=Permission.READWRITE, key=b"/shared/", range_end=b"/shared0")), metadata=root_md)
            assert await outcome(b.kv.Put(PutRequest(key=b"/shared/x", value=b"1"), metadata=token(carol_b))) == OK
            # A's token means nothing to B (each etcd member, and each router, keeps its own).
            assert await outcome(b.kv.Range(RangeRequest(key=b"/shared/x"), metadata=root_md)) == INVALID_TOKEN
            # A new password set through A ends carol's token on B, as B's watch brings the change.
            await a.auth.UserChangePassword(AuthUserChangePasswordRequest(name="carol", password="new"),
                                            metadata=root_md)
            for _ in range(200):
                answer = await outcome(b.kv.Range(RangeRequest(key=b"/shared/x"), metadata=token(carol_b)))
                if answer != OK:
                    break
                await asyncio.sleep(0.05)
            assert answer == INVALID_TOKEN
            await _teardown(a.auth, root, users=["carol"], roles=["shared"])
        finally:
            for client in (a, b):
                await client.channel.close()

    asyncio.run(scenario())


def test_concurrent_changes_through_two_routers_all_land(routers):
    """Changes race on the meta group's auth state record: each lands whole, none is lost."""
    async def scenario():
        a, b = Client(routers[0].listen), Client(routers[1].listen)
        try:
            before = (await a.auth.AuthStatus(AuthStatusRequest())).authRevision
            await a.auth.UserAdd(AuthUserAddRequest(name="dave", password="x"))
            roles = [f"race-{number}" for number in range(8)]
            await asyncio.gather(*((a if n % 2 else b).auth.RoleAdd(AuthRoleAddRequest(name=role))
                                   for n, role in enumerate(roles)))
            await asyncio.gather(*((b if n % 2 else a).auth.UserGrantRole(AuthUserGrantRoleRequest(
                user="dave", role=role)) for n, role in enumerate(roles)))
            assert list((await b.auth.UserGet(AuthUserGetRequest(name="dave"))).roles) == sorted(roles)
            # One revision per change: the user, 8 roles, 8 grants.
            assert (await b.auth.AuthStatus(AuthStatusRequest())).authRevision == before + 17
            await a.auth.UserDelete(AuthUserDeleteRequest(name="dave"))
            for role in roles:
                await b.auth.RoleDelete(AuthRoleDeleteRequest(role=role))
        finally:
            for client in (a, b):
                await client.channel.close()

    asyncio.run(scenario())


def test_an_unused_token_expires_as_etcds_does(routers, etcd):
    """Router B and the etcd both give tokens TOKEN_TTL_SECONDS; one used within it lives on."""
    async def scenario():
        clients = [Client(routers[1].listen), Client(etcd.endpoint)]
        try:
            roots = [await _setup_root(client.auth) for client in clients]
            kept = [(await c.auth.Authenticate(AuthenticateRequest(name="root", password="rootpw"))).token
                    for c in clients]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + TOKEN_TTL_SECONDS + 1.5  # etcd drops expired tokens once a second
            while loop.time() < deadline:  # `kept` is used well within its TTL; `roots` is not
                for client, kept_token in zip(clients, kept):
                    assert await outcome(client.kv.Range(RangeRequest(key=b"/x"), metadata=token(kept_token))) == OK
                await asyncio.sleep(0.5)
            answers = [await outcome(client.kv.Range(RangeRequest(key=b"/x"), metadata=token(root_token)))
                       for client, root_token in zip(clients, roots)]
            assert answers == [INVALID_TOKEN, INVALID_TOKEN]
            for client, kept_token in zip(clients, kept):
                await _teardown(client.auth, kept_token)
        finally:
            for client in clients:
                await client.channel.close()

    asyncio.run(scenario())


def _post(url: str, path: str, body: dict, headers: dict | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_gateway_takes_the_token_in_authorization(routers, etcd):
    """etcd's JSON gateway: authenticate, then the token in the Authorization header."""
    urls = [f"http://{routers[0].listen}", etcd.client_url]
    key = base64.b64encode(b"/gw/x").decode()

    async def enable() -> list[str]:
        clients = [Client(routers[0].listen), Client(etcd.endpoint)]
        try:
            return [await _setup_root(client.auth) for client in clients]
        finally:
            for client in clients:
                await client.channel.close()

    roots = asyncio.run(enable())
    try:
        for url in urls:
            assert _post(url, "/v3/kv/range", {"key": key}) == (400, {
                "error": "etcdserver: user name is empty", "code": 3, "message": "etcdserver: user name is empty"})
            status, answer = _post(url, "/v3/auth/authenticate", {"name": "root", "password": "rootpw"})
            assert status == 200 and answer["token"]
            status, answer = _post(url, "/v3/kv/put", {"key": key, "value": key},
                                   headers={"Authorization": answer["token"]})
            assert status == 200, answer
            assert _post(url, "/v3/kv/range", {"key": key}, headers={"Authorization": "forged.1"}) == (401, {
                "error": "etcdserver: invalid auth token", "code": 16, "message": "etcdserver: invalid auth token"})
    finally:
        for url, root_token in zip(urls, roots):
            assert _post(url, "/v3/auth/disable", {}, headers={"Authorization": root_token})[0] == 200
            assert _post(url, "/v3/auth/user/delete", {"name": "root"})[0] == 200
            assert _post(url, "/v3/kv/deleterange", {"key": key})[0] == 200


@pytest.fixture(scope="module")
def jwt_routers(cluster, tmp_path_factory):
    """Two routers given the same RS256 key: a JWT one makes, the other takes."""
    from test_auth_permissions import pem_keys

    directory = tmp_path_factory.mktemp("jwt-keys")
    private, public = pem_keys("RS256")
    (directory / "key.pem").write_bytes(private)
    (directory / "key.pub").write_bytes(public)
    option = f"jwt,pub-key={directory}/key.pub,priv-key={directory}/key.pem,sign-method=RS256,ttl=10m"
    servers = _start_routers(cluster, [{"auth_token": option}] * 2)
    yield servers
    for server in servers:
        cluster.run(server.stop())


def test_a_jwt_holds_on_every_router_until_auth_changes(jwt_routers):
    async def scenario():
        a, b = Client(jwt_routers[0].listen), Client(jwt_routers[1].listen)
        try:
            root = await _setup_root(a.auth)
            assert await outcome(b.kv.Put(PutRequest(key=b"/jwt/x", value=b"1"), metadata=token(root))) == OK
            forged = root.rsplit(".", 1)[0] + ".c2lnbmF0dXJl"
            assert await outcome(b.kv.Range(RangeRequest(key=b"/jwt/x"), metadata=token(forged))) == INVALID_TOKEN
            # Any change to users or roles: a JWT made before it is old, at once on the router that
            # made the change, and on every other as its watch brings the change.
            await b.auth.RoleAdd(AuthRoleAddRequest(name="later"), metadata=token(root))
            old = ("INVALID_ARGUMENT", "etcdserver: revision of auth store is old")
            assert await outcome(b.kv.Range(RangeRequest(key=b"/jwt/x"), metadata=token(root))) == old
            for _ in range(200):
                answer = await outcome(a.kv.Range(RangeRequest(key=b"/jwt/x"), metadata=token(root)))
                if answer != OK:
                    break
                await asyncio.sleep(0.05)
            assert answer == old
            fresh = (await b.auth.Authenticate(AuthenticateRequest(name="root", password="rootpw"))).token
            assert await outcome(a.kv.Range(RangeRequest(key=b"/jwt/x"), metadata=token(fresh))) == OK
            await a.kv.DeleteRange(DeleteRangeRequest(key=b"/jwt/x"), metadata=token(fresh))
            await _teardown(a.auth, fresh, roles=["later"])
        finally:
            for client in (a, b):
                await client.channel.close()

    asyncio.run(scenario())
