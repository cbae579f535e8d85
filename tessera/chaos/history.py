"""The record of a chaos run: every operation a client invoked, when, and what came back.

An operation is recorded twice over time: at invoke (kind, key, arguments, the
monotonic time in ns) and at completion (outcome, result, completion time). The
outcome is one of

- OK: the answer came back; `result` holds what the store said.
- FAILED: the store refused it, so it certainly did not take effect.
- UNKNOWN: a timeout or a lost connection: it may or may not have taken effect
  (its completion time is then infinite for the checkers).

Values written are unique in a run (`<client>-<sequence>`), so a value read
names the write that produced it. A history is saved as JSON lines (one
operation a line) so a failing run can be checked again without the cluster.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

OK = "ok"
FAILED = "failed"
UNKNOWN = "unknown"
OUTCOMES = (OK, FAILED, UNKNOWN)

# Kinds of operation. Single-key: read, put, cas, delete; multi-key: range (a prefix).
READ = "read"
PUT = "put"
CAS = "cas"
DELETE = "delete"
RANGE = "range"
KINDS = (READ, PUT, CAS, DELETE, RANGE)
WRITE_KINDS = (PUT, CAS, DELETE)


@dataclass
class Operation:
    """One client operation. Keys and values are text (the workload's keys are ASCII)."""

    id: int
    client: int
    kind: str
    key: str  # for RANGE: the prefix
    invoke_ns: int
    value: str | None = None  # PUT: the value written; CAS: the new value
    expected: str | None = None  # CAS: the value compared against (None: the key must be absent)
    serializable: bool = False  # a READ answered by one replica without consensus
    complete_ns: int | None = None  # None while pending; an UNKNOWN outcome keeps its give-up time here
    outcome: str | None = None
    # OK results. READ: `found` value (None: absent) and its mod revision; PUT: the previous value;
    # CAS: whether the comparison held; DELETE: how many keys went; RANGE: key -> (value, mod revision).
    found: str | None = None
    mod_revision: int = 0
    previous: str | None = None
    has_previous: bool = False  # PUT: whether the answer reported the previous value (prev_kv)
    succeeded: bool = False
    deleted: int = 0
    kvs: dict[str, list] = field(default_factory=dict)
    revision: int = 0  # the answer's header revision: for an OK write, the revision it took
    error: str = ""  # FAILED or UNKNOWN: what the client saw

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def return_ns(self) -> float:
        """When it is known to have taken effect by: never, for UNKNOWN (it may still happen)."""
        return math.inf if self.outcome == UNKNOWN else self.complete_ns

    @property
    def is_write(self) -> bool:
        return self.kind in WRITE_KINDS

    @property
    def changed(self) -> bool:
        """An OK write that made a change (and so an event and a new mod revision)."""
        if not self.ok:
            return False
        if self.kind == CAS:
            return self.succeeded
        if self.kind == DELETE:
            return self.deleted > 0
        return self.kind == PUT

    def describe(self) -> str:
        if self.kind == PUT:
            what = f"put {self.key}={self.value}"
        elif self.kind == CAS:
            what = f"cas {self.key} {self.expected}->{self.value}"
        elif self.kind == DELETE:
            what = f"delete {self.key}"
        elif self.kind == RANGE:
            what = f"range {self.key}*"
        else:
            what = f"{'serializable ' if self.serializable else ''}read {self.key}"
        if self.outcome == OK:
            if self.kind == READ:
                what += f" -> {self.found} (mod {self.mod_revision})"
            elif self.kind == PUT and self.has_previous:
                what += f" (was {self.previous})"
            elif self.kind == CAS:
                what += " -> succeeded" if self.succeeded else " -> compare failed"
            elif self.kind == DELETE:
                what += f" -> deleted {self.deleted}"
            elif self.kind == RANGE:
                what += " -> " + ", ".join(f"{key}={value}" for key, (value, _) in sorted(self.kvs.items()))
            what += f" @rev {self.revision}"
        else:
            what += f" -> {self.outcome}" + (f" ({self.error})" if self.error else "")
        end = "..." if self.complete_ns is None else f"{self.complete_ns / 1e6:.3f}"
        return f"#{self.id} c{self.client} [{self.invoke_ns / 1e6:.3f}, {end}] ms {what}"


@dataclass
class WatchEvent:
    revision: int
    key: str
    kind: str  # PUT or DELETE
    value: str | None


@dataclass
class WatchLog:
    """What one watcher of a prefix saw, across its reconnects.

    `start_revision` is the revision it first asked for; `covered_to` is the
    highest revision it is known to have seen everything up to (the last
    event's, or a progress notification's). `reconnects` counts resumed streams.
    """

    watcher: int
    prefix: str
    start_revision: int
    events: list[WatchEvent] = field(default_factory=list)
    covered_to: int = 0
    reconnects: int = 0


@dataclass
class History:
    operations: list[Operation] = field(default_factory=list)
    watches: list[WatchLog] = field(default_factory=list)
    # The committed changes of the workload's keys, read after the run by a watch from revision 1.
    changes: list[WatchEvent] = field(default_factory=list)
    final_revision: int = 0

    def save(self, path: Path) -> None:
        with open(path, "w") as file:
            for operation in self.operations:
                file.write(json.dumps({"operation": asdict(operation)}) + "\n")
            for watch in self.watches:
                file.write(json.dumps({"watch": asdict(watch)}) + "\n")
            file.write(json.dumps({"changes": [asdict(event) for event in self.changes],
                                   "final_revision": self.final_revision}) + "\n")

    @classmethod
    def load(cls, path: Path) -> History:
        history = cls()
        for line in Path(path).read_text().splitlines():
            record = json.loads(line)
            if "operation" in record:
                history.operations.append(Operation(**record["operation"]))
            elif "watch" in record:
                watch = record["watch"]
                watch["events"] = [WatchEvent(**event) for event in watch["events"]]
                history.watches.append(WatchLog(**watch))
            else:
                history.changes = [WatchEvent(**event) for event in record["changes"]]
                history.final_revision = record["final_revision"]
        return history
