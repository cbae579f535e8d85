"""Compaction, member list and endpoint status/health through etcdctl.

Member ids and names, cluster id, raft term, versions and database sizes
differ between etcd and Tessera: only their presence and shape are checked.
"""

import re

from e2e_util import lines, put_rev

COMPACTED = "Error: etcdserver: mvcc: required revision has been compacted"
HEX_ID = r"[0-9a-f]{1,16}"


def test_compaction(any_etcdctl, keys):
    ctl = any_etcdctl
    first = put_rev(ctl, keys.pods + "k", "1")
    put_rev(ctl, keys.events + "k", "2")
    second = put_rev(ctl, keys.pods + "k", "3")
    put_rev(ctl, keys.top + "k", "4")
    assert ctl.ok("compaction", str(second)) == f"compacted revision {second}\n"
    # Below the compacted revision: gone, in every group.
    for key in (keys.pods + "k", keys.events + "k", keys.top + "k"):
        assert ctl.error("get", key, "--rev", str(first)) == (1, COMPACTED)
    assert ctl.error("get", "--prefix", "/registry/", "--rev", str(second - 1)) == (1, COMPACTED)
    # At and after it: readable.
    assert ctl.ok("get", keys.pods + "k", "--rev", str(second)) == lines(keys.pods + "k", "3")
    assert ctl.ok("get", "--from-key", keys.events, "--rev", str(second)) == lines(
        keys.events + "k", "2", keys.pods + "k", "3")
    # Compacting again at or below it, or at a future revision, fails.
    assert ctl.error("compaction", str(second)) == (1, COMPACTED)
    assert ctl.error("compaction", str(second + 1000)) == (
        1, "Error: etcdserver: mvcc: required revision is a future revision")
    # A watch from before the compaction is cancelled with the reason.
    code, out, err = ctl.watch_once("--prefix", keys.pods, "--rev", str(first))
    assert out == ""
    assert [line for line in err.splitlines() if not line.startswith("{")] == [
        "watch was canceled (etcdserver: mvcc: required revision has been compacted)",
        "Error: watch is canceled by the server"]
    assert code != 0


def test_member_list(any_etcdctl, endpoint):
    ctl = any_etcdctl
    out = ctl.ok("member", "list")
    assert out.endswith("\n")
    rows = out.splitlines()
    assert rows
    # Every member has peer URLs, as etcd's always have (a router's is its client URL).
    for row in rows:
        assert re.match(rf"^{HEX_ID}, started, [^,]+, http://\S+, http://\S+, (true|false)$", row), row
    assert any(f"http://{endpoint}" in row.split(", ")[4].split(",") for row in rows)
    answer = ctl.json("member", "list")
    assert set(answer["header"]) >= {"cluster_id", "member_id", "raft_term"}
    assert len(answer["members"]) == len(rows)
    for member in answer["members"]:
        assert member["ID"] > 0 and isinstance(member["name"], str)
        assert member["clientURLs"] and member["peerURLs"]
        assert member.get("isLearner", False) is False


def shape(value):
    """A JSON answer with its values replaced by their kinds: what must be alike across two stores."""
    if isinstance(value, dict):
        return {name: shape(item) for name, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value[:1]]
    if isinstance(value, str) and value.startswith("http://"):
        return "URL"
    return type(value).__name__


def test_member_list_has_etcds_shape(any_etcdctl, reference_endpoint):
    """etcdctl's simple and JSON member list: the same columns and fields as a real etcd's."""
    reference = type(any_etcdctl)(any_etcdctl.binary, reference_endpoint, any_etcdctl.version)
    etcd_row, row = (ctl.ok("member", "list").splitlines()[0] for ctl in (reference, any_etcdctl))
    assert [shape(column) for column in row.split(", ")] == [shape(column) for column in etcd_row.split(", ")]
    etcd_json, ours = (ctl.json("member", "list") for ctl in (reference, any_etcdctl))
    assert shape(ours) == shape(etcd_json)


def test_endpoint_status(any_etcdctl, endpoint):
    ctl = any_etcdctl
    row = ctl.ok("endpoint", "status")
    assert re.match(rf"^{re.escape(endpoint)}, {HEX_ID}, \d+\.\d+\.\d+\S*, [\d.]+ [kMG]?B, (true|false), "
                    r"(true|false), \d+, \d+, \d+, .*\n$", row), row
    [answer] = ctl.json("endpoint", "status")
    assert answer["Endpoint"] == endpoint
    status = answer["Status"]
    assert set(status["header"]) >= {"cluster_id", "member_id", "revision", "raft_term"}
    assert re.match(r"^3\.\d+\.\d+", status["version"])
    assert status["dbSize"] > 0 and status["leader"] > 0
    assert status["raftTerm"] > 0 and status["raftIndex"] > 0 and status["raftAppliedIndex"] > 0
    assert status["header"]["revision"] >= 1


def test_endpoint_health(any_etcdctl, endpoint):
    ctl = any_etcdctl
    code, out, err = ctl.run("endpoint", "health")
    assert code == 0
    # etcdctl 3.5 prints the line on stdout, 3.4 on stderr.
    line = out if ctl.version == "3.5" else err
    assert re.match(rf"^{re.escape(endpoint)} is healthy: successfully committed proposal: took = \S+\n$",
                    line), (out, err)
    [answer] = ctl.json("endpoint", "health")
    assert answer["endpoint"] == endpoint and answer["health"] is True and "took" in answer
    assert "error" not in answer


def test_move_leader(etcdctl, endpoint_kind):
    """A target that is not a member is refused by both; Tessera's only valid target is the router asked."""
    code, _, err = etcdctl.run("move-leader", "1234abcd")
    assert code != 0
    assert "etcdserver: bad leader transferee" in err
    if endpoint_kind == "tessera":  # every router takes writes: moving to itself changes nothing
        router = etcdctl.json("endpoint", "status")[0]["Status"]["header"]["member_id"]
        assert etcdctl.ok("move-leader", f"{router:x}") == f"Leadership transferred from {router:x} to {router:x}\n"
