"""Checkers over a recorded history: linearizability, revisions, watches, durability.

Linearizability (Wing & Gong's search with Lowe's memoization, as Porcupine and
Knossos do it): a key-value store is linearizable iff each key is (a register's
history is P-compositional), so the history is split by key and each key is
searched on its own. Operations are call and return entries in time order on a
linked list; the search linearizes a pending call whose step the model accepts,
lifts it out of the list, and backtracks at a return entry it could not reach.
A (set of linearized operations, model state) pair already explored is never
explored again. UNKNOWN operations return at infinity: the search may place them
anywhere after their invoke, or last, which is "never" for a register. With the
committed change log of the run (read back after it), unknown writes it shows
never happened are dropped first, as etcd's robustness tests do: each unknown
write left is a branch at every step of the search.
A range over a prefix is split into one read per key of that prefix: each is a
true constraint on its key (atomicity across keys is not checked).

When a key fails, the violation is narrowed to a small window: the earliest
time T by which the history cut at T (operations still pending at T count as
unknown) is already not linearizable, and the latest quiet point S before it
(no operation spans it) such that the operations between S and T fail from
every state the key could hold at S. That window is printed.

Every check is sound: it reports a violation only if no execution explains
what the clients saw. Serializable reads (one replica, no consensus) are not
linearizable by design; they are checked for values that were really written,
with their writes' revisions.
"""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from tessera.chaos.history import CAS, DELETE, PUT, RANGE, READ, UNKNOWN, History, Operation, WatchEvent

# Verdicts.
VALID = "valid"
INVALID = "invalid"
TIMED_OUT = "timed out"  # the search ran out of its budget: neither proven nor refuted

SEARCH_CHECK_EVERY_STEPS = 4096  # how often the search looks at the clock
WINDOW_CANDIDATE_STATES_MAX = 64  # initial states tried for a narrowed window; more: the window starts at 0


@dataclass
class Verdict:
    name: str
    verdict: str
    seconds: float = 0.0
    checked: int = 0  # operations (or events) the checker looked at
    problems: list[str] = field(default_factory=list)

    @property
    def valid(self) -> bool:
        return self.verdict == VALID


# --- the register model ----------------------------------------------------------------

_INVALID_STATE = object()


@dataclass
class _KeyOp:
    """One operation projected on one key: what the model steps."""

    index: int  # bit in the linearized set
    source: Operation
    kind: str  # READ, PUT, CAS, DELETE
    invoke_ns: int
    return_ns: float
    unknown: bool
    found: str | None = None  # READ


def _step(state, op: _KeyOp):
    """The register's next state after `op`, or _INVALID_STATE if `op` cannot happen in `state`."""
    source = op.source
    if op.kind == READ:
        return state if state == op.found else _INVALID_STATE
    if op.kind == PUT:
        if not op.unknown and source.has_previous and source.previous != state:
            return _INVALID_STATE
        return source.value
    if op.kind == CAS:
        holds = state == source.expected
        if op.unknown:
            return source.value if holds else state
        if holds != source.succeeded:
            return _INVALID_STATE
        return source.value if holds else state
    # DELETE
    if not op.unknown and (source.deleted > 0) != (state is not None):
        return _INVALID_STATE
    return None


def resolve_unknown_writes(history: History) -> set[int]:
    """Ids of UNKNOWN writes the committed change log shows never took effect.

    Only with a complete log (read after the run up to end markers written after every client
    stopped, so nothing of the run can still commit after it): a put or CAS whose unique value is
    not in the log did not happen; unknown deletes of a key did not happen if every delete event of
    that key is one an acknowledged delete made. Each one dropped is a branch the search is spared.
    """
    if not history.final_revision:
        return set()
    written = {(event.key, event.value) for event in history.changes if event.kind == "PUT"}
    delete_events = Counter(event.key for event in history.changes if event.kind == "DELETE")
    for operation in history.operations:
        if operation.kind == DELETE and operation.changed:
            delete_events[operation.key] -= 1
    return {operation.id for operation in history.operations if operation.outcome == UNKNOWN and (
        (operation.kind in (PUT, CAS) and (operation.key, operation.value) not in written)
        or (operation.kind == DELETE and delete_events[operation.key] <= 0))}


