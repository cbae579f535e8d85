"""Load generator for any etcd v3 endpoint (a real etcd or Tessera's router).

    python -m bench.loadgen --endpoint 127.0.0.1:2379 --clients 256 --duration 10 \\
        --op put --key-prefixes /a/,/b/ --value-size 256 [--connections N] [--processes P]

    from bench.loadgen import run_load
    result = run_load("127.0.0.1:2379", clients=256, op="put", prefixes=("/a/",), duration=5)

Shape, after etcd's `benchmark` tool: `clients` coroutines issue requests back
to back, sharing a small pool of `connections` gRPC channels (HTTP/2
connections). With `processes` > 1 the clients, connections and keyspace are
split over that many worker processes, so on a small host the generator
itself is less likely to be the bottleneck; their latency samples are merged.

Operations:
  put               Put of a key from the keyspace, value of `value_size` bytes
  get               linearizable Range of one key
  get-serializable  serializable Range of one key
  txn-put           Kubernetes' update: Txn If(mod_revision(key) == last seen)
                    Then Put(key) Else Range(key); a failed compare ("conflict")
                    learns the current mod_revision from the Else branch
                    (mixed with put, puts make those revisions stale: more conflicts)
  mixed             a weighted mix of the above (`mix`, e.g. put=1,get=9)

Keys are `prefix + "%08x" % i` for i in range(keys); key i has prefix
prefixes[i % len(prefixes)], so sequential keys go round robin over the
prefixes and random keys spread uniformly. Each worker process owns a
contiguous block of the keyspace (txn-put keeps a per-key revision cache that
must not go stale behind another process). Every operation but put first
writes each key of the block once (prefill, not timed), so reads find data
and txn-put knows every key's revision.

Timing: after the warm-up a measured window of `duration` seconds begins. A
success that started and finished inside the window gives a latency sample; a
failure that started inside it counts under its gRPC status code. ops/s =
samples / window.

Overhead (the generator shares a 2-core host with the servers): requests go
out as pre-serialised bytes (the channel's serializer is the identity; a
request is a cached key field joined with a cached tail, since concatenated
protobuf messages parse as their merge) and answers stay bytes except where
txn-put needs the revision. Latencies go into an array of int64 nanoseconds.
The generator's own CPU time per request is measured and reported
(`generator_cpu_us_per_op`) so a run shows whether the generator was the limit.
`--constant-server` runs against a trivial grpc.aio server in a child process
that answers every call with a constant message: the generator's ceiling.
On the 2-core dev host grpcio's client costs about 60-135 us of CPU per
request at 64-256 clients (one process saturates a core near 10,000-15,000
ops/s) and 300-480 us at 1 client, where nothing amortises its wake-ups.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import dataclasses
import itertools
import math
import multiprocessing
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass

import grpc

from tessera.api import kv_pb2, rpc_pb2

OPS = ("put", "get", "get-serializable", "txn-put")
KV_METHOD = "/etcdserverpb.KV/"
# Separate channels must be separate connections; grpc would otherwise share
# one subchannel (one TCP connection) among channels with equal arguments.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
PREFILL_CONCURRENCY = 64
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LoadSpec:
    endpoint: str
    op: str = "put"
    clients: int = 1
    connections: int = 1
    processes: int = 1
    duration_s: float = 10.0
    warmup_s: float = 1.0
    keys: int = 10_000
    prefixes: tuple[bytes, ...] = (b"/bench/",)
    sequential_keys: bool = False
    value_size: int = 256
    mix: tuple[tuple[str, int], ...] = ()  # for op="mixed": (op, weight) pairs
    prefill: bool | None = None  # None: every op but put prefills
    timeout_s: float = 30.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.op != "mixed" and self.op not in OPS:
            raise ValueError(f"unknown op {self.op!r}; one of {OPS + ('mixed',)}")
        if (self.op == "mixed") != bool(self.mix):
            raise ValueError("op 'mixed' needs a mix (e.g. put=1,get=9), and only it takes one")
        if self.mix and sum(weight for _, weight in self.mix) <= 0:
            raise ValueError("the mix needs a positive weight")
        for op, weight in self.mix:
            if op not in OPS or weight < 0:
                raise ValueError(f"bad mix entry {op}={weight}")
        if not 1 <= self.processes <= min(self.clients, self.keys):
            raise ValueError("need 1 <= processes <= clients and processes <= keys")
        if self.connections < 1 or not self.prefixes or self.duration_s <= 0:
            raise ValueError("need connections >= 1, a prefix and a positive duration")

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
        return any(op != "put" for op, _ in self.weighted_ops)


@dataclass(frozen=True)
class OpFigures:
    requests: int
    ops_per_second: float
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

        return cls(len(samples_ns), len(samples_ns) / seconds,
                   at(0.50), at(0.90), at(0.99), at(0.999), at(1.0))


@dataclass(frozen=True)
class LoadResult:
    spec: LoadSpec
    seconds: float
    overall: OpFigures
    by_op: dict[str, OpFigures]
    errors: dict[str, int]  # gRPC status code name -> count
    txn_conflicts: int
    generator_cpu_us_per_op: float

    def summary(self) -> str:
        spec, figures = self.spec, self.overall
        line = (f"{spec.op} clients={spec.clients} conns={spec.connection_count} procs={spec.processes} "
                f"{self.seconds:.1f}s: {figures.ops_per_second:,.0f} ops/s  ms p50 {figures.latency_ms_p50:.2f} "
                f"p90 {figures.latency_ms_p90:.2f} p99 {figures.latency_ms_p99:.2f} "
                f"p99.9 {figures.latency_ms_p999:.2f} max {figures.latency_ms_max:.2f}  "
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


def run_load(endpoint: str, clients: int = 1, op: str = "put", prefixes=("/bench/",),
             duration: float = 10.0, on_window=None, **options) -> LoadResult:
    """Drive `endpoint` and measure; options are the other LoadSpec fields (see run for on_window)."""
    prefixes = tuple(p.encode() if isinstance(p, str) else p for p in prefixes)
    return run(LoadSpec(endpoint=endpoint, clients=clients, op=op, prefixes=prefixes,
                        duration_s=duration, **options), on_window)


def run(spec: LoadSpec, on_window=None) -> LoadResult:
    """Run the load. on_window("start") and on_window("end") are called in this process at the
    measured window's edges, e.g. to read the servers' CPU time over exactly that window."""
    on_window = on_window or _ignore
    if spec.processes == 1:
        samples = asyncio.run(_drive(spec, 0, _ignore, on_window))
        return _merge(spec, [samples])
    context = multiprocessing.get_context("spawn")  # fork after grpc is set up is unsafe
    pipes, workers = [], []
    try:
        for index in range(spec.processes):
            parent_end, child_end = context.Pipe()
            worker = context.Process(target=_worker_main, args=(spec, index, child_end), daemon=True)
            worker.start()
            child_end.close()
            pipes.append(parent_end)
            workers.append(worker)
        for pipe in pipes:  # every worker connected (and prefilled): start together
            _receive(pipe, "ready")
        for pipe in pipes:
            pipe.send("go")
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


def _worker_main(spec: LoadSpec, index: int, pipe) -> None:
    def barrier() -> None:
        pipe.send(("ready", None))
        if pipe.recv() != "go":
            raise RuntimeError("parent did not say go")

    try:
        samples = asyncio.run(_drive(spec, index, barrier, _ignore))
    except Exception as error:  # the parent raises it
        pipe.send(("error", f"{type(error).__name__}: {error}"))
        return
    pipe.send(("samples", samples))


def _ignore(*_args) -> None:
    pass


@dataclass
class _ProcessSamples:
    latencies_ns: dict[str, bytes]  # op -> array('q') bytes
    errors: Counter
    txn_conflicts: int
    cpu_s: float


def _share(total: int, parts: int, index: int) -> tuple[int, int]:
    return total * index // parts, total * (index + 1) // parts


class _Op:
    """One kind of request: builds it from a key index, and notes the answer if it must."""

    name: str
    method: str

    def __init__(self, keyspace: _Keyspace, channels) -> None:
        self.keyspace = keyspace
        self.calls = [channel.unary_unary(KV_METHOD + self.method) for channel in channels]
        self.samples = array.array("q")
        self.conflicts = 0

    def request(self, index: int) -> bytes:
        raise NotImplementedError

    def answered(self, index: int, reply: bytes) -> None:
        """Most ops ignore the answer (it stays undecoded)."""


class _KeyedOp(_Op):
    """A request that is the key field followed by a constant tail."""

    message = rpc_pb2.PutRequest
    tail = b""

    def __init__(self, keyspace, channels) -> None:
        super().__init__(keyspace, channels)
        self.key_fields = [self.message(key=key).SerializeToString() for key in keyspace.keys]

    def request(self, index: int) -> bytes:
        return self.key_fields[index] + self.tail


class _Put(_KeyedOp):
    name, method = "put", "Put"

    def __init__(self, keyspace, channels) -> None:
        super().__init__(keyspace, channels)
        self.tail = rpc_pb2.PutRequest(value=keyspace.value).SerializeToString()


class _Get(_KeyedOp):
    name, method, message = "get", "Range", rpc_pb2.RangeRequest


class _GetSerializable(_KeyedOp):
    name, method, message = "get-serializable", "Range", rpc_pb2.RangeRequest
    tail = rpc_pb2.RangeRequest(serializable=True).SerializeToString()


class _TxnPut(_Op):
    name, method = "txn-put", "Txn"

    def __init__(self, keyspace, channels) -> None:
        super().__init__(keyspace, channels)
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


OP_CLASSES = {cls.name: cls for cls in (_Put, _Get, _GetSerializable, _TxnPut)}


class _Keyspace:
    """This process's block of keys, the value, and the last mod_revision seen per key."""

    def __init__(self, spec: LoadSpec, index: int) -> None:
        low, high = _share(spec.keys, spec.processes, index)
        prefixes = spec.prefixes
        self.keys = [prefixes[i % len(prefixes)] + b"%08x" % i for i in range(low, high)]
        self.value = random.Random(spec.seed).randbytes(spec.value_size)
        self.mod_revisions = [0] * len(self.keys)


