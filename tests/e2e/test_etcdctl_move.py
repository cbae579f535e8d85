"""`tessera shards move` as an operator runs it, with etcdctl as the client, on a cluster of its own:
a prefix with data moves while etcdctl writes to it and watches it, and every range and every
watch event is checked against what was written; a mover killed with SIGKILL is recovered."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import threading

import pytest

import etcd_tools
from cluster import ClusterThread

PRELOADED_KEYS = 500


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with ClusterThread(tmp_path_factory.mktemp("move-e2e")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def etcdctl_binary():
    try:
        return etcd_tools.etcdctl_path()
    except etcd_tools.ToolUnavailable as reason:
        pytest.skip(str(reason))


def etcdctl_json(binary, endpoint: str, *args: str):
    code, out, err = etcd_tools.run_etcdctl(binary, endpoint, *args, "-w", "json")
    assert code == 0 and "Error:" not in err, f"etcdctl {args}: {code} {err}"
    return json.loads(out)


def tessera(cluster, *args: str, **options) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tessera.cli", *args, "--data-dir", str(cluster.launcher.data_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **options)


def preload(binary, endpoint: str, prefix: str, count: int, value_bytes: int = 100) -> int:
    """Keys under `prefix`, 100 to an etcdctl txn; the revision after them."""
    revision = 0
    for first in range(0, count, 100):
        puts = "".join(f"put {prefix}k{n:05d} {'x' * value_bytes}\n" for n in range(first, min(first + 100, count)))
        code, out, err = etcd_tools.run_etcdctl(binary, endpoint, "txn", "-w", "json", stdin=f"\n{puts}\n\n")
        assert code == 0 and "Error:" not in err, err
        revision = int(json.loads(out)["header"]["revision"])
    return revision


def decoded(kv: dict) -> tuple[str, str, int, int, int]:
    return (base64.b64decode(kv["key"]).decode(), base64.b64decode(kv.get("value", "")).decode(),
            int(kv.get("create_revision", 0)), int(kv.get("mod_revision", 0)), int(kv.get("version", 0)))


class Writer(threading.Thread):
    """etcdctl put, one after another, until told to stop: (key, value, revision) as acknowledged."""

    def __init__(self, binary, endpoint: str, prefix: str):
        super().__init__(daemon=True)
        self.binary, self.endpoint, self.prefix = binary, endpoint, prefix
        self.written: list[tuple[str, str, int]] = []
        self.stop = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        n = 0
        try:
            while not self.stop.is_set():
                key, value = f"{self.prefix}k{n % (PRELOADED_KEYS + 40):05d}", f"live{n}"
                answer = etcdctl_json(self.binary, self.endpoint, "put", key, value)
                self.written.append((key, value, int(answer["header"]["revision"])))
                n += 1
        except BaseException as failure:  # reported by the test
            self.failure = failure


def test_a_prefix_with_data_moves_under_etcdctl_writes_and_watch(cluster, etcdctl_binary):
    prefix = "/e2e-moving/"
    endpoint = cluster.endpoint
    start = preload(etcdctl_binary, endpoint, prefix, PRELOADED_KEYS) + 1
    before = {decoded(kv)[0]: decoded(kv) for kv in
              etcdctl_json(etcdctl_binary, endpoint, "get", "--prefix", prefix).get("kvs", [])}
    assert len(before) == PRELOADED_KEYS
    with etcd_tools.EtcdctlProcess(etcdctl_binary, endpoint, "watch", "--prefix", prefix,
                                   "--rev", str(start), "-w", "json") as watch:
        writer = Writer(etcdctl_binary, endpoint, prefix)
        writer.start()
        mover = tessera(cluster, "shards", "move", prefix, "3")
        out, err = mover.communicate(timeout=300)
        writes_during_move = len(writer.written)
        assert writes_during_move > 0
        while len(writer.written) < writes_during_move + 5 and writer.failure is None:  # and a few after
            writer.join(timeout=0.05)
        writer.stop.set()
        writer.join(timeout=60)
        assert writer.failure is None, writer.failure
        assert mover.returncode == 0, err
        assert f"{prefix} -> group 3: " in out and "writes paused" in out

        written = writer.written
        revisions = [revision for _, _, revision in written]
        assert revisions == sorted(set(revisions))  # revisions kept rising across the switch

        expected = dict(before)
        for key, value, revision in written:
            old = expected.get(key)
            expected[key] = (key, value, old[2] if old else revision, revision, old[4] + 1 if old else 1)
        after = {decoded(kv)[0]: decoded(kv) for kv in
                 etcdctl_json(etcdctl_binary, endpoint, "get", "--prefix", prefix).get("kvs", [])}
        assert after == expected
        for key in (f"{prefix}k00000", f"{prefix}k00499"):  # single keys, as the router finds them now
            assert decoded(etcdctl_json(etcdctl_binary, endpoint, "get", key)["kvs"][0]) == expected[key]

        events = []
        while len(events) < len(written):
            response = json.loads(watch.read_lines(1, timeout=30)[0])
            events.extend(decoded(event["kv"])[:2] + (decoded(event["kv"])[3],)
                          for event in response.get("Events") or [])
        assert events == written  # each write once, in revision order, across the switch
        assert watch.no_more_lines(0.3) == []

    listed = tessera(cluster, "shards", "list")
    out, _ = listed.communicate(timeout=60)
    assert f"{prefix:40} 3" in out


def test_a_mover_killed_with_sigkill_is_recovered(cluster, etcdctl_binary):
    prefix = "/e2e-killed/"
    endpoint = cluster.endpoint
    preload(etcdctl_binary, endpoint, prefix, 3000, value_bytes=1000)
    before = etcdctl_json(etcdctl_binary, endpoint, "get", "--prefix", prefix)["kvs"]
    mover = tessera(cluster, "shards", "move", prefix, "2")
    first_line = mover.stdout.readline()
    assert first_line.startswith("copied "), first_line + mover.stderr.read()
    os.kill(mover.pid, signal.SIGKILL)
    mover.wait()

    listed = tessera(cluster, "shards", "list")
    out, _ = listed.communicate(timeout=60)
    assert "MOVING" in out and prefix in out.split("MOVING", 1)[1]
    refused = tessera(cluster, "shards", "move", prefix + "inner/", "3")
    _, err = refused.communicate(timeout=60)
    assert refused.returncode == 1 and f"overlaps the move of {prefix.encode()!r}" in err

    recovery = tessera(cluster, "shards", "move", "--recover")
    out, err = recovery.communicate(timeout=120)
    assert recovery.returncode == 0, err
    assert out.startswith(f"{prefix.encode()!r}: undone: still on group 1") or \
        out.startswith(f"{prefix.encode()!r}: finished: on group 2"), out
    after = etcdctl_json(etcdctl_binary, endpoint, "get", "--prefix", prefix)["kvs"]
    assert after == before  # nothing lost, nothing changed, whichever way it went
    etcdctl_json(etcdctl_binary, endpoint, "put", prefix + "k00000", "after")  # and writes go on
    again = tessera(cluster, "shards", "move", prefix, "3")
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert f"{prefix} -> group 3: 3000 keys" in out
