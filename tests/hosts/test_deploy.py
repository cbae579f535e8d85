"""Processes placed by hand: the cluster file, DNS SRV discovery, config files, and the commands' answers.

SRV records come from a small DNS server on 127.0.0.1 (dnspython builds its
answers), which `--discovery-dns` points the commands at. The last test
starts a whole cluster (one replica per group) and its router from SRV
records alone, and uses it with etcdctl.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import dns.message
import dns.rcode
import dns.rrset
import pytest

import etcd_tools
from etcd_tools import ToolUnavailable
from shards.raft_driver import MemberAddresses
from tessera import cli
from tessera.deploy import (
    DeployError, check_shape, config_file_arguments, discover_srv, load_cluster_file, member_at,
)
from tessera.launcher import INITIAL_PREFIXES, Layout, free_ports

CLUSTER_YAML = """\
groups:
  0: {1: {peer: "host-a:2380", api: "host-a:2390"}, 2: {peer: "host-b:2380", api: "host-b:2390"}}
  1:
    1: {peer: "host-a:2480", api: "host-a:2490"}
prefixes: {/registry/: 1}
default_group: 1
"""


class SrvServer:
    """A DNS server on 127.0.0.1 answering SRV questions from `records` (name -> [(target, port)])."""

    def __init__(self, records: dict[str, list[tuple[str, int]]]):
        self.records = records
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind(("127.0.0.1", 0))
        self.socket.settimeout(0.05)  # how soon the thread sees it is to stop
        self.address = f"127.0.0.1:{self.socket.getsockname()[1]}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> SrvServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.socket.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, sender = self.socket.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            answer = dns.message.make_response(query)
            name = query.question[0].name.to_text()
            found = self.records.get(name.rstrip("."))
            if found is None:
                answer.set_rcode(dns.rcode.NXDOMAIN)
            else:
                answer.answer.append(dns.rrset.from_text(
                    name, 60, "IN", "SRV", *(f"0 0 {port} {target}." for target, port in found)))
            self.socket.sendto(answer.to_wire(), sender)


def srv_records(domain: str, groups: dict[int, list[tuple[str, int, int]]]) -> dict:
    """group -> [(target, peer port, api port)] as the SRV records a headless service publishes."""
    records = {}
    for group, members in groups.items():
        records[f"_peer._tcp.tessera-g{group}.{domain}"] = [(target, peer) for target, peer, _ in members]
        records[f"_api._tcp.tessera-g{group}.{domain}"] = [(target, api) for target, _, api in members]
    return records


# --- the cluster file -----------------------------------------------------------


def test_cluster_file_in_yaml(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(CLUSTER_YAML)
    shape = load_cluster_file(path)
    assert shape.members(0) == {1: MemberAddresses("host-a:2380", "host-a:2390"),
                                2: MemberAddresses("host-b:2380", "host-b:2390")}
    assert shape.prefixes == {b"/registry/": 1} and shape.default_group == 1
    assert member_at(shape.members(0), 0, "host-b:2380") == 2


def test_tessera_ups_cluster_json_is_a_cluster_file_with_its_shard_map(tmp_path):
    layout = Layout.new("127.0.0.1:0")
    layout.save(tmp_path / "cluster.json")
    shape = load_cluster_file(tmp_path / "cluster.json")
    assert shape.layout_groups() == layout.groups
    assert shape.prefixes == INITIAL_PREFIXES and shape.default_group == 1


@pytest.mark.parametrize("text, error", [
    ("", "no `groups`"),
    ("groups: {1: {1: {peer: 'a:1', api: 'a:2'}}}\ndefault_group: 1", "no group 0 (the meta group)"),
    ("groups: {0: {1: {peer: 'a:1'}}}", "each member needs `peer: HOST:PORT` and `api: HOST:PORT`"),
    ("groups: {0: {1: {peer: 'a:1', api: 'a:2'}}}", "the shard map names group"),
    ("groups: {0: {}}", "group 0 needs members numbered from 1"),
    ("groups: [", "while parsing"),
])
def test_a_bad_cluster_file_is_refused_by_name(tmp_path, text, error):
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    with pytest.raises(DeployError, match=f"^{path}: .*") as refused:
        load_cluster_file(path)
    assert error in str(refused.value)


# --- DNS SRV ------------------------------------------------------------------


def test_srv_discovery_numbers_members_in_the_natural_order_of_their_names():
    members = [(f"tessera-g{{}}-{ordinal}.svc.test", 2380, 2390) for ordinal in (10, 2, 0, 1)]
    groups = {group: [(target.format(group), peer, api) for target, peer, api in members] for group in range(4)}
    with SrvServer(srv_records("svc.test", groups)) as server:
        shape = discover_srv("svc.test", nameserver=server.address, size=4)
        check_shape(shape, "svc.test")
    assert {member: addresses.peer for member, addresses in shape.members(1).items()} == {
        1: "tessera-g1-0.svc.test:2380", 2: "tessera-g1-1.svc.test:2380",
        3: "tessera-g1-2.svc.test:2380", 4: "tessera-g1-10.svc.test:2380"}
    assert shape.members(1)[4].api == "tessera-g1-10.svc.test:2390"
    assert shape.prefixes == INITIAL_PREFIXES and sorted(shape.groups) == [0, 1, 2, 3]  # tessera up's
    # tessera up's shard map names groups 2 and 3: a cluster of groups 0 and 1 lacks them.
    with SrvServer(srv_records("svc.test", groups)) as server:
        with pytest.raises(DeployError, match="the shard map names group 2"):
            check_shape(discover_srv("svc.test", groups=(0, 1), nameserver=server.address, size=4), "svc.test")
        # Three members are what a group is founded with by default: four records are refused.
        with pytest.raises(DeployError, match=r"^tessera-g1\.svc\.test: 4 members in DNS .*not the 3 the group is "
                                              r"founded with \(--discovery-size\)"):
            discover_srv("svc.test", groups=(1,), nameserver=server.address)


def test_srv_discovery_refuses_missing_or_mismatched_records():
    with SrvServer(srv_records("svc.test", {0: [("a.svc.test", 1, 2)]})) as server:
        with pytest.raises(DeployError, match=r"^DNS SRV _peer\._tcp\.tessera-g1\.svc\.test: .*does not exist"):
            discover_srv("svc.test", groups=(0, 1), nameserver=server.address, size=1)
    records = srv_records("svc.test", {0: [("a.svc.test", 1, 2)]})
    records["_api._tcp.tessera-g0.svc.test"] = [("b.svc.test", 2)]
    with SrvServer(records) as server:
        with pytest.raises(DeployError, match="are not the same hosts"):
            discover_srv("svc.test", groups=(0,), nameserver=server.address, size=1)


# --- config files and the commands' answers to what they lack -------------------------------


def test_config_file_holds_flags_by_their_long_names(tmp_path):
    path = tmp_path / "replica.yaml"
    path.write_text("group: 1\nmember: 2\njoin: true\nread-only: false\ncluster: /etc/tessera/cluster.yaml\n")
    assert config_file_arguments(path) == ["--group", "1", "--member", "2", "--join",
                                           "--cluster", "/etc/tessera/cluster.yaml"]
    path.write_text("members: {1: x}\n")
    with pytest.raises(DeployError, match="members: a flag's value is one word"):
        config_file_arguments(path)


@pytest.mark.parametrize("argv, error", [
    (["replica", "--group", "1", "--member", "1"],
     "give the group's initial members: --members, --cluster or --discovery-srv (one)"),
    (["replica", "--group", "0", "--cluster", "CLUSTER"], "give --member, or --advertise-peer"),
    (["replica", "--group", "0", "--cluster", "CLUSTER", "--advertise-peer", "host-c:2380"],
     "no member of group 0 has peer address host-c:2380 (they have host-a:2380, host-b:2380)"),
    (["replica", "--group", "0", "--cluster", "CLUSTER", "--member", "3"],
     "member 3 is not among group 0's members ([1, 2])"),
    (["replica", "--group", "5", "--cluster", "CLUSTER", "--member", "1"], "the cluster has no group 5"),
    (["router", "--listen", "127.0.0.1:0"], "give the meta group (--meta) or the cluster"),
    (["router", "--cluster", "CLUSTER", "--discovery-srv", "x.test"], "give --cluster or --discovery-srv"),
])
def test_commands_say_what_they_lack(tmp_path, capsys, argv, error):
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(CLUSTER_YAML)
    assert cli.main([str(cluster) if word == "CLUSTER" else word for word in argv]) == 2
    assert error in capsys.readouterr().err


# --- a cluster founded from SRV records ------------------------------------------------


def listening_addresses(pid: int) -> set[str]:
    """HOST:PORT of each IPv4 TCP socket process `pid` listens on (from /proc)."""
    inodes = {os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] for fd in os.listdir(f"/proc/{pid}/fd")
              if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:[")}
    found = set()
    for line in open("/proc/net/tcp").readlines()[1:]:
        fields = line.split()
        address, state, inode = fields[1], fields[3], fields[9]
        if state == "0A" and inode in inodes:  # 0A: LISTEN
            host, port = address.split(":")
            found.add(f"{socket.inet_ntoa(bytes.fromhex(host)[::-1])}:{int(port, 16)}")
    return found


def etcdctl_binary():
    try:
        return etcd_tools.etcdctl_path()
    except ToolUnavailable as reason:
        pytest.skip(str(reason))


@contextlib.contextmanager
def processes_serving(tmp_path, commands: list[list[str]], endpoint: str):
    """`tessera` commands (replicas and a router) started as processes, once etcdctl's puts go through
    `endpoint`; the processes, each SIGKILLed after. Each logs to tmp_path/process-N.log."""
    etcdctl = etcdctl_binary()
    processes = []
    try:
        for index, command in enumerate(commands):
            with open(tmp_path / f"process-{index}.log", "wb") as log:
                processes.append(subprocess.Popen([sys.executable, "-m", "tessera.cli", *command,
                                                   "--parent-pid", str(os.getpid())],
                                                  stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        while (answer := etcd_tools.run_etcdctl(etcdctl, endpoint, "put", "/registry/pods/p", "v"))[0] != 0:
            assert time.monotonic() < deadline, (answer, (tmp_path / "process-0.log").read_text()[-2000:])
            assert all(process.poll() is None for process in processes), "a process exited"
            time.sleep(0.2)
        yield processes
    finally:
        for process in processes:
            process.send_signal(signal.SIGKILL)
            process.wait()


def test_replicas_and_router_found_a_cluster_from_srv_records(tmp_path):
    """One replica per group (tessera up's groups) and a router, each told only the domain; the router,
    started first, waits for the meta group and founds the cluster, etcdctl uses it. Replica 0 takes its
    flags from a config file, and binds to other addresses than it is known by (127.0.0.1, not localhost)."""
    etcdctl = etcdctl_binary()
    ports = iter(free_ports(2 * 4 + 1))
    groups = {group: [("localhost", next(ports), next(ports))] for group in (0, 1, 2, 3)}
    listen = f"127.0.0.1:{next(ports)}"
    with SrvServer(srv_records("tessera.test", groups)) as server:
        discovery = ["--discovery-srv", "tessera.test", "--discovery-dns", server.address, "--discovery-size", "1"]
        (tmp_path / "replica-0.yaml").write_text(json.dumps({
            "group": 0, "advertise-peer": f"localhost:{groups[0][0][1]}", "data-dir": str(tmp_path / "g0"),
            "wal-segment-bytes": 4 << 20, "discovery-srv": "tessera.test", "discovery-dns": server.address,
            "discovery-size": 1, "listen-peer": f"127.0.0.1:{groups[0][0][1]}",
            "listen-api": f"127.0.0.1:{groups[0][0][2]}"}))
        commands = [["router", "--listen", listen, *discovery],
                    ["replica", "--config", str(tmp_path / "replica-0.yaml")]]
        commands += [["replica", "--group", str(group), "--member", "1", "--data-dir", str(tmp_path / f"g{group}"),
                      "--wal-segment-bytes", str(4 << 20), *discovery]
                     for group in (1, 2, 3)]
        with processes_serving(tmp_path, commands, listen) as processes:
            code, out, _ = etcd_tools.run_etcdctl(etcdctl, listen, "get", "/registry/pods/p", "--print-value-only")
            assert (code, out) == (0, "v\n")
            code, out, _ = etcd_tools.run_etcdctl(etcdctl, listen, "endpoint", "status", "-w", "json")
            assert code == 0 and json.loads(out)[0]["Status"]["header"]["revision"] >= 2
            assert listening_addresses(processes[1].pid) == {f"127.0.0.1:{groups[0][0][1]}",
                                                             f"127.0.0.1:{groups[0][0][2]}"}


def test_a_router_tells_clients_the_address_it_advertises(tmp_path):
    """`advertise-client` (here from the router's config file, as any flag): member list gives clients
    that address instead of the one the router listens on, and names the router by it; etcdctl's
    `endpoint status --cluster`, which dials every member's client URLs, reaches the router there."""
    etcdctl = etcdctl_binary()
    ports = iter(free_ports(2 * 4 + 1))
    cluster = {"groups": {group: {1: {"peer": f"127.0.0.1:{next(ports)}", "api": f"127.0.0.1:{next(ports)}"}}
                          for group in (0, 1, 2, 3)}}
    (tmp_path / "cluster.json").write_text(json.dumps(cluster))
    port = next(ports)
    listen, advertised = f"127.0.0.1:{port}", f"localhost:{port}"
    (tmp_path / "router.yaml").write_text(json.dumps({
        "cluster": str(tmp_path / "cluster.json"), "listen": listen, "advertise-client": advertised}))
    commands = [["router", "--config", str(tmp_path / "router.yaml")]]
    commands += [["replica", "--cluster", str(tmp_path / "cluster.json"), "--group", str(group), "--member", "1",
                  "--data-dir", str(tmp_path / f"g{group}"), "--wal-segment-bytes", str(4 << 20)]
                 for group in (0, 1, 2, 3)]
    with processes_serving(tmp_path, commands, listen):
        code, out, err = etcd_tools.run_etcdctl(etcdctl, listen, "member", "list", "-w", "json")
        assert code == 0, err
        (member,) = json.loads(out)["members"]
        assert member["name"] == f"router-{advertised}"
        assert member["clientURLs"] == member["peerURLs"] == [f"http://{advertised}"]
        code, out, err = etcd_tools.run_etcdctl(etcdctl, listen, "endpoint", "status", "--cluster", "-w", "json")
        assert code == 0, err
        assert [status["Endpoint"] for status in json.loads(out)] == [f"http://{advertised}"]
