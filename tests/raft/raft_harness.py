"""A small, synchronous cluster for unit tests (etcd's `network` in raft_test.go).

`Net.flush()` runs every node's Ready cycle (persist to its MemoryStorage,
send, apply, advance) and delivers messages until the cluster is quiet.
Links can be cut and message types filtered so a test can stage exactly the
situation it claims something about.
"""

from __future__ import annotations

import random
from typing import Callable

from shards.raft import Config, ConfChange, Message, RawNode, Role
from shards.raft.storage import (
    ConfState,
    Entry,
    EntryType,
    HardState,
    MemoryStorage,
    Snapshot,
    SnapshotMeta,
)

MAX_FLUSH_ROUNDS = 10_000


def bootstrap_storage(voters, learners=()) -> MemoryStorage:
    storage = MemoryStorage()
    storage.apply_snapshot(Snapshot(SnapshotMeta(0, 0, ConfState(tuple(voters), tuple(learners)))))
    return storage


def storage_with_log(voters, terms, learners=()) -> MemoryStorage:
    """A bootstrapped storage holding entries 1..len(terms) with those terms."""
    storage = bootstrap_storage(voters, learners)
    storage.append([Entry(term, index) for index, term in enumerate(terms, start=1)])
    storage.set_hard_state(HardState(term=max(terms, default=0)))
    return storage


def make_node(node_id: int, storage: MemoryStorage, **settings) -> RawNode:
    return RawNode(Config(id=node_id, **settings), storage, random.Random(node_id))


def persist(storage: MemoryStorage, ready) -> None:
    if ready.snapshot is not None:
        storage.apply_snapshot(ready.snapshot)
    storage.append(ready.entries)
    if ready.hard_state is not None:
        storage.set_hard_state(ready.hard_state)


class Net:
    def __init__(self, voters, learners=(), others=(), logs=None, **settings) -> None:
        """Nodes `voters` and `learners` form the group; `others` are not members yet.

        `logs` maps a node to the terms of the entries it starts with.
        """
        logs = logs or {}
        self.storages = {}
        self.nodes: dict[int, RawNode] = {}
        self.applied: dict[int, list[Entry]] = {}
        self.read_states: dict[int, list] = {}
        self.conf_states: dict[int, ConfState] = {}
        for node_id in (*voters, *learners, *others):
            self.storages[node_id] = storage_with_log(voters, logs.get(node_id, ()), learners)
            self.nodes[node_id] = make_node(node_id, self.storages[node_id], **settings)
            self.applied[node_id] = []
            self.read_states[node_id] = []
        self.cut_links: set[tuple[int, int]] = set()
        self.down: set[int] = set()
        # Return False to drop a message.
        self.message_filter: Callable[[Message], bool] = lambda message: True
        self.delivered: list[Message] = []
        self.pending: list[Message] = []

    # --- Topology ------------------------------------------------------------

    def isolate(self, node_id: int) -> None:
        for other in self.nodes:
            if other != node_id:
                self.cut_links.add((node_id, other))
                self.cut_links.add((other, node_id))

    def heal(self) -> None:
        self.cut_links.clear()

    # --- Driving -------------------------------------------------------------

    def drain(self, node_id: int) -> None:
        """Run node_id's Ready cycles; its outgoing messages join `pending`."""
        node = self.nodes[node_id]
        while node.has_ready():
            ready = node.ready()
            self.pending.extend(ready.messages)
            persist(self.storages[node_id], ready)
            self.pending.extend(ready.persisted_messages)
            if ready.snapshot is not None:
                self.conf_states[node_id] = ready.snapshot.meta.conf_state
            for entry in ready.committed_entries:
                self.applied[node_id].append(entry)
                if entry.type == EntryType.CONF_CHANGE:
                    self.conf_states[node_id] = node.apply_conf_change(ConfChange.decode(entry.data))
            self.read_states[node_id].extend(ready.read_states)
            node.advance(ready)

    def flush(self) -> None:
        for _ in range(MAX_FLUSH_ROUNDS):
            for node_id in self.nodes:
                if node_id not in self.down:
                    self.drain(node_id)
            if not self.pending:
                return
            messages, self.pending = self.pending, []
            for message in messages:
                if message.to in self.down or (message.frm, message.to) in self.cut_links:
                    continue
                if not self.message_filter(message):
                    continue
                self.delivered.append(message)
                self.nodes[message.to].step(message)
        raise RuntimeError("the cluster did not quiesce")

    def tick(self, node_id: int, ticks: int = 1) -> None:
        for _ in range(ticks):
            self.nodes[node_id].tick()
            self.flush()

    def tick_all(self, ticks: int = 1) -> None:
        for _ in range(ticks):
            for node_id, node in self.nodes.items():
                if node_id not in self.down:
                    node.tick()
            self.flush()

    def elect(self, node_id: int) -> RawNode:
        self.nodes[node_id].campaign()
        self.flush()
        if self.nodes[node_id].raft.role != Role.LEADER:
            raise RuntimeError(f"node {node_id} was not elected")
        return self.nodes[node_id]

    # --- Reading state -------------------------------------------------------

    def raft(self, node_id: int):
        return self.nodes[node_id].raft

    def leaders(self) -> list[int]:
        return [i for i, node in self.nodes.items() if node.raft.role == Role.LEADER]

    def applied_data(self, node_id: int) -> list[bytes]:
        """The payloads of the normal (not membership) entries node_id applied."""
        return [
            entry.data
            for entry in self.applied[node_id]
            if entry.data and entry.type == EntryType.NORMAL
        ]