async def _drive(spec: LoadSpec, index: int, barrier, on_window) -> _ProcessSamples:
    """One process's share of the load: connect, prefill, wait for the start, run, measure."""
    client_low, client_high = _share(spec.clients, spec.processes, index)
    channels = [grpc.aio.insecure_channel(spec.endpoint, options=CHANNEL_OPTIONS)
                for _ in range(spec.connections_in(index))]
    try:
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), CONNECT_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise ConnectionError(f"cannot connect to {spec.endpoint} within {CONNECT_TIMEOUT_S} s") from None
        keyspace = _Keyspace(spec, index)
        ops = {name: OP_CLASSES[name](keyspace, channels) for name, _ in spec.weighted_ops}
        if spec.prefills:
            await _prefill(keyspace, channels, spec.timeout_s)
        schedule = [name for name, weight in spec.weighted_ops for _ in range(weight)]
        random.Random(spec.seed + index).shuffle(schedule)
        op_sequence = itertools.cycle([ops[name] for name in schedule])
        key_count = len(keyspace.keys)
        if spec.sequential_keys:
            counter = itertools.count()
            next_key = lambda: next(counter) % key_count  # noqa: E731
        else:
            rng = random.Random(spec.seed * 7919 + index)
            next_key = lambda: rng.randrange(key_count)  # noqa: E731
        errors: Counter = Counter()

        barrier()
        start_ns = time.perf_counter_ns() + int(spec.warmup_s * 1e9)
        end_ns = start_ns + int(spec.duration_s * 1e9)
        clients = [
            asyncio.create_task(_client(op_sequence, next_key, slot % len(channels), start_ns, end_ns,
                                        spec.timeout_s, errors))
            for slot in range(client_high - client_low)
        ]
        await asyncio.sleep((start_ns - time.perf_counter_ns()) / 1e9)
        on_window("start")
        cpu_start_s = time.process_time()
        await asyncio.sleep(max(0.0, (end_ns - time.perf_counter_ns()) / 1e9))
        cpu_s = time.process_time() - cpu_start_s
        on_window("end")
        await asyncio.gather(*clients)
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return _ProcessSamples(
        latencies_ns={name: op.samples.tobytes() for name, op in ops.items()},
        errors=errors,
        txn_conflicts=sum(op.conflicts for op in ops.values()),
        cpu_s=cpu_s,
    )


