"""The `tessera` command."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import os
import platform
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Callable

import grpc

import tessera
from tessera import event_loop, logs
from tessera.api.errors import EtcdError
from tessera.api.rpc_pb2 import AlarmType
from tessera.api.tls import TLSFiles, tls_files
from native import codec, crc, walframe
from shards.mvcc import BATCH_INTERVAL_SECONDS, StoreInvariantError
from shards.raft_driver import BATCH_WINDOW_MS, MemberAddresses, ReplicaStateError
from shards.replica import ReplicaConfig, run_until_stopped
from shards.wal import WalCorruptionError
from tessera.progress import Progress, size_text
from tessera.certs import KeyPair, make_local_certificates
from tessera.launcher import (
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
    GROUPS,
    LAYOUT_FILE,
    MEMBERS,
    META_GROUP,
    Launcher,
    LauncherError,
    Layout,
    replica_data_dir,
)

PR_SET_PDEATHSIG = 1  # linux/prctl.h
# The MEMBER column of member list and status: ids of `member add --meta` have up to 10 digits.
MEMBER_WIDTH = 12
BOOTSTRAP_RETRY_SECONDS = 1.0  # a router waiting for the meta group's hosts to come up
CERTIFICATES_DIR = "certs"  # under the data dir: what `tessera up --tls` makes
GC_YOUNG_THRESHOLD = 50_000  # allocations between collections of the youngest generation (Python's: 700)


def build_info() -> dict[str, str]:
    """What this installation runs on: versions and the compiled hot path's choices."""
    return {
        "tessera": tessera.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "crc32c kernel": crc.KERNEL,
        "native modules": ", ".join(module.__name__ for module in (crc, codec, walframe)),
    }


def command_version(_: argparse.Namespace) -> int:
    for name, value in build_info().items():
        print(f"{name}: {value}")
    return 0


def up_router_arguments(args: argparse.Namespace) -> list[str]:
    """What `tessera up` hands its routers of its own command line."""
    router_arguments = ["--auth-token", args.auth_token, "--auth-token-ttl", str(args.auth_token_ttl)]
    if args.auto_compaction_mode:
        router_arguments += ["--auto-compaction-mode", args.auto_compaction_mode,
                             "--auto-compaction-retention", args.auto_compaction_retention]
    return router_arguments


def command_up(args: argparse.Namespace) -> int:
    try:
        client_tls, peer_tls, client_certificate = up_tls(args)
        launcher = Launcher(args.data_dir, listen=args.listen, wal_segment_bytes=args.wal_segment_bytes,
                            router_arguments=up_router_arguments(args), routers=args.routers,
                            client_tls=client_tls, peer_tls=peer_tls)
        return asyncio.run(serve_up(launcher, client_certificate))
    except (LauncherError, ValueError) as error:
        print(f"tessera up: {error}", file=sys.stderr)
        return 1


def up_tls(args: argparse.Namespace) -> tuple[TLSFiles | None, TLSFiles | None, KeyPair | None]:
    """The client port's and the peers' TLS for `tessera up`, and the client certificate to tell
    the user of: with --tls, certificates made under the data dir (kept across restarts), client
    and peer certificates required; else what the flags say."""
    if not args.tls:
        return client_tls_files(args), peer_tls_files(args), None
    if any((args.cert_file, args.key_file, args.trusted_ca_file, args.peer_cert_file, args.peer_key_file,
            args.peer_trusted_ca_file)):
        raise ValueError("--tls makes its own certificates: it does not go with the --cert-file, --key-file "
                         "or --trusted-ca-file flags, nor their --peer- twins")
    certificates = make_local_certificates(Path(args.data_dir).resolve() / CERTIFICATES_DIR)
    ca = str(certificates.ca.cert_file)
    server, peer = certificates.server, certificates.peer
    return (TLSFiles(str(server.cert_file), str(server.key_file), ca, True),
            TLSFiles(str(peer.cert_file), str(peer.key_file), ca, True), certificates.client)


async def serve_up(launcher: Launcher, client_certificate: KeyPair | None = None) -> int:
    """Start the cluster, keep it supervised until SIGINT, SIGTERM or SIGHUP, then stop it."""
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, stopping.set)
    starting = loop.create_task(launcher.start())
    stop_requested = loop.create_task(stopping.wait())
    try:
        # A signal during the start stops it too, rather than after the start's deadline.
        done, _ = await asyncio.wait([starting, stop_requested], return_when=asyncio.FIRST_COMPLETED)
        if starting in done:
            starting.result()  # a failed start raises here
            print_cluster(launcher, client_certificate)
            await stop_requested
        print("tessera up: stopping", flush=True)
    finally:
        for task in (starting, stop_requested):
            task.cancel()
        await asyncio.gather(starting, stop_requested, return_exceptions=True)
        await launcher.stop()
    return 0


def etcdctl_flags(launcher: Launcher, client_certificate: KeyPair | None) -> str:
    """What etcdctl needs to reach the router: the endpoint, and with TLS the CA and a client
    certificate."""
    tls = launcher.client_tls
    if tls is None:
        return f"--endpoints={launcher.layout.listen}"
    flags = f"--endpoints=https://{launcher.layout.listen}"
    if tls.trusted_ca_file:
        flags += f" --cacert {tls.trusted_ca_file}"
    if client_certificate is not None:
        flags += f" --cert {client_certificate.cert_file} --key {client_certificate.key_file}"
    elif tls.requires_client_certificate:
        flags += " --cert CLIENT.crt --key CLIENT.key"
    return flags


def print_cluster(launcher: Launcher, client_certificate: KeyPair | None = None) -> None:
    layout = launcher.layout
    shard_map = [
        f"{prefix.decode(errors='backslashreplace')} -> group {group}"
        for prefix, group in sorted(layout.prefixes.items())
    ]
    shard_map.append(f"every other key -> group {layout.default_group}")
    replicas = sum(len(members) for members in layout.groups.values())
    print(f"tessera up: {len(layout.groups)} raft groups ({replicas} replicas; "
          f"group {META_GROUP} is the meta group) and {launcher.router_count} router"
          f"{'s' if launcher.router_count > 1 else ''}")
    print(f"  endpoint   etcdctl {etcdctl_flags(launcher, client_certificate)} put greeting hello")
    print("  shard map  " + "\n             ".join(shard_map))
    first = layout.metrics_address(META_GROUP, min(layout.groups[META_GROUP]))
    print(f"  metrics    http://{first}/metrics and /health (group {META_GROUP}); every replica serves "
          f"its own, addresses in {launcher.layout_path}")
    if launcher.client_tls is None:
        print(f"  gateway    curl -d '{{\"key\": \"Zm9v\"}}' http://{layout.listen}/v3/kv/range  (etcd's JSON API, "
              "/metrics, /health and /version on the same port, as etcd)")
    else:
        print(f"  gateway    https://{layout.listen}/v3/kv/range  (etcd's JSON API, /metrics, /health and "
              "/version on the same port, over TLS with the same certificates)")
    print(f"  data dir   {launcher.data_dir} (logs in {launcher.logs_dir})")
    print("Ctrl-C stops the cluster.", flush=True)


