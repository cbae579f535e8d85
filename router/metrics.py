"""The router's /metrics (gRPC calls by method and code, as etcd's go-grpc-prometheus counts them)
and its /health (etcd's verdicts, over every group).

Both are served by the HTTP gateway (router/gateway.py), on its address, as
etcd serves them on its client port.
"""

from __future__ import annotations

import asyncio
import collections

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from tessera.api import errors
from tessera.api.internal_pb2 import ShardRequest
from tessera.api.rpc_pb2 import AlarmType, RangeRequest

HEALTH_READ_TIMEOUT_SECONDS = 5.0


class RouterMetrics:
    """Counts of gRPC calls, and gauges read from the router when scraped."""

    def __init__(self, router):
        self.router = router
        self.started: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self.handled: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)

    def call_started(self, kind: str, service: str, method: str) -> None:
        self.started[kind, service, method] += 1

    def call_handled(self, kind: str, service: str, method: str, code: str) -> None:
        self.handled[kind, service, method, code] += 1

    def collect(self):
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        started = CounterMetricFamily("grpc_server_started", "RPCs started on the server.", labels=labels)
        for key, count in sorted(self.started.items()):
            started.add_metric(list(key), count)
        handled = CounterMetricFamily("grpc_server_handled", "RPCs completed on the server, by status code.",
                                      labels=[*labels, "grpc_code"])
        for key, count in sorted(self.handled.items()):
            handled.add_metric(list(key), count)
        has_leader = GaugeMetricFamily("etcd_server_has_leader",
                                       "Whether a leader exists, by group (1 is existence).", labels=["group"])
        for group, client in sorted({**self.router.groups, self.router.meta.group_id: self.router.meta}.items()):
            has_leader.add_metric([str(group)], 0 if client.leaderless_since is not None else 1)
        revision = GaugeMetricFamily("tessera_router_revision", "The highest revision the router has seen.")
        revision.add_metric([], self.router.revision)
        return [started, handled, has_leader, revision]

    def render(self) -> bytes:
        return generate_latest(self._registry)


async def health(router, excluded_alarms: set[str]) -> tuple[bool, str]:
    """etcd's /health over the cluster: an alarm anywhere, a group without a leader, a read that fails."""
    statuses = await router.statuses()
    for group, status in sorted(statuses.items()):
        if isinstance(status, errors.EtcdError):
            continue  # judged by its read below
        for alarm in status.alarms:
            name = AlarmType.Name(alarm.alarm)
            if name not in excluded_alarms:
                return False, f"ALARM {name}"
    reads = await asyncio.gather(*(
        client.call(ShardRequest(range=RangeRequest(key=b"\0", keys_only=True, limit=1)), write=False,
                    timeout=HEALTH_READ_TIMEOUT_SECONDS)
        for client in [*router.groups.values(), router.meta]), return_exceptions=True)
    for outcome in reads:
        if isinstance(outcome, errors.NoLeader):
            return False, "RAFT NO LEADER"
        if isinstance(outcome, errors.EtcdError):
            return False, f"RANGE ERROR:{outcome.message}"
    return True, ""
