"""Drive any etcd v3 endpoint, in the vocabulary of etcd's `benchmark` tool.

    python -m bench.load put --endpoints 127.0.0.1:2379 --conns 100 --clients 1000 --total 100000 \\
        --key-size 8 --val-size 256 [--sequential-keys] [--key-space-size N] [--prefixes /a/,/b/]
    python -m bench.load range --consistency s --limit 10 --clients 1000 --conns 100 --duration 10
    python -m bench.load txn-put --clients 1000 --conns 100
    python -m bench.load watch-latency --clients 100 --conns 10 --put-rate 100 --total 1000
    python -m bench.load lease-keepalive --clients 100 --conns 10
    python -m bench.load put --constant-server --clients 1000 --conns 100 --processes 2   # the ceiling

Flags go before or after the workload. --total N sends exactly N requests
(watch-latency: N puts); otherwise the load runs --duration seconds after a
--warmup. watch-latency: --clients watchers over --conns watch streams (one
per connection). --target-leader sends everything to the endpoint whose member
says it leads. --processes splits clients, connections and keys over worker
processes. Prints requests/s, average, p50, p90, p99 and max latency, errors
by status code and the generator's own CPU per request; --json prints the
figures as one JSON object instead. A progress bar is drawn on stderr when it
is a terminal. The engine is bench/loadgen.py.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from bench import loadgen


def _common_flags(with_defaults: bool) -> argparse.ArgumentParser:
    # Without defaults after the workload's name: a flag given before it would be overwritten otherwise.
    common = argparse.ArgumentParser(add_help=False)

    def flag(owner, *names, **options):
        if not with_defaults:
            options["default"] = argparse.SUPPRESS
        owner.add_argument(*names, **options)

    target = common.add_mutually_exclusive_group()
    flag(target, "--endpoints", default="127.0.0.1:2379", help="comma-separated host:port list")
    flag(target, "--constant-server", action="store_true",
         help="drive a trivial grpc.aio server in a child process (the generator's ceiling)")
    flag(common, "--target-leader", action="store_true", help="only the endpoint of the leader")
    flag(common, "--conns", type=int, default=1, help="gRPC connections (at least 1 per process)")
    flag(common, "--clients", type=int, default=1, help="concurrent clients (watch-latency: watchers)")
    flag(common, "--processes", type=int, default=1, help="client processes")
    flag(common, "--total", type=int, default=0, help="requests to send (instead of --duration)")
    flag(common, "--duration", type=float, default=10.0, help="measured seconds")
    flag(common, "--warmup", type=float, default=1.0, help="seconds before measuring (with --duration)")
    flag(common, "--key-size", type=int, default=8, help="key bytes, prefix included")
    flag(common, "--val-size", type=int, default=256, help="value bytes")
    flag(common, "--key-space-size", type=int, default=10_000, help="distinct keys")
    flag(common, "--sequential-keys", action="store_true")
    flag(common, "--prefixes", default="/bench/", help="comma-separated; keys go round robin over them")
    flag(common, "--timeout", type=float, default=30.0, help="per-request deadline, seconds")
    flag(common, "--seed", type=int, default=0)
    flag(common, "--json", action="store_true", help="print the figures as JSON")
    flag(common, "--no-progress", action="store_true", help="no progress bar even on a terminal")
    return common


def parser() -> argparse.ArgumentParser:
    common = _common_flags(with_defaults=False)
    top = argparse.ArgumentParser(prog="python -m bench.load", parents=[_common_flags(with_defaults=True)],
                                  description=__doc__.split("\n\n")[0])
    workloads = top.add_subparsers(dest="workload", required=True, metavar="WORKLOAD")
    workloads.add_parser("put", parents=[common], help="Put of keys from the key space")
    range_ = workloads.add_parser("range", parents=[common], help="Range of one key (or from it, with --limit)")
    range_.add_argument("--consistency", choices=("l", "s"), default="l", help="linearizable or serializable")
    range_.add_argument("--limit", type=int, default=0, help="range to the prefix's end, at most this many keys")
    workloads.add_parser("txn-put", parents=[common], help="Kubernetes' update: compare mod revision, then put")
    watch = workloads.add_parser("watch-latency", parents=[common], help="put-to-event latency of watchers")
    watch.add_argument("--put-rate", type=float, default=100.0, help="puts per second")
    lease = workloads.add_parser("lease-keepalive", parents=[common], help="keep-alives on per-client streams")
    lease.add_argument("--lease-ttl", type=int, default=60, help="seconds")
    mixed = workloads.add_parser("mixed", parents=[common], help="a weighted mix of put, range and txn-put")
    mixed.add_argument("--mix", required=True, help="weights, e.g. put=1,range=9")
    mixed.add_argument("--consistency", choices=("l", "s"), default="l")
    return top


def _parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    pairs = []
    for item in text.split(","):
        op, _, weight = item.partition("=")
        pairs.append((op.strip(), int(weight)))
    return tuple(pairs)


def spec_from(args: argparse.Namespace) -> loadgen.LoadSpec:
    endpoints = tuple(endpoint for endpoint in args.endpoints.split(",") if endpoint)
    return loadgen.LoadSpec(
        endpoints=endpoints, op=args.workload, clients=args.clients, connections=args.conns,
        processes=args.processes, duration_s=args.duration, total=args.total, warmup_s=args.warmup,
        keys=args.key_space_size, key_size=args.key_size,
        prefixes=tuple(p.encode() for p in args.prefixes.split(",") if p),
        sequential_keys=args.sequential_keys, value_size=args.val_size,
        serializable=getattr(args, "consistency", "l") == "s", range_limit=getattr(args, "limit", 0),
        put_rate=getattr(args, "put_rate", 100.0), lease_ttl_s=getattr(args, "lease_ttl", 60),
        mix=_parse_mix(args.mix) if args.workload == "mixed" else (), timeout_s=args.timeout, seed=args.seed)


def report(result: loadgen.LoadResult) -> str:
    """etcd benchmark's summary, in its order: rate, latencies, errors by code."""
    figures = result.overall
    lines = [
        f"{result.spec.op}: {result.spec.clients} clients, {result.spec.connection_count} connections, "
        f"{result.spec.processes} processes",
        f"  Total:        {result.seconds:.4f} s, {figures.requests:,} answers",
        f"  Requests/sec: {figures.ops_per_second:,.1f}",
        f"  Average:      {figures.latency_ms_avg:.3f} ms",
        f"  p50:          {figures.latency_ms_p50:.3f} ms",
        f"  p90:          {figures.latency_ms_p90:.3f} ms",
        f"  p99:          {figures.latency_ms_p99:.3f} ms",
        f"  Max:          {figures.latency_ms_max:.3f} ms",
        f"  Generator:    {result.generator_cpu_us_per_op:.0f} us CPU per request",
    ]
    if result.txn_conflicts:
        lines.append(f"  Txn conflicts: {result.txn_conflicts:,}")
    lines.append("Errors by code:" + ("" if result.errors else " none"))
    lines += [f"  {code}: {count:,}" for code, count in sorted(result.errors.items())]
    return "\n".join(lines)


