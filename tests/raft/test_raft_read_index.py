"""ReadIndex linearizable reads: one claim per test."""

import pytest

from raft_harness import Net, bootstrap_storage, make_node
from shards.raft import MessageType, ProposalDropped, ReadState, Role


def heartbeats(net):
    return [m for m in net.delivered if m.type == MessageType.HEARTBEAT]


def test_reads_received_together_share_one_heartbeat_round():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    net.delivered.clear()
    for context in (b"a", b"b", b"c"):
        leader.read_index(context)
    net.flush()
    assert len(heartbeats(net)) == 2  # one per follower, for all three reads
    commit = net.raft(1).log.committed
    assert net.read_states[1] == [ReadState(commit, b"a"), ReadState(commit, b"b"),
                                  ReadState(commit, b"c")]


def test_read_is_answered_only_after_a_quorum_confirms_leadership():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    net.message_filter = lambda m: m.type != MessageType.HEARTBEAT_RESP
    leader.read_index(b"r")
    net.flush()
    assert net.read_states[1] == []
    net.message_filter = lambda m: True
    net.tick(1)  # the next heartbeat round confirms it
    assert [rs.context for rs in net.read_states[1]] == [b"r"]


def test_one_acknowledgement_plus_the_leader_is_a_quorum_of_three():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    net.isolate(3)
    leader.read_index(b"r")
    net.flush()
    assert [rs.context for rs in net.read_states[1]] == [b"r"]


def test_leader_answers_reads_only_after_committing_an_entry_of_its_term():
    net = Net([1, 2, 3])
    net.message_filter = lambda m: m.type != MessageType.APP_RESP
    leader = net.elect(1)
    leader.read_index(b"early")
    net.flush()
    assert net.read_states[1] == []
    assert net.raft(1).log.committed == 0
    net.message_filter = lambda m: True
    net.tick(1)
    [answer] = net.read_states[1]
    assert answer.index >= 1  # at least the new term's empty entry


def test_follower_read_is_forwarded_and_answered_by_the_leader():
    net = Net([1, 2, 3])
    net.elect(1)
    net.nodes[2].read_index(b"f")
    net.flush()
    assert net.read_states[2] == [ReadState(net.raft(1).log.committed, b"f")]
    assert net.read_states[1] == []


def test_read_index_covers_writes_committed_before_the_read():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    leader.propose(b"w")
    net.flush()
    write_index = net.applied[1][-1].index
    net.nodes[3].read_index(b"after write")
    net.flush()
    assert net.read_states[3][0].index >= write_index


def test_read_without_a_leader_is_dropped():
    node = make_node(1, bootstrap_storage([1, 2, 3]))
    with pytest.raises(ProposalDropped):
        node.read_index(b"x")


def test_single_voter_answers_reads_at_once():
    net = Net([1])
    leader = net.elect(1)
    leader.read_index(b"solo")
    net.flush()
    assert [rs.context for rs in net.read_states[1]] == [b"solo"]


def test_reads_beyond_the_pending_limit_are_refused():
    net = Net([1, 2, 3], max_pending_reads=2)
    leader = net.elect(1)
    net.message_filter = lambda m: m.type != MessageType.HEARTBEAT_RESP
    leader.read_index(b"1")
    leader.read_index(b"2")
    with pytest.raises(ProposalDropped):
        leader.read_index(b"3")
    net.flush()
    net.message_filter = lambda m: True
    net.tick(1)
    assert len(net.read_states[1]) == 2
    leader.read_index(b"4")  # answered reads free their places


def test_a_partitioned_leader_never_answers_reads():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    net.isolate(1)
    leader.read_index(b"stale?")
    net.tick(1, 3 * 10)  # it steps down (CheckQuorum) without an answer
    assert net.read_states[1] == []
    assert net.raft(1).role != Role.LEADER
