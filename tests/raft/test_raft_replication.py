"""Log replication and commitment: one claim per test."""

import random

import pytest

from raft_harness import Net, bootstrap_storage, make_node, persist, storage_with_log
from shards.raft import Message, MessageType, ProposalDropped, Role
from shards.raft.core import Config, Raft
from shards.raft.log import batch_size_bytes
from shards.raft.progress import ProgressState
from shards.raft.storage import Entry, HardState


def appends_to(net, node_id):
    return [m for m in net.delivered if m.type == MessageType.APP and m.to == node_id]


def test_committed_entries_are_applied_in_order_on_every_node():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    for value in (b"a", b"b", b"c"):
        leader.propose(value)
        net.flush()
    for node_id in (1, 2, 3):
        assert net.applied_data(node_id) == [b"a", b"b", b"c"]


def committed_round(net: Net) -> int:
    """Node 1 leads; one proposal is appended everywhere and its acknowledgements stepped on the
    leader, whose commit index advances; nothing is sent yet. Returns that index."""
    leader = net.nodes[1]
    leader.propose(b"first")
    net.drain(1)
    appends, net.pending = net.pending, []
    for append in appends:
        net.nodes[append.to].step(append)
    net.drain(2)
    net.drain(3)
    acknowledgements, net.pending = net.pending, []
    for acknowledgement in acknowledgements:
        leader.step(acknowledgement)
    assert leader.committed == net.raft(1).log.last_index()
    return leader.committed


def appends_sent(ready) -> list[tuple[int, list[bytes], int]]:
    return sorted((m.to, [e.data for e in m.entries], m.commit) for m in ready.messages if m.type == MessageType.APP)


def test_a_batch_proposed_in_the_turn_that_commits_the_last_shares_its_append_with_the_commit():
    """The commit index a round of acknowledgements advances is not sent on its own: it goes out with
    what is proposed before the next Ready, one append per follower (one wake and one ack each)."""
    net = Net([1, 2, 3])
    leader = net.elect(1)
    first_index = committed_round(net)
    leader.propose(b"second")
    assert appends_sent(leader.ready()) == [(2, [b"second"], first_index), (3, [b"second"], first_index)]


def test_a_deferred_commit_index_waits_for_the_next_proposal_and_goes_out_with_it():
    """While the caller holds its next proposals (defer_commit_broadcast), a commit index that advanced
    alone is not sent: the followers get it with those proposals, in one append each."""
    net = Net([1, 2, 3])
    leader = net.elect(1)
    leader.defer_commit_broadcast(True)
    first_index = committed_round(net)
    ready = leader.ready()
    assert appends_sent(ready) == []
    assert [e.data for e in ready.committed_entries] == [b"first"]  # the leader applies it meanwhile
    leader.advance(ready)
    leader.propose(b"second")
    assert appends_sent(leader.ready()) == [(2, [b"second"], first_index), (3, [b"second"], first_index)]


def test_a_deferred_commit_index_goes_out_alone_once_the_deferral_ends():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    leader.defer_commit_broadcast(True)
    first_index = committed_round(net)
    leader.advance(leader.ready())
    assert not leader.has_ready()
    leader.defer_commit_broadcast(False)
    assert leader.has_ready()
    assert appends_sent(leader.ready()) == [(2, [], first_index), (3, [], first_index)]


def test_follower_proposal_is_forwarded_to_the_leader():
    net = Net([1, 2, 3])
    net.elect(1)
    net.nodes[2].propose(b"via follower")
    net.flush()
    assert net.applied_data(3) == [b"via follower"]


def test_follower_overwrites_conflicting_uncommitted_entries():
    follower = Raft(Config(id=2), storage_with_log([1, 2, 3], [1, 1, 2, 2]), random.Random(2))
    follower.step(Message(MessageType.APP, to=2, frm=1, term=3, log_term=1, index=2,
                          entries=[Entry(3, 3, data=b"new")], commit=1))
    assert follower.log.last_index() == 3
    assert follower.log.term(3) == 3
    [response] = follower.msgs_after_persist
    assert (response.reject, response.index) == (False, 3)


def test_follower_rejects_append_whose_previous_entry_does_not_match():
    follower = Raft(Config(id=2), storage_with_log([1, 2, 3], [1, 1]), random.Random(2))
    follower.step(Message(MessageType.APP, to=2, frm=1, term=3, log_term=3, index=2,
                          entries=[Entry(3, 3)]))
    [response] = follower.msgs_after_persist
    assert response.reject
    assert follower.log.last_index() == 2


def test_rejection_hint_lets_the_leader_skip_a_whole_conflicting_term():
    # Leader 1 has term 3 at 6..10; follower 2 has stale term-2 entries there.
    logs = {1: [1] * 5 + [3] * 5, 2: [1] * 5 + [2] * 5, 3: [1] * 5 + [3] * 5}
    net = Net([1, 2, 3], logs=logs)
    net.elect(1)
    rejections = [m for m in net.delivered
                  if m.type == MessageType.APP_RESP and m.frm == 2 and m.reject]
    assert len(rejections) == 1  # one probe skips all five stale entries
    assert [e.term for e in net.storages[2].entries(6, 11)] == [3] * 5


