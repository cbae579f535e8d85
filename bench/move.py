"""How fast `tessera shards move` moves data, and how long the moved prefix's writes pause.

    python -m bench.move --size-mb 1024 [--value-bytes 4096] [--writers 8] [--max-rate MB_PER_SECOND]
                         [--data-dir DIR] [--json]

Starts a Tessera cluster as `tessera up` runs it (meta + 3 data groups x 3
replicas + router, production settings), fills the prefix /move-bench/ in
group 1 with --size-mb of key-value data (keys and values counted), then
moves it to group 3 (router/moves.py, in a process of its own as `tessera
shards move` runs it, so the mover's work does not stall the clients' event
loop and skew their timings) while --writers clients put to the prefix,
WRITER_PUTS_PER_SECOND each, timing every put from when it was due.

Reports the data moved (keys, bytes), the move's time and throughput
(bytes / the whole move, copy and fence), the fence (from the routers
holding the prefix to their routing by the switched map), and the writers'
latency: p50, p99 and max over the whole move, and p99 and max of the puts
that were in flight during the fence (the pause clients see). Beside them,
one bystander client per data group puts to a prefix of its own there (the
source's, the target's and the third group's), BYSTANDER_PUTS_PER_SECOND;
they and the prefix's writers start BASELINE_SECONDS before the move and
stop at its end: their p50 and p99 before the move and during it say whether
other prefixes are slowed. Every put must succeed. The issue's goals:
at least 20 MB/s, a fence p99 under 1 s, other prefixes not slowed beyond noise.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import grpc

from bench.compare import _BenchCluster
from router import moves
from tessera.api import rpc_pb2_grpc
from tessera.api.rpc_pb2 import PutRequest
from tessera.launcher import META_GROUP

PREFIX = b"/move-bench/"
FILL_IN_FLIGHT = 64  # puts in flight while filling: enough to batch, few enough not to time out
# A prefix in each data group of the bench cluster's map: group 1 (the source), 3 (the target), 2.
BYSTANDERS = {"source": b"/bystander/", "target": b"/registry/events/bystander/",
              "other": b"/registry/pods/bystander/"}
BASELINE_SECONDS = 5.0  # of bystander puts before the move starts
# The clients' load: a steady one that leaves the host room (closed-loop clients putting as fast
# as they can would take every core before the move starts, and then any work at all slows them).
BYSTANDER_PUTS_PER_SECOND = 100
WRITER_PUTS_PER_SECOND = 50


def _started() -> None:
    """Nothing: run first, so the mover's process has started and imported the mover before the clock does."""


