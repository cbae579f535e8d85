"""One replica of one raft group: the raft core, the WAL and the MVCC store in a process.

Theory of operation. Everything runs on one asyncio loop, around one
coroutine, `_drive`, which owns the raft node. Other coroutines only queue
work and wake it: the ticker (a tick every heartbeat interval), the peer
transport (raft messages received), and the internal API streams (client
requests). Each turn of `_drive`:

  1. steps the raft messages received and the ticks due;
  2. proposes every write queued since the last turn in one batch, and asks
     one ReadIndex for every linearizable read queued (they share a round);
  3. handles the Ready, in the order raft requires: send what may go before
     the local write (a leader's appends), append entries and hard state to
     the WAL with one fdatasync (in a thread: the streams keep queueing work
     meanwhile, so the next turn's batch grows with the load), send what had
     to wait for it (votes, append
     acknowledgements), apply committed entries to the MVCC store in one
     LMDB transaction (no fsync: the WAL is the durability point), answer the
     writes applied and the reads now servable, and advance;
  4. adopts the store's durable point once a thread has flushed it, and starts
     the next when due (shards/mvcc.py): a restart opens the store there and
     raft hands out the entries after it again;
  5. removes one bounded batch of compacted history, if a compaction is pending.

A write travels in its raft entry as ShardRequest bytes, under an id this
replica chose; applying it answers whoever waits on that id here. A replica
that is not the leader answers writes and linearizable reads with "not
leader" and the leader's address, without proposing. A leader that loses
leadership answers its waiting writes "leader changed": they may still be
committed by the next leader, so that answer means "unknown outcome", and
the router does not retry it. Serializable reads are served by any replica
from its own store.

Back-pressure as etcd: while committed minus applied exceeds
`max_pending_applies` (5,000), new writes get "too many requests".

Snapshots, as etcd takes them. Every `snapshot_count` applied entries the
replica makes its store durable up to there, records a snapshot marker in the WAL,
keeps `snapshot_catchup_entries` entries in memory for followers a little
behind, and releases the WAL segments the snapshot covers. A follower further
behind gets a snapshot message carrying a compact copy of the leader's
database as of the leader's applied index, and stamped with that index, so
data and metadata agree. The follower installs it crash-safely: the file is
made durable as `snapshot.mdb`, then the WAL records the snapshot, then the
file is renamed over the store's database. A restart between those steps
finishes the install (the WAL's snapshot is newer than the store).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from shards.durable import write_file_durably
from shards.fault_control import STORE_APPLIED, WAL_SYNCED, failpoint
from shards.leases import LeaseKeeper, RecordWrite
from shards.metrics import Gauges, MetricsServer, ReplicaMetrics
from shards.mvcc import (
    BATCH_INTERVAL_SECONDS,
    BATCH_LIMIT_ENTRIES,
    MvccStore,
    Proposal,
    RaiseRevision,
    RegrantLease,
    RemoveMember,
    RevokeLease,
    SetMember,
)
from shards.raft import Config, ProposalDropped, RawNode, Ready, Role
from shards.raft.messages import ConfChange, ConfChangeType, Message, MessageType
from shards.raft.storage import Entry, EntryType, HardState, Snapshot, SnapshotMeta
from shards.transport import PeerTransport
from shards.wal import SEGMENT_BYTES_DEFAULT, WriteAheadLog
from shards.watch import PROGRESS_NOTIFY_INTERVAL_SECONDS, WatchHub
from tessera.api import errors, validation
from tessera.api.internal_pb2 import (
    Error,
    LeaseKeysResponse,
    Member,
    MemberChange,
    MemberListResponse,
    ShardRequest,
    ShardRequestBatch,
    ShardResponse,
    ShardResponseBatch,
    StatusResponse,
)
from tessera.api.meta_keys import LEASES_PREFIX, META_GROUP, lease_key, prefix_range
from tessera.api.rpc_pb2 import (
    NOSPACE,
    AlarmRequest,
    AlarmType,
    CompactionRequest,
    Compare,
    DefragmentResponse,
    HashKVResponse,
    LeaseKeepAliveResponse,
    LeaseLeasesResponse,
    LeaseStatus,
    LeaseTimeToLiveResponse,
    MoveLeaderResponse,
    PutRequest,
    RangeRequest,
    RequestOp,
    ResponseHeader,
    TxnRequest,
    WatchRequest,
    WatchResponse,
)

log = logging.getLogger("tessera.replica")

SHARD_SERVICE = "tessera.internal.Shard"
MAX_PENDING_APPLIES = 5000  # etcd refuses proposals past this commit/apply gap
SNAPSHOT_COUNT = 100_000  # etcd 3.5's --snapshot-count
SNAPSHOT_CATCHUP_ENTRIES = 5000  # entries kept after a snapshot for slow followers, as etcd
# How long a write may wait for its entry to apply: etcd's request timeout
# (5 s) plus an election, so a leader change can complete before giving up.
WRITE_TIMEOUT_SECONDS = 7.0
READ_TIMEOUT_SECONDS = 7.0
# Requests one internal stream may have in flight before the stream stops
# reading more: a router that floods is slowed, not buffered without bound.
STREAM_IN_FLIGHT_MAX = 10_000
# A learner may be promoted once it has this share of the leader's committed log (etcd's 90%).
LEARNER_READY_FRACTION = 0.9
LEASE_CHECK_SECONDS = 0.25  # how often the meta leader looks for expired leases
LEASE_CHECKPOINT_SECONDS = 300.0  # etcd's lease checkpoint interval (5 minutes)
LEASE_CHECKPOINT_BATCH = 64  # records per checkpoint transaction (two operations each, under etcd's 128)

_WRITE_KINDS = {"put", "delete_range", "txn", "compaction", "raise_revision", "alarm", "revoke_lease",
                "regrant_lease"}
_LEASE_KINDS = {"lease_keep_alive", "lease_time_to_live", "lease_leases"}
# Requests the store answers with no response message of their own: the answer is a header.
_HEADER_ANSWERS = {"raise_revision": "raised", "revoke_lease": "lease_revoked", "regrant_lease": "lease_regranted"}


class ReplicaStateError(Exception):
    """The data directory contradicts itself; starting would risk raft's guarantees."""


