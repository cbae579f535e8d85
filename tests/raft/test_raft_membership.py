"""Single-server membership changes and leadership transfer: one claim per test."""

import pytest

from raft_harness import Net
from shards.raft import ConfChange, ConfChangeType, MessageType, ProposalDropped, Role

ELECTION_TICKS = 10


def change(net, change_type, node_id, leader_id=1):
    net.nodes[leader_id].propose_conf_change(ConfChange(change_type, node_id))
    net.flush()


def test_conf_change_takes_effect_when_applied():
    net = Net([1, 2, 3], others=[4])
    net.elect(1)
    net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    assert 4 not in net.raft(1).tracker.learners  # proposed, not yet applied
    net.flush()
    for node_id in (1, 2, 3):
        assert net.conf_states[node_id].learners == (4,)


def test_added_learner_receives_the_log():
    net = Net([1, 2, 3], others=[4])
    leader = net.elect(1)
    leader.propose(b"before")
    net.flush()
    change(net, ConfChangeType.ADD_LEARNER, 4)
    leader.propose(b"after")
    net.flush()
    assert net.applied_data(4)[-1] == b"after"
    assert b"before" in net.applied_data(4)


def test_learner_does_not_count_toward_the_commit_quorum():
    net = Net([1, 2], learners=[3])
    leader = net.elect(1)
    net.down.add(2)
    leader.propose(b"x")
    net.flush()
    assert net.applied_data(3) == []  # only the leader and the learner have it
    net.down.discard(2)
    net.tick_all(1)
    assert net.applied_data(1) == [b"x"]


def test_promoted_learner_counts_toward_the_quorum():
    net = Net([1, 2, 3], others=[4])
    leader = net.elect(1)
    change(net, ConfChangeType.ADD_LEARNER, 4)
    change(net, ConfChangeType.ADD_VOTER, 4)
    assert net.conf_states[1].voters == (1, 2, 3, 4)
    net.down.update({2, 3})
    leader.propose(b"needs three of four")
    net.flush()
    assert net.applied_data(1) == []
    net.down.discard(3)
    net.tick_all(1)
    assert net.applied_data(1) == [b"needs three of four"]


def test_removal_shrinks_the_quorum():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    change(net, ConfChangeType.REMOVE, 3)
    net.down.add(2)
    leader.propose(b"x")
    net.flush()
    assert net.applied_data(1) == []  # two voters: both are needed
    net.down.discard(2)
    net.tick_all(1)
    assert net.applied_data(1) == [b"x"]
    assert net.conf_states[1].voters == (1, 2)


def test_only_one_membership_change_may_be_pending():
    net = Net([1, 2, 3], others=[4])
    leader = net.elect(1)
    leader.propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))
    with pytest.raises(ProposalDropped):
        leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))
    net.flush()
    leader.propose_conf_change(ConfChange(ConfChangeType.REMOVE, 3))  # applied: allowed now


def test_removed_leader_steps_down_and_the_rest_elect_a_new_one():
    net = Net([1, 2, 3])
    net.elect(1)
    change(net, ConfChangeType.REMOVE, 1)
    assert net.raft(1).role == Role.FOLLOWER
    net.isolate(1)
    net.tick_all(3 * ELECTION_TICKS)
    assert len(net.leaders()) == 1 and net.leaders()[0] in (2, 3)


def test_removed_node_can_be_re_added_as_learner_and_catch_up():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    change(net, ConfChangeType.REMOVE, 3)
    leader.propose(b"while removed")
    net.flush()
    assert b"while removed" not in net.applied_data(3)
    change(net, ConfChangeType.ADD_LEARNER, 3)
    change(net, ConfChangeType.ADD_VOTER, 3)
    assert b"while removed" in net.applied_data(3)
    assert net.conf_states[3].voters == (1, 2, 3)


def test_transfer_to_a_caught_up_follower_makes_it_leader():
    net = Net([1, 2, 3])
    net.elect(1)
    term = net.raft(1).term
    net.nodes[1].transfer_leader(2)
    net.flush()
    assert net.leaders() == [2]
    assert net.raft(2).term == term + 1
    assert any(m.type == MessageType.TIMEOUT_NOW and m.to == 2 for m in net.delivered)


def test_transfer_to_a_lagging_follower_first_brings_it_up_to_date():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    net.down.add(3)
    for i in range(5):
        leader.propose(b"%d" % i)
        net.flush()
    net.down.discard(3)
    leader.transfer_leader(3)
    net.flush()
    assert net.leaders() == [3]
    assert net.applied_data(3) == [b"%d" % i for i in range(5)]


def test_proposals_are_refused_during_a_transfer():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    net.down.add(3)
    leader.propose(b"x")
    net.flush()
    leader.transfer_leader(3)  # 3 is behind and unreachable: the transfer waits
    net.flush()
    with pytest.raises(ProposalDropped):
        leader.propose(b"refused")


def test_transfer_is_abandoned_after_an_election_timeout():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    net.down.add(3)
    leader.propose(b"x")
    net.flush()
    leader.transfer_leader(3)
    net.flush()
    net.tick(1, ELECTION_TICKS)
    assert net.raft(1).lead_transferee == 0
    assert net.leaders() == [1]
    leader.propose(b"accepted again")


def test_transfer_to_a_learner_is_ignored():
    net = Net([1, 2], learners=[3])
    leader = net.elect(1)
    leader.transfer_leader(3)
    net.flush()
    assert net.leaders() == [1]
    assert net.raft(1).lead_transferee == 0
