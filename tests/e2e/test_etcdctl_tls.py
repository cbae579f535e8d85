"""Client TLS on the router's port, with etcdctl 3.5 as the client and a real etcd as the oracle.

The Tessera side is `tessera up --tls`, run as a user runs it: it makes a CA and
certificates under its data dir and prints the etcdctl flags to use, which the
tests take from its output. The etcd side is an etcd 3.5 started with the same
server certificate and CA (--client-cert-auth). Each bad client (a certificate
from another CA, none at all, plaintext on the TLS port) gets the same from
both: etcdctl's exit code, its last line, and the gRPC error its log names.
A python grpcio client with client certificates (what the Kubernetes apiserver
does with grpc-go) and a second router serving TLS without client
certificates complete the picture.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import queue
import re
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import grpc
import pytest

import etcd_tools
from etcd_tools import EtcdctlProcess, ToolUnavailable, run_etcdctl
from router.shard_client import ReplicaUnreachable, ShardConnection
from tessera.api import rpc_pb2, rpc_pb2_grpc
from tessera.api.internal_pb2 import ShardRequest, StatusRequest
from tessera.api.tls import TLSFiles
from tessera.certs import LocalCertificates, issue, make_authority, make_local_certificates
from tessera.launcher import LAYOUT_FILE, META_GROUP, Layout, free_ports

STARTUP_SECONDS = 180  # twelve replicas and a router, on a loaded 2-core machine
DIAL_TIMEOUT = "--dial-timeout=3s"
ETCDCTL_LINE = re.compile(r"etcdctl --endpoints=(https://\S+) --cacert (\S+) --cert (\S+) --key (\S+) put")


@pytest.fixture(scope="module")
def etcdctl():
    try:
        return etcd_tools.etcdctl_path()
    except ToolUnavailable as reason:
        pytest.skip(str(reason))


class TesseraUp:
    """`tessera up --tls` in a process of its own; stopped with SIGINT by PID, as Ctrl-C does."""

    def __init__(self, data_dir: Path):
        command = [sys.executable, "-m", "tessera.cli", "up", "--tls", "--data-dir", str(data_dir),
                   "--listen", "127.0.0.1:0", "--wal-segment-bytes", str(4 * 1024 * 1024)]
        self.process = subprocess.Popen(etcd_tools.dying_with_parent(command), stdin=subprocess.DEVNULL,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output: list[str] = []
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.output.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_for_etcdctl_line(self) -> re.Match:
        deadline = time.monotonic() + STARTUP_SECONDS
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line is None:  # it exited
                break
            if found := ETCDCTL_LINE.search(line):
                return found
        self.stop()
        raise AssertionError("tessera up --tls printed no etcdctl line:\n" + "".join(self.output))

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._reader.join(10)


@pytest.fixture(scope="module")
def tessera_tls(tmp_path_factory, etcdctl):
    """(endpoint URL, flags etcdctl needs, the certificates): what `tessera up --tls` printed."""
    data_dir = tmp_path_factory.mktemp("tessera-tls") / "data"
    up = TesseraUp(data_dir)
    try:
        found = up.wait_for_etcdctl_line()
        certificates = make_local_certificates(data_dir / "certs")  # made by `up`: read back, not remade
        assert found.groups()[1:] == (str(certificates.ca.cert_file), str(certificates.client.cert_file),
                                      str(certificates.client.key_file))
        yield found.group(1), [f"--cacert={found.group(2)}", f"--cert={found.group(3)}", f"--key={found.group(4)}"], \
            certificates, data_dir
    finally:
        up.stop()
    assert "tessera up: stopping" in "".join(up.output)


@pytest.fixture(scope="module")
def certificates(tessera_tls) -> LocalCertificates:
    return tessera_tls[2]


@pytest.fixture(scope="module")
def stranger(tmp_path_factory):
    """A client certificate from a CA neither server trusts."""
    directory = tmp_path_factory.mktemp("stranger")
    return issue(make_authority(directory, "other-ca", "another CA"), directory, "stranger", "root",
                 server=False, client=True)


@pytest.fixture(scope="module")
def etcd_tls(certificates):
    """A real etcd 3.5 with the same server certificate and CA, client certificates required."""
    server = certificates.server
    tls = TLSFiles(str(server.cert_file), str(server.key_file), str(certificates.ca.cert_file), True)
    with etcd_tools.EtcdServer(name="tls", client_tls=tls) as etcd:
        yield etcd.client_url, [f"--cacert={certificates.ca.cert_file}", f"--cert={certificates.client.cert_file}",
                                f"--key={certificates.client.key_file}"]


@pytest.fixture(scope="module", params=["tessera", "etcd"])
def target(request):
    """(endpoint URL, good etcdctl flags) of each side."""
    if request.param == "tessera":
        endpoint, flags, _, _ = request.getfixturevalue("tessera_tls")
        return endpoint, flags
    return request.getfixturevalue("etcd_tls")


def grpc_error(stderr: str) -> str:
    """The gRPC error etcdctl's client logged, without what differs from run to run (its target)."""
    for line in stderr.splitlines():
        if line.startswith("{"):
            return json.loads(line).get("error", "")
    return ""


