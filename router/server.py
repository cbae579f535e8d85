"""The router process: etcd's v3 API on one port, over the groups of the meta group's map.

The client port is the native edge (router/front_end.py): gRPC over HTTP/2,
and on the same port etcd's JSON gateway, /metrics, /health and /version
over HTTP/1 (router/gateway.py). Both serve one table of methods
(router/rpc.py): a handler gets the request's bytes, parses the message it
needs, calls the routing core, and returns the answer's bytes, no gRPC
library in between (ARCHITECTURE decision 2). Errors are etcd's
(tessera.api.errors), turned into a status at the front ends and nowhere else.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import signal

from aiohttp import web
from google.protobuf.message import DecodeError

from router import corruption
from router.auth import SIMPLE_TOKEN_TTL_SECONDS, AuthStore, Guard, token_provider
from router.auth_service import AuthService
from router.compactor import AutoCompactor
from router.concurrency import Concurrency
from router.core import MAX_REQUEST_BYTES, Router
from router.front_end import FrontEnd
from router.gateway import MAX_MESSAGE_BYTES, Gateway
from router.leases import Lessor
from router.meta import MetaClient, MetaState, wait_until_bootstrapped
from router.metrics import RouterMetrics, health
from router.rpc import BIDI_STREAM, SERVER_STREAM, UNARY, Call, Method, counted
from router.shard_client import GroupClient, ReplicaUnreachable, ReplicaWatch
from router.snapshot import snapshot_stream
from router.watch_proxy import WatchProxy
from tessera.api import errors, validation
from tessera.api.health_pb2 import HealthCheckRequest, HealthCheckResponse
from tessera.api.http_answers import METRICS_CONTENT_TYPE, health_answer
from tessera.api.internal_pb2 import RouterRecord, ShardRequest
from tessera.api.meta_keys import LEASES_PREFIX, META_GROUP, SYSTEM_PREFIX, prefix_range, router_key
from tessera.api.tls import TLSFiles
from tessera.api.rpc_pb2 import (
    NONE,
    AlarmMember,
    AlarmRequest,
    AlarmResponse,
    AlarmType,
    AuthDisableRequest,
    AuthEnableRequest,
    AuthenticateRequest,
    AuthRoleAddRequest,
    AuthRoleDeleteRequest,
    AuthRoleGetRequest,
    AuthRoleGrantPermissionRequest,
    AuthRoleListRequest,
    AuthRoleRevokePermissionRequest,
    AuthStatusRequest,
    AuthUserAddRequest,
    AuthUserChangePasswordRequest,
    AuthUserDeleteRequest,
    AuthUserGetRequest,
    AuthUserGrantRoleRequest,
    AuthUserListRequest,
    AuthUserRevokeRoleRequest,
    CompactionRequest,
    DefragmentRequest,
    DefragmentResponse,
    DeleteRangeRequest,
    HashKVRequest,
    HashRequest,
    LeaseGrantRequest,
    LeaseKeepAliveRequest,
    LeaseLeasesRequest,
    LeaseRevokeRequest,
    LeaseTimeToLiveRequest,
    Member,
    MemberListRequest,
    MemberListResponse,
    MoveLeaderRequest,
    MoveLeaderResponse,
    PutRequest,
    RangeRequest,
    SnapshotRequest,
    StatusRequest,
    StatusResponse,
    TxnRequest,
    WatchCreateRequest,
    WatchRequest,
    WatchResponse,
)
from tessera.api.v3election_pb2 import CampaignRequest, LeaderRequest, ProclaimRequest, ResignRequest
from tessera.api.v3lock_pb2 import LockRequest, UnlockRequest

log = logging.getLogger("tessera.router")

# The etcd API level Tessera implements. Kubernetes turns on progress requests
# (consistent reads from its cache) only from 3.5.13 on.
ETCD_VERSION = "3.5.13"
LEADER_CHECK_SECONDS = 0.5
DEREGISTER_SECONDS = 2.0
META_RETRY_SECONDS = 0.5
STOP_GRACE_SECONDS = 1.0


def router_id(name: str) -> int:
    """A stable member id for a router, from its name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1 or 1


