"""Load generator for any etcd v3 endpoint (a real etcd or Tessera's router): the engine.

    from bench.loadgen import run_load
    result = run_load("127.0.0.1:2379", clients=256, op="put", prefixes=("/a/",), duration=5)

The command line, in the vocabulary of etcd's `benchmark` tool, is bench/load.py
(`python -m bench.load`).

Shape, after etcd's `benchmark`: `clients` coroutines issue requests back to
back, sharing a small pool of `connections` gRPC channels (HTTP/2
connections), spread round robin over the endpoints. With `processes` > 1 the
clients, connections and keyspace are split over that many worker processes,
so on a small host the generator itself is less likely to be the bottleneck;
their latency samples are merged.

Operations:
  put               Put of a key from the keyspace, value of `value_size` bytes
  range             Range of one key (linearizable, or serializable); with
                    `range_limit` > 0, from the key to the end of its prefix,
                    at most that many keys
  txn-put           Kubernetes' update: Txn If(mod_revision(key) == last seen)
                    Then Put(key) Else Range(key); a failed compare ("conflict")
                    learns the current mod_revision from the Else branch
                    (mixed with put, puts make those revisions stale: more conflicts)
  watch-latency     `clients` watchers of one key over `connections` watch
                    streams (one per connection); puts to that key at
                    `put_rate` per second; a sample is put sent -> event seen
                    by one watcher. One process.
  lease-keepalive   each client grants a lease, then sends keep-alives on a
                    LeaseKeepAlive stream of its own, one at a time
  mixed             a weighted mix of put, range and txn-put (`mix`, e.g. put=1,range=9)

Keys are `prefix + index` in hex, padded so a key has `key_size` bytes where
the prefix leaves room (never fewer digits than the largest index needs); key
i has prefix prefixes[i % len(prefixes)], so sequential keys go round robin
over the prefixes and random keys spread uniformly. Each worker process owns a
contiguous block of the keyspace (txn-put keeps a per-key revision cache that
must not go stale behind another process). Range and txn-put first write each
key of the block once (prefill, not timed), so reads find data and txn-put
knows every key's revision.

Timing: with a duration, a warm-up precedes a measured window of
`duration_s`; a success that started and finished inside the window gives a
latency sample, a failure that started inside it counts under its gRPC status
code. ops/s = samples / window. With `total` > 0 exactly that many requests
are sent (no warm-up) and ops/s = successes / time to the last answer.

Overhead (the generator shares a 2-core host with the servers): requests go
out as pre-serialised bytes (the channel's serializer is the identity; a
request is a cached key field joined with a cached tail, since concatenated
protobuf messages parse as their merge) and answers stay bytes except where
txn-put, watch-latency and lease-keepalive must read them. Latencies go into
an array of int64 nanoseconds. The generator's own CPU time per request is
measured and reported (`generator_cpu_us_per_op`) so a run shows whether the
generator was the limit. `ConstantServer` is a trivial grpc.aio server in a
child process that answers every call with a constant message: against it
the generator shows its ceiling.
"""

from __future__ import annotations

import array
import asyncio
import dataclasses
import itertools
import math
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from router.shard_map import prefix_end
from tessera.api import kv_pb2, rpc_pb2, rpc_pb2_grpc

REQUEST_OPS = ("put", "range", "txn-put")  # one unary call per request: these mix
OPS = REQUEST_OPS + ("watch-latency", "lease-keepalive")
KV_METHOD = "/etcdserverpb.KV/"
WATCH_METHOD = "/etcdserverpb.Watch/Watch"
LEASE_GRANT_METHOD = "/etcdserverpb.Lease/LeaseGrant"
LEASE_KEEPALIVE_METHOD = "/etcdserverpb.Lease/LeaseKeepAlive"
# Separate channels must be separate connections; grpc would otherwise share
# one subchannel (one TCP connection) among channels with equal arguments.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
PREFILL_CONCURRENCY = 64
CONNECT_TIMEOUT_S = 10.0
PROGRESS_INTERVAL_S = 0.25
# Not a gRPC code: a watcher that never saw a put's event, or a keep-alive of a lease gone.
EVENT_MISSING = "EVENT_MISSING"
LEASE_NOT_FOUND = "LEASE_NOT_FOUND"
SEQUENCE_BYTES = 8  # watch-latency: a put's value starts with its sequence number