def parse_members(text: str):
    """`1=PEER/API,2=PEER/API,...` -> {member id: MemberAddresses}."""
    members = {}
    for item in text.split(","):
        member, _, addresses = item.partition("=")
        peer, _, api = addresses.partition("/")
        if not member.isdigit() or not peer or not api:
            raise argparse.ArgumentTypeError(f"{item!r} is not MEMBER_ID=PEER_ADDRESS/API_ADDRESS")
        members[int(member)] = MemberAddresses(peer=peer, api=api)
    return members


def parse_meta(text: str) -> dict[int, str]:
    """`1=API,2=API,...` -> the meta group's API addresses by member id."""
    addresses = {}
    for item in text.split(","):
        member, _, api = item.partition("=")
        if not member.isdigit() or not api:
            raise argparse.ArgumentTypeError(f"{item!r} is not MEMBER_ID=API_ADDRESS")
        addresses[int(member)] = api
    return addresses


def command_replica(args: argparse.Namespace) -> int:
    from tessera.deploy import DeployError

    try:
        members, member = replica_members(args)
    except DeployError as error:
        print(f"tessera replica: {error}", file=sys.stderr)
        return 2
    try:
        peer_tls = peer_tls_files(args)
        if peer_tls is not None:  # files that do not load are refused before anything starts
            peer_tls.server_context()
            peer_tls.client_context()
    except (ValueError, OSError) as error:
        print(f"tessera replica: {error}", file=sys.stderr)
        return 2
    logs.configure("replica", group=args.group, member=member)
    config = ReplicaConfig(
        group_id=args.group, member_id=member, members=members, listen_peer=args.listen_peer,
        listen_api=args.listen_api,
        data_dir=Path(args.data_dir or replica_data_dir(Path(DEFAULT_DATA_DIR), args.group, member)),
        heartbeat_interval_ms=args.heartbeat_interval, election_timeout_ms=args.election_timeout,
        quota_backend_bytes=args.quota_backend_bytes, snapshot_count=args.snapshot_count,
        snapshot_catchup_entries=args.snapshot_catchup_entries, join=args.join,
        max_raft_message_bytes=args.max_raft_message_bytes,
        max_inflight_messages=args.max_inflight_messages, batch_window_ms=args.batch_window,
        watch_progress_notify_interval_seconds=args.watch_progress_notify_interval,
        wal_segment_bytes=args.wal_segment_bytes, metrics_listen=args.metrics_listen,
        lease_checkpoint_interval_seconds=args.lease_checkpoint_interval,
        backend_batch_interval_seconds=args.backend_batch_interval / 1000,
        backend_batch_limit_entries=args.backend_batch_limit,
        peer_tls=peer_tls,
    )
    stop_with_parent(args.parent_pid)
    collect_garbage_rarely()
    try:
        event_loop.run(run_replica(config))
    except KeyboardInterrupt:
        pass
    except (WalCorruptionError, ReplicaStateError, StoreInvariantError) as error:
        # Refuse to start rather than guess: the operator must look at the named file.
        print(f"tessera replica: {error}", file=sys.stderr)
        return 1
    return 0


def cluster_shape(args: argparse.Namespace, groups=GROUPS):
    """The cluster at its founding, from --cluster or --discovery-srv; None when neither is given.

    `groups`: those to look up in DNS (a replica needs its own only); with all of them the
    shape is checked as a whole, as a founding needs it.
    """
    from tessera import deploy

    if args.cluster and args.discovery_srv:
        raise deploy.DeployError("give --cluster or --discovery-srv, not both")
    if args.cluster:
        return deploy.load_cluster_file(args.cluster)
    if args.discovery_srv:
        shape = deploy.discover_srv(args.discovery_srv, groups, args.discovery_dns, args.discovery_size)
        if set(groups) == set(args.discovery_groups):
            deploy.check_shape(shape, f"DNS SRV under {args.discovery_srv}")
        return shape
    return None


def replica_members(args: argparse.Namespace):
    """(the group's initial members, this replica's id) from --members, --cluster or --discovery-srv."""
    from tessera.deploy import DeployError, member_at

    shape = cluster_shape(args, groups=(args.group,))
    if (shape is None) == (args.members is None):
        raise DeployError("give the group's initial members: --members, --cluster or --discovery-srv (one)")
    members = args.members if shape is None else shape.members(args.group)
    member = args.member
    if member is None:
        if args.advertise_peer is None:
            raise DeployError("give --member, or --advertise-peer to find it among the members")
        member = member_at(members, args.group, args.advertise_peer)
    if member not in members:
        raise DeployError(f"member {member} is not among group {args.group}'s members ({sorted(members)})")
    return members, member


async def run_replica(config: ReplicaConfig) -> None:
    """Run until stopped; SIGTERM (how the launcher stops replicas) closes the WAL and store as Ctrl-C does."""
    main_task = asyncio.current_task()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        await run_until_stopped(config)
    except asyncio.CancelledError:
        pass


