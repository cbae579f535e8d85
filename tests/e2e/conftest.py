"""Fixtures of the end-to-end tests: real etcdctl (3.5 and 3.4) against an etcd v3 endpoint.

`endpoint` ("127.0.0.1:PORT", session scope) is, for now, a real etcd 3.5. To
run the same tests against Tessera, redefine `endpoint` (and `endpoint_kind`)
here to start a Tessera cluster whose shard map is e2e_util.SHARD_MAP.

All tests share one server, so every test works in its own key space (the
`keys` fixture: a unique name under /registry/pods/, /registry/events/,
/registry/m-.../ and a top-level prefix) and deletes it at teardown. Tests
run one after another, so a range such as `--prefix /registry/` or
`--from-key` sees only the running test's keys. Revisions are only ever
compared by relation (greater, equal to one seen before), never by value.
"""

from __future__ import annotations

import itertools
import os
import json
import re
import uuid
from dataclasses import dataclass

import pytest

import etcd_tools
from e2e_util import last_line, tool_or_skip as _tool


# ------------------------------------------------------------------ servers


@pytest.fixture(scope="session")
def etcd_server():
    """A real etcd 3.5 for the whole session (stays real etcd when `endpoint` moves to Tessera)."""
    _tool(etcd_tools.etcd_path)
    with etcd_tools.EtcdServer(name="e2e") as server:
        yield server


# What the tests run against: Tessera, Tessera with every process in a network namespace of its
# own ("netns", tests/hosts/test_netns_cluster.py), or (to check the tests themselves) a real etcd.
TARGET = os.environ.get("TESSERA_E2E_TARGET", "tessera")


@pytest.fixture(scope="session")
def endpoint(request) -> str:
    """The etcd v3 endpoint under test, "HOST:PORT": the shared Tessera cluster's router."""
    if TARGET == "etcd":
        return request.getfixturevalue("etcd_server").endpoint
    if TARGET == "netns":
        return request.getfixturevalue("netns_cluster").endpoint
    return request.getfixturevalue("tessera_cluster").endpoint


@pytest.fixture(scope="session")
def endpoint_kind() -> str:
    """"etcd" or "tessera": what `endpoint` is (a few checks differ, e.g. cross-group txns)."""
    return "etcd" if TARGET == "etcd" else "tessera"


@pytest.fixture(scope="session")
def reference_server():
    """A second real etcd 3.5: the reference side of the differential tests."""
    _tool(etcd_tools.etcd_path)
    with etcd_tools.EtcdServer(name="reference") as server:
        yield server


@pytest.fixture(scope="session")
def reference_endpoint(reference_server) -> str:
    return reference_server.endpoint


# ------------------------------------------------------------------ etcdctl


class Etcdctl:
    """etcdctl of one version against one endpoint."""

    def __init__(self, binary, endpoint: str, version: str):
        self.binary = binary
        self.endpoint = endpoint
        self.version = version

    def __repr__(self) -> str:
        return f"etcdctl {self.version}"

    def run(self, *args: str, stdin: str | None = None, timeout: float = 30) -> tuple[int, str, str]:
        return etcd_tools.run_etcdctl(self.binary, self.endpoint, *args, stdin=stdin, timeout=timeout)

    def ok(self, *args: str, stdin: str | None = None) -> str:
        """stdout of a command that must succeed (exit 0, no "Error:" on stderr)."""
        code, out, err = self.run(*args, stdin=stdin)
        assert code == 0 and "Error:" not in err, f"etcdctl {self.version} {args} -> {code}\n{out}\n{err}"
        return out

    def json(self, *args: str, stdin: str | None = None):
        return json.loads(self.ok(*args, "-w", "json", stdin=stdin))

    def error(self, *args: str, stdin: str | None = None) -> tuple[int, str]:
        """(exit code, last stderr line) of a command that must fail."""
        code, out, err = self.run(*args, stdin=stdin)
        assert code != 0, f"etcdctl {self.version} {args} succeeded: {out!r}"
        return code, last_line(err)

    def watch_once(self, *args: str, timeout: float = 15) -> tuple[int, str, str]:
        """A watch expected to end by itself (e.g. cancelled): (exit code, stdout, stderr)."""
        return self.run("watch", *args, timeout=timeout)

    def watch(self, *args: str) -> etcd_tools.EtcdctlProcess:
        return etcd_tools.EtcdctlProcess(self.binary, self.endpoint, "watch", *args)


@pytest.fixture(scope="session")
def etcdctl(endpoint) -> Etcdctl:
    """etcdctl 3.5 against `endpoint`."""
    return Etcdctl(_tool(etcd_tools.etcdctl_path), endpoint, "3.5")


@pytest.fixture(scope="session")
def etcdctl34(endpoint) -> Etcdctl:
    """etcdctl 3.4 (Debian's etcd-client) against `endpoint`."""
    return Etcdctl(_tool(etcd_tools.etcdctl34_path), endpoint, "3.4")


@pytest.fixture(params=["3.5", "3.4"], ids=["etcdctl3.5", "etcdctl3.4"])
def any_etcdctl(request, endpoint) -> Etcdctl:
    """Each etcdctl version in turn, for the tests both must pass."""
    lookup = etcd_tools.etcdctl_path if request.param == "3.5" else etcd_tools.etcdctl34_path
    return Etcdctl(_tool(lookup), endpoint, request.param)


# ------------------------------------------------------------------ key spaces

_serial = itertools.count()
_run_token = uuid.uuid4().hex[:6]


@dataclass(frozen=True)
class KeySpace:
    """One test's keys, in each group of SHARD_MAP.

    Sorted order of the four prefixes: events (group 3) < mid (group 1, under
    /registry/) < pods (group 2) < top (group 1, outside /registry/).
    """

    name: str

    @property
    def events(self) -> str:
        return f"/registry/events/{self.name}/"

    @property
    def mid(self) -> str:
        return f"/registry/m-{self.name}/"

    @property
    def pods(self) -> str:
        return f"/registry/pods/{self.name}/"

    @property
    def top(self) -> str:
        return f"{self.name}/"

    @property
    def prefixes(self) -> tuple[str, ...]:
        return self.events, self.mid, self.pods, self.top


@pytest.fixture
def keys(request, etcdctl) -> KeySpace:
    """A key space of the test's own; every key in it is deleted at teardown."""
    test = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40]
    space = KeySpace(f"t{_run_token}{next(_serial):03d}-{test}")
    yield space
    for prefix in space.prefixes:
        etcdctl.ok("del", "--prefix", prefix)
