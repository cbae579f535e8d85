"""etcd's HTTP/JSON gateway on the router, side by side with a real etcd 3.5's gateway.

Each test sends the same JSON to both and compares the answers with what
must differ taken out: header values (ids, terms, a group's revision),
lease ids, and revisions, which count from each store's first write in the
test. The router is one of our own, in this process on the cluster's loop.
The gateway is reached on the router's client port, as etcd serves it (the
native edge hands HTTP/1 connections to it); one test checks the port of its
own that --gateway-listen adds, and one drives etcd3gw, a gateway client.
The cluster's map: /registry/pods/ -> group 2, /registry/events/ -> group 3, else group 1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import json
import secrets
import time
import urllib.error
import urllib.request

import grpc
import pytest

from cluster import ClusterThread
from etcd_tools import EtcdServer, ToolUnavailable
from router.server import RouterServer
from tessera.api.rpc_pb2 import MemberAddRequest, MemberAddResponse
from tessera.launcher import free_ports

HEADER = ["cluster_id", "member_id", "raft_term", "revision"]  # a header, normalized
REVISION_FIELDS = {"revision", "create_revision", "mod_revision", "compact_revision"}
KEYS_IN_THREE_GROUPS = ["/registry/events/e1", "/registry/foo", "/registry/pods/p1", "/registry/pods/p2",
                        "/top/a"]


@pytest.fixture(scope="module")
def etcd_gateway():
    try:
        with EtcdServer() as etcd:
            yield etcd.client_url
    except ToolUnavailable as error:
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def tessera_cluster(tmp_path_factory):
    """A cluster of this module's own: the router below stays registered in its meta group after it
    stops, and a shared cluster's `shards assign` would wait for it."""
    with ClusterThread(tmp_path_factory.mktemp("tessera-gateway")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tessera_router(tessera_cluster):
    grpc_port, gateway_port = free_ports(2)
    meta = {member: tessera_cluster.launcher.layout.api_address(0, member) for member in (1, 2, 3)}

    async def start() -> RouterServer:  # on the cluster's loop, where its gRPC channels must live
        server = RouterServer(f"127.0.0.1:{grpc_port}", meta, gateway_listen=f"127.0.0.1:{gateway_port}")
        await server.start()
        return server

    server = tessera_cluster.run(start())
    try:
        yield server
    finally:
        tessera_cluster.run(server.stop())


@pytest.fixture
def gateways(etcd_gateway, tessera_router):
    """(etcd's, Tessera's) gateway URLs, both stores empty; Tessera's on its client port."""
    tessera_gateway = f"http://{tessera_router.listen}"
    for url in (etcd_gateway, tessera_gateway):
        assert post(url, "/v3/kv/deleterange", {"key": b64("\0"), "range_end": b64("\0")})[0] == 200
    return etcd_gateway, tessera_gateway


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def post(url: str, path: str, body, method: str = "POST", headers: dict | None = None) -> tuple[int, object]:
    """(HTTP status, the answer: JSON decoded, or text if it is not JSON)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            status, raw = answer.status, answer.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode()


def normalized(value, base: int):
    """`value` with what may differ between two stores replaced; revisions counted from `base`."""
    if isinstance(value, dict):
        result = {}
        for name, item in value.items():
            if name == "header":
                result[name] = sorted(item)  # which fields, not their values
            elif name in REVISION_FIELDS:
                result[name] = int(item) - base
            elif name == "ID":
                result[name] = "<id>"
            else:
                result[name] = normalized(item, base)
        return result
    if isinstance(value, list):
        return [normalized(item, base) for item in value]
    return value


class Pair:
    """The same requests to etcd and to Tessera; answers compared once normalized."""

    def __init__(self, gateways):
        self.urls = gateways
        self.bases = [0, 0]

    def send(self, path: str, body, headers: dict | None = None) -> list[tuple[int, object]]:
        return [post(url, path, body, headers=headers) for url in self.urls]

    def same(self, path: str, body, headers: dict | None = None) -> tuple[int, object]:
        """Send to both; assert the answers agree; return Tessera's (normalized)."""
        answers = [(status, normalized(answer, base))
                   for (status, answer), base in zip(self.send(path, body, headers), self.bases)]
        assert answers[1] == answers[0], f"{path} {body}: Tessera {answers[1]} != etcd {answers[0]}"
        return answers[1]

    def put_all(self, keys: list[str]) -> None:
        """Put each key (its value is its name); revisions count from the first put."""
        for number, key in enumerate(keys):
            answers = self.send("/v3/kv/put", {"key": b64(key), "value": b64(key)})
            assert [status for status, _ in answers] == [200, 200], answers
            if number == 0:
                self.bases = [int(answer["header"]["revision"]) - 1 for _, answer in answers]


def test_put_and_range_over_three_groups(gateways):
    pair = Pair(gateways)
    pair.put_all(KEYS_IN_THREE_GROUPS)
    status, answer = pair.same("/v3/kv/range", {"key": b64("/registry/"), "range_end": b64("/registry0")})
    assert status == 200 and answer["count"] == "4"
    assert [base64.b64decode(kv["key"]).decode() for kv in answer["kvs"]] == KEYS_IN_THREE_GROUPS[:4]
    pair.same("/v3/kv/range", {"key": b64("\0"), "range_end": b64("\0"), "limit": 2, "sort_order": "DESCEND"})
    pair.same("/v3/kv/range", {"key": b64("/registry/"), "range_end": b64("/registry0"), "keys_only": True,
                               "sort_target": "MOD", "sortOrder": 1})  # lowerCamel names and enum numbers too
    pair.same("/v3/kv/range", {"key": b64("/"), "range_end": b64("0"), "count_only": True})
    pair.same("/v3/kv/range", {"key": b64("/registry/pods/p1"), "revision": "2"})  # int64 as string
    pair.same("/v3/kv/put", {"key": b64("/top/a"), "value": b64("new"), "prev_kv": True})
    pair.same("/v3/kv/range", {"key": b64("/absent")})


def test_delete_range_with_prev_kv_over_three_groups(gateways):
    pair = Pair(gateways)
    pair.put_all(KEYS_IN_THREE_GROUPS)
    status, answer = pair.same("/v3/kv/deleterange", {"key": b64("/registry/"), "range_end": b64("/registry0"),
                                                      "prev_kv": True})
    assert status == 200 and answer["deleted"] == "4" and len(answer["prev_kvs"]) == 4
    pair.same("/v3/kv/deleterange", {"key": b64("/registry/pods/p1")})  # nothing left: deleted left out
    pair.same("/v3/kv/range", {"key": b64("\0"), "range_end": b64("\0")})


def test_txn_both_branches(gateways):
    pair = Pair(gateways)
    pair.put_all(["/registry/pods/t", "/registry/pods/u"])
    key, other = b64("/registry/pods/t"), b64("/registry/pods/u")

    def txn(expected: str) -> dict:
        return {"compare": [{"key": key, "target": "VALUE", "result": "EQUAL", "value": b64(expected)}],
                "success": [{"request_put": {"key": key, "value": b64("next"), "prev_kv": True}},
                            {"request_range": {"key": other}}],
                "failure": [{"request_delete_range": {"key": other, "prev_kv": True}}]}

    status, answer = pair.same("/v3/kv/txn", txn("/registry/pods/t"))
    assert status == 200 and answer["succeeded"] is True
    status, answer = pair.same("/v3/kv/txn", txn("/registry/pods/t"))  # the value is "next" now
    assert "succeeded" not in answer and answer["responses"][0]["response_delete_range"]["deleted"] == "1"
    pair.same("/v3/kv/txn", {"compare": [{"key": key, "target": "CREATE", "create_revision": "0"}]})


def test_lease_grant_time_to_live_keep_alive_revoke(gateways):
    pair = Pair(gateways)
    pair.put_all(["/top/first"])
    lease = secrets.randbits(48)
    status, answer = pair.same("/v3/lease/grant", {"TTL": 60, "ID": lease})
    assert status == 200 and answer["TTL"] == "60"
    pair.same("/v3/kv/put", {"key": b64("/registry/pods/leased"), "lease": str(lease)})
    answers = pair.send("/v3/lease/timetolive", {"ID": lease, "keys": True})
    for status, answer in answers:  # etcd's TTL has run down by a second or not
        assert status == 200 and answer["ID"] == str(lease) and answer["grantedTTL"] == "60"
        assert 58 <= int(answer["TTL"]) <= 60 and answer["keys"] == [b64("/registry/pods/leased")]
    for status, answer in pair.send("/v3/kv/lease/leases", {}):
        assert status == 200 and {"ID": str(lease)} in answer["leases"]
    for url in pair.urls:  # a stream that ends with its body: one answer
        connection, response = open_stream(url, "/v3/lease/keepalive", {"ID": str(lease)})
        lines = response.read().splitlines()
        connection.close()
        assert [normalized(json.loads(line), 0) for line in lines] == [
            {"result": {"header": HEADER, "ID": "<id>", "TTL": "60"}}]
        connection, response = open_stream(url, "/v3/lease/keepalive", b"")  # no request: no answer
        assert (response.status, response.read()) == (200, b"")
        connection.close()
    pair.same("/v3/lease/revoke", {"ID": lease})
    assert pair.same("/v3/kv/range", {"key": b64("/registry/pods/leased")}) == (200, {"header": HEADER})
    pair.same("/v3/kv/lease/timetolive", {"ID": lease})  # TTL -1: no such lease
    assert pair.same("/v3/kv/lease/revoke", {"ID": lease})[0] == 404


def open_stream(url: str, path: str, body,
                headers: dict | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    connection.request("POST", path, body=body if isinstance(body, bytes) else json.dumps(body),
                       headers=headers or {})
    return connection, connection.getresponse()


# Tessera's watch answers have no raft_term in their header yet (router/watch_proxy.py); etcd's have.
WATCH_HEADER = ["cluster_id", "member_id", "revision"]


def watch_answer(response: http.client.HTTPResponse, base: int) -> dict:
    answer = normalized(json.loads(response.readline()), base)
    header = answer["result"]["header"]
    if "raft_term" in header:
        header.remove("raft_term")
    return answer


def test_watch_streams_newline_delimited_results(gateways, tessera_router):
    pair = Pair(gateways)
    pair.put_all(["/registry/pods/w"])
    streams = [open_stream(url, "/v3/watch", {"create_request": {"key": b64("/registry/pods/w"), "prev_kv": True}})
               for url in pair.urls]
    try:
        for _, response in streams:
            assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
            assert watch_answer(response, 0) == {"result": {"header": WATCH_HEADER, "created": True}}
        for url in pair.urls:
            post(url, "/v3/kv/put", {"key": b64("/registry/pods/w"), "value": b64("2")})
        events = [watch_answer(response, base) for (_, response), base in zip(streams, pair.bases)]
        assert events[1] == events[0]
        assert events[1]["result"]["events"][0]["prev_kv"]["value"] == b64("/registry/pods/w")
    finally:
        for connection, _ in streams:
            connection.close()
    deadline = time.monotonic() + 5
    while tessera_router._watch_proxies and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not tessera_router._watch_proxies  # the client went away: its watch stream is gone


@pytest.mark.parametrize("path, body", [
    ("/v3/kv/put", {"key": ""}),
    ("/v3/kv/range", b""),
    ("/v3/kv/range", b"null"),
    ("/v3/kv/range", {"key": b64("a"), "revision": 10**9}),
    ("/v3/kv/txn", {"success": [{"request_put": {"key": b64("a")}}, {"request_put": {"key": b64("a")}}]}),
    ("/v3/kv/compaction", {"revision": 10**9}),
    ("/v3/lease/revoke", {"ID": 1}),
    ("/v3/lease/grant", {"TTL": 10**10}),
    ("/v3/kv/put", b"{bad"),
    ("/v3/kv/put", b'{"key":<'),
    ("/v3/kv/put", b'{"key":'),
    ("/v3/kv/put", b'{"key":"YQ==" "x":1}'),
    ("/v3/kv/put", b'{"key" 1}'),
    ("/v3/kv/txn", b'{"compare":[{"key":"YQ=="} 1]}'),
    ("/v3/kv/put", b"[]"),
    ("/v3/watch", b"{bad"),
    ("/v3/kv/nothing", {}),
])
def test_errors_are_etcds(gateways, path, body):
    Pair(gateways).same(path, body)


def test_every_grpc_code_has_an_http_status():
    """grpc-gateway v1's HTTPStatusFromCode maps each code; none falls to the default."""
    from router.gateway import _HTTP_STATUS
    from tessera.api import errors

    assert set(_HTTP_STATUS) == set(errors.STATUS_CODES)


def test_each_grpc_code_gets_etcds_http_status(gateways):
    """Every code both stores can be made to answer, through each gateway: the same status and body.
    (INVALID_ARGUMENT, OUT_OF_RANGE, NOT_FOUND and UNKNOWN: test_errors_are_etcds.)"""
    pair = Pair(gateways)
    lease = secrets.randbits(48)
    # FAILED_PRECONDITION is 400 in etcd 3.5's gateway (grpc-gateway v1.16), not 412.
    assert pair.same("/v3/lease/grant", {"TTL": 60, "ID": lease})[0] == 200
    assert pair.same("/v3/lease/grant", {"TTL": 60, "ID": lease}) == (400, {
        "error": "etcdserver: lease already exists", "code": 9, "message": "etcdserver: lease already exists"})
    pair.same("/v3/lease/revoke", {"ID": lease})
    for path, body in (("/v3/auth/enable", {}), ("/v3/auth/user/get", {"name": "nobody"}),
                       ("/v3/auth/authenticate", {"name": "nobody", "password": "x"})):
        assert pair.same(path, body)[0] == 400
    # RESOURCE_EXHAUSTED: 429, from a full store and from a message over gRPC's limit.
    try:
        assert pair.same("/v3/maintenance/alarm", {"action": "ACTIVATE", "alarm": "NOSPACE"}) == (
            200, {"header": HEADER, "alarms": [{"alarm": "NOSPACE"}]})
        status, answer = pair.same("/v3/kv/put", {"key": b64("/registry/pods/full"), "value": b64("v")})
        assert (status, answer["message"]) == (429, "etcdserver: mvcc: database space exceeded")
    finally:
        pair.same("/v3/maintenance/alarm", {"action": "DEACTIVATE", "alarm": "NOSPACE"})
    too_large = {"key": b64("/top/big"), "value": base64.b64encode(b"x" * (2 * 1024 * 1024)).decode()}
    assert pair.same("/v3/kv/put", too_large)[0] == 429
    # DATA_LOSS: 500, from a store whose CORRUPT alarm is raised.
    try:
        pair.same("/v3/maintenance/alarm", {"action": "ACTIVATE", "memberID": "7", "alarm": "CORRUPT"})
        assert pair.same("/v3/kv/put", {"key": b64("/top/corrupt"), "value": b64("v")}) == (500, {
            "error": "etcdserver: corrupt cluster", "code": 15, "message": "etcdserver: corrupt cluster"})
    finally:
        pair.same("/v3/maintenance/alarm", {"action": "DEACTIVATE", "memberID": "7", "alarm": "CORRUPT"})


# What etcd's gateway answers when a call's Grpc-Timeout passes: DEADLINE_EXCEEDED (504) when
# the server's status comes first, or, when its own context ends first, the same message as
# UNKNOWN (500). Which one is a race inside etcd; Tessera gives the first.
DEADLINE_ANSWER = (504, {"error": "context deadline exceeded", "code": 4, "message": "context deadline exceeded"})
ETCD_DEADLINE_ANSWERS = (DEADLINE_ANSWER,
                         (500, {"error": "context deadline exceeded", "code": 2, "message": "context deadline exceeded"}))


def test_grpc_timeout_is_the_calls_deadline(gateways):
    """A lock held elsewhere: the call waits until its Grpc-Timeout, then 504 DEADLINE_EXCEEDED."""
    pair = Pair(gateways)
    holder, waiter = secrets.randbits(48), secrets.randbits(48)
    for lease in (holder, waiter):
        pair.same("/v3/lease/grant", {"TTL": 60, "ID": lease})
    try:
        name = b64("/top/gateway-lock")
        for status, answer in pair.send("/v3/lock/lock", {"name": name, "lease": holder}):
            assert status == 200 and answer["key"], answer
        etcd, tessera = pair.send("/v3/lock/lock", {"name": name, "lease": waiter}, {"Grpc-Timeout": "300m"})
        assert etcd in ETCD_DEADLINE_ANSWERS and tessera == DEADLINE_ANSWER, (etcd, tessera)
        assert pair.same("/v3/kv/range", {"key": name}, {"Grpc-Timeout": "-1S"})[0] == 504  # passed already
        assert pair.same("/v3/kv/range", {"key": name}, {"Grpc-Timeout": "0S"})[0] == 200  # no deadline
        assert pair.same("/v3/kv/range", {"key": name}, {"Grpc-Timeout": "10S"})[0] == 200
        for value in ("abc", "5", "1x", "1.5S", "+-1S", "99999999999999999999S"):
            assert pair.same("/v3/kv/range", {"key": name}, {"Grpc-Timeout": value}) == (400, {
                "error": f"invalid grpc-timeout: {value}", "code": 3, "message": f"invalid grpc-timeout: {value}"})
        assert pair.same("/v3/kv/nothing", {}, {"Grpc-Timeout": "abc"}) == (404, "Not Found\n")
    finally:
        for lease in (holder, waiter):
            pair.same("/v3/lease/revoke", {"ID": lease})


def test_grpc_timeout_ends_a_stream_with_the_deadlines_error(gateways):
    ends = []
    for url in gateways:
        connection, response = open_stream(url, "/v3/watch", {"create_request": {"key": b64("/top/w")}},
                                           {"Grpc-Timeout": "2S"})  # time enough to be created
        try:
            assert response.status == 200
            assert watch_answer(response, 0) == {"result": {"header": WATCH_HEADER, "created": True}}
            error = json.loads(response.readline())["error"]
            ends.append((error["http_code"], {"error": error["message"], "code": error["grpc_code"],
                                              "message": error["message"]}))
        finally:
            connection.close()
    etcd, tessera = ends
    assert etcd in ETCD_DEADLINE_ANSWERS and tessera == DEADLINE_ANSWER, ends


def test_only_post_and_get_version(gateways):
    answers = [post(url, "/v3/kv/range", None, method="GET") for url in gateways]
    assert answers[1] == answers[0] == (405, "Method Not Allowed\n")
    for url in gateways:  # what gateway clients choose the API path by
        with urllib.request.urlopen(url + "/version", timeout=10) as answer:
            version = json.loads(answer.read())
        assert version["etcdserver"].startswith("3.5.") and version["etcdcluster"] == "3.5.0"


# etcd 3.5's gateway paths (rpc.proto, v3lock.proto, v3election.proto), and one it lacks:
# HashKV's path is Hash's there, /v3/maintenance/hash.
ETCD_PATHS = [f"/v3/{path}" for path in (
    "kv/range", "kv/put", "kv/deleterange", "kv/txn", "kv/compaction", "watch",
    "lease/grant", "lease/revoke", "kv/lease/revoke", "lease/keepalive", "lease/timetolive",
    "kv/lease/timetolive", "lease/leases", "kv/lease/leases",
    "cluster/member/add", "cluster/member/remove", "cluster/member/update", "cluster/member/list",
    "cluster/member/promote",
    "maintenance/alarm", "maintenance/status", "maintenance/defragment", "maintenance/hash",
    "maintenance/snapshot", "maintenance/transfer-leadership", "maintenance/downgrade",
    "auth/enable", "auth/disable", "auth/status", "auth/authenticate",
    "auth/user/add", "auth/user/get", "auth/user/list", "auth/user/delete", "auth/user/changepw",
    "auth/user/grant", "auth/user/revoke",
    "auth/role/add", "auth/role/get", "auth/role/list", "auth/role/delete", "auth/role/grant", "auth/role/revoke",
    "lock/lock", "lock/unlock",
    "election/campaign", "election/proclaim", "election/leader", "election/observe", "election/resign")]


@pytest.mark.parametrize("path", [*ETCD_PATHS, "/v3/maintenance/hashkv"])
def test_the_paths_are_etcds(gateways, path):
    """GET tells a path etcd serves (405) from one it does not (404), without calling the method."""
    etcd, ours = (post(url, path, b"", method="GET") for url in gateways)
    assert ours == etcd == ((404, "Not Found\n") if path.endswith("hashkv") else (405, "Method Not Allowed\n"))


def test_a_method_not_served_answers_as_over_grpc(gateways, tessera_router):
    """etcd's path, and the gRPC front end's UNIMPLEMENTED answer (grpc-go's words), 501."""
    _, tessera_gateway = gateways
    message = "unknown method MemberAdd for service etcdserverpb.Cluster"
    assert post(tessera_gateway, "/v3/cluster/member/add", {"peerURLs": ["http://127.0.0.1:1"]}) == (
        501, {"error": message, "code": 12, "message": message})
    assert post(tessera_gateway, "/v3/cluster/member/add", b"{bad")[0] == 400  # the body is read first

    async def over_grpc():
        async with grpc.aio.insecure_channel(tessera_router.listen) as channel:
            add = channel.unary_unary("/etcdserverpb.Cluster/MemberAdd",
                                      request_serializer=MemberAddRequest.SerializeToString,
                                      response_deserializer=MemberAddResponse.FromString)
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await add(MemberAddRequest(peerURLs=["http://127.0.0.1:1"]), timeout=10)
            return failure.value.code(), failure.value.details()

    assert asyncio.run(over_grpc()) == (grpc.StatusCode.UNIMPLEMENTED, message)


def test_cluster_maintenance_and_auth(gateways):
    pair = Pair(gateways)
    pair.same("/v3/maintenance/alarm", {"action": "GET"})
    (_, etcd_auth), (_, tessera_auth) = pair.send("/v3/auth/status", {})
    assert normalized(tessera_auth, 0) == normalized(etcd_auth, 0)  # auth revision 1 on both
    for status, answer in pair.send("/v3/maintenance/status", {}):
        assert status == 200 and answer["version"].startswith("3.5.") and answer["leader"] and answer["raftIndex"]
    (_, etcd_members), (_, tessera_members) = pair.send("/v3/cluster/member/list", {})
    assert sorted(tessera_members["header"]) == sorted(etcd_members["header"])  # no revision in either
    [etcd_member] = etcd_members["members"]
    for member in tessera_members["members"]:  # ID, name, peerURLs, clientURLs; isLearner false, left out
        assert set(member) == set(etcd_member) == {"ID", "name", "peerURLs", "clientURLs"}
        assert all(url.startswith("http://") for url in member["peerURLs"] + member["clientURLs"])
    for status, answer in pair.send("/v3/maintenance/hash", {}):
        assert status == 200 and int(answer["hash"]) > 0, answer
    # A target that is not a member: etcd's gateway and Tessera's give the same error.
    pair.same("/v3/maintenance/transfer-leadership", {"targetID": "1234"})


def test_snapshot_streams_blobs_that_end_in_the_files_checksum(gateways):
    """etcd's gateway streams Maintenance.Snapshot as newline-delimited results with base64 blobs;
    joined, the blobs are the snapshot file: its length 32 over a multiple of 512, then its sha256."""
    for url in gateways:
        request = urllib.request.Request(url + "/v3/maintenance/snapshot", data=b"{}", method="POST")
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200
            results = [json.loads(line)["result"] for line in answer.read().splitlines() if line.strip()]
        data = b"".join(base64.b64decode(result.get("blob", "")) for result in results)
        assert len(data) % 512 == 32, (url, len(data))
        assert hashlib.sha256(data[:-32]).digest() == data[-32:], url
        assert "remaining_bytes" not in results[-1]  # 0, so omitted: nothing after the checksum


def test_the_gateway_answers_on_its_own_port_too(gateways, tessera_router):
    _, client_port_url = gateways
    own_port_url = f"http://{tessera_router.gateway_listen}"
    assert post(client_port_url, "/v3/kv/put", {"key": b64("/own-port"), "value": b64("v")})[0] == 200
    for url in (client_port_url, own_port_url):
        status, answer = post(url, "/v3/kv/range", {"key": b64("/own-port")})
        assert status == 200 and answer["kvs"][0]["value"] == b64("v")


def test_etcd3gw_works_against_the_client_port(gateways, tessera_router):
    """etcd3gw, a gateway client (default URL http://localhost:2379), pointed at the router's port."""
    etcd3gw = pytest.importorskip("etcd3gw")
    host, _, port = tessera_router.listen.rpartition(":")
    client = etcd3gw.client(host=host, port=int(port))
    assert client.put("/etcd3gw/a", "1") is True
    assert client.get("/etcd3gw/a") == [b"1"]
    lease = client.lease(ttl=30)
    assert client.put("/etcd3gw/leased", "2", lease=lease)
    assert sorted(value for value, _ in client.get_prefix("/etcd3gw/")) == [b"1", b"2"]
    assert lease.revoke() is True
    assert client.get("/etcd3gw/leased") == []
    assert client.delete("/etcd3gw/a") is True
    assert client.status()["version"]
