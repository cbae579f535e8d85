"""The nemesis: faults injected into a running cluster on a schedule drawn from a seed.

One fault at a time: wait a gap, inject, hold, heal, record. Kinds (`--faults`):

- kill: SIGKILL then restart of a random replica, of a group's leader, or of the router.
- pause: SIGSTOP then SIGCONT of a random replica, a group's leader, or the router.
- partition: one replica cut off from its group's peers, both ways; the router still
  reaches it. On a cluster in network namespaces (tessera/netns.py) the cut is
  nftables rules in the network; on 127.0.0.1, the peer transport's fault hook
  (shards/fault_control.py).
- loss: what one replica sends its peers is lost, one way: a share of its packets
  (nftables' random numbers) in namespaces, all of its raft batches through the
  hook on 127.0.0.1.
- latency: every packet a group's replicas send is delayed by 1-5 ms (tc netem, in
  namespaces on a kernel that has netem; the run leaves this kind out elsewhere and
  says so).
- disk: a slow disk, a delay before every WAL fdatasync of one replica (or of a
  whole group), through the same hook.
- quota: a full quota: one data group's NOSPACE alarm raised through its raft log, as
  its leader raises it when the database passes --quota-backend-bytes; the group
  refuses puts ("database space exceeded") until the alarm is disarmed, etcd's
  runbook's last step, which is the heal.
- move: `tessera shards move` (a process of its own) takes MOVE_PREFIX and its keys to
  another data group; a third of the time the mover is killed (SIGKILL) on the way,
  a third of the time the leader of the group it leaves or enters is. The heal
  waits for the mover, runs `--recover` (which undoes or finishes a move left
  half done), restarts what was killed, and checks the prefix's keys are exactly
  those written there, in the group the map names: a difference ends the run.
  The workload's own prefixes do not move (its replica readers and change log
  read their groups directly), so this checks moves among faults, not the
  workload's linearizability across a switch (tests/router/test_shards_move.py).

The seed fixes the sequence of kinds, targets and durations; the processes'
own timing is not replayable, so a seed replays the faults, not the interleaving.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import grpc

from router import moves
from router.meta import MetaClient
from router.shard_client import GroupClient
from router.shard_map import prefix_end
from shards.fault_control import write_faults
from tessera.chaos.workload import EtcdKV
from tessera.api.internal_pb2 import ShardRequest
from tessera.api.rpc_pb2 import NOSPACE, AlarmRequest, PutRequest, RangeRequest
from tessera.launcher import META_GROUP, Launcher, LauncherError
from tessera.netns import NetnsLauncher, NetnsNetwork, replica_host

KILL = "kill"
PAUSE = "pause"
PARTITION = "partition"
DISK = "disk"
QUOTA = "quota"
LOSS = "loss"
LATENCY = "latency"
MOVE = "move"
FAULT_KINDS = (KILL, PAUSE, PARTITION, DISK, QUOTA, LOSS, LATENCY, MOVE)

# Groups faults land on: the meta group (the router's) and the two the workload's keys live in.
TARGET_GROUPS = (META_GROUP, 1, 2)
DATA_GROUPS = (1, 2)
ALARM_SECONDS = 10.0  # to raise or disarm an alarm through whichever member leads meanwhile
HOLD_SECONDS = (2.0, 6.0)  # how long a fault lasts: across an election timeout or several
GAP_SECONDS = (1.0, 4.0)  # quiet time between faults
FSYNC_DELAY_SECONDS = (0.05, 0.4)
LEADER_LOOKUP_SECONDS = 2.0
ALARM_MEMBER_ID = 1  # whose alarm the quota fault raises: one id, so the heal disarms that one
LOSS_PERCENTS = (10, 30, 60, 100)  # of the packets a replica sends its peers
LATENCY_MS = (1.0, 5.0)  # between hosts in one region: the range the issue asks throughput at
MOVE_PREFIX = b"/chaos-moves/"  # what the move fault moves: keys of its own, none of the workload's
MOVE_KEYS = 200
MOVE_KILL_SECONDS = (0.0, 2.0)  # when, after the mover starts, it or a leader is killed
MOVE_HEAL_SECONDS = 90.0  # for the mover to end, the recovery and the check
ROUTER_CALL_SECONDS = 10.0


@dataclass
class FaultRecord:
    kind: str
    target: str
    start_s: float  # seconds since the run's start
    end_s: float = 0.0
    detail: str = ""


class Nemesis:
    def __init__(self, launcher: Launcher, rng: random.Random, kinds: list[str], control_path: str,
                 clock, report=lambda line: None):
        self.launcher = launcher
        self.rng = rng
        self.kinds = kinds
        self.control_path = control_path
        self.clock = clock  # seconds since the run's start
        self.report = report
        self.records: list[FaultRecord] = []
        self._down: set[tuple[int, int]] = set()  # replicas killed and not restarted yet
        self._router_down = False
        self._paused: set[int] = set()  # pids stopped and not continued yet
        self._alarmed: set[int] = set()  # groups whose NOSPACE alarm is raised
        self._moved_keys: dict[bytes, bytes] | None = None  # MOVE_PREFIX's keys, once written

    async def run(self, stop: asyncio.Event) -> None:
        while self.kinds and not stop.is_set():
            if await self._wait(stop, self.rng.uniform(*GAP_SECONDS)):
                return
            kind = self.rng.choice(self.kinds)
            hold = self.rng.uniform(*HOLD_SECONDS)
            record = FaultRecord(kind, "", self.clock())
            heal = await getattr(self, f"_inject_{kind}")(record)
            self.records.append(record)
            self.report(f"{record.start_s:7.1f} s  {kind} {record.target} {record.detail}".rstrip())
            try:
                await self._wait(stop, hold)
            finally:
                healing = heal()
                if healing is not None:  # a heal that goes through the cluster
                    await healing
                record.end_s = self.clock()

    @staticmethod
    async def _wait(stop: asyncio.Event, seconds: float) -> bool:
        """Sleep `seconds` unless stopped first; whether it was stopped."""
        try:
            await asyncio.wait_for(stop.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def _target_member(self, record: FaultRecord) -> tuple[int, int]:
        """A group and a member: the group's leader half of the time, else any member."""
        group = self.rng.choice(TARGET_GROUPS)
        member = self.rng.choice(sorted(self.launcher.layout.groups[group]))
        if self.rng.random() < 0.5:
            try:
                member = await self.launcher.leader(group, timeout=LEADER_LOOKUP_SECONDS)
                record.target = f"group {group} leader {member}"
                return group, member
            except LauncherError:
                pass  # no agreed leader right now: the drawn member it is
        record.target = f"group {group} member {member}"
        return group, member

    async def _inject_kill(self, record: FaultRecord):
        if self.rng.random() < 0.2:
            record.target = "router"
            self.launcher.kill_router()
            self._router_down = True

            def heal():
                self.launcher.restart_router()
                self._router_down = False
            return heal
        group, member = await self._target_member(record)
        self.launcher.kill(group, member)
        self._down.add((group, member))

        def heal():
            self.launcher.restart(group, member)
            self._down.discard((group, member))
        return heal

    async def _inject_pause(self, record: FaultRecord):
        if self.rng.random() < 0.2:
            record.target = "router"
            pid = self.launcher.router_pid
        else:
            pid = self.launcher.pid(*await self._target_member(record))
        os.kill(pid, signal.SIGSTOP)
        self._paused.add(pid)

        def heal():
            self._continue(pid)
        return heal

    def _continue(self, pid: int) -> None:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        self._paused.discard(pid)

    @property
    def network(self) -> NetnsNetwork | None:
        """The cluster's network when it runs in namespaces: faults go there rather than to the hook."""
        return self.launcher.network if isinstance(self.launcher, NetnsLauncher) else None

    async def _inject_partition(self, record: FaultRecord):
        group, member = await self._target_member(record)
        peers = self.launcher.layout.groups[group]
        if self.network is not None:
            self.network.partition(replica_host(group, member),
                                   [replica_host(group, other) for other in peers if other != member])
            record.detail = "cut off from its peers (nftables)"
            return self.network.heal
        isolated = peers[member][0]
        blocked = [link for other, (address, _) in peers.items() if other != member
                   for link in ((isolated, address), (address, isolated))]
        record.detail = "cut off from its peers"
        write_faults(self.control_path, blocked=blocked)
        return self._clear_control

    async def _inject_loss(self, record: FaultRecord):
        group, member = await self._target_member(record)
        peers = self.launcher.layout.groups[group]
        if self.network is not None:
            percent = self.rng.choice(LOSS_PERCENTS)
            for other in peers:
                if other != member:
                    self.network.drop(replica_host(group, member), replica_host(group, other), percent)
            record.detail = f"{percent}% of what it sends its peers lost (nftables)"
            return self.network.heal
        sender = peers[member][0]
        blocked = [(sender, address) for other, (address, _) in peers.items() if other != member]
        record.detail = "all it sends its peers lost (transport hook)"
        write_faults(self.control_path, blocked=blocked)
        return self._clear_control

    async def _inject_latency(self, record: FaultRecord):
        group = self.rng.choice(TARGET_GROUPS)
        delay_ms = self.rng.uniform(*LATENCY_MS)
        record.target = f"group {group} (every member)"
        record.detail = f"+{delay_ms:.1f} ms on every packet they send (netem)"
        for member in self.launcher.layout.groups[group]:
            self.network.netem(replica_host(group, member), delay_ms=delay_ms)
        return self.network.heal

    async def _inject_disk(self, record: FaultRecord):
        delay = self.rng.uniform(*FSYNC_DELAY_SECONDS)
        if self.rng.random() < 0.25:
            group = self.rng.choice(TARGET_GROUPS)
            members = sorted(self.launcher.layout.groups[group])
            record.target = f"group {group} (every member)"
        else:
            group, member = await self._target_member(record)
            members = [member]
        directories = {str(self.launcher.data_dir / f"group-{group}" / f"member-{member}" / "wal"): delay
                       for member in members}
        record.detail = f"fsync +{delay * 1000:.0f} ms"
        write_faults(self.control_path, fsync_delay_seconds=directories)
        return self._clear_control

    def _clear_control(self) -> None:
        write_faults(self.control_path)

    async def _inject_quota(self, record: FaultRecord):
        group = self.rng.choice(DATA_GROUPS)
        record.target = f"group {group}"
        record.detail = "NOSPACE alarm: puts refused"
        await self._alarm(group, AlarmRequest.ACTIVATE)
        self._alarmed.add(group)
        return lambda: self._disarm(group)

    async def _disarm(self, group: int) -> None:
        await self._alarm(group, AlarmRequest.DEACTIVATE)
        self._alarmed.discard(group)

    async def _alarm(self, group: int, action: int) -> None:
        """Raise or disarm the group's NOSPACE alarm through its leader (the change goes through raft)."""
        deadline = time.monotonic() + ALARM_SECONDS
        while True:
            try:
                leader = await self.launcher.leader(group, timeout=LEADER_LOOKUP_SECONDS)
                answer = await self.launcher.request(group, leader, alarm=AlarmRequest(
                    action=action, memberID=ALARM_MEMBER_ID, alarm=NOSPACE))
                if answer.WhichOneof("response") == "alarm":
                    return
            except LauncherError:
                pass  # no leader for the moment
            if time.monotonic() > deadline:
                raise LauncherError(f"group {group}: the NOSPACE alarm could not be "
                                    f"{'raised' if action == AlarmRequest.ACTIVATE else 'disarmed'}")
            await asyncio.sleep(0.1)

    async def _inject_move(self, record: FaultRecord):
        meta = self._meta_members()
        if self._moved_keys is None:
            await self._write_move_keys()
        state = await self._meta_state(meta)
        source = state.shard_map.group_of(MOVE_PREFIX)
        target = self.rng.choice([group for group in sorted(self.launcher.layout.groups)
                                  if group not in (META_GROUP, source)])
        record.target = f"{MOVE_PREFIX.decode()} group {source} -> {target}"
        mover = subprocess.Popen([sys.executable, "-m", "tessera.cli", "shards", "move", MOVE_PREFIX.decode(),
                                  str(target), "--data-dir", str(self.launcher.data_dir)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        draw, delay = self.rng.random(), self.rng.uniform(*MOVE_KILL_SECONDS)
        killed: list[tuple[int, int]] = []
        if draw < 1 / 3:
            record.detail = f"mover killed after {delay:.1f} s"
            await asyncio.sleep(delay)
            mover.kill()
        elif draw < 2 / 3:
            group = self.rng.choice((source, target))
            record.detail = f"group {group}'s leader killed after {delay:.1f} s"
            await asyncio.sleep(delay)
            try:
                member = await self.launcher.leader(group, timeout=LEADER_LOOKUP_SECONDS)
                self.launcher.kill(group, member)
                killed.append((group, member))
                self._down.add((group, member))
            except LauncherError:
                record.detail += " (none agreed on: nothing killed)"

        async def heal():
            deadline = time.monotonic() + MOVE_HEAL_SECONDS
            while mover.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            if mover.poll() is None:
                mover.kill()
            mover.wait()
            for group, member in killed:
                self.launcher.restart(group, member)
                self._down.discard((group, member))
            while True:
                try:
                    await moves.recover(meta)
                    break
                except Exception as failure:  # a group or a router not back yet: the recovery is idempotent
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"move fault: --recover kept failing: {failure}") from failure
                    await asyncio.sleep(0.5)
            await self._check_move_keys(meta, deadline)
        return heal

    def _meta_members(self) -> dict[int, str]:
        layout = self.launcher.layout
        return {member: layout.api_address(META_GROUP, member) for member in layout.groups[META_GROUP]}

    @staticmethod
    async def _meta_state(meta_members: dict[int, str]):
        meta = MetaClient(GroupClient(META_GROUP, meta_members))
        try:
            return await meta.load()
        finally:
            await meta.client.close()

    async def _write_move_keys(self) -> None:
        """MOVE_PREFIX's keys, written once, through the router (a put is retried: it writes the same)."""
        kv = EtcdKV(self.launcher.layout.listen)
        deadline = time.monotonic() + MOVE_HEAL_SECONDS
        try:
            keys = {MOVE_PREFIX + b"k%04d" % n: b"v%d" % n for n in range(MOVE_KEYS)}
            for key, value in keys.items():
                while True:
                    try:
                        await kv.kv.Put(PutRequest(key=key, value=value), timeout=ROUTER_CALL_SECONDS)
                        break
                    except grpc.aio.AioRpcError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
            self._moved_keys = keys
        finally:
            await kv.close()

    async def _check_move_keys(self, meta_members: dict[int, str], deadline: float) -> None:
        """MOVE_PREFIX's keys as written, in the group the map names, and in no other data group."""
        state = await self._meta_state(meta_members)
        if state.moves:
            raise RuntimeError(f"move fault: moves left in progress after --recover: {state.moves}")
        owner = state.shard_map.group_of(MOVE_PREFIX)
        end = prefix_end(MOVE_PREFIX)
        for group in sorted(g for g in state.groups if g != META_GROUP):
            client = GroupClient(group, {m.id: m.api_address for m in state.groups[group].members})
            try:
                while True:
                    try:
                        answer = await client.call(ShardRequest(range=RangeRequest(key=MOVE_PREFIX, range_end=end)),
                                                   write=False)
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.5)
            finally:
                await client.close()
            found = {kv.key: kv.value for kv in answer.range.kvs}
            wanted = self._moved_keys if group == owner else {}
            if found != wanted:
                raise RuntimeError(f"move fault: group {group} holds {len(found)} keys of {MOVE_PREFIX!r}, "
                                   f"not the {len(wanted)} it should (the map gives them to group {owner})")

    async def heal_all(self) -> None:
        """Undo whatever is still in force: continue paused processes, restart killed ones, clear the hook,
        disarm alarms."""
        for pid in list(self._paused):
            self._continue(pid)
        for group, member in sorted(self._down):
            self.launcher.restart(group, member)
        self._down.clear()
        if self._router_down:
            self.launcher.restart_router()
            self._router_down = False
        self._clear_control()
        if self.network is not None:
            self.network.heal()
        for group in sorted(self._alarmed):
            await self._disarm(group)


async def wait_healthy(launcher: Launcher, timeout: float) -> None:
    """Until every group has a leader that all its members agree on."""
    deadline = time.monotonic() + timeout
    for group in launcher.layout.groups:
        await launcher.leader(group, timeout=max(0.1, deadline - time.monotonic()))
