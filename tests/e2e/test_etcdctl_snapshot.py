"""`etcdctl snapshot save` against the endpoint, and etcd's own tools on what it saved.

etcd's client takes the stream, checks that it ends in a sha256 (its length is
32 more than a multiple of 512) and saves it. The file is etcd's bbolt
database (router/snapshot.py), so `etcdctl snapshot status` reads it and
`etcdutl snapshot restore` makes a data dir a real etcd 3.5 starts from,
serving what the endpoint served at the snapshot's revision.
"""

import base64
import hashlib
import json
import subprocess
import sys

import etcd_tools
from e2e_util import lines
from tessera.api import etcd_backend
from tessera.api.bbolt import BoltReader

DIGEST_BYTES = 32  # sha256
BIG_VALUE_BYTES = 20000  # more than a bbolt page: an overflow page


def test_snapshot_save_takes_the_stream_and_its_checksum(any_etcdctl, keys, endpoint_kind, tmp_path):
    ctl = any_etcdctl
    ctl.ok("put", keys.pods + "k", "in group 2")
    ctl.ok("put", keys.top + "k", "in group 1")
    file = tmp_path / "etcdctl.snapshot"
    out = ctl.ok("snapshot", "save", str(file))
    assert f"Snapshot saved at {file}\n" in out
    data = file.read_bytes()
    assert len(data) % 512 == DIGEST_BYTES
    assert hashlib.sha256(data[:-DIGEST_BYTES]).digest() == data[-DIGEST_BYTES:]
    assert not file.with_name(file.name + ".part").exists()
    if endpoint_kind == "tessera":
        status = subprocess.run([sys.executable, "-m", "tessera.cli", "snapshot", "status", str(file)],
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0, status.stderr
        assert "checksum verified" in status.stdout


def test_etcd_restored_from_the_snapshot_serves_the_same_keys_revisions_and_leases(etcdctl, keys, endpoint_kind,
                                                                                  tmp_path):
    ctl = etcdctl
    lease = ctl.ok("lease", "grant", "600").split()[1]
    for prefix in keys.prefixes:  # every group: versions, a delete, a value past a page
        ctl.ok("put", prefix + "k1", "v1")
        ctl.ok("put", prefix + "k1", "v2")
        ctl.ok("put", prefix + "k2", "gone")
        ctl.ok("del", prefix + "k2")
        ctl.ok("put", prefix + "big", "b" * BIG_VALUE_BYTES)
    # Two keys of one revision (a txn), and keys of one lease in two groups.
    txn = f'create("{keys.pods}t1") = "0"\n\nput {keys.pods}t1 x\nput {keys.pods}t2 y\n\n\n'
    assert ctl.ok("txn", stdin=txn).startswith("SUCCESS")
    ctl.ok("put", keys.events + "leased", "l", "--lease", lease)
    ctl.ok("put", keys.top + "leased", "l", "--lease", lease)
    file = tmp_path / "etcdctl.snapshot"
    ctl.ok("snapshot", "save", str(file))

    status = json.loads(ctl.ok("snapshot", "status", str(file), "-w", "json"))
    database = BoltReader(file.read_bytes())
    assert database.check() == []
    with etcd_tools.EtcdServer(name="restored", directory=tmp_path / "etcd", snapshot=file) as etcd:
        restored = etcd.etcdctl
        served = json.loads(restored("get", "", "--prefix", "-w", "json"))
        revision = served["header"]["revision"]
        at_snapshot = ctl.json("get", "", "--prefix", f"--rev={revision}")
        assert served["kvs"] == at_snapshot["kvs"]  # keys, values, create/mod revisions, versions, leases
        mine = [kv for kv in served["kvs"] if any(
            decoded(kv["key"]).startswith(prefix) for prefix in keys.prefixes)]
        assert len(mine) == 4 * 2 + 2 + 2
        assert status["revision"] == max(kv["mod_revision"] for kv in served["kvs"])
        ttl = json.loads(restored("lease", "timetolive", lease, "--keys", "-w", "json"))
        assert ttl["granted-ttl"] == 600 and sorted(map(decoded, ttl["keys"])) == sorted(
            [keys.events + "leased", keys.top + "leased"])
        # The restored etcd takes writes at the revisions after the snapshot's.
        after = json.loads(restored("put", keys.top + "after", "a", "-w", "json"))
        assert after["header"]["revision"] == revision + 1
        assert restored("get", keys.top + "after", "--print-value-only") == lines("a")
    if endpoint_kind == "tessera":
        # No history before the revision, one record per key; etcd's status counts every bucket's entries.
        others = sum(len(list(bucket.items())) for name, bucket in database.buckets()
                     if name != etcd_backend.KEY_BUCKET)
        assert status["totalKey"] == len(served["kvs"]) + others


def decoded(b64_text: str) -> str:
    return base64.b64decode(b64_text).decode()
