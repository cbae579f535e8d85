"""Regressions for the findings of the raft core's safety review, each replayed as found."""

import pytest
from raft_harness import Net, make_node, persist

from shards.raft import ConfChange, ConfChangeType, Message, MessageType, ProposalDropped, Role
from shards.raft.errors import ConfigError
from shards.raft.storage import Entry, EntryType


def test_a_restart_may_not_skip_membership_changes_after_the_snapshot():
    """Two leaders in one term followed when restarted nodes forgot voters 4 and 5."""
    net = Net([1, 2, 3], others=[4, 5])
    net.elect(1)
    for new in (4, 5):
        net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.ADD_VOTER, new))
        net.flush()
        net.tick_all(3)
    assert all(sorted(node.raft.tracker.voters) == [1, 2, 3, 4, 5] for node in net.nodes.values())
    with pytest.raises(ConfigError, match="would skip membership changes"):
        make_node(2, net.storages[2], applied_index=net.raft(2).log.applied)
    # Restarting at the snapshot replays the changes: membership is whole again.
    net.nodes[2] = make_node(2, net.storages[2])
    net.flush()
    net.tick_all(3)
    assert sorted(net.raft(2).tracker.voters) == [1, 2, 3, 4, 5]


def test_a_lone_voter_answers_a_read_that_came_before_its_first_commit():
    net = Net([1])
    node = net.nodes[1]
    node.campaign()
    for _ in range(10):
        if node.raft.role == Role.LEADER:
            break
        ready = node.ready()
        persist(net.storages[1], ready)
        node.advance(ready)
    assert node.raft.role == Role.LEADER and not node.raft.committed_entry_in_current_term()
    node.read_index(b"early")
    net.flush()
    for _ in range(5):
        net.tick_all()
    assert [state.context for state in net.read_states[1]] == [b"early"]
    assert node.raft.pending_read_count == 0 and not node.raft.read_rounds


def test_a_refused_batch_of_membership_changes_leaves_no_trace():
    net = Net([1, 2, 3], others=[4])
    leader = net.elect(1).raft
    before = (leader.pending_conf_index, leader.log.last_index())
    change = Entry(0, 0, EntryType.CONF_CHANGE, ConfChange(ConfChangeType.ADD_LEARNER, 4).encode())
    with pytest.raises(ProposalDropped, match="one membership change at a time"):
        leader.step(Message(MessageType.PROP, frm=1, entries=[change, change]))
    malformed = Entry(0, 0, EntryType.CONF_CHANGE, b"\x07")
    with pytest.raises(ProposalDropped, match="malformed membership change"):
        leader.step(Message(MessageType.PROP, frm=1, entries=[malformed]))
    assert (leader.pending_conf_index, leader.log.last_index()) == before
    net.nodes[1].propose_conf_change(ConfChange(ConfChangeType.ADD_LEARNER, 4))  # not blocked
