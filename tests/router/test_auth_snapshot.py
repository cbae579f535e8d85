"""Users and roles in a snapshot: in etcd's auth buckets, so an etcd restored from a Tessera
snapshot has them, and a cluster restored from either kind of snapshot gets them back as the
meta group's records."""

from __future__ import annotations

import tempfile

import pytest

import etcd_tools
from router.auth import AuthRecords
from router.auth_service import hash_password
from router.snapshot import ClusterCut, SpooledKeys, write_database
from tessera.api.auth_pb2 import Permission, Role, User, UserAddOptions
from tessera.api.bbolt import BoltReader
from tessera.api.internal_pb2 import AuthStateRecord, GroupRecord, Member, ShardMap, SnapshotHeader
from tessera.api.meta_keys import AUTH_STATE_KEY, role_key, user_key
from tessera.snapshot import auth_records

ROOT = User(name=b"root", password=hash_password("rootpw"), roles=["root"], options=UserAddOptions())
ALICE = User(name=b"alice", password=hash_password("alicepw"), roles=["app"], options=UserAddOptions())
APP = Role(name=b"app", keyPermission=[Permission(permType=Permission.READWRITE, key=b"/app/", range_end=b"/app0")])


def database_with_auth() -> bytes:
    auth = AuthRecords(enabled=True, revision=6, users={"root": ROOT, "alice": ALICE}, roles={"app": APP},
                       state_mod_revision=3)
    with tempfile.TemporaryFile() as spool, tempfile.TemporaryFile() as file:
        groups = {group: GroupRecord(id=group, members=[Member(id=1)]) for group in (0, 1)}
        cut = ClusterCut(SnapshotHeader(revision=1, cluster_id=7), ShardMap(default_group=1), groups, {},
                         SpooledKeys(spool), auth)
        write_database(cut, file)
        file.seek(0)
        return file.read()


def test_the_auth_buckets_give_back_the_meta_records():
    database = BoltReader(database_with_auth())
    assert database.check() == []
    assert auth_records(database) == {AUTH_STATE_KEY: AuthStateRecord(enabled=True, revision=6),
                                      user_key("alice"): ALICE, user_key("root"): ROOT, role_key("app"): APP}


def test_an_etcd_restored_from_a_tessera_snapshot_has_its_users_and_roles(tmp_path):
    try:
        etcd = etcd_tools.restored_etcd(database_with_auth(), tmp_path)
    except etcd_tools.ToolUnavailable as reason:
        pytest.skip(str(reason))
    root = ("--user", "root:rootpw")
    with etcd:
        assert etcd.etcdctl(*root, "auth", "status") == "Authentication Status: true\nAuthRevision: 6\n"
        assert etcd.etcdctl(*root, "user", "get", "alice") == "User: alice\nRoles: app\n"
        assert "[/app/, /app0)" in etcd.etcdctl("--user", "alice:alicepw", "role", "get", "app")
        assert etcd.etcdctl("--user", "alice:alicepw", "put", "/app/x", "1") == "OK\n"