def collect_garbage_rarely() -> None:
    """For a server process: its requests allocate short-lived objects, almost none in cycles.

    What the process has loaded is left out of collections, and the youngest generation
    is collected every GC_YOUNG_THRESHOLD allocations instead of Python's 700: collections
    took a sixth of a busy replica's time, and as much of the router's.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def stop_with_parent(parent_pid: int | None) -> None:
    """Have the kernel send SIGTERM when the parent (a launcher, a test) dies, even by SIGKILL."""
    if parent_pid is None:
        return
    if platform.system() == "Linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        raise SystemExit(f"tessera: the parent process {parent_pid} is gone (or is not this one's parent)")


def auth_token_option(text: str) -> str:
    """--auth-token, checked as the command line is read: its keys are read, its form parsed."""
    from router.auth import token_provider

    try:
        token_provider(text)
    except (ValueError, OSError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def command_router(args: argparse.Namespace) -> int:
    # Imported here: the router is its own part, and `tessera version` must work without it.
    from router.server import serve
    from tessera.deploy import DeployError

    try:
        shape = cluster_shape(args, groups=args.discovery_groups)
    except DeployError as error:
        print(f"tessera router: {error}", file=sys.stderr)
        return 2
    if (shape is None) == (args.meta is None):
        print("tessera router: give the meta group (--meta) or the cluster (--cluster or --discovery-srv)",
              file=sys.stderr)
        return 2
    stop_with_parent(args.parent_pid)
    logs.configure("router", listen=args.listen)
    collect_garbage_rarely()
    try:
        if shape is not None:
            # A router told the whole cluster founds it, once: every router may try, the first one writes.
            asyncio.run(bootstrap_when_reachable(shape))
            meta = {member: addresses.api for member, addresses in shape.members(META_GROUP).items()}
        else:
            meta = args.meta
        auto_compaction = None
        if args.auto_compaction_mode:
            auto_compaction = (args.auto_compaction_mode,
                               compaction_retention(args.auto_compaction_mode, args.auto_compaction_retention))
        client_tls, peer_tls = client_tls_files(args), peer_tls_files(args)
        # files that do not load are refused before anything starts
        if client_tls is not None:
            client_tls.server_context()
        if peer_tls is not None:
            peer_tls.client_context()
        event_loop.run(serve(
            args.listen, meta, name=args.name, advertise_client=args.advertise_client,
            gateway_listen=args.gateway_listen,
            auto_compaction=auto_compaction, corruption_check_interval=args.corruption_check_interval,
            read_only=args.read_only, reuse_port=args.reuse_port, auth_token=args.auth_token,
            auth_token_ttl=args.auth_token_ttl, client_tls=client_tls, peer_tls=peer_tls))
    except KeyboardInterrupt:
        pass
    except (ValueError, OSError) as error:  # TLS flags that do not go together, or files that do not load
        print(f"tessera router: {error}", file=sys.stderr)
        return 1
    return 0


async def bootstrap_when_reachable(shape) -> None:
    """Write the cluster's records into the meta group once it has a leader, however long its hosts take."""
    import logging

    from router.meta import bootstrap_cluster

    while True:
        try:
            await bootstrap_cluster(shape.layout_groups(), shape.prefixes, shape.default_group)
            return
        except (EtcdError, OSError) as error:
            logging.getLogger("tessera.router").info("waiting for the meta group to bootstrap the cluster: %s",
                                                     error)
            await asyncio.sleep(BOOTSTRAP_RETRY_SECONDS)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="a YAML file of this command's flags (long names as keys), as etcd's "
                             "--config-file; flags given here win")


def add_shape_arguments(parser: argparse.ArgumentParser) -> None:
    """Where a process placed by hand learns the cluster's initial shape (tessera/deploy.py)."""
    parser.add_argument("--cluster", default=None, metavar="FILE",
                        help="the cluster file, the same on every host: every group's members and the "
                             "shard map (JSON or YAML; tessera up's cluster.json is one)")
    parser.add_argument("--discovery-srv", default=None, metavar="DOMAIN",
                        help="instead of --cluster: DNS SRV records _peer._tcp.tessera-gG.DOMAIN and "
                             "_api._tcp.tessera-gG.DOMAIN name group G's members, as etcd's discovery")
    parser.add_argument("--discovery-groups", type=parse_groups, default=GROUPS, metavar="G,G,...",
                        help="the groups to look up with --discovery-srv (default tessera up's: "
                             f"{','.join(map(str, GROUPS))})")
    parser.add_argument("--discovery-size", type=int, default=len(MEMBERS), metavar="N",
                        help="the members each group is founded with: fewer SRV records are refused "
                             "(default %(default)s, as tessera up)")
    parser.add_argument("--discovery-dns", default=None, metavar="HOST:PORT",
                        help="ask this DNS server for the SRV records (default: the system's resolver)")


def parse_groups(text: str) -> tuple[int, ...]:
    if not all(part.isdigit() for part in text.split(",")):
        raise argparse.ArgumentTypeError(f"{text!r} is not a list of group ids G,G,...")
    return tuple(int(part) for part in text.split(","))


def non_negative(what: str) -> Callable[[str], float]:
    """An argparse type: a finite number, 0 or more; `what` says in its error what was expected."""
    def parse(text: str) -> float:
        try:
            number = float(text)
        except ValueError:
            number = -1.0
        if not number >= 0 or number == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return number
    return parse


parse_rate = non_negative("a rate in MB/s (0 or more; 0: no limit)")


def with_config_file(argv: list[str]) -> list[str]:
    """The command line with a --config file's flags put right after the command, so its own flags win."""
    from tessera.deploy import DeployError, config_file_arguments

    for index, word in enumerate(argv):
        if word == "--config" and index + 1 < len(argv):
            path = argv[index + 1]
        elif word.startswith("--config="):
            path = word.partition("=")[2]
        else:
            continue
        try:
            return [argv[0], *config_file_arguments(path), *argv[1:]]
        except DeployError as error:
            raise SystemExit(f"tessera {argv[0]}: {error}") from None
    return argv


def add_client_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """etcd's client TLS flags, for the router's client port."""
    parser.add_argument("--cert-file", default=None, help="the client port's TLS certificate (PEM); serves TLS")
    parser.add_argument("--key-file", default=None, help="the key of --cert-file (PEM)")
    parser.add_argument("--trusted-ca-file", default=None,
                        help="CA of the client certificates; with it every client must present one")
    parser.add_argument("--client-cert-auth", action="store_true",
                        help="require a client certificate signed by --trusted-ca-file")


def add_peer_tls_arguments(parser: argparse.ArgumentParser) -> None:
    """etcd's peer TLS flags: among replicas, and from routers to replicas."""
    parser.add_argument("--peer-cert-file", default=None, help="TLS certificate (PEM) among replicas and routers")
    parser.add_argument("--peer-key-file", default=None, help="the key of --peer-cert-file (PEM)")
    parser.add_argument("--peer-trusted-ca-file", default=None,
                        help="CA of the peers' certificates; with it every peer must present one")
    parser.add_argument("--peer-client-cert-auth", action="store_true",
                        help="require a peer certificate signed by --peer-trusted-ca-file")


def peer_tls_files(args: argparse.Namespace) -> TLSFiles | None:
    """The peer TLS settings; ValueError when the flags do not go together."""
    return tls_files(args.peer_cert_file, args.peer_key_file, args.peer_trusted_ca_file,
                     args.peer_client_cert_auth, flag_prefix="--peer-")


def client_tls_files(args: argparse.Namespace) -> TLSFiles | None:
    """The client port's TLS settings; ValueError when the flags do not go together."""
    return tls_files(args.cert_file, args.key_file, args.trusted_ca_file, args.client_cert_auth)


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """How an operator command finds the cluster: the data dir of `tessera up`, or the meta group."""
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="the data dir of `tessera up` (default ./%(default)s)")
    parser.add_argument("--meta", type=parse_meta, default=None,
                        help="instead of --data-dir: the meta group's replicas, ID=API_ADDRESS,...")
    add_peer_tls_arguments(parser)


def add_auth_token_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--auth-token", type=auth_token_option, default="simple",
                        help="etcd's --auth-token: simple (tokens of the router that made them), or "
                             "jwt,priv-key=FILE,pub-key=FILE,sign-method=RS256|ES256|...[,ttl=5m] "
                             "(tokens every router with the same keys takes)")
    parser.add_argument("--auth-token-ttl", type=float, default=300.0,
                        help="seconds a simple auth token lives unused (etcd's --auth-token-ttl)")


