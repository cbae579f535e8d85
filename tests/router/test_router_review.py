"""Regressions from a review of router/: each test proved a defect (its docstring says
which) and passes since the fix.

Three kinds of tests:
- unit tests of router/watch_proxy.py with a fake router and fake upstream streams
  (the merge and progress logic is pure; the fakes stand in for the replicas' streams);
- tests on the shared cluster (`tessera_cluster`: /registry/pods/ -> group 2,
  /registry/events/ -> group 3, everything else -> group 1);
- tests of one request that used to kill a whole group.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest

import router.watch_proxy as watch_proxy
from etcd_client import EtcdClient
from router.shard_map import ShardMap
from router.watch_proxy import WatchProxy
from tessera.api import errors
from tessera.api.kv_pb2 import Event, KeyValue
from tessera.api.rpc_pb2 import (
    AlarmRequest,
    Compare,
    LeaseGrantRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
    WatchCreateRequest,
    WatchRequest,
    WatchResponse,
)

async def put(client, key: bytes, value: bytes = b"v", **fields) -> int:
    return (await client.kv.Put(PutRequest(key=key, value=value, **fields), timeout=10)).header.revision


# --- fakes for watch_proxy unit tests ----------------------------------------------------


class _FakeGroupClient:
    def __init__(self):
        self.leader_id = 1
        self.member_ids = [1]
        self.leaderless_since = None

    def connection(self, member):
        return _FakeConnection()


class _FakeConnection:
    address = "127.0.0.1:1"  # never dialled: the test plays the replica


class _FakeRouter:
    """What WatchProxy uses of router.core.Router."""

    def __init__(self, shard_map: ShardMap, revision: int, group_revisions: dict[int, int]):
        self.shard_map = shard_map
        self.revision = revision
        self.group_revisions = dict(group_revisions)
        self.groups = {group: _FakeGroupClient() for group in shard_map.groups}
        self.cluster_id = 7
        self.member_id = 9
        self.raft_term = 3
        self.raise_gate: asyncio.Event | None = None
        self.raise_error: errors.EtcdError | None = None
        self.map_generation = 0

    def observe_group(self, group: int, revision: int) -> None:
        if revision > self.group_revisions.get(group, 0):
            self.group_revisions[group] = revision
        self.revision = max(self.revision, revision)

    async def raise_group(self, group: int, revision: int) -> None:
        if self.raise_gate is not None:
            await self.raise_gate.wait()
        if self.raise_error is not None:
            raise self.raise_error
        self.observe_group(group, revision)


class _FakeUpstream:
    """Stands in for watch_proxy._Upstream: records what is sent; the test plays the replica."""

    def __init__(self, proxy, group, member, address):
        self.proxy = proxy
        self.group = group
        self.member = member
        self.parts = {}
        self.progress_waiters = []
        self.sent: list[WatchRequest] = []
        self.task = asyncio.get_running_loop().create_future()

    def send(self, request: WatchRequest) -> None:
        self.sent.append(request)


@pytest.fixture
def fake_upstreams(monkeypatch):
    monkeypatch.setattr(watch_proxy, "_Upstream", _FakeUpstream)


def _create(**fields) -> WatchRequest:
    return WatchRequest(create_request=WatchCreateRequest(**fields))


def _part_id(upstream: _FakeUpstream, client_watch_id: int) -> int:
    (upstream_id,) = [uid for uid, part in upstream.parts.items() if part.watch.id == client_watch_id]
    return upstream_id


def _response(watch_id: int, revision: int, events=(), **fields) -> bytes:
    """A replica's encoded WatchResponse."""
    response = WatchResponse(watch_id=watch_id, events=list(events), **fields)
    response.header.revision = revision
    return response.SerializeToString()


def _event(key: bytes, revision: int) -> Event:
    return Event(type=Event.PUT, kv=KeyValue(key=key, mod_revision=revision, create_revision=revision, version=1))


def _drain(proxy: WatchProxy) -> list:
    items = []
    while not proxy.outbox.empty():
        items.append(proxy.outbox.get_nowait())
    return items


# Map for unit tests: [b"b", b"c") -> group 2, everything else -> group 1.
def _two_group_map() -> ShardMap:
    return ShardMap([(b"b", b"c", 2)], 1)


# --- watch_proxy: progress and the merge -------------------------------------------------


