"""Elections: one claim per test, as in etcd's raft_paper_test.go."""

import random

from raft_harness import Net, bootstrap_storage, make_node, storage_with_log
from shards.raft import Message, MessageType, Role
from shards.raft.core import CAMPAIGN_TRANSFER, Config, Raft

ELECTION_TICKS = 10


def vote_request(frm, term, last_index, last_term, vote_type=MessageType.VOTE, context=b""):
    return Message(vote_type, to=1, frm=frm, term=term, log_term=last_term, index=last_index,
                   context=context)


def responses(raft, response_type):
    return [m for m in raft.msgs_after_persist if m.type == response_type]


def test_election_timeout_is_randomized_within_one_to_two_timeouts():
    timeouts = set()
    for seed in range(50):
        raft = Raft(Config(id=1), bootstrap_storage([1, 2, 3]), random.Random(seed))
        ticks = 0
        while raft.role == Role.FOLLOWER:
            raft.tick()
            ticks += 1
        assert ELECTION_TICKS <= ticks < 2 * ELECTION_TICKS
        timeouts.add(ticks)
    assert len(timeouts) > 3


def test_a_timed_out_follower_first_asks_for_pre_votes_without_raising_its_term():
    raft = Raft(Config(id=1), bootstrap_storage([1, 2, 3]), random.Random(1))
    for _ in range(2 * ELECTION_TICKS):
        raft.tick()
    assert raft.role == Role.PRE_CANDIDATE
    assert raft.term == 0
    requests = [m for m in raft.msgs if m.type == MessageType.PRE_VOTE]
    assert sorted(m.to for m in requests) == [2, 3]
    assert all(m.term == 1 for m in requests)


def test_cluster_elects_exactly_one_leader_by_ticking():
    net = Net([1, 2, 3])
    net.tick_all(3 * ELECTION_TICKS)
    assert len(net.leaders()) == 1
    leader = net.leaders()[0]
    for node_id in (1, 2, 3):
        assert net.raft(node_id).lead == leader
        assert net.raft(node_id).term == net.raft(leader).term


def test_candidate_wins_with_majority_of_votes():
    net = Net([1, 2, 3, 4, 5])
    net.isolate(4)
    net.isolate(5)
    net.elect(1)  # 1, 2 and 3 are a majority of five
    assert net.leaders() == [1]


def test_candidate_without_majority_does_not_win():
    net = Net([1, 2, 3, 4, 5])
    for node_id in (3, 4, 5):
        net.isolate(node_id)
    net.nodes[1].campaign()
    net.flush()
    assert net.raft(1).role != Role.LEADER


def test_vote_is_refused_to_a_candidate_whose_last_term_is_older():
    raft = Raft(Config(id=1), storage_with_log([1, 2, 3], [1, 2]), random.Random(1))
    raft.step(vote_request(frm=2, term=3, last_index=5, last_term=1))
    assert [m.reject for m in responses(raft, MessageType.VOTE_RESP)] == [True]
    assert raft.vote == 0


def test_vote_is_refused_to_a_candidate_with_a_shorter_log_of_the_same_term():
    raft = Raft(Config(id=1), storage_with_log([1, 2, 3], [1, 2, 2]), random.Random(1))
    raft.step(vote_request(frm=2, term=3, last_index=2, last_term=2))
    assert [m.reject for m in responses(raft, MessageType.VOTE_RESP)] == [True]


def test_vote_is_granted_to_a_candidate_at_least_as_up_to_date():
    raft = Raft(Config(id=1), storage_with_log([1, 2, 3], [1, 2, 2]), random.Random(1))
    raft.step(vote_request(frm=2, term=3, last_index=3, last_term=2))
    assert [m.reject for m in responses(raft, MessageType.VOTE_RESP)] == [False]
    assert (raft.term, raft.vote) == (3, 2)


def test_a_node_votes_at_most_once_per_term():
    raft = Raft(Config(id=1), bootstrap_storage([1, 2, 3]), random.Random(1))
    raft.step(vote_request(frm=2, term=1, last_index=0, last_term=0))
    raft.step(vote_request(frm=3, term=1, last_index=0, last_term=0))
    raft.step(vote_request(frm=2, term=1, last_index=0, last_term=0))  # a retry
    assert [(m.to, m.reject) for m in responses(raft, MessageType.VOTE_RESP)] == [
        (2, False),
        (3, True),
        (2, False),
    ]


