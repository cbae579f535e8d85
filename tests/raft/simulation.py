"""A deterministic raft cluster in simulated time, driven by one seed.

Theory of operation. A `Cluster` holds N voters plus spare nodes, each a
`RawNode` over a `MemoryStorage` that stands for its disk: the driver writes
to it only what a Ready says to persist, so a crash (dropping the RawNode and
whatever it had not persisted) followed by a restart from that storage is
exactly a process restart. The network is a heap of messages ordered by
delivery time; each message may be delayed, dropped, duplicated or held long
enough to be reordered, and partitions drop traffic between groups. Time is
measured in units (TICK_UNITS per raft tick); there is no wall clock.

One `random.Random(seed)` makes every choice: the chaos schedule, the
network's fate for each message, and the seeds of the nodes' own generators.
So a seed replays the same run exactly, and `trace_digest` proves it.

After every delivery, tick and Ready the cluster checks its invariants and
raises `InvariantViolation` naming the seed:

- election safety: at most one leader per term;
- log matching: an (index, term) pair always names the same entry, with the
  same predecessor term (so equal entries imply equal prefixes);
- committed entries are never lost or changed: every node's committed
  prefix (checked again after restarts) matches one global record, and a new
  leader's log holds every entry committed in an earlier term (leader
  completeness);
- state machine safety: every node applies the same sequence (a running
  digest per applied index, carried through snapshots);
- membership agrees: the configuration a node acts on is the one its applied
  prefix (or installed snapshot) defines, the same on every node;
- linearizable reads: a ReadIndex answer is >= every commit index any node
  knew when the read was requested;
- liveness: once the network heals and every node is up, a new proposal
  commits and every member applies it within a bounded number of ticks.
"""

from __future__ import annotations

import heapq
import random
import zlib
from collections import Counter
from dataclasses import dataclass, replace

from shards.raft import (
    Config,
    ConfChange,
    ConfChangeType,
    Message,
    MessageType,
    ProposalDropped,
    RawNode,
    Role,
)
from shards.raft.storage import (
    ConfState,
    EntryType,
    MemoryStorage,
    Snapshot,
    SnapshotMeta,
)

TICK_UNITS = 100
HEAL_DEADLINE_TICKS = 400
PROPOSAL_RETRY_TICKS = 20
FINAL_VALUE_PREFIX = b"final"


class InvariantViolation(AssertionError):
    """A raft safety or liveness property failed in the simulation."""


@dataclass(frozen=True)
class Chaos:
    """Per-tick probabilities of the disturbances, drawn per seed."""

    drop_rate: float
    duplicate_rate: float
    long_delay_rate: float
    max_delay_units: int
    long_delay_units: int
    proposal_rate: float
    read_rate: float
    partition_rate: float
    heal_rate: float
    crash_rate: float
    crash_in_ready_rate: float
    restart_rate: float
    pause_rate: float  # a node freezes (a GC pause, a stopped VM), then resumes
    max_pause_ticks: int
    transfer_rate: float
    conf_change_rate: float
    compact_rate: float
    # Node settings: small limits split appends and stall the in-flight window.
    max_size_per_msg_bytes: int
    max_inflight_msgs: int
    pre_vote: bool
    check_quorum: bool

    @classmethod
    def draw(cls, rng: random.Random) -> Chaos:
        return cls(
            max_size_per_msg_bytes=rng.choice([1 << 20, 1 << 20, 60, 200]),
            max_inflight_msgs=rng.choice([256, 256, 4, 1]),
            pre_vote=rng.random() < 0.8,
            check_quorum=rng.random() < 0.8,
            drop_rate=rng.choice([0.0, 0.01, 0.05, 0.15]),
            duplicate_rate=rng.choice([0.0, 0.02, 0.05]),
            long_delay_rate=rng.choice([0.0, 0.02, 0.1]),
            max_delay_units=rng.choice([5, 20, 60]),
            long_delay_units=rng.choice([150, 400, 1200]),
            proposal_rate=rng.choice([0.3, 0.7, 1.0]),
            read_rate=rng.choice([0.1, 0.4]),
            partition_rate=rng.choice([0.0, 0.02, 0.05]),
            heal_rate=rng.choice([0.05, 0.2]),
            crash_rate=rng.choice([0.0, 0.01, 0.03]),
            crash_in_ready_rate=rng.choice([0.0, 0.001, 0.005]),
            restart_rate=rng.choice([0.05, 0.2]),
            pause_rate=rng.choice([0.0, 0.01, 0.03]),
            max_pause_ticks=rng.choice([5, 30]),
            transfer_rate=rng.choice([0.0, 0.01, 0.03]),
            conf_change_rate=rng.choice([0.0, 0.02, 0.05]),
            compact_rate=rng.choice([0.0, 0.05, 0.2]),
        )

    def healed(self) -> Chaos:
        return replace(
            self,
            drop_rate=0.0,
            duplicate_rate=0.0,
            long_delay_rate=0.0,
            partition_rate=0.0,
            heal_rate=1.0,
            crash_rate=0.0,
            crash_in_ready_rate=0.0,
            restart_rate=1.0,
            pause_rate=0.0,
            transfer_rate=0.0,
            conf_change_rate=0.0,
        )