def test_a_progress_answer_does_not_cover_a_part_still_being_created(fake_upstreams):
    """A progress response answers a request sent *before* a new part's create; it says nothing of
    that part, which is still catching up from history. on_upstream sets every part's watermark on
    the upstream, so the merged watch releases group 2's revision 15 before group 1's revision 12."""
    async def scenario():
        router = _FakeRouter(_two_group_map(), revision=20, group_revisions={1: 20, 2: 20})
        proxy = WatchProxy(router)
        try:
            await proxy.handle(_create(key=b"a", range_end=b"a\xff"))  # watch 0: group 1, from now
            up1 = proxy.upstreams[1]
            proxy.on_upstream(up1, _response(_part_id(up1, 0), 20, created=True))
            await proxy.handle(WatchRequest(progress_request={}))
            await asyncio.sleep(0)  # the progress request goes out on group 1's stream
            assert any(r.WhichOneof("request_union") == "progress_request" for r in up1.sent)
            await proxy.handle(_create(key=b"a", range_end=b"c", start_revision=10))  # watch 1: merged
            up2 = proxy.upstreams[2]
            part_a, part_b = _part_id(up1, 1), _part_id(up2, 1)
            # Group 1's replica answers the progress request (watch 0 was synced) before it reads the create.
            proxy.on_upstream(up1, _response(-1, 20))
            proxy.on_upstream(up1, _response(part_a, 20, created=True))
            proxy.on_upstream(up2, _response(part_b, 20, created=True))
            # History: group 2's comes first, then group 1's.
            proxy.on_upstream(up2, _response(part_b, 15, [_event(b"b1", 15)]))
            proxy.on_upstream(up1, _response(part_a, 12, [_event(b"a1", 12)]))
            proxy.on_upstream(up2, _response(part_b, 20))  # group 2 synced at 20
            revisions = [event.kv.mod_revision for item in _drain(proxy)
                         if isinstance(item, WatchResponse) and item.watch_id == 1 for event in item.events]
            assert revisions == sorted(revisions), f"merged watch delivered revisions {revisions}"
        finally:
            await proxy.close()
    asyncio.run(scenario())


def test_a_progress_answer_while_a_watch_moves_claims_only_what_was_delivered(fake_upstreams):
    """Group 1's stream failed; its watch (delivered up to 5) is re-created 50 ms later. A progress
    request in between finds no upstream and answers with the router's revision (20): a bookmark
    promising every event <= 20 was delivered, though events 6..20 of group 1 are still to come."""
    async def scenario():
        router = _FakeRouter(_two_group_map(), revision=20, group_revisions={1: 20, 2: 20})
        proxy = WatchProxy(router)
        try:
            await proxy.handle(_create(key=b"a", range_end=b"a\xff"))
            up1 = proxy.upstreams[1]
            proxy.on_upstream(up1, _response(_part_id(up1, 0), 5, created=True))
            proxy.on_upstream_failed(up1, "UNAVAILABLE: replica died")
            await proxy.handle(WatchRequest(progress_request={}))
            await asyncio.sleep(0.01)  # less than RECREATE_PAUSE_SECONDS
            progress = [r.header.revision for r in _drain(proxy) if isinstance(r, WatchResponse) and r.watch_id == -1]
            assert all(revision <= 5 for revision in progress), f"progress at {progress}, watch delivered only up to 5"
        finally:
            await proxy.close()
    asyncio.run(scenario())


def test_a_progress_request_is_answered_when_an_upstream_fails_during_the_raise(fake_upstreams):
    """_answer_progress lists the upstreams, awaits raise_group, then waits on a future of each listed
    upstream. One that failed during the raise never resolves its new future: no answer, ever."""
    async def scenario():
        router = _FakeRouter(_two_group_map(), revision=20, group_revisions={1: 10, 2: 20})
        proxy = WatchProxy(router)
        try:
            router.raise_gate = asyncio.Event()
            await proxy.handle(_create(key=b"a", range_end=b"a\xff", start_revision=11))
            up1 = proxy.upstreams[1]
            proxy.on_upstream(up1, _response(_part_id(up1, 0), 10, created=True))
            await proxy.handle(WatchRequest(progress_request={}))
            await asyncio.sleep(0)  # _answer_progress is now raising group 1
            proxy.on_upstream_failed(up1, "UNAVAILABLE: replica died")
            router.raise_gate.set()
            await asyncio.sleep(1.0)  # the part was re-created meanwhile (after 50 ms)
            answers = [r for r in _drain(proxy) if isinstance(r, WatchResponse) and r.watch_id == -1]
            assert answers, "the progress request was never answered"
        finally:
            await proxy.close()
    asyncio.run(scenario())


def test_a_merged_watch_whose_raise_fails_is_canceled_and_the_stream_goes_on(fake_upstreams):
    """_create awaits raise_group; an EtcdError from it escapes WatchProxy.handle. In server._watch
    that ends the request-reading task silently: the client's stream is never answered again."""
    async def scenario():
        router = _FakeRouter(_two_group_map(), revision=20, group_revisions={1: 20, 2: 10})
        router.raise_error = errors.NoLeader()
        proxy = WatchProxy(router)
        try:
            try:
                await proxy.handle(_create(key=b"a", range_end=b"c"))
            except errors.EtcdError as error:
                pytest.fail(f"WatchProxy.handle raised {error!r}: server._watch's reader dies, the stream hangs")
            answered = _drain(proxy)
            assert answered, "the client got no answer to its create"
        finally:
            await proxy.close()
    asyncio.run(scenario())