def project_by_key(operations: list[Operation], never_happened: set[int] = frozenset()) -> dict[str, list]:
    """Each key's operations; a RANGE contributes (operation, found value) reads to every key of its prefix."""
    by_key: dict[str, list] = defaultdict(list)
    ranges = []
    for operation in operations:
        if operation.id in never_happened:
            continue
        if operation.kind == RANGE:
            if operation.ok:
                ranges.append(operation)
        elif operation.kind == READ and operation.serializable:
            continue  # not linearizable by design: see check_serializable_reads
        elif operation.outcome == UNKNOWN and operation.kind == READ:
            continue  # an unseen read constrains nothing
        elif operation.outcome in ("ok", UNKNOWN):
            by_key[operation.key].append(operation)
    for operation in ranges:
        # Every key written under the prefix, and any the range found (one nobody wrote fails its search).
        for key in {key for key in by_key if key.startswith(operation.key)} | set(operation.kvs):
            value = operation.kvs.get(key, [None, 0])[0]
            by_key[key].append((operation, value))
    return by_key


def _key_ops(items: list) -> list[_KeyOp]:
    ops = []
    for item in sorted(items, key=lambda item: (item[0] if isinstance(item, tuple) else item).invoke_ns):
        if isinstance(item, tuple):
            operation, found = item
            kind = READ
        else:
            operation, found = item, item.found
            kind = operation.kind
        ops.append(_KeyOp(len(ops), operation, kind, operation.invoke_ns, operation.return_ns,
                          operation.outcome == UNKNOWN, found))
    return ops


# --- the search ------------------------------------------------------------------------


class _Entry:
    __slots__ = ("op", "is_call", "match", "prev", "next")

    def __init__(self, op: _KeyOp | None, is_call: bool):
        self.op = op
        self.is_call = is_call
        self.match: _Entry | None = None
        self.prev: _Entry | None = None
        self.next: _Entry | None = None


class SearchTimeout(Exception):
    pass


def _build_entries(ops: list[_KeyOp]) -> _Entry:
    """The doubly linked list of call and return entries in time order; returns its head sentinel."""
    entries = []
    for op in ops:
        call, ret = _Entry(op, True), _Entry(op, False)
        call.match = ret
        # At equal times calls go first: the two operations then count as concurrent (the lenient reading).
        entries.append((op.invoke_ns, 0, call))
        entries.append((op.return_ns, 1, ret))
    entries.sort(key=lambda item: (item[0], item[1]))
    head = _Entry(None, False)
    previous = head
    for _, _, entry in entries:
        previous.next = entry
        entry.prev = previous
        previous = entry
    return head


def _lift(call: _Entry) -> None:
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret = call.match
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Entry) -> None:
    ret = call.match
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


def linearizable(ops: list[_KeyOp], initial_state=None, deadline: float = math.inf) -> bool:
    """Whether the operations have a linearization from `initial_state`; SearchTimeout past `deadline`."""
    head = _build_entries(ops)
    state = initial_state
    linearized = 0
    explored: set[tuple[int, object]] = set()
    calls: list[tuple[_Entry, object]] = []
    entry = head.next
    steps = 0
    while head.next is not None:
        steps += 1
        if steps % SEARCH_CHECK_EVERY_STEPS == 0 and time.monotonic() > deadline:
            raise SearchTimeout()
        if entry.is_call:
            new_state = _step(state, entry.op)
            if new_state is not _INVALID_STATE:
                new_linearized = linearized | (1 << entry.op.index)
                if (new_linearized, new_state) not in explored:
                    explored.add((new_linearized, new_state))
                    calls.append((entry, state))
                    state, linearized = new_state, new_linearized
                    _lift(entry)
                    entry = head.next
                    continue
            entry = entry.next
        else:
            if not calls:
                return False
            entry, state = calls.pop()
            linearized &= ~(1 << entry.op.index)
            _unlift(entry)
            entry = entry.next
    return True


def _cut_at(ops: list[_KeyOp], cut_ns: float) -> list[_KeyOp]:
    """The history as it stood at `cut_ns`: later invokes gone, operations still pending unknown."""
    cut = []
    for op in ops:
        if op.invoke_ns > cut_ns:
            continue
        if op.return_ns > cut_ns:
            if op.kind == READ:
                continue  # a read not yet answered constrains nothing
            op = _KeyOp(0, op.source, op.kind, op.invoke_ns, math.inf, True, op.found)
        else:
            op = _KeyOp(0, op.source, op.kind, op.invoke_ns, op.return_ns, op.unknown, op.found)
        op.index = len(cut)
        cut.append(op)
    return cut