def _move_in_own_process(meta: dict[int, str], prefix: bytes, target: int, max_rate: float) -> moves.MoveOutcome:
    return asyncio.run(moves.move(meta, prefix, target, max_rate=max_rate))


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def fill(kv: rpc_pb2_grpc.KVStub, size_bytes: int, value_bytes: int) -> tuple[int, int]:
    """(keys, bytes) written under PREFIX."""
    value = b"v" * value_bytes
    keys = max(1, size_bytes // (value_bytes + len(PREFIX) + 8))
    next_key = iter(range(keys))

    async def worker():
        for n in next_key:
            await kv.Put(PutRequest(key=PREFIX + b"%08d" % n, value=value), timeout=30)

    await asyncio.gather(*(worker() for _ in range(FILL_IN_FLIGHT)))
    return keys, keys * (value_bytes + len(PREFIX) + 8)


async def measure(cluster: _BenchCluster, size_bytes: int, value_bytes: int, writers: int,
                  max_rate: float = 0) -> dict:
    async with grpc.aio.insecure_channel(cluster.endpoint) as channel:
        kv = rpc_pb2_grpc.KVStub(channel)
        keys, filled_bytes = await fill(kv, size_bytes, value_bytes)
        puts: list[tuple[float, float]] = []  # (sent, answered), monotonic seconds
        bystanders: dict[str, list[tuple[float, float]]] = {name: [] for name in BYSTANDERS}
        moving = True

        async def paced_puts(keys, per_second: float, samples: list[tuple[float, float]]):
            """Puts on a fixed schedule, whether or not the last is answered (an open-loop client,
            as many independent ones are: a slow answer delays no later put, and counts in full)."""
            in_flight: set[asyncio.Task] = set()

            async def put(key: bytes, scheduled: float):
                await kv.Put(PutRequest(key=key, value=b"x" * 100), timeout=30)
                samples.append((scheduled, time.monotonic()))

            scheduled = time.monotonic()
            for key in keys:
                if not moving:
                    break
                task = asyncio.ensure_future(put(key, scheduled))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                scheduled += 1 / per_second
                await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            await asyncio.gather(*in_flight)

        # The prefix's writers and the bystanders start together, so the baseline carries the load
        # the move adds to, and "during" differs from it by the move alone.
        bystanding = [asyncio.ensure_future(paced_puts(
            (BYSTANDERS[name] + b"%06d" % (n % 1000) for n in itertools.count()),
            BYSTANDER_PUTS_PER_SECOND, bystanders[name])) for name in BYSTANDERS]
        writing = [asyncio.ensure_future(paced_puts(
            (PREFIX + b"w%02d-%06d" % (number, n) for n in itertools.count()), WRITER_PUTS_PER_SECOND, puts))
            for number in range(writers)]
        await asyncio.sleep(BASELINE_SECONDS)
        layout = cluster.launcher.layout
        meta = {member: layout.api_address(META_GROUP, member) for member in layout.groups[META_GROUP]}
        loop = asyncio.get_running_loop()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as mover:
            await loop.run_in_executor(mover, _started)
            started = time.monotonic()
            outcome = await loop.run_in_executor(mover, _move_in_own_process, meta, PREFIX, 3, max_rate)
            ended = time.monotonic()
        moving = False
        await asyncio.gather(*writing, *bystanding)
    fence_start = started + outcome.copy_seconds
    fence_end = fence_start + outcome.fence_seconds
    during_move = [answered - sent for sent, answered in puts if answered >= started and sent <= fence_end]
    during_fence = [answered - sent for sent, answered in puts if answered >= fence_start and sent <= fence_end]
    move_seconds = outcome.copy_seconds + outcome.fence_seconds
    return {
        "keys_filled": keys, "bytes_filled": filled_bytes,
        "keys_moved": outcome.keys, "bytes_moved": outcome.bytes,
        "move_seconds": round(move_seconds, 3),
        "throughput_mb_per_second": round(outcome.bytes / move_seconds / 1e6, 2),
        "fence_seconds": round(outcome.fence_seconds, 3),
        "put_latency_ms_p50": round(percentile(during_move, 0.5) * 1000, 1),
        "put_latency_ms_p99": round(percentile(during_move, 0.99) * 1000, 1),
        "put_latency_ms_max": round(max(during_move, default=0) * 1000, 1),
        "fence_put_latency_ms_p99": round(percentile(during_fence, 0.99) * 1000, 1),
        "fence_put_latency_ms_max": round(max(during_fence, default=0) * 1000, 1),
        "puts_during_move": len(during_move),
        "puts_during_fence": len(during_fence),
        **{f"bystander_{name}_ms_{when}_{figure}": round(percentile(latencies, fraction) * 1000, 1)
           for name, samples in bystanders.items()
           for when, latencies in (
               ("before", [answered - sent for sent, answered in samples if answered < started]),
               ("during", [answered - sent for sent, answered in samples if sent >= started and answered <= ended]))
           for figure, fraction in (("p50", 0.5), ("p99", 0.99))},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024.0, help="key-value data to move (MB)")
    parser.add_argument("--value-bytes", type=int, default=4096)
    parser.add_argument("--writers", type=int, default=8, help="clients putting to the prefix during the move")
    parser.add_argument("--max-rate", type=float, default=0.0, metavar="MB_PER_SECOND",
                        help="the move's cap, as `tessera shards move --max-rate` (default 0: none)")
    parser.add_argument("--data-dir", help="where the cluster lives (default: a temporary directory)")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-move-", dir=args.data_dir) as directory:
        with _BenchCluster(Path(directory)) as cluster:
            figures = cluster.run(measure(cluster, int(args.size_mb * 1e6), args.value_bytes, args.writers,
                                          args.max_rate * 1e6),
                                  timeout=24 * 3600)
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