def test_finished_progress_tasks_are_let_go(fake_upstreams):
    """Every progress request (Kubernetes sends many on a long-lived stream) adds a task to
    WatchProxy._tasks that is never removed once done: the stream's memory grows without bound."""
    async def scenario():
        router = _FakeRouter(_two_group_map(), revision=20, group_revisions={1: 20, 2: 20})
        proxy = WatchProxy(router)
        try:
            for _ in range(200):
                await proxy.handle(WatchRequest(progress_request={}))
            await asyncio.sleep(0.05)
            assert len(_drain(proxy)) == 200
            assert len(proxy._tasks) <= 2, f"{len(proxy._tasks)} tasks held by one idle stream"
        finally:
            await proxy.close()
    asyncio.run(scenario())


# --- the shared cluster ---------------------------------------------------------------------


def test_a_range_across_groups_at_a_negative_revision_reads_the_latest(tessera_cluster, space):
    """etcd treats revision <= 0 as the latest. router.core.range computes `at = request.revision or
    self.revision`, so -1 is passed to every piece (each group then reads its own latest: no common
    cut) and the header says revision -1."""
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            for prefix in space:
                await put(client, prefix + b"k")
            low, high = min(space), max(space) + b"\xff"
            answer = await client.kv.Range(RangeRequest(key=low, range_end=high, revision=-1))
            latest = await client.kv.Range(RangeRequest(key=low, range_end=high))
            assert answer.header.revision > 0 and answer.header.revision >= latest.header.revision, answer.header
    asyncio.run(scenario())


def test_a_historical_range_across_groups_reports_the_current_revision(tessera_cluster, space):
    """etcd's header.revision is the store's current revision, also for a Range at an older revision
    (the single-group path does that). The merged path puts the requested revision in the header."""
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            first = await put(client, space[0] + b"h")
            for prefix in space:
                await put(client, prefix + b"later")
            low, high = min(space), max(space) + b"\xff"
            single = await client.kv.Range(RangeRequest(key=space[0] + b"h", revision=first))
            merged = await client.kv.Range(RangeRequest(key=low, range_end=high, revision=first))
            assert single.header.revision > first  # the group's current revision, as etcd
            assert merged.header.revision >= single.header.revision, (merged.header.revision, single.header.revision)
    asyncio.run(scenario())


def test_an_unknown_lease_on_the_txn_branch_not_taken_is_not_refused(tessera_cluster, space):
    """etcd checks a put's lease only on the branch that runs; the router checks both branches
    (_txn_leases walks success and failure) and refuses the whole txn with 'requested lease not found'."""
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            key = space[1] + b"txn"
            always = Compare(key=key, target=Compare.VERSION, result=Compare.EQUAL, version=0)
            answer = await client.kv.Txn(TxnRequest(
                compare=[always],
                success=[RequestOp(request_put=PutRequest(key=key, value=b"ok"))],
                failure=[RequestOp(request_put=PutRequest(key=key, value=b"no", lease=0x7EADBEEF))]), timeout=10)
            assert answer.succeeded
    asyncio.run(scenario())


def test_an_undecodable_unary_request_gets_internal_as_from_grpc_go(tessera_cluster):
    """grpc-go (etcd) answers a request it cannot unmarshal with INTERNAL; the router's handlers parse
    with FromString outside the EtcdError mapping, so grpcio answers UNKNOWN."""
    async def scenario():
        async with grpc.aio.insecure_channel(tessera_cluster.endpoint) as channel:
            call = channel.unary_unary("/etcdserverpb.KV/Range")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)  # field 1 claims a 4 GiB length
            assert caught.value.code() == grpc.StatusCode.INTERNAL, (caught.value.code(), caught.value.details())
    asyncio.run(scenario())


def test_an_undecodable_watch_request_ends_the_stream_with_internal(tessera_cluster, space):
    """server._watch reads requests in a task; WatchRequest.FromString raising there ended the task
    silently, and the stream stayed open answering nothing more."""
    async def scenario():
        async with grpc.aio.insecure_channel(tessera_cluster.endpoint) as channel:
            call = channel.stream_stream("/etcdserverpb.Watch/Watch")()
            await call.write(b"\x0a\xff\xff\xff\xff\x0f")
            try:
                code = await asyncio.wait_for(call.code(), 5)
            except asyncio.TimeoutError:
                pytest.fail("the watch stream did not end after an undecodable request")
            finally:
                call.cancel()
            assert code == grpc.StatusCode.INTERNAL  # as grpc-go ends a stream it cannot decode
    asyncio.run(scenario())


