"""The quorum arithmetic checked against a deliberately naive version."""

from hypothesis import given
from hypothesis import strategies as st

from shards.raft.progress import ProgressTracker
from shards.raft.storage import ConfState

match_indexes = st.dictionaries(st.integers(1, 9), st.integers(0, 50), min_size=1, max_size=9)


def naive_committed_index(matches: dict[int, int]) -> int:
    """The largest index that more than half of the voters have reached."""
    return max(
        (index for index in set(matches.values()) | {0}
         if sum(1 for match in matches.values() if match >= index) * 2 > len(matches)),
    )


def tracker_with(matches: dict[int, int], learners: dict[int, int]) -> ProgressTracker:
    tracker = ProgressTracker(max_inflight_msgs=4)
    tracker.restore(ConfState(tuple(matches), tuple(learners)), next_index=1)
    for node_id, match in {**matches, **learners}.items():
        tracker.progress[node_id].match = match
    return tracker


@given(match_indexes, st.dictionaries(st.integers(10, 12), st.integers(0, 50)))
def test_committed_index_is_what_a_majority_of_voters_has(matches, learners):
    assert tracker_with(matches, learners).committed_index() == naive_committed_index(matches)


@given(match_indexes, st.dictionaries(st.integers(10, 12), st.booleans()))
def test_votes_win_with_a_majority_and_lose_when_it_is_out_of_reach(matches, learner_votes):
    tracker = tracker_with(matches, {})
    voters = sorted(matches)
    granted = {voter: match % 2 == 0 for voter, match in matches.items()}
    for voter, vote in {**granted, **learner_votes}.items():
        tracker.record_vote(voter, vote)
    won = sum(granted.values()) * 2 > len(voters)
    # Every voter has answered (learners' answers do not count): not won means lost.
    assert tracker.tally_votes() == (won, not won)


@given(match_indexes)
def test_an_election_is_undecided_until_enough_votes_arrive(matches):
    tracker = tracker_with(matches, {})
    voters = sorted(matches)
    majority = len(voters) // 2 + 1
    for voter in voters[: majority - 1]:
        tracker.record_vote(voter, True)
    assert tracker.tally_votes() == (False, False)
    for voter in voters[majority - 1 :][: len(voters) - majority + 1]:
        tracker.record_vote(voter, False)
    assert tracker.tally_votes() == (False, True)