def _reindexed(ops: list[_KeyOp]) -> list[_KeyOp]:
    return [_KeyOp(index, op.source, op.kind, op.invoke_ns, op.return_ns, op.unknown, op.found)
            for index, op in enumerate(ops)]


def _states_at_quiet_point(before: list[_KeyOp]) -> dict:
    """Every value the key may hold once `before` (all answered or unknown) is over, each with the
    writes that may have left it: the last write in any linearization is one that no answered write
    began after the end of. No answered write at all: the key may still be absent."""
    def sets_state(op: _KeyOp) -> bool:
        return op.kind in (PUT, DELETE) or (op.kind == CAS and (op.unknown or op.source.succeeded))

    writes = [op for op in before if sets_state(op)]
    answered = [op for op in writes if not op.unknown]
    states: dict = {}
    if not answered:
        states[None] = []
    else:
        last = max(answered, key=lambda op: op.invoke_ns)
        writes = [op for op in writes if op is last or op.return_ns >= last.invoke_ns]
    for op in writes:
        states.setdefault(op.source.value if op.kind in (PUT, CAS) else None, []).append(op)
    return states


def smallest_window(ops: list[_KeyOp], deadline: float = math.inf) -> tuple[list[_KeyOp], dict]:
    """A short stretch of a non-linearizable key history that is not linearizable from any state the
    key may have held at its start; with those states (value -> the writes that may have left it)."""
    # The end: the earliest cut that already fails (failing is monotone in the cut time).
    cuts = sorted({op.return_ns for op in ops if op.return_ns != math.inf})
    low, high = 0, len(cuts) - 1
    if not cuts or linearizable(_cut_at(ops, cuts[high]), None, deadline):
        end_ns = math.inf
    else:
        while low < high:
            middle = (low + high) // 2
            if linearizable(_cut_at(ops, cuts[middle]), None, deadline):
                low = middle + 1
            else:
                high = middle
        end_ns = cuts[low]
    window_ops = _cut_at(ops, end_ns)
    # The start: the latest quiet point (no answered operation spans it) from which the stretch fails
    # whatever the key held there. Unknown operations from before it stay, as may-or-may-not.
    finished_by = -math.inf
    quiet_points = []  # indexes into window_ops where a stretch may start
    for index, op in enumerate(window_ops):
        if index and op.invoke_ns > finished_by:
            quiet_points.append(index)
        if not op.unknown:
            finished_by = max(finished_by, op.return_ns)
    for start in reversed(quiet_points):
        before, stretch = window_ops[:start], window_ops[start:]
        states = _states_at_quiet_point(before)
        if len(states) > WINDOW_CANDIDATE_STATES_MAX:
            break
        candidate = _reindexed([op for op in before if op.unknown] + stretch)
        if not any(linearizable(candidate, state, deadline) for state in states):
            return candidate, states
    return window_ops, {None: []}


def check_linearizability(history: History, budget_seconds: float = 60.0) -> Verdict:
    """Each key's history, searched separately, within one overall time budget."""
    started = time.monotonic()
    verdict = Verdict("linearizability", VALID)
    by_key = sorted(project_by_key(history.operations, resolve_unknown_writes(history)).items())
    for number, (key, items) in enumerate(by_key):
        # Each key gets an equal share of what is left, so one hard key cannot starve the others.
        deadline = time.monotonic() + (started + budget_seconds - time.monotonic()) / (len(by_key) - number)
        ops = _key_ops(items)
        verdict.checked += len(ops)
        try:
            if linearizable(ops, None, deadline):
                continue
        except SearchTimeout:
            verdict.verdict = TIMED_OUT if verdict.verdict == VALID else verdict.verdict
            verdict.problems.append(f"key {key}: no answer within its share of the {budget_seconds:g} s budget")
            continue
        try:
            window, states = smallest_window(ops, deadline)
        except SearchTimeout:  # proven invalid; only the narrowing ran out of time
            window, states = ops, {None: []}
        verdict.verdict = INVALID
        lines = [f"key {key}: not linearizable; the smallest failing window ({len(window)} operations), "
                 f"from any value the key may have held before it:"]
        for state, setters in states.items():
            lines.append(f"  held {state}" + (f", left by {setters[0].source.describe()}" if setters else
                                              " (absent: nothing written yet)"))
        lines += [f"    {op.source.describe()}" + (f" [reads {key} -> {op.found}]" if op.source.kind == RANGE else "")
                  for op in window]
        verdict.problems.append("\n".join(lines))
    verdict.seconds = time.monotonic() - started
    return verdict


