"""A replica's /metrics (etcd's metric names, Prometheus text) and /health (etcd's answers), over HTTP."""

import asyncio
import json
import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from replica_cluster import ReplicaGroup, ShardClient, put_many, wait_for_leader

from tessera.api.rpc_pb2 import DeleteRangeRequest
from tessera.launcher import LAYOUT_FILE, Layout

GROUP = 1
# What each series is, as etcd exposes it.
SERIES_TYPES = {
    "etcd_server_has_leader": "gauge",
    "etcd_server_is_leader": "gauge",
    "etcd_server_leader_changes_seen_total": "counter",
    "etcd_server_proposals_committed_total": "gauge",
    "etcd_server_proposals_applied_total": "gauge",
    "etcd_server_proposals_pending": "gauge",
    "etcd_server_proposals_failed_total": "counter",
    "etcd_server_slow_apply_total": "counter",
    "etcd_disk_wal_fsync_duration_seconds": "histogram",
    "etcd_disk_backend_commit_duration_seconds": "histogram",
    "etcd_mvcc_db_total_size_in_bytes": "gauge",
    "etcd_mvcc_db_total_size_in_use_in_bytes": "gauge",
    "etcd_debugging_mvcc_keys_total": "gauge",
    "etcd_mvcc_put_total": "counter",
    "etcd_mvcc_delete_total": "counter",
    "etcd_network_peer_sent_bytes_total": "counter",
    "etcd_network_peer_received_bytes_total": "counter",
    "etcd_network_peer_round_trip_time_seconds": "histogram",
}
HEALTHY = b'{"health":"true","reason":""}'


