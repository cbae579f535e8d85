"""One replica of one raft group: the raft core, the WAL and the MVCC store in a process.

A replica is three parts, each in a module of its own:

  * the raft driver (shards/raft_driver.py): the raft node, the WAL and the
    store; it persists, sends and applies, on one asyncio loop;
  * the request service (shards/shard_service.py): the internal API routers
    call, which turns requests into proposals, reads and answers, each kind
    dispatched through one table (shards/requests.py);
  * in the meta group only, the lease host (shards/lease_host.py): the
    leader's lease deadlines, kept from what the driver applies.

This module wires them together with the servers (the internal API, and
/metrics and /health), and runs the whole until stopped.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

from shards.lease_host import LEASE_CHECKPOINT_SECONDS, LeaseHost
from shards.metrics import Gauges, MetricsServer, ReplicaMetrics
from shards.mvcc import BATCH_INTERVAL_SECONDS, BATCH_LIMIT_ENTRIES, MvccStore
from shards.raft import Role
from shards.raft_driver import BATCH_WINDOW_MS, MemberAddresses, RaftDriver
from shards.shard_service import ShardService
from shards.wal import SEGMENT_BYTES_DEFAULT, WriteAheadLog
from shards.watch import PROGRESS_NOTIFY_INTERVAL_SECONDS
from tessera.api.internal_stream import host_and_port
from tessera.api.meta_keys import META_GROUP
from tessera.api.tls import TLSFiles

log = logging.getLogger("tessera.replica")

MAX_PENDING_APPLIES = 5000  # etcd refuses proposals past this commit/apply gap
SNAPSHOT_COUNT = 100_000  # etcd 3.5's --snapshot-count
SNAPSHOT_CATCHUP_ENTRIES = 5000  # entries kept after a snapshot for slow followers, as etcd


@dataclass
class ReplicaConfig:
    group_id: int
    member_id: int
    data_dir: Path
    members: dict[int, MemberAddresses]  # the initial (or, to join, current) membership, this replica included
    # Where to bind, when not on the addresses the cluster knows it by (members[member_id]):
    # e.g. 0.0.0.0:PORT behind a DNS name or a NAT.
    listen_peer: str | None = None
    listen_api: str | None = None
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    quota_backend_bytes: int = 2 * 1024**3
    max_pending_applies: int = MAX_PENDING_APPLIES
    snapshot_count: int = SNAPSHOT_COUNT
    snapshot_catchup_entries: int = SNAPSHOT_CATCHUP_ENTRIES
    # Join a running group (after a member add) instead of founding one: no bootstrap,
    # membership comes from the leader's log or snapshot.
    join: bool = False
    watch_progress_notify_interval_seconds: float = PROGRESS_NOTIFY_INTERVAL_SECONDS
    max_raft_message_bytes: int = 1 << 20  # etcd's MaxSizePerMsg
    max_inflight_messages: int = 512  # etcd's MaxInflightMsgs
    # Under load, how long a leader holds a short batch for more writes (shards/raft_driver.py); 0: never.
    batch_window_ms: float = BATCH_WINDOW_MS
    wal_segment_bytes: int = SEGMENT_BYTES_DEFAULT
    metrics_listen: str | None = None  # HOST:PORT for /metrics and /health; None serves neither
    # The meta group's: how often its leader records each lease's remaining TTL.
    lease_checkpoint_interval_seconds: float = LEASE_CHECKPOINT_SECONDS
    # The store's durable point (shards/mvcc.py): at least this often, or after this many applied entries.
    backend_batch_interval_seconds: float = BATCH_INTERVAL_SECONDS
    backend_batch_limit_entries: int = BATCH_LIMIT_ENTRIES
    # TLS on the peer and API ports and to peers (etcd's --peer-* flags); None: plaintext.
    peer_tls: TLSFiles | None = None


class Replica:
    def __init__(self, config: ReplicaConfig):
        self.config = config
        wal = WriteAheadLog.open(config.data_dir / "wal", segment_bytes=config.wal_segment_bytes)
        # The store opens at its durable point; raft hands out the entries after it again.
        store = MvccStore.open(config.data_dir / "mvcc", quota_bytes=config.quota_backend_bytes,
                               batch_interval_seconds=config.backend_batch_interval_seconds,
                               batch_limit_entries=config.backend_batch_limit_entries)
        self.metrics = ReplicaMetrics(config.group_id, config.member_id, self._gauges)
        wal.on_fsync = self.metrics.wal_fsync.observe
        self.driver = RaftDriver(config, wal, store, self.metrics)
        self.leases: LeaseHost | None = None
        if config.group_id == META_GROUP:
            self.leases = LeaseHost(self.driver, config.lease_checkpoint_interval_seconds)
            self.driver.observer = self.leases
        self.service = ShardService(self.driver, self.leases)
        self._api_server: asyncio.Server | None = None
        self._metrics_server: MetricsServer | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._tasks = await self.driver.start()
        if self.leases is not None:
            self._tasks.append(asyncio.get_running_loop().create_task(self.leases.keep()))
        me = self.config.members[self.config.member_id]
        self._api_server = await asyncio.get_running_loop().create_server(
            self.service.new_connection, *host_and_port(self.config.listen_api or me.api), reuse_address=True,
            ssl=self.config.peer_tls.server_context() if self.config.peer_tls is not None else None)
        if self.config.metrics_listen is not None:
            self._metrics_server = MetricsServer(self.config.metrics_listen, self.metrics, self.service.health)
            await self._metrics_server.start()
        log.info("group %d member %d started: peers on %s, API on %s", self.config.group_id,
                 self.config.member_id, me.peer, me.api)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        if self._api_server is not None:
            self._api_server.close()
        await self.driver.stop()

    async def failed(self) -> None:
        """Returns only by raising what ended the raft loop, the ticker or the lessor (a broken invariant)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()

    def _gauges(self) -> Gauges:
        driver = self.driver
        store, transport = driver.store, driver.transport
        return Gauges(
            has_leader=bool(driver.leader_id), is_leader=driver.role == Role.LEADER,
            committed_index=driver.commit_index, applied_index=store.applied_index,
            proposals_pending=driver.proposals_pending,
            db_size_bytes=store.db_size_bytes(), db_size_in_use_bytes=store.db_size_in_use_bytes(),
            peer_sent_bytes=dict(transport.bytes_sent), peer_received_bytes=dict(transport.bytes_received),
        )


async def run_until_stopped(config: ReplicaConfig) -> None:
    """Run a replica until cancelled (SIGTERM, and the kernel's signal when the parent dies, do it).

    If the raft loop fails, the error propagates and the process exits: a broken
    invariant is answered by restarting from disk, never by limping on.
    """
    replica = Replica(config)
    await replica.start()
    try:
        await replica.failed()
    finally:
        await replica.stop()