# --- revisions -------------------------------------------------------------------------


def _real_time_inversions(earlier: list[Operation], writes: list[Operation], limit: int = 5) -> list[str]:
    """Writes that took a revision not above that of an operation answered before they were invoked."""
    problems = []
    by_completion = sorted(earlier, key=lambda op: op.complete_ns)
    highest: Operation | None = None
    position = 0
    for write in sorted(writes, key=lambda op: op.invoke_ns):
        while position < len(by_completion) and by_completion[position].complete_ns < write.invoke_ns:
            candidate = by_completion[position]
            if highest is None or candidate.revision > highest.revision:
                highest = candidate
            position += 1
        if highest is not None and highest.revision >= write.revision:
            problems.append(f"{write.describe()} took revision {write.revision}, not above the "
                            f"{highest.revision} of {highest.describe()}, answered before it was invoked")
            if len(problems) >= limit:
                break
    return problems


def check_revisions(history: History) -> Verdict:
    """Per key, mod revisions increase in real-time order; a write's revision exceeds every revision
    the router answered before the write was invoked (ARCHITECTURE decision 3); a read's mod revision
    is the revision its value was written at."""
    started = time.monotonic()
    verdict = Verdict("revisions", VALID)
    changes = [op for op in history.operations if op.changed]
    answered = [op for op in history.operations if op.ok and not op.serializable]
    verdict.checked = len(answered)
    by_key: dict[str, list[Operation]] = defaultdict(list)
    for op in changes:
        by_key[op.key].append(op)
    for key, writes in sorted(by_key.items()):
        verdict.problems += _real_time_inversions(writes, writes)
        seen: dict[int, Operation] = {}
        for write in writes:
            if write.revision in seen:
                verdict.problems.append(f"{write.describe()} and {seen[write.revision].describe()} "
                                        f"took the same revision")
            seen[write.revision] = write
    verdict.problems += _real_time_inversions(answered, changes)
    writers = {op.value: op for op in history.operations if op.kind in (PUT, CAS)}
    for read in history.operations:
        if read.kind == READ and read.ok:
            found = [(read.found, read.mod_revision)]
        elif read.kind == RANGE and read.ok:
            found = [tuple(value) for value in read.kvs.values()]
        else:
            continue
        for value, mod_revision in found:
            writer = writers.get(value)
            if value is None:
                if mod_revision:
                    verdict.problems.append(f"{read.describe()}: no value but mod revision {mod_revision}")
            elif writer is not None and writer.changed and writer.revision != mod_revision:
                verdict.problems.append(f"{read.describe()}: {value} has mod revision {mod_revision}, "
                                        f"but {writer.describe()} wrote it at {writer.revision}")
            if read.ok and mod_revision > read.revision:
                verdict.problems.append(f"{read.describe()}: mod revision {mod_revision} above the answer's "
                                        f"revision {read.revision}")
    if verdict.problems:
        verdict.verdict = INVALID
    verdict.seconds = time.monotonic() - started
    return verdict


def check_serializable_reads(history: History) -> Verdict:
    """A serializable read sees some state that was committed: each value it returns was written by a
    write that did not fail, at that write's revision. (Staleness is allowed.)"""
    started = time.monotonic()
    verdict = Verdict("serializable reads", VALID)
    writers = {op.value: op for op in history.operations if op.kind in (PUT, CAS)}
    committed = {(event.key, event.value): event.revision for event in history.changes if event.kind == PUT}
    for read in history.operations:
        if not (read.kind == READ and read.serializable and read.ok):
            continue
        verdict.checked += 1
        if read.found is None:
            continue
        writer = writers.get(read.found)
        if writer is None or writer.outcome == "failed" or writer.key != read.key:
            verdict.problems.append(f"{read.describe()}: no write of this value to this key could have happened")
        elif committed and committed.get((read.key, read.found)) != read.mod_revision:
            verdict.problems.append(f"{read.describe()}: the committed change log has this value at "
                                    f"revision {committed.get((read.key, read.found))}")
    if verdict.problems:
        verdict.verdict = INVALID
    verdict.seconds = time.monotonic() - started
    return verdict


