"""A replica's metrics and health, over HTTP, with etcd's names so etcd's dashboards work.

`ReplicaMetrics` holds what the replica counts on its hot path (plain
integers, bumped once per batch, and two histograms) and renders the
Prometheus text format in a registry of its own. Gauges are read at scrape
time from the replica (`read_gauges`), so they cost nothing between scrapes.
Every series carries the labels `group` and `member`.

`MetricsServer` answers `GET /metrics` and etcd's `GET /health` on the
replica's own asyncio loop: a scrape is a few hundred microseconds of work on
that loop and never waits for anything else. Each connection carries one
request (`Connection: close`), which Prometheus and health probes accept.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from shards.mvcc import ChangeEvent
from tessera.api.http_answers import METRICS_CONTENT_TYPE, TEXT_CONTENT_TYPE, health_answer
from tessera.api.internal_stream import write_if_open
from tessera.api.kv_pb2 import Event

# etcd's buckets for its disk histograms: 1 ms to 8.192 s, doubling.
DISK_BUCKETS = tuple(round(0.001 * 2**k, 3) for k in range(14))
# etcd's buckets for peer round trips: 100 us to 3.2768 s, doubling.
ROUND_TRIP_BUCKETS = tuple(round(0.0001 * 2**k, 4) for k in range(16))
SLOW_APPLY_SECONDS = 0.1  # etcd's warnApplyDuration
REQUEST_HEAD_TIMEOUT_SECONDS = 5.0
REQUEST_HEAD_BYTES_MAX = 16 * 1024
LABELS = ["group", "member"]


class Histogram:
    """Cumulative bucket counts, a sum and a count; observed from any thread (the WAL's fsync runs in one)."""

    def __init__(self, bounds: tuple[float, ...] = DISK_BUCKETS):
        self.bounds = bounds
        self._counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        position = bisect.bisect_left(self.bounds, seconds)  # le: a value equal to a bound is in it
        with self._lock:
            self._counts[position] += 1
            self._sum += seconds

    def buckets(self) -> tuple[list[tuple[str, int]], float]:
        """(cumulative count by upper bound, sum), as a histogram family takes them."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        buckets, cumulative = [], 0
        for bound, count in zip((*map(str, self.bounds), "+Inf"), counts):
            cumulative += count
            buckets.append((bound, cumulative))
        return buckets, total

    def family(self, name: str, documentation: str, label_values: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(name, documentation, labels=LABELS)
        family.add_metric(label_values, *self.buckets())
        return family


@dataclass
class Gauges:
    """The replica's state as a scrape sees it."""

    has_leader: bool
    is_leader: bool
    committed_index: int
    applied_index: int
    proposals_pending: int
    db_size_bytes: int
    db_size_in_use_bytes: int
    peer_sent_bytes: dict[int, int]  # by member id
    peer_received_bytes: dict[int, int]


class ReplicaMetrics:
    """One replica's series. The replica bumps the counters; a scrape reads them and `read_gauges()`."""

    def __init__(self, group_id: int, member_id: int, read_gauges: Callable[[], Gauges]):
        self.labels = [str(group_id), str(member_id)]
        self.read_gauges = read_gauges
        self.leader_changes = 0
        self.proposals_failed = 0
        self.slow_applies = 0
        self.puts = 0
        self.deletes = 0
        self.keys = 0  # live keys: counted once at start, then kept up to date from applied events
        self.wal_fsync = Histogram()
        self.backend_commit = Histogram()
        self.peer_round_trip: dict[int, Histogram] = {}  # by member id
        self.registry = CollectorRegistry()  # not the global one: a test process may hold several
        self.registry.register(self)

    def count_changes(self, events: Iterable[ChangeEvent]) -> None:
        """Puts, deletes and the live key count, from one applied batch's events (one per key changed)."""
        puts = created = deletes = 0
        for event in events:
            if event.type == Event.PUT:
                puts += 1
                if event.prev_kv is None:
                    created += 1
            else:
                deletes += 1
        self.puts += puts
        self.deletes += deletes
        self.keys += created - deletes

    def observe_apply(self, apply_seconds: float, commit_seconds: float) -> None:
        """One applied batch: the whole apply (slow past etcd's 100 ms), and its LMDB commit."""
        self.backend_commit.observe(commit_seconds)
        if apply_seconds > SLOW_APPLY_SECONDS:
            self.slow_applies += 1

    def observe_round_trip(self, member_id: int, seconds: float) -> None:
        """A heartbeat to a peer and its answer: the raft round trip to that peer."""
        histogram = self.peer_round_trip.get(member_id)
        if histogram is None:
            histogram = self.peer_round_trip[member_id] = Histogram(ROUND_TRIP_BUCKETS)
        histogram.observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self):
        """The registry's collector: every series, read now."""
        gauges = self.read_gauges()
        labels = self.labels

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, documentation, labels=LABELS)
            family.add_metric(labels, value)
            return family

        def counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, documentation, labels=LABELS)
            family.add_metric(labels, value)
            return family

        def per_peer(name: str, documentation: str, peer_label: str, by_member: dict[int, int]):
            family = CounterMetricFamily(name, documentation, labels=[*LABELS, peer_label])
            for member, value in sorted(by_member.items()):
                family.add_metric([*labels, str(member)], value)
            return family

        yield gauge("etcd_server_has_leader", "Whether this member's group has a leader (1) or not (0).",
                    int(gauges.has_leader))
        yield gauge("etcd_server_is_leader", "Whether this member leads its group (1) or not (0).",
                    int(gauges.is_leader))
        yield counter("etcd_server_leader_changes_seen_total", "Leader changes this member has seen.",
                      self.leader_changes)
        # Gauges despite the names, as etcd has them: they are raft's commit and applied indexes.
        yield gauge("etcd_server_proposals_committed_total", "Raft entries known committed (the commit index).",
                    gauges.committed_index)
        yield gauge("etcd_server_proposals_applied_total", "Raft entries applied to the store (the applied index).",
                    gauges.applied_index)
        yield gauge("etcd_server_proposals_pending", "Writes proposed here and waiting to be applied.",
                    gauges.proposals_pending)
        yield counter("etcd_server_proposals_failed_total",
                      "Proposals made here that ended without an outcome (leader change, timeout).",
                      self.proposals_failed)
        yield counter("etcd_server_slow_apply_total",
                      f"Applied batches that took longer than {SLOW_APPLY_SECONDS:g} s.", self.slow_applies)
        yield self.wal_fsync.family("etcd_disk_wal_fsync_duration_seconds",
                                    "Time of the write-ahead log's fdatasync calls.", labels)
        yield self.backend_commit.family(
            "etcd_disk_backend_commit_duration_seconds",
            "Time of the LMDB commit of each applied batch.", labels)
        yield gauge("etcd_mvcc_db_total_size_in_bytes", "Size of the store's database file.",
                    gauges.db_size_bytes)
        yield gauge("etcd_mvcc_db_total_size_in_use_in_bytes", "Bytes of the store's database pages in use.",
                    gauges.db_size_in_use_bytes)
        yield gauge("etcd_debugging_mvcc_keys_total", "Keys in the store (not deleted).", self.keys)
        yield counter("etcd_mvcc_put_total", "Keys put by applied writes, transactions included.", self.puts)
        yield counter("etcd_mvcc_delete_total", "Keys deleted by applied writes, lease revocations included.",
                      self.deletes)
        yield per_peer("etcd_network_peer_sent_bytes_total", "Raft message bytes sent to each peer.",
                       "To", gauges.peer_sent_bytes)
        yield per_peer("etcd_network_peer_received_bytes_total", "Raft message bytes received from each peer.",
                       "From", gauges.peer_received_bytes)
        round_trips = HistogramMetricFamily(
            "etcd_network_peer_round_trip_time_seconds",
            "Round trips to each peer: a leader's heartbeat and its answer.", labels=[*LABELS, "To"])
        for member, histogram in sorted(self.peer_round_trip.items()):
            round_trips.add_metric([*labels, str(member)], *histogram.buckets())
        yield round_trips


