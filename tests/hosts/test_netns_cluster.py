"""A cluster across hosts: every replica and the router in a network namespace of its own.

The cluster is brought up by the per-host commands of docs/deploy.md (`tessera
replica --cluster FILE ...`, `tessera router --cluster FILE ...`, the router
founding the cluster), never by `tessera up`; etcdctl in the root namespace
reaches the router over the bridge. Faults are made in the network itself
with nftables. Skipped, with the reason, where namespaces cannot be made
(not root, no `ip`) or, for the faults, where `nft` is missing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import etcd_tools
from cluster import ClusterThread
from etcd_tools import ToolUnavailable
from tessera import netns
from tessera.api.rpc_pb2 import RangeRequest
from tessera.launcher import LauncherError

REPO = Path(__file__).resolve().parents[2]
# The part of the e2e suite run through the namespaced cluster's router: KV (put, get, txn,
# delete, compaction), watch, lease, the lock and election recipes, members and endpoint
# status, snapshots.
E2E_FILES = ("test_etcdctl_kv.py", "test_etcdctl_watch.py", "test_etcdctl_lease.py",
             "test_etcdctl_concurrency.py", "test_etcdctl_cluster.py", "test_etcdctl_snapshot.py")
E2E_SECONDS = 300
NEW_LEADER_SECONDS = 20.0

pytestmark = pytest.mark.skipif(netns.unavailable() is not None, reason=netns.unavailable() or "")


def etcdctl_binary():
    try:
        return etcd_tools.etcdctl_path()
    except ToolUnavailable as reason:
        pytest.skip(str(reason))


def our_links() -> str:
    """Namespaces and links named as ours (tsh-...), as `ip` lists them."""
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    return "\n".join(line for line in (namespaces + links).splitlines() if "tsh" in line)


def test_e2e_suite_passes_through_a_router_on_its_own_host():
    """The e2e files run with TESSERA_E2E_TARGET=netns: their endpoint is the namespaced cluster's router."""
    before = our_links()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         *(f"tests/e2e/{name}" for name in E2E_FILES)],
        cwd=REPO, env={**os.environ, "TESSERA_E2E_TARGET": "netns"}, capture_output=True, text=True,
        timeout=E2E_SECONDS)
    tail = done.stdout[-3000:]
    assert done.returncode == 0, tail
    passed = re.search(r"(\d+) passed", tail)
    # 60 of them; fewer where Debian's etcdctl 3.4 cannot be fetched and its runs skip.
    assert passed and int(passed.group(1)) >= 30, tail
    assert our_links() == before, "the run left namespaces or links behind"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    with ClusterThread(tmp_path_factory.mktemp("netns-hosts"), netns=True) as cluster:
        yield cluster


