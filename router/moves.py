"""Moving a prefix that holds data to another group while clients use it (`tessera shards move`),
and cutting a group's range in two by moving its upper part (`tessera shards split`).

A move goes through three phases, each recorded in the meta group (MoveRecord in the
MoveList at tessera/moves) before its work starts, in the same meta transaction as the
shard map change it makes, so that a move whose mover died is found and either undone
or finished (`recover`), never left half done:

  COPYING   the target's copy of the range is cleared (a failed attempt may have left
            one), then the source's records are copied at one revision R, with their
            create and mod revisions, versions and leases (ImportKeys, shards/mvcc.py),
            then caught up in rounds: the records changed since the last round
            (min_mod_revision) and the keys gone since. Clients use the source meanwhile.
  FENCED    the range goes into the map's `moving`: every router holds requests there
            (router/core.py) and says, in its meta record, once it does and every write
            it sent before is answered. The last changes are copied; that import sets
            the target's range floor above every revision the source gave the range.
  SWITCHED  the map gives the range to the target and lifts the fence in one meta
            transaction. Once every router routes by it, the source's copy is dropped
            (DropRange) and the record removed.

The fence lasts from the routers taking it to their taking the switch: the length of
the write pause clients see, which `MoveOutcome.fence_seconds` reports.

Watches: the source's watchers deliver the range's changes up to the fence; when a
router takes the switched map its watch proxy adds a part on the target from the
revision after what each watch has delivered (router/watch_proxy.py). Imports and
drops make no events, so every event arrives once, in revision order.

A split is a move of a range rather than a prefix: from its KEY to the end of the stretch
of the map that holds KEY (ShardMap.stretch_of), which may cut a range of the map in two
(ShardMap.assign_range); a prefix move may not cut one. Everything else is the same move.

Recovery undoes a move that did not reach SWITCHED (the fence lifted, the target's
copy dropped: the source never stopped holding the range) and finishes one that did.
Every step is idempotent, so a recovery that dies is recovered again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from router.admin import ROUTERS_TIMEOUT_SECONDS, _group_state, _wait_for_routers
from router.meta import META_GROUP, MetaClient, MetaState
from router.shard_client import GroupClient
from router.shard_map import ShardMap, prefix_end
from tessera.api import errors
from tessera.api.internal_pb2 import ImportKeysRequest, MoveList, MoveRecord, ShardRequest
from tessera.api.meta_keys import MOVES_KEY, SHARDS_KEY
from tessera.api.rpc_pb2 import (
    NOSPACE,
    Compare,
    DeleteRangeRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    TxnRequest,
)

log = logging.getLogger("tessera.move")

# A page read from the source: the first COPY_FIRST_PAGE_KEYS records, then as many as make
# about COPY_PAGE_BYTES at the mean size so far (at most COPY_PAGE_KEYS_MAX): a page is a
# stall of the member that reads it, so it is kept small whatever the records' size.
COPY_FIRST_PAGE_KEYS = 100
COPY_PAGE_BYTES = 1024 * 1024
COPY_PAGE_KEYS_MAX = 10_000
# Bytes of records per import: one raft entry each, well under a request's 1.5 MiB.
IMPORT_BATCH_BYTES = 1024 * 1024
# Keys per drop of the source's copy (or the target's, undoing): one raft entry, one transaction.
DROP_CHUNK_KEYS = 5000
# Imports of one round sent before the first is answered: the target's raft batches them.
IMPORTS_IN_FLIGHT = 4
# Catch-up rounds before the fence: they end early once a round finds fewer changed
# keys than this, so the fenced round (the write pause) copies little.
CATCH_UP_ROUNDS_MAX = 5
CATCH_UP_SETTLED_KEYS = 500
# How long an idempotent step (a page read, an import, a drop) is retried through
# leader changes and restarts before the move gives up (and is undone).
STEP_RETRY_SECONDS = 30.0
STEP_RETRY_PAUSE_SECONDS = 0.1
# A meta transaction that lost a race (another change to the map or the moves) is tried again.
TRANSITION_ATTEMPTS = 20
# Errors after which a step may be sent again: it either did not run, or runs the same twice.
# (A page read at a revision the member asked has not applied yet: it soon has.)
_RETRYABLE = (errors.RequestTimeout, errors.NoLeader, errors.NotLeader, errors.LeaderChanged,
              errors.FutureRevision)


class MoveError(Exception):
    """A move that cannot be done as asked, or was stopped; the message says why and what changed."""


@dataclass
class MoveOutcome:
    start: bytes  # the range moved: [start, end), end b"" meaning to the end of the keyspace
    end: bytes
    source: int
    target: int
    keys: int  # the records copied in the first round
    bytes: int  # their keys and values
    copy_seconds: float  # from the start to the fence
    fence_seconds: float  # from the fence going up to every router routing by the switched map


def _moving_range(record: MoveRecord) -> tuple[bytes, bytes, int]:
    return record.start, record.end, record.target


def _ranges_overlap(start: bytes, end: bytes, other_start: bytes, other_end: bytes) -> bool:
    """Whether [start, end) and [other_start, other_end) share a key (b"" end: to the end)."""
    return (not other_end or start < other_end) and (not end or other_start < end)


def _wire_end(end: bytes) -> bytes:
    """A range's end as etcd's requests give it: b"\\0" for "to the end of the keyspace"."""
    return end or b"\0"


async def _retrying(step: Callable[[], object]):
    """Run an idempotent step, again after errors that leave it safe to repeat."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STEP_RETRY_SECONDS
    while True:
        try:
            return await step()
        except _RETRYABLE:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(STEP_RETRY_PAUSE_SECONDS)