def test_candidate_steps_down_on_append_from_a_leader_of_its_term():
    raft = Raft(Config(id=1), bootstrap_storage([1, 2, 3]), random.Random(1))
    raft.become_candidate()
    raft.step(Message(MessageType.APP, to=1, frm=2, term=raft.term))
    assert raft.role == Role.FOLLOWER
    assert raft.lead == 2


def test_leader_steps_down_on_a_message_with_a_higher_term():
    net = Net([1, 2, 3])
    leader = net.elect(1).raft
    leader.step(Message(MessageType.APP_RESP, to=1, frm=2, term=leader.term + 1))
    assert leader.role == Role.FOLLOWER
    assert leader.lead == 0


def test_pre_vote_keeps_a_rejoining_partitioned_node_from_disrupting_the_leader():
    net = Net([1, 2, 3])
    net.elect(1)
    term = net.raft(1).term
    net.isolate(3)
    net.tick(3, 5 * ELECTION_TICKS)
    assert net.raft(3).term == term  # pre-votes failed, so its term never moved
    net.heal()
    net.tick_all(3)
    assert net.leaders() == [1]
    assert net.raft(1).term == term
    assert net.raft(3).lead == 1


def test_without_pre_vote_a_rejoining_node_disrupts_the_leader():
    net = Net([1, 2, 3], pre_vote=False, check_quorum=False)
    net.elect(1)
    term = net.raft(1).term
    net.isolate(3)
    net.tick(3, 5 * ELECTION_TICKS)
    assert net.raft(3).term > term
    net.heal()
    net.tick_all(2 * ELECTION_TICKS)
    assert net.raft(1).term > term  # the old leader was deposed


def test_check_quorum_leader_steps_down_when_it_cannot_hear_a_quorum():
    net = Net([1, 2, 3])
    net.elect(1)
    net.isolate(1)
    net.tick(1, 2 * ELECTION_TICKS)
    assert net.raft(1).role == Role.FOLLOWER


def test_check_quorum_leader_stays_while_a_quorum_answers():
    net = Net([1, 2, 3])
    net.elect(1)
    net.isolate(3)
    for _ in range(5 * ELECTION_TICKS):
        net.tick(1)
    assert net.raft(1).role == Role.LEADER


def test_leader_lease_follower_ignores_votes_while_it_hears_from_a_leader():
    net = Net([1, 2, 3])
    net.elect(1)
    follower = net.raft(2)
    term = follower.term
    follower.step(vote_request(frm=3, term=term + 1, last_index=100, last_term=term)._replace(to=2))
    assert follower.term == term
    assert not follower.msgs_after_persist and not follower.msgs


def test_leader_lease_is_overridden_by_a_leadership_transfer_vote():
    net = Net([1, 2, 3])
    net.elect(1)
    follower = net.raft(2)
    term = follower.term
    request = vote_request(frm=3, term=term + 1, last_index=100, last_term=term,
                           context=CAMPAIGN_TRANSFER)
    follower.step(request._replace(to=2))
    assert follower.term == term + 1
    assert follower.vote == 3


def test_learner_never_campaigns():
    learner = make_node(3, bootstrap_storage([1, 2], learners=[3])).raft
    for _ in range(10 * ELECTION_TICKS):
        learner.tick()
    assert learner.role == Role.FOLLOWER
    assert not learner.msgs


def test_learner_is_not_asked_for_votes_and_its_vote_does_not_count():
    net = Net([1, 2], learners=[3])
    net.isolate(2)
    net.nodes[1].campaign()
    net.flush()
    assert net.raft(1).role != Role.LEADER
    assert not [m for m in net.delivered if m.to == 3]
    candidate = net.raft(1)
    candidate.tracker.record_vote(3, True)
    assert candidate.tracker.tally_votes() == (False, False)


def test_own_vote_counts_only_after_it_is_persisted():
    node = make_node(1, bootstrap_storage([1]), pre_vote=False)
    node.campaign()
    ready = node.ready()
    assert ready.hard_state.vote == 1
    assert node.raft.role == Role.CANDIDATE  # not leader before the vote is durable
    node.advance(ready)
    assert node.raft.role == Role.LEADER