@dataclass(frozen=True)
class LoadSpec:
    endpoints: tuple[str, ...]
    op: str = "put"
    clients: int = 1
    connections: int = 1
    processes: int = 1
    duration_s: float = 10.0
    total: int = 0  # > 0: this many requests (watch-latency: puts) instead of a duration
    warmup_s: float = 1.0
    keys: int = 10_000
    key_size: int = 8
    prefixes: tuple[bytes, ...] = (b"/bench/",)
    sequential_keys: bool = False
    value_size: int = 256
    serializable: bool = False  # range: etcd's --consistency s
    range_limit: int = 0
    put_rate: float = 100.0  # watch-latency: puts per second
    lease_ttl_s: int = 60  # lease-keepalive
    mix: tuple[tuple[str, int], ...] = ()  # for op="mixed": (op, weight) pairs
    prefill: bool | None = None  # None: range and txn-put prefill
    timeout_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, str):
            object.__setattr__(self, "endpoints", (self.endpoints,))
        if self.op != "mixed" and self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; one of {OPS + ('mixed',)}")
        if (self.op == "mixed") != bool(self.mix):
            raise ValueError("op 'mixed' needs a mix (e.g. put=1,range=9), and only it takes one")
        if self.mix and sum(weight for _, weight in self.mix) <= 0:
            raise ValueError("the mix needs a positive weight")
        for op, weight in self.mix:
            if op not in REQUEST_OPS or weight < 0:
                raise ValueError(f"bad mix entry {op}={weight}; ops that mix: {REQUEST_OPS}")
        if not 1 <= self.processes <= min(self.clients, self.keys):
            raise ValueError("need 1 <= processes <= clients and processes <= keys")
        if self.op == "watch-latency" and (self.processes != 1 or self.put_rate <= 0):
            raise ValueError("watch-latency runs in one process, with a positive put rate")
        if self.connections < 1 or not self.prefixes or not self.endpoints:
            raise ValueError("need connections >= 1, a prefix and an endpoint")
        if self.total < 0 or (not self.total and self.duration_s <= 0):
            raise ValueError("need a positive total or a positive duration")
        if self.value_size < (SEQUENCE_BYTES if self.op == "watch-latency" else 0):
            raise ValueError(f"watch-latency needs values of at least {SEQUENCE_BYTES} bytes")

    @property
    def weighted_ops(self) -> tuple[tuple[str, int], ...]:
        if self.op == "mixed":
            return tuple((op, weight) for op, weight in self.mix if weight > 0)
        return ((self.op, 1),)

    def connections_in(self, process: int) -> int:
        """`connections` split over the processes, at least one each."""
        low, high = _share(self.connections, self.processes, process)
        return max(1, high - low)

    @property
    def connection_count(self) -> int:
        return sum(self.connections_in(process) for process in range(self.processes))

    @property
    def prefills(self) -> bool:
        if self.prefill is not None:
            return self.prefill
        return any(op in ("range", "txn-put") for op, _ in self.weighted_ops)


@dataclass(frozen=True)
class OpFigures:
    requests: int
    ops_per_second: float
    latency_ms_avg: float
    latency_ms_p50: float
    latency_ms_p90: float
    latency_ms_p99: float
    latency_ms_p999: float
    latency_ms_max: float

    @classmethod
    def from_samples(cls, samples_ns: list[int], seconds: float) -> OpFigures:
        samples_ns = sorted(samples_ns)

        def at(fraction: float) -> float:
            if not samples_ns:
                return float("nan")
            # nearest rank: the smallest sample with at least `fraction` of all at or below it
            rank = max(1, math.ceil(len(samples_ns) * fraction))
            return samples_ns[rank - 1] / 1e6

        average = sum(samples_ns) / len(samples_ns) / 1e6 if samples_ns else float("nan")
        return cls(len(samples_ns), len(samples_ns) / seconds if seconds > 0 else 0.0, average,
                   at(0.50), at(0.90), at(0.99), at(0.999), at(1.0))


