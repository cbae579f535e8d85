"""Users, roles and permissions through the real etcdctl, differential: each command runs on Tessera
and on a real etcd 3.5, and both must answer alike (exit code, stdout, the error line, a canceled
watch's reason).

Both servers are this module's own: enabling auth on the session's shared cluster would lock
out every other test if one step failed. Each sequence ends with auth disabled and its users
and roles deleted, on both sides alike, so the next starts where the first did (the auth
revisions, which `auth status` prints, keep counting on both alike).
"""

from __future__ import annotations

import pytest
from e2e_util import last_line, tool_or_skip

import etcd_tools

ROOT = ("--user", "root:rootpw")
ALICE = ("--user", "alice:alicepw")
BOB = ("--user", "bob:bobpw")


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """(Tessera's router, a real etcd 3.5): endpoints, "127.0.0.1:PORT"."""
    from cluster import ClusterThread

    tool_or_skip(etcd_tools.etcd_path)
    with ClusterThread(tmp_path_factory.mktemp("auth-cluster")) as cluster, \
            etcd_tools.EtcdServer(name="auth") as etcd:
        yield cluster.endpoint, etcd.endpoint


class Differential:
    """One etcdctl against both servers; `same` runs a command on each and compares."""

    def __init__(self, binary, endpoints, version: str):
        self.binary = binary
        self.version = version
        self.tessera, self.etcd = endpoints

    def _run(self, endpoint, args, stdin):
        code, out, err = etcd_tools.run_etcdctl(self.binary, endpoint, *args, stdin=stdin)
        error = last_line(err)
        reasons = [line for line in err.splitlines() if line.startswith("watch was canceled")]
        return code, out, error if error.startswith("Error:") else "", reasons

    def tessera_answer(self, *args: str) -> tuple[int, str, str]:
        return self._run(self.tessera, args, None)[:3]

    def same(self, *args: str, stdin: str | None = None, expect: str | None = None) -> str:
        """The answer both gave; `expect`: the error line both must end with ("" for success)."""
        ours, theirs = (self._run(endpoint, args, stdin) for endpoint in (self.tessera, self.etcd))
        assert ours == theirs, f"etcdctl {' '.join(args)}:\n tessera {ours}\n etcd    {theirs}"
        if expect is not None:
            assert ours[2] == expect, f"etcdctl {' '.join(args)}: {ours}"
        return ours[1]


@pytest.fixture(params=["3.5", "3.4"], ids=["etcdctl3.5", "etcdctl3.4"])
def both(request, servers) -> Differential:
    lookup = etcd_tools.etcdctl_path if request.param == "3.5" else etcd_tools.etcdctl34_path
    ctl = Differential(tool_or_skip(lookup), servers, request.param)
    yield ctl
    # Back to no auth, no users, no roles, no keys, on both sides alike, whatever the test left.
    ctl.same(*ROOT, "auth", "disable")
    for user in ("alice", "bob", "root"):
        ctl.same("user", "delete", user)
    for role in ("reader", "writer", "root"):
        ctl.same("role", "delete", role)
    ctl.same("del", "--prefix", "/auth-e2e/")


def auth_status(ctl: Differential, *credentials: str, expect: str) -> None:
    """etcdctl 3.4 has no `auth status`: it prints its usage, on both sides alike."""
    ctl.same(*credentials, "auth", "status", expect=expect if ctl.version == "3.5" else "")


DENIED = "Error: etcdserver: permission denied"
NO_USER = "Error: etcdserver: user name is empty"
AUTH_FAILED = "Error: etcdserver: authentication failed, invalid user ID or password"


