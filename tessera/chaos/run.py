"""One chaos run: start a cluster, run the workload under the nemesis, heal, read back, check, report.

The run's directory holds the cluster's data and logs (kept when a check
fails), `history.jsonl` (every operation, watch and the committed change log:
`python -m tessera.chaos --check history.jsonl` checks it again), `summary.txt`
and, with matplotlib installed (the `bench` extra), `timeline.png`.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from router.shard_client import REQUEST_TIMEOUT_SECONDS as ROUTER_REQUEST_TIMEOUT_SECONDS
from router.shard_client import ShardConnection
from shards.fault_control import ENVIRONMENT_VARIABLE, write_faults
from tessera.api.rpc_pb2 import RangeRequest
from tessera.chaos.checker import Verdict, check_all
from tessera import netns
from tessera.chaos.faults import FAULT_KINDS, GROUP_ADD, LATENCY, FaultRecord, Nemesis, wait_healthy
from tessera.chaos.history import KINDS, OUTCOMES, History
from tessera.chaos.workload import (
    FINAL_CLIENT,
    PREFIX_GROUPS,
    REPLICA_READER_PAUSE_SECONDS,
    REPLICA_READER_WEIGHTS,
    ROUTER_WEIGHTS,
    Client,
    EtcdKV,
    Recorder,
    Watcher,
    change_log,
    put,
    read,
    workload_keys,
)
from tessera.launcher import Launcher, LauncherError

CLIENTS_DEFAULT = 6  # of the router; and besides them, replica readers (serializable reads)
REPLICA_READERS = 2
WATCHERS_PER_PREFIX = 2
HEAL_SECONDS = 60.0  # after the last fault: every group must have a leader again by then
FINAL_SECONDS = 60.0  # to read every key back, write the end markers, and let watchers catch up
CHECK_BUDGET_SECONDS = 120.0
# A longer run records a longer history: its linearizability search may take this share of the
# run's duration when that is more than CHECK_BUDGET_SECONDS (a 30-minute run's 1.6 million
# operations took 150 s to check).
CHECK_BUDGET_SHARE = 0.25
WAL_SEGMENT_BYTES = 4 * 1024 * 1024  # as the test cluster's: small segments, little disk
MARKER_KEY = "zz-end"  # written under each prefix after the run: the end of its change log
AUTO, NETNS, LOOPBACK = "auto", "netns", "loopback"
NETWORKS = (AUTO, NETNS, LOOPBACK)


@dataclass
class RunConfig:
    duration_seconds: float
    seed: int
    faults: list[str]
    directory: Path
    clients: int = CLIENTS_DEFAULT
    check_budget_seconds: float = CHECK_BUDGET_SECONDS
    keep_data: bool = False
    # NETNS: each process in a network namespace of its own, network faults made with nftables and
    # netem; LOOPBACK: 127.0.0.1, network faults through the transport hook; AUTO: NETNS where it can.
    network: str = AUTO

    def replay_command(self) -> str:
        return (f"python -m tessera.chaos --seed {self.seed} --duration {self.duration_seconds:g} "
                f"--faults {','.join(self.faults) or 'none'} --clients {self.clients} --network {self.network}")


def resolve_network(asked: str) -> tuple[str, str | None]:
    """(NETNS or LOOPBACK, why not NETNS when AUTO fell back)."""
    if asked != AUTO:
        return asked, None
    reason = netns.faults_unavailable()
    return (LOOPBACK, reason) if reason else (NETNS, None)


@dataclass
class RunReport:
    config: RunConfig
    history: History
    faults: list[FaultRecord]
    verdicts: list[Verdict]
    workload_seconds: float
    notes: list[str] = field(default_factory=list)  # what went wrong outside the checkers

    @property
    def valid(self) -> bool:
        return not self.notes and all(verdict.valid for verdict in self.verdicts)


def check_budget_for(duration_seconds: float) -> float:
    """The linearizability search's default budget for a run of this duration."""
    return max(CHECK_BUDGET_SECONDS, CHECK_BUDGET_SHARE * duration_seconds)