def add_auto_compaction_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--auto-compaction-mode", choices=["periodic", "revision"], default=None,
                        help="compact every group by itself, as etcd's option of the same name")
    parser.add_argument("--auto-compaction-retention", default="0",
                        help="revisions to keep (revision mode), or how long (periodic: 30m, 1h; a number is hours)")


def compaction_retention(mode: str, text: str) -> float:
    """etcd's --auto-compaction-retention: revisions in revision mode; in periodic mode a
    duration (e.g. 30m, 1h, 90s), a bare number counting hours."""
    if mode == "revision":
        return float(int(text))
    units = {"s": 1, "m": 60, "h": 3600}
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text) * 3600


def peer_ssl(args: argparse.Namespace) -> ssl.SSLContext | None:
    """TLS to the replicas: the --peer-* flags, or, for the data dir of a `tessera up --tls`,
    the peer certificate it made; None for a plaintext cluster."""
    peer_tls = peer_tls_files(args)
    certificates = Path(args.data_dir) / CERTIFICATES_DIR
    if peer_tls is None and not args.meta and (certificates / "peer.crt").exists():
        peer_tls = TLSFiles(str(certificates / "peer.crt"), str(certificates / "peer.key"),
                            str(certificates / "ca.crt"))
    return peer_tls.client_context() if peer_tls is not None else None


def meta_members(args: argparse.Namespace) -> dict[int, str]:
    """The meta group's API addresses: --meta, or the layout `tessera up` saved in --data-dir."""
    if args.meta:
        return args.meta
    layout_path = Path(args.data_dir) / LAYOUT_FILE
    if not layout_path.exists():
        raise SystemExit(f"tessera: no cluster in {args.data_dir} (give --data-dir or --meta)")
    return {member: api for member, (_, api) in Layout.load(layout_path).groups[META_GROUP].items()}


def command_shards_list(args: argparse.Namespace) -> int:
    from router import admin

    from tessera.api.internal_pb2 import MoveRecord

    state, groups = asyncio.run(admin.describe(meta_members(args), ssl_context=peer_ssl(args)))
    shard_map = state.shard_map
    print("PREFIX / RANGE                          GROUP")
    for start, end, group in shard_map.ranges:
        print(f"{_show_range(start, end):40} {group}")
    print(f"{'(every other key)':40} {shard_map.default_group}")
    print()
    print("GROUP  LEADER  MEMBERS  HEALTH     KEYS        IN USE")
    for group_state in groups:
        health = "healthy" if group_state.healthy else f"unhealthy: {group_state.error}"
        keys = "-" if group_state.keys is None else group_state.keys
        in_use = size_text(group_state.bytes_in_use) if group_state.healthy else "-"
        print(f"{group_state.group:<6} {group_state.leader or '-':<7} {group_state.members:<8} {health:10} "
              f"{keys:<11} {in_use}")
    if state.moves:
        print()
        print("MOVING                                   FROM  TO    PHASE     SINCE")
        for move in state.moves:
            print(f"{_show_range(move.start, move.end):40} {move.source:<5} {move.target:<5} "
                  f"{MoveRecord.Phase.Name(move.phase):9} {time.ctime(move.started_unix_seconds)}")
    return 0


def _show_range(start: bytes, end: bytes) -> str:
    from router.shard_map import prefix_end

    if end == prefix_end(start):
        return start.decode(errors="backslashreplace")
    return f"[{start!r}, {end!r})"


def command_status(args: argparse.Namespace) -> int:
    """Every replica: role, term, indexes, revision, db size, and how far it trails its leader."""
    from router import admin

    rows = asyncio.run(admin.replica_statuses(meta_members(args), ssl_context=peer_ssl(args)))
    leaders_commit = {group: status.commit_index for group, member, status in rows
                      if not isinstance(status, str) and status.leader_id == member}
    print(f"{'GROUP':<6}{'MEMBER':<{MEMBER_WIDTH}}{'ROLE':<9}{'TERM':>5}{'COMMIT':>9}{'APPLIED':>9}{'LAG':>6}"
          f"{'REVISION':>10}{'DB SIZE':>10}{'IN USE':>10}  ALARMS")
    for group, member, status in rows:
        if isinstance(status, str):
            print(f"{group:<6}{member:<{MEMBER_WIDTH}}{status}")
            continue
        role = "leader" if status.leader_id == member else "follower" if status.leader_id else "no leader"
        lag = leaders_commit.get(group, status.commit_index) - status.applied_index
        alarms = ", ".join(AlarmType.Name(alarm.alarm) for alarm in status.alarms) or "-"
        print(f"{group:<6}{member:<{MEMBER_WIDTH}}{role:<9}{status.term:>5}{status.commit_index:>9}"
              f"{status.applied_index:>9}{max(lag, 0):>6}{status.revision:>10}{size_text(status.db_size):>10}"
              f"{size_text(status.db_size_in_use):>10}"
              f"  {alarms}")
    return 0


def command_leader_transfer(args: argparse.Namespace) -> int:
    from router import admin

    try:
        moved = asyncio.run(admin.transfer_leadership(meta_members(args), args.group, args.member,
                                                      ssl_context=peer_ssl(args)))
    except (admin.OperatorError, EtcdError) as failure:
        return _operator_failure("leader transfer", failure)
    print(f"group {args.group}: member {args.member} leads" + ("" if moved else " (it did already)"))
    return 0


def command_shards_move(args: argparse.Namespace) -> int:
    from router import moves
    from router.shard_map import ShardMapError

    def progress(line: str) -> None:
        print(line, flush=True)

    try:
        if args.recover:
            outcomes = asyncio.run(moves.recover(meta_members(args), progress))
            if not outcomes:
                print("no move in progress")
            return 0
        if args.prefix is None or args.group is None:
            print("tessera shards move: give PREFIX and GROUP, or --recover", file=sys.stderr)
            return 2
        outcome = asyncio.run(moves.move(meta_members(args), args.prefix.encode(), args.group, progress,
                                         max_rate=args.max_rate * 1e6))
    except (moves.MoveError, ShardMapError, EtcdError) as failure:
        return _operator_failure("shards move", failure)
    print(f"{args.prefix} -> group {outcome.target}: {outcome.keys} keys ({size_text(outcome.bytes)}) moved "
          f"from group {outcome.source}; copied in {outcome.copy_seconds:.1f} s, writes paused "
          f"{outcome.fence_seconds:.3f} s")
    return 0


