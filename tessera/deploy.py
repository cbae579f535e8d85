"""Processes an operator places by hand: what a replica or router on some host is told.

`tessera up` keeps a whole cluster on one host. Across hosts, each process is
started by itself (docs/deploy.md), and needs to know the cluster's initial
shape: every group's members with their peer and internal API addresses,
and the initial shard map. It learns it the way an etcd member learns
`--initial-cluster`, from one of:

  * a cluster file (`--cluster FILE`), the same on every host: JSON or YAML
    with `tessera up`'s own layout keys, so `tessera-data/cluster.json` is one:

        groups:                      # group -> member -> addresses
          0: {1: {peer: host-a:7001, api: host-a:7002}, 2: ..., 3: ...}
          1: ...
        prefixes: {/registry/pods/: 2, /registry/events/: 3}   # optional: tessera up's map
        default_group: 1                                        # optional: tessera up's

  * DNS SRV records (`--discovery-srv DOMAIN`), as etcd's discovery: group G's
    members are the targets of `_peer._tcp.tessera-gG.DOMAIN` (raft) and
    `_api._tcp.tessera-gG.DOMAIN` (internal API), which is what a Kubernetes
    headless service `tessera-gG` with ports named `peer` and `api` publishes.
    A group's members are numbered 1..N in the natural order of their target
    names (StatefulSet pod `tessera-g1-0` is member 1), so every host that
    reads the same records numbers them alike. The groups are `tessera up`'s
    (--discovery-groups to change), and so are the shard map and the three
    members a group is founded with (--discovery-size): fewer records (a member
    not yet scheduled) are refused rather than founding a smaller group.

The cluster's shape matters only at its founding: afterwards membership lives
in each group's raft log and the meta group, and changes with `tessera member`.

A config file (`--config FILE`, YAML) holds a command's flags, as etcd's
--config-file does: keys are the flags' long names, values their values
(`true` for a flag without one). Flags on the command line win.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from shards.raft_driver import MemberAddresses
from tessera.launcher import DEFAULT_GROUP, GROUPS, INITIAL_PREFIXES, MEMBERS

# The ports of a host that runs one replica (and of a router's): etcd's where etcd has one.
PEER_PORT = 2380
API_PORT = 2390
METRICS_PORT = 2381  # etcd's --listen-metrics-urls port
CLIENT_PORT = 2379
PEER_SERVICE = "_peer._tcp"
API_SERVICE = "_api._tcp"
DNS_TIMEOUT_SECONDS = 5.0


class DeployError(Exception):
    """The cluster's shape cannot be known from what was given; the message says what is wrong."""


@dataclass
class ClusterShape:
    """A cluster at its founding: every group's members, and the initial shard map."""

    groups: dict[int, dict[int, MemberAddresses]]
    prefixes: dict[bytes, int] = field(default_factory=lambda: dict(INITIAL_PREFIXES))
    default_group: int = DEFAULT_GROUP

    def members(self, group: int) -> dict[int, MemberAddresses]:
        if group not in self.groups:
            raise DeployError(f"the cluster has no group {group} (it has {sorted(self.groups)})")
        return self.groups[group]

    def layout_groups(self) -> dict[int, dict[int, tuple[str, str]]]:
        """As the meta group's bootstrap takes them: group -> member -> (peer, api)."""
        return {group: {member: (addresses.peer, addresses.api) for member, addresses in members.items()}
                for group, members in self.groups.items()}


def member_at(members: dict[int, MemberAddresses], group: int, peer_address: str) -> int:
    """The id of the group's member whose peer address is `peer_address`."""
    for member, addresses in members.items():
        if addresses.peer == peer_address:
            return member
    known = ", ".join(addresses.peer for addresses in members.values())
    raise DeployError(f"no member of group {group} has peer address {peer_address} (they have {known})")