def parse_faults(text: str) -> list[str]:
    kinds = [] if text in ("", "none") else [kind.strip() for kind in text.split(",")]
    unknown = [kind for kind in kinds if kind not in FAULT_KINDS]
    if unknown:
        raise ValueError(f"unknown fault kind {', '.join(unknown)}; the kinds: {', '.join(FAULT_KINDS)}")
    return kinds


async def _until_ok(attempt, deadline: float):
    """Repeat `attempt()` (which records an operation each time) until one is OK; that operation."""
    while True:
        operation = await attempt()
        if operation.ok:
            return operation
        if time.monotonic() > deadline:
            raise TimeoutError(f"no OK answer before the deadline: the last was {operation.describe()}")
        await asyncio.sleep(0.2)


async def _run_workload(config: RunConfig, launcher: Launcher, history: History, notes: list[str],
                        report) -> tuple[list[FaultRecord], float]:
    endpoint = launcher.layout.listen
    recorder = Recorder(history)
    kv = EtcdKV(endpoint)
    replicas = {group: [ShardConnection(launcher.layout.api_address(group, member))
                        for member in sorted(launcher.layout.groups[group])] for group in PREFIX_GROUPS.values()}
    clients_stop, watchers_stop, nemesis_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
    start_revision = (await kv.kv.Range(RangeRequest(key=b"/"), timeout=10)).header.revision + 1
    watchers = [Watcher(number, endpoint, prefix, start_revision)
                for number, prefix in enumerate(prefix for prefix in PREFIX_GROUPS
                                                for _ in range(WATCHERS_PER_PREFIX))]
    history.watches = [watcher.log for watcher in watchers]
    clients = [Client(number, EtcdKV(endpoint), replicas, random.Random(config.seed * 1000 + number), recorder,
                      *((ROUTER_WEIGHTS, 0.0) if number < config.clients
                        else (REPLICA_READER_WEIGHTS, REPLICA_READER_PAUSE_SECONDS)))
               for number in range(config.clients + REPLICA_READERS)]
    nemesis = Nemesis(launcher, random.Random(config.seed), config.faults, os.environ[ENVIRONMENT_VARIABLE],
                      clock=lambda: recorder.now_ns() / 1e9, report=report)
    loop = asyncio.get_running_loop()
    watcher_tasks = [loop.create_task(watcher.run(watchers_stop)) for watcher in watchers]
    client_tasks = [loop.create_task(client.run(clients_stop)) for client in clients]
    nemesis_task = loop.create_task(nemesis.run(nemesis_stop))
    try:
        await asyncio.sleep(config.duration_seconds)
        nemesis_stop.set()
        await nemesis_task
        await nemesis.heal_all()
        await wait_healthy(launcher, HEAL_SECONDS)
        clients_stop.set()
        await asyncio.gather(*client_tasks)
        workload_seconds = recorder.now_ns() / 1e9
        # A write the router still holds may reach its group until the router's own deadline: only
        # after it does the end marker follow every write of the run in the change log.
        await asyncio.sleep(ROUTER_REQUEST_TIMEOUT_SECONDS)
        # After the heal: read every key back (durability, through the linearizability check), then
        # mark the end of each prefix's change log with one more write.
        deadline = time.monotonic() + FINAL_SECONDS
        for key in workload_keys():
            await _until_ok(lambda key=key: read(kv, recorder, FINAL_CLIENT, key), deadline)
        markers = {}
        for prefix in PREFIX_GROUPS:
            marker = await _until_ok(
                lambda prefix=prefix: put(kv, recorder, FINAL_CLIENT, prefix + MARKER_KEY,
                                          f"end-{len(history.operations)}"), deadline)
            markers[prefix] = marker.revision
        for watcher in watchers:
            if not await watcher.wait_until(markers[watcher.log.prefix], max(1.0, deadline - time.monotonic())):
                notes.append(f"watcher {watcher.log.watcher} of {watcher.log.prefix} did not reach revision "
                             f"{markers[watcher.log.prefix]} (it stopped at {watcher.log.covered_to})")
        watchers_stop.set()
        history.changes = await change_log(endpoint, list(PREFIX_GROUPS), markers, FINAL_SECONDS)
        history.final_revision = max(markers.values())
        return nemesis.records, workload_seconds
    finally:
        nemesis_stop.set()
        clients_stop.set()
        watchers_stop.set()
        for task in [nemesis_task, *client_tasks, *watcher_tasks]:
            task.cancel()
        await asyncio.gather(nemesis_task, *client_tasks, *watcher_tasks, return_exceptions=True)
        await nemesis.heal_all()
        for client in clients:
            await client.kv.close()
        for connections in replicas.values():
            for connection in connections:
                await connection.close()
        await kv.close()


