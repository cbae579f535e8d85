"""The Go load generator (bench/goload/main.go, on etcd's own clientv3): build it, run it, read its figures.

    from bench import goload
    figures = goload.run("127.0.0.1:2379", "put", clients=1000, conns=100, duration=5, prefixes=("/a/", "/b/"))
    figures["ops_per_second"], figures["latency_ms_p99"], figures["errors"]

Why: bench/loadgen.py speaks gRPC from Python; Kubernetes speaks to etcd
through clientv3 and grpc-go. This generator puts the same load on Tessera's
router and on a real etcd through the client that matters in production:
clientv3's balancer, retry interceptor and grpc-go's HTTP/2 framing. Its
flags, key layout and timing follow bench/loadgen.py (see main.go's opening
comment), so the figures compare.

Needs Debian's packages, and nothing else (no network, nothing vendored):

    apt-get install -y golang-go golang-etcd-server-dev

golang-go is the Go toolchain; golang-etcd-server-dev is etcd 3.4's source
under /usr/share/gocode/src/go.etcd.io/etcd, whose clientv3 package (import
path go.etcd.io/etcd/clientv3; etcd 3.5 moved it to go.etcd.io/etcd/client/v3)
pulls in grpc-go and the rest as Debian packages beside it.

Building: build() compiles main.go once, in GOPATH mode and offline
(GO111MODULE=off, GOPROXY=off, GOPATH=/usr/share/gocode:<cache>/gopath), into
the cache directory (~/.cache/tessera/goload/, or $TESSERA_GOLOAD_CACHE), and
again only when main.go is newer than the binary. Go's build cache goes there
too (the first build compiles grpc-go and clientv3: some seconds; later ones
are quick). Concurrent builds are serialised by a lock file, and the binary
is replaced atomically. Without `go` or clientv3, build() says which package
is missing and returns None; a compiler error raises GoloadError.

Running: run() starts the binary with --json and --window-marks (and
PR_SET_PDEATHSIG, so it dies with this process), calls on_window("start")
and on_window("end") as the measured window opens and closes (compare.py
reads the servers' CPU there), and returns the binary's JSON object with
`null` latencies (no samples) as NaN. `errors` is a count, `errors_by_code`
the counts by gRPC code. The binary bounds itself (--max-seconds, limits on
every count); run() kills it by PID if it outlives that by GUARD_SLACK_S.
run_spec() runs a bench.loadgen.LoadSpec and returns its figures in
LoadResult.figures()'s vocabulary, for bench/compare.py's --client go.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from etcd_tools import dying_with_parent  # noqa: E402

APT_PACKAGES = ("golang-go", "golang-etcd-server-dev")
GOCODE = Path("/usr/share/gocode")  # where Debian's golang-*-dev packages put Go source
CLIENTV3_IMPORT = "go.etcd.io/etcd/clientv3"
SOURCE = Path(__file__).resolve().parent / "goload" / "main.go"
CACHE_DIR = Path(os.environ.get("TESSERA_GOLOAD_CACHE") or Path.home() / ".cache" / "tessera" / "goload")
WORKLOADS = ("put", "range", "range-serializable")
BUILD_TIMEOUT_S = 600.0  # a cold build on a busy 2-core host takes well under a minute
GUARD_SLACK_S = 30.0  # past the binary's own --max-seconds before run() kills it
STDERR_TAIL_CHARS = 2000
LATENCY_FIELDS = ("latency_ms_avg", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99", "latency_ms_p999",
                  "latency_ms_max")
WINDOW_MARKS = {"window-start": "start", "window-end": "end"}


class GoloadError(RuntimeError):
    """The generator did not build, or a run failed; str() carries the compiler's or the binary's stderr."""


class GoloadUnavailable(GoloadError):
    """Go or clientv3 is not installed here; str() says which package to install."""


def missing() -> str | None:
    """Why the generator cannot be built here, naming the packages to install; None when it can."""
    install = "apt-get install -y " + " ".join(APT_PACKAGES)
    if shutil.which("go") is None:
        return f"Go is not installed (no `go` on PATH): {install}"
    if not (GOCODE / "src" / CLIENTV3_IMPORT / "client.go").is_file():
        return f"etcd's clientv3 is not under {GOCODE / 'src' / CLIENTV3_IMPORT}: {install}"
    return None


def _go_environment(cache_dir: Path) -> dict:
    return {**os.environ, "GO111MODULE": "off", "GOPROXY": "off", "GOFLAGS": "-mod=mod",
            "GOPATH": f"{GOCODE}:{cache_dir / 'gopath'}", "GOCACHE": str(cache_dir / "go-build")}


def build(cache_dir: Path = CACHE_DIR, log=None) -> Path | None:
    """The binary, compiled if main.go is newer; None (and why, to `log`, default stderr) without Go or clientv3."""
    reason = missing()
    if reason is not None:
        (log or _to_stderr)(f"goload: cannot build the Go load generator: {reason}")
        return None
    binary = cache_dir / "goload"
    if _fresh(binary):
        return binary
    (cache_dir / "gopath").mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time, across processes
        if _fresh(binary):
            return binary
        with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as scratch:
            built = Path(scratch) / "goload"
            try:
                result = subprocess.run(["go", "build", "-o", str(built), str(SOURCE)], cwd=SOURCE.parent,
                                        env=_go_environment(cache_dir), capture_output=True, text=True,
                                        timeout=BUILD_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise GoloadError(f"go build of {SOURCE} took over {BUILD_TIMEOUT_S:.0f} s") from None
            if result.returncode != 0:
                raise GoloadError(f"go build of {SOURCE} failed:\n{result.stderr.strip()}")
            built.replace(binary)  # same file system: atomic
    return binary


def _fresh(binary: Path) -> bool:
    return binary.is_file() and binary.stat().st_mtime >= SOURCE.stat().st_mtime


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def run(endpoints, workload: str, clients: int = 1, conns: int = 1, duration: float = 10.0,
        prefixes=("/bench/",), *, total: int = 0, warmup: float = 0.0, key_size: int = 8, val_size: int = 256,
        key_space: int = 10_000, seed: int = 0, timeout: float = 30.0, max_seconds: float = 600.0,
        on_window=None) -> dict:
    """Run the generator (building it first if need be) and return its JSON figures.

    endpoints: "host:port" or several; total > 0 sends that many requests instead of
    a duration. on_window("start"/"end") is called as the measured window opens and
    closes. Raises GoloadUnavailable without Go or clientv3, GoloadError if the run fails.
    """
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; one of {WORKLOADS}")
    reasons: list[str] = []
    binary = build(log=reasons.append)
    if binary is None:
        raise GoloadUnavailable(reasons[0])
    endpoints = (endpoints,) if isinstance(endpoints, str) else tuple(endpoints)
    prefixes = (prefixes,) if isinstance(prefixes, (str, bytes)) else tuple(prefixes)
    command = [str(binary), "--json", "--window-marks", "--workload", workload,
               "--endpoints", ",".join(endpoints), "--prefixes", ",".join(_text(p) for p in prefixes),
               "--clients", str(clients), "--conns", str(conns), "--total", str(total),
               "--duration", str(duration), "--warmup", str(warmup), "--key-size", str(key_size),
               "--val-size", str(val_size), "--key-space", str(key_space), "--seed", str(seed),
               "--timeout", str(timeout), "--max-seconds", str(max_seconds)]
    with tempfile.TemporaryFile() as stderr:  # a file: no pipe to fill up and stall the binary
        process = subprocess.Popen(dying_with_parent(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=stderr, text=True)
        guard = threading.Timer(max_seconds + GUARD_SLACK_S, process.kill)
        guard.start()
        try:
            lines = []
            for line in process.stdout:
                edge = WINDOW_MARKS.get(line.strip())
                if edge is None:
                    lines.append(line)
                elif on_window is not None:
                    on_window(edge)
            returncode = process.wait()
        finally:
            guard.cancel()
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
        stderr.seek(0)
        stderr_text = stderr.read().decode(errors="replace")[-STDERR_TAIL_CHARS:]
    if returncode != 0:
        raise GoloadError(f"{workload} run failed (exit status {returncode}): {stderr_text.strip()}")
    figures = json.loads("".join(lines))
    for name in ("seconds", "ops_per_second", *LATENCY_FIELDS):  # Go writes 1.0 as 1, and NaN as null
        figures[name] = math.nan if figures[name] is None else float(figures[name])
    figures["stderr"] = stderr_text  # the first few errors, if any
    return figures


def workload_of(spec) -> str | None:
    """The generator's workload for a bench.loadgen.LoadSpec, or None if only bench/loadgen.py runs it."""
    if spec.op == "put":
        workload = "put"
    elif spec.op == "range" and not spec.range_limit:
        workload = "range-serializable" if spec.serializable else "range"
    else:
        return None  # txn-put, watch-latency, lease-keepalive, mixed, limited ranges
    return None if spec.sequential_keys else workload


def run_spec(spec, on_window=None) -> dict:
    """Run a bench.loadgen.LoadSpec (one workload_of knows; spec.processes is moot: one Go process)
    and return its figures as LoadResult.figures() names them, less op, clients, connections and processes."""
    workload = workload_of(spec)
    if workload is None:
        raise ValueError(f"the Go generator does not run {spec.op!r} as this spec asks")
    figures = run(spec.endpoints, workload, clients=spec.clients, conns=spec.connections,
                  duration=spec.duration_s, prefixes=spec.prefixes, total=spec.total, warmup=spec.warmup_s,
                  key_size=spec.key_size, val_size=spec.value_size, key_space=spec.keys, seed=spec.seed,
                  timeout=spec.timeout_s, on_window=on_window)
    return {"seconds": figures["seconds"], "requests": figures["requests"],
            "ops_per_second": figures["ops_per_second"],
            **{name: figures[name] for name in LATENCY_FIELDS},
            "errors": figures["errors_by_code"], "txn_conflicts": 0,
            "generator_cpu_us_per_op": figures["generator_cpu_us_per_op"], "client": "go"}
