"""The simulation's checks have teeth: inject a known raft bug, expect a catch.

Each test breaks one rule of the protocol (monkeypatched for that test only)
and runs simulation seeds until an invariant fails. If the simulation ran
clean with the rule broken, its checks would be too weak to trust.
"""

import pytest

from shards.raft.core import Raft, ReadRound
from shards.raft.log import RaftLog
from simulation import run_seed

SEEDS_TO_CATCH = 200


def caught_within_seeds():
    for seed in range(SEEDS_TO_CATCH):
        try:
            run_seed(seed)
        except Exception as error:
            return seed, error
    return None


def grant_votes_to_stale_logs(monkeypatch):
    monkeypatch.setattr(RaftLog, "is_up_to_date", lambda self, last_index, last_term: True)


def vote_twice_per_term(monkeypatch):
    original = Raft._handle_vote_request

    def forgetful(self, m):
        self.vote = 0
        self.lead = 0
        original(self, m)

    monkeypatch.setattr(Raft, "_handle_vote_request", forgetful)


def answer_reads_without_quorum(monkeypatch):
    def answer_at_once(self):
        for requester, context in self.unsent_reads:
            self._answer_read(requester, context, self.log.committed)
        self.unsent_reads = []

    monkeypatch.setattr(Raft, "_flush_reads", answer_at_once)


def join_reads_to_a_round_already_sent(monkeypatch):
    def join(self):
        if self.read_rounds:
            self.read_rounds[-1].requests.extend(self.unsent_reads)
        else:
            self.read_seq += 1
            self.read_rounds.append(ReadRound(self.read_seq, self.log.committed, self.unsent_reads))
            self._bcast_heartbeat()
        self.unsent_reads = []

    monkeypatch.setattr(Raft, "_flush_reads", join)


def ignore_conflicting_entries(monkeypatch):
    monkeypatch.setattr(RaftLog, "find_conflict", lambda self, entries: 0)


def keep_membership_over_a_snapshot(monkeypatch):
    original = Raft._restore

    def restore(self, snapshot):
        before = self.tracker.conf_state()
        restored = original(self, snapshot)
        if restored:
            self.tracker.restore(before, self.log.last_index() + 1)
        return restored

    monkeypatch.setattr(Raft, "_restore", restore)


@pytest.mark.parametrize(
    "inject_bug",
    [
        grant_votes_to_stale_logs,
        vote_twice_per_term,
        answer_reads_without_quorum,
        join_reads_to_a_round_already_sent,
        ignore_conflicting_entries,
        keep_membership_over_a_snapshot,
    ],
)
def test_simulation_catches_injected_bug(monkeypatch, inject_bug):
    inject_bug(monkeypatch)
    assert caught_within_seeds() is not None, f"{inject_bug.__name__} went unnoticed"
