"""Fixtures of the replica process tests."""

import pytest
from replica_cluster import ReplicaGroup


@pytest.fixture
def group(tmp_path):
    """A started 3-member group, stopped (by PID) after the test."""
    group = ReplicaGroup(tmp_path)
    group.start_all()
    yield group
    group.stop_all()