def test_a_watch_created_before_a_prefix_is_assigned_sees_writes_under_it(tessera_cluster, space):
    """Watch parts were cut by the shard map of their creation and never re-cut: after `shards assign`
    moved an (empty) prefix to group 3, puts there went to group 3, which the watch only asked about
    /registry/events/, and the watch missed them. Also: a put right after the assignment lands in the
    new group, not (stranded) in the old one."""
    data_dir = str(tessera_cluster.launcher.data_dir)
    name = space[0].split(b"/")[2].decode()
    fresh = f"/moved-{name}/".encode()

    async def open_watch(client):
        watch = client.watch()
        await watch.create(key=b"/", range_end=b"/\xff")
        return watch

    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            watch = await open_watch(client)
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tessera.cli", "shards", "assign", fresh.decode(), "3",
                "--data-dir", data_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            _, stderr = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, stderr
            # `assign` returns once every router routes by the new map: the next put is in group 3.
            launcher = tessera_cluster.launcher
            last = await put(client, fresh + b"k", b"after")
            for group, expected in ((3, [b"after"]), (1, [])):
                held = await launcher.request(group, await launcher.leader(group),
                                              range=RangeRequest(key=fresh + b"k"))
                assert [kv.value for kv in held.range.kvs] == expected, group
            marker = await put(client, space[0] + b"marker")  # group 1, after the last put
            events = await watch.events_until(lambda events: any(e.kv.mod_revision >= marker for e in events))
            watch.cancel()
            seen = [(e.kv.key, e.kv.mod_revision) for e in events]
            assert (fresh + b"k", last) in seen, f"put at {last} under the moved prefix never reached the watch"

    tessera_cluster.run(scenario(), timeout=120)


# --- one request poisons a group (each on a cluster of its own) ----------------------------


async def _group_serves(client, key: bytes) -> None:
    """A plain put to `key`'s group answers within 10 s (its replicas are alive)."""
    await client.kv.Put(PutRequest(key=key, value=b"alive"), timeout=10)


def test_a_range_with_an_unknown_sort_option_is_refused_as_etcd_does(tessera_cluster):
    """The router passes Range.sort_target=9 through unchecked (etcd's checkRangeRequest answers
    InvalidArgument 'etcdserver: invalid sort option'). The replica's _SORT_KEYS[9] raises KeyError inside
    the raft loop (linearizable reads are served from _handle_ready), the replica exits, the router retries
    the read on the next leader, which exits too: the group is gone."""
    cluster = tessera_cluster

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            key = b"/registry/events/sorted"
            await _group_serves(client, key)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await client.kv.Range(RangeRequest(key=key, range_end=key + b"\xff", sort_target=9,
                                                   sort_order=RangeRequest.ASCEND), timeout=15)
            assert (caught.value.code(), caught.value.details()) == (
                grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: invalid sort option"), cluster.reports
            await _group_serves(client, key)
    asyncio.run(scenario())


def test_a_lease_with_a_negative_id_works_and_its_group_survives(tessera_cluster):
    """etcd grants a lease with any non-zero int64 ID. The router grants -5, then lets a Put with it
    through; the replica's store packs lease ids with struct '>Q', so applying the committed put raises
    struct.error in every replica: the group dies, and dies again replaying its log. (A revoke or the
    expiry of that lease does the same to every data group.)"""
    cluster = tessera_cluster

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            key = b"/registry/pods/leased"
            await _group_serves(client, key)
            try:
                granted = await client.lease.LeaseGrant(LeaseGrantRequest(ID=-5, TTL=3600), timeout=10)
            except grpc.aio.AioRpcError as error:  # refusing negative ids cleanly would also do
                assert error.code() != grpc.StatusCode.UNKNOWN, error
                return
            try:
                await client.kv.Put(PutRequest(key=key, value=b"v", lease=granted.ID), timeout=15)
            except grpc.aio.AioRpcError as error:
                assert error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN), (
                    error.code(), error.details(), cluster.reports)
            await _group_serves(client, key)
    asyncio.run(scenario())


def test_an_alarm_of_an_unknown_type_is_accepted_and_harmless(tessera_cluster):
    """Alarm(ACTIVATE, alarm=300) goes through router.write to every group; the store's bytes([300])
    raises ValueError while applying it, in every replica of every data group (etcd stores any type)."""
    cluster = tessera_cluster

    async def scenario():
        async with EtcdClient(cluster.endpoint) as client:
            key = b"/top/alarmed"
            await _group_serves(client, key)
            try:
                await client.maintenance.Alarm(AlarmRequest(action=AlarmRequest.ACTIVATE, memberID=1,
                                                            alarm=300), timeout=15)
            except grpc.aio.AioRpcError as error:
                assert error.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN), (
                    error.code(), error.details(), cluster.reports)
            await _group_serves(client, key)
    asyncio.run(scenario())
