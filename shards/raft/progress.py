"""What the leader knows about each follower, and who counts toward a quorum.

A `Progress` follows etcd's three states:

- PROBE: the leader does not know where the follower's log matches its own.
  It sends one append at a time (then pauses until a response or heartbeat
  response) and walks `next` back on each rejection, using the follower's
  hints to skip whole terms.
- REPLICATE: the follower is known to match up to `match`; the leader streams
  appends optimistically, advancing `next` as it sends, with at most
  `max_inflight_msgs` unacknowledged messages (`Inflights`).
- SNAPSHOT: the follower needs entries the leader has compacted; the leader
  sent a snapshot and waits for the transport's report (MsgSnapStatus) or an
  append response showing the follower caught up.

`ProgressTracker` holds the membership (voters, learners), the progress of
each member (meaningful on the leader only), and the votes of an election.
Quorums count voters only; a learner receives the log but never votes.
"""

from __future__ import annotations

from collections import deque
from enum import IntEnum

from shards.raft.storage import ConfState


class ProgressState(IntEnum):
    PROBE = 0
    REPLICATE = 1
    SNAPSHOT = 2


class Inflights:
    """Last indexes of the appends sent but not yet acknowledged, oldest first."""

    __slots__ = ("max_inflight_msgs", "_last_indexes")

    def __init__(self, max_inflight_msgs: int) -> None:
        self.max_inflight_msgs = max_inflight_msgs
        self._last_indexes: deque[int] = deque()

    def add(self, last_index: int) -> None:
        self._last_indexes.append(last_index)

    def free_le(self, index: int) -> None:
        last_indexes = self._last_indexes
        while last_indexes and last_indexes[0] <= index:
            last_indexes.popleft()

    def free_first_one(self) -> None:
        if self._last_indexes:
            self._last_indexes.popleft()

    def full(self) -> bool:
        return len(self._last_indexes) >= self.max_inflight_msgs

    def count(self) -> int:
        return len(self._last_indexes)

    def reset(self) -> None:
        self._last_indexes.clear()


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "pending_snapshot",
        "recent_active",
        "probe_sent",
        "inflights",
        "is_learner",
    )

    def __init__(
        self, next_index: int, max_inflight_msgs: int, is_learner: bool, recent_active: bool
    ) -> None:
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.pending_snapshot = 0
        # Heard from since the last CheckQuorum round. A leader sends a
        # snapshot only to a follower that is recently active.
        self.recent_active = recent_active
        self.probe_sent = False
        self.inflights = Inflights(max_inflight_msgs)
        self.is_learner = is_learner

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state.name}, "
            f"inflight={self.inflights.count()}, learner={self.is_learner})"
        )

    def _reset_state(self, state: ProgressState) -> None:
        self.probe_sent = False
        self.pending_snapshot = 0
        self.state = state
        self.inflights.reset()

    def become_probe(self) -> None:
        if self.state == ProgressState.SNAPSHOT:
            pending_snapshot = self.pending_snapshot
            self._reset_state(ProgressState.PROBE)
            self.next = max(self.match + 1, pending_snapshot + 1)
        else:
            self._reset_state(ProgressState.PROBE)
            self.next = self.match + 1

    def become_replicate(self) -> None:
        self._reset_state(ProgressState.REPLICATE)
        self.next = self.match + 1

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset_state(ProgressState.SNAPSHOT)
        self.pending_snapshot = snapshot_index

    def maybe_update(self, index: int) -> bool:
        """The follower acknowledged entries up to index; False if stale."""
        updated = self.match < index
        if updated:
            self.match = index
            self.probe_sent = False
        if self.next < index + 1:
            self.next = index + 1
        return updated

    def maybe_decr_to(self, rejected: int, match_hint: int) -> bool:
        """The append at `rejected` was refused; move next back. False if stale."""
        if self.state == ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = self.match + 1
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(min(rejected, match_hint + 1), self.match + 1)
        self.probe_sent = False
        return True

    def sent_entries(self, count: int, last_index: int) -> None:
        if self.state == ProgressState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflights.add(last_index)
        elif self.state == ProgressState.PROBE:
            self.probe_sent = True

    def is_paused(self) -> bool:
        if self.state == ProgressState.PROBE:
            return self.probe_sent
        if self.state == ProgressState.REPLICATE:
            return self.inflights.full()
        return True


def quorum_size(voter_count: int) -> int:
    return voter_count // 2 + 1


class ProgressTracker:
    def __init__(self, max_inflight_msgs: int) -> None:
        self.max_inflight_msgs = max_inflight_msgs
        self.voters: set[int] = set()
        self.learners: set[int] = set()
        self.progress: dict[int, Progress] = {}
        self.votes: dict[int, bool] = {}

    def conf_state(self) -> ConfState:
        return ConfState(tuple(sorted(self.voters)), tuple(sorted(self.learners)))

    def restore(self, conf_state: ConfState, next_index: int) -> None:
        self.voters = set(conf_state.voters)
        self.learners = set(conf_state.learners)
        self.progress = {}
        for member in self.voters | self.learners:
            self.progress[member] = Progress(
                next_index, self.max_inflight_msgs, member in self.learners, recent_active=False
            )

    def add_voter(self, node_id: int, next_index: int) -> None:
        self.learners.discard(node_id)
        self.voters.add(node_id)
        progress = self.progress.get(node_id)
        if progress is None:
            # A new member counts as active, or CheckQuorum could depose us at once.
            self.progress[node_id] = Progress(next_index, self.max_inflight_msgs, False, True)
        else:
            progress.is_learner = False

    def add_learner(self, node_id: int, next_index: int) -> None:
        self.voters.discard(node_id)
        self.learners.add(node_id)
        progress = self.progress.get(node_id)
        if progress is None:
            self.progress[node_id] = Progress(next_index, self.max_inflight_msgs, True, True)
        else:
            progress.is_learner = True

    def remove(self, node_id: int) -> None:
        self.voters.discard(node_id)
        self.learners.discard(node_id)
        self.progress.pop(node_id, None)
        self.votes.pop(node_id, None)

    def quorum_value(self, values: dict[int, int]) -> int:
        """The largest value that a quorum of voters has reached (0 if none)."""
        voters = self.voters
        if not voters:
            return 0
        reached = sorted(values.get(voter, 0) for voter in voters)
        return reached[len(reached) - quorum_size(len(reached))]

    def committed_index(self) -> int:
        """The highest index a quorum of voters has persisted."""
        progress = self.progress
        return self.quorum_value({voter: progress[voter].match for voter in self.voters if voter in progress})

    def quorum_active(self) -> bool:
        active = sum(
            1 for voter in self.voters if voter in self.progress and self.progress[voter].recent_active
        )
        return active >= quorum_size(len(self.voters))

    # --- Elections -----------------------------------------------------------

    def reset_votes(self) -> None:
        self.votes = {}

    def record_vote(self, node_id: int, granted: bool) -> None:
        self.votes.setdefault(node_id, granted)

    def tally_votes(self) -> tuple[bool, bool]:
        """(won, lost) of the current election among voters."""
        granted = sum(1 for voter, vote in self.votes.items() if vote and voter in self.voters)
        rejected = sum(1 for voter, vote in self.votes.items() if not vote and voter in self.voters)
        needed = quorum_size(len(self.voters))
        return granted >= needed, rejected > len(self.voters) - needed