class _InFlight:
    """Coroutines run at most `width` at a time; the first failure is raised to whoever adds
    the next one or waits for them all."""

    def __init__(self, width: int):
        self.width = width
        self.tasks: set[asyncio.Task] = set()

    async def add(self, coroutine) -> None:
        while len(self.tasks) >= self.width:
            await self._settle(asyncio.FIRST_COMPLETED)
        self.tasks.add(asyncio.ensure_future(coroutine))

    async def wait_all(self) -> None:
        while self.tasks:
            await self._settle(asyncio.ALL_COMPLETED)

    async def _settle(self, return_when) -> None:
        done, self.tasks = await asyncio.wait(self.tasks, return_when=return_when)
        for task in done:
            task.result()

    def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()


class _Pace:
    """Imports at `rate` bytes per second at most (0: no limit): each may start once the one
    before it has had its share of time. A move's copy takes CPU and disk from every group on
    the hosts it involves; a cap (`tessera shards move --max-rate`) leaves them room."""

    def __init__(self, rate: float):
        self.rate = rate
        self.next_start = 0.0

    async def take(self, size: int) -> None:
        if not self.rate:
            return
        now = asyncio.get_running_loop().time()
        start = max(self.next_start, now)
        self.next_start = start + size / self.rate
        if start > now:
            await asyncio.sleep(start - now)


