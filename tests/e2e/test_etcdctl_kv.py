"""put / get / del / txn through the real etcdctl, in one group and across groups."""

import pytest
from e2e_util import b64, lines, put_rev


# ------------------------------------------------------------------ put / get


def test_put_get_in_one_group(any_etcdctl, keys):
    ctl = any_etcdctl
    assert ctl.ok("put", keys.pods + "a", "1") == "OK\n"
    assert ctl.ok("put", keys.pods + "b", "2") == "OK\n"
    assert ctl.ok("put", keys.pods + "a", "3", "--prev-kv") == lines("OK", keys.pods + "a", "1")
    assert ctl.ok("get", keys.pods + "a") == lines(keys.pods + "a", "3")
    assert ctl.ok("get", keys.pods + "missing") == ""
    assert ctl.ok("get", "--prefix", keys.pods) == lines(keys.pods + "a", "3", keys.pods + "b", "2")
    assert ctl.ok("get", "--prefix", "--keys-only", keys.pods) == lines(keys.pods + "a", "", keys.pods + "b", "")
    assert ctl.ok("get", "--prefix", "--print-value-only", keys.pods) == lines("3", "2")
    # A range [key, range_end) given as two arguments.
    assert ctl.ok("get", keys.pods + "a", keys.pods + "b") == lines(keys.pods + "a", "3")


def test_get_prefix_and_from_key_span_groups(any_etcdctl, keys):
    ctl = any_etcdctl
    for prefix in (keys.top, keys.pods, keys.mid, keys.events):  # written out of key order
        for name, value in (("y", "2"), ("x", "1")):
            ctl.ok("put", prefix + name, name + value)
    in_order = [prefix + name for prefix in keys.prefixes for name in ("x", "y")]
    under_registry = in_order[:6]
    assert ctl.ok("get", "--prefix", "--keys-only", "/registry/") == lines(*(x for k in under_registry for x in (k, "")))
    assert ctl.ok("get", "--from-key", "--keys-only", keys.events) == lines(*(x for k in in_order for x in (k, "")))
    assert ctl.ok("get", "--from-key", keys.pods + "y") == lines(
        keys.pods + "y", "y2", keys.top + "x", "x1", keys.top + "y", "y2")
    # An explicit range from group 3 into group 2.
    assert ctl.ok("get", "--keys-only", keys.events + "y", keys.pods + "y") == lines(
        keys.events + "y", "", keys.mid + "x", "", keys.mid + "y", "", keys.pods + "x", "")
    # --limit over several groups keeps key order.
    assert ctl.ok("get", "--prefix", "--keys-only", "--limit", "3", "/registry/") == lines(
        keys.events + "x", "", keys.events + "y", "", keys.mid + "x", "")


def test_get_json_fields(any_etcdctl, keys):
    ctl = any_etcdctl
    revisions = [put_rev(ctl, key, "v") for key in (keys.events + "a", keys.mid + "a", keys.pods + "a", keys.top + "a")]
    assert revisions == sorted(set(revisions)), "each put gets a higher revision"
    answer = ctl.json("get", "--prefix", "/registry/", "--limit", "2")
    assert answer["count"] == 3
    assert answer["more"] is True
    assert [kv["key"] for kv in answer["kvs"]] == [b64(keys.events + "a"), b64(keys.mid + "a")]
    first = answer["kvs"][0]
    assert first == {"key": b64(keys.events + "a"), "create_revision": revisions[0],
                     "mod_revision": revisions[0], "version": 1, "value": b64("v")}
    # A consistent read includes the writes to the keys it covers: its revision is not older.
    assert answer["header"]["revision"] >= revisions[2]
    assert set(answer["header"]) >= {"cluster_id", "member_id", "revision", "raft_term"}
    # Without a limit: no "more" field at all (false is omitted), count = number of kvs.
    answer = ctl.json("get", "--prefix", keys.pods)
    assert "more" not in answer and answer["count"] == 1 and len(answer["kvs"]) == 1
    # A miss: header only.
    answer = ctl.json("get", keys.pods + "missing")
    assert set(answer) == {"header"}
    # --keys-only drops the value field.
    answer = ctl.json("get", "--keys-only", keys.top + "a")
    assert "value" not in answer["kvs"][0] and answer["kvs"][0]["version"] == 1