def test_users_roles_and_permissions_as_etcd(both):
    ctl = both
    auth_status(ctl, expect="")
    ctl.same("auth", "enable", expect="Error: etcdserver: root user does not exist")
    ctl.same("user", "add", "root:rootpw", expect="")
    ctl.same("user", "add", "root:again", expect="Error: etcdserver: user name already exists")
    ctl.same("role", "add", "reader", expect="")
    ctl.same("role", "add", "reader", expect="Error: etcdserver: role name already exists")
    ctl.same("role", "add", "writer", expect="")
    # A key, a range, a prefix.
    ctl.same("role", "grant-permission", "reader", "read", "/auth-e2e/key", expect="")
    ctl.same("role", "grant-permission", "reader", "read", "/auth-e2e/a", "/auth-e2e/c", expect="")
    ctl.same("role", "grant-permission", "--prefix=true", "writer", "readwrite", "/auth-e2e/app/", expect="")
    ctl.same("role", "grant-permission", "nosuch", "read", "/x", expect="Error: etcdserver: role name not found")
    ctl.same("role", "get", "reader", expect="")
    ctl.same("role", "get", "writer", expect="")
    ctl.same("user", "add", "alice:alicepw", expect="")
    ctl.same("user", "add", "bob:bobpw", expect="")
    ctl.same("user", "grant-role", "alice", "reader", expect="")
    ctl.same("user", "grant-role", "alice", "reader", expect="")  # twice: etcd says nothing
    ctl.same("user", "grant-role", "bob", "writer", expect="")
    ctl.same("user", "grant-role", "alice", "nosuch", expect="Error: etcdserver: role name not found")
    ctl.same("user", "grant-role", "nobody", "reader", expect="Error: etcdserver: user name not found")
    ctl.same("user", "get", "alice", expect="")
    ctl.same("user", "get", "nobody", expect="Error: etcdserver: user name not found")
    ctl.same("user", "list", expect="")
    ctl.same("role", "list", expect="")
    auth_status(ctl, expect="")
    # etcdctl's `auth enable` adds the root role and grants it to root when they are missing.
    ctl.same("auth", "enable", expect="")

    auth_status(ctl, expect=NO_USER)
    auth_status(ctl, *ROOT, expect="")
    ctl.same("put", "/auth-e2e/key", "v", expect=NO_USER)
    ctl.same("get", "/auth-e2e/key", expect=NO_USER)
    ctl.same(*ROOT, "put", "/auth-e2e/key", "v0", expect="")
    ctl.same(*ROOT, "put", "/auth-e2e/b", "vb", expect="")
    ctl.same(*ALICE, "get", "/auth-e2e/key", expect="")
    ctl.same("--user", "alice:wrong", "get", "/auth-e2e/key", expect=AUTH_FAILED)
    ctl.same("--user", "nobody:pw", "get", "/auth-e2e/key", expect=AUTH_FAILED)
    ctl.same(*ALICE, "put", "/auth-e2e/key", "v1", expect=DENIED)
    ctl.same(*ALICE, "get", "/auth-e2e/a", "/auth-e2e/c", expect="")  # the range granted
    ctl.same(*ALICE, "get", "/auth-e2e/b", expect="")  # a key inside it
    ctl.same(*ALICE, "get", "/auth-e2e/a", "/auth-e2e/d", expect=DENIED)  # past its end
    ctl.same(*ALICE, "get", "--prefix", "/auth-e2e/", expect=DENIED)
    ctl.same(*ALICE, "del", "/auth-e2e/key", expect=DENIED)
    ctl.same(*BOB, "put", "/auth-e2e/app/x", "1", expect="")
    ctl.same(*BOB, "put", "/auth-e2e/app/y", "2", expect="")
    ctl.same(*BOB, "get", "--prefix", "/auth-e2e/app/", expect="")
    ctl.same(*BOB, "put", "/auth-e2e/elsewhere", "1", expect=DENIED)
    ctl.same(*BOB, "txn", stdin="\nput /auth-e2e/app/z 3\n\n\n", expect="")
    ctl.same(*BOB, "txn", stdin="\nput /auth-e2e/elsewhere 3\n\n\n", expect=DENIED)
    ctl.same(*BOB, "txn", stdin='value("/auth-e2e/key") = "v0"\n\nput /auth-e2e/app/z 4\n\n\n', expect=DENIED)
    ctl.same(*BOB, "del", "--prefix", "/auth-e2e/app/", expect="")
    # A watch on keys the user may not read is canceled by the server at once (etcdctl prints the
    # reason, "rpc error: code = PermissionDenied desc = etcdserver: permission denied", before it).
    ctl.same(*ALICE, "watch", "/auth-e2e/secret", expect="Error: watch is canceled by the server")
    # Management is root's; a user may read itself and its own roles.
    ctl.same(*ALICE, "user", "list", expect=DENIED)
    ctl.same(*ALICE, "user", "get", "alice", expect="")
    ctl.same(*ALICE, "user", "get", "bob", expect=DENIED)
    ctl.same(*ALICE, "role", "get", "reader", expect="")
    ctl.same(*ALICE, "role", "get", "writer", expect=DENIED)
    ctl.same(*ALICE, "user", "add", "eve:pw", expect=DENIED)
    ctl.same(*ALICE, "auth", "disable", expect=DENIED)
    # Compaction is root's since etcd 3.5.13 (Tessera reports that version); etcd 3.5.1 allows it.
    assert ctl.tessera_answer(*ALICE, "compaction", "1") == (1, "", DENIED)

    # A new password: the old one fails, the new one works.
    ctl.same(*ROOT, "user", "passwd", "alice", "--interactive=false", stdin="newpw\n", expect="")
    ctl.same(*ALICE, "get", "/auth-e2e/key", expect=AUTH_FAILED)
    ctl.same("--user", "alice:newpw", "get", "/auth-e2e/key", expect="")
    # Revokes.
    ctl.same(*ROOT, "role", "revoke-permission", "reader", "/auth-e2e/key", expect="")
    ctl.same("--user", "alice:newpw", "get", "/auth-e2e/key", expect=DENIED)
    ctl.same(*ROOT, "role", "revoke-permission", "reader", "/auth-e2e/key",
             expect="Error: etcdserver: permission is not granted to the role")
    ctl.same(*ROOT, "user", "revoke-role", "alice", "reader", expect="")
    ctl.same(*ROOT, "user", "revoke-role", "alice", "reader",
             expect="Error: etcdserver: role is not granted to the user")
    ctl.same("--user", "alice:newpw", "get", "/auth-e2e/b", expect=DENIED)
    # What root may not do while auth is on.
    ctl.same(*ROOT, "user", "delete", "root", expect="Error: etcdserver: invalid auth management")
    ctl.same(*ROOT, "role", "delete", "root", expect="Error: etcdserver: invalid auth management")
    ctl.same(*ROOT, "user", "revoke-role", "root", "root", expect="Error: etcdserver: invalid auth management")
    ctl.same(*ROOT, "role", "delete", "writer", expect="")
    ctl.same(*BOB, "put", "/auth-e2e/app/x", "1", expect=DENIED)  # its role went with it
    ctl.same(*ROOT, "user", "get", "bob", expect="")
    ctl.same(*ROOT, "user", "delete", "bob", expect="")
    ctl.same(*BOB, "get", "/auth-e2e/app/x", expect=AUTH_FAILED)
    auth_status(ctl, *ROOT, expect="")
    ctl.same(*ROOT, "auth", "disable", expect="")
    auth_status(ctl, expect="")
    ctl.same("get", "/auth-e2e/key", expect="")
    # etcdctl takes "authentication is not enabled" as no need to authenticate.
    assert ctl.same("--user", "alice:newpw", "get", "/auth-e2e/key", expect="") == "/auth-e2e/key\nv0\n"