def refused(etcdctl, endpoint: str, *flags: str) -> tuple[int, str, str, str]:
    code, out, err = run_etcdctl(etcdctl, endpoint, DIAL_TIMEOUT, *flags, "get", "anything")
    return code, out, err.strip().splitlines()[-1], grpc_error(err)


def test_put_get_and_delete_over_tls_with_a_client_certificate(etcdctl, target):
    endpoint, flags = target
    key = f"/tls/{uuid.uuid4().hex}"
    assert run_etcdctl(etcdctl, endpoint, *flags, "put", key, "secret") == (0, "OK\n", "")
    assert run_etcdctl(etcdctl, endpoint, *flags, "get", key) == (0, f"{key}\nsecret\n", "")
    assert run_etcdctl(etcdctl, endpoint, *flags, "del", key) == (0, "1\n", "")


def test_watch_over_tls_sees_puts(etcdctl, target):
    endpoint, flags = target
    key = f"/tls-watch/{uuid.uuid4().hex}"
    code, out, _ = run_etcdctl(etcdctl, endpoint, *flags, "-w", "json", "put", key, "v1")
    assert code == 0
    revision = json.loads(out)["header"]["revision"]
    with EtcdctlProcess(etcdctl, endpoint, *flags, "watch", key, "--rev", str(revision)) as watch:
        assert watch.read_lines(3, timeout=30) == ["PUT", key, "v1"]
        assert run_etcdctl(etcdctl, endpoint, *flags, "put", key, "v2")[0] == 0
        assert watch.read_lines(3, timeout=30) == ["PUT", key, "v2"]


def test_a_client_certificate_from_another_ca_gets_what_etcd_gives(etcdctl, tessera_tls, etcd_tls, stranger):
    """etcdctl: exit 1, 'Error: context deadline exceeded', the handshake failure in its log."""
    answers = []
    for endpoint, flags in ((tessera_tls[0], tessera_tls[1]), etcd_tls):
        answers.append(refused(etcdctl, endpoint, flags[0], f"--cert={stranger.cert_file}",
                               f"--key={stranger.key_file}"))
    tessera, etcd = answers
    assert tessera[:3] == etcd[:3] == (1, "", "Error: context deadline exceeded")
    assert "authentication handshake failed" in tessera[3] and "authentication handshake failed" in etcd[3]
    assert tessera[3] == etcd[3]


def test_a_client_without_a_certificate_is_refused_as_etcd_refuses_it(etcdctl, tessera_tls, etcd_tls):
    tessera = refused(etcdctl, tessera_tls[0], tessera_tls[1][0])
    etcd = refused(etcdctl, etcd_tls[0], etcd_tls[1][0])
    assert tessera[:3] == etcd[:3] == (1, "", "Error: context deadline exceeded")
    assert "authentication handshake failed" in tessera[3] and "authentication handshake failed" in etcd[3]