def test_leader_commits_old_term_entries_only_through_an_entry_of_its_own_term():
    # Figure 8 of the Raft paper: a replica count alone never commits an old-term entry.
    leader = Raft(Config(id=1), storage_with_log([1, 2, 3], [1, 2]), random.Random(1))
    leader.become_candidate()
    leader.become_leader()  # term 3; appends an empty entry at index 3
    leader.step(Message(MessageType.APP_RESP, to=1, frm=1, term=3, index=3))
    leader.step(Message(MessageType.APP_RESP, to=1, frm=2, term=3, index=2))
    assert leader.log.committed == 0  # entry 2 is on a majority, but of term 2
    leader.step(Message(MessageType.APP_RESP, to=1, frm=2, term=3, index=3))
    assert leader.log.committed == 3


def test_new_leader_appends_an_empty_entry_that_commits_its_predecessors():
    net = Net([1, 2, 3], logs={1: [1, 1, 1], 2: [1], 3: [1]})
    net.elect(1)
    new_entry = net.storages[1].entries(4, 5)[0]
    assert (new_entry.term, new_entry.data) == (net.raft(1).term, b"")
    for node_id in (1, 2, 3):
        assert [e.index for e in net.applied[node_id]] == [1, 2, 3, 4]


def test_leader_counts_itself_only_once_its_entries_are_persisted():
    storage = bootstrap_storage([1])
    node = make_node(1, storage)
    node.campaign()
    while node.raft.role != Role.LEADER:
        ready = node.ready()
        persist(storage, ready)
        node.advance(ready)
    ready = node.ready()
    assert [e.index for e in ready.entries] == [1]
    assert node.raft.log.committed == 0  # not durable yet, so not counted
    persist(storage, ready)
    node.advance(ready)
    assert node.raft.log.committed == 1


def test_leader_sends_appends_before_persisting_followers_acknowledge_after():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    leader.propose(b"x")
    ready = leader.ready()
    assert [m.type for m in ready.messages] == [MessageType.APP, MessageType.APP]
    leader.advance(ready)
    follower = net.nodes[2]
    follower.step(ready.messages[0])
    follower_ready = follower.ready()
    assert not follower_ready.messages
    assert [m.type for m in follower_ready.persisted_messages] == [MessageType.APP_RESP]


def test_many_proposals_become_one_append_per_follower():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    net.delivered.clear()
    leader.propose_batch([b"%d" % i for i in range(100)])
    for _ in range(20):
        leader.propose(b"more")  # stepped before the next Ready: same batch
    net.flush()
    for follower in (2, 3):
        [append] = [m for m in appends_to(net, follower) if m.entries]
        assert len(append.entries) == 120


def test_inflight_window_bounds_unacknowledged_appends():
    net = Net([1, 2, 3], max_inflight_msgs=4)
    leader = net.elect(1)
    net.delivered.clear()
    net.message_filter = lambda m: not (m.type == MessageType.APP_RESP and m.frm == 2)
    for i in range(10):
        leader.propose(b"%d" % i)
        net.flush()
    assert len([m for m in appends_to(net, 2) if m.entries]) == 4
    assert len([m for m in appends_to(net, 3) if m.entries]) == 10


def test_appends_are_bounded_in_bytes():
    net = Net([1, 2, 3], max_size_per_msg_bytes=1000)
    leader = net.elect(1)
    net.down.add(3)
    for i in range(50):
        leader.propose(b"x" * 100)
        net.flush()
    net.down.discard(3)
    net.delivered.clear()
    net.tick_all(3)
    batches = [m.entries for m in appends_to(net, 3) if m.entries]
    assert len(batches) > 1
    assert all(batch_size_bytes(batch) <= 1000 for batch in batches)
    assert net.storages[3].last_index() == net.storages[1].last_index()


def test_lagging_follower_catches_up_after_rejoining():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    net.down.add(3)
    for i in range(30):
        leader.propose(b"%d" % i)
        net.flush()
    net.down.discard(3)
    net.tick_all(2)
    assert net.applied_data(3) == net.applied_data(1)


def test_proposal_without_a_leader_is_dropped():
    node = make_node(1, bootstrap_storage([1, 2, 3]))
    with pytest.raises(ProposalDropped):
        node.propose(b"x")


def test_proposal_during_an_election_is_dropped():
    net = Net([1, 2, 3])
    net.isolate(1)
    net.nodes[1].campaign()
    net.flush()
    with pytest.raises(ProposalDropped):
        net.nodes[1].propose(b"x")


def test_proposals_are_refused_while_the_uncommitted_tail_is_full():
    net = Net([1, 2, 3], max_uncommitted_entries_bytes=500)
    leader = net.elect(1)
    net.down.update({2, 3})
    accepted = 0
    with pytest.raises(ProposalDropped):
        for _ in range(10):
            leader.propose(b"x" * 100)
            net.flush()
            accepted += 1
    assert accepted == 4  # 121 bytes each within 500
    net.down.clear()
    net.tick_all(1)  # the tail commits and is applied
    leader.propose(b"x" * 100)


def test_unreachable_follower_falls_back_from_replicate_to_probe():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    progress = net.raft(1).tracker.progress[2]
    assert progress.state == ProgressState.REPLICATE
    leader.report_unreachable(2)
    assert progress.state == ProgressState.PROBE


def test_committed_entries_per_ready_are_bounded_in_bytes():
    storage = bootstrap_storage([1, 2, 3])
    storage.append([Entry(1, index, data=b"x" * 100) for index in range(1, 11)])
    storage.set_hard_state(HardState(term=1, commit=10))
    node = make_node(2, storage, max_committed_size_per_ready_bytes=500)
    batches = []
    while node.has_ready():
        ready = node.ready()
        batches.append([entry.index for entry in ready.committed_entries])
        node.advance(ready)
    assert batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]  # 121 bytes each