@dataclass(frozen=True)
class LoadResult:
    spec: LoadSpec
    seconds: float
    overall: OpFigures
    by_op: dict[str, OpFigures]
    errors: dict[str, int]  # gRPC status code name (or EVENT_MISSING, LEASE_NOT_FOUND) -> count
    txn_conflicts: int
    generator_cpu_us_per_op: float

    def summary(self) -> str:
        spec, figures = self.spec, self.overall
        line = (f"{spec.op} clients={spec.clients} conns={spec.connection_count} procs={spec.processes} "
                f"{self.seconds:.1f}s: {figures.ops_per_second:,.0f} ops/s  ms avg {figures.latency_ms_avg:.2f} "
                f"p50 {figures.latency_ms_p50:.2f} p90 {figures.latency_ms_p90:.2f} "
                f"p99 {figures.latency_ms_p99:.2f} max {figures.latency_ms_max:.2f}  "
                f"errors {sum(self.errors.values())}")
        if self.errors:
            line += " (" + ", ".join(f"{code} {count}" for code, count in sorted(self.errors.items())) + ")"
        if self.txn_conflicts:
            line += f"  txn conflicts {self.txn_conflicts}"
        if len(self.by_op) > 1:
            line += "  [" + "; ".join(f"{op} {f.ops_per_second:,.0f}/s p50 {f.latency_ms_p50:.2f} "
                                      f"p99 {f.latency_ms_p99:.2f}" for op, f in self.by_op.items()) + "]"
        return line + f"  generator {self.generator_cpu_us_per_op:.0f} us CPU/op"

    def figures(self) -> dict:
        """Flat figures for pytest-benchmark's extra_info or JSON."""
        flat = {"op": self.spec.op, "clients": self.spec.clients, "connections": self.spec.connection_count,
                "processes": self.spec.processes, "seconds": self.seconds,
                **dataclasses.asdict(self.overall), "errors": dict(self.errors),
                "txn_conflicts": self.txn_conflicts,
                "generator_cpu_us_per_op": self.generator_cpu_us_per_op}
        if len(self.by_op) > 1:
            flat["by_op"] = {op: dataclasses.asdict(f) for op, f in self.by_op.items()}
        return flat


def run_load(endpoint, clients: int = 1, op: str = "put", prefixes=("/bench/",),
             duration: float = 10.0, on_window=None, **options) -> LoadResult:
    """Drive `endpoint` (host:port, or several) and measure; options are the other LoadSpec fields."""
    endpoints = (endpoint,) if isinstance(endpoint, str) else tuple(endpoint)
    prefixes = tuple(p.encode() if isinstance(p, str) else p for p in prefixes)
    return run(LoadSpec(endpoints=endpoints, clients=clients, op=op, prefixes=prefixes,
                        duration_s=duration, **options), on_window)


def leader_endpoint(endpoints) -> str:
    """The endpoint whose member says it leads (etcd's --target-leader; Tessera's router says so of itself)."""
    for endpoint in endpoints:
        with grpc.insecure_channel(endpoint) as channel:
            status = rpc_pb2_grpc.MaintenanceStub(channel).Status(rpc_pb2.StatusRequest(), timeout=5)
        if status.leader and status.leader == status.header.member_id:
            return endpoint
    raise RuntimeError(f"none of {', '.join(endpoints)} says it is the leader")


def run(spec: LoadSpec, on_window=None, progress=None) -> LoadResult:
    """Run the load. on_window("start") and on_window("end") are called in this process at the
    measured window's edges, e.g. to read the servers' CPU time over exactly that window.
    progress: a file (a terminal) to draw a progress bar on while the load runs."""
    on_window = on_window or _ignore
    done_counts = multiprocessing.get_context("spawn").RawArray("q", spec.processes)
    bar = _ProgressBar(spec, done_counts, progress) if progress is not None else None
    try:
        if spec.processes == 1:
            samples = asyncio.run(_drive(spec, 0, _ignore, on_window, done_counts))
            return _merge(spec, [samples])
        return _run_workers(spec, on_window, done_counts)
    finally:
        if bar is not None:
            bar.stop()


def _run_workers(spec: LoadSpec, on_window, done_counts) -> LoadResult:
    context = multiprocessing.get_context("spawn")  # fork after grpc is set up is unsafe
    pipes, workers = [], []
    try:
        for index in range(spec.processes):
            parent_end, child_end = context.Pipe()
            worker = context.Process(target=_worker_main, args=(spec, index, child_end, done_counts), daemon=True)
            worker.start()
            child_end.close()
            pipes.append(parent_end)
            workers.append(worker)
        for pipe in pipes:  # every worker connected (and prefilled): start together
            _receive(pipe, "ready")
        for pipe in pipes:
            pipe.send("go")
        if spec.total:
            on_window("start")
            parts = [_receive(pipe, "samples") for pipe in pipes]
            on_window("end")
            return _merge(spec, parts)
        time.sleep(spec.warmup_s)
        on_window("start")
        time.sleep(spec.duration_s)
        on_window("end")
        return _merge(spec, [_receive(pipe, "samples") for pipe in pipes])
    finally:
        for pipe in pipes:  # a worker still waiting for "go" sees end of file and exits
            pipe.close()
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                os.kill(worker.pid, signal.SIGKILL)
                worker.join()


