"""Log compaction and snapshot installation: one claim per test."""

from raft_harness import Net
from shards.raft import MessageType
from shards.raft.progress import ProgressState


def compact_leader_log(net, leader_id=1):
    storage = net.storages[leader_id]
    applied = net.raft(leader_id).log.applied
    storage.create_snapshot(applied, net.raft(leader_id).tracker.conf_state(), b"state@%d" % applied)
    storage.compact(applied)
    return applied


def lag_behind_compaction(net, follower_id, proposals=20):
    leader = net.nodes[1]
    net.down.add(follower_id)
    for i in range(proposals):
        leader.propose(b"%d" % i)
        net.flush()
    snapshot_index = compact_leader_log(net)
    net.down.discard(follower_id)
    net.delivered.clear()
    return snapshot_index


def test_follower_behind_compaction_receives_and_installs_a_snapshot():
    net = Net([1, 2, 3])
    net.elect(1)
    snapshot_index = lag_behind_compaction(net, 3)
    net.tick_all(2)
    assert [m.type for m in net.delivered if m.to == 3 and m.type == MessageType.SNAP] == [
        MessageType.SNAP
    ]
    assert net.storages[3].snapshot().meta.index == snapshot_index
    assert net.storages[3].snapshot().data == b"state@%d" % snapshot_index
    assert net.conf_states[3].voters == (1, 2, 3)


def test_replication_continues_after_a_snapshot():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    snapshot_index = lag_behind_compaction(net, 3)
    net.tick_all(2)
    leader.propose(b"after")
    net.flush()
    assert net.applied_data(3) == [b"after"]
    # Entries up to the snapshot came in the snapshot, not one by one.
    assert [e.index for e in net.applied[3]] == [1, snapshot_index + 1]
    assert net.raft(1).tracker.progress[3].state == ProgressState.REPLICATE


def test_failed_snapshot_is_retried_after_the_transport_reports_it():
    net = Net([1, 2, 3])
    net.elect(1)
    snapshot_index = lag_behind_compaction(net, 3)
    net.message_filter = lambda m: m.type != MessageType.SNAP
    net.tick_all(2)
    progress = net.raft(1).tracker.progress[3]
    assert progress.state == ProgressState.SNAPSHOT
    net.nodes[1].report_snapshot(3, failed=True)
    assert progress.state == ProgressState.PROBE
    net.message_filter = lambda m: True
    net.tick_all(2)
    assert net.storages[3].snapshot().meta.index == snapshot_index


def test_snapshot_at_or_below_the_commit_index_is_ignored():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    leader.propose(b"x")
    net.flush()
    follower = net.raft(2)
    stale = net.storages[1].create_snapshot(1, follower.tracker.conf_state(), b"old")
    committed = follower.log.committed
    follower.step(follower_message(net, stale))
    assert follower.log.committed == committed
    assert follower.log.unstable.snapshot is None


def follower_message(net, snapshot):
    from shards.raft import Message

    return Message(MessageType.SNAP, to=2, frm=1, term=net.raft(1).term, snapshot=snapshot)
