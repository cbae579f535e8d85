"""The raft driver of one replica: it persists, sends and applies, around one coroutine.

Theory of operation. Everything runs on one asyncio loop, around `_drive`,
which owns the raft node. Other coroutines only queue work and wake it: the
ticker (a tick every heartbeat interval), the peer transport (raft messages
received), and the request service (shards/shard_service.py: proposals and
linearizable reads; a write wakes it only if it can be proposed at once).
Each turn of `_drive`:

  1. steps the raft messages received and the ticks due;
  2. proposes every write queued since the last batch was committed, in one
     batch (a move's bulk writes after the clients', a bounded share of them
     per batch), and asks one ReadIndex for every linearizable read queued (they
     share a round);
  3. handles the Ready, in the order raft requires: send what may go before
     the local write (a leader's appends), append entries and hard state to
     the WAL with one fdatasync (on the loop, as etcd's raft loop does: requests
     that come meanwhile wait in the socket buffers and make the next turn's
     batch, and no thread handoff is paid per batch), send what had
     to wait for it (votes, append acknowledgements), apply committed entries
     to the MVCC store in one LMDB transaction (no fsync: the WAL is the
     durability point), answer the writes applied and the reads now
     servable, and advance;
  4. adopts the store's durable point once a thread has flushed it, and starts
     the next when due (shards/mvcc.py): a restart opens the store there and
     raft hands out the entries after it again;
  5. removes one bounded batch of compacted history, if a compaction is pending.

An idle group costs nothing: once a leader has had nothing to do for
`QUIESCE_AFTER_TICKS` ticks, every follower holding its whole log, committed
(each has answered a heartbeat that told it so), it sends them QUIESCE and
all stop ticking: no heartbeats, no election timers (CockroachDB quiesces
idle ranges; TiKV hibernates regions). Raft's safety does not depend on ticks,
only its liveness: any raft message but QUIESCE (or the answer to a
heartbeat sent before it), a proposal or read on the
leader, and on a follower a request for the leader or a status (what a
router asks when it cannot reach the leader) wakes a replica, and a follower
that wakes asks the leader to wake too. A follower that cannot quiesce (its
log or commit differ) answers with that request at once. A quiet leader that
dies is replaced once a router, a client or its restarted process wakes a
follower: after an election timeout, as any leader's death.

A leader keeps one batch in flight: it proposes the next once everything it
appended is committed (durable on a quorum, itself included), so under load
a batch is what queued while the previous one was persisted and replicated.
Under load it also holds a short batch a moment for more. When a round
commits, the leader still holds its writes unanswered, and those queued
since: that many clients at least are writing to it, and the ones answered
now will write again. If they number BATCH_ENTRIES_TARGET / 2 or more, the
next batch waits until as many writes are queued (BATCH_ENTRIES_TARGET at
most) or `batch_window_ms` has passed, whichever comes first, even if none
is queued yet. A round's WAL fsyncs, appends and acknowledgements are then
shared by more writes, which on a busy host leaves more CPU to everything
else; a lone client, or a few, never wait. While a batch is held, the commit
index its predecessor's acknowledgements advanced waits to go out with it (or
with the window's end): followers apply the round a little later, and a round
costs each of them one append and one acknowledgement, not two.
A prefix moving in or out (router/moves.py) sends its imports and drops as
bulk writes, a megabyte each: they queue apart, and each batch takes the
clients' writes first and then bulk writes up to BULK_BYTES_PER_BATCH (one at
least), so a client's write never waits behind more than one batch's share
of a move, and the move still goes on under any client load.

A write travels in its raft entry as ShardRequest bytes, under an id this
replica chose; applying it answers whoever waits on that id here. A leader
that loses leadership answers its waiting writes "leader changed": they may
still be committed by the next leader, so that answer means "unknown
outcome", and the router does not retry it.

Snapshots, as etcd takes them. Every `snapshot_count` applied entries the
driver makes its store durable up to there, records a snapshot marker in the
WAL, keeps `snapshot_catchup_entries` entries in memory for followers a little
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
import collections
import logging
import random
import secrets
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from shards.durable import write_file_durably
from shards.fault_control import STORE_APPLIED, WAL_SYNCED, failpoint
from shards.metrics import ReplicaMetrics
from native import codec
from native.codec import varint
from shards.mvcc import ChangeEvent, MvccStore, PlainPut, Proposal, RemoveMember, SetMember
from shards.raft import Config, ProposalDropped, RawNode, Ready, Role
from shards.raft.messages import ConfChange, ConfChangeType, Message, MessageType
from shards.raft.storage import Entry, EntryType, HardState, Snapshot, SnapshotMeta
from shards.requests import REQUEST_KINDS
from shards.transport import PeerTransport
from shards.wal import WriteAheadLog
from shards.watch import WatchHub
from tessera.api import errors
from tessera.api.internal_pb2 import Member, MemberChange, MemberListResponse, ShardRequest, StatusResponse
from tessera.api.rpc_pb2 import NOSPACE, AlarmRequest, RangeRequest

if TYPE_CHECKING:
    from shards.replica import ReplicaConfig

log = logging.getLogger("tessera.replica")

QUIESCE_AFTER_TICKS = 3  # idle ticks (heartbeat intervals) before a leader quiets its group
# How long a write may wait for its entry to apply: etcd's request timeout
# (5 s) plus an election, so a leader change can complete before giving up.
WRITE_TIMEOUT_SECONDS = 7.0
READ_TIMEOUT_SECONDS = 7.0
DEADLINE_SWEEP_SECONDS = 0.1  # how late a write or read past its timeout may be answered
# A batch's share of a move's bulk writes, after the clients' writes: its WAL write, replication
# and apply are what a client's write in the same batch waits for beyond its own.
BULK_BYTES_PER_BATCH = 1024 * 1024
# Under load, the most writes a round is held for (see the module's docstring).
BATCH_ENTRIES_TARGET = 64
# ... and for at most this long by default: under load on this 2-core host a round's clients
# take 5 to 10 ms to come back through the router.
BATCH_WINDOW_MS = 10.0


_PROPOSAL_ID_TAG = b"\x08"  # ShardRequest.id, field 1, varint
_NO_LEASES: frozenset = frozenset()


def _resolver(future: asyncio.Future) -> Callable[[object], None]:
    """An outcome callback that resolves `future` (unless its waiter gave up and cancelled it)."""
    def resolve(outcome) -> None:
        if not future.done():
            future.set_result(outcome)
    return resolve


class ReplicaStateError(Exception):
    """The data directory contradicts itself; starting would risk raft's guarantees."""