class _Mover:
    def __init__(self, meta: MetaClient, groups: dict[int, GroupClient], record: MoveRecord,
                 routers_timeout: float, progress: Callable[[str], None], max_rate: float = 0):
        self.meta = meta
        self.record = record
        self.source = groups[record.source]
        self.target = groups[record.target]
        self.routers_timeout = routers_timeout
        self.progress = progress
        self.key, self.range_end = record.start, _wire_end(record.end)
        self.switched = record.phase == MoveRecord.SWITCHED
        self.page_keys = COPY_FIRST_PAGE_KEYS
        self.pace = _Pace(max_rate)

    # --- the meta records -------------------------------------------------------------------

    async def transition(self, change: Callable[[MetaState, list[MoveRecord], MoveRecord], ShardMap | None],
                         remove: bool = False, phase: int | None = None) -> MetaState:
        """One meta transaction: this move's record to `phase` (or removed), with the map `change`
        gives; compared against both records, retried when something else changed them first.
        The meta state after it."""
        for _ in range(TRANSITION_ATTEMPTS):
            state = await self.meta.load()
            ours = next((m for m in state.moves if (m.start, m.end) == (self.record.start, self.record.end)), None)
            if ours is None or (ours.source, ours.target) != (self.record.source, self.record.target):
                raise MoveError(f"the move of {self.record.start!r} is no longer recorded (undone by "
                                f"`tessera shards move --recover`?)")
            others = [m for m in state.moves if m is not ours]
            shard_map = change(state, others, ours)
            moves = list(others)
            if not remove:
                updated = MoveRecord()
                updated.CopyFrom(ours)
                if phase is not None:
                    updated.phase = phase
                moves.append(updated)
            compare = [Compare(key=MOVES_KEY, target=Compare.MOD, result=Compare.EQUAL,
                               mod_revision=state.moves_revision)]
            puts = [RequestOp(request_put=PutRequest(key=MOVES_KEY, value=MoveList(
                moves=sorted(moves, key=lambda m: m.start)).SerializeToString()))]
            if shard_map is not None and shard_map != state.shard_map:
                compare.append(Compare(key=SHARDS_KEY, target=Compare.MOD, result=Compare.EQUAL,
                                       mod_revision=state.shard_map_revision))
                puts.append(RequestOp(request_put=PutRequest(key=SHARDS_KEY,
                                                             value=shard_map.to_record().SerializeToString())))
            try:
                answer = await self.meta.client.call(ShardRequest(txn=TxnRequest(compare=compare, success=puts)),
                                                     write=True)
            except _RETRYABLE:
                continue  # it may have gone in: the next look tells, and the change is the same again
            if answer.txn.succeeded:
                return await self.meta.load()
        raise MoveError("the shard map and the moves kept changing under this move; try again")

    async def wait_for_routers(self, state: MetaState) -> None:
        await _wait_for_routers(self.meta, state.shard_map_revision, self.routers_timeout)

    # --- the data -----------------------------------------------------------------------------

    async def _read_page(self, start: bytes, revision: int, since: int, keys_only: bool):
        """The range's records from `start` (changed after `since`): a round's first page at the
        source's revision now (`revision` 0), from its leader (a linearizable read: at or above
        every write acknowledged so far) with the range's key count there; every other page at
        that `revision` and uncounted (a count walks the whole range), from any member, so the
        copy's reads spread over the group, off the leader that serves its clients' writes."""
        first = not revision
        request = ShardRequest(uncounted=not first, range=RangeRequest(
            key=start, range_end=self.range_end, revision=revision, serializable=not first,
            limit=COPY_PAGE_KEYS_MAX if keys_only else self.page_keys,
            min_mod_revision=since + 1 if since else 0, keys_only=keys_only))
        page = (await _retrying(lambda: self.source.call(request, write=False, any_member=not first))).range
        if not keys_only and page.kvs:
            page_bytes = sum(len(kv.key) + len(kv.value) for kv in page.kvs)
            self.page_keys = max(1, min(COPY_PAGE_KEYS_MAX, COPY_PAGE_BYTES * len(page.kvs) // page_bytes))
        return page

    async def _import(self, puts: list, deletes: list[bytes], final: bool = False, floor: int = 0) -> None:
        request = ShardRequest(floor=floor, import_keys=ImportKeysRequest(
            key=self.key, range_end=self.range_end, puts=puts, deletes=deletes, final=final))
        await _retrying(lambda: self.target.call(request, write=True))

    async def copy_round(self, since: int, known: set[bytes], final: bool = False) -> tuple[int, int, int]:
        """Copy the records changed after revision `since` (every record if 0) and, after the
        first round, the deletions among `known` (the keys the target has), which then become
        the source's keys (after the first round, the keys copied). (The revision copied at, the
        records copied, their bytes.)

        Pipelined: the next page is read while this one is imported, and up to
        IMPORTS_IN_FLIGHT imports are in flight (a page's keys are disjoint from every other
        page's, so the imports of a round commute); the round's last import waits for them all.
        """
        copied_bytes, copied_keys = 0, set()
        batch, batch_bytes = [], 0
        imports = _InFlight(IMPORTS_IN_FLIGHT)
        page = await self._read_page(self.key, 0, since, keys_only=False)
        revision, present_count = page.header.revision, page.count
        next_page = None
        try:
            while True:
                if page.more:
                    next_page = asyncio.ensure_future(
                        self._read_page(page.kvs[-1].key + b"\0", revision, since, keys_only=False))
                for kv in page.kvs:
                    size = kv.ByteSize()
                    if batch and batch_bytes + size > IMPORT_BATCH_BYTES:
                        if not final:  # the fenced round is the write pause: as fast as it goes
                            await self.pace.take(batch_bytes)
                        await imports.add(self._import(batch, []))
                        batch, batch_bytes = [], 0
                    batch.append(kv)
                    batch_bytes += size
                    copied_keys.add(kv.key)
                    copied_bytes += len(kv.key) + len(kv.value)
                if next_page is None:
                    break
                page, next_page = await next_page, None
            await imports.wait_all()
        finally:
            imports.cancel()
            if next_page is not None:
                next_page.cancel()
        deletes = []
        # The source's keys now are among those the target had and those copied; if there are
        # as many as the source counts, none is gone, and no listing of the keys is needed.
        if since and len(known | copied_keys) != present_count:  # some are gone: which, a listing says
            present = await self.source_keys(revision)
            deletes = sorted(known - present)
            known.clear()
            known.update(present)
        known |= copied_keys
        # The final import lifts the target above every revision the source gave the range.
        await self._import(batch, deletes, final=final, floor=revision + 1 if final else 0)
        return revision, len(copied_keys), copied_bytes

    async def clear_target(self) -> None:
        await self._drop(self.target)

    async def drop_source(self) -> None:
        await self._drop(self.source)

    async def _drop(self, group: GroupClient) -> None:
        """Drop the range's records from a group, DROP_CHUNK_KEYS keys per raft entry: a group
        applies a drop in one transaction, and a gigabyte's would hold its raft loop past an
        election timeout."""
        start = self.key
        while True:
            page = (await _retrying(lambda: group.call(ShardRequest(range=RangeRequest(
                key=start, range_end=self.range_end, limit=DROP_CHUNK_KEYS, keys_only=True)), write=False))).range
            end = page.kvs[-1].key + b"\0" if page.more else self.range_end
            await _retrying(lambda: group.call(ShardRequest(drop_range=DeleteRangeRequest(
                key=start, range_end=end)), write=True))
            if not page.more:
                return
            start = end

    async def source_keys(self, revision: int) -> set[bytes]:
        """The keys the source has in the range at `revision`."""
        keys, start = set(), self.key
        while True:
            page = await self._read_page(start, revision, 0, keys_only=True)
            keys.update(kv.key for kv in page.kvs)
            if not page.more:
                return keys
            start = page.kvs[-1].key + b"\0"

    # --- the phases ----------------------------------------------------------------------------

    async def run(self) -> MoveOutcome:
        started = time.monotonic()
        await self.clear_target()
        known: set[bytes] = set()
        revision, keys, moved_bytes = await self.copy_round(0, known)
        self.progress(f"copied {keys} keys ({moved_bytes} bytes) at revision {revision}")
        for _ in range(CATCH_UP_ROUNDS_MAX):
            revision_after, changed, _ = await self.copy_round(revision, known)
            self.progress(f"caught up {changed} changed keys to revision {revision_after}")
            revision = revision_after
            if changed < CATCH_UP_SETTLED_KEYS:
                break
        fence_started = time.monotonic()
        fenced = await self.transition(
            lambda state, others, ours: state.shard_map.with_moving([*state.shard_map.moving, _moving_range(ours)]),
            phase=MoveRecord.FENCED)
        await self.wait_for_routers(fenced)
        revision, changed, _ = await self.copy_round(revision, known, final=True)
        self.progress(f"fenced; copied the last {changed} changed keys at revision {revision}")
        switched = await self.transition(self._switched_map, phase=MoveRecord.SWITCHED)
        self.switched = True
        await self.wait_for_routers(switched)
        fence_seconds = time.monotonic() - fence_started
        self.progress(f"switched to group {self.record.target} after a fence of {fence_seconds:.3f} s")
        await self.finish()
        return MoveOutcome(self.record.start, self.record.end, self.record.source, self.record.target, keys,
                           moved_bytes, fence_started - started, fence_seconds)

    def _switched_map(self, state: MetaState, others: list[MoveRecord], ours: MoveRecord) -> ShardMap:
        if ours.phase == MoveRecord.SWITCHED:
            return state.shard_map
        moved = state.shard_map.assign_range(ours.start, ours.end, ours.target)  # no fences kept: put back the others'
        return moved.with_moving([m for m in state.shard_map.moving if m != _moving_range(ours)])

    async def finish(self) -> None:
        """After the switch: the source's copy dropped once no router routes there, the record removed."""
        await self.wait_for_routers(await self.meta.load())
        await self.drop_source()
        await self.transition(lambda state, others, ours: None, remove=True)

    async def roll_back(self) -> None:
        """Before the switch: the fence lifted and the record removed (one transaction), then the
        target's copy dropped. The source held the range throughout."""
        def unfenced(state: MetaState, others: list[MoveRecord], ours: MoveRecord) -> ShardMap:
            if ours.phase == MoveRecord.SWITCHED:
                raise MoveError(f"the move of {ours.start!r} has switched already: it can only be finished")
            return state.shard_map.with_moving([m for m in state.shard_map.moving if m != _moving_range(ours)])

        await self.transition(unfenced, remove=True)
        await self.clear_target()


async def move(meta_members: dict[int, str], prefix: bytes, target: int,
               progress: Callable[[str], None] = lambda line: None,
               routers_timeout: float = ROUTERS_TIMEOUT_SECONDS, max_rate: float = 0) -> MoveOutcome:
    """Move `prefix` and its keys to group `target` (see the module's docstring). Bad input
    (an unknown, unhealthy or full group, a prefix that overlaps a move in progress or cuts a
    range of the map) raises MoveError or ShardMapError before anything changes; a failure
    later undoes the move, unless it had switched (then `recover` finishes it). `max_rate`:
    bytes of records copied per second at most, before the fence (0: no limit)."""
    if not prefix:
        raise MoveError("the empty prefix is the default group's; give a non-empty prefix")
    return await _move_range(meta_members, lambda state: (prefix, prefix_end(prefix)), target, False,
                             progress, routers_timeout, max_rate)


async def split(meta_members: dict[int, str], group: int, key: bytes, target: int,
                progress: Callable[[str], None] = lambda line: None,
                routers_timeout: float = ROUTERS_TIMEOUT_SECONDS, max_rate: float = 0) -> MoveOutcome:
    """Cut `group`'s range at `key`: the keys from `key` to the end of that range move to group
    `target`, as `move` moves a prefix, with the same refusals and recovery."""
    return await _move_range(meta_members, lambda state: split_range(state, group, key), target, True,
                             progress, routers_timeout, max_rate)


async def check_split(meta_members: dict[int, str], group: int, key: bytes) -> None:
    """Whether a split of `group` at `key` may go ahead, as far as it can be told with no target:
    MoveError if not."""
    meta = MetaClient(GroupClient(META_GROUP, meta_members))
    try:
        state = await meta.load()
        _check_no_overlap(state, *split_range(state, group, key))
    finally:
        await meta.client.close()


def split_range(state: MetaState, group: int, key: bytes) -> tuple[bytes, bytes]:
    """The range a split of `group` at `key` moves: [key, the end of the stretch of the map that
    holds it), or why there is none (MoveError)."""
    if group == META_GROUP or group not in state.groups:
        raise MoveError(f"there is no data group {group} (groups: {_data_groups(state)})")
    if not key:
        raise MoveError("give the key to split at: the empty key begins every range")
    start, end, owner = state.shard_map.stretch_of(key)
    if owner != group:
        raise MoveError(f"{key!r} is not in a range of group {group}: [{start!r}, {end!r}) is group {owner}'s")
    return key, end


def _data_groups(state: MetaState) -> str:
    return ", ".join(str(g) for g in sorted(state.groups) if g != META_GROUP)


async def _move_range(meta_members: dict[int, str], range_of: Callable[[MetaState], tuple[bytes, bytes]],
                      target: int, may_cut: bool, progress: Callable[[str], None],
                      routers_timeout: float, max_rate: float) -> MoveOutcome:
    """Move the range `range_of` gives (or raises why not) to `target`: checked, recorded, run."""
    meta = MetaClient(GroupClient(META_GROUP, meta_members))
    groups: dict[int, GroupClient] = {}
    try:
        state = await meta.load()
        groups = {group: GroupClient(group, {m.id: m.api_address for m in record.members})
                  for group, record in state.groups.items() if group != META_GROUP}
        start, end = range_of(state)
        record = await _checked_move(state, groups, start, end, target, may_cut)
        created = state.moves_revision
        txn = TxnRequest(compare=[Compare(key=MOVES_KEY, target=Compare.MOD, result=Compare.EQUAL,
                                          mod_revision=created)],
                         success=[RequestOp(request_put=PutRequest(key=MOVES_KEY, value=MoveList(
                             moves=sorted([*state.moves, record], key=lambda m: m.start)).SerializeToString()))])
        if not (await meta.client.call(ShardRequest(txn=txn), write=True)).txn.succeeded:
            raise MoveError("another move started meanwhile; look at `tessera shards list` and try again")
        mover = _Mover(meta, groups, record, routers_timeout, progress, max_rate)
        try:
            return await mover.run()
        except Exception as failure:
            if not mover.switched:
                try:
                    await mover.roll_back()
                    progress(f"the move was undone ({failure})")
                except Exception as undo_failure:  # the meta group is down, or it was undone already
                    log.warning("undoing the move of %r failed (%s); `tessera shards move --recover` "
                                "undoes it", start, undo_failure)
            raise
    finally:
        await asyncio.gather(meta.client.close(), *(client.close() for client in groups.values()))


async def _checked_move(state: MetaState, groups: dict[int, GroupClient], start: bytes, end: bytes,
                        target: int, may_cut: bool) -> MoveRecord:
    """The record of a move of [start, end) to `target`, or why it cannot be done (nothing changed).
    `may_cut`: whether it may cut a range of the map in two (a split), not only take whole ones."""
    if target == META_GROUP or target not in groups:
        raise MoveError(f"there is no data group {target} (groups: {_data_groups(state)})")
    _check_no_overlap(state, start, end)
    if not may_cut:
        state.shard_map.assign(start, target)  # ShardMapError: a prefix that cuts a range
    sources = sorted(state.shard_map.groups_of(start, _wire_end(end)))
    if len(sources) != 1:
        raise MoveError(f"keys under {start!r} live in groups {', '.join(map(str, sources))}; "
                        f"move a prefix that one group holds")
    source = sources[0]
    if source == target:
        raise MoveError(f"{start!r} is on group {target} already")
    for group in (source, target):
        health = await _group_state(group, groups[group])
        if not health.healthy:
            raise MoveError(f"group {group} is not healthy ({health.error}); nothing was changed")
    status = (await groups[target].call(ShardRequest(status={}), write=False)).status
    if any(alarm.alarm == NOSPACE for alarm in status.alarms):
        raise MoveError(f"group {target} is out of space (NOSPACE alarm); nothing was changed")
    return MoveRecord(start=start, end=end, source=source, target=target, phase=MoveRecord.COPYING,
                      started_unix_seconds=int(time.time()))


def _check_no_overlap(state: MetaState, start: bytes, end: bytes) -> None:
    for other in state.moves:
        if _ranges_overlap(start, end, other.start, other.end):
            raise MoveError(
                f"{start!r} overlaps the move of {other.start!r} from group {other.source} to group "
                f"{other.target}, in progress since {time.ctime(other.started_unix_seconds)} "
                f"(phase {MoveRecord.Phase.Name(other.phase)}); if its mover is gone, "
                f"`tessera shards move --recover` finishes or undoes it")


async def recover(meta_members: dict[int, str], progress: Callable[[str], None] = lambda line: None,
                  routers_timeout: float = ROUTERS_TIMEOUT_SECONDS) -> list[tuple[MoveRecord, str]]:
    """Finish or undo every move in progress whose mover is gone: each record, and what was done.
    Run while a mover still runs, it stops that move (its next step finds the record gone)."""
    meta = MetaClient(GroupClient(META_GROUP, meta_members))
    groups: dict[int, GroupClient] = {}
    outcomes = []
    try:
        state = await meta.load()
        groups = {group: GroupClient(group, {m.id: m.api_address for m in record.members})
                  for group, record in state.groups.items() if group != META_GROUP}
        for record in state.moves:
            mover = _Mover(meta, groups, record, routers_timeout, progress)
            if record.phase == MoveRecord.SWITCHED:
                await mover.finish()
                outcomes.append((record, f"finished: on group {record.target}"))
            else:
                await mover.roll_back()
                outcomes.append((record, f"undone: still on group {record.source}"))
            progress(f"{record.start!r}: {outcomes[-1][1]}")
        return outcomes
    finally:
        await asyncio.gather(meta.client.close(), *(client.close() for client in groups.values()))

