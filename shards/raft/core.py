"""The raft state machine: one node's view of elections and replication.

Theory of operation. `Raft` is a plain, deterministic object: it owns no
sockets, threads or clocks. Everything that happens to it is a `Message`
passed to `step`: network traffic, and local events turned into messages
(the election timer fires MsgHup, the heartbeat timer MsgBeat, a proposal is
MsgProp). Time passes only through `tick()`; randomness (the election
timeout, drawn from [election_ticks, 2 * election_ticks) ticks as in etcd)
comes from the `random.Random` the caller hands in, so one seed replays a
whole cluster exactly.

As in etcd's raft, `step` first settles terms (a higher term makes us a
follower, a lower one is ignored or answered so a stale node learns), then
answers vote requests, then hands the message to the step function of the
current role; `become_follower/pre_candidate/candidate/leader` swap the role.
The protocol is Raft as in Ongaro's dissertation with etcd's extensions:
PreVote (a node first asks whether it could win before bumping its term, so
a rejoining partitioned node does not depose a healthy leader), CheckQuorum
(a leader that has not heard from a quorum for an election timeout steps
down, and followers that recently heard from a leader ignore vote requests:
the leader lease), per-follower flow control (progress.py), fast log
backtracking (a rejection carries a hint so the leader skips whole terms),
ReadIndex reads, snapshots, leadership transfer and single-server
membership changes that take effect when applied.

Outputs are collected, never performed: entries appended to the unstable log
and the hard state are persisted by the caller; `msgs` may be sent at once;
`msgs_after_persist` (append and vote responses, which vouch for local state)
only after that persistence. The leader's own acknowledgement of its entries
and a candidate's vote for itself are messages to itself in that second
group, so the leader counts itself toward a commit quorum, and a candidate
toward an election, only once its write is durable. `node.RawNode` packages
all of this into a `Ready` for the caller.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from itertools import count, repeat
from operator import itemgetter
from typing import Protocol

from shards.raft.errors import ConfigError, ProposalDropped, RaftInvariantError
from shards.raft.log import RaftLog, batch_size_bytes
from shards.raft.messages import (
    RESPONSES_AFTER_PERSIST,
    ConfChange,
    ConfChangeType,
    Message,
    MessageType,
    ReadState,
)
from shards.raft.progress import Progress, ProgressState, ProgressTracker
from shards.raft.storage import (
    CompactedError,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Snapshot,
    Storage,
    make_entry,
)

# Vote requests carrying this context come from a leadership transfer and
# override the leader lease.
CAMPAIGN_TRANSFER = b"transfer"

_entry_type = itemgetter(2)
_entry_data = itemgetter(3)

_APP = MessageType.APP
_APP_RESP = MessageType.APP_RESP
_HEARTBEAT = MessageType.HEARTBEAT
_HEARTBEAT_RESP = MessageType.HEARTBEAT_RESP


@dataclass(frozen=True, slots=True)
class Config:
    """A node's settings. Defaults match etcd: 100 ms ticks, 100 ms heartbeat, 1 s election."""

    id: int
    # A follower campaigns after [election_ticks, 2 * election_ticks) ticks
    # without hearing from a leader; the leader heartbeats every heartbeat_ticks.
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    # Documentation for the driver: the core only counts ticks.
    tick_interval_ms: int = 100
    # One append message (etcd's MaxSizePerMsg): big enough to amortize a
    # message, small enough not to stall heartbeats behind it on a stream.
    max_size_per_msg_bytes: int = 1 << 20
    # Unacknowledged appends per follower (etcd server's MaxInflightMsgs):
    # with 1 MiB messages, at most 512 MiB in flight to a slow follower.
    max_inflight_msgs: int = 512
    # Committed entries handed to the caller per Ready, so one apply batch
    # (one LMDB transaction) stays bounded after a long catch-up.
    max_committed_size_per_ready_bytes: int = 64 << 20
    # Proposals are refused while the leader's unapplied tail is this large
    # (one proposal is always accepted when nothing is pending): back-pressure
    # instead of an unbounded log when followers cannot keep up.
    max_uncommitted_entries_bytes: int = 64 << 20
    # Read requests a leader holds at once (waiting for a commit or a quorum);
    # beyond it reads are refused, so a stalled quorum cannot grow memory.
    max_pending_reads: int = 4096
    pre_vote: bool = True
    check_quorum: bool = True
    # The last index the state machine had applied when the node (re)started.
    applied_index: int = 0

    def validate(self) -> None:
        if self.id <= 0:
            raise ConfigError("node id must be positive")
        if self.heartbeat_ticks <= 0:
            raise ConfigError("heartbeat_ticks must be positive")
        if self.election_ticks <= self.heartbeat_ticks:
            raise ConfigError("election_ticks must be greater than heartbeat_ticks")
        if self.max_inflight_msgs <= 0:
            raise ConfigError("max_inflight_msgs must be positive")
        limits = (
            self.max_size_per_msg_bytes,
            self.max_committed_size_per_ready_bytes,
            self.max_uncommitted_entries_bytes,
            self.max_pending_reads,
        )
        if min(limits) <= 0:
            raise ConfigError("size and queue limits must be positive")


