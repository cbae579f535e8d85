"""A cluster across hosts on one Linux machine: each process in a network namespace of its own.

`NetnsNetwork` builds the hosts: a bridge in the calling (root) namespace with
the first address of a /24, and per host a namespace whose veth pair hangs on
the bridge, with one address of its own. The root namespace reaches every host
through the bridge, as a client on the same network would. Everything it makes
is named `tsh-TAG-...` (TAG random per network) and removed by `remove()`,
which tolerates a half-built network, so a failed start leaves nothing behind.
The bridge's alias names the process that made it: a process killed before
it could remove its network (SIGKILL, a CI timeout) leaves it to the next
network made on the machine, which removes it (`remove_abandoned_networks`).

Faults live in the network itself, as they would between machines:
partitions and one-way loss are nftables rules in the sending host's
namespace (a table of our own, `inet tsh_faults`), latency and loss rates are
`tc netem` on its interface where the kernel has netem (`netem_available()`;
where not, latency cannot be made in the network and callers say so).

`NetnsLauncher` is `tessera up`'s launcher with each replica and the router
started, in its host's namespace, by the per-host commands of docs/deploy.md:
`tessera replica --cluster cluster.yaml --group G --member M ...` and
`tessera router --cluster cluster.yaml --listen ...`, the router founding the
cluster from the file. Processes are still its children, so tests and the
chaos harness kill, pause and restart them by PID as on 127.0.0.1.

Needs root, `ip` (iproute2) and, for faults, `nft` (nftables): `unavailable()`
says what is missing, for a test to skip with that reason.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tessera.deploy import API_PORT, CLIENT_PORT, METRICS_PORT, PEER_PORT  # every host has an address of its own
from tessera.launcher import (
    DEFAULT_GROUP, GROUPS, INITIAL_PREFIXES, LAYOUT_FILE, MEMBERS, META_GROUP, Launcher, Layout, Supervised,
    replica_data_dir,
)

GATEWAY_PORT = 2378
SUBNET_PREFIX = "10.213"  # the third octet is drawn per network, avoiding those in use
CLUSTER_FILE = "cluster.yaml"
FAULT_TABLE = "tsh_faults"
MAKER_ALIAS = "tessera netns, made by pid "
COMMAND_SECONDS = 10.0


class NetnsError(Exception):
    """A network command failed; the message has the command and what it printed."""


@functools.cache
def unavailable() -> str | None:
    """Why namespaces cannot be made here (None when they can): tried once, with one made and removed,
    since root in a container may still lack the right to make them."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "no `ip` command (Debian package iproute2)"
    probe = f"tsh-probe-{os.getpid()}"
    made = run("ip", "netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    run("ip", "netns", "del", probe, check=False)
    return None


def faults_unavailable() -> str | None:
    """Why faults cannot be put in the network here (None when they can)."""
    return unavailable() or (None if shutil.which("nft") else "no `nft` command (Debian package nftables)")


def run(*command: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=COMMAND_SECONDS)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(command)}: {done.stderr.strip() or done.stdout.strip()}")
    return done


def _subnet_free(prefix: str) -> bool:
    return f" {prefix}." not in run("ip", "-4", "-o", "addr").stdout and prefix not in run("ip", "-4", "route").stdout


