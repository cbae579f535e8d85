"""The local cluster's launcher with real replica processes: supervision, stop, resume; and `tessera up`.

`tessera up` is run against a stand-in router (written into the test's
directory and put first on PYTHONPATH), so the launcher's side of the router
contract is tested on its own: the meta bootstrap call, the router's command
line, the wait until it serves, and a clean stop on Ctrl-C.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

import etcd_tools

from tessera.api.rpc_pb2 import PutRequest, RangeRequest
from tessera.launcher import GROUPS, MEMBERS, Launcher, LauncherError

ROOT = Path(__file__).resolve().parents[1]
# Small WAL segments: 12 replicas take 48 MB of disk instead of 768 MB.
WAL_SEGMENT_BYTES = 4 * 1024 * 1024
DEADLINE_SECONDS = 20


def processes_naming(directory: Path) -> list[int]:
    """Live processes whose command line names the directory: what a launcher started there."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(directory).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            pass  # gone meanwhile
    return found


@pytest.fixture
def data_dir(tmp_path):
    """The cluster's directory; its replicas' data (48 MB of preallocated WAL) is removed after the test,
    its logs stay for a failure's post-mortem."""
    yield tmp_path / "data"
    for group_dir in (tmp_path / "data").glob("group-*"):
        shutil.rmtree(group_dir)


def launcher(directory: Path, **options) -> Launcher:
    return Launcher(directory, start_router=False, wal_segment_bytes=WAL_SEGMENT_BYTES, **options)


async def wait_until(condition, what: str, details=lambda: ""):
    """Poll a condition (a plain or an async function) until it holds, or fail naming what did not happen."""
    deadline = time.monotonic() + DEADLINE_SECONDS
    while not ((await result) if asyncio.iscoroutine(result := condition()) else result):
        assert time.monotonic() < deadline, f"waited {DEADLINE_SECONDS} s for {what}\n{details()}"
        await asyncio.sleep(0.05)


async def serving(cluster: Launcher, group: int, member: int) -> bool:
    try:
        return (await cluster.status(group, member)).member_id == member
    except LauncherError:
        return False


def test_a_killed_member_is_reported_and_restarted_and_stop_leaves_nothing(data_dir):
    reports = []

    async def scenario():
        async with launcher(data_dir, report=reports.append) as cluster:
            pids = {(group, member): cluster.pid(group, member) for group in GROUPS for member in MEMBERS}
            assert sorted(processes_naming(data_dir)) == sorted(pids.values())
            leader = await cluster.leader(2)
            killed = cluster.pid(2, leader)
            cluster.kill(2, leader)

            async def back():
                return cluster.pid(2, leader) not in (None, killed) and await serving(cluster, 2, leader)

            await wait_until(back, "the killed member to come back", lambda: "\n".join(reports))
            assert reports[:2] == [
                f"group 2 member {leader} (pid {killed}) exited with signal SIGKILL; restarting in 0.5 s",
                f"group 2 member {leader} restarted (pid {cluster.pid(2, leader)})",
            ]
            assert await cluster.leader(2) in MEMBERS  # all three agree again
            pids[2, leader] = cluster.pid(2, leader)
            # A second crash soon after waits twice as long; stop() then cancels the pending restart.
            cluster.kill(2, leader)
            await wait_until(lambda: len(reports) == 3, "the second exit to be reported")
            assert reports[2].endswith("restarting in 1 s")
        assert processes_naming(data_dir) == []
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)

    asyncio.run(scenario())
    logs = sorted(path.name for path in (data_dir / "logs").iterdir())
    assert logs == sorted(f"group-{group}-member-{member}.log" for group in GROUPS for member in MEMBERS)


def test_a_second_start_resumes_ports_and_data(data_dir):
    reports = []

    async def scenario():
        async with launcher(data_dir, supervise=False, report=reports.append) as cluster:
            layout = cluster.layout_path.read_text()
            with pytest.raises(LauncherError, match="in use by a running launcher"):
                await launcher(data_dir).start()  # one launcher per data directory
            leader = await cluster.leader(2)
            answer = await cluster.request(2, leader, put=PutRequest(key=b"/registry/pods/a", value=b"kept"))
            assert answer.WhichOneof("response") == "put", answer
            # Without supervision a killed member stays down until restart().
            follower = next(member for member in MEMBERS if member != leader)
            killed = cluster.pid(2, follower)
            cluster.kill(2, follower)
            assert await cluster.leader(2) == leader
            await wait_until(lambda: reports, "the exit to be reported")
            assert reports == [
                f"group 2 member {follower} (pid {killed}) exited with signal SIGKILL; not restarted"
            ]
            assert cluster.pid(2, follower) is None
            cluster.restart(2, follower)
            assert reports[1] == f"group 2 member {follower} started again (pid {cluster.pid(2, follower)})"
            await cluster.leader(2)  # the restarted member answers and agrees
        assert processes_naming(data_dir) == []

        async with launcher(data_dir) as again:
            assert again.layout_path.read_text() == layout
            leader = await again.leader(2)
            read = await again.request(2, leader, range=RangeRequest(key=b"/registry/pods/a"))
            assert [(kv.key, kv.value) for kv in read.range.kvs] == [(b"/registry/pods/a", b"kept")]
        assert processes_naming(data_dir) == []

    asyncio.run(scenario())


