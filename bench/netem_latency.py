"""Put throughput and p99 with latency between hosts: 0, 1 and 5 ms by tc netem.

    sudo python -m bench.netem_latency [--latencies 0,1,5] [--duration 10] [--clients 1000] [--conns 100]
                                       [--prefixes /bench/] [--json FILE]

Starts a Tessera cluster across hosts on this machine (tessera/netns.py: each
replica and the router in a network namespace of its own, on one bridge,
started by the per-host commands) and, for each latency, delays every packet
each host sends by that much with `tc netem` (so a round trip between two
hosts takes twice it; the load generator, in the root namespace, sees the
router's answers delayed once), then drives puts through the router with
bench/loadgen.py for --duration seconds after a warm-up. Prints one line per
latency (requests/s, p50, p99, errors) and, with --json, writes the figures.

Raft's batching is what keeps throughput up as latency grows: a leader sends
its appends before its own fsync and a batch carries whatever proposals queued
during the last round trip, so more clients fill bigger batches.

Needs root, iproute2, and a kernel with the netem qdisc (sch_netem). Without
netem only the 0 ms row can be measured: the others are reported as not
measured, with the reason, and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from cluster import ClusterThread  # noqa: E402

from bench.loadgen import run_load  # noqa: E402
from tessera import netns  # noqa: E402

LATENCIES_MS = (0.0, 1.0, 5.0)


class _NetnsBenchCluster(ClusterThread):
    """ClusterThread across namespaces, with the launcher's production settings (full WAL segments)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.launcher = netns.NetnsLauncher(directory, supervise=False, report=self.reports.append)


def set_latency(network: netns.NetnsNetwork, latency_ms: float) -> None:
    """Every host's sent packets delayed by `latency_ms` (0 removes the delay)."""
    for host in network.hosts:
        if latency_ms:
            network.netem(host, delay_ms=latency_ms)
    if not latency_ms:
        network.heal()


def measure(latencies_ms, duration: float, clients: int, connections: int, prefixes, directory: Path,
            report=print) -> list[dict]:
    """One row per latency: its figures, or why it was not measured."""
    rows = []
    with _NetnsBenchCluster(directory) as cluster:
        network = cluster.launcher.network
        netem = network.netem_available()
        for latency_ms in latencies_ms:
            if latency_ms and not netem:
                rows.append({"latency_ms": latency_ms,
                             "not_measured": "this kernel has no netem qdisc (sch_netem)"})
                report(f"{latency_ms:g} ms: not measured: {rows[-1]['not_measured']}")
                continue
            set_latency(network, latency_ms)
            result = run_load(cluster.endpoint, clients=clients, op="put", prefixes=prefixes, duration=duration,
                              connections=connections)
            figures = result.overall
            rows.append({"latency_ms": latency_ms, "ops_per_second": figures.ops_per_second,
                         "latency_ms_p50": figures.latency_ms_p50, "latency_ms_p99": figures.latency_ms_p99,
                         "errors": dict(result.errors)})
            report(f"{latency_ms:g} ms: {figures.ops_per_second:,.0f} puts/s  p50 {figures.latency_ms_p50:.2f} ms  "
                   f"p99 {figures.latency_ms_p99:.2f} ms  errors {sum(result.errors.values())}")
        network.heal()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.netem_latency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--latencies", default=",".join(f"{ms:g}" for ms in LATENCIES_MS),
                        help="milliseconds each host's packets are delayed, comma-separated (default %(default)s)")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per latency")
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--conns", type=int, default=100, help="gRPC connections the clients share")
    parser.add_argument("--prefixes", default="/bench/", help="key prefixes, comma-separated (default group 1)")
    parser.add_argument("--data-dir", type=Path, default=None, help="the cluster's data (default a temporary dir)")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args(argv)
    reason = netns.unavailable()
    if reason:
        print(f"bench.netem_latency: {reason}", file=sys.stderr)
        return 2
    latencies = [float(text) for text in args.latencies.split(",")]
    directory = args.data_dir or Path(tempfile.mkdtemp(prefix="tessera-netem-"))
    rows = measure(latencies, args.duration, args.clients, args.conns, tuple(args.prefixes.split(",")), directory)
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any("not_measured" in row for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
