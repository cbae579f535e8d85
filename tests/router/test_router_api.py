"""etcd's API through the router, with keys in one group and across groups (one shared cluster).

The cluster's map: /registry/pods/ -> group 2, /registry/events/ -> group 3,
everything else -> group 1. Each test works under a key space of its own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import grpc
import pytest

from etcd_client import EtcdClient
from tessera.api.rpc_pb2 import (
    CompactionRequest,
    Compare,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    StatusRequest,
    TxnRequest,
)

def run(coroutine):
    return asyncio.run(coroutine)


async def put(client, key: bytes, value: bytes = b"v", **fields) -> int:
    return (await client.kv.Put(PutRequest(key=key, value=value, **fields))).header.revision


async def etcd_error(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), caught.value.details()


def test_revisions_are_global_and_a_group_behind_is_raised_to_read(tessera_cluster, space):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            top, pods, events = space
            first = await put(client, top + b"a", b"1")
            second = await put(client, pods + b"a", b"2")
            third = await put(client, events + b"a", b"3")
            assert first < second < third  # writes one after another: revisions rise across groups
            # Group 1 has not reached `third`; reading it there raises it, and the read is repeatable.
            at_third = await client.kv.Range(RangeRequest(key=top + b"a", revision=third))
            assert [kv.value for kv in at_third.kvs] == [b"1"]
            later = await put(client, top + b"a", b"4")
            assert later > third
            again = await client.kv.Range(RangeRequest(key=top + b"a", revision=third))
            assert [kv.value for kv in again.kvs] == [b"1"]
            code, message = await etcd_error(client.kv.Range(RangeRequest(key=top + b"a", revision=later + 1000)))
            assert (code, message) == (grpc.StatusCode.OUT_OF_RANGE,
                                       "etcdserver: mvcc: required revision is a future revision")
    run(scenario())


def test_a_range_across_groups_merges_order_limit_count_and_more(tessera_cluster, space):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            written = {}
            for number, prefix in enumerate(space * 3):
                key = prefix + b"k%d" % number
                written[key] = b"%03d" % (100 - number)
                await put(client, key, written[key])
            start, end = b"/", b"/\xff"  # all three groups' spaces, and other tests' keys: filter by ours
            ours = sorted(written)
            everything = await client.kv.Range(RangeRequest(key=start, range_end=end))
            mine = [kv.key for kv in everything.kvs if kv.key in written]
            assert mine == ours and everything.count == len(everything.kvs) and not everything.more

            # From this test's lowest key to its highest: three groups, and maybe other tests' keys.
            low, high = ours[0], ours[-1] + b"\0"
            in_range = {kv.key: kv.value for kv in everything.kvs if low <= kv.key < high}
            limited = await client.kv.Range(RangeRequest(key=low, range_end=high, limit=4))
            assert [kv.key for kv in limited.kvs] == sorted(in_range)[:4]
            assert limited.more and limited.count == len(in_range)

            by_value = await client.kv.Range(RangeRequest(
                key=low, range_end=high, sort_target=RangeRequest.VALUE, sort_order=RangeRequest.DESCEND,
                limit=3))
            assert [kv.value for kv in by_value.kvs] == sorted(in_range.values(), reverse=True)[:3]

            counted = await client.kv.Range(RangeRequest(key=low, range_end=high, count_only=True))
            assert counted.count == len(in_range) and not counted.kvs

            keys_only = await client.kv.Range(RangeRequest(key=low, range_end=high, keys_only=True))
            assert all(not kv.value for kv in keys_only.kvs) and len(keys_only.kvs) == len(in_range)
    run(scenario())


def test_a_paginated_list_pinned_to_a_revision_sees_one_cut(tessera_cluster, space):
    """Kubernetes' list: limit pages, later pages at the first page's revision, writes in between."""
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            keys = sorted(prefix + b"item%d" % n for prefix in space for n in range(4))
            for key in keys:
                await put(client, key, b"old")
            low, high = keys[0], keys[-1] + b"\0"
            page = await client.kv.Range(RangeRequest(key=low, range_end=high, limit=5))
            pinned = page.header.revision
            pages = [page]
            for key in keys:  # changes after the first page must not show in later ones
                await put(client, key, b"new")
            while page.more:
                page = await client.kv.Range(RangeRequest(key=page.kvs[-1].key + b"\0", range_end=high,
                                                          limit=5, revision=pinned))
                pages.append(page)
            ours = [kv for page in pages for kv in page.kvs if kv.key in keys]  # other tests' keys may interleave
            assert [kv.key for kv in ours] == keys
            assert all(kv.value == b"old" for kv in ours)
    run(scenario())


def test_delete_across_groups_returns_every_previous_value(tessera_cluster, space):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            keys = sorted(prefix + b"x" for prefix in space)
            for key in keys:
                await put(client, key, key[-8:])
            deleted = await client.kv.DeleteRange(DeleteRangeRequest(key=keys[0], range_end=keys[-1] + b"\0",
                                                                     prev_kv=True))
            ours = [kv.key for kv in deleted.prev_kvs if kv.key in keys]
            assert ours == keys
            after = await client.kv.Range(RangeRequest(key=keys[0], range_end=keys[-1] + b"\0"))
            assert not [kv for kv in after.kvs if kv.key in keys]
    run(scenario())


def test_kubernetes_writes_are_transactions_in_one_group(tessera_cluster, space):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            key = space[1] + b"default/nginx"
            absent = Compare(key=key, target=Compare.MOD, result=Compare.EQUAL, mod_revision=0)
            create = await client.kv.Txn(TxnRequest(compare=[absent], success=[
                RequestOp(request_put=PutRequest(key=key, value=b"v1"))]))
            assert create.succeeded
            revision = create.header.revision
            stale = Compare(key=key, target=Compare.MOD, result=Compare.EQUAL, mod_revision=revision - 1)
            conflict = await client.kv.Txn(TxnRequest(compare=[stale], success=[
                RequestOp(request_put=PutRequest(key=key, value=b"v2"))],
                failure=[RequestOp(request_range=RangeRequest(key=key))]))
            assert not conflict.succeeded
            assert conflict.responses[0].response_range.kvs[0].mod_revision == revision
    run(scenario())


def test_a_transaction_across_groups_is_refused_naming_them(tessera_cluster, space):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            txn = TxnRequest(success=[RequestOp(request_put=PutRequest(key=space[0] + b"a", value=b"1")),
                                      RequestOp(request_put=PutRequest(key=space[2] + b"a", value=b"1"))])
            code, message = await etcd_error(client.kv.Txn(txn))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert message == ("tessera: a transaction must keep its keys in one shard group; "
                               "this one touches groups 1, 3")
            assert not (await client.kv.Range(RangeRequest(key=space[0] + b"a"))).kvs  # nothing written
    run(scenario())


@pytest.mark.parametrize("value_bytes, expected", [
    (1536 * 1024 + 1, (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large")),
    (2048 * 1024 + 1, (grpc.StatusCode.RESOURCE_EXHAUSTED, None)),  # gRPC's own limit, as etcd's
])
def test_oversized_requests_get_etcds_answer(tessera_cluster, space, value_bytes, expected):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            code, message = await etcd_error(client.kv.Put(PutRequest(key=space[0] + b"big", value=b"x" * value_bytes)))
            assert code == expected[0]
            if expected[1]:
                assert message == expected[1]
    run(scenario())


def test_lease_expiry_deletes_keys_in_every_group_and_watchers_see_it(tessera_cluster, space):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            lease = await client.lease.LeaseGrant(LeaseGrantRequest(TTL=1))
            assert lease.TTL == 2  # etcd's minimum TTL: 1.5 election timeouts, rounded up
            keys = [prefix + b"leased" for prefix in space]
            watch = client.watch()
            created = await watch.create(key=space[1], range_end=space[1] + b"\xff")
            for key in keys:
                await put(client, key, lease=lease.ID)
            events = await watch.events_until(lambda events: any(e.type == 1 for e in events), timeout=15)
            assert [(e.type, e.kv.key) for e in events] == [(0, keys[1]), (1, keys[1])]
            assert created.header.revision < events[-1].kv.mod_revision
            for key in keys:
                assert not (await client.kv.Range(RangeRequest(key=key))).kvs
            code, message = await etcd_error(client.kv.Put(PutRequest(key=keys[0], lease=lease.ID)))
            assert (code, message) == (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
            code, message = await etcd_error(client.lease.LeaseRevoke(LeaseRevokeRequest(ID=lease.ID)))
            assert (code, message) == (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found")
            watch.cancel()
    run(scenario())


def test_merged_watch_delivers_concurrent_writes_in_order_once(tessera_cluster, space):
    """A watch over three groups while 12 writers write to all of them: every event once, in order."""
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            low, high = min(space), max(space) + b"\xff"
            watch = client.watch()
            await watch.create(key=low, range_end=high, prev_kv=True)

            async def writer(prefix: bytes, number: int) -> list[tuple[bytes, int]]:
                done = []
                for round_ in range(10):
                    key = prefix + b"w%d-%d" % (number, round_ % 3)
                    done.append((key, await put(client, key, b"%d" % round_)))
                return done

            results = await asyncio.gather(*(writer(prefix, n) for prefix in space for n in range(4)))
            acknowledged = sorted((revision, key) for result in results for key, revision in result)
            events = await watch.events_until(lambda events: len(events) >= len(acknowledged))
            seen = [(event.kv.mod_revision, event.kv.key) for event in events]
            assert [revision for revision, _ in seen] == sorted(revision for revision, _ in seen)
            assert sorted(seen) == acknowledged  # none lost, none repeated
            watch.cancel()
    run(scenario())


def test_progress_request_on_a_merged_watch_reaches_the_latest_write(tessera_cluster, space):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            watch = client.watch()
            await watch.create(key=b"\0", range_end=b"\0")
            last = await put(client, space[2] + b"p")
            while True:  # the event first, then the answer to the progress request
                response = await watch.next()
                if response.events:
                    break
            await watch.send(progress_request={})
            progress = await watch.next()
            assert progress.watch_id == -1 and not progress.events
            assert progress.header.revision >= last
            watch.cancel()
    run(scenario())


def test_watch_from_a_compacted_revision_is_canceled_with_it(tessera_cluster, space):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            first = await put(client, space[0] + b"c")
            second = await put(client, space[1] + b"c")
            await client.kv.Compact(CompactionRequest(revision=second))
            for key, range_end in ((space[1], space[1] + b"\xff"), (b"\0", b"\0")):  # one group; all
                watch = client.watch()
                await watch.send(create_request={"key": key, "range_end": range_end, "start_revision": first})
                response = await watch.next()
                if response.created and not response.canceled:
                    response = await watch.next()
                assert response.canceled and response.compact_revision >= second, response
                watch.cancel()
            code, message = await etcd_error(client.kv.Range(RangeRequest(key=space[0] + b"c", revision=first)))
            assert (code, message) == (grpc.StatusCode.OUT_OF_RANGE,
                                       "etcdserver: mvcc: required revision has been compacted")
    run(scenario())


def test_large_watch_responses_are_fragmented_for_clients_that_ask(tessera_cluster, space):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            key = space[1] + b"big"
            start = await put(client, key + b"0", b"x" * (1024 * 1024))
            for n in range(1, 3):
                await put(client, key + b"%d" % n, b"x" * (1024 * 1024))
            watch = client.watch()
            await watch.send(create_request={"key": key, "range_end": key + b"\xff", "start_revision": start,
                                             "fragment": True})
            fragments = []
            while sum(len(f.events) for f in fragments) < 3:
                response = await watch.next()
                if response.events:
                    fragments.append(response)
            assert len(fragments) > 1 and fragments[0].fragment and not fragments[-1].fragment
            watch.cancel()
    run(scenario())


def test_status_reports_the_etcd_api_level_kubernetes_checks(tessera_cluster):
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            status = await client.maintenance.Status(StatusRequest())
            assert status.version == "3.5.13"
            assert status.leader == status.header.member_id and status.dbSize > 0
    run(scenario())


def test_an_empty_prefix_is_assigned_online_and_a_full_one_refused(tessera_cluster, space):
    data_dir = str(tessera_cluster.launcher.data_dir)
    name = space[0].split(b"/")[2].decode()
    fresh = f"/fresh-{name}/"
    assign = subprocess.run([sys.executable, "-m", "tessera.cli", "shards", "assign", fresh, "3",
                             "--data-dir", data_dir], capture_output=True, text=True, timeout=60)
    assert assign.returncode == 0, assign.stderr

    async def scenario():
        launcher = tessera_cluster.launcher
        async with EtcdClient(tessera_cluster.endpoint) as client:
            await put(client, space[0] + b"full")
            for _ in range(100):  # the router follows the meta group: a moment, not a restart
                await put(client, fresh.encode() + b"k")
                in_group_3 = await launcher.request(3, await launcher.leader(3),
                                                    range=RangeRequest(key=fresh.encode() + b"k"))
                if in_group_3.range.kvs:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("keys under the new prefix never reached group 3")

    tessera_cluster.run(scenario())
    refused = subprocess.run([sys.executable, "-m", "tessera.cli", "shards", "assign", space[0].decode(), "2",
                              "--data-dir", data_dir], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1
    assert "`tessera shards move` moves a prefix with its keys" in refused.stderr
    listed = subprocess.run([sys.executable, "-m", "tessera.cli", "shards", "list", "--data-dir", data_dir],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and fresh in listed.stdout and "/registry/pods/" in listed.stdout


def test_merged_watch_from_the_past_delivers_history_with_no_new_writes(tessera_cluster, space):
    """History in some groups only, nothing written after the watch: the idle groups are nudged."""
    async def scenario():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            first = await put(client, space[2] + b"h", b"1")  # group 3
            second = await put(client, space[0] + b"h", b"2")  # group 1; group 2 stays idle
            watch = client.watch()
            await watch.create(key=b"/", range_end=b"/\xff", start_revision=first)
            events = await watch.events_until(lambda events: len(events) >= 2)
            assert [(e.kv.key, e.kv.mod_revision) for e in events] == [(space[2] + b"h", first),
                                                                       (space[0] + b"h", second)]
            watch.cancel()
    run(scenario())


def test_requests_under_a_fenced_prefix_wait_for_the_fence_and_time_out_as_etcd(tessera_cluster, space):
    """The fence of `tessera shards move`: routers hold reads and writes under the prefix (never an
    error etcd would not give), let them go once it lifts, and answer etcd's "request timed out"
    to those held longer than a request may take (a fence whose mover died)."""
    from router.admin import _wait_for_routers
    from router.meta import META_GROUP, MetaClient
    from router.shard_client import GroupClient

    prefix = space[0] + b"moving/"
    layout = tessera_cluster.launcher.layout

    async def scenario():
        meta = MetaClient(GroupClient(META_GROUP, {m: layout.api_address(META_GROUP, m) for m in (1, 2, 3)}))
        state = await meta.load()
        fence = state.shard_map.with_moving([(prefix, prefix[:-1] + b"0", 3)])
        try:
            async with EtcdClient(tessera_cluster.endpoint) as client:
                fenced = await meta.replace_shard_map(fence, state.shard_map_revision)
                await _wait_for_routers(meta, fenced, 10.0)
                held_put = asyncio.ensure_future(put(client, prefix + b"k", b"held"))
                held_read = asyncio.ensure_future(client.kv.Range(RangeRequest(key=prefix + b"k")))
                elsewhere = await put(client, space[0] + b"elsewhere")  # other keys are not held up
                assert not held_put.done() and not held_read.done()
                lifted = await meta.replace_shard_map(state.shard_map, fenced)
                assert await held_put > elsewhere  # held until the fence lifted, after `elsewhere`
                assert (await held_read).header.revision >= elsewhere

                fenced = await meta.replace_shard_map(fence, lifted)
                await _wait_for_routers(meta, fenced, 10.0)
                assert await etcd_error(client.kv.Put(PutRequest(key=prefix + b"k", value=b"late"))) == (
                    grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out")
                await meta.replace_shard_map(state.shard_map, fenced)
                answer = await client.kv.Range(RangeRequest(key=prefix + b"k"))
                assert [kv.value for kv in answer.kvs] == [b"held"]
        finally:
            await meta.client.close()
    tessera_cluster.run(scenario())