def get(port: int, path: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def health(port: int, query: str = "") -> tuple[int, bytes]:
    status, _, body = get(port, "/health" + query)
    return status, body


def scrape(group: ReplicaGroup, member: int) -> dict[str, float]:
    """A member's samples by name, other labels than group and member folded in: `name{le=0.001}`.

    Checks on the way that each series has etcd's type and the member's group and member labels.
    """
    status, headers, body = get(group.metrics_ports[member], "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        name = family.name + ("_total" if family.type == "counter" else "")
        if name in SERIES_TYPES:
            assert family.type == SERIES_TYPES[name], name
            samples[name] = None  # present, even with no sample yet (peer bytes before traffic)
        for sample in family.samples:
            labels = dict(sample.labels)
            assert labels.pop("group") == str(group.group_id) and labels.pop("member") == str(member), sample
            key = sample.name + "".join(f"{{{label}={value}}}" for label, value in sorted(labels.items()))
            samples[key] = sample.value
    return samples


async def write(group: ReplicaGroup, leader: int, count: int, delete: int = 0) -> None:
    async with ShardClient(group.api_address(leader)) as client:
        await put_many(client, b"k", count)
        if delete:
            answer = await client.request(delete_range=DeleteRangeRequest(key=b"k", range_end=b"k%05d" % delete))
            assert answer.delete_range.deleted == delete


def test_metrics_name_every_series_and_move_with_writes(tmp_path):
    group = ReplicaGroup(tmp_path, metrics=True)
    group.start_all()
    try:
        leader = asyncio.run(wait_for_leader(group))
        before = {member: scrape(group, member) for member in group.processes}
        for member, samples in before.items():
            assert set(SERIES_TYPES) <= set(samples), set(SERIES_TYPES) - set(samples)
            assert samples["etcd_server_has_leader"] == 1
            assert samples["etcd_server_is_leader"] == (member == leader)
            assert samples["etcd_server_leader_changes_seen_total"] >= 1

        asyncio.run(write(group, leader, count=200, delete=50))
        applied = scrape(group, leader)["etcd_server_proposals_applied_total"]
        after = {member: scrape(group, member) for member in group.processes}
        deadline = time.monotonic() + 10
        # Followers learn the commit a heartbeat after the leader: wait until they applied as far.
        while min(samples["etcd_server_proposals_applied_total"] for samples in after.values()) < applied:
            assert time.monotonic() < deadline, "the followers do not catch up"
            time.sleep(0.1)
            after = {member: scrape(group, member) for member in group.processes}
        for member in group.processes:
            old, new = before[member], after[member]
            assert new["etcd_server_proposals_committed_total"] >= old["etcd_server_proposals_committed_total"] + 201
            assert new["etcd_server_proposals_applied_total"] == new["etcd_server_proposals_committed_total"]
            assert new["etcd_disk_wal_fsync_duration_seconds_count"] > old["etcd_disk_wal_fsync_duration_seconds_count"]
            assert new["etcd_disk_wal_fsync_duration_seconds_bucket{le=+Inf}"] == \
                new["etcd_disk_wal_fsync_duration_seconds_count"]
            assert new["etcd_disk_wal_fsync_duration_seconds_sum"] > old["etcd_disk_wal_fsync_duration_seconds_sum"]
            assert new["etcd_disk_backend_commit_duration_seconds_count"] > \
                old["etcd_disk_backend_commit_duration_seconds_count"]
            assert new["etcd_mvcc_put_total"] == old["etcd_mvcc_put_total"] + 200
            assert new["etcd_mvcc_delete_total"] == old["etcd_mvcc_delete_total"] + 50
            assert new["etcd_debugging_mvcc_keys_total"] == 150
            assert new["etcd_mvcc_db_total_size_in_bytes"] >= new["etcd_mvcc_db_total_size_in_use_in_bytes"] > 0
            assert new["etcd_server_proposals_pending"] == 0
            assert new["etcd_server_proposals_failed_total"] == 0
            # Raft traffic flows between the leader and each follower (followers do not talk).
            for peer in [leader] if member != leader else [m for m in group.processes if m != leader]:
                sent = f"etcd_network_peer_sent_bytes_total{{To={peer}}}"
                assert new[sent] > old.get(sent, 0)
                assert new[f"etcd_network_peer_received_bytes_total{{From={peer}}}"] > 0
        # The leader times its heartbeats (one each 100 ms) to each follower's answer.
        followers = [member for member in group.processes if member != leader]
        counts = [f"etcd_network_peer_round_trip_time_seconds_count{{To={peer}}}" for peer in followers]
        samples, deadline = scrape(group, leader), time.monotonic() + 10
        while not all(samples.get(count, 0) > 0 for count in counts):
            assert time.monotonic() < deadline, f"no round trips to {followers} timed: {samples}"
            time.sleep(0.1)
            samples = scrape(group, leader)
        for peer, count in zip(followers, counts):
            assert 0 < samples[f"etcd_network_peer_round_trip_time_seconds_sum{{To={peer}}}"] < samples[count]

        status, headers, body = get(group.metrics_ports[leader], "/health")
        assert (status, body, headers["Content-Type"]) == (200, HEALTHY, "text/plain; charset=utf-8")
        for member in group.processes:
            assert health(group.metrics_ports[member], "?serializable=true") == (200, HEALTHY)
        assert get(group.metrics_ports[leader], "/nothing")[0] == 404
    finally:
        group.stop_all()


def test_health_is_503_without_quorum(tmp_path):
    group = ReplicaGroup(tmp_path, metrics=True)
    group.start_all()
    try:
        leader = asyncio.run(wait_for_leader(group))
        survivor, *others = [member for member in group.processes if member != leader] + [leader]
        for member in group.processes:
            assert health(group.metrics_ports[member]) == (200, HEALTHY)
        for member in others:
            group.kill(member)
        deadline = time.monotonic() + 15
        while (answer := get(group.metrics_ports[survivor], "/health"))[0] == 200:
            assert time.monotonic() < deadline, "the survivor still says it is healthy"
            time.sleep(0.2)
        status, headers, body = answer
        assert (status, body) == (503, b'{"health":"false","reason":"RAFT NO LEADER"}\n')
        assert json.loads(body) == {"health": "false", "reason": "RAFT NO LEADER"}
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        assert scrape(group, survivor)["etcd_server_has_leader"] == 0
        # etcd's ?serializable=true asks only whether this member can serve local reads: it can.
        assert health(group.metrics_ports[survivor], "?serializable=true") == (200, HEALTHY)
    finally:
        group.stop_all()


def test_a_saved_layout_without_metrics_or_gateway_addresses_gets_them(tmp_path):
    layout = Layout.new("127.0.0.1:0")
    path = tmp_path / LAYOUT_FILE
    layout.save(path)
    older = json.loads(path.read_text())
    for members in older["groups"].values():
        for addresses in members.values():
            del addresses["metrics"]
    del older["gateway"]
    path.write_text(json.dumps(older))

    resumed = Layout.load(path)
    assert resumed.add_missing_addresses()
    assert resumed.groups == layout.groups
    metrics = [address for members in resumed.metrics.values() for address in members.values()]
    assert len(set(metrics)) == len(metrics) == 12
    others = {address for members in resumed.groups.values() for pair in members.values() for address in pair}
    assert not set(metrics) & (others | {resumed.listen})
    assert resumed.gateway and resumed.gateway not in {*metrics, *others, resumed.listen}
    resumed.save(path)
    assert Layout.load(path).metrics == resumed.metrics
    assert not Layout.load(path).add_missing_addresses()