def _receive(pipe, kind: str):
    try:
        message = pipe.recv()
    except EOFError:
        raise RuntimeError("a load worker exited without answering") from None
    if message[0] == "error":
        raise RuntimeError(f"load worker failed: {message[1]}")
    if message[0] != kind:
        raise RuntimeError(f"load worker sent {message[0]!r}, expected {kind!r}")
    return message[1]


def _worker_main(spec: LoadSpec, index: int, pipe, done_counts) -> None:
    def barrier() -> None:
        pipe.send(("ready", None))
        if pipe.recv() != "go":
            raise RuntimeError("parent did not say go")

    try:
        samples = asyncio.run(_drive(spec, index, barrier, _ignore, done_counts))
    except Exception as error:  # the parent raises it
        pipe.send(("error", f"{type(error).__name__}: {error}"))
        return
    pipe.send(("samples", samples))


def _ignore(*_args) -> None:
    pass


class _ProgressBar:
    """A one-line bar on a terminal, redrawn from a thread: the time or the requests done so far."""

    WIDTH = 30

    def __init__(self, spec: LoadSpec, done_counts, stream) -> None:
        self.spec, self.done_counts, self.stream = spec, done_counts, stream
        self.started = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._draw_until_stopped, name="progress", daemon=True)
        self.thread.start()

    def _draw_until_stopped(self) -> None:
        while not self.stopped.wait(PROGRESS_INTERVAL_S):
            done = sum(self.done_counts)
            if self.spec.total:
                fraction = done / self.spec.total
            else:
                fraction = (time.monotonic() - self.started) / (self.spec.warmup_s + self.spec.duration_s)
            fraction = min(1.0, fraction)
            filled = int(fraction * self.WIDTH)
            self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%}  "
                              f"{done:,} done")
            self.stream.flush()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.stream.write("\r" + " " * (self.WIDTH + 40) + "\r")
        self.stream.flush()


@dataclass
class _ProcessSamples:
    latencies_ns: dict[str, bytes]  # op -> array('q') bytes
    errors: Counter
    txn_conflicts: int
    cpu_s: float
    seconds: float  # the measured window, or (with a total) the time to the last answer


def _share(total: int, parts: int, index: int) -> tuple[int, int]:
    return total * index // parts, total * (index + 1) // parts


class _Op:
    """One kind of unary request: builds it from a key index, and notes the answer if it must."""

    name: str
    method: str

    def __init__(self, keyspace: _Keyspace, channels, spec: LoadSpec) -> None:
        self.keyspace = keyspace
        self.calls = [channel.unary_unary(KV_METHOD + self.method) for channel in channels]
        self.samples = array.array("q")
        self.conflicts = 0

    def request(self, index: int) -> bytes:
        raise NotImplementedError

    def answered(self, index: int, reply: bytes) -> None:
        """Most ops ignore the answer (it stays undecoded)."""


class _Put(_Op):
    name, method = "put", "Put"

    def __init__(self, keyspace, channels, spec) -> None:
        super().__init__(keyspace, channels, spec)
        self.key_fields = [rpc_pb2.PutRequest(key=key).SerializeToString() for key in keyspace.keys]
        self.tail = rpc_pb2.PutRequest(value=keyspace.value).SerializeToString()

    def request(self, index: int) -> bytes:
        return self.key_fields[index] + self.tail


class _Range(_Op):
    name, method = "range", "Range"

    def __init__(self, keyspace, channels, spec) -> None:
        super().__init__(keyspace, channels, spec)
        self.key_fields = [rpc_pb2.RangeRequest(key=key).SerializeToString() for key in keyspace.keys]
        # With a limit, a key's range runs to the end of its prefix: one tail per prefix.
        self.tails = [rpc_pb2.RangeRequest(
            serializable=spec.serializable, limit=spec.range_limit,
            range_end=prefix_end(prefix) if spec.range_limit else b"").SerializeToString()
            for prefix in spec.prefixes]
        self.prefix_of = keyspace.prefix_numbers

    def request(self, index: int) -> bytes:
        return self.key_fields[index] + self.tails[self.prefix_of[index]]


