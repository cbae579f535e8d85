"""Leases through etcdctl: grant, keep-alive --once, timetolive --keys, revoke, expiry."""

import re
import time

from e2e_util import b64, lines, put_rev, revision_now

GRANTED = re.compile(r"^lease ([0-9a-f]+) granted with TTL\((\d+)s\)$")


def grant(ctl, ttl: int) -> tuple[str, int]:
    """(lease id in hex as etcdctl prints it, granted TTL)."""
    out = ctl.ok("lease", "grant", str(ttl))
    match = GRANTED.match(out.rstrip("\n"))
    assert match and out.endswith("\n") and out.count("\n") == 1, out
    return match.group(1), int(match.group(2))


def attached(ctl, lease: str) -> tuple[int, int, set[str]]:
    """(granted TTL, remaining TTL, attached keys) from `lease timetolive --keys`."""
    out = ctl.ok("lease", "timetolive", "--keys", lease)
    match = re.match(rf"^lease {lease} granted with TTL\((\d+)s\), remaining\((\d+)s\), "
                     r"attached keys\(\[(.*)\]\)\n$", out)
    assert match, out
    return int(match.group(1)), int(match.group(2)), set(match.group(3).split())


def test_lease_lifecycle(any_etcdctl, keys):
    ctl = any_etcdctl
    lease, ttl = grant(ctl, 100)
    assert ttl == 100
    # One key in each group, all on the lease; one more key on no lease.
    leased = [keys.events + "a", keys.mid + "a", keys.pods + "a", keys.top + "a"]
    for key in leased:
        assert ctl.ok("put", f"--lease={lease}", key, "v") == "OK\n"
    ctl.ok("put", keys.pods + "free", "v")
    granted, remaining, attached_keys = attached(ctl, lease)
    assert granted == 100 and 90 <= remaining <= 100
    assert attached_keys == set(leased)
    out = ctl.ok("lease", "timetolive", lease)
    assert re.match(rf"^lease {lease} granted with TTL\(100s\), remaining\((\d+)s\)\n$", out), out
    assert ctl.ok("lease", "keep-alive", "--once", lease) == f"lease {lease} keepalived with TTL(100)\n"
    assert lease in ctl.ok("lease", "list").split()
    # The lease shows on the keys.
    answer = ctl.json("get", keys.pods + "a")
    assert answer["kvs"][0]["lease"] == int(lease, 16)

    start = revision_now(ctl, keys) + 1
    with ctl.watch("--prefix", "/registry/", "--rev", str(start)) as watch:
        assert ctl.ok("lease", "revoke", lease) == f"lease {lease} revoked\n"
        # Deletes of the leased keys, as watch events (in some order).
        events = watch.read_lines(9)
        assert sorted(events[i:i + 3] for i in (0, 3, 6)) == [
            ["DELETE", key, ""] for key in sorted(leased[:3])]
        assert watch.no_more_lines(0.3) == []
    assert ctl.ok("get", "--from-key", keys.events, "--keys-only") == lines(keys.pods + "free", "", keys.top + "~now", "")
    assert ctl.ok("lease", "timetolive", lease) == f"lease {lease} already expired\n"
    assert ctl.error("lease", "revoke", lease) == (
        1, "Error: failed to revoke lease (etcdserver: requested lease not found)")
    assert ctl.error("lease", "keep-alive", "--once", lease)[1] == "Error: etcdserver: requested lease not found"
    assert ctl.error("put", f"--lease={lease}", keys.pods + "late", "v") == (
        1, "Error: etcdserver: requested lease not found")
    assert lease not in ctl.ok("lease", "list").split()


def test_lease_json(etcdctl, keys):
    answer = etcdctl.json("lease", "grant", "60")
    assert answer["TTL"] == 60 and answer["ID"] > 0
    assert set(answer) >= {"cluster_id", "member_id", "revision", "raft_term", "ID", "TTL"}
    lease = f"{answer['ID']:x}"
    put_rev(etcdctl, keys.events + "a", "1", f"--lease={lease}")
    put_rev(etcdctl, keys.top + "a", "1", f"--lease={lease}")
    answer = etcdctl.json("lease", "timetolive", "--keys", lease)
    assert answer["id"] == int(lease, 16) and answer["granted-ttl"] == 60 and 50 <= answer["ttl"] <= 60
    assert sorted(answer["keys"]) == sorted([b64(keys.events + "a"), b64(keys.top + "a")])
    answer = etcdctl.json("lease", "keep-alive", "--once", lease)
    assert answer["ID"] == int(lease, 16) and answer["TTL"] == 60
    etcdctl.ok("lease", "revoke", lease)


def test_lease_expiry_deletes_keys(etcdctl, keys):
    # TTL 1 is below etcd's minimum lease TTL, ceil(1.5 * election timeout) = 2 s at
    # the default 1 s election timeout: etcd grants (and prints) TTL(2s).
    lease, ttl = grant(etcdctl, 1)
    assert ttl >= 1
    start = revision_now(etcdctl, keys) + 1
    with etcdctl.watch("--prefix", "/registry/", "--rev", str(start)) as watch:
        etcdctl.ok("put", f"--lease={lease}", keys.events + "a", "1")
        etcdctl.ok("put", f"--lease={lease}", keys.pods + "a", "2")
        granted = time.monotonic()
        assert watch.read_lines(6) == ["PUT", keys.events + "a", "1", "PUT", keys.pods + "a", "2"]
        deletes = watch.read_lines(6, timeout=ttl + 15)
        assert time.monotonic() - granted >= 1.0
        assert sorted([deletes[0:3], deletes[3:6]]) == [["DELETE", keys.events + "a", ""],
                                                         ["DELETE", keys.pods + "a", ""]]
    assert etcdctl.ok("get", "--prefix", "/registry/") == ""
    assert etcdctl.ok("lease", "timetolive", lease) == f"lease {lease} already expired\n"
