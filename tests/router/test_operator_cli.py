"""The operator's commands against a running cluster: tessera status, tessera leader transfer."""

from __future__ import annotations

import subprocess
import sys


def tessera(cluster, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tessera.cli", *args, "--data-dir", str(cluster.launcher.data_dir)],
                          capture_output=True, text=True, timeout=60)


def leaders(status_output: str) -> dict[int, int]:
    rows = [line.split() for line in status_output.splitlines()[1:]]
    return {int(row[0]): int(row[1]) for row in rows if row[2] == "leader"}


def test_status_shows_every_replica_and_transfer_moves_a_leader(tessera_cluster):
    status = tessera(tessera_cluster, "status")
    assert status.returncode == 0, status.stderr
    rows = status.stdout.splitlines()[1:]
    assert len(rows) == 12  # 4 groups x 3 replicas
    before = leaders(status.stdout)
    assert sorted(before) == [0, 1, 2, 3]  # one leader in every group

    target = next(member for member in (1, 2, 3) if member != before[2])
    moved = tessera(tessera_cluster, "leader", "transfer", "2", str(target))
    assert moved.returncode == 0 and moved.stdout == f"group 2: member {target} leads\n", moved.stderr
    assert leaders(tessera(tessera_cluster, "status").stdout)[2] == target
    again = tessera(tessera_cluster, "leader", "transfer", "2", str(target))  # it leads already: nothing to do
    assert again.returncode == 0 and again.stdout == f"group 2: member {target} leads (it did already)\n"

    refused = tessera(tessera_cluster, "leader", "transfer", "2", "9")  # not a member
    assert refused.returncode == 1
    assert refused.stderr == "tessera leader transfer: etcdserver: bad leader transferee\n"
