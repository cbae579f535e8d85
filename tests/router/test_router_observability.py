"""The router's HTTP side as `tessera up` runs it: /metrics, /health, and the JSON gateway."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from etcd_client import EtcdClient
from tessera.api import health_pb2_grpc
from tessera.api.health_pb2 import HealthCheckRequest, HealthCheckResponse
from tessera.api.rpc_pb2 import PutRequest


def http(url: str, body: dict | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def samples(gateway: str) -> dict[tuple[str, tuple], float]:
    status, text = http(f"http://{gateway}/metrics")
    assert status == 200
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def test_metrics_count_calls_by_method_and_code_and_show_each_groups_leader(tessera_cluster):
    gateway = tessera_cluster.launcher.layout.gateway
    put_ok = ("grpc_server_handled_total", (("grpc_code", "OK"), ("grpc_method", "Put"),
                                            ("grpc_service", "etcdserverpb.KV"), ("grpc_type", "unary")))
    empty_key = put_ok[:1] + ((("grpc_code", "InvalidArgument"),) + put_ok[1][1:],)
    before = samples(gateway)

    async def calls():
        async with EtcdClient(tessera_cluster.endpoint) as client:
            for _ in range(3):
                await client.kv.Put(PutRequest(key=b"/top/metered", value=b"v"))
            try:
                await client.kv.Put(PutRequest(key=b"", value=b"v"))
            except grpc.aio.AioRpcError as error:
                assert error.details() == "etcdserver: key is not provided"
    asyncio.run(calls())
    after = samples(gateway)
    assert after[put_ok] - before.get(put_ok, 0) == 3
    assert after[empty_key] - before.get(empty_key, 0) == 1
    for group in ("0", "1", "2", "3"):
        assert after[("etcd_server_has_leader", (("group", group),))] == 1


def test_health_is_etcds_answer(tessera_cluster):
    gateway = tessera_cluster.launcher.layout.gateway
    assert http(f"http://{gateway}/health") == (200, '{"health":"true","reason":""}')


def test_the_gateway_serves_json_where_tessera_up_says(tessera_cluster):
    gateway = tessera_cluster.launcher.layout.gateway
    key = base64.b64encode(b"/registry/pods/gateway").decode()
    status, _ = http(f"http://{gateway}/v3/kv/put", {"key": key, "value": base64.b64encode(b"v").decode()})
    assert status == 200
    status, text = http(f"http://{gateway}/v3/kv/range", {"key": key})
    assert status == 200 and json.loads(text)["kvs"][0]["value"] == base64.b64encode(b"v").decode()


def test_every_process_logs_json_lines_that_say_where_they_come_from(tessera_cluster):
    logs = tessera_cluster.launcher.logs_dir
    expected = {"router.log": {"component": "router"},
                "group-1-member-2.log": {"component": "replica", "group": 1, "member": 2}}
    for name, fields in expected.items():
        lines = [line for line in (logs / name).read_text().splitlines()
                 if line and not line.startswith("--- ")]  # the launcher's start markers
        assert lines, name
        for line in lines:
            record = json.loads(line)  # a traceback would be inside "error", never a line of its own
            assert {"ts", "level", "caller", "msg"} <= set(record) and fields.items() <= record.items(), line


def test_the_grpc_health_service_answers_serving(tessera_cluster):
    async def scenario():
        async with grpc.aio.insecure_channel(tessera_cluster.endpoint) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            assert (await health.Check(HealthCheckRequest())).status == HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await health.Check(HealthCheckRequest(service="no.such.Service"))
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            watch = health.Watch(HealthCheckRequest())
            assert (await watch.read()).status == HealthCheckResponse.SERVING
            watch.cancel()
    asyncio.run(scenario())
