"""The `tessera` command."""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import sys
from pathlib import Path

import tessera
from native import codec, crc, walframe
from shards.replica import MemberAddresses, ReplicaConfig, ReplicaStateError, run_until_stopped
from shards.wal import WalCorruptionError


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
    command_version(args)
    # The local cluster (meta group, data groups, router) is not built yet: say so
    # plainly instead of pretending to serve.
    print(
        "tessera up: the local cluster and router are not available in this build yet; "
        "the native hot path and write-ahead log above are installed and working.",
        file=sys.stderr,
    )
    return 0


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


def command_replica(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
        wal_segment_bytes=args.wal_segment_bytes,
    )
    try:
        asyncio.run(run_until_stopped(config, parent_pid=args.parent_pid))
    except KeyboardInterrupt:
        pass
    except (WalCorruptionError, ReplicaStateError) as error:
        # Refuse to start rather than guess: the operator must look at the named file.
        print(f"tessera replica: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tessera", description=tessera.__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("version", help="print version and native build info").set_defaults(
        run=command_version
    )
    commands.add_parser("up", help="start a local cluster and router on 127.0.0.1").set_defaults(
        run=command_up
    )
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
    replica.add_argument("--join", action="store_true",
                         help="join a running group (after a member add) instead of founding one")
    replica.add_argument("--parent-pid", type=int, default=None,
                         help="stop when this process is gone (test clusters stop themselves)")
    replica.set_defaults(run=command_replica)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