def command_shards_split(args: argparse.Namespace) -> int:
    """Cut a group's range at KEY: the keys from KEY up move to --to, or to a new group."""
    from router import admin, moves
    from router.shard_map import ShardMapError

    def progress(line: str) -> None:
        print(line, flush=True)

    key = args.key.encode()
    try:
        target = args.to
        if target is None:
            if args.meta:
                print("tessera shards split: without --to the keys go to a new group, which needs the data dir "
                      "of a running `tessera up`; elsewhere start a group and give --to", file=sys.stderr)
                return 2
            _local_launcher(args, "shards split")
            asyncio.run(moves.check_split(meta_members(args), args.group, key))  # before a group is made for it
            target = _add_group(args, None)
        outcome = asyncio.run(moves.split(meta_members(args), args.group, key, target, progress,
                                          max_rate=args.max_rate * 1e6))
    except (moves.MoveError, ShardMapError, admin.OperatorError, EtcdError) as failure:
        return _operator_failure("shards split", failure)
    print(f"{_show_range(outcome.start, outcome.end)} -> group {outcome.target}: {outcome.keys} keys "
          f"({size_text(outcome.bytes)}) moved from group {outcome.source}; copied in {outcome.copy_seconds:.1f} s, "
          f"writes paused {outcome.fence_seconds:.3f} s")
    return 0


def command_group_add(args: argparse.Namespace) -> int:
    from router import admin

    if args.meta:
        print("tessera group add: a new group's replicas are started by a running `tessera up`, so give its "
              "--data-dir, not --meta", file=sys.stderr)
        return 2
    _local_launcher(args, "group add")
    try:
        group = _add_group(args, args.group)
    except (admin.OperatorError, EtcdError) as failure:
        return _operator_failure("group add", failure)
    print(f"move keys to it with `tessera shards move PREFIX {group}` or `tessera shards split GROUP KEY --to {group}`")
    return 0


def _add_group(args: argparse.Namespace, group: int | None) -> int:
    """Found a group in the local launcher's cluster (tessera/groups.py); say what was done."""
    from tessera import groups

    group, members, leader = groups.add_group(args.data_dir, group, ssl_context=peer_ssl(args))
    listed = ", ".join(f"member {m.id} (peer {m.peer_address}, API {m.api_address})" for m in members)
    print(f"group {group} added: {listed}; member {leader} leads", flush=True)
    return group


def command_shards_assign(args: argparse.Namespace) -> int:
    from router import admin
    from router.shard_map import ShardMapError

    try:
        shard_map = asyncio.run(admin.assign(meta_members(args), args.prefix.encode(), args.group,
                                             ssl_context=peer_ssl(args)))
    except ShardMapError as refused:
        print(f"tessera shards assign: {refused}", file=sys.stderr)
        return 1
    print(f"{args.prefix} -> group {args.group}; the map now has {len(shard_map.ranges)} prefixes")
    return 0


# --- snapshot save, status, restore (tessera/snapshot.py) ----------------------------


def command_snapshot_save(args: argparse.Namespace) -> int:
    from tessera import snapshot

    endpoint = args.endpoints.removeprefix("http://")
    credentials = None
    try:
        if endpoint.startswith("https://") or args.cacert or args.cert:
            endpoint = endpoint.removeprefix("https://")
            credentials = grpc.ssl_channel_credentials(*(Path(name).read_bytes() if name else None
                                                         for name in (args.cacert, args.key, args.cert)))
        with Progress() as progress:
            summary = snapshot.save(args.file, endpoint, progress, credentials)
    except (snapshot.SnapshotError, OSError) as failure:
        print(f"tessera snapshot save: {failure}", file=sys.stderr)
        return 1
    print(f"Snapshot saved at {args.file} ({summary})")
    return 0


def command_snapshot_status(args: argparse.Namespace) -> int:
    from tessera import snapshot

    try:
        with Progress() as progress:
            summary = snapshot.status(Path(args.file), progress)
    except (snapshot.SnapshotError, OSError) as failure:
        print(f"tessera snapshot status: {failure}", file=sys.stderr)
        return 1
    print(f"{args.file}: {summary}; checksum verified")
    return 0


def command_snapshot_restore(args: argparse.Namespace) -> int:
    from tessera import snapshot

    try:
        with Progress() as progress:
            summary = snapshot.restore(args.file, args.data_dir, args.listen, progress)
    except (snapshot.SnapshotError, OSError) as failure:
        print(f"tessera snapshot restore: {failure}", file=sys.stderr)
        return 1
    print(f"Restored {args.file} into {args.data_dir} ({summary}); start it with: "
          f"tessera up --data-dir {args.data_dir}")
    return 0


def add_snapshot_commands(commands) -> None:
    snapshot = commands.add_parser("snapshot", help="the whole cluster at one revision: save it to a file, "
                                                     "check a file, restore one into a new cluster")
    snapshot_commands = snapshot.add_subparsers(dest="snapshot_command", required=True)
    save = snapshot_commands.add_parser("save", help="save every group at one revision into FILE "
                                                     "(the history before it is not kept)")
    save.add_argument("file")
    save.add_argument("--endpoints", default=DEFAULT_LISTEN,
                      help="one router's etcd endpoint HOST:PORT, https://HOST:PORT for TLS (default %(default)s)")
    # etcdctl's names for a TLS client's files
    save.add_argument("--cacert", default=None, help="verify the router's certificate with this CA (PEM)")
    save.add_argument("--cert", default=None, help="the client certificate (PEM), where the router requires one")
    save.add_argument("--key", default=None, help="the key of --cert (PEM)")
    save.set_defaults(run=command_snapshot_save)
    status = snapshot_commands.add_parser("status", help="check FILE's checksum and structure; what it holds")
    status.add_argument("file")
    status.set_defaults(run=command_snapshot_status)
    restore = snapshot_commands.add_parser(
        "restore", help="make a new cluster's data dir from FILE (Tessera's snapshot, or one etcd "
                   "wrote); then start it with tessera up --data-dir")
    restore.add_argument("file")
    restore.add_argument("--data-dir", required=True, help="the new cluster's data dir (must not exist or be empty)")
    restore.add_argument("--listen", default=DEFAULT_LISTEN,
                         help="the new cluster's router endpoint HOST:PORT (default %(default)s; port 0 picks "
                              "a free one)")
    restore.set_defaults(run=command_snapshot_restore)


def _operator_failure(command: str, failure: Exception) -> int:
    print(f"tessera {command}: {getattr(failure, 'message', failure)}", file=sys.stderr)
    return 1


def _local_launcher(args: argparse.Namespace, command: str) -> bool:
    """Whether the cluster is a local launcher's (--data-dir, not --meta); one that runs new
    replicas must be running."""
    from tessera.launcher import launcher_running

    if args.meta:
        return False
    meta_members(args)  # a data dir with no cluster is refused here
    if not launcher_running(args.data_dir):
        raise SystemExit(f"tessera {command}: no `tessera up` runs on {args.data_dir}; start it first "
                         f"(it runs the new replica)")
    return True