def load_cluster_file(path: str | Path) -> ClusterShape:
    """A cluster file (JSON or YAML, tessera up's layout keys); every error names the file."""
    import yaml  # JSON is YAML, so one parser reads both

    try:
        saved = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DeployError(f"{path}: {error}") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("groups"), dict) or not saved["groups"]:
        raise DeployError(f"{path}: no `groups` (group -> member -> peer and api addresses)")
    try:
        groups = {}
        for group, members in saved["groups"].items():
            groups[int(group)] = {int(member): MemberAddresses(peer=str(addresses["peer"]), api=str(addresses["api"]))
                                  for member, addresses in members.items()}
        shape = ClusterShape(groups=groups)
        if "prefixes" in saved:
            shape.prefixes = {str(prefix).encode(): int(group) for prefix, group in saved["prefixes"].items()}
        if "default_group" in saved:
            shape.default_group = int(saved["default_group"])
    except (AttributeError, KeyError, TypeError, ValueError) as error:
        raise DeployError(f"{path}: not a cluster file ({type(error).__name__}: {error}); each member "
                          "needs `peer: HOST:PORT` and `api: HOST:PORT` under its group") from None
    check_shape(shape, str(path))
    return shape


def check_shape(shape: ClusterShape, source: str) -> None:
    """What a founding needs: the meta group, each group with members, the map naming only data groups."""
    if 0 not in shape.groups:
        raise DeployError(f"{source}: no group 0 (the meta group)")
    for group, members in shape.groups.items():
        if not members or 0 in members:
            raise DeployError(f"{source}: group {group} needs members numbered from 1")
    for group in [shape.default_group, *shape.prefixes.values()]:
        if group == 0 or group not in shape.groups:
            raise DeployError(f"{source}: the shard map names group {group}, which is not a data group of it")


def _natural_key(name: str) -> list:
    """`tessera-g1-10` after `tessera-g1-2`: digits compare as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def discover_srv(domain: str, groups=GROUPS, nameserver: str | None = None,
                 size: int = len(MEMBERS)) -> ClusterShape:
    """The members of `groups` from DNS SRV records under `domain` (the module's docstring says which).

    Each group must list `size` members: a group founded by the members whose records
    happened to be published already would lock the others out. `nameserver`
    (HOST:PORT) asks that server instead of the system's resolver. The shape is not
    checked as a whole: a replica asks for its own group only.
    """
    import dns.exception
    import dns.resolver

    resolver = dns.resolver.Resolver(configure=nameserver is None)
    if nameserver is not None:
        host, _, port = nameserver.rpartition(":")
        resolver.nameservers = [host.strip("[]")]
        resolver.port = int(port)
    resolver.lifetime = DNS_TIMEOUT_SECONDS

    def targets(name: str) -> list[str]:
        try:
            answer = resolver.resolve(name, "SRV")
        except dns.exception.DNSException as error:
            raise DeployError(f"DNS SRV {name}: {error}") from None
        found = sorted((record.target.to_text(omit_final_dot=True), record.port) for record in answer)
        return [f"{target}:{port}" for target, port in sorted(found, key=lambda item: _natural_key(item[0]))]

    shape = ClusterShape(groups={})
    for group in groups:
        service = f"tessera-g{group}.{domain.rstrip('.')}"
        peers, apis = targets(f"{PEER_SERVICE}.{service}"), targets(f"{API_SERVICE}.{service}")
        peer_hosts, api_hosts = [a.rpartition(":")[0] for a in peers], [a.rpartition(":")[0] for a in apis]
        if peer_hosts != api_hosts:
            raise DeployError(f"{service}: the {PEER_SERVICE} targets ({', '.join(peers)}) and the "
                              f"{API_SERVICE} targets ({', '.join(apis)}) are not the same hosts")
        if len(peers) != size:
            raise DeployError(f"{service}: {len(peers)} members in DNS ({', '.join(peers)}), not the "
                              f"{size} the group is founded with (--discovery-size)")
        shape.groups[group] = {member: MemberAddresses(peer=peer, api=api)
                               for member, (peer, api) in enumerate(zip(peers, apis), start=1)}
    return shape


def config_file_arguments(path: str | Path) -> list[str]:
    """A YAML config file's flags as command-line words, to go before the command line's own."""
    import yaml

    try:
        settings = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise DeployError(f"{path}: {error}") from None
    if not isinstance(settings, dict):
        raise DeployError(f"{path}: not a mapping of flag names to values")
    words = []
    for name, value in settings.items():
        flag = f"--{name}"
        if value is True:
            words.append(flag)
        elif value is False or value is None:
            continue
        elif isinstance(value, (dict, list)):
            raise DeployError(f"{path}: {name}: a flag's value is one word (a cluster's members go in a "
                              "cluster file: `cluster: FILE`)")
        else:
            words += [flag, str(value)]
    return words