class _TxnPut(_Op):
    name, method = "txn-put", "Txn"

    def __init__(self, keyspace, channels, spec) -> None:
        super().__init__(keyspace, channels, spec)
        # One template, filled in and serialised with no await in between.
        self.template = rpc_pb2.TxnRequest(
            compare=[rpc_pb2.Compare(result=rpc_pb2.Compare.EQUAL, target=rpc_pb2.Compare.MOD,
                                     mod_revision=0)],
            success=[rpc_pb2.RequestOp(request_put=rpc_pb2.PutRequest(value=keyspace.value))],
            failure=[rpc_pb2.RequestOp(request_range=rpc_pb2.RangeRequest())],
        )
        self.compare = self.template.compare[0]
        self.put = self.template.success[0].request_put
        self.range = self.template.failure[0].request_range

    def request(self, index: int) -> bytes:
        key = self.keyspace.keys[index]
        self.compare.key = self.put.key = self.range.key = key
        self.compare.mod_revision = self.keyspace.mod_revisions[index]
        return self.template.SerializeToString()

    def answered(self, index: int, reply: bytes) -> None:
        answer = rpc_pb2.TxnResponse.FromString(reply)
        if answer.succeeded:
            self.keyspace.mod_revisions[index] = answer.header.revision
            return
        self.conflicts += 1
        kvs = answer.responses[0].response_range.kvs
        self.keyspace.mod_revisions[index] = kvs[0].mod_revision if kvs else 0


OP_CLASSES = {cls.name: cls for cls in (_Put, _Range, _TxnPut)}


class _Keyspace:
    """This process's block of keys, the value, and the last mod_revision seen per key."""

    def __init__(self, spec: LoadSpec, index: int) -> None:
        low, high = _share(spec.keys, spec.processes, index)
        prefixes = spec.prefixes
        self.prefix_numbers = [i % len(prefixes) for i in range(low, high)]
        self.keys = [_key(spec, i) for i in range(low, high)]
        self.value = random.Random(spec.seed).randbytes(spec.value_size)
        self.mod_revisions = [0] * len(self.keys)


def _key(spec: LoadSpec, index: int) -> bytes:
    prefix = spec.prefixes[index % len(spec.prefixes)]
    digits = max(len(b"%x" % (spec.keys - 1)), spec.key_size - len(prefix))
    return prefix + b"%0*x" % (digits, index)


async def _drive(spec: LoadSpec, index: int, barrier, on_window, done_counts) -> _ProcessSamples:
    """One process's share of the load: connect, prefill, wait for the start, run, measure."""
    connections = spec.connections_in(index)
    first_connection = sum(spec.connections_in(p) for p in range(index))
    channels = [grpc.aio.insecure_channel(spec.endpoints[(first_connection + n) % len(spec.endpoints)],
                                          options=CHANNEL_OPTIONS) for n in range(connections)]
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), CONNECT_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ConnectionError(f"cannot connect to {', '.join(spec.endpoints)} "
                                  f"within {CONNECT_TIMEOUT_S} s") from None
        keyspace = _Keyspace(spec, index)
        if spec.prefills:
            await _prefill(keyspace, channels, spec.timeout_s)
        load = {"watch-latency": _WatchLatency, "lease-keepalive": _LeaseKeepAlive}.get(spec.op, _UnaryLoad)
        runner = load(spec, index, keyspace, channels)
        await runner.prepare()
        barrier()
        window = _Window(spec)
        reporter = asyncio.get_running_loop().create_task(_report_progress(runner, done_counts, index))
        work = asyncio.get_running_loop().create_task(runner.run(window))
        cpu_s = 0.0
        if spec.total:
            on_window("start")
            cpu_start_s = time.process_time()
            await work
            cpu_s = time.process_time() - cpu_start_s
            on_window("end")
            seconds = (runner.last_answer_ns - window.start_ns) / 1e9
        else:
            await asyncio.sleep((window.start_ns - time.perf_counter_ns()) / 1e9)
            on_window("start")
            cpu_start_s = time.process_time()
            await asyncio.sleep(max(0.0, (window.end_ns - time.perf_counter_ns()) / 1e9))
            cpu_s = time.process_time() - cpu_start_s
            on_window("end")
            await work
            seconds = spec.duration_s
        reporter.cancel()
        done_counts[index] = runner.done()
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return _ProcessSamples(latencies_ns={name: samples.tobytes() for name, samples in runner.samples().items()},
                           errors=runner.errors, txn_conflicts=runner.conflicts(), cpu_s=cpu_s,
                           seconds=seconds)


class _Window:
    """Where measuring starts and ends (perf_counter ns); with a total, from now until the work ends."""

    def __init__(self, spec: LoadSpec) -> None:
        now = time.perf_counter_ns()
        if spec.total:
            self.start_ns, self.end_ns = now, 2**63 - 1
        else:
            self.start_ns = now + int(spec.warmup_s * 1e9)
            self.end_ns = self.start_ns + int(spec.duration_s * 1e9)