def command_member_list(args: argparse.Namespace) -> int:
    from router import admin

    try:
        groups = asyncio.run(admin.list_members(meta_members(args), args.group, ssl_context=peer_ssl(args)))
    except (admin.OperatorError, EtcdError) as failure:
        return _operator_failure("member list", failure)
    print(f"{'GROUP':<6}{'MEMBER':<{MEMBER_WIDTH}}{'ROLE':<9}{'PEER ADDRESS':<22}{'API ADDRESS':<22}ROUTED")
    for state in groups:
        if state.error:
            print(f"{state.group:<6}{'-':<{MEMBER_WIDTH}}{state.error}")
        for member in state.members:
            role = "learner" if member.is_learner else "leader" if member.id == state.leader else "voter"
            routed = "yes" if member.id in state.recorded else "no"
            print(f"{state.group:<6}{member.id:<{MEMBER_WIDTH}}{role:<9}{member.peer_address:<22}"
                  f"{member.api_address:<22}{routed}")
    return 0


def command_member_add(args: argparse.Namespace) -> int:
    """Add a learner; with a local launcher, start it and (unless --learner) promote it once caught up."""
    from router import admin

    local = _local_launcher(args, "member add")
    try:
        if local:
            member = _add_local_replica(args, args.group, args.peer, args.api)
            if not args.learner:
                _promote(args, args.group, member)
            return 0
        member = _add_remote_replica(args, "start it, then promote it")
    except (admin.OperatorError, EtcdError) as failure:
        return _operator_failure("member add", failure)
    print(f"  tessera member promote {args.group} {member} --meta ...")
    return 0


def _add_remote_replica(args: argparse.Namespace, then: str) -> int:
    """Add a learner at --peer and --api, and print the command that starts it on its host."""
    from router import admin

    if not (args.peer and args.api):
        raise admin.OperatorError("with --meta, give the new replica's --peer and --api addresses")
    member, members = asyncio.run(admin.add_member(meta_members(args), args.group, args.peer, args.api,
                                                   ssl_context=peer_ssl(args)))
    everyone = ",".join(f"{m.id}={m.peer_address}/{m.api_address}" for m in members)
    print(f"group {args.group}: member {member.id} added as a learner; {then}:\n"
          f"  tessera replica --group {args.group} --member {member.id} --join --members {everyone} "
          f"--data-dir DIR", flush=True)
    return member.id


def _add_local_replica(args: argparse.Namespace, group: int, peer: str | None, api: str | None) -> int:
    """Add a learner at these addresses (free ports if not given) and have the launcher run it."""
    from router import admin
    from tessera.launcher import LAYOUT_FILE, change_layout, unused_member_id

    if not (peer and api):
        free = Layout.load(Path(args.data_dir) / LAYOUT_FILE).free_addresses(2)
        peer, api = peer or free[0], api or free[1]
    member, _ = asyncio.run(admin.add_member(meta_members(args), group, peer, api,
                                             member_id=unused_member_id(args.data_dir, group),
                                             ssl_context=peer_ssl(args)))
    change_layout(args.data_dir, lambda layout: layout.add_member(group, member.id, peer, api))
    print(f"group {group}: member {member.id} added as a learner (peer {peer}, API {api}); the launcher starts it",
          flush=True)
    return member.id


def _promote(args: argparse.Namespace, group: int, member: int) -> None:
    from router import admin

    with Progress() as progress:
        def show(applied: int, commit: int) -> None:
            progress.show(f"group {group} member {member} catching up: applied {applied} of {commit}")

        asyncio.run(admin.promote_member(meta_members(args), group, member, show, ssl_context=peer_ssl(args)))
    print(f"group {group}: member {member} caught up and promoted to voter", flush=True)


def command_member_promote(args: argparse.Namespace) -> int:
    from router import admin

    try:
        _promote(args, args.group, args.member)
    except (admin.OperatorError, EtcdError) as failure:
        return _operator_failure("member promote", failure)
    return 0


def command_member_remove(args: argparse.Namespace) -> int:
    from router import admin

    try:
        _remove(args, args.group, args.member)
    except (admin.OperatorError, EtcdError) as failure:
        return _operator_failure("member remove", failure)
    return 0


def _remove(args: argparse.Namespace, group: int, member: int) -> None:
    """Remove from the group; with a local launcher, also from the layout, which stops the replica."""
    from router import admin
    from tessera.launcher import change_layout

    leader = asyncio.run(admin.remove_member(meta_members(args), group, member, ssl_context=peer_ssl(args)))
    print(f"group {group}: member {member} removed (member {leader} leads)", flush=True)
    if not args.meta:
        def drop(layout: Layout) -> None:
            if member in layout.groups.get(group, {}):
                layout.remove_member(group, member)

        change_layout(args.data_dir, drop)
        print(f"group {group}: member {member} stopped; its data stays in "
              f"{replica_data_dir(Path(args.data_dir), group, member)}", flush=True)


def command_member_move(args: argparse.Namespace) -> int:
    """A replica to new addresses: a new member there joins as a learner, catches up and is
    promoted, then the old one is removed. The learner does not vote until it has caught up, so
    the group never has fewer voters up than before, whether the old member is up (a planned
    move) or lost (its host gone). With a local launcher the launcher starts the new replica;
    with --meta the operator does, on its host, by the command printed, while this waits."""
    from router import admin
    from tessera.api.errors import MemberNotFound

    local = _local_launcher(args, "member move")
    replacement = None
    try:
        found = asyncio.run(admin.list_members(meta_members(args), args.group, ssl_context=peer_ssl(args)))[0]
        if found.error:
            raise admin.OperatorError(f"group {args.group}: {found.error}")
        if args.member not in {member.id for member in found.members}:
            raise MemberNotFound()
        if local:
            replacement = _add_local_replica(args, args.group, args.peer, args.api)
        else:
            replacement = _add_remote_replica(args, "start it there; it is promoted once it has caught up")
        _promote(args, args.group, replacement)
        _remove(args, args.group, args.member)
    except (admin.OperatorError, EtcdError) as failure:
        code = _operator_failure("member move", failure)
        if replacement is not None:
            print(f"tessera member move: member {replacement} is in group {args.group} (tessera member list); to "
                  f"finish: tessera member promote {args.group} {replacement} if it is still a learner, then "
                  f"tessera member remove {args.group} {args.member}", file=sys.stderr)
        return code
    print(f"group {args.group}: member {args.member} moved to member {replacement}")
    return 0


def command_defrag(args: argparse.Namespace) -> int:
    """Every replica of every group, one at a time, with progress."""
    from router import admin

    async def run() -> tuple[int, int, int]:
        failed, before, after = 0, 0, 0
        with Progress() as progress:
            async for step in admin.defragment(meta_members(args), ssl_context=peer_ssl(args)):
                name = f"[{step.position}/{step.total}] group {step.group} member {step.member}"
                if not step.done:
                    progress.show(f"{name}: defragmenting {size_text(step.before_bytes)}")
                    continue
                progress.clear()
                if step.error:
                    failed += 1
                    print(f"{name}: failed: {step.error}", flush=True)
                    continue
                before, after = before + step.before_bytes, after + step.after_bytes
                print(f"{name}: {size_text(step.before_bytes)} -> {size_text(step.after_bytes)}", flush=True)
        return failed, before, after

    try:
        failed, before, after = asyncio.run(run())
    except (admin.OperatorError, EtcdError) as failure:
        return _operator_failure("defrag", failure)
    print(f"defragmented: {size_text(before)} -> {size_text(after)}"
          + (f"; {failed} replicas failed" if failed else ""))
    return 1 if failed else 0