@dataclass(frozen=True)
class MemberAddresses:
    peer: str  # raft traffic between replicas
    api: str  # the internal API routers use


@dataclass
class _PendingRead:
    request: ShardRequest
    future: asyncio.Future


@dataclass
class _ReadRound:
    """Linearizable reads that share one ReadIndex."""

    reads: list[_PendingRead] = field(default_factory=list)
    index: int | None = None  # known once raft confirms leadership


class StateObserver:
    """Told what the raft driver changed, on its loop; this one does nothing with it."""

    def applied(self, events: list[ChangeEvent]) -> None:
        """A batch of committed entries was applied, with these changes."""

    def role_changed(self, role: Role) -> None:
        """This replica became leader, or stopped being one."""

    def snapshot_installed(self) -> None:
        """The store was replaced by a leader's snapshot."""


class RaftDriver:
    def __init__(self, config: ReplicaConfig, wal: WriteAheadLog, store: MvccStore, metrics: ReplicaMetrics):
        self.config = config
        self.wal = wal
        self.store = store
        self.metrics = metrics
        self._incoming_snapshot = Path(config.data_dir) / "snapshot.mdb"
        self._finish_snapshot_install()
        self.metrics.keys = self._count_keys()
        durable_last = max(wal.storage.last_index(), wal.storage.snapshot().meta.index)
        if store.applied_index > durable_last:
            # Entries are applied only after the WAL made them durable: the disk lost fsynced data.
            raise ReplicaStateError(
                f"the store has applied raft index {store.applied_index} but the write-ahead "
                f"log in {config.data_dir / 'wal'} only holds entries up to {durable_last}: "
                f"it lost data that was synced; this replica must be replaced, not restarted"
            )
        log.info("group %d member %d: the store opened at its durable point, index %d; the WAL holds entries "
                 "to %d", config.group_id, config.member_id, store.applied_index, durable_last)
        new = wal.storage.last_index() == 0 and not wal.storage.snapshot().meta.index
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
                applied_index=wal.storage.snapshot().meta.index,
            ),
            wal.storage,
            random.Random(secrets.randbits(64)),
        )
        # Where to reach each member: what was applied (the store), over what we were told.
        self.members = dict(config.members)
        for record in store.members().values():
            member = Member.FromString(record)
            self.members[member.id] = MemberAddresses(member.peer_address, member.api_address)
        self.transport = PeerTransport(config.member_id, config.listen_peer or config.members[config.member_id].peer,
                                       self.receive, on_snapshot_sent=self._snapshot_sent, tls=config.peer_tls)
        self.watch_hub = WatchHub(
            store, progress_notify_interval_seconds=config.watch_progress_notify_interval_seconds)
        self.leader_id = 0
        self.role = Role.FOLLOWER
        self.observer = StateObserver()  # the meta group's lease host, elsewhere one that does nothing
        self._wake = asyncio.Event()
        self._leader_changed = asyncio.Event()  # set whenever who leads may have changed
        self._compaction_finished = asyncio.Event()  # set when compacted history is all removed
        self._inbox: list[Message] = []
        self._heartbeats_sent: dict[int, float] = {}  # peer -> when the oldest unanswered heartbeat left
        self._ticks_due = 0
        self._writes: list[tuple[int, bytes]] = []  # (proposal id, entry data) to propose
        self._bulk_writes: collections.deque[tuple[int, bytes]] = collections.deque()  # the same, bulk
        # proposal id -> what to call with the write's outcome, once (see `submit`)
        self._waiting_writes: dict[int, Callable[[object], None]] = {}
        # Writes and reads waiting, oldest first: (deadline, proposal id) for a write,
        # (deadline, future) for a read.
        self._deadlines: collections.deque[tuple[float, int | asyncio.Future]] = collections.deque()
        self._deadline_sweep: asyncio.TimerHandle | None = None
        self._read_queue: list[_PendingRead] = []
        self._read_rounds: dict[bytes, _ReadRound] = {}
        self._next_proposal_id = secrets.randbits(62)
        self.commit_index = store.applied_index
        self._appended_index = 0  # the last entry this replica appended to its log
        # A held batch (see _holding_for_more): its window's timer, whether that has fired, and how
        # many writes it waits for. The timer's firing ends the window: no clock is compared with it.
        self._batch_hold: asyncio.TimerHandle | None = None
        self._batch_hold_over = False
        self._batch_target = 0
        self._snapshot_index = wal.storage.snapshot().meta.index
        self._store_flush: Future | None = None  # the store's durable point being flushed
        # Quiescence: while quiet the ticker waits on _ticking, and nothing ticks.
        self.quiesced = False
        self._ticking = asyncio.Event()
        self._ticking.set()
        self._idle_ticks = 0  # a leader's ticks in a row with nothing to do
        self._answered_idle: set[int] = set()  # followers whose heartbeat answer came in meanwhile

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

    # --- life cycle ------------------------------------------------------------------

    async def start(self) -> list[asyncio.Task]:
        """Start the transport, replay the log; returns the ticker's and the raft loop's tasks."""
        await self.transport.start()
        for member_id, addresses in self.members.items():
            if member_id != self.config.member_id:
                self.transport.set_peer(member_id, addresses.peer)
        self.watch_hub.start()
        self._replay()
        loop = asyncio.get_running_loop()
        return [loop.create_task(self._tick()), loop.create_task(self._drive())]

    def _replay(self) -> None:
        """Apply what the log committed before this start, before the replica answers anyone.

        The core starts from the last snapshot's configuration (none before the first), and the
        conf changes after it are only in the log: until they are applied again, member_list
        would answer from that configuration, an empty one on a group that never took a snapshot.
        etcd too recovers its members before it serves. The raft loop would only get to them at
        its first tick or message."""
        while self.node.has_ready():
            self._handle_ready(self.node.ready())

    async def stop(self) -> None:
        """After the raft loop's tasks are cancelled."""
        await self.transport.stop()
        self.watch_hub.stop()
        self._fail_waiting(errors.Stopped())
        if self._deadline_sweep is not None:
            self._deadline_sweep.cancel()
        self.wal.close()
        self.store.close()

    # --- inputs ----------------------------------------------------------------------

    def receive(self, messages: list[Message]) -> None:
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
            if not self._ticking.is_set():
                await self._ticking.wait()
                next_tick = loop.time() + interval  # a whole interval after waking
                continue
            next_tick += interval
            self._ticks_due += 1
            self._wake.set()

    # --- what the request service asks ------------------------------------------------

    def check_leader(self) -> None:
        if self.role != Role.LEADER:
            self.unquiesce()  # asked for the leader's work: the leader may be gone
            raise errors.NotLeader() if self.leader_id else errors.NoLeader()

    def queue_proposal(self, request: ShardRequest) -> None:
        """Queue a request for the next proposal batch; nobody waits for its outcome."""
        self._queue_writes([(request.SerializeToString(), None)], bulk=False)

    def _queue_writes(self, writes: list[tuple[bytes, Callable[[object], None] | None]], bulk: bool) -> None:
        """Queue encoded requests for the next batch, each under a new proposal id, and whoever
        waits for each (`on_outcome`, or None) until it is applied or WRITE_TIMEOUT_SECONDS pass."""
        # An entry is the request's bytes with the proposal id appended (protobuf keeps a
        # scalar field's last value): a request that came on the wire goes as it came.
        self.unquiesce()
        queue, waiting, deadlines = self._bulk_writes if bulk else self._writes, self._waiting_writes, self._deadlines
        deadline = time.monotonic() + WRITE_TIMEOUT_SECONDS
        proposal_id = self._next_proposal_id
        for encoded, on_outcome in writes:
            queue.append((proposal_id, encoded + _PROPOSAL_ID_TAG + varint(proposal_id)))
            if on_outcome is not None:
                waiting[proposal_id] = on_outcome
                deadlines.append((deadline, proposal_id))
            proposal_id += 1
        self._next_proposal_id = proposal_id
        self._arm_deadline_sweep()
        # Woken only if the writes can be proposed now: while a batch is in flight, the turn that
        # commits it proposes what queued meanwhile, and a held batch waits for its target.
        if self._batch_committed() and (self._batch_hold is None or len(self._writes) >= self._batch_target):
            self._wake.set()

    def submit(self, kind: str, encoded: bytes, on_outcome: Callable[[object], None]) -> None:
        """Propose a write, an encoded ShardRequest of this kind; `on_outcome` gets, once,
        the outcome of applying it or the error that ended the wait.

        Refused (raised here) as etcd refuses it: not the leader, too many entries
        committed but not applied, or (for what adds data) past the quota.
        """
        self._check_submit(kind, len(encoded))
        self._queue_writes([(encoded, on_outcome)], REQUEST_KINDS[kind].bulk)

    def submit_puts(self, puts: list[tuple[bytes, Callable[[object], None]]]) -> None:
        """`submit` for puts that arrived together, (encoded, on_outcome) each: checked once, as the
        largest of them would be alone, and queued in one go; refused together if refused."""
        if puts:
            self._check_submit("put", max(len(encoded) for encoded, _ in puts))
            self._queue_writes(puts, bulk=False)

    def _check_submit(self, kind: str, size: int) -> None:
        self.check_leader()
        if self.commit_index - self.store.applied_index > self.config.max_pending_applies:
            raise errors.TooManyRequests()
        if kind in ("put", "txn") and self.store.quota_exceeded(size):
            # As etcd: the alarm goes through raft, so every replica refuses the same writes.
            if not self.store.space_exceeded:
                self.queue_proposal(ShardRequest(alarm=AlarmRequest(
                    action=AlarmRequest.ACTIVATE, memberID=self.config.member_id, alarm=NOSPACE)))
            raise errors.NoSpace()

    async def propose(self, request: ShardRequest):
        """`submit`, awaited: the outcome, or the error that ended the wait."""
        future = asyncio.get_running_loop().create_future()
        self.submit(request.WhichOneof("request"), request.SerializeToString(), _resolver(future))
        return await future

    async def propose_conf_change(self, change_type: ConfChangeType, member_id: int, record: Member):
        """The member list once the change is applied (one change at a time, as raft allows)."""
        self.unquiesce()
        proposal_id = self._next_proposal_id
        self._next_proposal_id += 1
        context = MemberChange(proposal_id=proposal_id, member=record).SerializeToString()
        try:
            self.node.propose_conf_change(ConfChange(change_type, member_id, context))
        except ProposalDropped:
            self.metrics.proposals_failed += 1
            raise errors.RequestTimeout() from None  # another change is pending: etcd times out too
        self._wake.set()
        future = asyncio.get_running_loop().create_future()
        self._wait_for(proposal_id, _resolver(future))
        return await future

    def _wait_for(self, proposal_id: int, on_outcome: Callable[[object], None]) -> None:
        self._waiting_writes[proposal_id] = on_outcome
        self._add_deadline(WRITE_TIMEOUT_SECONDS, proposal_id)

    async def read(self, request: ShardRequest):
        """A linearizable read: served once the applied index reaches a confirmed ReadIndex."""
        self.check_leader()
        self.unquiesce()
        future = asyncio.get_running_loop().create_future()
        self._add_deadline(READ_TIMEOUT_SECONDS, future)
        self._read_queue.append(_PendingRead(request, future))
        self._wake.set()
        return await future

    def _add_deadline(self, timeout: float, waiting: int | asyncio.Future) -> None:
        """A write's proposal id or a read's future gets "request timed out" if it has no outcome in `timeout`.

        One sweep ends them all, in deadline order: no timer, no task per request.
        """
        self._deadlines.append((time.monotonic() + timeout, waiting))
        self._arm_deadline_sweep()

    def _arm_deadline_sweep(self) -> None:
        if self._deadline_sweep is None and self._deadlines:
            self._deadline_sweep = asyncio.get_running_loop().call_later(DEADLINE_SWEEP_SECONDS,
                                                                         self._sweep_deadlines)

    def _sweep_deadlines(self) -> None:
        # Deadlines are set and compared in time.monotonic() alone; the sweep's timer only says when to look.
        now, deadlines, writes = time.monotonic(), self._deadlines, self._waiting_writes
        while deadlines:
            deadline, waiting = deadlines[0]
            if type(waiting) is int:
                if waiting in writes and deadline > now:
                    break
                if waiting in writes:
                    self.metrics.proposals_failed += 1
                    self._answer_write(waiting, errors.RequestTimeout())
            else:
                if not waiting.done() and deadline > now:
                    break
                if not waiting.done():
                    waiting.set_result(errors.RequestTimeout())
            deadlines.popleft()
        self._deadline_sweep = (asyncio.get_running_loop().call_later(DEADLINE_SWEEP_SECONDS, self._sweep_deadlines)
                                if deadlines else None)

    def local_range(self, request: ShardRequest):
        try:
            return self.store.range(request.range, counted=not request.uncounted)
        except errors.EtcdError as error:
            return error

    async def transfer_leader(self, target: int) -> bool:
        """Hand leadership to `target` (raft's TimeoutNow); whether it leads within the write timeout."""
        self.unquiesce()
        self.node.transfer_leader(target)
        self._wake.set()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WRITE_TIMEOUT_SECONDS
        while self.leader_id != target:
            if loop.time() > deadline:
                return False
            self._leader_changed.clear()
            try:
                await asyncio.wait_for(self._leader_changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                pass
        return True

    async def compaction_removed(self) -> None:
        """Returns once the compacted history is all removed here."""
        while self.store.compaction_pending:
            self._compaction_finished.clear()
            await self._compaction_finished.wait()

    def member_list(self) -> MemberListResponse:
        conf_state = self.node.status().conf_state
        return MemberListResponse(members=[
            Member(id=member_id, peer_address=self.members[member_id].peer,
                   api_address=self.members[member_id].api, is_learner=member_id in conf_state.learners)
            for member_id in sorted((*conf_state.voters, *conf_state.learners))
            if member_id in self.members
        ])

    def status(self) -> StatusResponse:
        # A follower is asked when a router cannot reach the leader: it ticks again, so a group
        # whose leader is gone elects another. A leader is asked every few seconds by every router
        # (router/core.py's track_leaders): waking it would keep idle groups from ever going quiet.
        # A quiet leader cut off from its group steps down once a request wakes it.
        if self.role != Role.LEADER:
            self.unquiesce()
        status = self.node.status()
        return StatusResponse(
            group_id=self.config.group_id, member_id=self.config.member_id, leader_id=status.lead,
            term=status.term, commit_index=status.commit, applied_index=self.store.applied_index,
            revision=self.store.revision, compacted_revision=self.store.compacted_revision,
            db_size=self.store.db_size_bytes(), db_size_in_use=self.store.db_size_in_use_bytes(),
            alarms=[{"memberID": member, "alarm": alarm} for member, alarm in sorted(self.store.alarms)],
            wal_fsyncs=self.wal.fsync_count,
        )

    @property
    def proposals_pending(self) -> int:
        return len(self._waiting_writes)

    # --- the raft loop -----------------------------------------------------------------

    async def _drive(self) -> None:
        node = self.node
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            ticks, self._ticks_due = self._ticks_due, 0
            for _ in range(ticks):
                node.tick()
            inbox, self._inbox = self._inbox, []
            for message in inbox:
                if message.type == MessageType.QUIESCE:
                    self._quiesce_asked(message)
                    continue
                if message.type == MessageType.HEARTBEAT_RESP:
                    self._answered_idle.add(message.frm)  # answers the leader's last heartbeats: no news
                elif self.quiesced:
                    self.unquiesce()
                node.step(message)
            self._propose_queued()
            while node.has_ready():
                self._handle_ready(node.ready())
            if ticks and self.role == Role.LEADER:
                self._count_idle_ticks(ticks)
            if (self._writes or self._bulk_writes) and self._batch_committed() and self._batch_hold is None:
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

    # --- quiescence ------------------------------------------------------------------

    def _count_idle_ticks(self, ticks: int) -> None:
        """On the leader, after a turn with ticks: quiet the group once it has been idle long enough."""
        status = self.node.status()
        last = self.wal.storage.last_index()
        idle = (not (self._writes or self._bulk_writes or self._waiting_writes
                     or self._read_queue or self._read_rounds)
                and status.commit == last and not status.lead_transferee
                and all(progress.match == last for progress in status.progress.values()))
        if not idle:
            self._idle_ticks = 0
            return
        if not self._idle_ticks:
            self._answered_idle.clear()  # answers to heartbeats that carry this commit count from here
        self._idle_ticks += ticks
        followers = set(status.progress) - {self.config.member_id}
        if self._idle_ticks >= QUIESCE_AFTER_TICKS and followers <= self._answered_idle:
            self.transport.send([Message(MessageType.QUIESCE, to=follower, frm=self.config.member_id,
                                         term=status.term, commit=last) for follower in followers])
            self._set_quiesced()

    def _quiesce_asked(self, message: Message) -> None:
        """QUIESCE from the leader: go quiet if this log and commit are the leader's; else wake it."""
        if message.reject:  # a member asks the leader to wake
            self.unquiesce()
            return
        status = self.node.status()
        if (message.term == status.term and message.frm == status.lead
                and status.commit == message.commit == self.wal.storage.last_index()):
            self._set_quiesced()
        else:
            self._ask_leader_to_wake(message.frm)

    def _set_quiesced(self) -> None:
        self.quiesced = True
        self._ticking.clear()
        self._idle_ticks = 0

    def unquiesce(self) -> None:
        """Tick again; a leader heartbeats at once, a follower asks the leader to wake as well."""
        if not self.quiesced:
            return
        self.quiesced = False
        self._ticking.set()
        if self.role == Role.LEADER:
            # The answers mark each follower active before check-quorum looks at the next timeout.
            self.node.heartbeat()
        elif self.leader_id:
            self._ask_leader_to_wake(self.leader_id)
        self._wake.set()

    def _ask_leader_to_wake(self, leader_id: int) -> None:
        self.transport.send([Message(MessageType.QUIESCE, to=leader_id, frm=self.config.member_id,
                                     term=self.node.status().term, reject=True)])

    def _batch_committed(self) -> bool:
        """Whether everything this leader appended is committed (durable on a quorum, itself included).

        Raft's own commit index, not the last Ready's: in the turn whose acknowledgements commit a
        batch, the next one is proposed, and one append per follower carries both."""
        return self.node.committed >= self._appended_index

    def _propose_queued(self) -> None:
        # One batch in flight at a time: under load, the next batch is everything that queued
        # while the last was persisted and replicated, so WAL fsyncs and appends carry many entries.
        if self._batch_committed() and not self._holding_for_more() and (self._writes or self._bulk_writes):
            self._end_batch_hold()
            writes, self._writes = self._writes, []
            writes += self._bulk_share()
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

    def _holding_for_more(self) -> bool:
        """Whether the committed round's successor waits for more writes: under load, until as many
        are queued as this leader held unanswered when the hold began (BATCH_ENTRIES_TARGET at most),
        or the window the hold opened ends.

        Asked in the turn that commits a round even if nothing is queued yet: under load most of
        the clients are then on their way back to this leader, and a batch proposed as soon as a
        few arrive would leave the rest to wait a whole round for the next."""
        queued = len(self._writes)
        if queued >= BATCH_ENTRIES_TARGET or not self.config.batch_window_ms:
            return False
        if self._batch_hold is None:
            # The round just committed is still unanswered here: its clients, and those queued,
            # are writing to this leader, and the ones answered now come back.
            self._batch_target = min(BATCH_ENTRIES_TARGET, len(self._waiting_writes))
            if self._batch_target < BATCH_ENTRIES_TARGET // 2:
                return False
            self._batch_hold = asyncio.get_running_loop().call_later(self.config.batch_window_ms / 1000,
                                                                     self._batch_window_ended)
            self.node.defer_commit_broadcast(True)  # the round's commit index goes with the held batch
        if self._batch_hold_over:
            self._end_batch_hold()  # what queued goes now, and a write that comes later at once
            return False
        return queued < self._batch_target

    def _batch_window_ended(self) -> None:
        self._batch_hold_over = True
        self._wake.set()

    def _end_batch_hold(self) -> None:
        if self._batch_hold is not None:
            self._batch_hold.cancel()
            self._batch_hold = None
            self.node.defer_commit_broadcast(False)
        self._batch_hold_over = False

    def _bulk_share(self) -> list[tuple[int, bytes]]:
        """The bulk writes the next batch takes after the clients': one, then as many more as fit
        BULK_BYTES_PER_BATCH."""
        share, size, queued = [], 0, self._bulk_writes
        while queued and (not share or size + len(queued[0][1]) <= BULK_BYTES_PER_BATCH):
            size += len(queued[0][1])
            share.append(queued.popleft())
        return share

    def _handle_ready(self, ready: Ready) -> None:
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
                self.wal.sync()
                failpoint(WAL_SYNCED)
        if ready.hard_state is not None:
            self.commit_index = ready.hard_state.commit
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
        self._snapshot_index = snapshot.meta.index
        self.observer.snapshot_installed()
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
        waiting: dict[int, int] = {}  # position in proposals -> proposal id of a write waited for here
        waiting_writes = self._waiting_writes
        taken, count = 0, len(entries)
        while True:
            # The common case, runs of plain puts, read in native code without protobuf.
            taken = codec.gather_plain_puts(entries, taken, proposals, waiting, waiting_writes,
                                            Proposal, PlainPut, _NO_LEASES)
            if taken == count:
                break
            entry = entries[taken]
            taken += 1
            if entry.type == EntryType.CONF_CHANGE:
                proposals.append(Proposal(entry.index, 0, (self._apply_member_change(entry.data),)))
                continue
            if not entry.data:  # a new leader's empty entry
                proposals.append(Proposal(entry.index, 0, ()))
                continue
            request = ShardRequest.FromString(entry.data)
            kind = request.WhichOneof("request")
            respond = request.id in waiting_writes
            if respond:
                waiting[len(proposals)] = request.id
            unknown_leases = request.unknown_leases
            proposals.append(Proposal(entry.index, request.floor, (REQUEST_KINDS[kind].to_store(request),),
                                      frozenset(unknown_leases) if unknown_leases else frozenset(), respond))
        started = time.perf_counter()
        result = self.store.apply(proposals)
        failpoint(STORE_APPLIED)
        self.metrics.observe_apply(time.perf_counter() - started, result.commit_seconds)
        if result.events:
            self.metrics.count_changes(result.events)
            self.watch_hub.publish(result.events)
        self.observer.applied(result.events)
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

    def _leadership_changed(self, leader_id: int, role: Role) -> None:
        was_leader = self.role == Role.LEADER
        if leader_id and leader_id != self.leader_id:  # etcd counts a new leader, not the loss of one
            self.metrics.leader_changes += 1
        self.leader_id, self.role = leader_id, role
        self._leader_changed.set()
        if (role == Role.LEADER) != was_leader:
            self.observer.role_changed(role)
        if was_leader and role != Role.LEADER:
            # Writes queued but not proposed are dropped with their waiters' answer: proposed now,
            # a follower would forward them to the new leader, and a move's import or drop, sent
            # again by its mover meanwhile, would land after the steps that came since.
            self._writes.clear()
            self._bulk_writes.clear()
            self._end_batch_hold()
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
        on_outcome = self._waiting_writes.pop(proposal_id, None)
        if on_outcome is not None:
            on_outcome(outcome)

    def _serve_read_rounds(self) -> None:
        applied = self.store.applied_index
        for context, round_ in list(self._read_rounds.items()):
            if round_.index is not None and round_.index <= applied:
                del self._read_rounds[context]
                for read in round_.reads:
                    if not read.future.done():
                        read.future.set_result(self.local_range(read.request))

    def _finish_round(self, context: bytes, outcome) -> None:
        round_ = self._read_rounds.pop(context, None)
        for read in round_.reads if round_ else ():
            if not read.future.done():
                read.future.set_result(outcome)

    def _count_keys(self) -> int:
        """Live keys, counted in full (at start and after a snapshot; applies keep the count after)."""
        return self.store.range(RangeRequest(key=b"\0", range_end=b"\0", count_only=True)).count
