"""General-purpose HTTP/2 clients through the router's native edge: curl, nghttp and h2load.

gRPC is HTTP/2 with a 5-byte prefix on each message and the status in the
trailers, so tools that know nothing of gRPC can call it. These tests send
real Put and Range calls with Debian's nghttp2-client (nghttp, h2load) and
curl --http2-prior-knowledge, and read back what etcd would answer. Each is
skipped when its tool is not installed (.ci/run installs them).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid

import pytest

from tessera.api.rpc_pb2 import PutRequest, RangeRequest, RangeResponse

PUT = "/etcdserverpb.KV/Put"
RANGE = "/etcdserverpb.KV/Range"
GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (apt-get install nghttp2-client curl)")
    return path


def framed(message) -> bytes:
    data = message.SerializeToString()
    return b"\0" + len(data).to_bytes(4, "big") + data


def unframed(body: bytes) -> bytes:
    assert body[0] == 0 and int.from_bytes(body[1:5], "big") == len(body) - 5
    return body[5:]


@pytest.fixture
def key() -> bytes:
    return f"/http2-clients/{uuid.uuid4().hex}".encode()


def test_curl_puts_and_reads_a_key(endpoint, key, tmp_path):
    curl = tool("curl")
    request = tmp_path / "put.bin"
    request.write_bytes(framed(PutRequest(key=key, value=b"from curl")))

    def call(path: str, body_file) -> tuple[bytes, str]:
        done = subprocess.run(
            [curl, "-sS", "--http2-prior-knowledge", "-v", "--data-binary", f"@{body_file}",
             *(arg for header in GRPC_HEADERS for arg in ("-H", header)), f"http://{endpoint}{path}"],
            capture_output=True, timeout=30, check=True)
        return done.stdout, done.stderr.decode(errors="replace")

    _, verbose = call(PUT, request)
    assert "< HTTP/2 200" in verbose
    assert "< grpc-status: 0" in verbose  # curl shows trailers as headers received
    request.write_bytes(framed(RangeRequest(key=key)))
    body, verbose = call(RANGE, request)
    answer = RangeResponse.FromString(unframed(body))
    assert [(kv.key, kv.value) for kv in answer.kvs] == [(key, b"from curl")]


def test_curl_gets_etcds_error_for_an_empty_key(endpoint, tmp_path):
    curl = tool("curl")
    request = tmp_path / "put.bin"
    request.write_bytes(framed(PutRequest(value=b"no key")))
    done = subprocess.run(
        [curl, "-sS", "--http2-prior-knowledge", "-v", "--data-binary", f"@{request}",
         *(arg for header in GRPC_HEADERS for arg in ("-H", header)), f"http://{endpoint}{PUT}"],
        capture_output=True, timeout=30, check=True)
    verbose = done.stderr.decode(errors="replace")
    assert "< grpc-status: 3" in verbose
    assert "< grpc-message: etcdserver: key is not provided" in verbose
    assert done.stdout == b""  # Trailers-Only: no message


def test_nghttp_reads_a_key(endpoint, key, tmp_path):
    nghttp = tool("nghttp")
    put = tmp_path / "put.bin"
    put.write_bytes(framed(PutRequest(key=key, value=b"from nghttp")))
    get = tmp_path / "get.bin"
    get.write_bytes(framed(RangeRequest(key=key)))
    headers = [arg for header in GRPC_HEADERS for arg in ("-H", header)]
    subprocess.run([nghttp, "-d", str(put), *headers, f"http://{endpoint}{PUT}"],
                   capture_output=True, timeout=30, check=True)
    done = subprocess.run([nghttp, "-d", str(get), *headers, f"http://{endpoint}{RANGE}"],
                          capture_output=True, timeout=30, check=True)
    answer = RangeResponse.FromString(unframed(done.stdout))
    assert answer.kvs[0].value == b"from nghttp"


def test_h2load_many_streams_over_few_connections_all_succeed(endpoint, key, tmp_path):
    """2,000 puts, 4 connections, 50 streams at once on each: every one answered 200."""
    h2load = tool("h2load")
    request = tmp_path / "put.bin"
    request.write_bytes(framed(PutRequest(key=key, value=b"x" * 256)))
    done = subprocess.run(
        [h2load, "-n", "2000", "-c", "4", "-m", "50", "-d", str(request),
         *(arg for header in GRPC_HEADERS for arg in ("-H", header)), f"http://{endpoint}{PUT}"],
        capture_output=True, text=True, timeout=120, check=True)
    summary = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                        r"(\d+) errored", done.stdout)
    assert summary, done.stdout
    total, finished, succeeded, failed, errored = map(int, summary.groups())
    assert (total, finished, succeeded, failed, errored) == (2000, 2000, 2000, 0, 0), done.stdout
    assert "status codes: 2000 2xx" in done.stdout