async def _report_progress(runner, done_counts, index: int) -> None:
    while True:
        done_counts[index] = runner.done()
        await asyncio.sleep(PROGRESS_INTERVAL_S)


class _UnaryLoad:
    """put, range, txn-put and their mix: clients issuing unary calls back to back."""

    def __init__(self, spec: LoadSpec, index: int, keyspace: _Keyspace, channels) -> None:
        self.spec, self.channels = spec, channels
        client_low, client_high = _share(spec.clients, spec.processes, index)
        self.client_count = client_high - client_low
        self.ops = {name: OP_CLASSES[name](keyspace, channels, spec) for name, _ in spec.weighted_ops}
        schedule = [name for name, weight in spec.weighted_ops for _ in range(weight)]
        random.Random(spec.seed + index).shuffle(schedule)
        self.op_sequence = itertools.cycle([self.ops[name] for name in schedule])
        key_count = len(keyspace.keys)
        if spec.sequential_keys:
            counter = itertools.count()
            self.next_key = lambda: next(counter) % key_count
        else:
            rng = random.Random(spec.seed * 7919 + index)
            self.next_key = lambda: rng.randrange(key_count)
        low, high = _share(spec.total, spec.processes, index)
        self.tickets = iter(range(high - low)) if spec.total else itertools.repeat(None)
        self.errors: Counter = Counter()
        self.last_answer_ns = 0

    async def prepare(self) -> None:
        pass

    async def run(self, window: _Window) -> None:
        await asyncio.gather(*(self._client(slot % len(self.channels), window)
                               for slot in range(self.client_count)))

    async def _client(self, channel_slot: int, window: _Window) -> None:
        perf_counter_ns = time.perf_counter_ns
        op_sequence, next_key, errors, timeout_s = self.op_sequence, self.next_key, self.errors, self.spec.timeout_s
        start_ns, end_ns = window.start_ns, window.end_ns
        for _ in self.tickets:
            began = perf_counter_ns()
            if began >= end_ns:
                return
            op = next(op_sequence)
            key = next_key()
            try:
                reply = await op.calls[channel_slot](op.request(key), timeout=timeout_s)
            except grpc.aio.AioRpcError as error:
                if began >= start_ns:
                    errors[error.code().name] += 1
                continue
            finished = perf_counter_ns()
            op.answered(key, reply)
            if began >= start_ns and finished <= end_ns:
                op.samples.append(finished - began)
                self.last_answer_ns = finished

    def samples(self) -> dict[str, array.array]:
        return {name: op.samples for name, op in self.ops.items()}

    def conflicts(self) -> int:
        return sum(op.conflicts for op in self.ops.values())

    def done(self) -> int:
        return sum(len(op.samples) for op in self.ops.values()) + sum(self.errors.values())


