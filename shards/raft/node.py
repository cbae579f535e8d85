"""The caller-facing raft node: feed it events, collect its work as a Ready.

Theory of operation. `RawNode` wraps the core (`core.Raft`) the way etcd's
RawNode does. The caller drives it from one thread of control:

    node.tick()                        # every tick_interval_ms
    node.step(message)                 # every message received
    node.propose(data) / propose_batch(datas) / read_index(ctx) / ...
    while node.has_ready():
        ready = node.ready()
        send(ready.messages)           # may go out at once, before persisting
        persist(ready.snapshot, ready.entries, ready.hard_state)  # durably
        send(ready.persisted_messages) # only after the persist completed
        apply(ready.committed_entries) # call apply_conf_change for CONF_CHANGE
        serve(ready.read_states)       # once applied >= read_state.index
        node.advance(ready)

That is: persist, send, apply, advance. `messages` are safe to send before
the local write (the leader's appends and heartbeats: the leader counts
itself toward a commit only after advance() reports its entries durable);
`persisted_messages` vouch for local state (append acknowledgements, votes)
and must wait for it. A snapshot in a Ready is installed before the entries
that follow it, and comes with no committed entries: the caller restores its
state machine from the snapshot instead. Messages the node addresses to
itself (its own vote and its own append acknowledgement) are never handed
out; advance() delivers them, since by then the write they depend on is
durable.

One Ready carries all pending work: proposals stepped between two Readys
become one append per follower, and reads one heartbeat round. Each Ready
must be advanced before the next is taken (ReadyNotAdvanced otherwise);
messages may be stepped in between, as a driver that persists in the
background would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import repeat
from typing import Iterable

from shards.raft.core import Config, Raft, RandomSource, Role
from shards.raft.errors import ProposalDropped, ReadyNotAdvanced
from shards.raft.messages import ConfChange, Message, MessageType, ReadState
from shards.raft.storage import ConfState, Entry, EntryType, HardState, Snapshot, Storage, make_entry

_LOCAL_ONLY_TYPES = frozenset(
    {MessageType.HUP, MessageType.BEAT, MessageType.CHECK_QUORUM, MessageType.SNAP_STATUS,
     MessageType.UNREACHABLE}
)


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state worth reporting: who leads, and our role."""

    lead: int
    role: Role


@dataclass(slots=True)
class Ready:
    soft_state: SoftState | None = None  # None when unchanged
    hard_state: HardState | None = None  # None when unchanged
    snapshot: Snapshot | None = None  # to install before `entries`
    entries: list[Entry] = field(default_factory=list)  # to persist
    messages: list[Message] = field(default_factory=list)  # send now
    persisted_messages: list[Message] = field(default_factory=list)  # send after persisting
    committed_entries: list[Entry] = field(default_factory=list)  # to apply
    read_states: list[ReadState] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ProgressStatus:
    match: int
    next: int
    state: str
    is_learner: bool


@dataclass(frozen=True, slots=True)
class Status:
    id: int
    term: int
    vote: int
    role: Role
    lead: int
    commit: int
    applied: int
    conf_state: ConfState
    lead_transferee: int
    progress: dict[int, ProgressStatus]  # empty unless leader