async def _client(op_sequence, next_key, channel_slot: int, start_ns: int, end_ns: int,
                  timeout_s: float, errors: Counter) -> None:
    perf_counter_ns = time.perf_counter_ns
    while True:
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
    seconds = spec.duration_s
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


# ---------------------------------------------------------------- command line


def _parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    if not text:
        return ()
    pairs = []
    for item in text.split(","):
        op, _, weight = item.partition("=")
        pairs.append((op.strip(), int(weight)))
    return tuple(pairs)


def main(argv=None) -> LoadResult:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--endpoint", help="host:port of an etcd v3 gRPC endpoint")
    target.add_argument("--constant-server", action="store_true",
                        help="drive a trivial grpc.aio server in a child process (the generator's ceiling)")
    parser.add_argument("--op", default="put", choices=OPS + ("mixed",))
    parser.add_argument("--mix", default="", help="weights for --op mixed, e.g. put=1,get=9")
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--connections", type=int, default=1, help="gRPC connections (at least 1 per process)")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before measuring")
    parser.add_argument("--keys", type=int, default=10_000, help="keyspace size")
    parser.add_argument("--key-prefixes", default="/bench/", help="comma-separated")
    parser.add_argument("--sequential-keys", action="store_true")
    parser.add_argument("--value-size", type=int, default=256)
    parser.add_argument("--prefill", action=argparse.BooleanOptionalAction, default=None,
                        help="write every key once first (default: for every op but put)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request deadline, seconds")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    try:
        spec = LoadSpec(
            endpoint=args.endpoint or "", op=args.op, clients=args.clients, connections=args.connections,
            processes=args.processes, duration_s=args.duration, warmup_s=args.warmup, keys=args.keys,
            prefixes=tuple(p.encode() for p in args.key_prefixes.split(",") if p),
            sequential_keys=args.sequential_keys, value_size=args.value_size, mix=_parse_mix(args.mix),
            prefill=args.prefill, timeout_s=args.timeout, seed=args.seed)
    except ValueError as error:
        parser.error(str(error))
    if args.constant_server:
        with ConstantServer() as server:
            result = run(dataclasses.replace(spec, endpoint=server.endpoint))
    else:
        result = run(spec)
    print(result.summary())
    return result


if __name__ == "__main__":
    # Run as the importable module, so worker processes unpickle its classes by that name.
    from bench import loadgen

    loadgen.main()