def test_tessera_up_serves_etcdctl_stops_on_ctrl_c_and_resumes(tmp_path, data_dir):
    """The README's promise: `tessera up`, then `etcdctl put foo bar && etcdctl get foo`; and a launcher
    killed by SIGKILL leaves no process behind."""
    etcdctl = etcd_tools.etcdctl_path()

    def up_until_ready(output_path: Path) -> subprocess.Popen:
        with open(output_path, "ab") as output:
            up = subprocess.Popen(
                [sys.executable, "-m", "tessera.cli", "up", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
                 "--wal-segment-bytes", str(WAL_SEGMENT_BYTES)],
                cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 2 * DEADLINE_SECONDS
        while output_path.read_text().count("Ctrl-C stops the cluster.") < starts:
            assert up.poll() is None and time.monotonic() < deadline, output_path.read_text()
            time.sleep(0.05)
        return up

    def stop(up: subprocess.Popen) -> None:
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=DEADLINE_SECONDS) == 0, output_path.read_text()
        assert processes_naming(data_dir) == []

    output_path = tmp_path / "up.out"
    starts = 1
    up = up_until_ready(output_path)
    try:
        layout = json.loads((data_dir / "cluster.json").read_text())
        printed = output_path.read_text()
        assert f"etcdctl --endpoints={layout['listen']} " in printed
        assert "/registry/pods/ -> group 2" in printed and "every other key -> group 1" in printed
        assert str(data_dir) in printed
        assert etcd_tools.run_etcdctl(etcdctl, layout["listen"], "put", "foo", "bar")[:2] == (0, "OK\n")
        assert etcd_tools.run_etcdctl(etcdctl, layout["listen"], "get", "foo")[:2] == (0, "foo\nbar\n")
        stop(up)
        assert "tessera up: stopping" in output_path.read_text()

        starts = 2
        up = up_until_ready(output_path)  # the same data directory: the same cluster, the same keys
        assert etcd_tools.run_etcdctl(etcdctl, layout["listen"], "get", "foo")[:2] == (0, "foo\nbar\n")
        # A launcher killed outright: the kernel's parent-death signal stops its router and replicas.
        up.kill()
        up.wait()
        deadline = time.monotonic() + DEADLINE_SECONDS
        while left := processes_naming(data_dir):
            assert time.monotonic() < deadline, f"still running after their launcher was killed: {left}"
            time.sleep(0.05)
    finally:
        if up.poll() is None:
            up.kill()
            up.wait()


def test_routers_share_one_port_and_each_serves(tmp_path):
    """--routers 2: two router processes on one port (SO_REUSEPORT); the kernel spreads
    connections over both, each answers as itself (Status names the router that answered),
    and both are listed as members with the same client URL."""
    from cluster import ClusterThread
    from tessera.api.rpc_pb2 import MemberListRequest, StatusRequest, StatusResponse, MemberListResponse

    with ClusterThread(tmp_path / "cluster", routers=2) as cluster:
        endpoint = cluster.endpoint

        async def status_on_a_new_connection() -> int:
            # a subchannel pool of its own: grpc would otherwise share one connection among channels
            async with grpc.aio.insecure_channel(endpoint, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
                status = channel.unary_unary("/etcdserverpb.Maintenance/Status",
                                             request_serializer=StatusRequest.SerializeToString,
                                             response_deserializer=StatusResponse.FromString)
                return (await status(StatusRequest(), timeout=10)).leader

        answered_by = {cluster.run(status_on_a_new_connection()) for _ in range(24)}
        assert len(answered_by) == 2  # all 24 on one of two listeners: odds of 2 in 2**24

        async def members() -> list:
            async with grpc.aio.insecure_channel(endpoint) as channel:
                member_list = channel.unary_unary("/etcdserverpb.Cluster/MemberList",
                                                  request_serializer=MemberListRequest.SerializeToString,
                                                  response_deserializer=MemberListResponse.FromString)
                return list((await member_list(MemberListRequest(), timeout=10)).members)

        listed = cluster.run(members())
        assert {member.ID for member in listed} == answered_by
        assert {tuple(member.clientURLs) for member in listed} == {(f"http://{endpoint}",)}


def test_up_hands_its_auth_token_options_to_its_routers():
    from tessera.cli import up_router_arguments

    args = argparse.Namespace(auth_token="simple", auth_token_ttl=60.0, auto_compaction_mode=None)
    assert up_router_arguments(args) == ["--auth-token", "simple", "--auth-token-ttl", "60.0"]
    # A token option that cannot work stops `tessera up` before anything starts.
    refused = subprocess.run([sys.executable, "-m", "tessera.cli", "up", "--auth-token", "jwt,sign-method=RS256"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert "argument --auth-token: a JWT needs pub-key or priv-key" in refused.stderr