def test_health_and_the_json_gateway_over_tls_on_the_client_port(target, certificates):
    """HTTP/1 over TLS on the client port, as Python's HTTP clients speak it (ALPN: http/1.1).
    (A client offering h2 too gets HTTP/1.1 from Tessera, whose HTTP/2 serves gRPC only, and h2
    from etcd: tests/native/test_native_edge_tls.py covers that choice.)"""
    endpoint, _ = target
    context = ssl.create_default_context(cafile=str(certificates.ca.cert_file))
    context.load_cert_chain(str(certificates.client.cert_file), str(certificates.client.key_file))
    context.set_alpn_protocols(["http/1.1"])
    with urllib.request.urlopen(endpoint + "/health", timeout=30, context=context) as answer:
        assert json.loads(answer.read()) == {"health": "true", "reason": ""}
    key = f"/tls-gateway/{uuid.uuid4().hex}"
    put = urllib.request.Request(endpoint + "/v3/kv/put", data=json.dumps(
        {"key": base64.b64encode(key.encode()).decode(), "value": base64.b64encode(b"via gateway").decode()}).encode())
    with urllib.request.urlopen(put, timeout=30, context=context) as answer:
        assert "header" in json.loads(answer.read())
    read = urllib.request.Request(endpoint + "/v3/kv/range", data=json.dumps(
        {"key": base64.b64encode(key.encode()).decode()}).encode())
    with urllib.request.urlopen(read, timeout=30, context=context) as answer:
        [item] = json.loads(answer.read())["kvs"]
    assert base64.b64decode(item["value"]) == b"via gateway"


def test_a_plaintext_client_on_the_tls_port_is_refused_and_the_port_still_serves(etcdctl, target):
    endpoint, flags = target
    plaintext = endpoint.replace("https://", "")
    code, out, last, _ = refused(etcdctl, plaintext)
    assert (code, out, last) == (1, "", "Error: context deadline exceeded")
    assert run_etcdctl(etcdctl, endpoint, *flags, "put", "/tls/after-plaintext", "ok") == (0, "OK\n", "")


def test_a_grpc_client_with_client_certificates_puts_reads_and_watches(tessera_tls):
    """As the Kubernetes apiserver connects: TLS with a client certificate, over gRPC."""
    endpoint, _, certificates, _ = tessera_tls
    credentials = grpc.ssl_channel_credentials(
        root_certificates=certificates.ca.cert_file.read_bytes(),
        private_key=certificates.client.key_file.read_bytes(),
        certificate_chain=certificates.client.cert_file.read_bytes())
    key = f"/registry/pods/tls/{uuid.uuid4().hex}".encode()
    with grpc.secure_channel(endpoint.replace("https://", ""), credentials) as channel:
        kv, watch = rpc_pb2_grpc.KVStub(channel), rpc_pb2_grpc.WatchStub(channel)
        put = kv.Put(rpc_pb2.PutRequest(key=key, value=b"pod"), timeout=30)
        answer = kv.Range(rpc_pb2.RangeRequest(key=key), timeout=30)
        assert [(item.key, item.value) for item in answer.kvs] == [(key, b"pod")]
        assert answer.kvs[0].mod_revision == put.header.revision
        events = watch.Watch(iter([rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(
            key=key, start_revision=put.header.revision))]), timeout=30)
        created = next(events)
        assert created.created
        first = next(events)
        assert [(event.kv.key, event.kv.value) for event in first.events] == [(key, b"pod")]
        events.cancel()


def test_replicas_speak_only_peer_tls(tessera_tls):
    """`tessera up --tls` runs peer TLS: a replica's API port answers a connection that presents
    the peer certificate, and refuses plaintext and a TLS client without a certificate."""
    _, _, certificates, data_dir = tessera_tls
    layout = Layout.load(data_dir / LAYOUT_FILE)
    address = layout.api_address(META_GROUP, min(layout.groups[META_GROUP]))
    peer = TLSFiles(str(certificates.peer.cert_file), str(certificates.peer.key_file), str(certificates.ca.cert_file))
    no_certificate = ssl.create_default_context(cafile=str(certificates.ca.cert_file))

    async def status(ssl_context):
        connection = ShardConnection(address, ssl_context)
        try:
            return await connection.request(ShardRequest(status=StatusRequest()), timeout=10)
        finally:
            await connection.close()

    answer = asyncio.run(status(peer.client_context()))
    assert answer.status.leader_id in layout.groups[META_GROUP]
    for refused_context in (None, no_certificate):
        with pytest.raises(ReplicaUnreachable):
            asyncio.run(status(refused_context))