async def run_chaos(config: RunConfig, report=print) -> RunReport:
    """The whole run; its report (the checkers' verdicts among it)."""
    config.directory.mkdir(parents=True, exist_ok=True)
    data_dir = config.directory / "cluster"
    if data_dir.exists():  # the checkers start from empty keys: a cluster of an earlier run would not do
        raise FileExistsError(f"{data_dir} exists: a chaos run starts a new cluster; choose another directory")
    control_path = str(config.directory / "faults.json")
    write_faults(control_path)
    history = History()
    notes: list[str] = []
    saved_environment = os.environ.get(ENVIRONMENT_VARIABLE)
    os.environ[ENVIRONMENT_VARIABLE] = control_path  # inherited by every process the launcher starts
    faults: list[FaultRecord] = []
    workload_seconds = 0.0
    try:
        config.network, fallback_reason = resolve_network(config.network)
        if fallback_reason:
            report(f"on 127.0.0.1, network faults through the transport hook: {fallback_reason}")
        options = dict(supervise=False, wal_segment_bytes=WAL_SEGMENT_BYTES,
                       report=lambda line: report(f"  launcher: {line}"))
        if config.network == NETNS:
            launcher = netns.NetnsLauncher(data_dir, **options)
        else:
            launcher = Launcher(data_dir, listen="127.0.0.1:0", **options)
        async with launcher:
            if LATENCY in config.faults and (config.network != NETNS or not launcher.network.netem_available()):
                config.faults = [kind for kind in config.faults if kind != LATENCY]
                report("latency faults left out: they need the cluster in namespaces (--network netns) on a "
                       "kernel with the netem qdisc (sch_netem)")
            if GROUP_ADD in config.faults and config.network == NETNS:
                config.faults = [kind for kind in config.faults if kind != GROUP_ADD]
                report("group-add faults left out: a cluster in namespaces places its hosts when it starts "
                       "(--network loopback adds groups)")
            report(f"cluster up in {data_dir} ({config.network}); router on {launcher.layout.listen}; "
                   f"{config.duration_seconds:g} s of workload, faults: {', '.join(config.faults) or 'none'}, "
                   f"seed {config.seed}")
            try:
                faults, workload_seconds = await _run_workload(config, launcher, history, notes,
                                                               lambda line: report(f"  fault at {line}"))
            except (TimeoutError, RuntimeError, OSError, LauncherError) as error:
                notes.append(f"the run did not complete: {error}")
    finally:
        if saved_environment is None:
            os.environ.pop(ENVIRONMENT_VARIABLE, None)
        else:
            os.environ[ENVIRONMENT_VARIABLE] = saved_environment
    history.save(config.directory / "history.jsonl")
    verdicts = check_all(history, config.check_budget_seconds) if not notes else []
    run = RunReport(config, history, faults, verdicts, workload_seconds, notes)
    if run.valid and not config.keep_data:
        shutil.rmtree(data_dir, ignore_errors=True)
    return run


# --- the report ------------------------------------------------------------------------


def _table(header: list[str], rows: list[list]) -> list[str]:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    line = lambda cells: "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * width for width in widths]), *[line(row) for row in rows]]