class NetnsNetwork:
    """Hosts on one bridge: `add_host(name)` gives each a namespace and an address."""

    def __init__(self):
        self.tag = secrets.token_hex(2)
        self.bridge = f"tsh-{self.tag}-br"
        for _ in range(16):
            prefix = f"{SUBNET_PREFIX}.{secrets.randbelow(254) + 1}"
            if _subnet_free(prefix):
                break
        else:
            raise NetnsError(f"no free /24 under {SUBNET_PREFIX}.0.0/16")
        self.subnet = ipaddress.ip_network(f"{prefix}.0/24")
        self.gateway_address = str(self.subnet.network_address + 1)  # the bridge's, in the root namespace
        self.hosts: dict[str, tuple[str, str]] = {}  # host name -> (namespace, address)
        self._bridge_ports: list[str] = []  # the veths' ends on the bridge
        self._rules: dict[str, list[str]] = {}  # namespace -> nftables rules in force
        self._created_bridge = False

    def create(self) -> None:
        remove_abandoned_networks()
        run("ip", "link", "add", self.bridge, "type", "bridge")
        self._created_bridge = True
        run("ip", "link", "set", self.bridge, "alias", f"{MAKER_ALIAS}{os.getpid()}")
        run("ip", "addr", "add", f"{self.gateway_address}/{self.subnet.prefixlen}", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")

    def add_host(self, name: str) -> str:
        """A namespace with one address on the bridge; returns the address."""
        index = len(self.hosts) + 10
        namespace = f"tsh-{self.tag}-{name}"
        address = str(self.subnet.network_address + index)
        outside, inside = f"tsh{self.tag}o{index}", f"tsh{self.tag}i{index}"
        run("ip", "netns", "add", namespace)
        self.hosts[name] = (namespace, address)  # from now on remove() deletes it
        run("ip", "link", "add", outside, "type", "veth", "peer", "name", inside)
        self._bridge_ports.append(outside)
        run("ip", "link", "set", inside, "netns", namespace)
        run("ip", "link", "set", outside, "master", self.bridge, "up")
        for command in (["link", "set", "lo", "up"], ["link", "set", inside, "name", "eth0"],
                        ["addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0"],
                        ["link", "set", "eth0", "up"]):
            run("ip", "-n", namespace, *command)
        return address

    def namespace(self, name: str) -> str:
        return self.hosts[name][0]

    def address(self, name: str) -> str:
        return self.hosts[name][1]

    def remove(self) -> None:
        """Delete every veth, namespace and the bridge; whatever exists of them.

        A namespace's veth would go with it, but only once the kernel gets round to it:
        deleted here, it is gone when this returns.
        """
        for port in self._bridge_ports:
            run("ip", "link", "del", port, check=False)
        self._bridge_ports.clear()
        for namespace, _ in self.hosts.values():
            run("ip", "netns", "del", namespace, check=False)
        self.hosts.clear()
        if self._created_bridge:
            run("ip", "link", "del", self.bridge, check=False)
            self._created_bridge = False

    def in_namespace(self, name: str, command: Sequence[str]) -> list[str]:
        """`command` run inside host `name`'s namespace (ip netns exec execs it: same PID)."""
        return ["ip", "netns", "exec", self.namespace(name), *command]

    # --- faults -------------------------------------------------------------------

    def drop(self, sender: str, receiver: str, percent: int = 100) -> None:
        """Packets from host `sender` to host `receiver` are lost (all, or `percent` of them at random)."""
        match = f"ip daddr {self.address(receiver)}"
        rule = f"{match} drop" if percent >= 100 else f"{match} numgen random mod 100 < {percent} drop"
        namespace = self.namespace(sender)
        self._rules.setdefault(namespace, []).append(rule)
        self._load_rules(namespace)

    def partition(self, host: str, others: Sequence[str]) -> None:
        """Cut `host` off from `others`, both ways."""
        for other in others:
            self.drop(host, other)
            self.drop(other, host)

    def heal(self) -> None:
        """Every nftables fault rule and netem qdisc removed."""
        for namespace in list(self._rules):
            self._rules.pop(namespace)
            run("ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", FAULT_TABLE, check=False)
        for namespace, _ in self.hosts.values():
            run("ip", "-n", namespace, "qdisc", "del", "dev", "eth0", "root", check=False)

    def _load_rules(self, namespace: str) -> None:
        rules = "\n".join(f"    {rule}" for rule in self._rules[namespace])
        # The table is made, flushed and filled in one transaction: no moment without the old rules.
        script = (f"table inet {FAULT_TABLE} {{}}\nflush table inet {FAULT_TABLE}\n"
                  f"table inet {FAULT_TABLE} {{\n  chain output {{\n"
                  f"    type filter hook output priority 0; policy accept;\n{rules}\n  }}\n}}\n")
        run("ip", "netns", "exec", namespace, "nft", "-f", "-", stdin=script)

    def netem(self, host: str, delay_ms: float = 0.0, loss_percent: float = 0.0) -> None:
        """Delay (and lose) every packet host `host` sends, with tc netem."""
        run("ip", "-n", self.namespace(host), "qdisc", "replace", "dev", "eth0", "root", "netem",
            "delay", f"{delay_ms}ms", "loss", f"{loss_percent}%")

    def netem_available(self) -> bool:
        """Whether this kernel has the netem qdisc (tried on the bridge's first host)."""
        host = next(iter(self.hosts))
        try:
            self.netem(host)
        except NetnsError:
            return False
        run("ip", "-n", self.namespace(host), "qdisc", "del", "dev", "eth0", "root", check=False)
        return True


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's: alive
    return True


def remove_abandoned_networks() -> list[str]:
    """Remove every network whose maker has died without removing it; their tags."""
    removed = []
    for link in json.loads(run("ip", "-j", "link", "show", "type", "bridge").stdout or "[]"):
        name, alias = link["ifname"], link.get("ifalias", "")
        if not (name.startswith("tsh-") and alias.startswith(MAKER_ALIAS)):
            continue
        if _alive(int(alias.removeprefix(MAKER_ALIAS))):
            continue
        tag = name.split("-")[1]
        for line in run("ip", "netns", "list").stdout.splitlines():
            if line.startswith(f"tsh-{tag}-"):
                run("ip", "netns", "del", line.split()[0], check=False)
        for port in json.loads(run("ip", "-j", "link", "show", "master", name).stdout or "[]"):
            run("ip", "link", "del", port["ifname"], check=False)
        run("ip", "link", "del", name, check=False)
        removed.append(tag)
    return removed


def replica_host(group: int, member: int) -> str:
    return f"g{group}m{member}"


ROUTER_HOST = "router"


class NetnsLauncher(Launcher):
    """`tessera up`'s groups and router, each process on a host (namespace) of its own."""

    def __init__(self, data_dir: str | Path, *, groups: Sequence[int] = GROUPS, members: Sequence[int] = MEMBERS,
                 **options):
        super().__init__(data_dir, **options)
        self.network = NetnsNetwork()
        self.member_ids = {group: tuple(members) for group in groups}
        self.cluster_path = self.data_dir / CLUSTER_FILE

    async def start(self) -> None:
        try:
            self.network.create()
            for group, members in self.member_ids.items():
                for member in members:
                    self.network.add_host(replica_host(group, member))
            self.network.add_host(ROUTER_HOST)
            await super().start()
        except BaseException:
            self.network.remove()
            raise

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            self.network.remove()

    def _load_or_create_layout(self) -> Layout:
        """Addresses on the hosts; the cluster file every host is given (docs/deploy.md)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        address = self.network.address
        groups = {group: {member: (f"{address(replica_host(group, member))}:{PEER_PORT}",
                                   f"{address(replica_host(group, member))}:{API_PORT}") for member in members}
                  for group, members in self.member_ids.items()}
        metrics = {group: {member: f"{address(replica_host(group, member))}:{METRICS_PORT}" for member in members}
                   for group, members in self.member_ids.items()}
        layout = Layout(groups=groups, prefixes=dict(INITIAL_PREFIXES), default_group=DEFAULT_GROUP,
                        listen=f"{address(ROUTER_HOST)}:{CLIENT_PORT}", metrics=metrics,
                        gateway=f"{address(ROUTER_HOST)}:{GATEWAY_PORT}")
        layout.save(self.data_dir / LAYOUT_FILE)
        self.cluster_path.write_text(cluster_file_text(layout))
        return layout

    async def _wait_until_ports_free(self) -> None:
        """New namespaces: nothing listens in them yet."""

    async def _bootstrap_meta(self) -> None:
        """The router founds the cluster from the cluster file, as on real hosts."""

    def _replica_process(self, group: int, member: int) -> Supervised:
        command = [sys.executable, "-m", "tessera.cli", "replica", "--cluster", str(self.cluster_path),
                   "--group", str(group), "--member", str(member),
                   "--data-dir", str(replica_data_dir(self.data_dir, group, member)),
                   "--metrics-listen", self.layout.metrics_address(group, member),
                   "--parent-pid", str(os.getpid()), *self.replica_arguments]
        return Supervised(name=f"group {group} member {member}",
                          command=self.network.in_namespace(replica_host(group, member), command),
                          log_path=self.logs_dir / f"group-{group}-member-{member}.log")

    def _router_process(self, index: int) -> Supervised:
        if index != 0:
            raise NetnsError("one router per network: a second would be a host of its own")
        command = [sys.executable, "-m", "tessera.cli", "router", "--cluster", str(self.cluster_path),
                   "--listen", self.layout.listen, "--gateway-listen", self.layout.gateway,
                   "--parent-pid", str(os.getpid()), *self.router_arguments]
        return Supervised(name="router", command=self.network.in_namespace(ROUTER_HOST, command),
                          log_path=self.logs_dir / "router.log")


def cluster_file_text(layout: Layout) -> str:
    """The cluster file (tessera/deploy.py) of a layout, in YAML, as an operator would write it."""
    lines = ["# Every group's initial members and the initial shard map: the same file on every host.",
             "groups:"]
    for group, members in sorted(layout.groups.items()):
        comment = "  # the meta group" if group == META_GROUP else ""
        lines.append(f"  {group}:{comment}")
        for member, (peer, api) in sorted(members.items()):
            lines.append(f"    {member}: {{peer: {peer}, api: {api}}}")
    lines.append("prefixes:")
    for prefix, group in sorted(layout.prefixes.items()):
        lines.append(f"  {prefix.decode()}: {group}")
    lines.append(f"default_group: {layout.default_group}")
    return "\n".join(lines) + "\n"
