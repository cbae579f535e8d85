"""Raft core throughput: a 3-node in-memory cluster driven as fast as it goes.

No I/O: MemoryStorage stands for the disk and messages are handed straight
to their recipient. Each step proposes a batch of commands to the leader and
runs the Ready cycle on every node until the batch is committed and applied
on the leader. Reported as committed entries per second (bench/conftest.py's
`report_rate`: in the "rates" section and `benchmark.extra_info`).

    pytest bench/test_bench_raft.py --benchmark-only
"""

import random

import pytest

from shards.raft import Config, RawNode, Role
from shards.raft.storage import ConfState, MemoryStorage, Snapshot, SnapshotMeta

VOTERS = (1, 2, 3)
PAYLOAD = b"x" * 64
ENTRIES_PER_ROUND = {1: 2_000, 100: 50_000, 1000: 100_000}
# Compact the in-memory logs once they hold this many applied entries.
COMPACT_EVERY_ENTRIES = 50_000


class InMemoryCluster:
    def __init__(self) -> None:
        self.storages = {}
        self.nodes = {}
        for node_id in VOTERS:
            storage = MemoryStorage()
            storage.apply_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(VOTERS, ()))))
            self.storages[node_id] = storage
            self.nodes[node_id] = RawNode(Config(id=node_id), storage, random.Random(node_id))
        self.leader = self.nodes[1]
        self.leader.campaign()
        self.pump()
        if self.leader.raft.role != Role.LEADER:
            raise RuntimeError("node 1 was not elected")

    def pump(self) -> None:
        """Run Ready cycles and deliver messages until the cluster is idle."""
        nodes = self.nodes
        storages = self.storages
        busy = True
        while busy:
            busy = False
            for node_id, node in nodes.items():
                if not node.has_ready():
                    continue
                busy = True
                ready = node.ready()
                storage = storages[node_id]
                if ready.entries:
                    storage.append(ready.entries)
                if ready.hard_state is not None:
                    storage.set_hard_state(ready.hard_state)
                outgoing = ready.messages + ready.persisted_messages
                node.advance(ready)
                for message in outgoing:
                    nodes[message.to].step(message)

    def compact(self) -> None:
        for node_id, node in self.nodes.items():
            storage = self.storages[node_id]
            applied = node.raft.log.applied
            if applied - storage.first_index() > COMPACT_EVERY_ENTRIES:
                storage.create_snapshot(applied, ConfState(VOTERS, ()), b"")
                storage.compact(applied)

    def commit(self, entry_count: int, batch: int) -> None:
        leader = self.leader
        payloads = [PAYLOAD] * batch
        target = leader.raft.log.last_index() + entry_count
        for _ in range(entry_count // batch):
            leader.propose_batch(payloads)
            self.pump()
        if leader.raft.log.applied != target:
            raise RuntimeError(f"applied {leader.raft.log.applied}, expected {target}")
        self.compact()


@pytest.mark.parametrize("batch", sorted(ENTRIES_PER_ROUND))
def test_bench_raft_committed_entries(benchmark, report_rate, batch):
    """Committed entries per second with `batch` proposals per step."""
    cluster = InMemoryCluster()
    entry_count = ENTRIES_PER_ROUND[batch]
    benchmark.extra_info["batch"] = batch
    benchmark.pedantic(cluster.commit, args=(entry_count, batch), rounds=5, iterations=1)
    report_rate(entry_count, "entries")