@dataclass(frozen=True)
class MemberAddresses:
    peer: str  # raft traffic between replicas
    api: str  # the internal API routers use


@dataclass
class ReplicaConfig:
    group_id: int
    member_id: int
    data_dir: Path
    members: dict[int, MemberAddresses]  # the initial (or, to join, current) membership, this replica included
    heartbeat_interval_ms: int = 100
    election_timeout_ms: int = 1000
    quota_backend_bytes: int = 2 * 1024**3
    max_pending_applies: int = MAX_PENDING_APPLIES
    snapshot_count: int = SNAPSHOT_COUNT
    snapshot_catchup_entries: int = SNAPSHOT_CATCHUP_ENTRIES
    # The store's durable point (shards/mvcc.py): at least this often, or after this many applied entries.
    backend_batch_interval_seconds: float = BATCH_INTERVAL_SECONDS
    backend_batch_limit_entries: int = BATCH_LIMIT_ENTRIES
    # Join a running group (after a member add) instead of founding one: no bootstrap,
    # membership comes from the leader's log or snapshot.
    join: bool = False
    watch_progress_notify_interval_seconds: float = PROGRESS_NOTIFY_INTERVAL_SECONDS
    max_raft_message_bytes: int = 1 << 20  # etcd's MaxSizePerMsg
    max_inflight_messages: int = 512  # etcd's MaxInflightMsgs
    wal_segment_bytes: int = SEGMENT_BYTES_DEFAULT
    metrics_listen: str | None = None  # HOST:PORT for /metrics and /health; None serves neither
    # The meta group's: how often its leader records each lease's remaining TTL.
    lease_checkpoint_interval_seconds: float = LEASE_CHECKPOINT_SECONDS


@dataclass
class _PendingRead:
    request: ShardRequest
    future: asyncio.Future


@dataclass
class _ReadRound:
    """Linearizable reads that share one ReadIndex."""

    reads: list[_PendingRead] = field(default_factory=list)
    index: int | None = None  # known once raft confirms leadership