def test_get_sorted(any_etcdctl, keys):
    ctl = any_etcdctl
    # Keys in three groups; values, versions and revisions all in different orders.
    ctl.ok("put", keys.pods + "a", "2")
    ctl.ok("put", keys.events + "b", "3")
    ctl.ok("put", keys.top + "c", "1")
    ctl.ok("put", keys.pods + "a", "4")
    ctl.ok("put", keys.pods + "a", "0")
    ctl.ok("put", keys.events + "b", "5")
    a, b, c = keys.pods + "a", keys.events + "b", keys.top + "c"

    def order(*flags):
        out = ctl.ok("get", "--from-key", keys.events, "--keys-only", *flags)
        return [line for line in out.splitlines() if line]

    assert order() == [b, a, c]
    assert order("--order", "DESCEND") == [c, a, b]
    assert order("--sort-by", "VALUE") == [a, c, b]          # "0" < "1" < "5"
    assert order("--sort-by", "VALUE", "--order", "DESCEND") == [b, c, a]
    assert order("--sort-by", "CREATE") == [a, b, c]
    assert order("--sort-by", "MODIFY") == [c, a, b]
    assert order("--sort-by", "MODIFY", "--order", "DESCEND") == [b, a, c]
    assert order("--sort-by", "VERSION", "--order", "DESCEND") == [a, b, c]  # 3, 2, 1
    assert order("--sort-by", "CREATE", "--order", "DESCEND", "--limit", "2") == [c, b]


def test_get_at_revision(any_etcdctl, keys):
    ctl = any_etcdctl
    first = put_rev(ctl, keys.pods + "k", "old")
    put_rev(ctl, keys.events + "k", "e1")
    second = put_rev(ctl, keys.pods + "k", "new")
    put_rev(ctl, keys.top + "k", "t1")
    ctl.ok("del", keys.events + "k")
    assert ctl.ok("get", keys.pods + "k", "--rev", str(first)) == lines(keys.pods + "k", "old")
    assert ctl.ok("get", keys.pods + "k", "--rev", str(second)) == lines(keys.pods + "k", "new")
    assert ctl.ok("get", keys.pods + "k", "--rev", str(first - 1)) == ""
    # Across groups at a past revision: the deleted event is back, the later top-level key is not.
    assert ctl.ok("get", "--from-key", keys.events, "--rev", str(second)) == lines(
        keys.events + "k", "e1", keys.pods + "k", "new")
    answer = ctl.json("get", keys.pods + "k", "--rev", str(first))
    assert answer["kvs"][0]["mod_revision"] == first and answer["kvs"][0]["version"] == 1
    answer = ctl.json("get", keys.pods + "k")
    assert answer["kvs"][0]["create_revision"] == first
    assert answer["kvs"][0]["mod_revision"] == second and answer["kvs"][0]["version"] == 2


# ------------------------------------------------------------------ delete


def test_delete(any_etcdctl, keys):
    ctl = any_etcdctl
    for prefix in keys.prefixes:
        ctl.ok("put", prefix + "a", "1")
        ctl.ok("put", prefix + "b", "2")
    assert ctl.ok("del", keys.pods + "a") == "1\n"
    assert ctl.ok("del", keys.pods + "a") == "0\n"
    assert ctl.ok("del", keys.pods + "b", "--prev-kv") == lines("1", keys.pods + "b", "2")
    assert ctl.ok("get", "--prefix", keys.pods) == ""
    # A range from group 3 through group 1's /registry/m-... keys, with the previous values.
    assert ctl.ok("del", "--prev-kv", keys.events + "b", keys.mid + "b") == lines(
        "2", keys.events + "b", "2", keys.mid + "a", "1")
    assert ctl.ok("del", "--prefix", keys.top) == "2\n"
    assert ctl.ok("get", "--from-key", keys.events, "--keys-only") == lines(keys.events + "a", "", keys.mid + "b", "")


def test_delete_json(etcdctl, keys):
    etcdctl.ok("put", keys.events + "a", "1")
    before = put_rev(etcdctl, keys.pods + "a", "2")
    answer = etcdctl.json("del", "--prev-kv", keys.events, keys.pods + "~")
    assert answer["deleted"] == 2
    assert [kv["key"] for kv in answer["prev_kvs"]] == [b64(keys.events + "a"), b64(keys.pods + "a")]
    assert answer["header"]["revision"] > before
    # Deleting nothing makes no new revision (etcd answers the current one; a sharded
    # store may answer its group's own, which is not higher).
    nothing = etcdctl.json("del", keys.pods + "a")
    assert "deleted" not in nothing and "prev_kvs" not in nothing
    assert nothing["header"]["revision"] <= answer["header"]["revision"]
    assert put_rev(etcdctl, keys.pods + "a", "3") > answer["header"]["revision"]