def network_namespace(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/ns/net")


def test_each_process_runs_on_a_host_of_its_own_by_the_per_host_command(hosts):
    launcher = hosts.launcher
    pids = {(group, member): launcher.pid(group, member) for group, members in launcher.layout.groups.items()
            for member in members}
    pids["router"] = launcher.router_pid
    namespaces = {key: network_namespace(pid) for key, pid in pids.items()}
    assert len(set(namespaces.values())) == len(pids) == 13
    assert network_namespace(os.getpid()) not in namespaces.values()
    # The documented command line, and an address of the host's own among the members.
    command = Path(f"/proc/{pids[1, 2]}/cmdline").read_bytes().split(b"\0")
    assert [word.decode() for word in command[2:10]] == [
        "tessera.cli", "replica", "--cluster", str(launcher.cluster_path), "--group", "1", "--member", "2"]
    peer, api = launcher.layout.groups[1][2]
    assert peer.rpartition(":")[0] == api.rpartition(":")[0] == launcher.network.address(netns.replica_host(1, 2))
    router_command = Path(f"/proc/{pids['router']}/cmdline").read_bytes().split(b"\0")
    assert b"--cluster" in router_command and b"--meta" not in router_command


def leader_after(hosts, group: int, other_than: int) -> int:
    """The group's leader once it is not `other_than` (which is cut off and may still think it leads)."""
    deadline = time.monotonic() + NEW_LEADER_SECONDS
    while True:
        statuses = {}
        for member in hosts.launcher.layout.groups[group]:
            if member == other_than:
                continue
            try:
                statuses[member] = hosts.run(hosts.launcher.status(group, member))
            except Exception:
                continue
        leaders = {status.leader_id for status in statuses.values()}
        if len(leaders) == 1 and leaders.pop() in statuses:
            return next(iter(status.leader_id for status in statuses.values()))
        assert time.monotonic() < deadline, f"no new leader of group {group}: {statuses}"
        time.sleep(0.1)


@pytest.mark.parametrize("cut", ["partition", "one-way"])
def test_a_leader_cut_off_in_the_network_is_replaced_and_catches_up(hosts, cut):
    """nftables in the leader's namespace: a partition from its peers (both ways), or one-way loss of
    everything it sends them. The others elect a leader, writes through the router go on, and once
    the network heals the old leader has every write."""
    if netns.faults_unavailable():
        pytest.skip(netns.faults_unavailable())
    etcdctl = etcdctl_binary()
    launcher, network = hosts.launcher, hosts.launcher.network
    group = 2  # /registry/pods/
    old = hosts.leader(group)
    peers = [netns.replica_host(group, member) for member in launcher.layout.groups[group] if member != old]
    try:
        if cut == "partition":
            network.partition(netns.replica_host(group, old), peers)
        else:
            for peer in peers:
                network.drop(netns.replica_host(group, old), peer)
        new = leader_after(hosts, group, other_than=old)
        assert new != old
        # Until the old leader sees it has lost its quorum, it may take a write it cannot commit, which
        # then ends as etcd ends it ("etcdserver: leader changed"): the puts go once it stepped down.
        # A quiet (idle) leader checks its quorum only once a request wakes it: a linearizable read
        # does, as a client's would; a status does not.
        deadline = time.monotonic() + NEW_LEADER_SECONDS
        while hosts.run(launcher.status(group, old)).leader_id == old:
            assert time.monotonic() < deadline, f"member {old}, cut off, still leads group {group}"
            try:
                hosts.run(launcher.request(group, old, range=RangeRequest(key=b"/registry/pods/")))
            except LauncherError:
                pass  # its answer may wait for the step-down: the status above tells
            time.sleep(0.1)
        for number in range(5):
            code, out, err = etcd_tools.run_etcdctl(etcdctl, hosts.endpoint, "put",
                                                    f"/registry/pods/{cut}-{number}", str(number))
            assert (code, out) == (0, "OK\n"), err
    finally:
        network.heal()
    code, out, _ = etcd_tools.run_etcdctl(etcdctl, hosts.endpoint, "get", "--prefix", f"/registry/pods/{cut}-",
                                          "--print-value-only")
    assert code == 0 and out.split() == ["0", "1", "2", "3", "4"]
    revision = hosts.run(launcher.status(group, new)).revision
    deadline = time.monotonic() + NEW_LEADER_SECONDS
    while hosts.run(launcher.status(group, old)).revision < revision:
        assert time.monotonic() < deadline, "the old leader did not catch up after the heal"
        time.sleep(0.1)


def tessera(*args: str) -> str:
    """A `tessera` operator command from the root namespace; its output, which must say it succeeded."""
    done = subprocess.run([sys.executable, "-m", "tessera.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"tessera {' '.join(args)}: {done.stderr}"
    return done.stdout


def test_a_replica_whose_host_is_lost_comes_back_on_a_new_host(hosts, tmp_path):
    """docs/deploy.md's runbook with --meta: add a member at a new host's addresses, start it there with
    the printed command, promote it, remove the lost one. The group then keeps its quorum with one more
    of the original members down, which it could only do with the new member voting."""
    etcdctl = etcdctl_binary()
    launcher, network = hosts.launcher, hosts.launcher.network
    group, lost = 3, 1
    meta = ",".join(f"{member}={api}" for member, (_, api) in launcher.layout.groups[0].items())
    launcher.kill(group, lost)
    leader_after(hosts, group, other_than=lost)  # the operator's commands go to the group's leader
    new_address = network.add_host("new-host")
    added = tessera("member", "add", str(group), "--peer", f"{new_address}:{netns.PEER_PORT}",
                    "--api", f"{new_address}:{netns.API_PORT}", "--meta", meta)
    member = int(re.search(rf"group {group}: member (\d+) added as a learner", added).group(1))
    start = re.search(r"^\s*(tessera replica .*) --data-dir DIR$", added, re.MULTILINE).group(1).split()
    replica = subprocess.Popen(
        network.in_namespace("new-host", [sys.executable, "-m", "tessera.cli", *start[1:], "--data-dir",
                                          str(tmp_path / "new-member"), "--parent-pid", str(os.getpid())]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert "promoted to voter" in tessera("member", "promote", str(group), str(member), "--meta", meta)
        assert f"member {lost} removed" in tessera("member", "remove", str(group), str(lost), "--meta", meta)
        launcher.kill(group, 2)  # of the original three only member 3 is left
        code, out, err = etcd_tools.run_etcdctl(etcdctl, hosts.endpoint, "put", "/registry/events/moved", "yes")
        assert (code, out) == (0, "OK\n"), err
        listed = tessera("member", "list", str(group), "--meta", meta)
        assert f"{new_address}:{netns.PEER_PORT}" in listed
    finally:
        replica.kill()
        replica.wait()


def test_a_meta_replica_whose_host_is_lost_is_moved_by_one_command(hosts, tmp_path):
    """`tessera member move 0 LOST --meta ...` on the meta group: it adds a member at the new host's
    addresses, prints the command that starts it there and waits while it is started and catches up,
    promotes it, removes the lost one. The meta group has three voters again, all routed, and keeps
    its quorum with one more original member down (only with the new one voting): writes go
    through the router and `tessera shards list` answers."""
    etcdctl = etcdctl_binary()
    launcher, network = hosts.launcher, hosts.launcher.network
    lost = 1
    meta = ",".join(f"{member}={api}" for member, (_, api) in launcher.layout.groups[0].items())
    launcher.kill(0, lost)
    leader_after(hosts, 0, other_than=lost)
    new_address = network.add_host("new-meta-host")
    peer, api = f"{new_address}:{netns.PEER_PORT}", f"{new_address}:{netns.API_PORT}"
    move = subprocess.Popen([sys.executable, "-m", "tessera.cli", "member", "move", "0", str(lost), "--peer", peer,
                             "--api", api, "--meta", meta], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    replica = None
    try:
        printed = ""
        while not (start := re.search(r"^\s*(tessera replica .*) --data-dir DIR$", printed, re.MULTILINE)):
            line = move.stdout.readline()
            assert line, f"member move ended before printing the start command: {move.stderr.read()}"
            printed += line
        member = int(re.search(r"group 0: member (\d+) added as a learner", printed).group(1))
        replica = subprocess.Popen(
            network.in_namespace("new-meta-host", [sys.executable, "-m", "tessera.cli", *start.group(1).split()[1:],
                                                   "--data-dir", str(tmp_path / "new-meta-member"),
                                                   "--parent-pid", str(os.getpid())]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        out, err = move.communicate(timeout=120)
        assert move.returncode == 0, err
        assert f"group 0: member {lost} moved to member {member}" in out
        rows = [line.split() for line in tessera("member", "list", "0", "--meta", meta).splitlines()[1:]]
        assert sorted((int(row[1]), row[2] != "learner", row[5]) for row in rows) == [
            (2, True, "yes"), (3, True, "yes"), (member, True, "yes")]
        launcher.kill(0, 2)  # of the original three only member 3 is left
        code, out, err = etcd_tools.run_etcdctl(etcdctl, hosts.endpoint, "put", "/registry/meta-moved", "yes")
        assert (code, out) == (0, "OK\n"), err
        meta_left = f"3={launcher.layout.groups[0][3][1]},{member}={api}"
        assert "/registry/pods/" in tessera("shards", "list", "--meta", meta_left)
    finally:
        for process in (move, replica):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


def test_the_network_is_removed_when_the_cluster_stops(tmp_path):
    with ClusterThread(tmp_path, netns=True) as cluster:
        tag = cluster.launcher.network.tag
        assert tag in our_links()
    assert tag not in our_links()


def test_a_network_whose_maker_was_killed_is_removed_by_the_next_one():
    """SIGKILL leaves no chance to clean up: the next network made on the machine removes what is left."""
    maker = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from tessera.netns import NetnsNetwork; network = NetnsNetwork(); "
                               "network.create(); network.add_host('a'); network.add_host('b'); "
                               "print(network.tag, flush=True); time.sleep(60)"],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        tag = maker.stdout.readline().strip()
        assert tag and f"tsh-{tag}-a" in our_links()
        assert tag not in netns.remove_abandoned_networks()  # its maker is alive: left alone
    finally:
        maker.kill()
        maker.wait()
    assert f"tsh-{tag}-br" in our_links()
    assert netns.remove_abandoned_networks() == [tag]
    assert tag not in our_links()