def command_alarm(args: argparse.Namespace) -> int:
    from router import admin

    run = admin.list_alarms if args.alarm_command == "list" else admin.disarm_alarms
    try:
        alarms = asyncio.run(run(meta_members(args), ssl_context=peer_ssl(args)))
    except (admin.OperatorError, EtcdError) as failure:
        return _operator_failure(f"alarm {args.alarm_command}", failure)
    for group, alarm in alarms:
        print(f"memberID:{alarm.memberID} alarm:{AlarmType.Name(alarm.alarm)} (group {group})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("replica", "router"):
        argv = with_config_file(argv)
    args = parser.parse_args(argv)
    return args.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description=tessera.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print version and native build info").set_defaults(
        run=command_version
    )
    up = commands.add_parser("up", help="start a local cluster and router on 127.0.0.1")
    up.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                    help="layout, data and logs; a second run resumes from it (default ./%(default)s)")
    up.add_argument("--listen", default=None,
                    help=f"the router's etcd endpoint HOST:PORT (default {DEFAULT_LISTEN}, or the one saved "
                         "in the data dir; port 0 picks a free one at first start)")
    up.add_argument("--wal-segment-bytes", type=int, default=None,
                    help="each replica's WAL segment size (default the replica's: etcd's 64 MB, "
                         "preallocated, 768 MB for the 12 replicas)")
    up.add_argument("--routers", type=int, default=1,
                    help="router processes sharing the client port (SO_REUSEPORT): one per core to spare")
    add_auto_compaction_arguments(up)
    add_auth_token_arguments(up)
    up.add_argument("--tls", action="store_true",
                    help="make a local CA and certificates under DATA_DIR/certs and serve TLS everywhere, "
                         "client certificates required; prints the etcdctl flags to use")
    add_client_tls_arguments(up)
    add_peer_tls_arguments(up)
    up.set_defaults(run=command_up)
    replica = commands.add_parser("replica", help="run one replica of one raft group")
    add_config_argument(replica)
    replica.add_argument("--group", type=int, required=True, help="the group's id")
    replica.add_argument("--member", type=int, default=None,
                         help="this replica's member id (or give --advertise-peer)")
    replica.add_argument("--advertise-peer", default=None, metavar="HOST:PORT",
                         help="instead of --member: this replica's peer address among the group's members")
    replica.add_argument("--data-dir", default=None,
                         help=f"WAL and MVCC store; reused on restart (default "
                              f"{replica_data_dir(Path(DEFAULT_DATA_DIR), 'GROUP', 'MEMBER')}, as tessera up)")
    replica.add_argument("--members", type=parse_members, default=None,
                         help="initial membership: ID=PEER_ADDRESS/API_ADDRESS,... (this member included)")
    add_shape_arguments(replica)
    replica.add_argument("--listen-peer", default=None, metavar="HOST:PORT",
                         help="bind raft traffic here (default: its address among the members), e.g. 0.0.0.0:PORT")
    replica.add_argument("--listen-api", default=None, metavar="HOST:PORT",
                         help="bind the internal API here (default: its address among the members)")
    replica.add_argument("--heartbeat-interval", type=int, default=100, help="milliseconds (etcd's default)")
    replica.add_argument("--election-timeout", type=int, default=1000, help="milliseconds (etcd's default)")
    replica.add_argument("--quota-backend-bytes", type=int, default=2 * 1024**3)
    replica.add_argument("--snapshot-count", type=int, default=100_000,
                         help="applied entries between snapshots (etcd's default)")
    replica.add_argument("--snapshot-catchup-entries", type=int, default=5000,
                         help="entries kept after a snapshot for slow followers (etcd keeps 5000)")
    replica.add_argument("--max-raft-message-bytes", type=int, default=1 << 20,
                         help="entries per append message (etcd's MaxSizePerMsg)")
    replica.add_argument("--max-inflight-messages", type=int, default=512,
                         help="unacknowledged appends per follower (etcd's MaxInflightMsgs)")
    replica.add_argument("--batch-window", type=non_negative("a time in milliseconds (0 or more; 0: never)"),
                         default=BATCH_WINDOW_MS, metavar="MILLISECONDS",
                         help="under load, how long a leader holds a short batch of writes for more (0: never)")
    replica.add_argument("--watch-progress-notify-interval", type=float, default=600.0,
                         help="seconds between progress notifications to watches that ask (etcd: 10m)")
    replica.add_argument("--wal-segment-bytes", type=int, default=64 * 1024 * 1024,
                         help="size of each preallocated WAL segment file (etcd's 64 MB)")
    replica.add_argument("--backend-batch-interval", type=int, default=int(BATCH_INTERVAL_SECONDS * 1000),
                         help="milliseconds at most between the store's durable points (etcd commits its "
                              "backend every 100; here the WAL, not the store, makes writes durable)")
    replica.add_argument("--backend-batch-limit", type=int, default=10_000,
                         help="applied entries at most between the store's durable points (etcd's default)")
    replica.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                         help="serve Prometheus /metrics (etcd's metric names) and etcd's /health here "
                              "(default: not served)")
    replica.add_argument("--lease-checkpoint-interval", type=float, default=300.0,
                         help="the meta group's: seconds between records of leases' remaining TTLs "
                              "(etcd's 5 minutes)")
    replica.add_argument("--join", action="store_true",
                         help="join a running group (after a member add) instead of founding one")
    add_peer_tls_arguments(replica)
    replica.add_argument("--parent-pid", type=int, default=None,
                         help="stop when this process is gone (test clusters stop themselves)")
    replica.set_defaults(run=command_replica)
    router = commands.add_parser("router", help="serve etcd's v3 API in front of the cluster's groups")
    add_config_argument(router)
    router.add_argument("--listen", default=DEFAULT_LISTEN, help="HOST:PORT of the etcd endpoint (default %(default)s)")
    router.add_argument("--meta", type=parse_meta, default=None,
                        help="the meta group's replicas: ID=API_ADDRESS,... (or give the cluster: the "
                             "router then also founds it)")
    add_shape_arguments(router)
    router.add_argument("--advertise-client", type=parse_address, default=None, metavar="HOST:PORT",
                        help="the address clients are told to reach this router at (etcd's "
                             "--advertise-client-urls; member list gives it): where --listen is 0.0.0.0, "
                             "or behind a NAT or a DNS name (default --listen)")
    router.add_argument("--name", default=None,
                        help="this router's name, unique in the cluster (default router-ADVERTISE-CLIENT)")
    router.add_argument("--reuse-port", action="store_true",
                        help="share --listen with other router processes (SO_REUSEPORT)")
    router.add_argument("--gateway-listen", default=None,
                        help="HOST:PORT for etcd's HTTP/JSON gateway (/v3/...), /metrics and /health, "
                             "besides the client port, which serves them too")
    add_auto_compaction_arguments(router)
    add_client_tls_arguments(router)
    add_peer_tls_arguments(router)
    router.add_argument("--read-only", action="store_true",
                        help="a proxy beside clients: serve reads and watches, refuse writes and leases")
    add_auth_token_arguments(router)
    router.add_argument("--corruption-check-interval", type=float, default=300.0,
                        help="seconds between comparisons of each group's replicas (HashKV); also at start")
    router.add_argument("--parent-pid", type=int, default=None,
                        help="stop when this process is gone (the launcher's routers stop themselves)")
    router.set_defaults(run=command_router)
    status = commands.add_parser("status", help="every replica of every group: role, indexes, lag, size")
    add_cluster_arguments(status)
    status.set_defaults(run=command_status)
    leader = commands.add_parser("leader", help="leadership of a group")
    leader_commands = leader.add_subparsers(dest="leader_command", required=True)
    transfer = leader_commands.add_parser("transfer", help="hand a group's leadership to one of its members")
    transfer.add_argument("group", type=int)
    transfer.add_argument("member", type=int)
    add_cluster_arguments(transfer)
    transfer.set_defaults(run=command_leader_transfer)
    shards = commands.add_parser("shards", help="the shard map: list it, assign an empty prefix to a group, "
                                                "move a prefix and its keys, split a group's range")
    shard_commands = shards.add_subparsers(dest="shards_command", required=True)
    for name, help_text, run in (
        ("list", "the map, each group's leader, health, keys and bytes, and moves in progress",
         command_shards_list),
        ("assign", "give an empty key prefix to a data group", command_shards_assign),
        ("move", "move a key prefix and its keys to another data group, online", command_shards_move),
        ("split", "cut a group's range at KEY: the keys from KEY up move to another group, online",
         command_shards_split),
    ):
        command = shard_commands.add_parser(name, help=help_text)
        if name == "assign":
            command.add_argument("prefix", help="the key prefix, e.g. /registry/leases/")
            command.add_argument("group", type=int, help="the data group that will own it")
        if name == "move":
            command.add_argument("prefix", nargs="?", help="the key prefix, e.g. /registry/leases/")
            command.add_argument("group", nargs="?", type=int, help="the data group that will own it")
            command.add_argument("--recover", action="store_true",
                                 help="finish or undo every move whose mover is gone, instead")
        if name == "split":
            command.add_argument("group", type=int, help="the data group whose range is cut")
            command.add_argument("key", help="the first key that moves: the range holding it moves from here up")
            command.add_argument("--to", type=int, default=None,
                                 help="the data group that takes those keys (default: a new group, as "
                                      "`tessera group add` adds)")
        if name in ("move", "split"):
            command.add_argument("--max-rate", type=parse_rate, default=0.0, metavar="MB_PER_SECOND",
                                 help="copy at most this many megabytes of keys and values a second, to leave "
                                      "the groups' hosts room for their clients (default: 0, as fast as it goes)")
        add_cluster_arguments(command)
        command.set_defaults(run=run)
    add_operator_commands(commands)
    add_snapshot_commands(commands)
    from tessera.chaos import command as chaos_command  # the chaos harness: its own part, loaded for its options
    chaos = commands.add_parser("chaos", help="a recorded workload under injected faults, then checkers "
                                              "(linearizability, watch, durability, revisions)")
    chaos_command.add_arguments(chaos)
    chaos.set_defaults(run=chaos_command.run_from_arguments)
    return parser


