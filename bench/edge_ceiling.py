"""The native edge's own ceiling: every call answered with a constant, no routing behind it.

    python -m bench.edge_ceiling [--requests 400000] [--connections 100] [--streams 10]

Starts a server process that runs the router's client port exactly as the router
does (router/front_end.py on the native edge) with one unary method whose fast
path answers a constant PutResponse at once, then drives it with h2load
(Debian's nghttp2-client) sending real gRPC Put requests. It prints calls per
second and the server's CPU per call (utime + stime from /proc over the run):
what the edge costs before the router does any work. The client runs on the
other core; on a 2-core host the two share the machine, so run it quiet.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

from router.front_end import FrontEnd
from router.rpc import UNARY, Method
from tessera.api.rpc_pb2 import PutRequest, PutResponse, ResponseHeader

ANSWER = PutResponse(header=ResponseHeader(cluster_id=1, member_id=2, revision=3, raft_term=4)).SerializeToString()


async def _serve(port_file: str) -> None:
    def answer_now(_data: bytes, responder) -> None:
        responder.reply(ANSWER)

    async def answer(_data: bytes, _call) -> bytes:
        return ANSWER

    front_end = FrontEnd("127.0.0.1:0", [Method("etcdserverpb.KV", "Put", UNARY, answer, answer_now)],
                         serve_http1=lambda connection, _: connection.close(), message_bytes_max=2 << 20)
    front_end.start()
    with open(port_file, "w") as out:
        out.write(str(front_end.port))
    await asyncio.Event().wait()


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure(requests: int, connections: int, streams: int) -> dict:
    h2load = shutil.which("h2load")
    if h2load is None:
        raise SystemExit("h2load is not installed: apt-get install nghttp2-client")
    with tempfile.TemporaryDirectory() as directory:
        port_file = os.path.join(directory, "port")
        body = os.path.join(directory, "put.bin")
        message = PutRequest(key=b"/bench/edge", value=b"x" * 256).SerializeToString()
        with open(body, "wb") as out:
            out.write(b"\0" + len(message).to_bytes(4, "big") + message)
        server = subprocess.Popen([sys.executable, "-m", "bench.edge_ceiling", "--serve", port_file])
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(port_file) or not open(port_file).read():
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the edge server did not start")
                time.sleep(0.05)
            port = int(open(port_file).read())
            started, cpu_before = time.monotonic(), cpu_seconds(server.pid)
            done = subprocess.run(
                [h2load, "-n", str(requests), "-c", str(connections), "-m", str(streams), "-d", body,
                 "-H", "content-type: application/grpc", "-H", "te: trailers",
                 f"http://127.0.0.1:{port}/etcdserverpb.KV/Put"],
                capture_output=True, text=True, check=True)
            seconds, cpu = time.monotonic() - started, cpu_seconds(server.pid) - cpu_before
        finally:
            server.kill()
            server.wait()
    succeeded = int(re.search(r"(\d+) succeeded", done.stdout).group(1))
    return {"requests": requests, "succeeded": succeeded, "connections": connections,
            "streams_per_connection": streams, "seconds": round(seconds, 3),
            "calls_per_second": round(succeeded / seconds), "server_cpu_s": round(cpu, 3),
            "server_cpu_us_per_call": round(cpu * 1e6 / max(1, succeeded), 2),
            "calls_per_cpu_second": round(succeeded / cpu) if cpu else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400_000)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--streams", type=int, default=10, help="concurrent streams per connection")
    parser.add_argument("--serve", metavar="PORT_FILE", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    print(json.dumps(measure(args.requests, args.connections, args.streams)))


if __name__ == "__main__":
    main()