class RandomSource(Protocol):
    """The caller's seeded generator (a random.Random): the core's only randomness."""

    def randrange(self, stop: int) -> int: ...


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3


class ReadRound:
    """Read requests that share one leadership confirmation (one heartbeat round)."""

    __slots__ = ("seq", "index", "requests")

    def __init__(self, seq: int, index: int, requests: list[tuple[int, bytes]]) -> None:
        self.seq = seq
        self.index = index
        self.requests = requests


def stamp_entries(proposed: list[Entry], term: int, first_index: int) -> list[Entry]:
    """Give proposed entries (type and data only) their term and index.

    Built with map/zip rather than a per-entry Python loop: this runs for
    every proposed entry.
    """
    return list(
        map(
            make_entry,
            zip(repeat(term), count(first_index), map(_entry_type, proposed), map(_entry_data, proposed)),
        )
    )


class Raft:
    def __init__(self, config: Config, storage: Storage, rng: RandomSource) -> None:
        config.validate()
        self.id = config.id
        self.config = config
        self.rng = rng
        self.log = RaftLog(storage, config.max_committed_size_per_ready_bytes)
        hard_state, conf_state = storage.initial_state()
        self.tracker = ProgressTracker(config.max_inflight_msgs)
        self.tracker.restore(conf_state, self.log.last_index() + 1)
        self.term = hard_state.term
        self.vote = hard_state.vote
        if hard_state.commit > self.log.committed:
            if hard_state.commit > self.log.last_index():
                raise RaftInvariantError(
                    f"stored commit {hard_state.commit} is past the last index {self.log.last_index()}"
                )
            self.log.committed = hard_state.commit
        if config.applied_index:
            self._refuse_skipping_conf_changes(storage, config.applied_index)
            self.log.applied_to(config.applied_index)

        self.role = Role.FOLLOWER
        self.lead = 0
        self.msgs: list[Message] = []
        self.msgs_after_persist: list[Message] = []
        self.read_states: list[ReadState] = []
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = config.election_ticks
        self.lead_transferee = 0
        # Index of the latest conf change proposed by this leader; another may
        # only be proposed once it is applied.
        self.pending_conf_index = 0
        # Proposals appended, or a commit index advanced, since the last flush():
        # broadcast together, so everything proposed between two Readys and the
        # commit index learned with them travel to each follower as one append.
        self.entries_unsent = False
        self.commit_unsent = False
        # While the caller holds its next proposals a moment (RawNode.defer_commit_broadcast),
        # a commit index advanced alone waits to go out with them.
        self.commit_broadcast_deferred = False
        # Bytes of entries this leader appended that are not yet applied.
        self.uncommitted_entries_bytes = 0
        # ReadIndex state (leader only): rounds wait for a quorum of heartbeat
        # acknowledgements carrying a round sequence number >= theirs.
        self.read_seq = 0
        self.read_rounds: deque[ReadRound] = deque()
        self.unsent_reads: list[tuple[int, bytes]] = []
        self.reads_awaiting_commit: list[tuple[int, bytes]] = []
        self.read_acks: dict[int, int] = {}
        self.pending_read_count = 0

        self._role_steps = {
            Role.FOLLOWER: self._step_follower,
            Role.PRE_CANDIDATE: self._step_candidate,
            Role.CANDIDATE: self._step_candidate,
            Role.LEADER: self._step_leader,
        }
        self._step_role = self._step_follower
        self.become_follower(self.term, 0)

    # --- State exposed to the node wrapper -----------------------------------

    def hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.log.committed)

    def promotable(self) -> bool:
        return self.id in self.tracker.voters and self.log.unstable.snapshot is None

    def committed_entry_in_current_term(self) -> bool:
        return self.log.term_or_zero(self.log.committed) == self.term

    # --- Role changes --------------------------------------------------------

    def _reset(self, term: int) -> None:
        if self.term != term:
            self.term = term
            self.vote = 0
        self.lead = 0
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_election_timeout = self.config.election_ticks + self.rng.randrange(
            self.config.election_ticks
        )
        self.lead_transferee = 0
        self.tracker.reset_votes()
        last_index = self.log.last_index()
        self.tracker.restore(self.tracker.conf_state(), last_index + 1)
        own_progress = self.tracker.progress.get(self.id)
        if own_progress is not None:
            own_progress.match = last_index
        self.pending_conf_index = 0
        self.entries_unsent = self.commit_unsent = False
        self.uncommitted_entries_bytes = 0
        self.pending_read_count = 0
        self.read_rounds.clear()
        self.unsent_reads = []
        self.reads_awaiting_commit = []
        self.read_acks = {}

    def _set_role(self, role: Role) -> None:
        self.role = role
        self._step_role = self._role_steps[role]

    def become_follower(self, term: int, lead: int) -> None:
        self._reset(term)
        self.lead = lead
        self._set_role(Role.FOLLOWER)

    def become_pre_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise RaftInvariantError("a leader cannot become a pre-candidate")
        # Neither the term nor the vote changes: that is the point of PreVote.
        self.tracker.reset_votes()
        self.lead = 0
        self._set_role(Role.PRE_CANDIDATE)

    def become_candidate(self) -> None:
        if self.role == Role.LEADER:
            raise RaftInvariantError("a leader cannot become a candidate")
        self._reset(self.term + 1)
        self.vote = self.id
        self._set_role(Role.CANDIDATE)

    def become_leader(self) -> None:
        if self.role == Role.FOLLOWER:
            raise RaftInvariantError("a follower cannot become leader without an election")
        self._reset(self.term)
        self.lead = self.id
        self._set_role(Role.LEADER)
        own_progress = self.tracker.progress[self.id]
        own_progress.become_replicate()
        own_progress.recent_active = True  # CheckQuorum always counts the leader
        # No conf change until everything in our log at election is applied.
        self.pending_conf_index = self.log.last_index()
        # An entry of our own term, whose commit commits all before it.
        self._append_entries([Entry(0, 0)])

    # --- Timers --------------------------------------------------------------

    def tick(self) -> None:
        if self.role == Role.LEADER:
            self._tick_heartbeat()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_election_timeout and self.promotable():
            self.election_elapsed = 0
            self.step(Message(MessageType.HUP, frm=self.id))

    def _tick_heartbeat(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.config.election_ticks:
            self.election_elapsed = 0
            if self.config.check_quorum:
                self.step(Message(MessageType.CHECK_QUORUM, frm=self.id))
            if self.role == Role.LEADER and self.lead_transferee:
                self.lead_transferee = 0  # the transfer did not finish in time
        if self.role != Role.LEADER:
            return
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self.step(Message(MessageType.BEAT, frm=self.id))

    def _refuse_skipping_conf_changes(self, storage: Storage, applied_index: int) -> None:
        """Membership comes from the snapshot; changes after it must be applied again.

        A restart may skip handing out entries its state machine has applied,
        but not membership changes: the core learns those only when the caller
        applies them. A caller must restart with applied_index at most the
        snapshot's index when entries after it change membership (etcd
        restarts at the snapshot and replays).
        """
        snapshot_index = storage.snapshot().meta.index
        last = min(applied_index, self.log.last_index())
        if last <= snapshot_index:
            return
        skipped = storage.entries(max(snapshot_index + 1, storage.first_index()), last + 1)
        changes = [entry.index for entry in skipped if entry.type == EntryType.CONF_CHANGE]
        if changes:
            raise ConfigError(
                f"applied_index {applied_index} would skip membership changes at {changes}: "
                f"restart at or below the snapshot index {snapshot_index} and apply them again"
            )

    # --- Sending -------------------------------------------------------------

    def _send(self, message: Message) -> None:
        if message.type in RESPONSES_AFTER_PERSIST:
            self.msgs_after_persist.append(message)
        else:
            self.msgs.append(message)

    def _drop(self, message: Message, reason: str) -> None:
        """Refuse a proposal or read: raise for our caller, ignore a forwarded one."""
        if message.frm == self.id or message.frm == 0:
            raise ProposalDropped(reason)

    # --- The entry point -----------------------------------------------------

    def step(self, m: Message) -> None:
        if m.term == 0:
            pass  # local message
        elif m.term > self.term:
            if m.type == MessageType.VOTE or m.type == MessageType.PRE_VOTE:
                forced = m.context == CAMPAIGN_TRANSFER
                in_lease = (
                    self.config.check_quorum
                    and self.lead != 0
                    and self.election_elapsed < self.config.election_ticks
                )
                if in_lease and not forced:
                    return  # we heard from a leader recently: do not help depose it
            if m.type == MessageType.PRE_VOTE:
                pass  # a pre-vote never changes our term
            elif m.type == MessageType.PRE_VOTE_RESP and not m.reject:
                pass  # granted pre-votes carry the term we would campaign at
            elif m.type == _APP or m.type == _HEARTBEAT or m.type == MessageType.SNAP:
                self.become_follower(m.term, m.frm)
            else:
                self.become_follower(m.term, 0)
        elif m.term < self.term:
            if (self.config.check_quorum or self.config.pre_vote) and (
                m.type == _HEARTBEAT or m.type == _APP
            ):
                # A stale leader: tell it our term so it steps down.
                self._send(Message(_APP_RESP, m.frm, self.id, self.term))
            elif m.type == MessageType.PRE_VOTE:
                self._send(Message(MessageType.PRE_VOTE_RESP, m.frm, self.id, self.term, reject=True))
            return

        if m.type == MessageType.HUP:
            self._hup(transfer=m.context == CAMPAIGN_TRANSFER)
        elif m.type == MessageType.VOTE or m.type == MessageType.PRE_VOTE:
            self._handle_vote_request(m)
        else:
            self._step_role(m)

    # --- Elections -----------------------------------------------------------

    def _hup(self, transfer: bool) -> None:
        if self.role == Role.LEADER or not self.promotable():
            return
        if self.log.has_unapplied_conf_changes():
            return  # our view of membership is about to change
        if transfer or not self.config.pre_vote:
            self._campaign(pre_election=False, transfer=transfer)
        else:
            self._campaign(pre_election=True, transfer=False)

    def _campaign(self, pre_election: bool, transfer: bool) -> None:
        if pre_election:
            self.become_pre_candidate()
            request_type, response_type = MessageType.PRE_VOTE, MessageType.PRE_VOTE_RESP
            term = self.term + 1
        else:
            self.become_candidate()
            request_type, response_type = MessageType.VOTE, MessageType.VOTE_RESP
            term = self.term
        last_index = self.log.last_index()
        last_term = self.log.last_term()
        context = CAMPAIGN_TRANSFER if transfer else b""
        for voter in sorted(self.tracker.voters):
            if voter == self.id:
                # Our own vote counts once it is durable.
                self._send(Message(response_type, self.id, self.id, term))
            else:
                self._send(
                    Message(request_type, voter, self.id, term, last_term, last_index, context=context)
                )

    def _handle_vote_request(self, m: Message) -> None:
        is_pre_vote = m.type == MessageType.PRE_VOTE
        response_type = MessageType.PRE_VOTE_RESP if is_pre_vote else MessageType.VOTE_RESP
        can_vote = (
            self.vote == m.frm
            or (self.vote == 0 and self.lead == 0)
            or (is_pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.index, m.log_term):
            self._send(Message(response_type, m.frm, self.id, m.term))
            if not is_pre_vote:
                self.election_elapsed = 0
                self.vote = m.frm
        else:
            self._send(Message(response_type, m.frm, self.id, self.term, reject=True))

    # --- Follower ------------------------------------------------------------

    def _step_follower(self, m: Message) -> None:
        t = m.type
        if t == _APP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_append(m)
        elif t == _HEARTBEAT:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_heartbeat(m)
        elif t == MessageType.SNAP:
            self.election_elapsed = 0
            self.lead = m.frm
            self._handle_snapshot(m)
        elif t == MessageType.PROP or t == MessageType.READ_INDEX:
            if self.lead == 0:
                self._drop(m, "no leader")
            else:
                self._send(m._replace(to=self.lead))
        elif t == MessageType.TRANSFER_LEADER:
            if self.lead != 0:
                self._send(m._replace(to=self.lead))
        elif t == MessageType.TIMEOUT_NOW:
            self._hup(transfer=True)
        elif t == MessageType.READ_INDEX_RESP:
            self.read_states.append(ReadState(m.index, m.context))

    def _handle_append(self, m: Message) -> None:
        if m.index < self.log.committed:
            self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=self.log.committed))
            return
        last_new_index = self.log.maybe_append(m.index, m.log_term, m.commit, m.entries)
        if last_new_index is not None:
            self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=last_new_index))
            return
        hint_index, hint_term = self.log.find_conflict_by_term(
            min(m.index, self.log.last_index()), m.log_term
        )
        self._send(
            Message(
                _APP_RESP,
                m.frm,
                self.id,
                self.term,
                hint_term,
                m.index,
                reject=True,
                reject_hint=hint_index,
            )
        )

    def _handle_heartbeat(self, m: Message) -> None:
        self.log.commit_to(m.commit)
        self._send(Message(_HEARTBEAT_RESP, m.frm, self.id, self.term, context=m.context))

    def _handle_snapshot(self, m: Message) -> None:
        if m.snapshot is not None and self._restore(m.snapshot):
            index = self.log.last_index()
        else:
            index = self.log.committed
        self._send(Message(_APP_RESP, m.frm, self.id, self.term, index=index))

    def _restore(self, snapshot: Snapshot) -> bool:
        meta = snapshot.meta
        if meta.index <= self.log.committed:
            return False
        if self.log.match_term(meta.index, meta.term):
            # We already have the snapshot's entries: just learn they are committed.
            self.log.commit_to(meta.index)
            return False
        self.log.restore(snapshot)
        self.tracker.restore(meta.conf_state, self.log.last_index() + 1)
        return True

    # --- Candidate and pre-candidate -----------------------------------------

    def _step_candidate(self, m: Message) -> None:
        t = m.type
        if self.role == Role.PRE_CANDIDATE:
            own_response_type = MessageType.PRE_VOTE_RESP
        else:
            own_response_type = MessageType.VOTE_RESP
        if t == _APP:
            self.become_follower(m.term, m.frm)
            self._handle_append(m)
        elif t == _HEARTBEAT:
            self.become_follower(m.term, m.frm)
            self._handle_heartbeat(m)
        elif t == MessageType.SNAP:
            self.become_follower(m.term, m.frm)
            self._handle_snapshot(m)
        elif t == MessageType.PROP or t == MessageType.READ_INDEX:
            self._drop(m, "no leader during an election")
        elif t == own_response_type:
            self.tracker.record_vote(m.frm, not m.reject)
            won, lost = self.tracker.tally_votes()
            if won:
                if self.role == Role.PRE_CANDIDATE:
                    self._campaign(pre_election=False, transfer=False)
                else:
                    self.become_leader()
                    self._bcast_append()
            elif lost:
                self.become_follower(self.term, 0)

    # --- Leader --------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        t = m.type
        if t == MessageType.BEAT:
            self._bcast_heartbeat()
            return
        if t == MessageType.CHECK_QUORUM:
            if not self.tracker.quorum_active():
                self.become_follower(self.term, 0)
                return
            for node_id, progress in self.tracker.progress.items():
                if node_id != self.id:
                    progress.recent_active = False
            return
        if t == MessageType.PROP:
            self._propose(m)
            return
        if t == MessageType.READ_INDEX:
            self._read_index(m)
            return

        progress = self.tracker.progress.get(m.frm)
        if progress is None:
            return  # not (or no longer) a member
        if t == _APP_RESP:
            self._handle_append_response(m, progress)
        elif t == _HEARTBEAT_RESP:
            progress.recent_active = True
            progress.probe_sent = False
            if progress.state == ProgressState.REPLICATE and progress.inflights.full():
                progress.inflights.free_first_one()
            if progress.match < self.log.last_index():
                self._send_append(m.frm)
            if m.context:
                seq = int.from_bytes(m.context, "big")
                if seq > self.read_acks.get(m.frm, 0):
                    self.read_acks[m.frm] = seq
                    self._confirm_reads()
        elif t == MessageType.SNAP_STATUS:
            if progress.state != ProgressState.SNAPSHOT:
                return
            if m.reject:
                progress.pending_snapshot = 0
            progress.become_probe()
            # Wait for a heartbeat response before probing again.
            progress.probe_sent = True
        elif t == MessageType.UNREACHABLE:
            if progress.state == ProgressState.REPLICATE:
                progress.become_probe()
        elif t == MessageType.TRANSFER_LEADER:
            self._transfer_leader(m.frm, progress)

    def _propose(self, m: Message) -> None:
        if not m.entries:
            raise RaftInvariantError("a proposal without entries")
        if self.lead_transferee:
            self._drop(m, "leadership transfer in progress")
            return
        proposal_bytes = batch_size_bytes(m.entries)
        if (
            self.uncommitted_entries_bytes
            and self.uncommitted_entries_bytes + proposal_bytes > self.config.max_uncommitted_entries_bytes
        ):
            self._drop(m, "too many uncommitted entries")
            return
        # Check the whole batch before changing anything: a refused batch leaves no trace.
        changes = ([position for position, entry in enumerate(m.entries) if entry.type == EntryType.CONF_CHANGE]
                   if EntryType.CONF_CHANGE in map(_entry_type, m.entries) else ())
        if len(changes) > 1:
            self._drop(m, "one membership change at a time")
            return
        if changes:
            refusal = self._conf_change_refusal(m.entries[changes[0]].data)
            if refusal:
                self._drop(m, refusal)
                return
            self.pending_conf_index = self.log.last_index() + 1 + changes[0]
        self._append_entries(m.entries)
        self.uncommitted_entries_bytes += proposal_bytes
        self.entries_unsent = True

    def _conf_change_refusal(self, data: bytes) -> str:
        if self.pending_conf_index > self.log.applied:
            return "a membership change is still pending"
        try:
            change = ConfChange.decode(data)
        except ValueError as error:
            return f"malformed membership change: {error}"
        if change.type != ConfChangeType.ADD_VOTER and self.tracker.voters == {change.node_id}:
            return "cannot remove or demote the last voter"
        return ""

    def _append_entries(self, proposed: list[Entry]) -> None:
        self.log.append(stamp_entries(proposed, self.term, self.log.last_index() + 1))
        # Our own progress advances when the caller reports the entries durable.

    def _handle_append_response(self, m: Message, progress: Progress) -> None:
        progress.recent_active = True
        was_paused = progress.is_paused()
        if m.reject:
            next_probe_index = m.reject_hint
            if m.log_term > 0:
                next_probe_index, _ = self.log.find_conflict_by_term(m.reject_hint, m.log_term)
            if progress.maybe_decr_to(m.index, next_probe_index):
                if progress.state == ProgressState.REPLICATE:
                    progress.become_probe()
                self._send_append(m.frm)
            return
        if not (
            progress.maybe_update(m.index)
            or (progress.match == m.index and progress.state == ProgressState.PROBE)
        ):
            return
        if progress.state == ProgressState.PROBE:
            progress.become_replicate()
        elif progress.state == ProgressState.SNAPSHOT and progress.match + 1 >= self.log.first_index():
            progress.become_probe()
            progress.become_replicate()
        elif progress.state == ProgressState.REPLICATE:
            progress.inflights.free_le(m.index)
        if self._maybe_commit():
            self.commit_unsent = True  # the new commit index goes out with the next proposals
        elif was_paused and m.frm != self.id:
            # While paused it may have missed the latest commit index.
            self._send_append(m.frm)
        if m.frm != self.id:
            while self._maybe_send_append(m.frm, send_if_empty=False):
                pass
            if m.frm == self.lead_transferee and progress.match == self.log.last_index():
                self._send(Message(MessageType.TIMEOUT_NOW, m.frm, self.id, self.term))

    def _maybe_commit(self) -> bool:
        if not self.log.maybe_commit(self.tracker.committed_index(), self.term):
            return False
        if self.reads_awaiting_commit:
            # Our first commit in this term: reads may now be answered.
            self.unsent_reads.extend(self.reads_awaiting_commit)
            self.reads_awaiting_commit = []
        return True

    def _bcast_append(self) -> None:
        for node_id in self.tracker.progress:
            if node_id != self.id:
                self._maybe_send_append(node_id, send_if_empty=True)

    def _send_append(self, to: int) -> None:
        self._maybe_send_append(to, send_if_empty=True)

    def _maybe_send_append(self, to: int, send_if_empty: bool) -> bool:
        progress = self.tracker.progress[to]
        if progress.is_paused():
            return False
        log = self.log
        prev_index = progress.next - 1
        try:
            prev_term = log.term(prev_index)
            entries = log.entries_from(progress.next, self.config.max_size_per_msg_bytes)
        except CompactedError:
            return self._maybe_send_snapshot(to, progress)
        if not entries and not send_if_empty:
            return False
        self._send(
            Message(_APP, to, self.id, self.term, prev_term, prev_index, entries, log.committed)
        )
        progress.sent_entries(len(entries), entries[-1].index if entries else prev_index)
        return True

    def _maybe_send_snapshot(self, to: int, progress: Progress) -> bool:
        if not progress.recent_active:
            return False
        snapshot = self.log.snapshot()
        if snapshot.meta.index == 0:
            raise RaftInvariantError("entries are compacted but there is no snapshot")
        progress.become_snapshot(snapshot.meta.index)
        self._send(Message(MessageType.SNAP, to, self.id, self.term, snapshot=snapshot))
        return True

    def _bcast_heartbeat(self) -> None:
        context = self.read_seq.to_bytes(8, "big") if self.read_seq else b""
        committed = self.log.committed
        for node_id, progress in self.tracker.progress.items():
            if node_id != self.id:
                self._send(
                    Message(
                        _HEARTBEAT,
                        node_id,
                        self.id,
                        self.term,
                        commit=min(progress.match, committed),
                        context=context,
                    )
                )

    def _transfer_leader(self, transferee: int, progress: Progress) -> None:
        if progress.is_learner:
            return
        if self.lead_transferee:
            if self.lead_transferee == transferee:
                return
            self.lead_transferee = 0
        if transferee == self.id:
            return
        # The transfer must finish within an election timeout (see _tick_heartbeat).
        self.election_elapsed = 0
        self.lead_transferee = transferee
        if progress.match == self.log.last_index():
            self._send(Message(MessageType.TIMEOUT_NOW, transferee, self.id, self.term))
        else:
            self._send_append(transferee)

    # --- ReadIndex (leader) --------------------------------------------------

    def reduce_uncommitted_size(self, applied_entries: list[Entry]) -> None:
        """Entries were applied: they no longer count against max_uncommitted_entries_bytes."""
        if self.uncommitted_entries_bytes:
            self.uncommitted_entries_bytes = max(
                0, self.uncommitted_entries_bytes - batch_size_bytes(applied_entries)
            )

    def _read_index(self, m: Message) -> None:
        requester, context = m.frm, m.context
        if self.pending_read_count >= self.config.max_pending_reads:
            self._drop(m, "too many pending reads")
            return
        self.pending_read_count += 1
        if not self.committed_entry_in_current_term():
            # Until then our commit index may be behind the true one.
            self.reads_awaiting_commit.append((requester, context))
        elif self.tracker.voters == {self.id}:
            self._answer_read(requester, context, self.log.committed)
        else:
            self.unsent_reads.append((requester, context))

    def _appends_due(self) -> bool:
        return self.entries_unsent or (self.commit_unsent and not self.commit_broadcast_deferred)

    def has_unflushed(self) -> bool:
        return self.role == Role.LEADER and (self._appends_due() or bool(self.unsent_reads))

    def flush(self) -> None:
        """Send what was batched since the last Ready: new proposals and commit index, read rounds."""
        if self.role != Role.LEADER:
            return
        if self._appends_due():
            self.entries_unsent = self.commit_unsent = False
            self._bcast_append()
        if self.unsent_reads:
            self._flush_reads()

    def _flush_reads(self) -> None:
        """Start one confirmation round for all reads received since the last one."""
        self.read_seq += 1
        self.read_rounds.append(ReadRound(self.read_seq, self.log.committed, self.unsent_reads))
        self.unsent_reads = []
        self._bcast_heartbeat()
        self._confirm_reads()  # a lone voter is its own quorum: nobody else will answer

    def _confirm_reads(self) -> None:
        acks = dict(self.read_acks)
        acks[self.id] = self.read_seq
        confirmed_seq = self.tracker.quorum_value(acks)
        rounds = self.read_rounds
        while rounds and rounds[0].seq <= confirmed_seq:
            read_round = rounds.popleft()
            for requester, context in read_round.requests:
                self._answer_read(requester, context, read_round.index)

    def _answer_read(self, requester: int, context: bytes, index: int) -> None:
        self.pending_read_count -= 1
        if requester == self.id or requester == 0:
            self.read_states.append(ReadState(index, context))
        else:
            self._send(
                Message(MessageType.READ_INDEX_RESP, requester, self.id, self.term, index=index, context=context)
            )

    # --- Membership ----------------------------------------------------------

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        """Apply a committed membership change (called by the caller as it applies the entry)."""
        tracker = self.tracker
        next_index = self.log.last_index() + 1
        if change.type == ConfChangeType.ADD_VOTER:
            tracker.add_voter(change.node_id, next_index)
        elif change.type == ConfChangeType.ADD_LEARNER:
            tracker.add_learner(change.node_id, next_index)
        else:
            tracker.remove(change.node_id)
            self.read_acks.pop(change.node_id, None)
        conf_state = tracker.conf_state()
        if self.role != Role.LEADER:
            return conf_state
        if self.id not in tracker.voters:
            self.become_follower(self.term, 0)  # a removed or demoted leader steps down
            return conf_state
        if self.lead_transferee and self.lead_transferee not in tracker.voters:
            self.lead_transferee = 0
        if self._maybe_commit():
            self._bcast_append()
        else:
            for node_id in tracker.progress:
                if node_id != self.id:
                    self._maybe_send_append(node_id, send_if_empty=False)
        self._confirm_reads()
        return conf_state
