"""The caller-facing RawNode: the Ready/advance contract, status, configuration."""

import ast
import pathlib
import random

import pytest

from raft_harness import Net, bootstrap_storage, make_node
from shards.raft import (
    Config,
    ConfChange,
    ConfChangeType,
    Message,
    MessageType,
    RawNode,
    ReadyNotAdvanced,
    Role,
)
from shards.raft.errors import ConfigError

RAFT_PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "shards" / "raft"
# The core is sans-IO and deterministic: no clocks, threads, sockets, files
# or global randomness.
FORBIDDEN_MODULES = {
    "asyncio", "concurrent", "datetime", "grpc", "multiprocessing", "os", "random",
    "select", "selectors", "signal", "socket", "subprocess", "threading", "time",
}


def imported_modules(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield node.module


def test_core_modules_import_nothing_that_does_io_or_keeps_time():
    paths = sorted(RAFT_PACKAGE.glob("*.py"))
    assert len(paths) >= 6
    for path in paths:
        for module in imported_modules(path):
            assert module.split(".")[0] not in FORBIDDEN_MODULES, f"{path.name} imports {module}"


def test_ready_must_be_advanced_before_the_next_one():
    node = make_node(1, bootstrap_storage([1, 2, 3]))
    node.campaign()
    node.ready()
    with pytest.raises(ReadyNotAdvanced):
        node.ready()


def test_local_message_types_are_refused_from_the_network():
    node = make_node(1, bootstrap_storage([1, 2, 3]))
    with pytest.raises(ValueError):
        node.step(Message(MessageType.HUP, to=1, frm=2, term=1))


def test_ready_reports_role_and_leader_changes_as_soft_state():
    net = Net([1, 2, 3])
    node = net.nodes[1]
    node.campaign()
    ready = node.ready()
    assert (ready.soft_state.role, ready.soft_state.lead) == (Role.PRE_CANDIDATE, 0)
    node.advance(ready)


def test_status_reports_progress_only_on_the_leader():
    net = Net([1, 2, 3])
    net.elect(1)
    status = net.nodes[1].status()
    assert (status.id, status.role, status.lead) == (1, Role.LEADER, 1)
    assert status.commit == status.applied == 1
    assert sorted(status.progress) == [1, 2, 3]
    assert status.progress[2].match == 1
    assert net.nodes[2].status().progress == {}
    assert status.conf_state.voters == (1, 2, 3)


def test_restarted_node_recovers_its_persisted_state():
    net = Net([1, 2, 3])
    leader = net.elect(1)
    leader.propose(b"kept")
    net.flush()
    storage = net.storages[2]
    restarted = RawNode(Config(id=2), storage, random.Random(7))
    status = restarted.status()
    assert status.term == net.raft(2).term
    assert status.commit == net.raft(2).log.committed
    assert restarted.raft.log.last_index() == net.raft(2).log.last_index()


def test_same_seed_gives_the_same_election():
    def elected(seed):
        net = Net([1, 2, 3])
        for node_id, node in net.nodes.items():
            node.raft.rng = random.Random(seed * 10 + node_id)
        net.tick_all(30)
        return net.leaders(), [m.type for m in net.delivered]

    assert elected(3) == elected(3)


@pytest.mark.parametrize(
    "settings",
    [
        {"id": 0},
        {"id": 1, "heartbeat_ticks": 0},
        {"id": 1, "election_ticks": 1, "heartbeat_ticks": 1},
        {"id": 1, "max_inflight_msgs": 0},
        {"id": 1, "max_size_per_msg_bytes": 0},
    ],
)
def test_invalid_configuration_is_refused(settings):
    with pytest.raises(ConfigError):
        RawNode(Config(**settings), bootstrap_storage([1]), random.Random(1))


def test_conf_change_round_trips_through_its_encoding():
    change = ConfChange(ConfChangeType.ADD_LEARNER, 2**40 + 5)
    assert ConfChange.decode(change.encode()) == change
    with_context = ConfChange(ConfChangeType.ADD_VOTER, 3, b"peer=127.0.0.1:7003")
    assert ConfChange.decode(with_context.encode()) == with_context
    with pytest.raises(ValueError):
        ConfChange.decode(b"\x00" * 8)