class RouterServer:
    def __init__(self, listen: str, meta_members: dict[int, str], name: str | None = None,
                 advertise_client: str | None = None, gateway_listen: str | None = None,
                 auto_compaction: tuple[str, float] | None = None,
                 corruption_check_interval: float = corruption.CHECK_INTERVAL_SECONDS,
                 read_only: bool = False, reuse_port: bool = False,
                 auth_token: str = "simple", auth_token_ttl: float = SIMPLE_TOKEN_TTL_SECONDS,
                 client_tls: TLSFiles | None = None, peer_tls: TLSFiles | None = None):
        """`advertise_client`: HOST:PORT clients are told to reach this router at (in member list),
        as etcd's --advertise-client-urls; `listen` when not given. It names the router by
        default too: routers on several hosts listening on one 0.0.0.0:PORT stay apart.

        `auto_compaction`: (mode, retention) as router.compactor.AutoCompactor takes them.

        `read_only`: a proxy beside clients, knowing only the meta group: it serves reads and
        watches and refuses writes and leases; the cluster's tasks (lease expiry, compaction,
        corruption checks) are the other routers'.

        `reuse_port`: more than one router process may listen on `listen` (SO_REUSEPORT).

        `auth_token`: etcd's --auth-token ("simple", or "jwt,priv-key=...,pub-key=...,sign-method=...");
        `auth_token_ttl`: seconds a simple token lives unused (router/auth.py).
        `client_tls`: serve TLS on `listen` (etcd's --cert-file, --key-file, --trusted-ca-file,
        --client-cert-auth). `peer_tls`: TLS to the replicas (the --peer-* flags).
        """
        self.listen = listen
        self.client_address = advertise_client or listen
        self.read_only = read_only
        self.corruption_check_interval = corruption_check_interval
        self.auto_compaction = auto_compaction
        self.gateway_listen = gateway_listen  # etcd's HTTP/JSON gateway on a port of its own as well
        self.reuse_port = reuse_port
        self.client_tls = client_tls
        self._peer_ssl = peer_tls.client_context() if peer_tls is not None else None
        self._gateway: Gateway | None = None
        self._front_end: FrontEnd | None = None
        self.name = name or f"router-{self.client_address}"
        self.meta_client = GroupClient(META_GROUP, meta_members, self._peer_ssl)
        self.meta = MetaClient(self.meta_client)
        self.auth = AuthStore(token_provider(auth_token, auth_token_ttl))
        self.router: Router | None = None
        self._watch_proxies: set[WatchProxy] = set()
        self._registered_map_revision = 0
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        state = await wait_until_bootstrapped(self.meta)
        self.state = state
        self.auth.install(state.auth)
        groups = {group: GroupClient(group, _api_addresses(record), self._peer_ssl)
                  for group, record in state.groups.items() if group != META_GROUP}
        router = self.router = Router(state.cluster_id, router_id(self.name), state.shard_map, groups,
                                      self.meta_client)
        router.read_only = self.read_only
        await router.sync_revision()
        router.leases = Lessor(router, self.meta, state.leases)
        self.metrics = RouterMetrics(router)
        methods = [counted(self.metrics, method) for method in self._methods()]
        # The same methods behind gRPC and the gateway: one state (locks, elections) behind both.
        self._gateway = Gateway(methods, ETCD_VERSION, {"/metrics": self._serve_metrics,
                                                        "/health": self._serve_health})
        self._front_end = FrontEnd(self.listen, methods, self._gateway.serve_connection,
                                   message_bytes_max=MAX_MESSAGE_BYTES, reuse_port=self.reuse_port,
                                   tls=self.client_tls)
        self._front_end.start()
        await self._register(state.shard_map_revision)  # listed once it serves: clients may use it at once
        if self.gateway_listen:
            # the client port's TLS guards the gateway's own port too: it serves the same API
            await self._gateway.start(self.gateway_listen,
                                      self.client_tls.server_context() if self.client_tls else None)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(router.track_leaders(LEADER_CHECK_SECONDS)),
                       loop.create_task(self._follow_meta())]
        if not self.read_only:
            self._tasks += [loop.create_task(router.leases.run()),
                            loop.create_task(corruption.run(router, self.corruption_check_interval))]
            if self.auto_compaction is not None:
                self._tasks.append(loop.create_task(AutoCompactor(router, *self.auto_compaction).run()))
        log.info("router %s serving etcd's API on %s: %d groups, revision %d", self.name, self.listen,
                 len(groups), router.revision)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._front_end is not None:
            await self._front_end.stop(STOP_GRACE_SECONDS)
        if self._gateway is not None:
            await self._gateway.stop()
        if self.router is not None:
            try:  # a router that leaves says so: shard-map changes no longer wait for it
                await asyncio.wait_for(self.meta.delete(router_key(self.router.member_id)), DEREGISTER_SECONDS)
            except (errors.EtcdError, asyncio.TimeoutError) as error:
                log.warning("could not remove this router's record from the meta group: %s", error)
            await asyncio.gather(*(client.close() for client in self.router.groups.values()))
        await self.meta_client.close()

    # --- the meta group ---------------------------------------------------------------------

    async def _follow_meta(self) -> None:
        """Watch the meta group's records on its leader; reload the map, groups and leases on a change.

        The watch is on the leader, and moves when `track_leaders` learns of another: a
        replica that was paused, partitioned or removed from the group (its process may run
        on) stops seeing the group's log, and a router that kept watching it would miss
        shard-map changes and revoke marks for good. Whenever the watch moves, ends or is
        cancelled (a compaction of the meta group passed it), everything is read again.
        """
        while True:
            member = self.meta_client.leader_id or random.choice(self.meta_client.member_ids)
            watch = asyncio.get_running_loop().create_task(self._watch_meta(member))
            try:
                while not watch.done():
                    await asyncio.wait([watch], timeout=META_RETRY_SECONDS)
                    if self.meta_client.leader_id not in (0, member):
                        log.info("the meta group's leader is now member %d: watching it", self.meta_client.leader_id)
                        break
                ended = watch.done()
            finally:  # also when this task is cancelled (the router stops): the watch goes with it
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            try:
                await self._apply_meta(await self.meta.load())
            except errors.EtcdError as error:
                log.info("reloading the meta records failed: %s", error.message)
            if ended:  # the replica went away, or cancelled the watch: not at once again
                await asyncio.sleep(META_RETRY_SECONDS)

    async def _watch_meta(self, member: int) -> None:
        """Follow one meta replica's watch of the system records until it ends or is cancelled."""
        start, end = prefix_range(SYSTEM_PREFIX)
        watch = ReplicaWatch(self.meta_client.connection(member).address, self._peer_ssl)
        watch.send(WatchRequest(create_request=WatchCreateRequest(
            key=start, range_end=end, start_revision=self.state.revision + 1)))
        try:
            async for data in watch.responses():
                response = WatchResponse.FromString(data)
                if response.canceled:
                    return
                for event in response.events:
                    if event.kv.key.startswith(LEASES_PREFIX):
                        self.router.leases.observe(event)
                if any(not event.kv.key.startswith(LEASES_PREFIX) for event in response.events):
                    await self._apply_meta(await self.meta.load())
        except ReplicaUnreachable:
            pass
        except errors.EtcdError as error:
            log.info("reloading the meta records failed: %s", error.message)
        finally:
            watch.close()

    async def _register(self, shard_map_revision: int) -> None:
        """Tell the meta group this router's address and the shard map it routes by."""
        await self.meta.put(router_key(self.router.member_id), RouterRecord(
            id=self.router.member_id, name=self.name, client_address=self.client_address,
            client_tls=self.client_tls is not None, shard_map_revision=shard_map_revision))
        self._registered_map_revision = shard_map_revision

    async def _apply_meta(self, state: MetaState) -> None:
        router = self.router
        if state.shard_map != router.shard_map:
            log.info("shard map changed at meta revision %d", state.shard_map_revision)
            await router.change_shard_map(state.shard_map)
            for proxy in self._watch_proxies:
                proxy.shard_map_changed()
        for group, record in state.groups.items():
            if group == META_GROUP:
                self.meta_client.set_members(_api_addresses(record))
            elif group in router.groups:
                router.groups[group].set_members(_api_addresses(record))
            else:
                router.groups[group] = GroupClient(group, _api_addresses(record), self._peer_ssl)
        self.state = state
        self.auth.install(state.auth)
        router.leases.reload(state.leases)
        if state.shard_map_revision > self._registered_map_revision:
            await self._register(state.shard_map_revision)  # what `tessera shards assign` waits for

    # --- handlers ---------------------------------------------------------------------------

    def _methods(self) -> list[Method]:
        """Every method the router serves, as the front ends serve them (router/rpc.py)."""
        router = self.router
        auth = self.auth
        service = AuthService(router, self.meta_client, auth)
        guard = self._guard = Guard(auth, router.leases, service.load)

        def unary(parse, answer, limit_bytes: bool = False, check=None):
            """`check(request, call)`: the call's auth checks (router/auth.py), run while auth is enabled."""
            async def handle(data: bytes, call: Call) -> bytes:
                if limit_bytes and len(data) > MAX_REQUEST_BYTES:
                    raise errors.RequestTooLarge()
                try:
                    request = parse(data)
                except DecodeError as error:
                    raise errors.Reported("INTERNAL", _unmarshal_error(error)) from None
                if check is not None and auth.enabled:
                    await guard.confirm(check, request, call)
                return (await answer(request)).SerializeToString()

            return UNARY, handle

        kv = {
            "Range": (*unary(RangeRequest.FromString, router.range, check=guard.range),
                      guard.fast(RangeRequest.FromString, validation.check_range, auth.check_range,
                                 router.range_now)),
            "Put": (*unary(PutRequest.FromString, router.put, limit_bytes=True, check=guard.put),
                    guard.fast(PutRequest.FromString, validation.check_put, auth.check_put, router.put_now,
                               MAX_REQUEST_BYTES)),
            "DeleteRange": unary(DeleteRangeRequest.FromString, router.delete_range, limit_bytes=True,
                                 check=guard.delete_range),
            "Txn": (*unary(TxnRequest.FromString, router.txn, limit_bytes=True, check=guard.txn),
                    guard.fast(TxnRequest.FromString, validation.check_txn, auth.check_txn, router.txn_now,
                               MAX_REQUEST_BYTES)),
            "Compact": unary(CompactionRequest.FromString, router.compact, check=guard.admin),
        }
        lease = {
            "LeaseGrant": unary(LeaseGrantRequest.FromString, router.leases.grant, check=guard.user),
            "LeaseRevoke": unary(LeaseRevokeRequest.FromString, lambda r: router.leases.revoke(r.ID),
                                 check=guard.lease_revoke),
            "LeaseTimeToLive": unary(LeaseTimeToLiveRequest.FromString, router.leases.time_to_live,
                                     check=guard.lease_time_to_live),
            "LeaseLeases": unary(LeaseLeasesRequest.FromString, lambda r: router.leases.leases(),
                                 check=guard.lease_leases),
            "LeaseKeepAlive": (BIDI_STREAM, self._keep_alive),
        }
        if self.read_only:  # leases are kept by the routers that take writes
            async def refuse(_request):
                raise errors.ReadOnlyRouter()

            async def refuse_stream(requests, _call):
                async for _request in requests:  # refused once asked, as a write is
                    raise errors.ReadOnlyRouter()
                    yield b""  # an async generator, as a stream handler is

            lease = {method: unary(bytes, refuse) for method in lease if method != "LeaseKeepAlive"}
            lease["LeaseKeepAlive"] = (BIDI_STREAM, refuse_stream)
        cluster = {"MemberList": unary(MemberListRequest.FromString, self._member_list)}

        async def defragment(_request) -> DefragmentResponse:
            router.check_writable()
            await router.defragment()
            return DefragmentResponse(header=router.header())

        maintenance = {
            "Status": unary(StatusRequest.FromString, self._status, check=guard.user),
            "Alarm": unary(AlarmRequest.FromString, self._alarm, check=guard.alarm),
            "HashKV": unary(HashKVRequest.FromString, router.hash_kv, check=guard.admin),
            "Hash": unary(HashRequest.FromString, router.hash, check=guard.admin),
            "Defragment": unary(DefragmentRequest.FromString, defragment, check=guard.admin),
            "MoveLeader": unary(MoveLeaderRequest.FromString, self._move_leader, check=guard.admin),
            "Snapshot": (SERVER_STREAM, self._snapshot),
        }
        auth_calls = {  # (request type, answer, check); Authenticate is the one call without a token
            "AuthEnable": (AuthEnableRequest, service.auth_enable, guard.admin),
            "AuthDisable": (AuthDisableRequest, service.auth_disable, guard.admin),
            "AuthStatus": (AuthStatusRequest, service.auth_status, guard.admin),
            "Authenticate": (AuthenticateRequest, service.authenticate, None),
            "UserAdd": (AuthUserAddRequest, service.user_add, guard.admin),
            "UserGet": (AuthUserGetRequest, service.user_get, guard.user_get),
            "UserList": (AuthUserListRequest, service.user_list, guard.admin),
            "UserDelete": (AuthUserDeleteRequest, service.user_delete, guard.admin),
            "UserChangePassword": (AuthUserChangePasswordRequest, service.user_change_password, guard.admin),
            "UserGrantRole": (AuthUserGrantRoleRequest, service.user_grant_role, guard.admin),
            "UserRevokeRole": (AuthUserRevokeRoleRequest, service.user_revoke_role, guard.admin),
            "RoleAdd": (AuthRoleAddRequest, service.role_add, guard.admin),
            "RoleGet": (AuthRoleGetRequest, service.role_get, guard.role_get),
            "RoleList": (AuthRoleListRequest, service.role_list, guard.admin),
            "RoleDelete": (AuthRoleDeleteRequest, service.role_delete, guard.admin),
            "RoleGrantPermission": (AuthRoleGrantPermissionRequest, service.role_grant_permission, guard.admin),
            "RoleRevokePermission": (AuthRoleRevokePermissionRequest, service.role_revoke_permission, guard.admin),
        }
        auth_methods = {name: unary(request_type.FromString, answer, check=check)
                        for name, (request_type, answer, check) in auth_calls.items()}
        concurrency = self._concurrency = Concurrency(router)
        lock = {
            "Lock": unary(LockRequest.FromString, concurrency.lock, check=guard.lock),
            "Unlock": unary(UnlockRequest.FromString, concurrency.unlock, check=guard.unlock),
        }
        election = {
            "Campaign": unary(CampaignRequest.FromString, concurrency.campaign, check=guard.lock),
            "Proclaim": unary(ProclaimRequest.FromString, concurrency.proclaim, check=guard.proclaim),
            "Leader": unary(LeaderRequest.FromString, concurrency.leader, check=guard.leader),
            "Resign": unary(ResignRequest.FromString, concurrency.resign, check=guard.resign),
            "Observe": (SERVER_STREAM, self._observe),
        }
        async def health_check(request: HealthCheckRequest) -> HealthCheckResponse:
            if request.service:
                raise errors.Reported("NOT_FOUND", "unknown service")
            return HealthCheckResponse(status=self._serving_status())

        health_service = {
            "Check": unary(HealthCheckRequest.FromString, health_check),
            "Watch": (SERVER_STREAM, self._health_watch),
        }
        services = {
            "grpc.health.v1.Health": health_service,
            "v3lockpb.Lock": lock,
            "v3electionpb.Election": election,
            "etcdserverpb.KV": kv,
            "etcdserverpb.Watch": {"Watch": (BIDI_STREAM, self._watch)},
            "etcdserverpb.Lease": lease,
            "etcdserverpb.Cluster": cluster,
            "etcdserverpb.Maintenance": maintenance,
            "etcdserverpb.Auth": auth_methods,
        }
        return [Method(service, name, *entry) for service, methods in services.items()
                for name, entry in methods.items()]

    def _serving_status(self) -> int:
        """gRPC health: serving while every group, the meta group included, has a leader."""
        clients = [*self.router.groups.values(), self.router.meta]
        leaderless = any(client.leaderless_since is not None for client in clients)
        return HealthCheckResponse.NOT_SERVING if leaderless else HealthCheckResponse.SERVING

    async def _health_watch(self, data: bytes, _call: Call):
        """The status now, then each change of it (gRPC's Health.Watch)."""
        if _parse(HealthCheckRequest, data).service:
            yield HealthCheckResponse(status=HealthCheckResponse.SERVICE_UNKNOWN).SerializeToString()
            return
        last = None
        while True:
            status = self._serving_status()
            if status != last:
                last = status
                yield HealthCheckResponse(status=status).SerializeToString()
            await asyncio.sleep(LEADER_CHECK_SECONDS)

    async def _watch(self, requests, call: Call):
        proxy = WatchProxy(self.router, require_leader=call.header("hasleader") == "true")
        self._watch_proxies.add(proxy)

        async def read_requests() -> None:
            try:
                async for data in requests:
                    request = WatchRequest.FromString(data)
                    if self.auth.enabled and await self._watch_refused(request, call, proxy):
                        continue
                    await proxy.handle(request)
            except DecodeError as error:
                proxy.outbox.put_nowait(errors.Reported("INTERNAL", _unmarshal_error(error)))

        reader = asyncio.get_running_loop().create_task(read_requests())
        try:
            while True:
                item = await proxy.outbox.get()
                if isinstance(item, errors.EtcdError):
                    raise item
                yield item if isinstance(item, bytes) else item.SerializeToString()
        finally:
            reader.cancel()
            self._watch_proxies.discard(proxy)
            await proxy.close()

    async def _watch_refused(self, request: WatchRequest, call: Call, proxy: WatchProxy) -> bool:
        """A watch the caller may not read is answered created and canceled, as etcd does, with
        the reason (checked on the range etcd checks: an empty key is "\0")."""
        if not request.HasField("create_request") or request.create_request.start_revision < 0:
            return False
        create = request.create_request
        reason = await self._guard.watch_refusal(create.key or b"\0", create.range_end, call)
        if reason is None:
            return False
        proxy.outbox.put_nowait(WatchResponse(header=self.router.header(), watch_id=-1, created=True,
                                              canceled=True, cancel_reason=reason))
        return True

    async def _serve_metrics(self, request: web.BaseRequest) -> web.Response:
        return web.Response(body=self.metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _serve_health(self, request: web.BaseRequest) -> web.Response:
        """etcd's /health, for the whole cluster behind this router."""
        excluded = set(request.query.getall("exclude", []))
        healthy, reason = await health(self.router, excluded)
        status, headers, body = health_answer(healthy, reason)
        return web.Response(status=status, body=body, headers=headers)

    async def _observe(self, data: bytes, call: Call):
        request = _parse(LeaderRequest, data)
        if self.auth.enabled:
            await self._guard.confirm(self._guard.leader, request, call)
        async for response in self._concurrency.observe(request):
            yield response.SerializeToString()

    async def _snapshot(self, data: bytes, call: Call):
        """The whole cluster at one revision (router/snapshot.py), as etcd streams its database."""
        request = _parse(SnapshotRequest, data)
        if self.auth.enabled:
            await self._guard.confirm(self._guard.admin, request, call)
        async for response in snapshot_stream(self.router, self.meta):
            yield response.SerializeToString()

    async def _keep_alive(self, requests, call: Call):
        async for data in requests:
            try:
                request = LeaseKeepAliveRequest.FromString(data)
            except DecodeError as error:
                raise errors.Reported("INTERNAL", f"grpc: failed to unmarshal the received message {error}") from None
            if self.auth.enabled:  # as etcd: renewing needs what revoking needs
                await self._guard.confirm(self._guard.lease_revoke, request, call)
            yield (await self.router.leases.keep_alive(request.ID)).SerializeToString()

    async def _member_list(self, _request) -> MemberListResponse:
        """The routers, as etcd's members: each has a peer URL, as every etcd member has (tools
        match members by it). A router has no peer port: its one URL, the client port, is both,
        https:// where it serves TLS (etcdctl --cluster dials these, without TLS on http://).
        etcd's Cluster answers carry no revision in their header."""
        state = await self.meta.load()
        header = self.router.header()
        header.ClearField("revision")
        members = []
        for record in sorted(state.routers.values(), key=lambda r: r.id):
            url = f"{'https' if record.client_tls else 'http'}://{record.client_address}"
            members.append(Member(ID=record.id, name=record.name, peerURLs=[url], clientURLs=[url]))
        return MemberListResponse(header=header, members=members)

    async def _move_leader(self, request: MoveLeaderRequest) -> MoveLeaderResponse:
        """etcd's MoveLeader. Each router answers Status as the leader of its own endpoint, and
        every router takes writes, so there is no router leadership to hand over: only this
        router is a valid target. A group's raft leadership moves with `tessera leader transfer`."""
        if request.targetID != self.router.member_id:
            raise errors.BadLeaderTransferee()
        return MoveLeaderResponse(header=self.router.header())

    async def _status(self, _request) -> StatusResponse:
        router = self.router
        response = StatusResponse(header=router.header(), version=ETCD_VERSION,
                                  leader=router.member_id)
        alarms = []
        for group, status in sorted((await router.statuses()).items()):
            if isinstance(status, BaseException):
                response.errors.append(f"group {group}: {getattr(status, 'message', status)}")
                continue
            response.dbSize += status.db_size
            response.dbSizeInUse += status.db_size_in_use
            response.raftIndex += status.commit_index
            response.raftAppliedIndex += status.applied_index
            response.raftTerm = max(response.raftTerm, status.term)
            alarms.extend(status.alarms)
        response.errors.extend(_alarm_text(alarm) for alarm in _distinct(alarms))
        return response

    async def _alarm(self, request: AlarmRequest) -> AlarmResponse:
        """etcd's Alarm: one alarm per member and type, for the whole cluster. Each data group
        keeps every alarm in its own store (a NOSPACE alarm refuses the group's puts), so an
        alarm is raised and cleared in every group, and the groups' answers are merged."""
        router = self.router
        if request.action == AlarmRequest.GET:
            statuses = (await router.statuses()).values()
            for status in statuses:
                if isinstance(status, BaseException):
                    raise status
            alarms = [alarm for status in statuses for alarm in status.alarms
                      if request.alarm in (NONE, alarm.alarm)]
            return AlarmResponse(header=router.header(), alarms=_distinct(alarms))
        router.check_writable()
        if (request.alarm == NONE or request.alarm not in AlarmType.values()
                or request.action not in (AlarmRequest.ACTIVATE, AlarmRequest.DEACTIVATE)):
            # Raising or clearing alarm NONE changes nothing in etcd. An alarm type or an action
            # that etcd 3.5.1 does not know crashes it (a panic in its apply); here, nothing.
            return AlarmResponse(header=router.header())
        answers = await asyncio.gather(*(router.write(group, ShardRequest(alarm=request))
                                         for group in sorted(router.groups)))
        return AlarmResponse(header=router.header(),
                             alarms=_distinct(alarm for answer in answers for alarm in answer.alarms))


def _distinct(alarms) -> list[AlarmMember]:
    """Each (member, type) once, in that order. An alarm raised through the API is in every data
    group's list; one a full group raised (its member's NOSPACE) is in that group's only."""
    return [AlarmMember(memberID=member, alarm=alarm)
            for member, alarm in sorted({(alarm.memberID, alarm.alarm) for alarm in alarms})]


def _alarm_text(alarm: AlarmMember) -> str:
    """An alarm as etcd's Status lists it: Go's compact text form, fields at 0 left out
    ("memberID:5 alarm:NOSPACE ", "alarm:CORRUPT ")."""
    fields = [f"memberID:{alarm.memberID} " if alarm.memberID else "",
              f"alarm:{AlarmType.Name(alarm.alarm)} " if alarm.alarm else ""]
    return "".join(fields)


def _unmarshal_error(error: DecodeError) -> str:
    return f"grpc: error unmarshalling request: {error}"  # grpc-go's words for it


def _parse(message_type, data: bytes):
    """A request of a streaming call; one that does not decode gets grpc-go's INTERNAL answer."""
    try:
        return message_type.FromString(data)
    except DecodeError as error:
        raise errors.Reported("INTERNAL", _unmarshal_error(error)) from None


def _api_addresses(record) -> dict[int, str]:
    return {member.id: member.api_address for member in record.members}


async def serve(listen: str, meta_members: dict[int, str], **options) -> None:
    """Run a router until SIGTERM or SIGINT; `options` as RouterServer takes them."""
    log.info("router starting on %s", listen)
    server = RouterServer(listen, meta_members, **options)
    await server.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopped.set)
    try:
        await stopped.wait()
    finally:
        await server.stop()