class _WatchLatency:
    """Watchers of one key, puts to it at a fixed rate, latency from sending a put to each watcher's event."""

    def __init__(self, spec: LoadSpec, index: int, keyspace: _Keyspace, channels) -> None:
        self.spec, self.channels = spec, channels
        self.key = keyspace.keys[0]
        self.put = channels[0].unary_unary(KV_METHOD + "Put")
        self.padding = keyspace.value[SEQUENCE_BYTES:]
        self.sent_ns = array.array("q")  # by the put's sequence number
        self.measured = array.array("q")
        self.events_seen = 0
        self.errors: Counter = Counter()
        self.streams = []
        self.last_answer_ns = 0

    async def prepare(self) -> None:
        """Open the streams and create every watcher; each says created before the puts start."""
        create = rpc_pb2.WatchRequest(create_request=rpc_pb2.WatchCreateRequest(key=self.key)).SerializeToString()
        for slot, channel in enumerate(self.channels):
            watchers = _share(self.spec.clients, len(self.channels), slot)
            count = watchers[1] - watchers[0]
            if not count:
                continue
            call = channel.stream_stream(WATCH_METHOD)()
            for _ in range(count):
                await call.write(create)
            created = 0
            while created < count:
                answer = await asyncio.wait_for(call.read(), self.spec.timeout_s)
                if answer is grpc.aio.EOF:
                    raise ConnectionError("the watch stream ended before its watchers were created")
                created += rpc_pb2.WatchResponse.FromString(answer).created
            self.streams.append(call)

    async def run(self, window: _Window) -> None:
        readers = [asyncio.get_running_loop().create_task(self._read(call, window)) for call in self.streams]
        puts = []
        interval_ns = int(1e9 / self.spec.put_rate)
        first_ns = time.perf_counter_ns()  # puts start with the warm-up; those before the window are not measured
        for sequence in itertools.count():
            due_ns = first_ns + sequence * interval_ns
            if (self.spec.total and sequence >= self.spec.total) or due_ns >= window.end_ns:
                break
            await asyncio.sleep(max(0.0, (due_ns - time.perf_counter_ns()) / 1e9))
            value = sequence.to_bytes(SEQUENCE_BYTES, "little") + self.padding
            request = rpc_pb2.PutRequest(key=self.key, value=value).SerializeToString()
            sent = time.perf_counter_ns()
            self.sent_ns.append(sent)
            puts.append(asyncio.ensure_future(self._send(request, sent, window)))
        await asyncio.gather(*puts)
        expected = self.spec.clients * len(self.sent_ns)
        deadline = time.monotonic() + self.spec.timeout_s
        while self.events_seen < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for reader in readers:
            reader.cancel()
        for call in self.streams:
            call.cancel()
        measured_puts = sum(1 for sent in self.sent_ns if sent >= window.start_ns)
        missing = self.spec.clients * measured_puts - len(self.measured)
        if missing > 0:
            self.errors[EVENT_MISSING] += missing

    async def _send(self, request: bytes, sent: int, window: _Window) -> None:
        try:
            await self.put(request, timeout=self.spec.timeout_s)
        except grpc.aio.AioRpcError as error:
            if sent >= window.start_ns:
                self.errors[error.code().name] += 1

    async def _read(self, call, window: _Window) -> None:
        sent_ns, measured = self.sent_ns, self.measured
        while True:
            answer = await call.read()
            if answer is grpc.aio.EOF:
                return
            arrived = time.perf_counter_ns()
            for event in rpc_pb2.WatchResponse.FromString(answer).events:
                self.events_seen += 1
                sent = sent_ns[int.from_bytes(event.kv.value[:SEQUENCE_BYTES], "little")]
                if sent >= window.start_ns:  # every event of a put sent in the window counts
                    measured.append(arrived - sent)
                    self.last_answer_ns = max(self.last_answer_ns, arrived)

    def samples(self) -> dict[str, array.array]:
        return {"watch-latency": self.measured}

    def conflicts(self) -> int:
        return 0

    def done(self) -> int:
        return len(self.sent_ns)


class _LeaseKeepAlive:
    """Each client its lease and its keep-alive stream; one keep-alive in flight per client."""

    def __init__(self, spec: LoadSpec, index: int, keyspace: _Keyspace, channels) -> None:
        self.spec, self.channels = spec, channels
        client_low, client_high = _share(spec.clients, spec.processes, index)
        self.client_count = client_high - client_low
        low, high = _share(spec.total, spec.processes, index)
        self.tickets = iter(range(high - low)) if spec.total else itertools.repeat(None)
        self.lease_ids: list[int] = []
        self.measured = array.array("q")
        self.errors: Counter = Counter()
        self.last_answer_ns = 0

    async def prepare(self) -> None:
        grant = rpc_pb2.LeaseGrantRequest(TTL=self.spec.lease_ttl_s).SerializeToString()
        calls = [channel.unary_unary(LEASE_GRANT_METHOD) for channel in self.channels]
        answers = await asyncio.gather(*(calls[slot % len(calls)](grant, timeout=self.spec.timeout_s)
                                         for slot in range(self.client_count)))
        self.lease_ids = [rpc_pb2.LeaseGrantResponse.FromString(answer).ID for answer in answers]

    async def run(self, window: _Window) -> None:
        await asyncio.gather(*(self._client(slot, window) for slot in range(self.client_count)))

    async def _client(self, slot: int, window: _Window) -> None:
        request = rpc_pb2.LeaseKeepAliveRequest(ID=self.lease_ids[slot]).SerializeToString()
        open_stream = self.channels[slot % len(self.channels)].stream_stream(LEASE_KEEPALIVE_METHOD)
        call = open_stream()
        perf_counter_ns, measured, errors = time.perf_counter_ns, self.measured, self.errors
        try:
            for _ in self.tickets:
                began = perf_counter_ns()
                if began >= window.end_ns:
                    return
                try:
                    await call.write(request)
                    answer = await call.read()
                except grpc.aio.AioRpcError as error:
                    if began >= window.start_ns:
                        errors[error.code().name] += 1
                    call.cancel()
                    call = open_stream()
                    continue
                finished = perf_counter_ns()
                if answer is grpc.aio.EOF or rpc_pb2.LeaseKeepAliveResponse.FromString(answer).TTL <= 0:
                    if began >= window.start_ns:
                        errors[LEASE_NOT_FOUND] += 1
                    continue
                if began >= window.start_ns and finished <= window.end_ns:
                    measured.append(finished - began)
                    self.last_answer_ns = finished
        finally:
            call.cancel()

    def samples(self) -> dict[str, array.array]:
        return {"lease-keepalive": self.measured}

    def conflicts(self) -> int:
        return 0

    def done(self) -> int:
        return len(self.measured) + sum(self.errors.values())


