"""`etcdctl snapshot save` against the endpoint: etcd's client takes the stream, checks that it ends
in a sha256 (its length is 32 more than a multiple of 512) and saves it.

etcd's client checks only that length; the digest itself is checked here, and by Tessera's
own reader. `etcdctl snapshot status` and `restore` read etcd's database format, which Tessera's
snapshots do not have yet.
"""

import hashlib
import subprocess
import sys

DIGEST_BYTES = 32  # sha256


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
