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
- split: `tessera shards split` (a process of its own) cuts the range that holds one of
  SPLIT_PREFIX's keys at that key, its upper part to another data group, with the
  same kills and heal as a move; the check is that each key of the prefix is where
  the map puts it, and nowhere else. SPLIT_PREFIX first gets a range of its own (a
  move), so that the cuts stay inside it and never take the workload's keys.
- group-add: `tessera group add` (a process of its own) founds a new group; half of
  the time it is killed on the way, and the heal runs it again if it left a group
  unrecorded (it finishes that one). The heal checks every group of the layout is
  recorded and has a leader. Moves and splits then take keys to the new groups too.
  At most GROUPS_ADDED_MAX times a run, and on 127.0.0.1 only: a cluster in namespaces
  places its hosts when it starts.

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
from tessera.launcher import META_GROUP, Launcher, LauncherError, Layout
from tessera.netns import NetnsLauncher, NetnsNetwork, replica_host

KILL = "kill"
PAUSE = "pause"
PARTITION = "partition"
DISK = "disk"
QUOTA = "quota"
LOSS = "loss"
LATENCY = "latency"
MOVE = "move"
SPLIT = "split"
GROUP_ADD = "group-add"
FAULT_KINDS = (KILL, PAUSE, PARTITION, DISK, QUOTA, LOSS, LATENCY, MOVE, SPLIT, GROUP_ADD)

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
SPLIT_PREFIX = b"/chaos-splits/"  # what the split fault cuts, likewise
MOVE_KEYS = 200  # under each of the two
MOVE_KILL_SECONDS = (0.0, 2.0)  # when, after the mover starts, it or a leader is killed
MOVE_HEAL_SECONDS = 90.0  # for the mover to end, the recovery and the check
GROUPS_ADDED_MAX = 1  # each adds three processes to the host; moves and splits need one to go to
GROUP_ADD_KILL_SECONDS = (0.0, 3.0)  # when, after `tessera group add` starts, it is killed
GROUP_ADD_HEAL_SECONDS = 60.0  # for it to end, run again if need be, and the new group to lead
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
        self._written: dict[bytes, dict[bytes, bytes]] = {}  # MOVE_PREFIX's and SPLIT_PREFIX's keys, once written
        self._groups_added = 0

    async def run(self, stop: asyncio.Event) -> None:
        while self.kinds and not stop.is_set():
            if await self._wait(stop, self.rng.uniform(*GAP_SECONDS)):
                return
            kind = self.rng.choice(self.kinds)
            hold = self.rng.uniform(*HOLD_SECONDS)
            record = FaultRecord(kind, "", self.clock())
            heal = await getattr(self, f"_inject_{kind.replace('-', '_')}")(record)
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
        await self._write_keys(MOVE_PREFIX)
        state = await self._meta_state(meta)
        source = state.shard_map.group_of(MOVE_PREFIX)
        target = self._other_group(state, source)
        record.target = f"{MOVE_PREFIX.decode()} group {source} -> {target}"
        return await self._run_mover(record, ["move", MOVE_PREFIX.decode(), str(target)], source, target,
                                     MOVE_PREFIX)

    async def _inject_split(self, record: FaultRecord):
        meta = self._meta_members()
        await self._write_keys(SPLIT_PREFIX)
        state = await self._meta_state(meta)
        if state.shard_map.stretch_of(SPLIT_PREFIX)[0] != SPLIT_PREFIX:  # no range of its own yet
            await moves.move(meta, SPLIT_PREFIX, self._other_group(state, state.shard_map.group_of(SPLIT_PREFIX)))
            state = await self._meta_state(meta)
        key = self.rng.choice(sorted(self._written[SPLIT_PREFIX]))
        source = state.shard_map.group_of(key)
        target = self._other_group(state, source)
        record.target = f"{key.decode()} group {source} -> {target}"
        return await self._run_mover(record, ["split", str(source), key.decode(), "--to", str(target)], source,
                                     target, SPLIT_PREFIX)

    def _other_group(self, state, group: int) -> int:
        return self.rng.choice([other for other in sorted(state.groups) if other not in (META_GROUP, group)])

    async def _run_mover(self, record: FaultRecord, arguments: list[str], source: int, target: int,
                         prefix: bytes):
        """Run `tessera shards ARGUMENTS`, killing it or a leader of its groups a third of the time
        each; the heal, which recovers the move and checks `prefix`'s keys."""
        meta = self._meta_members()
        mover = subprocess.Popen([sys.executable, "-m", "tessera.cli", "shards", *arguments,
                                  "--data-dir", str(self.launcher.data_dir)],
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
                        raise RuntimeError(f"{record.kind} fault: --recover kept failing: {failure}") from failure
                    await asyncio.sleep(0.5)
            await self._check_keys(meta, deadline, record.kind, prefix)
        return heal

    async def _inject_group_add(self, record: FaultRecord):
        self._groups_added += 1
        if self._groups_added == GROUPS_ADDED_MAX:
            self.kinds = [kind for kind in self.kinds if kind != GROUP_ADD]
        record.target = "a new group"
        command = [sys.executable, "-m", "tessera.cli", "group", "add", "--data-dir", str(self.launcher.data_dir)]
        adding = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        killed = self.rng.random() < 0.5
        if killed:
            delay = self.rng.uniform(*GROUP_ADD_KILL_SECONDS)
            record.detail = f"killed after {delay:.1f} s"
            await asyncio.sleep(delay)
            adding.kill()

        async def heal():
            deadline = time.monotonic() + GROUP_ADD_HEAL_SECONDS
            if await _ended(adding, deadline) != 0 and not killed:
                raise RuntimeError(f"group-add fault: `tessera group add` failed: {adding.stderr.read()}")
            if await self._unrecorded_groups():  # killed between the layout and the meta record
                again = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                if await _ended(again, deadline) != 0:
                    raise RuntimeError(f"group-add fault: `tessera group add` did not finish the group "
                                       f"left unrecorded: {again.stderr.read()}")
            for group in Layout.load(self.launcher.layout_path).groups:
                await self.launcher.leader(group, timeout=max(0.1, deadline - time.monotonic()))
        return heal

    async def _unrecorded_groups(self) -> list[int]:
        """Groups the launcher runs that the meta group does not record."""
        recorded = (await self._meta_state(self._meta_members())).groups
        return sorted(set(Layout.load(self.launcher.layout_path).groups) - set(recorded))

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

    async def _write_keys(self, prefix: bytes) -> None:
        """MOVE_KEYS keys under `prefix`, written once, through the router (a put is retried: it writes
        the same)."""
        if prefix in self._written:
            return
        kv = EtcdKV(self.launcher.layout.listen)
        deadline = time.monotonic() + MOVE_HEAL_SECONDS
        try:
            keys = {prefix + b"k%04d" % n: b"v%d" % n for n in range(MOVE_KEYS)}
            for key, value in keys.items():
                while True:
                    try:
                        await kv.kv.Put(PutRequest(key=key, value=value), timeout=ROUTER_CALL_SECONDS)
                        break
                    except grpc.aio.AioRpcError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.2)
            self._written[prefix] = keys
        finally:
            await kv.close()

    async def _check_keys(self, meta_members: dict[int, str], deadline: float, kind: str, prefix: bytes) -> None:
        """`prefix`'s keys as written, each in the group the map names, and in no other data group."""
        state = await self._meta_state(meta_members)
        if state.moves:
            raise RuntimeError(f"{kind} fault: moves left in progress after --recover: {state.moves}")
        end = prefix_end(prefix)
        for group in sorted(g for g in state.groups if g != META_GROUP):
            client = GroupClient(group, {m.id: m.api_address for m in state.groups[group].members})
            try:
                while True:
                    try:
                        answer = await client.call(ShardRequest(range=RangeRequest(key=prefix, range_end=end)),
                                                   write=False)
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.5)
            finally:
                await client.close()
            found = {kv.key: kv.value for kv in answer.range.kvs}
            wanted = {key: value for key, value in self._written[prefix].items()
                      if state.shard_map.group_of(key) == group}
            if found != wanted:
                raise RuntimeError(f"{kind} fault: group {group} holds {len(found)} keys of {prefix!r}, "
                                   f"not the {len(wanted)} the map gives it")

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


async def _ended(process: subprocess.Popen, deadline: float) -> int:
    """The process's exit code, once it exits; killed at the deadline."""
    while process.poll() is None:
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise RuntimeError(f"{' '.join(process.args[3:5])} did not end in time")
        await asyncio.sleep(0.1)
    return process.returncode


async def wait_healthy(launcher: Launcher, timeout: float) -> None:
    """Until every group has a leader that all its members agree on."""
    deadline = time.monotonic() + timeout
    for group in launcher.layout.groups:
        await launcher.leader(group, timeout=max(0.1, deadline - time.monotonic()))