# --- watches and durability ------------------------------------------------------------


def _event_text(event: WatchEvent) -> str:
    return f"{event.kind} {event.key}={event.value} @{event.revision}"


def check_watches(history: History, problems_per_watcher_max: int = 5) -> Verdict:
    """Each watcher saw, for every revision it covered, exactly the committed changes of its prefix:
    none missing (a gap), none twice, none invented, in revision order."""
    started = time.monotonic()
    verdict = Verdict("watch", VALID)
    for watch in history.watches:
        problems = []
        verdict.checked += len(watch.events)
        previous = None
        for event in watch.events:
            if previous is not None and (event.revision, event.key) <= (previous.revision, previous.key):
                what = "a duplicated event" if (event.revision, event.key) == (previous.revision, previous.key) \
                    else "an event out of revision order"
                problems.append(f"{what}: {_event_text(event)} after {_event_text(previous)}")
            previous = event
        expected = {(event.revision, event.key): event for event in history.changes
                    if event.key.startswith(watch.prefix)
                    and watch.start_revision <= event.revision <= watch.covered_to}
        seen = {(event.revision, event.key): event for event in watch.events}
        for position in sorted(expected.keys() - seen.keys()):
            problems.append(f"missed {_event_text(expected[position])} (a gap)")
        for position in sorted(seen.keys() - expected.keys()):
            problems.append(f"saw {_event_text(seen[position])}, which is no committed change")
        for position in sorted(seen.keys() & expected.keys()):
            if (seen[position].kind, seen[position].value) != (expected[position].kind, expected[position].value):
                problems.append(f"saw {_event_text(seen[position])}, committed as {_event_text(expected[position])}")
        if problems:
            verdict.problems.append(
                f"watcher {watch.watcher} of {watch.prefix} (from revision {watch.start_revision}, covered to "
                f"{watch.covered_to}, {watch.reconnects} reconnects): " + "; ".join(problems[:problems_per_watcher_max])
                + (f"; and {len(problems) - problems_per_watcher_max} more" if len(problems) > problems_per_watcher_max
                   else ""))
    if verdict.problems:
        verdict.verdict = INVALID
    verdict.seconds = time.monotonic() - started
    return verdict


def check_durability(history: History, problems_max: int = 20) -> Verdict:
    """Every acknowledged change is in the committed change log at its revision; the log holds no
    change nobody could have made (a value never written, or written by a write that failed)."""
    started = time.monotonic()
    verdict = Verdict("durability", VALID)
    log = {(event.revision, event.key): event for event in history.changes}
    previous = None
    for event in history.changes:
        if previous is not None and (event.revision, event.key) <= (previous.revision, previous.key):
            verdict.problems.append(f"the change log is out of order: {_event_text(event)} after "
                                    f"{_event_text(previous)}")
        previous = event
    writers = {op.value: op for op in history.operations if op.kind in (PUT, CAS)}
    for op in history.operations:
        if not op.changed:
            continue
        verdict.checked += 1
        event = log.get((op.revision, op.key))
        expected = ("PUT", op.value) if op.kind in (PUT, CAS) else ("DELETE", None)
        if event is None or (event.kind, event.value) != expected:
            found = "nothing" if event is None else _event_text(event)
            verdict.problems.append(f"acknowledged {op.describe()} is lost: the log has {found} there")
    for event in history.changes:
        if event.kind != "PUT":
            continue
        writer = writers.get(event.value)
        if writer is None or writer.key != event.key or writer.outcome == "failed":
            what = "a value never written to it" if writer is None or writer.key != event.key \
                else f"the value of {writer.describe()}"
            verdict.problems.append(f"the log has {_event_text(event)}: {what}")
    if len(verdict.problems) > problems_max:
        verdict.problems[problems_max:] = [f"and {len(verdict.problems) - problems_max} more"]
    if verdict.problems:
        verdict.verdict = INVALID
    verdict.seconds = time.monotonic() - started
    return verdict


def check_all(history: History, budget_seconds: float = 60.0) -> list[Verdict]:
    return [
        check_linearizability(history, budget_seconds),
        check_revisions(history),
        check_serializable_reads(history),
        check_watches(history),
        check_durability(history),
    ]