# (healthy, reason) for etcd's /health, given ?serializable=true and the ?exclude= alarm names.
HealthCheck = Callable[[bool, set[str]], Awaitable[tuple[bool, str]]]


class MetricsServer:
    """GET /metrics and GET /health on HOST:PORT, served on the running loop."""

    def __init__(self, address: str, metrics: ReplicaMetrics, health: HealthCheck):
        self.address = address
        self.metrics = metrics
        self.health = health
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        host, _, port = self.address.rpartition(":")
        self._server = await asyncio.start_server(self._serve, host, int(port))
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_HEAD_TIMEOUT_SECONDS)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            status, headers, body = await self._answer(method, target)
            lines = [f"HTTP/1.1 {status}", *headers, f"Content-Length: {len(body)}", "Connection: close", "", ""]
            answer = "\r\n".join(lines).encode("latin-1") + (b"" if method == "HEAD" else body)
            if write_if_open(writer.transport, answer):  # not if the client has gone already
                await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError, ValueError):
            pass  # a client that went away or does not speak HTTP: nothing to answer
        finally:
            writer.close()

    async def _answer(self, method: str, target: str) -> tuple[str, list[str], bytes]:
        url = urlsplit(target)
        if url.path not in ("/metrics", "/health"):
            return "404 Not Found", [f"Content-Type: {TEXT_CONTENT_TYPE}"], b"404 page not found\n"
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", ["Allow: GET, HEAD", f"Content-Type: {TEXT_CONTENT_TYPE}"], b""
        if url.path == "/metrics":
            return "200 OK", [f"Content-Type: {METRICS_CONTENT_TYPE}"], self.metrics.exposition()
        query = parse_qs(url.query)
        healthy, reason = await self.health(query.get("serializable") == ["true"],
                                            {name for name in query.get("exclude", []) if name})
        status, headers, body = health_answer(healthy, reason)
        return f"{status} {HTTPStatus(status).phrase}", [f"{name}: {value}" for name, value in headers.items()], body
