"""etcdctl lock and elect: etcd's client recipes (leases, revisions, watches) against the endpoint."""

import signal
from concurrent.futures import ThreadPoolExecutor

import etcd_tools


def test_lock_serializes_two_contenders(any_etcdctl, keys, tmp_path):
    """Each holder writes 'start' and 'end' around a pause: the two pairs must not interleave."""
    ctl = any_etcdctl
    log = tmp_path / "holders.log"
    name = keys.top + "lock"

    def hold(holder: str):
        script = f"echo {holder} start >> {log}; sleep 0.5; echo {holder} end >> {log}"
        return ctl.run("lock", name, "--", "sh", "-c", script, timeout=60)

    with ThreadPoolExecutor(2) as pool:
        outcomes = list(pool.map(hold, ["a", "b"]))
    assert all(code == 0 for code, _, _ in outcomes), outcomes
    lines = log.read_text().split("\n")[:-1]
    first, second = lines[0].split()[0], lines[2].split()[0]
    assert lines == [f"{first} start", f"{first} end", f"{second} start", f"{second} end"]
    assert {first, second} == {"a", "b"}
    assert ctl.ok("get", "--prefix", name + "/") == ""  # both released the lock


def test_elect_has_one_leader_and_the_next_takes_over(etcdctl, keys):
    name = keys.top + "election"
    with etcd_tools.EtcdctlProcess(etcdctl.binary, etcdctl.endpoint, "elect", name, "alice") as alice:
        key, value = alice.read_lines(2)  # the leader's key, then its value
        assert key.startswith(name + "/") and value == "alice"
        with etcd_tools.EtcdctlProcess(etcdctl.binary, etcdctl.endpoint, "elect", name, "bob") as bob:
            with etcd_tools.EtcdctlProcess(etcdctl.binary, etcdctl.endpoint, "elect", "-l", name) as observer:
                assert observer.read_lines(2) == [key, "alice"]
                assert bob.no_more_lines(0.5) == []  # bob waits while alice leads
                alice.process.send_signal(signal.SIGINT)  # alice resigns
                assert bob.read_lines(2)[1] == "bob"
                assert observer.read_lines(2)[1] == "bob"