async def _prefill(keyspace: _Keyspace, channels, timeout_s: float) -> None:
    """Write every key of the block once, noting its revision (untimed)."""
    calls = [channel.unary_unary(KV_METHOD + "Put") for channel in channels]
    pending = iter(range(len(keyspace.keys)))

    async def writer(slot: int) -> None:
        call = calls[slot % len(calls)]
        for index in pending:
            request = rpc_pb2.PutRequest(key=keyspace.keys[index], value=keyspace.value)
            reply = await call(request.SerializeToString(), timeout=timeout_s)
            keyspace.mod_revisions[index] = rpc_pb2.PutResponse.FromString(reply).header.revision

    await asyncio.gather(*(writer(slot) for slot in range(PREFILL_CONCURRENCY)))


def _merge(spec: LoadSpec, parts: list[_ProcessSamples]) -> LoadResult:
    seconds = max(part.seconds for part in parts)
    by_op_ns: dict[str, list[int]] = {}
    for part in parts:
        for name, raw in part.latencies_ns.items():
            samples = array.array("q")
            samples.frombytes(raw)
            by_op_ns.setdefault(name, []).extend(samples)
    all_ns = [sample for samples in by_op_ns.values() for sample in samples]
    errors = Counter()
    for part in parts:
        errors.update(part.errors)
    return LoadResult(
        spec=spec,
        seconds=seconds,
        overall=OpFigures.from_samples(all_ns, seconds),
        by_op={name: OpFigures.from_samples(samples, seconds) for name, samples in by_op_ns.items()},
        errors=dict(errors),
        txn_conflicts=sum(part.txn_conflicts for part in parts),
        generator_cpu_us_per_op=sum(part.cpu_s for part in parts) * 1e6 / max(1, len(all_ns)),
    )


# ---------------------------------------------------------------- the generator's ceiling


def _constant_answers() -> dict[str, bytes]:
    header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=1, revision=1, raft_term=1)
    kv = kv_pb2.KeyValue(key=b"k", value=b"v", create_revision=1, mod_revision=1, version=1)
    return {
        "Put": rpc_pb2.PutResponse(header=header).SerializeToString(),
        "Range": rpc_pb2.RangeResponse(header=header, kvs=[kv], count=1).SerializeToString(),
        "Txn": rpc_pb2.TxnResponse(header=header, succeeded=True, responses=[
            rpc_pb2.ResponseOp(response_put=rpc_pb2.PutResponse(header=header))]).SerializeToString(),
    }


async def _serve_constant(pipe) -> None:
    def constant(answer: bytes):
        async def handle(request: bytes, context) -> bytes:
            return answer
        return grpc.unary_unary_rpc_method_handler(handle)  # no (de)serializers: bytes both ways

    handlers = {method: constant(answer) for method, answer in _constant_answers().items()}
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("etcdserverpb.KV", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pipe.send(port)
    await server.wait_for_termination()


def _constant_server_main(pipe) -> None:
    asyncio.run(_serve_constant(pipe))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (from /proc; no effect on it)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()  # after "pid (comm)"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def process_rss_bytes(pid: int) -> int:
    """Resident memory of a process now (VmRSS from /proc)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


class ConstantServer:
    """A grpc.aio KV server in a child process that answers every call with a constant message."""

    endpoint: str

    def cpu_seconds(self) -> float:
        return process_cpu_seconds(self.process.pid)

    def __enter__(self) -> ConstantServer:
        context = multiprocessing.get_context("spawn")
        parent_end, child_end = context.Pipe()
        self.process = context.Process(target=_constant_server_main, args=(child_end,), daemon=True)
        self.process.start()
        child_end.close()
        try:
            if not parent_end.poll(CONNECT_TIMEOUT_S):
                raise EOFError
            self.endpoint = f"127.0.0.1:{parent_end.recv()}"
        except EOFError:
            self.__exit__()
            raise RuntimeError("the constant server did not start") from None
        return self

    def __exit__(self, *exc_info) -> None:
        if self.process.is_alive():
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.join()


if __name__ == "__main__":
    sys.exit("the command line is bench/load.py: python -m bench.load --help")