def add_operator_commands(commands) -> None:
    """`tessera member ...`, `tessera defrag`, `tessera alarm list|disarm`."""
    member = commands.add_parser("member", help="the replicas of a group: list, add, promote, remove, move")
    member_commands = member.add_subparsers(dest="member_command", required=True)
    listing = member_commands.add_parser("list", help="each group's members: role, addresses, routed or not")
    listing.add_argument("group", type=int, nargs="?", default=None, help="only this group")
    listing.set_defaults(run=command_member_list)
    add = member_commands.add_parser(
        "add", help="a new replica joins a group as a learner, catches up and is promoted")
    add.add_argument("group", type=int)
    add.add_argument("--learner", action="store_true", help="leave it a learner (promote it later)")
    add.set_defaults(run=command_member_add)
    move = member_commands.add_parser(
        "move", help="a replica to new addresses: a new one joins and is promoted, then the old one goes")
    move.add_argument("group", type=int)
    move.add_argument("member", type=int)
    move.set_defaults(run=command_member_move)
    for command in (add, move):
        command.add_argument("--peer", type=parse_address, default=None,
                             help="HOST:PORT for raft traffic (needed with --meta; with tessera up, "
                                  "a free port on 127.0.0.1 if not given)")
        command.add_argument("--api", type=parse_address, default=None,
                             help="HOST:PORT of its internal API (needed with --meta; with tessera up, "
                                  "a free port on 127.0.0.1 if not given)")
    promote = member_commands.add_parser("promote", help="a learner becomes a voter once it has caught up")
    promote.set_defaults(run=command_member_promote)
    remove = member_commands.add_parser(
        "remove", help="a member leaves its group (a leader hands over first; quorum is kept)")
    remove.set_defaults(run=command_member_remove)
    for command in (promote, remove):
        command.add_argument("group", type=int)
        command.add_argument("member", type=int)
    for command in (listing, add, move, promote, remove):
        add_cluster_arguments(command)
    group = commands.add_parser("group", help="the cluster's raft groups: add one")
    group_commands = group.add_subparsers(dest="group_command", required=True)
    group_add = group_commands.add_parser(
        "add", help="a new group of three replicas joins the running `tessera up` cluster, holding no keys")
    group_add.add_argument("group", type=int, nargs="?", default=None, help="its id (default: the next free one)")
    add_cluster_arguments(group_add)
    group_add.set_defaults(run=command_group_add)
    defrag = commands.add_parser("defrag", help="defragment every replica of every group, one at a time")
    add_cluster_arguments(defrag)
    defrag.set_defaults(run=command_defrag)
    alarm = commands.add_parser("alarm", help="the alarms of every group: list, disarm")
    alarm_commands = alarm.add_subparsers(dest="alarm_command", required=True)
    for name, help_text in (("list", "every active alarm"), ("disarm", "deactivate every active alarm")):
        command = alarm_commands.add_parser(name, help=help_text)
        add_cluster_arguments(command)
        command.set_defaults(run=command_alarm)


def parse_address(text: str) -> str:
    """HOST:PORT, as the replicas listen."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return text


if __name__ == "__main__":
    sys.exit(main())