# ------------------------------------------------------------------ txn


def test_txn_from_stdin(any_etcdctl, keys):
    ctl = any_etcdctl
    k = keys.pods + "k"
    ctl.ok("put", k, "v1")
    request = f'value("{k}") = "v1"\n\nput {k} v2\nget {k}\n\nput {k} nope\n\n'
    assert ctl.ok("txn", stdin=request) == lines("SUCCESS", "", "OK", "", k, "v2")
    # Same again: now the compare fails and the failure branch runs.
    assert ctl.ok("txn", stdin=request) == lines("FAILURE", "", "OK")
    assert ctl.ok("get", k) == lines(k, "nope")


def test_txn_interactive(any_etcdctl, keys):
    ctl = any_etcdctl
    a, b = keys.events + "a", keys.events + "b"
    revision = put_rev(ctl, a, "1")
    request = (f'mod("{a}") = "{revision}"\nversion("{a}") = "1"\ncreate("{b}") = "0"\n\n'
               f"put {b} 2\ndel {a}\nget {keys.events} --prefix\n\n"
               f"get {a}\n\n")
    assert ctl.ok("txn", "-i", stdin=request) == lines(
        "compares:", "success requests (get, put, del):", "failure requests (get, put, del):",
        "SUCCESS", "", "OK", "", "1", "", b, "2")
    assert ctl.ok("get", "--prefix", keys.events) == lines(b, "2")


def test_txn_json(etcdctl, keys):
    k, other = keys.top + "k", keys.top + "other"
    before = put_rev(etcdctl, k, "1")
    answer = etcdctl.json("txn", stdin=f'version("{k}") > "0"\n\nput {other} 2\ndel {k}\n\n\n')
    assert answer["succeeded"] is True
    revision = answer["header"]["revision"]
    assert revision > before
    assert answer["responses"] == [
        {"Response": {"response_put": {"header": {"revision": revision}}}},
        {"Response": {"response_delete_range": {"header": {"revision": revision}, "deleted": 1}}},
    ]
    # A failing compare with an empty failure branch: "succeeded" is omitted (false).
    answer = etcdctl.json("txn", stdin=f'version("{k}") > "0"\n\nput {k} 3\n\n\n')
    assert "succeeded" not in answer and "responses" not in answer


def test_txn_size_limit(any_etcdctl, keys):
    ctl = any_etcdctl
    def puts(count):
        return "\n" + "".join(f"put {keys.pods}{i} x\n" for i in range(count)) + "\n\n"
    assert ctl.error("txn", stdin=puts(129)) == (1, "Error: etcdserver: too many operations in txn request")
    assert ctl.ok("get", "--prefix", "--keys-only", keys.pods) == ""
    assert ctl.ok("txn", stdin=puts(128)) == "SUCCESS\n" + "\nOK\n" * 128
    assert len(ctl.ok("get", "--prefix", "--keys-only", keys.pods).split()) == 128


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("args, message", [
    (("get", ""), "etcdserver: key is not provided"),
    (("put", "", "v"), "etcdserver: key is not provided"),
    (("del", ""), "etcdserver: key is not provided"),
    (("put", "{top}k", "v", "--lease=7fffffff"), "etcdserver: requested lease not found"),
], ids=["get-empty-key", "put-empty-key", "del-empty-key", "put-unknown-lease"])
def test_bad_requests(any_etcdctl, keys, args, message):
    args = [arg.format(top=keys.top) for arg in args]
    assert any_etcdctl.error(*args) == (1, f"Error: {message}")


def test_future_revision(any_etcdctl, keys):
    ctl = any_etcdctl
    revision = put_rev(ctl, keys.pods + "k", "v")
    for key in (keys.pods + "k", keys.top + "k"):
        assert ctl.error("get", key, "--rev", str(revision + 1000)) == (
            1, "Error: etcdserver: mvcc: required revision is a future revision")
    assert ctl.error("get", "--prefix", "/registry/", "--rev", str(revision + 1000)) == (
        1, "Error: etcdserver: mvcc: required revision is a future revision")


def test_txn_bad_requests(any_etcdctl, keys):
    ctl = any_etcdctl
    k = keys.events + "k"
    assert ctl.error("txn", stdin=f"\nput {k} 1\nput {k} 2\n\n\n") == (
        1, "Error: etcdserver: duplicate key given in txn request")
    assert ctl.error("txn", stdin='value("") = "x"\n\n\n\n') == (1, "Error: etcdserver: key is not provided")
    assert ctl.ok("get", k) == ""