def main(argv=None) -> loadgen.LoadResult:
    arguments = parser()
    args = arguments.parse_args(argv)
    try:
        spec = spec_from(args)
    except ValueError as error:
        arguments.error(str(error))
    progress = sys.stderr if sys.stderr.isatty() and not args.no_progress else None
    server_cpu_s = {}
    if args.constant_server:
        with loadgen.ConstantServer() as server:
            def on_window(edge: str) -> None:
                server_cpu_s[edge] = server.cpu_seconds()

            result = loadgen.run(dataclasses.replace(spec, endpoints=(server.endpoint,)), on_window, progress)
    else:
        if args.target_leader:
            spec = dataclasses.replace(spec, endpoints=(loadgen.leader_endpoint(spec.endpoints),))
        result = loadgen.run(spec, progress=progress)
    figures = {**result.figures(), "endpoints": list(result.spec.endpoints)}
    if server_cpu_s:  # the constant server: how much of the host it took, beside the generator
        figures["server_cpu_us_per_op"] = (
            (server_cpu_s["end"] - server_cpu_s["start"]) * 1e6 / max(1, result.overall.requests))
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(report(result))
        if server_cpu_s:
            print(f"Constant server: {figures['server_cpu_us_per_op']:.0f} us CPU per request")
    return result


if __name__ == "__main__":
    # Run as the importable module, so worker processes unpickle its classes by that name.
    from bench import load

    load.main()