class RawNode:
    def __init__(self, config: Config, storage: Storage, rng: RandomSource) -> None:
        self.raft = Raft(config, storage, rng)
        self.id = config.id
        self._prev_soft_state = SoftState(self.raft.lead, self.raft.role)
        self._prev_hard_state = storage.initial_state()[0]
        self._ready_outstanding = False
        self._steps_on_advance: list[Message] = []

    # --- Inputs --------------------------------------------------------------

    def tick(self) -> None:
        self.raft.tick()

    def campaign(self) -> None:
        self.raft.step(Message(MessageType.HUP, frm=self.id))

    def heartbeat(self) -> None:
        """A leader's heartbeat to every follower now, as its timer would send it."""
        self.raft.step(Message(MessageType.BEAT, frm=self.id))

    def step(self, message: Message) -> None:
        """Deliver a message from the network.

        A proposal or read forwarded by another node that cannot be accepted
        here is dropped silently, as etcd does: its originator's client times
        out and retries.
        """
        if message.type in _LOCAL_ONLY_TYPES:
            raise ValueError(f"{message.type.name} is a local message, not network traffic")
        try:
            self.raft.step(message)
        except ProposalDropped:
            pass

    def propose(self, data: bytes) -> None:
        self.propose_batch([data])

    def propose_batch(self, datas: Iterable[bytes]) -> None:
        """Propose many commands as one append; raises ProposalDropped if refused."""
        # Term and index are set by the leader; map/zip keeps per-entry work in C.
        entries = list(map(make_entry, zip(repeat(0), repeat(0), repeat(EntryType.NORMAL), datas)))
        if entries:
            self.raft.step(Message(MessageType.PROP, frm=self.id, entries=entries))

    def propose_conf_change(self, change: ConfChange) -> None:
        entry = Entry(0, 0, EntryType.CONF_CHANGE, change.encode())
        self.raft.step(Message(MessageType.PROP, frm=self.id, entries=[entry]))

    def apply_conf_change(self, change: ConfChange) -> ConfState:
        return self.raft.apply_conf_change(change)

    def read_index(self, context: bytes) -> None:
        """Ask for a linearizable read; answered as a ReadState carrying context."""
        self.raft.step(Message(MessageType.READ_INDEX, frm=self.id, context=context))

    def transfer_leader(self, transferee: int) -> None:
        self.raft.step(Message(MessageType.TRANSFER_LEADER, frm=transferee))

    def report_snapshot(self, node_id: int, failed: bool) -> None:
        """The transport reports whether a snapshot it was given reached node_id."""
        self.raft.step(Message(MessageType.SNAP_STATUS, frm=node_id, reject=failed))

    def report_unreachable(self, node_id: int) -> None:
        self.raft.step(Message(MessageType.UNREACHABLE, frm=node_id))

    def defer_commit_broadcast(self, deferred: bool) -> None:
        """On a leader holding its next proposals a moment: while deferred, a commit index that
        advanced on its own is not sent; it goes out with the next proposals, or once no longer
        deferred. Followers learn it later, which raft allows (a heartbeat carries it too), and
        they are spared an append, a wake and an acknowledgement per round."""
        self.raft.commit_broadcast_deferred = deferred

    # --- Outputs -------------------------------------------------------------

    def has_ready(self) -> bool:
        raft = self.raft
        log = raft.log
        return bool(
            raft.msgs
            or raft.msgs_after_persist
            or log.unstable.entries
            or log.unstable.snapshot is not None
            or raft.read_states
            or raft.has_unflushed()
            or log.has_next_committed_entries()
            or raft.lead != self._prev_soft_state.lead
            or raft.role != self._prev_soft_state.role
            # A plain tuple compares equal to the HardState NamedTuple.
            or (raft.term, raft.vote, log.committed) != self._prev_hard_state
        )

    def ready(self) -> Ready:
        if self._ready_outstanding:
            raise ReadyNotAdvanced("advance() the previous Ready first")
        raft = self.raft
        log = raft.log
        raft.flush()
        ready = Ready()
        if raft.lead != self._prev_soft_state.lead or raft.role != self._prev_soft_state.role:
            ready.soft_state = self._prev_soft_state = SoftState(raft.lead, raft.role)
        hard_state = raft.hard_state()
        if hard_state != self._prev_hard_state:
            ready.hard_state = hard_state
        ready.snapshot = log.unstable.snapshot
        ready.entries = log.unstable_entries()
        ready.committed_entries = log.next_committed_entries()
        ready.messages = raft.msgs
        raft.msgs = []
        for message in raft.msgs_after_persist:
            if message.to == self.id:
                self._steps_on_advance.append(message)
            else:
                ready.persisted_messages.append(message)
        raft.msgs_after_persist = []
        if ready.entries and raft.role == Role.LEADER:
            # Our own acknowledgement, delivered by advance() once durable.
            self._steps_on_advance.append(
                Message(MessageType.APP_RESP, self.id, self.id, raft.term, index=ready.entries[-1].index)
            )
        ready.read_states = raft.read_states
        raft.read_states = []
        self._ready_outstanding = True
        return ready

    def advance(self, ready: Ready) -> None:
        """The caller persisted, sent and applied everything in `ready`."""
        log = self.raft.log
        if ready.hard_state is not None:
            self._prev_hard_state = ready.hard_state
        if ready.snapshot is not None:
            log.stable_snap_to(ready.snapshot.meta.index)
            log.applied_to(ready.snapshot.meta.index)
        if ready.entries:
            last = ready.entries[-1]
            log.stable_to(last.index, last.term)
        if ready.committed_entries:
            log.applied_to(ready.committed_entries[-1].index)
            self.raft.reduce_uncommitted_size(ready.committed_entries)
        self._ready_outstanding = False
        steps, self._steps_on_advance = self._steps_on_advance, []
        for message in steps:
            self.raft.step(message)

    # --- Status --------------------------------------------------------------

    @property
    def committed(self) -> int:
        """The commit index raft knows now: ahead of the last Ready's hard state once a step
        has advanced it, before the next Ready carries it."""
        return self.raft.log.committed

    def status(self) -> Status:
        raft = self.raft
        progress = {}
        if raft.role == Role.LEADER:
            progress = {
                node_id: ProgressStatus(p.match, p.next, p.state.name, p.is_learner)
                for node_id, p in raft.tracker.progress.items()
            }
        return Status(
            id=raft.id,
            term=raft.term,
            vote=raft.vote,
            role=raft.role,
            lead=raft.lead,
            commit=raft.log.committed,
            applied=raft.log.applied,
            conf_state=raft.tracker.conf_state(),
            lead_transferee=raft.lead_transferee,
            progress=progress,
        )
