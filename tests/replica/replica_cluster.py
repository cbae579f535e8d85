"""A raft group of real replica processes on 127.0.0.1, and a client for their internal API.

Every process is started with --parent-pid, so it stops by itself if the test
process dies; the test stops them by PID in any case.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from router.shard_client import ReplicaUnreachable, ReplicaWatch, ShardConnection
from tessera.api.internal_pb2 import ShardRequest, ShardResponse
from tessera.api.rpc_pb2 import PutRequest, RangeRequest, WatchRequest, WatchResponse
from tessera.launcher import free_ports

ROOT = Path(__file__).resolve().parents[2]
STARTUP_SECONDS = 15
# Small WAL segments: a test group takes MBs of disk, not 64 MB a member, and rolls segments.
TEST_WAL_SEGMENT_BYTES = 4 * 1024 * 1024


class ReplicaGroup:
    def __init__(self, directory: Path, size: int = 3, group_id: int = 1, extra_arguments=(), metrics=False,
                 environment=None):
        self.directory = directory
        self.group_id = group_id
        self.extra_arguments = list(extra_arguments)
        self.environment = dict(environment or {})  # added to the processes' environment (failpoints)
        ports = free_ports(3 * size)
        self.peer_ports = dict(zip(range(1, size + 1), ports[:size]))
        self.api_ports = dict(zip(range(1, size + 1), ports[size:2 * size]))
        # With metrics=True each founding member serves /metrics and /health on a port of its own.
        self.metrics_ports = dict(zip(range(1, size + 1), ports[2 * size:])) if metrics else {}
        self.processes: dict[int, subprocess.Popen] = {}
        self.joining: set[int] = set()

    @property
    def members_argument(self) -> str:
        return ",".join(
            f"{m}=127.0.0.1:{self.peer_ports[m]}/127.0.0.1:{self.api_ports[m]}" for m in self.peer_ports
        )

    def add_member(self, member: int) -> None:
        """Give a new member addresses (it joins once added through the API and started)."""
        peer, api = free_ports(2)
        self.peer_ports[member], self.api_ports[member] = peer, api
        self.joining.add(member)

    def peer_address(self, member: int) -> str:
        return f"127.0.0.1:{self.peer_ports[member]}"

    def api_address(self, member: int) -> str:
        return f"127.0.0.1:{self.api_ports[member]}"

    def start(self, member: int) -> None:
        log = open(self.directory / f"member-{member}.log", "ab")
        self.processes[member] = subprocess.Popen(
            [sys.executable, "-m", "tessera.cli", "replica", "--group", str(self.group_id),
             "--member", str(member), "--data-dir", str(self.directory / f"member-{member}"),
             "--members", self.members_argument, "--parent-pid", str(os.getpid()),
             "--wal-segment-bytes", str(TEST_WAL_SEGMENT_BYTES), *self.extra_arguments,
             *([f"--metrics-listen=127.0.0.1:{self.metrics_ports[member]}"] if member in self.metrics_ports else []),
             *(["--join"] if member in self.joining else [])],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.environment},
        )

    def start_all(self) -> None:
        for member in self.peer_ports:
            self.start(member)

    def kill(self, member: int) -> None:
        process = self.processes.pop(member)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    def stop_all(self) -> None:
        for member in list(self.processes):
            self.kill(member)

    def logs(self) -> str:
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in sorted(self.directory.glob("*.log")))


def run_scenario(group: ReplicaGroup, scenario) -> None:
    """Start the group, run the coroutine function `scenario`, stop the group whatever happened."""
    group.start_all()
    try:
        asyncio.run(scenario())
    finally:
        group.stop_all()


class ShardClient:
    """The router's connection to one replica, as a context: send requests, await their answers."""

    def __init__(self, address: str):
        self.address = address
        self._connection = ShardConnection(address)

    async def __aenter__(self) -> ShardClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._connection.close()

    async def request(self, timeout: float = 10.0, **fields) -> ShardResponse:
        """The replica's answer; ReplicaUnreachable if the connection failed or none came in time."""
        return await self._connection.request(ShardRequest(**fields), timeout)


async def wait_for_leader(group: ReplicaGroup, members=None, timeout: float = STARTUP_SECONDS) -> int:
    """The member every given replica agrees leads, once that is one of them."""
    deadline = time.monotonic() + timeout
    members = list(members or group.processes)
    while time.monotonic() < deadline:
        leaders = set()
        for member in members:
            try:
                async with ShardClient(group.api_address(member)) as client:
                    leaders.add((await client.request(timeout=1.0, status={})).status.leader_id)
            except ReplicaUnreachable:
                leaders.add(None)
        if len(leaders) == 1 and leaders <= set(members):  # agreed, and alive
            return leaders.pop()
        await asyncio.sleep(0.1)
    raise AssertionError(f"no agreed leader within {timeout} s\n{group.logs()}")


class WatchClient:
    """One watch stream to one replica, in etcd's Watch protocol."""

    def __init__(self, address: str):
        self._watch = ReplicaWatch(address)
        self._responses = self._watch.responses()

    async def __aenter__(self) -> WatchClient:
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self._responses.aclose()
        self._watch.close()

    async def send(self, **fields) -> None:
        self._watch.send(WatchRequest(**fields))

    async def next(self, timeout: float = 10.0) -> WatchResponse:
        return WatchResponse.FromString(await asyncio.wait_for(anext(self._responses), timeout))


async def put_many(client, prefix: bytes, count: int) -> None:
    answers = await asyncio.gather(*[
        client.request(put=PutRequest(key=prefix + b"%05d" % i, value=b"v%d" % i)) for i in range(count)
    ])
    assert all(answer.WhichOneof("response") == "put" for answer in answers), answers[0]


async def read_all(group, member, serializable=False):
    async with ShardClient(group.api_address(member)) as client:
        answer = await client.request(range=RangeRequest(key=b"\0", range_end=b"\0", serializable=serializable))
    return {kv.key: kv.value for kv in answer.range.kvs}


async def wait_until_caught_up(group, follower, leader, what="catch up"):
    """Until the follower's own state (a serializable read) equals the leader's."""
    expected = await read_all(group, leader)
    for _ in range(150):
        try:
            if await read_all(group, follower, serializable=True) == expected:
                return
        except ReplicaUnreachable:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"the follower did not {what}\n{group.logs()}")