def test_operator_commands_reach_the_replicas_of_a_tls_cluster(tessera_tls):
    """`tessera status` and `tessera member list` on `tessera up --tls`'s data dir use the peer
    certificate it made; given only the cluster's meta addresses they have no certificate, and
    the meta group's replicas refuse them (a request that times out)."""
    data_dir = tessera_tls[3]
    run = [sys.executable, "-m", "tessera.cli"]
    status = subprocess.run([*run, "status", "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert status.stdout.count("leader") == 4  # one leader per group: meta and three data groups
    members = subprocess.run([*run, "member", "list", "--data-dir", str(data_dir)], capture_output=True, text=True,
                             timeout=60)
    assert members.returncode == 0, members.stderr
    rows = members.stdout.splitlines()[1:]
    assert len(rows) == 12 and sum(" leader " in row for row in rows) == 4
    layout = Layout.load(data_dir / LAYOUT_FILE)
    meta = ",".join(f"{member}={api}" for member, (_, api) in layout.groups[META_GROUP].items())
    plaintext = subprocess.run([*run, "member", "list", "--meta", meta], capture_output=True, text=True, timeout=120)
    assert (plaintext.returncode, plaintext.stdout) == (1, "")
    assert plaintext.stderr == "tessera member list: etcdserver: request timed out\n"


def test_snapshot_save_over_tls_with_etcdctls_flags(tessera_tls, tmp_path):
    endpoint, flags, _, _ = tessera_tls
    target = tmp_path / "cluster.snapshot"
    run = [sys.executable, "-m", "tessera.cli", "snapshot", "save", str(target), "--endpoints", endpoint]
    saved = subprocess.run([*run, *flags], capture_output=True, text=True, timeout=120)
    assert saved.returncode == 0, saved.stderr
    assert saved.stdout.startswith(f"Snapshot saved at {target} (revision ") and target.stat().st_size > 0
    refused = subprocess.run([*run, flags[0]], capture_output=True, text=True, timeout=120)  # no client certificate
    assert refused.returncode == 1  # grpc's own log lines come first: the command's message is the last
    assert refused.stderr.splitlines()[-1].startswith("tessera snapshot save: ") and not target.with_name(
        target.name + ".part").exists()


def test_member_list_gives_https_client_urls_which_endpoint_status_cluster_dials(etcdctl, target):
    """A TLS endpoint's members are listed with https:// client URLs, as etcd lists its own: etcdctl's
    --cluster dials every member's client URLs, and an http:// one it would dial without TLS."""
    endpoint, flags = target
    code, out, err = run_etcdctl(etcdctl, endpoint, *flags, "member", "list", "-w", "json")
    assert code == 0, err
    urls = [url for member in json.loads(out)["members"] for url in member["clientURLs"]]
    assert urls and all(url.startswith("https://") for url in urls), urls
    code, out, err = run_etcdctl(etcdctl, endpoint, *flags, "endpoint", "status", "--cluster", "-w", "json")
    assert code == 0, err
    assert sorted(status["Endpoint"] for status in json.loads(out)) == sorted(urls)


def test_a_router_serving_tls_without_client_certificates(etcdctl, tessera_tls):
    """`tessera router --cert-file --key-file`: TLS, no client certificate asked for (etcd's rule
    without --trusted-ca-file and --client-cert-auth)."""
    _, flags, certificates, data_dir = tessera_tls
    layout = Layout.load(data_dir / LAYOUT_FILE)
    meta = ",".join(f"{member}={api}" for member, (_, api) in layout.groups[META_GROUP].items())
    listen = f"127.0.0.1:{free_ports(1)[0]}"
    command = [sys.executable, "-m", "tessera.cli", "router", "--listen", listen, "--meta", meta,
               "--name", "tls-no-client-certificates", "--cert-file", str(certificates.server.cert_file),
               "--key-file", str(certificates.server.key_file),
               "--peer-cert-file", str(certificates.peer.cert_file), "--peer-key-file", str(certificates.peer.key_file),
               "--peer-trusted-ca-file", str(certificates.ca.cert_file)]
    router = subprocess.Popen(etcd_tools.dying_with_parent(command), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        endpoint = f"https://{listen}"
        deadline = time.monotonic() + 60
        while True:
            code, out, err = run_etcdctl(etcdctl, endpoint, flags[0], DIAL_TIMEOUT, "put", "/tls/open", "yes")
            if code == 0 or time.monotonic() > deadline or router.poll() is not None:
                break
        assert (code, out) == (0, "OK\n"), err
        assert run_etcdctl(etcdctl, endpoint, flags[0], "get", "/tls/open", "--print-value-only") == (0, "yes\n", "")
    finally:
        router.send_signal(signal.SIGTERM)
        try:
            router.wait(30)
        except subprocess.TimeoutExpired:
            router.kill()
            router.wait()


def test_with_auth_enabled_the_client_certificates_common_name_is_the_user(etcdctl, target):
    """As etcd with --client-cert-auth: a call with no token is its certificate's CN ("root" here)."""
    endpoint, flags = target
    key = f"/tls-cn/{uuid.uuid4().hex}"

    def etcdctl_run(*args):
        return run_etcdctl(etcdctl, endpoint, *flags, *args)[:2]

    assert etcdctl_run("user", "add", "root:cn-test-password") == (0, "User root created\n")
    assert etcdctl_run("user", "grant-role", "root", "root") == (0, "Role root is granted to user root\n")
    assert etcdctl_run("auth", "enable") == (0, "Authentication Enabled\n")
    try:
        assert etcdctl_run("put", key, "by-certificate") == (0, "OK\n")  # no --user: the CN is root
        assert etcdctl_run("get", key, "--print-value-only") == (0, "by-certificate\n")
        assert etcdctl_run("role", "add", "cn-reader") == (0, "Role cn-reader created\n")  # root only
    finally:
        assert etcdctl_run("--user", "root:cn-test-password", "auth", "disable") == (0, "Authentication Disabled\n")
        etcdctl_run("role", "delete", "cn-reader")
        assert etcdctl_run("user", "delete", "root") == (0, "User root deleted\n")


PYTHON_ETCD3_SCRIPT = """
import sys
import etcd3
host, port, ca, cert, key, password = sys.argv[1:]
def connect(password):
    return etcd3.client(host=host, port=int(port), ca_cert=ca, cert_key=key, cert_cert=cert,
                        user="alice", password=password)
def answer(call):
    try:
        return repr(call())
    except Exception as error:  # what the client raises: its gRPC status and message
        return f"{error.code().name} {error.details()}"
client = connect(password)
print(answer(lambda: client.put("/py-etcd3/key", "value") and None))
print(answer(lambda: client.get("/py-etcd3/key")[0]))
print(answer(lambda: client.put("/elsewhere", "value")))
print(answer(lambda: connect("wrong")))
"""


def test_python_etcd3_authenticates_with_user_and_password_over_tls(etcdctl, target, certificates):
    """python-etcd3 0.12 sends its token as call credentials, which gRPC sends over TLS only."""
    endpoint, flags = target
    host, port = endpoint.removeprefix("https://").rsplit(":", 1)

    def etcdctl_run(*args):  # as root: the client certificate's CN, once auth is enabled
        return run_etcdctl(etcdctl, endpoint, *flags, *args)[:2]

    for command in (("user", "add", "root:py-root-password"), ("user", "grant-role", "root", "root"),
                    ("user", "add", "alice:py-alice-password"), ("role", "add", "py-writer"),
                    ("role", "grant-permission", "py-writer", "readwrite", "/py-etcd3/", "--prefix=true"),
                    ("user", "grant-role", "alice", "py-writer"), ("auth", "enable")):
        assert etcdctl_run(*command)[0] == 0, command
    try:
        script = subprocess.run(
            [sys.executable, "-c", PYTHON_ETCD3_SCRIPT, host, port, str(certificates.ca.cert_file),
             str(certificates.client.cert_file), str(certificates.client.key_file), "py-alice-password"],
            capture_output=True, text=True, timeout=120,
            env={**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"})
        assert script.stdout.splitlines() == [
            "None", "b'value'", "PERMISSION_DENIED etcdserver: permission denied",
            "INVALID_ARGUMENT etcdserver: authentication failed, invalid user ID or password"], script.stderr
    finally:
        assert etcdctl_run("auth", "disable") == (0, "Authentication Disabled\n")
        for command in (("user", "delete", "alice"), ("role", "delete", "py-writer"), ("user", "delete", "root")):
            etcdctl_run(*command)