class StateMachine:
    """What a node has applied: the index, a running digest, the membership."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.restore(snapshot)

    def restore(self, snapshot: Snapshot) -> None:
        self.applied = snapshot.meta.index
        self.digest = int(snapshot.data) if snapshot.data else 0
        self.conf_state = snapshot.meta.conf_state

    def snapshot_data(self) -> bytes:
        return str(self.digest).encode()


class SimNode:
    def __init__(self, node_id: int, storage: MemoryStorage) -> None:
        self.id = node_id
        self.storage = storage
        self.raw: RawNode | None = None
        self.state_machine = StateMachine(storage.snapshot())
        self.checked_commit = 0

    @property
    def up(self) -> bool:
        return self.raw is not None


class Cluster:
    def __init__(self, seed: int, voter_count: int = 3, spare_count: int = 1,
                 trace: bool = False) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.chaos = Chaos.draw(self.rng)
        self.now = 0
        self.tick_count = 0
        self._network: list[tuple[int, int, Message]] = []
        self._message_seq = 0
        self.blocked: set[tuple[int, int]] = set()
        self.paused_until: dict[int, int] = {}  # node id -> time it resumes
        self.trace_enabled = trace
        self.trace_digest = 0
        self.stats: Counter[str] = Counter()  # what the run exercised

        # Global records the invariants are checked against.
        self.committed: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, type, data)
        # index -> term of the node that first knew it committed: the leader that
        # committed it, or a follower that heard so from that leader.
        self.committed_in_term: dict[int, int] = {}
        self.max_committed = 0
        self.final_index = 0  # where the first value proposed after healing committed
        self.entry_identity: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self.applied_digests: dict[int, int] = {}
        self.conf_after: dict[int, ConfState] = {}  # conf change index -> membership
        self.leader_of_term: dict[int, int] = {}
        self.read_floor: dict[bytes, int] = {}
        self.reads_answered = 0
        self.proposals_made = 0
        self._next_value = 0
        self._next_read = 0

        voters = tuple(range(1, voter_count + 1))
        bootstrap = Snapshot(SnapshotMeta(0, 0, ConfState(voters, ())))
        self.nodes: dict[int, SimNode] = {}
        for node_id in range(1, voter_count + spare_count + 1):
            storage = MemoryStorage()
            storage.apply_snapshot(bootstrap)
            self.nodes[node_id] = SimNode(node_id, storage)
            self.start(self.nodes[node_id])

    # --- Failures and helpers ------------------------------------------------

    def fail(self, what: str) -> None:
        raise InvariantViolation(f"seed {self.seed}, tick {self.tick_count}: {what}")

    def _trace(self, *fields) -> None:
        self.stats[fields[0]] += 1
        if self.trace_enabled:
            self.trace_digest = zlib.crc32(repr(fields).encode(), self.trace_digest)

    def start(self, node: SimNode) -> None:
        config = Config(
            id=node.id,
            max_size_per_msg_bytes=self.chaos.max_size_per_msg_bytes,
            max_inflight_msgs=self.chaos.max_inflight_msgs,
            pre_vote=self.chaos.pre_vote,
            check_quorum=self.chaos.check_quorum,
        )
        node.raw = RawNode(config, node.storage, random.Random(self.rng.getrandbits(64)))
        node.state_machine = StateMachine(node.storage.snapshot())
        node.checked_commit = node.storage.snapshot().meta.index
        self._trace("start", node.id)
        self._check_committed_prefix(node)
        self.drive(node)

    def crash(self, node: SimNode) -> None:
        node.raw = None
        self._trace("crash", node.id)

    def leader(self) -> SimNode | None:
        leaders = [n for n in self.up_nodes() if n.raw.raft.role == Role.LEADER]
        if not leaders:
            return None
        return max(leaders, key=lambda n: n.raw.raft.term)

    def up_nodes(self) -> list[SimNode]:
        """Nodes running and not paused: those that tick and serve clients."""
        now = self.now
        return [
            node for node in self.nodes.values()
            if node.up and self.paused_until.get(node.id, 0) <= now
        ]

    # --- Network -------------------------------------------------------------

    def send(self, message: Message) -> None:
        chaos = self.chaos
        rng = self.rng
        if rng.random() < chaos.drop_rate:
            self._report_snapshot(message, failed=True)
            return
        copies = 2 if rng.random() < chaos.duplicate_rate else 1
        for _ in range(copies):
            delay = 1 + rng.randrange(chaos.max_delay_units)
            if rng.random() < chaos.long_delay_rate:
                delay += rng.randrange(chaos.long_delay_units)
            self._message_seq += 1
            heapq.heappush(self._network, (self.now + delay, self._message_seq, message))

    def _report_snapshot(self, message: Message, failed: bool) -> None:
        if message.type != MessageType.SNAP:
            return
        sender = self.nodes[message.frm]
        if sender.up:
            sender.raw.report_snapshot(message.to, failed)
            self.drive(sender)

    def deliver_until(self, end: int) -> None:
        network = self._network
        while network and network[0][0] <= end:
            when, _, message = heapq.heappop(network)
            self.now = when
            target = self.nodes[message.to]
            resume = self.paused_until.get(message.to, 0)
            if resume > when:
                self._message_seq += 1
                heapq.heappush(network, (resume, self._message_seq, message))
                continue
            if not target.up or (message.frm, message.to) in self.blocked:
                self._report_snapshot(message, failed=True)
                continue
            self._trace(message.type.name, when, message.type, message.frm, message.to, message.term,
                        message.index, message.commit, len(message.entries), message.reject)
            target.raw.step(message)
            self.drive(target)
            self._report_snapshot(message, failed=False)

    # --- The driver: persist, send, apply, advance ---------------------------

    def drive(self, node: SimNode) -> None:
        while node.up and node.raw.has_ready():
            raw = node.raw
            ready = raw.ready()
            for message in ready.messages:
                self.send(message)
            if self.rng.random() < self.chaos.crash_in_ready_rate:
                self.crash(node)  # messages sent, nothing persisted
                return
            storage = node.storage
            if ready.snapshot is not None:
                storage.apply_snapshot(ready.snapshot)
            if ready.entries:
                self._check_log_matching(node, ready.entries)
                storage.append(ready.entries)
            if ready.hard_state is not None:
                storage.set_hard_state(ready.hard_state)
            for message in ready.persisted_messages:
                self.send(message)
            if ready.snapshot is not None:
                self._install_snapshot(node, ready.snapshot)
            if ready.committed_entries:
                self._apply(node, ready.committed_entries)
            for read_state in ready.read_states:
                self._check_read(node, read_state)
            if ready.soft_state is not None and ready.soft_state.role == Role.LEADER:
                self._check_new_leader(node)
                self._trace("leader elected", node.id, raw.raft.term)
            raw.advance(ready)
            self._check_node(node)

    def _install_snapshot(self, node: SimNode, snapshot: Snapshot) -> None:
        node.state_machine.restore(snapshot)
        expected = self.applied_digests.get(snapshot.meta.index)
        if expected is not None and expected != node.state_machine.digest:
            self.fail(f"node {node.id} installed a snapshot at {snapshot.meta.index} "
                      f"that differs from what others applied")
        self._trace("snapshot", node.id, snapshot.meta.index)

    def _apply(self, node: SimNode, entries) -> None:
        state_machine = node.state_machine
        for entry in entries:
            if entry.index != state_machine.applied + 1:
                self.fail(f"node {node.id} applies {entry.index} after {state_machine.applied}")
            state_machine.digest = zlib.crc32(
                b"%d:%d:%d:" % (entry.index, entry.term, entry.type) + entry.data, state_machine.digest
            )
            state_machine.applied = entry.index
            expected = self.applied_digests.setdefault(entry.index, state_machine.digest)
            if expected != state_machine.digest:
                self.fail(f"node {node.id} applied a different entry at {entry.index}")
            if entry.type == EntryType.CONF_CHANGE:
                state_machine.conf_state = node.raw.apply_conf_change(ConfChange.decode(entry.data))
                known = self.conf_after.setdefault(entry.index, state_machine.conf_state)
                if known != state_machine.conf_state:
                    self.fail(f"node {node.id} has membership {state_machine.conf_state} after "
                              f"{entry.index}, others {known}")
                self._trace("conf", node.id, entry.index, state_machine.conf_state)

    # --- Invariants ------------------------------------------------------------

    def _check_node(self, node: SimNode) -> None:
        if not node.up:
            return
        raft = node.raw.raft
        if raft.tracker.conf_state() != node.state_machine.conf_state:
            self.fail(f"node {node.id} acts on membership {raft.tracker.conf_state()}, "
                      f"but applied {node.state_machine.conf_state}")
        if raft.role == Role.LEADER:
            holder = self.leader_of_term.setdefault(raft.term, node.id)
            if holder != node.id:
                self.fail(f"two leaders in term {raft.term}: {holder} and {node.id}")
        if raft.log.committed > node.checked_commit:
            self._check_committed_prefix(node)

    def _check_committed_prefix(self, node: SimNode) -> None:
        log = node.raw.raft.log
        low = max(node.checked_commit + 1, log.first_index())
        high = log.committed
        if high < low:
            node.checked_commit = max(node.checked_commit, high)
            return
        committed = self.committed
        term = node.raw.raft.term
        for entry in log.slice(low, high + 1, None):
            record = (entry.term, entry.type, entry.data)
            known = committed.setdefault(entry.index, record)
            self.committed_in_term.setdefault(entry.index, term)
            if not self.final_index and entry.data.startswith(FINAL_VALUE_PREFIX):
                self.final_index = entry.index
            if known != record:
                self.fail(f"node {node.id} has committed {record} at {entry.index}, "
                          f"but {known} was committed there")
        node.checked_commit = high
        if high > self.max_committed:
            self.max_committed = high

    def _check_log_matching(self, node: SimNode, entries) -> None:
        identity = self.entry_identity
        prev_term = node.raw.raft.log.term_or_zero(entries[0].index - 1)
        for entry in entries:
            record = (entry.type, entry.data, prev_term)
            known = identity.setdefault((entry.index, entry.term), record)
            if known != record:
                self.fail(f"node {node.id}: entry ({entry.index}, {entry.term}) is {record}, "
                          f"elsewhere {known}")
            prev_term = entry.term

    def _check_new_leader(self, node: SimNode) -> None:
        """Leader completeness: a leader of term T holds every entry committed before T.

        (Not entries committed in later terms: a candidate can win a stale
        term after the cluster moved on, and is deposed at its first contact.)
        """
        raft = node.raw.raft
        log = raft.log
        committed = self.committed
        committed_in_term = self.committed_in_term
        for index in range(max(log.first_index(), 1), self.max_committed + 1):
            record = committed.get(index)
            if record is None or committed_in_term[index] >= raft.term:
                continue
            if log.term_or_zero(index) != record[0]:
                self.fail(f"new leader {node.id} of term {raft.term} lacks entry {index}, "
                          f"committed in term {committed_in_term[index]}")

    def _check_read(self, node: SimNode, read_state) -> None:
        floor = self.read_floor.get(read_state.context)
        if floor is None:
            self.fail(f"node {node.id} answered an unknown read {read_state.context!r}")
        if not read_state.context.startswith(b"%d/" % node.id):
            self.fail(f"node {node.id} got the answer to another node's read")
        if read_state.index < floor:
            self.fail(f"read {read_state.context!r} answered at {read_state.index}, "
                      f"but {floor} was committed before it was requested")
        self.reads_answered += 1
        self.stats["read answered"] += 1

    # --- Chaos -----------------------------------------------------------------

    def _act(self) -> None:
        chaos = self.chaos
        rng = self.rng
        if rng.random() < chaos.proposal_rate:
            self.propose(rng.choice(self.nodes_up_or_none()), rng.randint(1, 3))
        if rng.random() < chaos.read_rate:
            node = rng.choice(self.nodes_up_or_none())
            if node is not None:
                self.read(node)
        if rng.random() < chaos.partition_rate:
            self._partition()
        if self.blocked and rng.random() < chaos.heal_rate:
            self.blocked = set()
            self._trace("heal")
        if rng.random() < chaos.crash_rate:
            node = self.leader() if rng.random() < 0.5 else None
            node = node or rng.choice(self.nodes_up_or_none())
            if node is not None:
                self.crash(node)
        down = [node for node in self.nodes.values() if not node.up]
        if down and rng.random() < chaos.restart_rate:
            self.start(rng.choice(down))
        if rng.random() < chaos.pause_rate:
            node = self.leader() if rng.random() < 0.5 else None
            node = node or rng.choice(self.nodes_up_or_none())
            if node is not None:
                pause_ticks = rng.randint(1, chaos.max_pause_ticks)
                self.paused_until[node.id] = self.now + pause_ticks * TICK_UNITS
                self._trace("pause", node.id, pause_ticks)
        if rng.random() < chaos.transfer_rate:
            self._transfer()
        if rng.random() < chaos.conf_change_rate:
            self._change_membership()
        if rng.random() < chaos.compact_rate:
            node = rng.choice(self.nodes_up_or_none())
            if node is not None:
                self.compact(node)

    def nodes_up_or_none(self) -> list[SimNode | None]:
        return self.up_nodes() or [None]

    def propose(self, node: SimNode | None, count: int) -> None:
        if node is None:
            return
        values = []
        for _ in range(count):
            self._next_value += 1
            values.append(b"v%d" % self._next_value)
        self.propose_values(node, values)

    def propose_value(self, node: SimNode, value: bytes) -> None:
        self.propose_values(node, [value])

    def propose_values(self, node: SimNode, values: list[bytes]) -> None:
        try:
            node.raw.propose_batch(values)
        except ProposalDropped:
            return
        self.proposals_made += len(values)
        self.drive(node)

    def read(self, node: SimNode) -> None:
        self._next_read += 1
        context = b"%d/%d" % (node.id, self._next_read)
        try:
            node.raw.read_index(context)
        except ProposalDropped:
            return
        self.read_floor[context] = self.max_committed
        self.drive(node)

    def _partition(self) -> None:
        ids = list(self.nodes)
        leader = self.leader()
        if leader is not None and self.rng.random() < 0.5:
            side = {leader.id}  # the classic: cut the leader off
        else:
            self.rng.shuffle(ids)
            side = set(ids[: self.rng.randint(1, len(ids) - 1)])
        self.blocked = {(a, b) for a in ids for b in ids if (a in side) != (b in side)}
        self._trace("partition", sorted(side))

    def _transfer(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        voters = sorted(leader.raw.raft.tracker.voters - {leader.id})
        if voters:
            leader.raw.transfer_leader(self.rng.choice(voters))
            self.drive(leader)

    def _change_membership(self) -> None:
        leader = self.leader()
        if leader is None:
            return
        tracker = leader.raw.raft.tracker
        outsiders = sorted(set(self.nodes) - tracker.voters - tracker.learners)
        choices = []
        if outsiders:
            choices.append(ConfChange(ConfChangeType.ADD_LEARNER, self.rng.choice(outsiders)))
        if tracker.learners:
            learner = self.rng.choice(sorted(tracker.learners))
            choices.append(ConfChange(ConfChangeType.ADD_VOTER, learner))
            choices.append(ConfChange(ConfChangeType.REMOVE, learner))
        if len(tracker.voters) > 2:
            choices.append(ConfChange(ConfChangeType.REMOVE, self.rng.choice(sorted(tracker.voters))))
        if not choices:
            return
        change = self.rng.choice(choices)
        try:
            leader.raw.propose_conf_change(change)
        except ProposalDropped:
            return
        self._trace("propose conf change", change)
        self.drive(leader)

    def compact(self, node: SimNode) -> None:
        applied = node.state_machine.applied
        if applied - node.storage.first_index() < 8:
            return
        node.storage.create_snapshot(
            applied, node.state_machine.conf_state, node.state_machine.snapshot_data()
        )
        node.storage.compact(applied)
        self._trace("compact", node.id, applied)

    # --- Running ---------------------------------------------------------------

    def tick(self) -> None:
        self._act()
        nodes = self.up_nodes()
        self.rng.shuffle(nodes)
        for node in nodes:
            if node.up:
                node.raw.tick()
                self.drive(node)
        self.deliver_until(self.now + TICK_UNITS)
        self.now = self.tick_count * TICK_UNITS + TICK_UNITS
        self.tick_count += 1

    def run(self, ticks: int) -> None:
        for _ in range(ticks):
            self.tick()

    def heal_and_check_progress(self) -> None:
        """Heal everything; a new proposal must commit and reach every member in time."""
        self.chaos = self.chaos.healed()
        self.blocked = set()
        self.paused_until = {}
        for node in list(self.nodes.values()):
            if not node.up:
                self.start(node)
        deadline = self.tick_count + HEAL_DEADLINE_TICKS
        attempts = 0
        while self.tick_count < deadline:
            self.tick()
            leader = self.leader()
            if leader is None:
                continue
            if not self.final_index:
                # Retry now and then: a proposal in flight may be lost to a new leader.
                if self.tick_count % PROPOSAL_RETRY_TICKS == 0 or attempts == 0:
                    attempts += 1
                    self.propose_value(leader, b"%s%d" % (FINAL_VALUE_PREFIX, attempts))
                continue
            tracker = leader.raw.raft.tracker
            members = tracker.voters | tracker.learners
            if all(self.nodes[m].state_machine.applied >= self.final_index for m in members):
                return
        self.fail(f"no progress within {HEAL_DEADLINE_TICKS} ticks after healing "
                  f"(final entry at {self.final_index}, committed {self.max_committed})")


def run_seed(seed: int, trace: bool = False) -> Cluster:
    """One full simulation: chaos, then heal and require progress."""
    rng = random.Random(seed)
    voter_count = rng.choice([3, 5])
    spare_count = rng.choice([1, 2])
    # Most runs are short; one in ten is long, for long histories (many
    # terms, compactions, membership changes).
    chaos_ticks = rng.randint(80, 200)
    if rng.random() < 0.1:
        chaos_ticks = rng.randint(400, 800)
    cluster = Cluster(seed, voter_count=voter_count, spare_count=spare_count, trace=trace)
    cluster.run(chaos_ticks)
    cluster.heal_and_check_progress()
    return cluster
