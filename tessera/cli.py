"""The `tessera` command."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import platform
import signal
import sys
from pathlib import Path

import tessera
from tessera import logs
from tessera.api.errors import EtcdError
from tessera.api.rpc_pb2 import AlarmType
from native import codec, crc, walframe
from shards.replica import MemberAddresses, ReplicaConfig, ReplicaStateError, run_until_stopped
from shards.wal import WalCorruptionError
from tessera.launcher import (
    DEFAULT_DATA_DIR,
    DEFAULT_LISTEN,
    LAYOUT_FILE,
    META_GROUP,
    Launcher,
    LauncherError,
    Layout,
)

PR_SET_PDEATHSIG = 1  # linux/prctl.h


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


def command_up(args: argparse.Namespace) -> int:
    try:
        router_arguments = []
        if args.auto_compaction_mode:
            router_arguments = ["--auto-compaction-mode", args.auto_compaction_mode,
                                "--auto-compaction-retention", args.auto_compaction_retention]
        launcher = Launcher(args.data_dir, listen=args.listen, wal_segment_bytes=args.wal_segment_bytes,
                            router_arguments=router_arguments)
        return asyncio.run(serve_up(launcher))
    except LauncherError as error:
        print(f"tessera up: {error}", file=sys.stderr)
        return 1


async def serve_up(launcher: Launcher) -> int:
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
            print_cluster(launcher)
            await stop_requested
        print("tessera up: stopping", flush=True)
    finally:
        for task in (starting, stop_requested):
            task.cancel()
        await asyncio.gather(starting, stop_requested, return_exceptions=True)
        await launcher.stop()
    return 0


def print_cluster(launcher: Launcher) -> None:
    layout = launcher.layout
    shard_map = [
        f"{prefix.decode(errors='backslashreplace')} -> group {group}"
        for prefix, group in sorted(layout.prefixes.items())
    ]
    shard_map.append(f"every other key -> group {layout.default_group}")
    replicas = sum(len(members) for members in layout.groups.values())
    print(f"tessera up: {len(layout.groups)} raft groups ({replicas} replicas; "
          f"group {META_GROUP} is the meta group) and a router")
    print(f"  endpoint   etcdctl --endpoints={layout.listen} put greeting hello")
    print("  shard map  " + "\n             ".join(shard_map))
    first = layout.metrics_address(META_GROUP, min(layout.groups[META_GROUP]))
    print(f"  metrics    http://{first}/metrics and /health (group {META_GROUP}); every replica serves "
          f"its own, addresses in {launcher.layout_path}")
    print(f"  gateway    curl -d '{{\"key\": \"Zm9v\"}}' http://{layout.gateway}/v3/kv/range  (etcd's JSON API)")
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
    logs.configure("replica", group=args.group, member=args.member)
    if args.member not in args.members:
        print(f"tessera replica: member {args.member} is not in --members", file=sys.stderr)
        return 2
    config = ReplicaConfig(
        group_id=args.group, member_id=args.member, data_dir=Path(args.data_dir), members=args.members,
        heartbeat_interval_ms=args.heartbeat_interval, election_timeout_ms=args.election_timeout,
        quota_backend_bytes=args.quota_backend_bytes, snapshot_count=args.snapshot_count,
        snapshot_catchup_entries=args.snapshot_catchup_entries, join=args.join,
        max_raft_message_bytes=args.max_raft_message_bytes,
        max_inflight_messages=args.max_inflight_messages,
        watch_progress_notify_interval_seconds=args.watch_progress_notify_interval,
        wal_segment_bytes=args.wal_segment_bytes, metrics_listen=args.metrics_listen,
        lease_checkpoint_interval_seconds=args.lease_checkpoint_interval,
    )
    stop_with_parent(args.parent_pid)
    try:
        asyncio.run(run_replica(config, args.parent_pid))
    except KeyboardInterrupt:
        pass
    except (WalCorruptionError, ReplicaStateError) as error:
        # Refuse to start rather than guess: the operator must look at the named file.
        print(f"tessera replica: {error}", file=sys.stderr)
        return 1
    return 0


async def run_replica(config: ReplicaConfig, parent_pid: int | None) -> None:
    """Run until stopped; SIGTERM (how the launcher stops replicas) closes the WAL and store as Ctrl-C does."""
    main_task = asyncio.current_task()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    try:
        await run_until_stopped(config, parent_pid=parent_pid)
    except asyncio.CancelledError:
        pass


def stop_with_parent(parent_pid: int | None) -> None:
    """Have the kernel send SIGTERM when the parent (a launcher, a test) dies, even by SIGKILL."""
    if parent_pid is None:
        return
    if platform.system() == "Linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:
        raise SystemExit(f"tessera: the parent process {parent_pid} is gone (or is not this one's parent)")


def command_router(args: argparse.Namespace) -> int:
    # Imported here: the router is its own part, and `tessera version` must work without it.
    from router.server import run

    stop_with_parent(args.parent_pid)
    logs.configure("router", listen=args.listen)
    try:
        auto_compaction = None
        if args.auto_compaction_mode:
            auto_compaction = (args.auto_compaction_mode,
                               compaction_retention(args.auto_compaction_mode, args.auto_compaction_retention))
        run(listen=args.listen, meta_addresses=args.meta, gateway_listen=args.gateway_listen,
            auto_compaction=auto_compaction,
            corruption_check_interval=args.corruption_check_interval, read_only=args.read_only)
    except KeyboardInterrupt:
        pass
    return 0


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """How an operator command finds the cluster: the data dir of `tessera up`, or the meta group."""
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR,
                        help="the data dir of `tessera up` (default ./%(default)s)")
    parser.add_argument("--meta", type=parse_meta, default=None,
                        help="instead of --data-dir: the meta group's replicas, ID=API_ADDRESS,...")


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

    shard_map, groups = asyncio.run(admin.describe(meta_members(args)))
    print("PREFIX / RANGE                          GROUP")
    for start, end, group in shard_map.ranges:
        print(f"{_show_range(start, end):40} {group}")
    print(f"{'(every other key)':40} {shard_map.default_group}")
    print()
    print("GROUP  LEADER  MEMBERS  HEALTH     KEYS")
    for state in groups:
        health = "healthy" if state.healthy else f"unhealthy: {state.error}"
        keys = "-" if state.keys is None else state.keys
        print(f"{state.group:<6} {state.leader or '-':<7} {state.members:<8} {health:10} {keys}")
    return 0


def _show_range(start: bytes, end: bytes) -> str:
    from router.shard_map import prefix_end

    if end == prefix_end(start):
        return start.decode(errors="backslashreplace")
    return f"[{start!r}, {end!r})"


def command_status(args: argparse.Namespace) -> int:
    """Every replica: role, term, indexes, revision, db size, and how far it trails its leader."""
    from router import admin

    rows = asyncio.run(admin.replica_statuses(meta_members(args)))
    leaders_commit = {group: status.commit_index for group, member, status in rows
                      if not isinstance(status, str) and status.leader_id == member}
    print(f"{'GROUP':<6}{'MEMBER':<7}{'ROLE':<9}{'TERM':>5}{'COMMIT':>9}{'APPLIED':>9}{'LAG':>6}"
          f"{'REVISION':>10}{'DB SIZE':>10}{'IN USE':>10}  ALARMS")
    for group, member, status in rows:
        if isinstance(status, str):
            print(f"{group:<6}{member:<7}{status}")
            continue
        role = "leader" if status.leader_id == member else "follower" if status.leader_id else "no leader"
        lag = leaders_commit.get(group, status.commit_index) - status.applied_index
        alarms = ", ".join(AlarmType.Name(alarm.alarm) for alarm in status.alarms) or "-"
        print(f"{group:<6}{member:<7}{role:<9}{status.term:>5}{status.commit_index:>9}{status.applied_index:>9}"
              f"{max(lag, 0):>6}{status.revision:>10}{_size(status.db_size):>10}{_size(status.db_size_in_use):>10}"
              f"  {alarms}")
    return 0


def _size(size: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return ""


def command_leader_transfer(args: argparse.Namespace) -> int:
    from router import admin
    from router.shard_map import ShardMapError

    try:
        asyncio.run(admin.transfer_leadership(meta_members(args), args.group, args.member))
    except (ShardMapError, EtcdError) as failure:
        print(f"tessera leader transfer: {getattr(failure, 'message', failure)}", file=sys.stderr)
        return 1
    print(f"group {args.group}: member {args.member} leads")
    return 0


def command_shards_assign(args: argparse.Namespace) -> int:
    from router import admin
    from router.shard_map import ShardMapError

    try:
        shard_map = asyncio.run(admin.assign(meta_members(args), args.prefix.encode(), args.group))
    except ShardMapError as refused:
        print(f"tessera shards assign: {refused}", file=sys.stderr)
        return 1
    print(f"{args.prefix} -> group {args.group}; the map now has {len(shard_map.ranges)} prefixes")
    return 0


def main(argv: list[str] | None = None) -> int:
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
    add_auto_compaction_arguments(up)
    up.set_defaults(run=command_up)
    replica = commands.add_parser("replica", help="run one replica of one raft group")
    replica.add_argument("--group", type=int, required=True, help="the group's id")
    replica.add_argument("--member", type=int, required=True, help="this replica's member id")
    replica.add_argument("--data-dir", required=True, help="WAL and MVCC store; reused on restart")
    replica.add_argument("--members", type=parse_members, required=True,
                         help="initial membership: ID=PEER_ADDRESS/API_ADDRESS,... (this member included)")
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
    replica.add_argument("--watch-progress-notify-interval", type=float, default=600.0,
                         help="seconds between progress notifications to watches that ask (etcd: 10m)")
    replica.add_argument("--wal-segment-bytes", type=int, default=64 * 1024 * 1024,
                         help="size of each preallocated WAL segment file (etcd's 64 MB)")
    replica.add_argument("--metrics-listen", default=None, metavar="HOST:PORT",
                         help="serve Prometheus /metrics (etcd's metric names) and etcd's /health here "
                              "(default: not served)")
    replica.add_argument("--lease-checkpoint-interval", type=float, default=300.0,
                         help="the meta group's: seconds between records of leases' remaining TTLs "
                              "(etcd's 5 minutes)")
    replica.add_argument("--join", action="store_true",
                         help="join a running group (after a member add) instead of founding one")
    replica.add_argument("--parent-pid", type=int, default=None,
                         help="stop when this process is gone (test clusters stop themselves)")
    replica.set_defaults(run=command_replica)
    router = commands.add_parser("router", help="serve etcd's v3 API in front of the cluster's groups")
    router.add_argument("--listen", required=True, help="HOST:PORT of the etcd endpoint")
    router.add_argument("--meta", type=parse_meta, required=True,
                        help="the meta group's replicas: ID=API_ADDRESS,...")
    router.add_argument("--gateway-listen", default=None,
                        help="HOST:PORT for etcd's HTTP/JSON gateway (/v3/...), /metrics and /health")
    add_auto_compaction_arguments(router)
    router.add_argument("--read-only", action="store_true",
                        help="a proxy beside clients: serve reads and watches, refuse writes and leases")
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
    shards = commands.add_parser("shards", help="the shard map: list it, assign an empty prefix to a group")
    shard_commands = shards.add_subparsers(dest="shards_command", required=True)
    for name, help_text, run in (
        ("list", "the map, and each group's leader, health and key count", command_shards_list),
        ("assign", "give an empty key prefix to a data group", command_shards_assign),
    ):
        command = shard_commands.add_parser(name, help=help_text)
        if name == "assign":
            command.add_argument("prefix", help="the key prefix, e.g. /registry/leases/")
            command.add_argument("group", type=int, help="the data group that will own it")
        add_cluster_arguments(command)
        command.set_defaults(run=run)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