class Replica:
    def __init__(self, config: ReplicaConfig):
        self.config = config
        me = config.members[config.member_id]
        self.wal = WriteAheadLog.open(config.data_dir / "wal", segment_bytes=config.wal_segment_bytes)
        # The store opens at its durable point; raft hands out the entries after it again.
        self.store = MvccStore.open(config.data_dir / "mvcc", quota_bytes=config.quota_backend_bytes,
                                    batch_interval_seconds=config.backend_batch_interval_seconds,
                                    batch_limit_entries=config.backend_batch_limit_entries)
        self.metrics = ReplicaMetrics(config.group_id, config.member_id, self._gauges)
        self.wal.on_fsync = self.metrics.wal_fsync.observe
        self._incoming_snapshot = config.data_dir / "snapshot.mdb"
        self._finish_snapshot_install()
        self.metrics.keys = self._count_keys()
        durable_last = max(self.wal.storage.last_index(), self.wal.storage.snapshot().meta.index)
        if self.store.applied_index > durable_last:
            # Entries are applied only after the WAL made them durable: the disk lost fsynced data.
            raise ReplicaStateError(
                f"the store has applied raft index {self.store.applied_index} but the write-ahead "
                f"log in {config.data_dir / 'wal'} only holds entries up to {durable_last}: "
                f"it lost data that was synced; this replica must be replaced, not restarted"
            )
        log.info("group %d member %d: the store opened at its durable point, index %d; the WAL holds entries "
                 "to %d", config.group_id, config.member_id, self.store.applied_index, durable_last)
        new = self.wal.storage.last_index() == 0 and not self.wal.storage.snapshot().meta.index
        if new and not config.join:
            self._bootstrap()
        self.node = RawNode(
            Config(
                id=config.member_id,
                election_ticks=config.election_timeout_ms // config.heartbeat_interval_ms,
                heartbeat_ticks=1,
                tick_interval_ms=config.heartbeat_interval_ms,
                max_size_per_msg_bytes=config.max_raft_message_bytes,
                max_inflight_msgs=config.max_inflight_messages,
                # Restart at the snapshot, as etcd does: raft hands out every entry
                # after it again, the store skips what it has applied, and membership
                # changes in them reach the core again.
                applied_index=self.wal.storage.snapshot().meta.index,
            ),
            self.wal.storage,
            random.Random(secrets.randbits(64)),
        )
        # Where to reach each member: what was applied (the store), over what we were told.
        self.members = dict(config.members)
        for record in self.store.members().values():
            member = Member.FromString(record)
            self.members[member.id] = MemberAddresses(member.peer_address, member.api_address)
        self.transport = PeerTransport(config.member_id, me.peer, self._receive,
                                       on_snapshot_sent=self._snapshot_sent)
        self.watch_hub = WatchHub(
            self.store, progress_notify_interval_seconds=config.watch_progress_notify_interval_seconds)
        self.leader_id = 0
        self.role = Role.FOLLOWER
        self._wake = asyncio.Event()
        self._leader_changed = asyncio.Event()  # set whenever who leads may have changed
        self._compaction_finished = asyncio.Event()  # set when compacted history is all removed
        self._inbox: list[Message] = []
        self._heartbeats_sent: dict[int, float] = {}  # peer -> when the oldest unanswered heartbeat left
        self._ticks_due = 0
        self._writes: list[tuple[int, bytes]] = []  # (proposal id, entry data) to propose
        self._waiting_writes: dict[int, asyncio.Future] = {}
        self._read_queue: list[_PendingRead] = []
        self._read_rounds: dict[bytes, _ReadRound] = {}
        self._next_proposal_id = secrets.randbits(62)
        self._commit_index = self.store.applied_index
        self._appended_index = 0  # the last entry this replica appended to its log
        self._snapshot_index = self.wal.storage.snapshot().meta.index
        self._api_server: grpc.aio.Server | None = None
        self._metrics_server: MetricsServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._wal_syncer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wal-sync")
        self._store_flush: Future | None = None  # the store's durable point being flushed
        # The meta group keeps lease deadlines (shards/leases.py). A new leader answers lease
        # requests once it has applied every entry it had when elected: only then does it
        # know every lease granted before.
        self.lease_keeper: LeaseKeeper | None = None
        self._leases_ready = asyncio.Event()
        self._leases_ready_index = 0
        if config.group_id == META_GROUP:
            self.lease_keeper = LeaseKeeper(extend_seconds=config.election_timeout_ms / 1000)
            self._load_leases()

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.transport.start()
        for member_id, addresses in self.members.items():
            if member_id != self.config.member_id:
                self.transport.set_peer(member_id, addresses.peer)
        self._api_server = grpc.aio.server()
        handler = grpc.stream_stream_rpc_method_handler(
            self._serve_stream,
            request_deserializer=ShardRequestBatch.FromString,
            response_serializer=ShardResponseBatch.SerializeToString,
        )
        watch = grpc.stream_stream_rpc_method_handler(
            self._serve_watch,
            request_deserializer=WatchRequest.FromString,
            response_serializer=WatchResponse.SerializeToString,
        )
        self._api_server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SHARD_SERVICE, {"Batch": handler, "Watch": watch})]
        )
        self._api_server.add_insecure_port(self.config.members[self.config.member_id].api)
        await self._api_server.start()
        if self.config.metrics_listen is not None:
            self._metrics_server = MetricsServer(self.config.metrics_listen, self.metrics, self.health)
            await self._metrics_server.start()
        self.watch_hub.start()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._tick()), loop.create_task(self._drive())]
        if self.lease_keeper is not None:
            self._tasks.append(loop.create_task(self._keep_leases()))
        log.info("group %d member %d started: peers on %s, API on %s", self.config.group_id,
                 self.config.member_id, self.config.members[self.config.member_id].peer,
                 self.config.members[self.config.member_id].api)

    def _bootstrap(self) -> None:
        """Found the group as etcd does: the initial members as committed conf changes 1..n.

        Every founding member writes the same entries, so their logs agree; a
        member that joins later replays them (or gets a snapshot) and learns
        the whole membership, which a bootstrap outside the log would hide.
        """
        entries = [
            Entry(1, index, EntryType.CONF_CHANGE, ConfChange(
                ConfChangeType.ADD_VOTER, member_id,
                MemberChange(member=Member(id=member_id, peer_address=addresses.peer,
                                           api_address=addresses.api)).SerializeToString(),
            ).encode())
            for index, (member_id, addresses) in enumerate(sorted(self.config.members.items()), start=1)
        ]
        self.wal.append(entries, HardState(term=1, vote=0, commit=len(entries)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics_server is not None:
            await self._metrics_server.stop()
        self._wal_syncer.shutdown(wait=True)  # no fdatasync may still run when the WAL closes
        if self._api_server is not None:
            await self._api_server.stop(grace=None)
        await self.transport.stop()
        self.watch_hub.stop()
        self._fail_waiting(errors.Stopped())
        self.wal.close()
        self.store.close()

    async def failed(self) -> None:
        """Returns only by raising what ended the raft loop or the ticker (a broken invariant)."""
        done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()

    # --- inputs ----------------------------------------------------------------------

    def _receive(self, messages: list[Message]) -> None:
        self._inbox += messages
        self._wake.set()
        if self._heartbeats_sent:
            for message in messages:
                if message.type == MessageType.HEARTBEAT_RESP:
                    sent = self._heartbeats_sent.pop(message.frm, None)
                    if sent is not None:
                        self.metrics.observe_round_trip(message.frm, time.perf_counter() - sent)

    async def _tick(self) -> None:
        interval = self.config.heartbeat_interval_ms / 1000
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, next_tick - loop.time()))
            next_tick += interval
            self._ticks_due += 1
            self._wake.set()

    # --- the raft loop -----------------------------------------------------------------

    async def _drive(self) -> None:
        node = self.node
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            for _ in range(self._ticks_due):
                node.tick()
            self._ticks_due = 0
            inbox, self._inbox = self._inbox, []
            for message in inbox:
                node.step(message)
            self._propose_queued()
            while node.has_ready():
                await self._handle_ready(node.ready())
            if self._writes and self._batch_committed():
                self._wake.set()  # the round that held them back is over: propose them next turn
            flushing = self.store.advance_durability()
            if flushing is not None and flushing is not self._store_flush:
                self._store_flush = flushing  # wake to adopt it once flushed
                flushing.add_done_callback(lambda _: loop.call_soon_threadsafe(self._wake.set))
            if self.store.compaction_pending:
                # One bounded step per turn: applies never wait behind a whole compaction.
                if self.store.compact_step():
                    self._compaction_finished.set()
                self._wake.set()
            # Yield so streams can queue more work before the next turn.
            await asyncio.sleep(0)

    def _batch_committed(self) -> bool:
        """Whether everything this leader appended is committed (durable on a quorum, itself included)."""
        return self._commit_index >= self._appended_index

    def _propose_queued(self) -> None:
        # One batch in flight at a time: under load, the next batch is everything that queued
        # while the last was persisted and replicated, so WAL fsyncs and appends carry many entries.
        if self._writes and self._batch_committed():
            writes, self._writes = self._writes, []
            try:
                self.node.propose_batch([data for _, data in writes])
            except ProposalDropped:
                self.metrics.proposals_failed += len(writes)
                for proposal_id, _ in writes:
                    self._answer_write(proposal_id, errors.LeaderChanged())
        reads, self._read_queue = self._read_queue, []
        if reads:
            context = secrets.token_bytes(8)
            self._read_rounds[context] = _ReadRound(reads)
            try:
                self.node.read_index(context)
            except ProposalDropped:
                self._finish_round(context, errors.LeaderChanged())

    async def _handle_ready(self, ready: Ready) -> None:
        if ready.soft_state is not None:
            self._leadership_changed(ready.soft_state.lead, ready.soft_state.role)
        self._send(ready.messages)
        if ready.snapshot is not None:
            self._install_snapshot(ready.snapshot)
        if ready.entries or ready.hard_state is not None:
            # As etcd (raft's MustSync): new entries, a vote or a term must be durable before
            # anything depends on them; a commit index alone need not, raft learns it again.
            previous = self.wal.storage.hard_state
            must_sync = bool(ready.entries) or ready.hard_state is not None and (
                ready.hard_state.term != previous.term or ready.hard_state.vote != previous.vote)
            self.wal.append(ready.entries, ready.hard_state, sync=False)
            if ready.entries:
                self._appended_index = ready.entries[-1].index
            if must_sync:
                # The fdatasync runs off the event loop: meanwhile the streams go on reading
                # requests, and the next turn proposes all of them at once (group commit).
                await asyncio.get_running_loop().run_in_executor(self._wal_syncer, self.wal.sync)
                failpoint(WAL_SYNCED)
        if ready.hard_state is not None:
            self._commit_index = ready.hard_state.commit
        self._send(ready.persisted_messages)
        if ready.committed_entries:
            self._apply(ready.committed_entries)
            if self.store.applied_index - self._snapshot_index >= self.config.snapshot_count:
                self._take_snapshot()
        for read_state in ready.read_states:
            round_ = self._read_rounds.get(read_state.context)
            if round_ is not None:
                round_.index = read_state.index
        self.node.advance(ready)
        self._serve_read_rounds()

    def _send(self, messages: list[Message]) -> None:
        snapshots = [message for message in messages if message.type == MessageType.SNAP]
        if snapshots:
            # Send the database as it is now, stamped with the index it is at (etcd's merged
            # snapshot): raft's own snapshot may be older than any copy that can still be made.
            applied_index, data = self.store.copy_bytes()
            meta = SnapshotMeta(applied_index, self.wal.storage.term(applied_index),
                                self.node.status().conf_state)
            messages = [
                message._replace(snapshot=Snapshot(meta, data)) if message.type == MessageType.SNAP
                else message
                for message in messages
            ]
        if self.role == Role.LEADER:
            now = time.perf_counter()
            for message in messages:
                if message.type == MessageType.HEARTBEAT:  # timed to its answer: the peer's round trip
                    sent = self._heartbeats_sent.get(message.to)
                    if sent is None or now - sent > self.config.election_timeout_ms / 1000:  # unanswered: lost
                        self._heartbeats_sent[message.to] = now
        self.transport.send(messages)

    def _snapshot_sent(self, member_id: int, failed: bool) -> None:
        """The snapshot stream to a follower ended: raft retries or resumes replication."""
        self.node.report_snapshot(member_id, failed)
        self._wake.set()

    def _take_snapshot(self) -> None:
        # The WAL drops what the snapshot covers: only what the store has made durable.
        self.store.make_durable()
        index = self.store.durable_applied_index
        if index != self.store.applied_index:
            raise ReplicaStateError(f"the store made index {index} durable, not its applied "
                                    f"{self.store.applied_index}")
        self.wal.create_snapshot(index, self.node.status().conf_state, b"",
                                 keep_entries=self.config.snapshot_catchup_entries)
        released = self.wal.release_to(index)
        self._snapshot_index = index
        log.info("group %d member %d: snapshot at %d, %d WAL segments released",
                 self.config.group_id, self.config.member_id, index, len(released))

    def _install_snapshot(self, snapshot: Snapshot) -> None:
        write_file_durably(self._incoming_snapshot, snapshot.data)
        self.wal.save_snapshot(Snapshot(snapshot.meta))  # the data lives on as the store's file
        self._finish_snapshot_install()
        self.watch_hub.resync_all()
        self.metrics.keys = self._count_keys()
        if self.lease_keeper is not None:
            self._load_leases()  # leases granted while this replica was behind came in the snapshot
        self._snapshot_index = snapshot.meta.index
        log.info("group %d member %d: installed a snapshot at %d (%d bytes)", self.config.group_id,
                 self.config.member_id, snapshot.meta.index, len(snapshot.data))

    def _finish_snapshot_install(self) -> None:
        """Put a received snapshot in place if the WAL has recorded it; drop it otherwise."""
        if not self._incoming_snapshot.exists():
            return
        if self.wal.storage.snapshot().meta.index > self.store.applied_index:
            self.store.replace_database(self._incoming_snapshot)
        else:
            self._incoming_snapshot.unlink()  # never recorded, or already in place

    def _apply(self, entries) -> None:
        proposals = []
        waiting: dict[int, int] = {}  # position in proposals -> proposal id
        for entry in entries:
            if entry.type == EntryType.CONF_CHANGE:
                proposals.append(Proposal(entry.index, 0, (self._apply_member_change(entry.data),)))
                continue
            if not entry.data:  # a new leader's empty entry
                proposals.append(Proposal(entry.index, 0, ()))
                continue
            request = ShardRequest.FromString(entry.data)
            kind = request.WhichOneof("request")
            if kind == "raise_revision":
                store_request = RaiseRevision(request.raise_revision)
            elif kind == "revoke_lease":
                store_request = RevokeLease(request.revoke_lease)
            elif kind == "regrant_lease":
                store_request = RegrantLease(request.regrant_lease)
            else:
                store_request = getattr(request, kind)
            waiting[len(proposals)] = request.id
            proposals.append(Proposal(entry.index, request.floor, (store_request,), frozenset(request.unknown_leases)))
        started = time.perf_counter()
        result = self.store.apply(proposals)
        failpoint(STORE_APPLIED)
        self.metrics.observe_apply(time.perf_counter() - started, result.commit_seconds)
        if result.events:
            self.metrics.count_changes(result.events)
            self.watch_hub.publish(result.events)
            if self.lease_keeper is not None:
                self.lease_keeper.apply(result.events, time.monotonic())
        if (self.lease_keeper is not None and self.role == Role.LEADER and not self._leases_ready.is_set()
                and self.store.applied_index >= self._leases_ready_index):
            self._leases_ready.set()
        for position, proposal_id in waiting.items():
            outcome = result.responses[position]
            if outcome is not None:  # None: applied before a restart, nobody waits here
                self._answer_write(proposal_id, outcome[0])

    def _apply_member_change(self, data: bytes):
        """Apply a committed membership change to raft and the transport; the store's part."""
        change = ConfChange.decode(data)
        self.node.apply_conf_change(change)
        context = MemberChange.FromString(change.context)
        member_id = change.node_id
        if change.type == ConfChangeType.REMOVE:
            self.members.pop(member_id, None)
            self.transport.remove_peer(member_id)
            store_request = RemoveMember(member_id)
        else:
            member = context.member
            self.members[member_id] = MemberAddresses(member.peer_address, member.api_address)
            if member_id != self.config.member_id:
                self.transport.set_peer(member_id, member.peer_address)
            store_request = SetMember(member_id, member.SerializeToString())
        if context.proposal_id:
            self._answer_write(context.proposal_id, self.member_list())
        return store_request

    def member_list(self) -> MemberListResponse:
        conf_state = self.node.status().conf_state
        return MemberListResponse(members=[
            Member(id=member_id, peer_address=self.members[member_id].peer,
                   api_address=self.members[member_id].api, is_learner=member_id in conf_state.learners)
            for member_id in sorted((*conf_state.voters, *conf_state.learners))
            if member_id in self.members
        ])

    def _leadership_changed(self, leader_id: int, role: Role) -> None:
        was_leader = self.role == Role.LEADER
        if leader_id and leader_id != self.leader_id:  # etcd counts a new leader, not the loss of one
            self.metrics.leader_changes += 1
        self.leader_id, self.role = leader_id, role
        self._leader_changed.set()
        if self.lease_keeper is not None and (role == Role.LEADER) != was_leader:
            self._leases_ready.clear()
            if role == Role.LEADER:
                self.lease_keeper.promote(time.monotonic())
                self._leases_ready_index = self.wal.storage.last_index()
            else:
                self.lease_keeper.demote()
        if was_leader and role != Role.LEADER:
            self.metrics.proposals_failed += len(self._waiting_writes)
            self._fail_waiting(errors.LeaderChanged())
        log.info("group %d member %d: leader is %d, role %s", self.config.group_id,
                 self.config.member_id, leader_id, role.name)

    def _fail_waiting(self, error: errors.EtcdError) -> None:
        for proposal_id in list(self._waiting_writes):
            self._answer_write(proposal_id, error)
        for context in list(self._read_rounds):
            self._finish_round(context, error)
        for read in self._read_queue:
            if not read.future.done():
                read.future.set_result(error)
        self._read_queue = []

    def _answer_write(self, proposal_id: int, outcome) -> None:
        future = self._waiting_writes.pop(proposal_id, None)
        if future is not None and not future.done():
            future.set_result(outcome)

    def _serve_read_rounds(self) -> None:
        applied = self.store.applied_index
        for context, round_ in list(self._read_rounds.items()):
            if round_.index is not None and round_.index <= applied:
                del self._read_rounds[context]
                for read in round_.reads:
                    if not read.future.done():
                        read.future.set_result(self._local_range(read.request))

    def _finish_round(self, context: bytes, outcome) -> None:
        round_ = self._read_rounds.pop(context, None)
        for read in round_.reads if round_ else ():
            if not read.future.done():
                read.future.set_result(outcome)

    def _local_range(self, request: ShardRequest):
        try:
            return self.store.range(request.range)
        except errors.EtcdError as error:
            return error

    # --- the internal API -------------------------------------------------------------

    async def _serve_stream(self, request_iterator, context):
        """One router connection: batches in, batches of answers out, in completion order."""
        answers: asyncio.Queue[ShardResponse] = asyncio.Queue()
        in_flight = asyncio.Semaphore(STREAM_IN_FLIGHT_MAX)

        async def answer(request: ShardRequest) -> None:
            try:
                answers.put_nowait(await self._handle(request))
            finally:
                in_flight.release()

        async def read_requests() -> None:
            async for batch in request_iterator:
                for request in batch.requests:
                    await in_flight.acquire()
                    asyncio.get_running_loop().create_task(answer(request))

        reader = asyncio.get_running_loop().create_task(read_requests())
        try:
            while True:
                first = await answers.get()
                batch = ShardResponseBatch(responses=[first])
                while not answers.empty():
                    batch.responses.append(answers.get_nowait())
                yield batch
        finally:
            reader.cancel()

    async def _serve_watch(self, request_iterator, context):
        """One watch stream, in etcd's Watch protocol (see shards.watch)."""
        stream = self.watch_hub.open_stream()

        async def read_requests() -> None:
            async for request in request_iterator:
                stream.handle(request)

        reader = asyncio.get_running_loop().create_task(read_requests())
        try:
            while True:
                yield await stream.outbox.get()
                if stream.outbox.empty():
                    self.watch_hub.wake_catch_up()  # a stream that fell behind may go on
        finally:
            reader.cancel()
            self.watch_hub.close_stream(stream)

    async def _handle(self, request: ShardRequest) -> ShardResponse:
        kind = request.WhichOneof("request")
        try:
            if kind == "status":
                return ShardResponse(id=request.id, status=self.status())
            if kind == "move_leader":
                outcome = await self._move_leader(request.move_leader.targetID)
            elif kind == "member_list":
                outcome = self.member_list()
            elif kind == "lease_keys":
                self._check_leader()
                outcome = LeaseKeysResponse(header=ResponseHeader(revision=self.store.revision),
                                            keys=self.store.lease_keys(request.lease_keys))
            elif kind == "hash_kv":
                hash_value, compacted = self.store.hash_kv(request.hash_kv.revision)
                outcome = HashKVResponse(header=ResponseHeader(revision=self.store.revision), hash=hash_value,
                                         compact_revision=compacted)
            elif kind == "defragment":
                # As etcd: the member is busy while it rewrites its database (nothing else runs).
                self.store.defragment()
                outcome = DefragmentResponse(header=ResponseHeader(revision=self.store.revision))
            elif kind in ("member_add", "member_promote", "member_remove"):
                outcome = await self._change_membership(request)
            elif kind in _LEASE_KINDS:
                outcome = await self._lease_query(request, kind)
            elif kind == "range":
                validation.check_range(request.range)
                if request.range.serializable:
                    outcome = self._local_range(request)
                else:
                    outcome = await self._linearizable_read(request)
            elif kind in _WRITE_KINDS:
                outcome = await self._write(request)
            else:
                outcome = errors.KeyNotFound()  # an empty request: etcd's answer to an empty op
        except errors.EtcdError as error:
            outcome = error
        return self._response(request, kind, outcome)

    def _response(self, request: ShardRequest, kind: str, outcome) -> ShardResponse:
        response = ShardResponse(id=request.id)
        if isinstance(outcome, errors.NotLeader):
            leader = self.members.get(self.leader_id)
            response.error.CopyFrom(Error(code=outcome.code, message=outcome.message,
                                          leader_id=self.leader_id,
                                          leader_address=leader.api if leader else ""))
        elif isinstance(outcome, errors.EtcdError):
            response.error.CopyFrom(Error(code=outcome.code, message=outcome.message))
        elif kind.startswith("member_"):
            response.members.CopyFrom(outcome)
        elif kind in _HEADER_ANSWERS:
            getattr(response, _HEADER_ANSWERS[kind]).CopyFrom(ResponseHeader(revision=self.store.revision))
        else:
            getattr(response, kind).CopyFrom(outcome)
        return response

    def _check_leader(self) -> None:
        if self.role != Role.LEADER:
            raise errors.NotLeader() if self.leader_id else errors.NoLeader()

    async def _write(self, request: ShardRequest):
        self._check_leader()
        kind = request.WhichOneof("request")
        if kind == "put":
            validation.check_put(request.put)
        elif kind == "delete_range":
            validation.check_delete(request.delete_range)
        elif kind == "txn":
            validation.check_txn(request.txn)
        if self._commit_index - self.store.applied_index > self.config.max_pending_applies:
            raise errors.TooManyRequests()
        if kind in ("put", "txn") and self.store.quota_exceeded(request.ByteSize()):
            # As etcd: the alarm goes through raft, so every replica refuses the same writes.
            if not self.store.space_exceeded:
                self._queue_proposal(ShardRequest(alarm=AlarmRequest(
                    action=AlarmRequest.ACTIVATE, memberID=self.config.member_id, alarm=NOSPACE)))
            raise errors.NoSpace()
        proposal_id = self._queue_proposal(request)
        future = asyncio.get_running_loop().create_future()
        self._waiting_writes[proposal_id] = future
        try:
            outcome = await asyncio.wait_for(asyncio.shield(future), WRITE_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            self._waiting_writes.pop(proposal_id, None)
            self.metrics.proposals_failed += 1
            return errors.RequestTimeout()
        if kind == "compaction" and request.compaction.physical and not isinstance(outcome, errors.EtcdError):
            # etcd's physical compaction: answer once the superseded history is gone here.
            while self.store.compaction_pending:
                self._compaction_finished.clear()
                await self._compaction_finished.wait()
        return outcome

    def _queue_proposal(self, request: ShardRequest) -> int:
        """Queue a request for the next proposal batch, under a new proposal id."""
        proposal_id = self._next_proposal_id
        self._next_proposal_id += 1
        entry = ShardRequest()
        entry.CopyFrom(request)
        entry.id = proposal_id
        self._writes.append((proposal_id, entry.SerializeToString()))
        self._wake.set()
        return proposal_id

    async def _change_membership(self, request: ShardRequest):
        """Add, promote or remove a member (one change at a time), with etcd's checks and errors."""
        self._check_leader()
        kind = request.WhichOneof("request")
        status = self.node.status()
        voters, learners = status.conf_state
        if kind == "member_add":
            member = request.member_add
            if member.id in voters or member.id in learners or member.id == 0:
                raise errors.MemberExist()
            if any(a.peer == member.peer_address for a in self.members.values()):
                raise errors.PeerURLExist()
            if member.is_learner and learners:
                raise errors.TooManyLearners()  # etcd allows one learner
            change_type = ConfChangeType.ADD_LEARNER if member.is_learner else ConfChangeType.ADD_VOTER
            member_id, record = member.id, Member(id=member.id, peer_address=member.peer_address,
                                                  api_address=member.api_address, is_learner=member.is_learner)
        else:
            member_id = getattr(request, kind)
            if member_id not in voters and member_id not in learners:
                raise errors.MemberNotFound()
            addresses = self.members[member_id]
            record = Member(id=member_id, peer_address=addresses.peer, api_address=addresses.api)
            if kind == "member_promote":
                if member_id not in learners:
                    raise errors.MemberNotLearner()
                progress = status.progress.get(member_id)
                if progress is None or progress.match < status.commit * LEARNER_READY_FRACTION:
                    raise errors.LearnerNotReady()
                change_type = ConfChangeType.ADD_VOTER
            else:
                change_type = ConfChangeType.REMOVE
        proposal_id = self._next_proposal_id
        self._next_proposal_id += 1
        context = MemberChange(proposal_id=proposal_id, member=record).SerializeToString()
        future = asyncio.get_running_loop().create_future()
        self._waiting_writes[proposal_id] = future
        try:
            self.node.propose_conf_change(ConfChange(change_type, member_id, context))
        except ProposalDropped:
            self._waiting_writes.pop(proposal_id, None)
            self.metrics.proposals_failed += 1
            raise errors.RequestTimeout() from None  # another change is pending: etcd times out too
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), WRITE_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            self._waiting_writes.pop(proposal_id, None)
            self.metrics.proposals_failed += 1
            return errors.RequestTimeout()

    async def _lease_query(self, request: ShardRequest, kind: str):
        """A keep-alive, time-to-live or list, answered by the meta group's leader from its deadlines."""
        self._check_leader()
        if self.lease_keeper is None:
            raise errors.Reported("INVALID_ARGUMENT", f"tessera: group {self.config.group_id} keeps no leases")
        try:
            await asyncio.wait_for(self._leases_ready.wait(), READ_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            return errors.RequestTimeout()
        self._check_leader()  # it may have lost leadership while it caught up
        header = ResponseHeader(revision=self.store.revision)
        keeper, now = self.lease_keeper, time.monotonic()
        if kind == "lease_keep_alive":
            lease_id = request.lease_keep_alive
            ttl = keeper.renew(lease_id, now)
            clear = keeper.checkpoint_to_clear(lease_id) if ttl else None
            if clear is not None:  # answered once the cleared record is committed, as etcd does
                await self._write(ShardRequest(txn=_lease_record_txn([clear])))
            return LeaseKeepAliveResponse(header=header, ID=lease_id, TTL=ttl)
        if kind == "lease_time_to_live":
            lease_id = request.lease_time_to_live
            left = keeper.time_to_live(lease_id, now)
            if left is None:
                return LeaseTimeToLiveResponse(header=header, ID=lease_id, TTL=-1)
            return LeaseTimeToLiveResponse(header=header, ID=lease_id, TTL=left[0], grantedTTL=left[1])
        return LeaseLeasesResponse(header=header, leases=[LeaseStatus(ID=lease) for lease in keeper.leases()])

    def _load_leases(self) -> None:
        start, end = prefix_range(LEASES_PREFIX)
        self.lease_keeper.load(self.store.range(RangeRequest(key=start, range_end=end)).kvs)

    async def _keep_leases(self) -> None:
        """The meta leader's lessor: mark expired leases revoked; checkpoint remaining TTLs, and
        compact the meta group's history behind them.

        All are ordinary writes to lease records, proposed like a client's and guarded so
        that none brings back a record a revoke marked or deleted meanwhile. The meta group
        is compacted at the revision of the checkpoint before the last: its records are all
        current state, and without it every checkpoint would add a version of every lease
        for good (routers that watched from before reload the records).
        """
        keeper = self.lease_keeper
        last_checkpoint = time.monotonic()
        compact_at = 0  # the meta group's revision at the last checkpoint
        while True:
            await asyncio.sleep(LEASE_CHECK_SECONDS)
            if self.role != Role.LEADER or not self._leases_ready.is_set():
                last_checkpoint = time.monotonic()
                continue
            now = time.monotonic()
            expired = keeper.expired(now)
            for write in expired:
                log.info("group %d member %d: lease %x expired", self.config.group_id, self.config.member_id,
                         write.record.id)
            writes = list(expired)
            if now - last_checkpoint >= self.config.lease_checkpoint_interval_seconds:
                last_checkpoint = now
                writes += keeper.checkpoints(now)
                if self.store.compacted_revision < compact_at:
                    self._queue_proposal(ShardRequest(compaction=CompactionRequest(revision=compact_at)))
                compact_at = self.store.revision
            for start in range(0, len(writes), LEASE_CHECKPOINT_BATCH):
                self._queue_proposal(ShardRequest(txn=_lease_record_txn(writes[start:start + LEASE_CHECKPOINT_BATCH])))

    async def _move_leader(self, target: int):
        """Hand leadership to a caught-up voter (raft's TimeoutNow), as etcd's MoveLeader."""
        self._check_leader()
        status = self.node.status()
        if target == self.config.member_id or target not in status.conf_state.voters:
            raise errors.BadLeaderTransferee()
        self.node.transfer_leader(target)
        self._wake.set()
        deadline = asyncio.get_running_loop().time() + WRITE_TIMEOUT_SECONDS
        while self.leader_id != target:
            if asyncio.get_running_loop().time() > deadline:
                return errors.RequestTimeout()
            self._leader_changed.clear()
            try:
                await asyncio.wait_for(self._leader_changed.wait(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                pass
        return MoveLeaderResponse(header=ResponseHeader(revision=self.store.revision))

    async def _linearizable_read(self, request: ShardRequest):
        self._check_leader()
        future = asyncio.get_running_loop().create_future()
        self._read_queue.append(_PendingRead(request, future))
        self._wake.set()
        try:
            return await asyncio.wait_for(asyncio.shield(future), READ_TIMEOUT_SECONDS)
        except asyncio.TimeoutError:
            return errors.RequestTimeout()

    def status(self) -> StatusResponse:
        status = self.node.status()
        return StatusResponse(
            group_id=self.config.group_id, member_id=self.config.member_id, leader_id=status.lead,
            term=status.term, commit_index=status.commit, applied_index=self.store.applied_index,
            revision=self.store.revision, compacted_revision=self.store.compacted_revision,
            db_size=self.store.db_size_bytes(), db_size_in_use=self.store.db_size_in_use_bytes(),
            alarms=[{"memberID": member, "alarm": alarm} for member, alarm in sorted(self.store.alarms)],
            wal_fsyncs=self.wal.fsync_count,
        )

    # --- observability ------------------------------------------------------------------

    def _gauges(self) -> Gauges:
        return Gauges(
            has_leader=bool(self.leader_id), is_leader=self.role == Role.LEADER,
            committed_index=self._commit_index, applied_index=self.store.applied_index,
            proposals_pending=len(self._waiting_writes),
            db_size_bytes=self.store.db_size_bytes(), db_size_in_use_bytes=self.store.db_size_in_use_bytes(),
            peer_sent_bytes=dict(self.transport.bytes_sent), peer_received_bytes=dict(self.transport.bytes_received),
        )

    def _count_keys(self) -> int:
        """Live keys, counted in full (at start and after a snapshot; applies keep the count after)."""
        return self.store.range(RangeRequest(key=b"\0", range_end=b"\0", count_only=True)).count

    async def health(self, serializable: bool, excluded_alarms: set[str]) -> tuple[bool, str]:
        """etcd's /health verdict and reason: an alarm, no leader, or a read that fails, in that order.

        The read is etcd's too: linearizable on the leader (it confirms a quorum
        still follows), local otherwise, since a follower's linearizable reads
        are the leader's to serve.
        """
        for _, alarm in sorted(self.store.alarms):
            name = AlarmType.Name(alarm)
            if name not in excluded_alarms:
                return False, f"ALARM {name}"
        if not serializable and not self.leader_id:
            return False, "RAFT NO LEADER"
        request = ShardRequest(range=RangeRequest(key=b"\0", keys_only=True, limit=1, serializable=serializable))
        if serializable or self.role != Role.LEADER:
            outcome = self._local_range(request)
        else:
            try:
                outcome = await self._linearizable_read(request)
            except errors.EtcdError as error:
                outcome = error
        if isinstance(outcome, errors.EtcdError):
            return False, f"RANGE ERROR:{outcome.message}"
        return True, ""


def _lease_record_txn(writes: list[RecordWrite]) -> TxnRequest:
    """One transaction putting each record over the version it names, or over any that exists."""
    def guard(write: RecordWrite) -> Compare:
        key = lease_key(write.record.id)
        if write.mod_revision:
            return Compare(key=key, target=Compare.MOD, result=Compare.EQUAL, mod_revision=write.mod_revision)
        return Compare(key=key, target=Compare.CREATE, result=Compare.GREATER, create_revision=0)

    return TxnRequest(success=[
        RequestOp(request_txn=TxnRequest(compare=[guard(write)], success=[RequestOp(request_put=PutRequest(
            key=lease_key(write.record.id), value=write.record.SerializeToString()))]))
        for write in writes])


async def run_until_stopped(config: ReplicaConfig, parent_pid: int | None = None) -> None:
    """Run a replica until cancelled, or until `parent_pid` is gone (tests' servers stop themselves).

    If the raft loop fails, the error propagates and the process exits: a broken
    invariant is answered by restarting from disk, never by limping on.
    """
    replica = Replica(config)
    await replica.start()
    failure = asyncio.get_running_loop().create_task(replica.failed())
    try:
        while parent_pid is None or _alive(parent_pid):
            done, _ = await asyncio.wait([failure], timeout=0.5)
            if done:
                failure.result()
    finally:
        failure.cancel()
        await replica.stop()


def _alive(pid: int) -> bool:
    """Whether the process runs: a zombie (dead, not yet reaped by its parent) does not."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
