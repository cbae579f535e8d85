"""The embedded local cluster of `tessera up`, also what process-level tests start.

One meta group (0) and three data groups, three replica processes each, and one
router serving etcd's v3 API, all on 127.0.0.1. The layout (groups, members,
ports, the initial shard map, the router's address) is chosen at first start and
kept in `<data dir>/cluster.json`, so a second start resumes the same cluster on
the same ports with the same data.

Every child gets `--parent-pid` of the launcher: if the launcher dies, they stop
by themselves. The launcher supervises them: a process that exits is reported and
(with `supervise=True`) started again after a backoff.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from router.meta import bootstrap_cluster
from router.shard_client import ReplicaUnreachable, ShardConnection
from tessera.api.internal_pb2 import ShardRequest, ShardResponse, StatusRequest, StatusResponse
from tessera.api.rpc_pb2 import MemberListRequest, MemberListResponse, RangeRequest, RangeResponse
from tessera.api.tls import TLSFiles

HOST = "127.0.0.1"
META_GROUP = 0
DEFAULT_GROUP = 1  # every key no prefix maps elsewhere
INITIAL_PREFIXES = {b"/registry/pods/": 2, b"/registry/events/": 3}
GROUPS = (META_GROUP, 1, 2, 3)
MEMBERS = (1, 2, 3)
DEFAULT_DATA_DIR = "tessera-data"
DEFAULT_LISTEN = f"{HOST}:2379"
LAYOUT_FILE = "cluster.json"
LOCK_FILE = "launcher.lock"
LAYOUT_LOCK_FILE = "cluster.json.lock"  # held while a command changes the layout

STARTUP_SECONDS = 30.0  # 13 processes on a 2-core host elect well within this
PORTS_FREE_SECONDS = 5.0  # children of a launcher that died get SIGTERM from the kernel and free their ports
STOP_GRACE_SECONDS = 5.0
POLL_SECONDS = 0.1
# How often supervision reads the layout file for members a command added or removed; a child's
# exit wakes it at once.
LAYOUT_CHECK_SECONDS = 1.0
CALL_SECONDS = 1.0
FIRST_RESTART_DELAY = 0.5
MAX_RESTART_DELAY = 10.0
STAYED_UP_SECONDS = 10.0  # up this long: the next crash is a new one, restarted after the first delay

KV_RANGE_METHOD = "/etcdserverpb.KV/Range"
ROUTER_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),  # whole ranges, as the test asks for them
    # A short reconnect backoff: a router that was restarted is used again as soon as it serves.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


class LauncherError(Exception):
    """The cluster cannot be started as asked; the message says why and where to look."""


def replica_data_dir(data_dir: Path, group: int, member: int) -> Path:
    """Where a replica keeps its WAL and store (what a snapshot restore fills)."""
    return data_dir / f"group-{group}" / f"member-{member}"


def report_to_stdout(line: str) -> None:
    print(f"tessera: {line}", flush=True)


def free_ports(count: int) -> list[int]:
    """Distinct ports free right now (all probes are held open together so none repeats)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind((HOST, 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def port_in_use(address: str) -> bool:
    host, _, port = address.rpartition(":")
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
        try:
            probe.bind((host, int(port)))
        except OSError:
            return True
    return False


@dataclass
class Layout:
    """Where everything lives; persisted at first start and reused afterwards."""

    groups: dict[int, dict[int, tuple[str, str]]]  # group -> member -> (peer address, api address)
    prefixes: dict[bytes, int]  # the initial shard map: key prefix -> group
    default_group: int
    listen: str  # the router's etcd endpoint
    metrics: dict[int, dict[int, str]]  # group -> member -> where it serves /metrics and /health
    gateway: str | None  # the router's HTTP address: etcd's JSON gateway
    # (group, member) added to a running group (`tessera member add`): started with --join, as
    # founding its group anew would give it a log that contradicts the group's.
    joined: set[tuple[int, int]] = field(default_factory=set)

    @classmethod
    def new(cls, listen: str, members: dict[int, Sequence[int]] | None = None) -> Layout:
        """Free ports for every member: `members` (group -> member ids; a restore gives the saved
        ones), or `tessera up`'s groups."""
        members = members or {group: MEMBERS for group in GROUPS}
        ports = iter(free_ports(3 * sum(len(ids) for ids in members.values()) + 2))
        groups = {
            group: {member: (f"{HOST}:{next(ports)}", f"{HOST}:{next(ports)}") for member in ids}
            for group, ids in members.items()
        }
        metrics = {group: {member: f"{HOST}:{next(ports)}" for member in ids} for group, ids in members.items()}
        host, _, port = listen.rpartition(":")
        if port == "0":  # any free port, fixed from now on
            listen = f"{host}:{next(ports)}"
        return cls(groups=groups, prefixes=dict(INITIAL_PREFIXES), default_group=DEFAULT_GROUP, listen=listen,
                   metrics=metrics, gateway=f"{HOST}:{next(ports)}")

    @classmethod
    def load(cls, path: Path) -> Layout:
        """The saved layout; an older one may lack metrics and gateway addresses (add_missing_addresses)."""
        saved = json.loads(path.read_text())
        return cls(
            groups={
                int(group): {
                    int(member): (addresses["peer"], addresses["api"]) for member, addresses in members.items()
                }
                for group, members in saved["groups"].items()
            },
            prefixes={prefix.encode(): group for prefix, group in saved["prefixes"].items()},
            default_group=saved["default_group"],
            listen=saved["listen"],
            metrics={
                int(group): {int(member): addresses["metrics"]
                             for member, addresses in members.items() if "metrics" in addresses}
                for group, members in saved["groups"].items()
            },
            gateway=saved.get("gateway"),
            joined={(int(group), int(member)) for group, members in saved["groups"].items()
                    for member, addresses in members.items() if addresses.get("join")},
        )

    def add_missing_addresses(self) -> bool:
        """Free ports for metrics and gateway addresses an older layout lacks; whether any was missing."""
        missing = [(group, member) for group, members in self.groups.items() for member in members
                   if member not in self.metrics.get(group, {})]
        if not missing and self.gateway:
            return False
        # Free now is not enough: the cluster is down, so its own ports are free too.
        taken = {address.rpartition(":")[2] for address in self.addresses}
        ports = iter(port for port in free_ports(len(missing) + 1 + len(taken)) if str(port) not in taken)
        for group, member in missing:
            self.metrics.setdefault(group, {})[member] = f"{HOST}:{next(ports)}"
        self.gateway = self.gateway or f"{HOST}:{next(ports)}"
        return True

    def save(self, path: Path) -> None:
        saved = {
            "groups": {
                str(group): {
                    str(member): {"peer": peer, "api": api, "metrics": self.metrics[group][member],
                                  **({"join": True} if (group, member) in self.joined else {})}
                    for member, (peer, api) in members.items()
                }
                for group, members in self.groups.items()
            },
            "prefixes": {prefix.decode(): group for prefix, group in self.prefixes.items()},
            "default_group": self.default_group,
            "listen": self.listen,
            "gateway": self.gateway,
        }
        # Written whole or not at all: a torn layout would move a member to other ports.
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w") as file:
            json.dump(saved, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)

    def free_addresses(self, count: int) -> list[str]:
        """Addresses free now that no member of the layout has (one may be down for a moment)."""
        taken = {address.rpartition(":")[2] for address in self.addresses}
        ports = [port for port in free_ports(count + len(taken)) if str(port) not in taken]
        return [f"{HOST}:{port}" for port in ports[:count]]

    def add_member(self, group: int, member: int, peer: str, api: str) -> None:
        """A member that joins a running group, at these addresses (its metrics on a free port)."""
        self.groups[group][member] = (peer, api)  # first: the metrics port must differ from these
        self.metrics.setdefault(group, {})[member] = self.free_addresses(1)[0]
        self.joined.add((group, member))

    def add_group(self, group: int) -> None:
        """A new group whose members found it together in a running cluster (`tessera group add`)."""
        addresses = iter(self.free_addresses(3 * len(MEMBERS)))
        self.groups[group] = {member: (next(addresses), next(addresses)) for member in MEMBERS}
        self.metrics[group] = {member: next(addresses) for member in MEMBERS}

    def remove_member(self, group: int, member: int) -> None:
        del self.groups[group][member]
        del self.metrics[group][member]
        self.joined.discard((group, member))

    def members_argument(self, group: int) -> str:
        return ",".join(f"{member}={peer}/{api}" for member, (peer, api) in self.groups[group].items())

    def api_address(self, group: int, member: int) -> str:
        return self.groups[group][member][1]

    def metrics_address(self, group: int, member: int) -> str:
        return self.metrics[group][member]

    @property
    def addresses(self) -> list[str]:
        """Every address the cluster listens on."""
        replicas = [address for members in self.groups.values() for pair in members.values() for address in pair]
        metrics = [address for members in self.metrics.values() for address in members.values()]
        return [*replicas, *metrics, self.listen, *([self.gateway] if self.gateway else [])]


def layout_stamp(path: Path) -> tuple[int, int]:
    """Changes whenever the layout is saved again (Layout.save replaces the file)."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def launcher_running(data_dir: str | Path) -> bool:
    """Whether a launcher (`tessera up`, a test cluster) runs the cluster in `data_dir` now."""
    lock_path = Path(data_dir) / LOCK_FILE
    if not lock_path.exists():
        return False
    with open(lock_path) as lock_file:
        try:
            fcntl.flock(lock_file, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(lock_file, fcntl.LOCK_UN)
        return False


def unused_member_id(data_dir: str | Path, group: int) -> int:
    """An id the group never had in this data dir: above each in the layout and each member's
    directory kept (a removed member's data stays; a new member must not start on it)."""
    data_dir = Path(data_dir)
    kept = [int(path.name.removeprefix("member-")) for path in (data_dir / f"group-{group}").glob("member-*")]
    return max([*Layout.load(data_dir / LAYOUT_FILE).groups.get(group, {}), *kept], default=0) + 1


def change_layout(data_dir: str | Path, change: Callable[[Layout], None]) -> Layout:
    """Load the layout, `change` it and save it, one command at a time; a running launcher follows."""
    data_dir = Path(data_dir)
    with open(data_dir / LAYOUT_LOCK_FILE, "a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        layout = Layout.load(data_dir / LAYOUT_FILE)
        change(layout)
        layout.save(data_dir / LAYOUT_FILE)
        return layout


@dataclass
class Supervised:
    """One child process: how to start it, and its restart state."""

    name: str  # as reported: "group 1 member 2", "router"
    command: list[str]
    log_path: Path
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float | None = None  # when a process that exited is due to start again
    restart_delay: float = FIRST_RESTART_DELAY

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class _ExitWatch:
    """Wakes supervision the moment a child exits: a pidfd per child process, readable once it has.

    An idle cluster's launcher then sleeps instead of polling its children.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self._loop = loop
        self._fds: dict[subprocess.Popen, int] = {}
        self._exited = asyncio.Event()

    def follow(self, processes: set[subprocess.Popen]) -> None:
        """Watch these processes (the running children) and no others."""
        for process in set(self._fds) - processes:
            self._forget(process)
        for process in processes - set(self._fds):
            try:
                fd = os.pidfd_open(process.pid)
            except ProcessLookupError:  # gone and reaped meanwhile (a test's kill): the next round sees it
                self._exited.set()
                continue
            self._fds[process] = fd
            self._loop.add_reader(fd, self._exited.set)

    async def wait(self, timeout: float) -> None:
        """Until a watched process exits, or `timeout` seconds."""
        try:
            await asyncio.wait_for(self._exited.wait(), max(timeout, 0.0))
        except TimeoutError:
            pass
        self._exited.clear()

    def close(self) -> None:
        for process in list(self._fds):
            self._forget(process)

    def _forget(self, process: subprocess.Popen) -> None:
        fd = self._fds.pop(process)
        self._loop.remove_reader(fd)
        os.close(fd)


def describe_exit(code: int) -> str:
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {signal.Signals(-code).name}"
    except ValueError:
        return f"signal {-code}"


class Launcher:
    """Starts, supervises and stops the local cluster. Use as `async with Launcher(...) as cluster:`.

    `start_router=False` starts only the replicas (no meta bootstrap, no router).
    `supervise=False` reports a process that exits but leaves it down until `restart()`.
    `listen` with port 0 picks a free port at first start (tests); None keeps the
    saved address, or 127.0.0.1:2379 at first start.
    `routers`: router processes sharing the client port (SO_REUSEPORT): the kernel spreads
    connections over them, so a host with more cores gives the edge more cores.
    `peer_tls`: TLS among replicas and from routers (and the launcher) to replicas.
    `client_tls`: the routers serve TLS on the client port. The launcher's own calls to a
    router present the server certificate as theirs, as etcd's gateway does to its own port
    (so with client certificates required it needs the client-auth usage too).
    """

    def __init__(
        self,
        data_dir: str | Path = DEFAULT_DATA_DIR,
        *,
        listen: str | None = None,
        start_router: bool = True,
        supervise: bool = True,
        wal_segment_bytes: int | None = None,
        replica_arguments: Sequence[str] = (),
        router_arguments: Sequence[str] = (),
        routers: int = 1,
        client_tls: TLSFiles | None = None,
        peer_tls: TLSFiles | None = None,
        report: Callable[[str], None] = report_to_stdout,
    ):
        self.data_dir = Path(data_dir).resolve()
        self.layout_path = self.data_dir / LAYOUT_FILE
        self.logs_dir = self.data_dir / "logs"
        self._listen = listen
        self.start_router = start_router
        self.supervise = supervise
        self.replica_arguments = list(replica_arguments)
        self.router_arguments = list(router_arguments)
        self.client_tls = client_tls
        if client_tls is not None:
            self.router_arguments += ["--cert-file", client_tls.cert_file, "--key-file", client_tls.key_file]
            if client_tls.trusted_ca_file:
                self.router_arguments += ["--trusted-ca-file", client_tls.trusted_ca_file]
            if client_tls.client_cert_auth:
                self.router_arguments.append("--client-cert-auth")
        self._peer_ssl = None
        if peer_tls is not None:
            self._peer_ssl = peer_tls.client_context()
            peer_arguments = ["--peer-cert-file", peer_tls.cert_file, "--peer-key-file", peer_tls.key_file]
            if peer_tls.trusted_ca_file:
                peer_arguments += ["--peer-trusted-ca-file", peer_tls.trusted_ca_file]
            if peer_tls.client_cert_auth:
                peer_arguments.append("--peer-client-cert-auth")
            self.replica_arguments += peer_arguments
            self.router_arguments += peer_arguments
        self.router_count = routers
        if wal_segment_bytes is not None:
            self.replica_arguments += ["--wal-segment-bytes", str(wal_segment_bytes)]
        self.report = report
        self.layout: Layout | None = None
        self._replicas: dict[tuple[int, int], Supervised] = {}
        self._routers: list[Supervised] = []
        self._connections: dict[str, ShardConnection] = {}  # to replicas
        self._supervision: asyncio.Task | None = None
        # kill() and restart() may come from a test's thread while the supervision loop runs.
        self._children_lock = threading.Lock()
        self._lock_file = None
        self._layout_stamp: tuple[int, int] | None = None  # the layout file the replicas follow

    async def __aenter__(self) -> Launcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    # --- starting ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start every replica, wait for a leader in every group, bootstrap meta, start the router."""
        try:
            self._lock_data_dir()
            self.layout = self._load_or_create_layout()
            self._layout_stamp = layout_stamp(self.layout_path)
            await self._wait_until_ports_free()
            for group, members in self.layout.groups.items():
                for member in members:
                    replica = self._replica_process(group, member)
                    self._replicas[group, member] = replica
                    self._spawn(replica)
            self._supervision = asyncio.get_running_loop().create_task(self._supervise())
            for group in self.layout.groups:
                await self.leader(group)
            if self.start_router:
                await self._bootstrap_meta()
                self._routers = [self._router_process(index) for index in range(self.router_count)]
                for router in self._routers:
                    self._spawn(router)
                await self._wait_for_router()
        except BaseException:
            await self.stop()  # nothing may outlive a failed start
            raise

    def _lock_data_dir(self) -> None:
        """One launcher per data directory: two would run two processes on one member's files."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.data_dir / LOCK_FILE, "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.seek(0)
            holder = self._lock_file.read().strip() or "another process"
            self._lock_file.close()
            self._lock_file = None
            raise LauncherError(f"{self.data_dir} is in use by a running launcher (pid {holder})") from None
        self._lock_file.truncate(0)
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()

    def _load_or_create_layout(self) -> Layout:
        if self.layout_path.exists():
            layout = Layout.load(self.layout_path)
            changed = layout.add_missing_addresses()
            if self._listen is not None and not self._listen.endswith(":0") and self._listen != layout.listen:
                layout.listen = self._listen
                changed = True
            if changed:
                layout.save(self.layout_path)
            return layout
        layout = Layout.new(self._listen or DEFAULT_LISTEN)
        layout.save(self.layout_path)
        return layout

    async def _wait_until_ports_free(self) -> None:
        deadline = time.monotonic() + PORTS_FREE_SECONDS
        while busy := [address for address in self.layout.addresses if port_in_use(address)]:
            if time.monotonic() > deadline:
                raise LauncherError(
                    f"{', '.join(busy)} in use; the cluster in {self.data_dir} is fixed to these ports "
                    f"(see {self.layout_path})"
                )
            await asyncio.sleep(POLL_SECONDS)

    def _replica_process(self, group: int, member: int) -> Supervised:
        return Supervised(
            name=f"group {group} member {member}",
            command=[
                sys.executable, "-m", "tessera.cli", "replica", "--group", str(group), "--member", str(member),
                "--data-dir", str(replica_data_dir(self.data_dir, group, member)),
                "--members", self.layout.members_argument(group), "--parent-pid", str(os.getpid()),
                "--metrics-listen", self.layout.metrics_address(group, member), *self.replica_arguments,
                *(["--join"] if (group, member) in self.layout.joined else []),
            ],
            log_path=self.logs_dir / f"group-{group}-member-{member}.log",
        )

    def _router_process(self, index: int) -> Supervised:
        """Router `index`: the first also serves the gateway's own port; more share the client port."""
        meta = ",".join(f"{member}={api}" for member, (_, api) in self.layout.groups[META_GROUP].items())
        name = "router" if index == 0 else f"router-{index + 1}"
        return Supervised(
            name=name,
            command=[
                sys.executable, "-m", "tessera.cli", "router", "--listen", self.layout.listen,
                "--name", f"{name}-{self.layout.listen}", "--meta", meta, "--parent-pid", str(os.getpid()),
                *(["--gateway-listen", self.layout.gateway] if index == 0 else []),
                *(["--reuse-port"] if self.router_count > 1 else []),
                *self.router_arguments,
            ],
            log_path=self.logs_dir / f"{name}.log",
        )

    def _spawn(self, child: Supervised) -> None:
        with open(child.log_path, "ab") as log:
            started = time.strftime("%Y-%m-%d %H:%M:%S")
            log.write(f"--- {started} started by the launcher (pid {os.getpid()})\n".encode())
            log.flush()
            # A session of its own: Ctrl-C reaches only the launcher, which stops children in order.
            child.process = subprocess.Popen(
                child.command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child.started_at = time.monotonic()
        child.restart_at = None

    async def _bootstrap_meta(self) -> None:
        await bootstrap_cluster(
            self.layout.groups, dict(self.layout.prefixes), self.layout.default_group, self._peer_ssl
        )

    async def _wait_for_router(self) -> None:
        """Until a Range through the router succeeds (it serves, and reaches the default group) and
        every router is listed (a router registers once it serves).

        The channel is closed once they do: an idle client connection would keep the router's
        deadline timer running.
        """
        async with self._router_channel() as channel:
            await self._until_routers_serve(channel)

    async def _until_routers_serve(self, channel: grpc.aio.Channel) -> None:
        method = channel.unary_unary(
            KV_RANGE_METHOD, request_serializer=RangeRequest.SerializeToString,
            response_deserializer=RangeResponse.FromString,
        )
        member_list = channel.unary_unary(
            "/etcdserverpb.Cluster/MemberList", request_serializer=MemberListRequest.SerializeToString,
            response_deserializer=MemberListResponse.FromString,
        )
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                await method(RangeRequest(key=b"/", limit=1), timeout=CALL_SECONDS)
                listed = await member_list(MemberListRequest(), timeout=CALL_SECONDS)
                if len(listed.members) >= self.router_count:
                    return
            except grpc.aio.AioRpcError as error:
                if time.monotonic() > deadline:
                    raise LauncherError(
                        f"the router on {self.layout.listen} does not serve "
                        f"({error.code().name}: {error.details()}); see {self._routers[0].log_path}"
                    ) from None
            await asyncio.sleep(POLL_SECONDS)

    # --- what tests use ---------------------------------------------------------------

    def pid(self, group: int, member: int) -> int | None:
        """The member's process id while it runs, else None."""
        replica = self._replicas[group, member]
        return replica.process.pid if replica.running else None

    @property
    def router_pid(self) -> int | None:
        router = self._routers[0] if self._routers else None
        return router.process.pid if router is not None and router.running else None

    def kill(self, group: int, member: int) -> None:
        """SIGKILL the member and reap it; supervision then reports it (and restarts it if supervising)."""
        self._kill(self._replicas[group, member])

    def kill_router(self) -> None:
        self._kill(self._routers[0])

    def restart(self, group: int, member: int) -> None:
        """Start a member that is down now, without waiting for (or without) supervision."""
        self._restart(self._replicas[group, member])

    def restart_router(self) -> None:
        self._restart(self._routers[0])

    def _kill(self, child: Supervised) -> None:
        if not child.running:
            raise LauncherError(f"{child.name} is not running")
        child.process.send_signal(signal.SIGKILL)
        child.process.wait()

    def _restart(self, child: Supervised) -> None:
        with self._children_lock:
            if child.running:
                raise LauncherError(f"{child.name} is already running (pid {child.process.pid})")
            self._notice_exit(child)  # if the supervision loop has not yet
            self._spawn(child)
            self.report(f"{child.name} started again (pid {child.process.pid})")

    async def request(self, group: int, member: int, timeout: float = CALL_SECONDS, **fields) -> ShardResponse:
        """One internal-API request to one replica, e.g. `status=StatusRequest()` or `put=PutRequest(...)`."""
        address = self.layout.api_address(group, member)
        if address not in self._connections:
            self._connections[address] = ShardConnection(address, self._peer_ssl)
        try:
            return await self._connections[address].request(ShardRequest(**fields), timeout)
        except ReplicaUnreachable as unreachable:
            raise LauncherError(f"group {group} member {member}: {unreachable}") from None

    async def status(self, group: int, member: int) -> StatusResponse:
        return (await self.request(group, member, status=StatusRequest())).status

    async def leader(self, group: int, timeout: float = STARTUP_SECONDS) -> int:
        """The member that every running member of the group answers is the leader (itself running)."""
        deadline = time.monotonic() + timeout
        while True:
            running = [member for (g, member), replica in self._replicas.items() if g == group and replica.running]
            answers = await asyncio.gather(
                *[self.status(group, member) for member in running], return_exceptions=True
            )
            leaders = {answer.leader_id if isinstance(answer, StatusResponse) else None for answer in answers}
            if len(leaders) == 1 and leaders <= set(running):
                return leaders.pop()
            if time.monotonic() > deadline:
                logs = ", ".join(str(self._replicas[group, member].log_path) for member in MEMBERS)
                raise LauncherError(f"group {group} has no agreed leader after {timeout:g} s; see {logs}")
            await asyncio.sleep(POLL_SECONDS)

    def _router_channel(self) -> grpc.aio.Channel:
        address = self.layout.listen
        if self.client_tls is None:
            return grpc.aio.insecure_channel(address, options=ROUTER_CHANNEL_OPTIONS)
        tls = self.client_tls
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(tls.trusted_ca_file).read_bytes() if tls.trusted_ca_file else None,
            private_key=Path(tls.key_file).read_bytes(), certificate_chain=Path(tls.cert_file).read_bytes())
        return grpc.aio.secure_channel(address, credentials, options=ROUTER_CHANNEL_OPTIONS)

    # --- supervision ------------------------------------------------------------------

    def _children(self) -> list[Supervised]:
        return [*self._replicas.values(), *self._routers]

    async def _supervise(self) -> None:
        exits = _ExitWatch(asyncio.get_running_loop())
        try:
            while True:
                await self._follow_layout()
                with self._children_lock:
                    now = time.monotonic()
                    for child in self._children():
                        if child.process is not None and child.process.poll() is not None:
                            self._notice_exit(child)
                        elif child.restart_at is not None and now >= child.restart_at:
                            self._spawn(child)
                            self.report(f"{child.name} restarted (pid {child.process.pid})")
                    exits.follow({child.process for child in self._children() if child.process is not None})
                    due = [child.restart_at - now for child in self._children() if child.restart_at is not None]
                await exits.wait(min([LAYOUT_CHECK_SECONDS, *due]))
        finally:
            exits.close()

    async def _follow_layout(self) -> None:
        """Start the replicas a `tessera member` or `tessera group add` command added to the layout;
        stop those it removed.

        The layout file is what the launcher runs, now and at the next start, so a
        command in another process changes it (change_layout) rather than asking
        this process over a channel of its own.
        """
        stamp = layout_stamp(self.layout_path)
        if stamp == self._layout_stamp:
            return
        self._layout_stamp = stamp
        layout = Layout.load(self.layout_path)
        wanted = {(group, member) for group, members in layout.groups.items() for member in members}
        with self._children_lock:
            self.layout = layout
            for group, member in sorted(wanted - set(self._replicas)):
                replica = self._replicas[group, member] = self._replica_process(group, member)
                self._spawn(replica)
                self.report(f"{replica.name} added to the cluster (pid {replica.process.pid})")
            leaving = [self._replicas.pop(key) for key in sorted(set(self._replicas) - wanted)]
            for index, router in enumerate(self._routers):  # its next start finds the meta group where it is now
                router.command = self._router_process(index).command
        await self._terminate(leaving)
        for replica in leaving:
            self.report(f"{replica.name} removed from the cluster and stopped")

    def _notice_exit(self, child: Supervised) -> None:
        """Report a process that exited and, when supervising, schedule its restart with backoff."""
        if child.process is None or child.process.poll() is None:
            return
        pid, code = child.process.pid, child.process.returncode
        child.process = None
        if not self.supervise:
            self.report(f"{child.name} (pid {pid}) exited with {describe_exit(code)}; not restarted")
            return
        if time.monotonic() - child.started_at >= STAYED_UP_SECONDS:
            child.restart_delay = FIRST_RESTART_DELAY
        child.restart_at = time.monotonic() + child.restart_delay
        self.report(
            f"{child.name} (pid {pid}) exited with {describe_exit(code)}; restarting in {child.restart_delay:g} s"
        )
        child.restart_delay = min(2 * child.restart_delay, MAX_RESTART_DELAY)

    # --- stopping ---------------------------------------------------------------------

    async def stop(self) -> None:
        """SIGTERM the router, then every replica; SIGKILL what is still up after a grace period."""
        if self._supervision is not None:
            self._supervision.cancel()
            await asyncio.gather(self._supervision, return_exceptions=True)
            self._supervision = None
        for connection in self._connections.values():  # before the servers go: no GOAWAY noise in the logs
            await connection.close()
        self._connections.clear()
        await self._terminate(self._routers)
        await self._terminate(list(self._replicas.values()))
        if self._lock_file is not None:
            self._lock_file.close()  # releases the lock
            self._lock_file = None

    async def _terminate(self, children: list[Supervised]) -> None:
        for child in children:
            child.restart_at = None
            if child.running:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        while any(child.process is not None and child.process.poll() is None for child in children):
            if time.monotonic() > deadline:
                for child in children:
                    if child.running:
                        self.report(f"{child.name} (pid {child.process.pid}) ignored SIGTERM; killing it")
                        child.process.send_signal(signal.SIGKILL)
                        child.process.wait()
                break
            await asyncio.sleep(POLL_SECONDS / 2)
        for child in children:
            child.process = None