def summary(run: RunReport) -> str:
    history = run.history
    operations = [op for op in history.operations if op.client != FINAL_CLIENT]
    lines = [f"chaos run: seed {run.config.seed}, {run.workload_seconds:.0f} s, faults "
             f"{', '.join(run.config.faults) or 'none'}, {run.config.clients} router clients and {REPLICA_READERS} "
             f"replica readers; "
             f"{len(history.operations)} operations, {sum(len(w.events) for w in history.watches)} watch events, "
             f"{len(history.changes)} committed changes", ""]
    counts = Counter((op.kind + (" (serializable)" if op.serializable else ""), op.outcome) for op in operations)
    kinds = sorted({kind for kind, _ in counts}, key=lambda kind: (KINDS.index(kind.split()[0]), kind))
    rows = [[kind, *[counts[kind, outcome] for outcome in OUTCOMES], sum(counts[kind, o] for o in OUTCOMES)]
            for kind in kinds]
    rows.append(["all", *[sum(counts[kind, outcome] for kind in kinds) for outcome in OUTCOMES], len(operations)])
    lines += _table(["operation", *OUTCOMES, "total"], rows) + [""]
    if run.faults:
        rows = []
        for fault in run.faults:
            during = [op for op in operations
                      if not op.serializable and fault.start_s * 1e9 <= op.invoke_ns < fault.end_s * 1e9]
            ok = sum(op.ok for op in during)
            rows.append([fault.kind, fault.target, fault.detail, f"{fault.start_s:.1f}",
                         f"{fault.end_s - fault.start_s:.1f}", len(during),
                         f"{100 * ok / len(during):.0f}%" if during else "-"])
        # Availability: of the operations through the router invoked during the fault, the share answered OK.
        lines += _table(["fault", "target", "detail", "at s", "for s", "router ops", "ok"], rows) + [""]
    rows = [[verdict.name, verdict.verdict, verdict.checked, f"{verdict.seconds:.2f}"] for verdict in run.verdicts]
    lines += _table(["checker", "verdict", "checked", "seconds"], rows)
    for verdict in run.verdicts:
        for problem in verdict.problems:
            lines.append(f"{verdict.name}: {problem}")
    lines += [f"run: {note}" for note in run.notes]
    lines.append("")
    if run.valid:
        lines.append("verdict: valid")
    else:
        lines.append(f"verdict: INVALID; replay the faults of this run with: {run.config.replay_command()}")
    return "\n".join(lines)


FAULT_COLOURS = {"kill": "tab:red", "pause": "tab:orange", "partition": "tab:purple", "disk": "tab:brown",
                 "loss": "tab:pink", "latency": "tab:olive"}


def timeline_png(run: RunReport, path: Path) -> bool:
    """Throughput (operations answered OK per second, and all invoked) over a strip of the faults; False without
    matplotlib (the `bench` extra)."""
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    from matplotlib import pyplot

    seconds = int(run.workload_seconds) + 1
    invoked, answered = [0] * seconds, [0] * seconds
    for op in run.history.operations:
        second = int(op.invoke_ns / 1e9)
        if op.client == FINAL_CLIENT or second >= seconds:
            continue
        invoked[second] += 1
        answered[second] += op.ok
    figure, (axes, strip) = pyplot.subplots(2, 1, figsize=(12, 5), sharex=True,
                                            gridspec_kw={"height_ratios": [3, 1]})
    axes.plot(range(seconds), invoked, label="invoked", color="tab:gray", linewidth=0.8)
    axes.plot(range(seconds), answered, label="ok", color="tab:green", linewidth=1.2)
    axes.set_ylabel("operations / s")
    axes.set_title(f"chaos run, seed {run.config.seed}: throughput, and the faults below")
    axes.legend(loc="upper right")
    # One row of bars per fault kind: readable however many faults a long run has.
    kinds = [kind for kind in FAULT_COLOURS if any(fault.kind == kind for fault in run.faults)]
    for row, kind in enumerate(kinds):
        spans = [(fault.start_s, fault.end_s - fault.start_s) for fault in run.faults if fault.kind == kind]
        strip.broken_barh(spans, (row + 0.1, 0.8), color=FAULT_COLOURS[kind])
    strip.set_yticks([row + 0.5 for row in range(len(kinds))], kinds)
    strip.set_ylim(0, max(1, len(kinds)))
    strip.set_xlabel("seconds")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return True
