"""A differential tester: one seeded sequence of etcd v3 requests on two endpoints, answers compared.

    stats = asyncio.run(run_sequence(seed, reference_address, endpoint_address))

raises Difference (an AssertionError) at the first step whose normalized
answers differ, with the seed, the step, the request and both answers.

What is compared, after normalization:
- Every KV answer (Range, Put, DeleteRange, Txn, Compact), or the error as
  (gRPC status code, details).
- Watches: created, events (with prev_kv when asked), cancellations, in order;
  response boundaries are ignored (a server may batch events differently).
- Header cluster_id, member_id and raft_term are dropped.
- Revisions go through a mapping built from the sequence itself: the k-th write
  that changed something (a put, a delete that deleted, a txn that did either)
  has revision "R<k>" on each side, and the store's revision before the first
  step is "base". create/mod/compact revisions in answers are written that way;
  revisions in requests (range revision, min/max filters, compare targets,
  compact, watch start) are chosen as such names and translated per side.
  A revision that is none of these shows as "?<number>", so it differs.
- The header revision of a read (or of a write that changed nothing, or of a
  compact) is compared only in single-group sequences: a sharded store answers
  a read with its group's revision, which need not be the newest one overall.
- Among range results sorted by something other than the key, keys with equal
  sort values are put in key order: etcd's order for ties is unspecified.

Keys: a small set over three raft groups of Tessera's test shard map
(/registry/pods/ -> 2, /registry/events/ -> 3, everything else -> 1), under a
marker unique to the run, so keys collide within a sequence but never with
other tests' keys. A sequence is either "multi" (keys in all groups; ranges
and watches span groups, every txn stays within one group) or "group<N>"
(keys of group N only). Txns that span groups are a separate case (Tessera
refuses them) and are never generated here.

Both endpoints may be shared with other tests: they must run one at a time,
and each leaves no key behind (the sequence deletes its keys at the end).
"""

from __future__ import annotations

import asyncio
import os
import pprint
import random
from dataclasses import dataclass, field

import grpc

from e2e_util import group_of
from tessera.api.rpc_pb2 import (
    Compare,
    CompactionRequest,
    CompactionResponse,
    DeleteRangeRequest,
    DeleteRangeResponse,
    PutRequest,
    PutResponse,
    RangeRequest,
    RangeResponse,
    RequestOp,
    TxnRequest,
    TxnResponse,
    WatchCreateRequest,
    WatchRequest,
    WatchResponse,
)

MODES = ("multi", "group2", "multi", "group3", "group1")
DEFAULT_STEPS = 120
CALL_SECONDS = 10.0
WATCH_SECONDS = 10.0
UNKNOWN_LEASE = 0x5EED1EA5E  # never granted: puts with it fail with "requested lease not found"

UNARY = {
    "Range": ("/etcdserverpb.KV/Range", RangeRequest, RangeResponse),
    "Put": ("/etcdserverpb.KV/Put", PutRequest, PutResponse),
    "DeleteRange": ("/etcdserverpb.KV/DeleteRange", DeleteRangeRequest, DeleteRangeResponse),
    "Txn": ("/etcdserverpb.KV/Txn", TxnRequest, TxnResponse),
    "Compact": ("/etcdserverpb.KV/Compact", CompactionRequest, CompactionResponse),
}
WATCH_METHOD = "/etcdserverpb.Watch/Watch"
REVISION_FIELDS = {"create_revision", "mod_revision", "compact_revision"}
DROPPED_HEADER_FIELDS = {"cluster_id", "member_id", "raft_term"}


class Difference(AssertionError):
    """The two endpoints answered one step differently."""


def mode_of(seed: int) -> str:
    return MODES[seed % len(MODES)]


def prefix_end(prefix: bytes) -> bytes:
    """etcd's range_end for "every key starting with prefix"."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


# ------------------------------------------------------------------ client


class Endpoint:
    """grpcio (asyncio) calls to one etcd v3 endpoint; methods are called by path.

    transform() and transform_watch() see every answer before the tester does;
    the tester's own tests override them to make one side deviate on purpose.
    """

    def __init__(self, name: str, address: str):
        self.name = name
        self.address = address
        self.channel = grpc.aio.insecure_channel(address)
        self._unary = {
            method: self.channel.unary_unary(path, request_serializer=request.SerializeToString,
                                             response_deserializer=response.FromString)
            for method, (path, request, response) in UNARY.items()
        }
        self._watch = self.channel.stream_stream(WATCH_METHOD, request_serializer=WatchRequest.SerializeToString,
                                                 response_deserializer=WatchResponse.FromString)

    def __repr__(self) -> str:
        return f"{self.name} ({self.address})"

    async def call(self, method: str, request) -> tuple:
        """("ok", response) or ("error", status code name, details)."""
        try:
            result = ("ok", await self._unary[method](request, timeout=CALL_SECONDS))
        except grpc.aio.AioRpcError as error:
            result = ("error", error.code().name, error.details())
        return self.transform(method, request, result)

    def transform(self, method: str, request, result: tuple) -> tuple:
        return result

    def transform_watch(self, response: WatchResponse) -> WatchResponse | None:
        return response

    def watch(self) -> WatchStream:
        return WatchStream(self)

    async def close(self) -> None:
        await self.channel.close()


class WatchStream:
    """One Watch stream; a task collects every response into .responses."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.responses: list[WatchResponse] = []
        self.error: tuple | None = None
        self.ended = False
        self._requests: asyncio.Queue = asyncio.Queue()
        self._closing = False
        self._changed = asyncio.Event()
        self._call = endpoint._watch(self._outgoing())
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _outgoing(self):
        while True:
            request = await self._requests.get()
            if request is None:
                return
            yield request

    async def _read(self) -> None:
        try:
            async for response in self._call:
                response = self.endpoint.transform_watch(response)
                if response is not None:
                    self.responses.append(response)
                    self._changed.set()
        except grpc.aio.AioRpcError as error:
            if not self._closing:
                self.error = ("error", error.code().name, error.details())
        finally:
            self.ended = True
            self._changed.set()

    async def send(self, request: WatchRequest) -> None:
        await self._requests.put(request)

    async def wait_for(self, predicate, timeout: float = WATCH_SECONDS) -> bool:
        """Until predicate(responses) holds (True), or the stream ends or time runs out (False)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self.responses):
            if self.ended:
                return False
            self._changed.clear()
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                return predicate(self.responses)
        return True

    async def close(self) -> None:
        self._closing = True
        self._call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


# ------------------------------------------------------------------ revisions


class Side:
    """One endpoint's view of the sequence: its write revisions and their names."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.base: int | None = None
        self.revisions: list[int] = []  # of the writes that changed something, in order
        self.names: dict[int, str] = {}

    def set_base(self, revision: int) -> None:
        self.base = revision
        self.names[revision] = "base"

    def record_write(self, revision: int) -> None:
        if revision not in self.names:
            self.names[revision] = f"R{len(self.revisions)}"
            self.revisions.append(revision)

    @property
    def current(self) -> int:
        return self.revisions[-1] if self.revisions else self.base

    def resolve(self, symbol) -> int:
        """A request's revision: 0, ("R", k) (k = -1: base), or ("F", d): d past the newest."""
        if symbol == 0 or symbol is None:
            return 0
        kind, number = symbol
        if kind == "R":
            return self.base if number < 0 else self.revisions[number]
        if kind == "F":
            return self.current + number
        raise ValueError(symbol)

    def name(self, revision: int):
        if revision == 0:
            return 0
        return self.names.get(revision, f"?{revision}")


# ------------------------------------------------------------------ requests

SORT_ORDERS = RangeRequest.SortOrder
SORT_TARGETS = RangeRequest.SortTarget


def build(op: dict, side: Side) -> tuple[str, object]:
    """(method, request message) of an op, with revisions translated for this side."""
    kind = op["op"]
    if kind == "put":
        return "Put", PutRequest(key=op["key"], value=op.get("value", b""), prev_kv=op.get("prev_kv", False),
                                 ignore_value=op.get("ignore_value", False), lease=op.get("lease", 0),
                                 ignore_lease=op.get("ignore_lease", False))
    if kind == "range":
        return "Range", RangeRequest(
            key=op["key"], range_end=op.get("range_end", b""), limit=op.get("limit", 0),
            revision=side.resolve(op.get("revision", 0)),
            sort_order=SORT_ORDERS.Value(op.get("sort_order", "NONE")),
            sort_target=SORT_TARGETS.Value(op.get("sort_target", "KEY")),
            keys_only=op.get("keys_only", False), count_only=op.get("count_only", False),
            min_mod_revision=side.resolve(op.get("min_mod", 0)),
            max_mod_revision=side.resolve(op.get("max_mod", 0)),
            min_create_revision=side.resolve(op.get("min_create", 0)),
            max_create_revision=side.resolve(op.get("max_create", 0)),
        )
    if kind == "delete":
        return "DeleteRange", DeleteRangeRequest(key=op["key"], range_end=op.get("range_end", b""),
                                                 prev_kv=op.get("prev_kv", False))
    if kind == "txn":
        return "Txn", _build_txn(op, side)
    if kind == "compact":
        return "Compact", CompactionRequest(revision=side.resolve(op["revision"]), physical=op.get("physical", False))
    raise ValueError(op)


def _build_txn(op: dict, side: Side) -> TxnRequest:
    request = TxnRequest()
    for compare in op.get("compare", ()):
        message = Compare(key=compare["key"], range_end=compare.get("range_end", b""),
                          result=Compare.CompareResult.Value(compare["result"]),
                          target=Compare.CompareTarget.Value(compare["target"]))
        target, value = compare["target"], compare["value"]
        if target == "VERSION":
            message.version = value
        elif target == "CREATE":
            message.create_revision = side.resolve(value)
        elif target == "MOD":
            message.mod_revision = side.resolve(value)
        elif target == "VALUE":
            message.value = value
        else:
            message.lease = value
        request.compare.append(message)
    for branch in ("success", "failure"):
        for sub in op.get(branch, ()):
            method, message = build(sub, side)
            field_name = {"Put": "request_put", "Range": "request_range", "DeleteRange": "request_delete_range",
                          "Txn": "request_txn"}[method]
            getattr(request, branch).append(RequestOp(**{field_name: message}))
    return request


def changed_something(method: str, response) -> bool:
    """Whether a successful answer made a new revision (etcd makes one exactly then)."""
    if method == "Put":
        return True
    if method == "DeleteRange":
        return response.deleted > 0
    if method == "Txn":
        return any(_op_changed(op) for op in response.responses)
    return False


def _op_changed(response_op) -> bool:
    which = response_op.WhichOneof("response")
    if which == "response_put":
        return True
    if which == "response_delete_range":
        return response_op.response_delete_range.deleted > 0
    if which == "response_txn":
        return any(_op_changed(op) for op in response_op.response_txn.responses)
    return False


# ------------------------------------------------------------------ normalization


def normalize_message(message, side: Side, strict_header: bool):
    """A message as nested dicts/lists; revisions named, ids and terms dropped."""
    out = {}
    for descriptor, value in message.ListFields():
        name = descriptor.name
        sub_type = descriptor.message_type
        if sub_type is not None and sub_type.full_name == "etcdserverpb.ResponseHeader":
            header = {}
            for header_field, header_value in value.ListFields():
                if header_field.name in DROPPED_HEADER_FIELDS:
                    continue
                header[header_field.name] = side.name(header_value) if strict_header else "*"
            out[name] = header
        elif descriptor.is_repeated:
            out[name] = [normalize_message(item, side, strict_header) if sub_type else item for item in value]
        elif sub_type is not None:
            out[name] = normalize_message(value, side, strict_header)
        elif name in REVISION_FIELDS:
            out[name] = side.name(value)
        elif descriptor.enum_type is not None:
            out[name] = descriptor.enum_type.values_by_number[value].name
        else:
            out[name] = value
    return out


def canonical_ties(request: RangeRequest, answer: dict) -> None:
    """Key order among kvs with equal sort values (etcd leaves it unspecified)."""
    target = SORT_TARGETS.Name(request.sort_target)
    if target == "KEY" or "kvs" not in answer:
        return
    field_name = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision", "VALUE": "value"}[target]
    kvs, ordered, start = answer["kvs"], [], 0
    while start < len(kvs):
        end = start
        while end < len(kvs) and kvs[end].get(field_name) == kvs[start].get(field_name):
            end += 1
        ordered.extend(sorted(kvs[start:end], key=lambda kv: kv["key"]))
        start = end
    answer["kvs"] = ordered


def _canonical_txn(request: TxnRequest, answer: dict) -> None:
    branch = request.success if answer.get("succeeded") else request.failure
    for request_op, response_op in zip(branch, answer.get("responses", ())):
        if request_op.WhichOneof("request") == "request_range" and "response_range" in response_op:
            canonical_ties(request_op.request_range, response_op["response_range"])
        elif request_op.WhichOneof("request") == "request_txn" and "response_txn" in response_op:
            _canonical_txn(request_op.request_txn, response_op["response_txn"])


def normalize_result(method: str, request, result: tuple, side: Side, strict_header: bool):
    if result[0] != "ok":
        return result
    answer = normalize_message(result[1], side, strict_header)
    if method == "Range":
        canonical_ties(request, answer)
    elif method == "Txn":
        _canonical_txn(request, answer)
    return ("ok", answer)


def normalize_watch(responses: list[WatchResponse], error, side: Side) -> list:
    """Created / events / cancellations in order, response boundaries and headers ignored."""
    items = []
    for response in responses:
        if response.created:
            items.append("created")
        for event in response.events:
            items.append(("event", normalize_message(event, side, strict_header=True)))
        if response.canceled:
            items.append(("canceled", side.name(response.compact_revision), response.cancel_reason))
        elif response.compact_revision:
            items.append(("compacted", side.name(response.compact_revision)))
    if error is not None:
        items.append(error)
    return items


# ------------------------------------------------------------------ keys


@dataclass
class KeySet:
    marker: bytes
    mode: str
    keys: list[bytes] = field(default_factory=list)
    # Ranges usable anywhere in the mode: (key, range_end) pairs.
    ranges: list[tuple[bytes, bytes]] = field(default_factory=list)
    # Per group: ranges (and keys) that stay within that group.
    group_keys: dict[int, list[bytes]] = field(default_factory=dict)
    group_ranges: dict[int, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    prefixes: list[bytes] = field(default_factory=list)


def key_set(mode: str, marker: bytes) -> KeySet:
    """The sequence's keys. The marker starts with "k", so the group-1 prefix under
    /registry/ sorts between /registry/events/ (group 3) and /registry/pods/ (group 2)."""
    assert marker[:1] == b"k"
    events = b"/registry/events/" + marker + b"/"
    middle = b"/registry/" + marker + b"/"
    pods = b"/registry/pods/" + marker + b"/"
    top = marker + b"/"
    names = [b"a", b"b", b"b/c", b"c"]
    if mode == "multi":
        dirs = {events: names[:3], middle: names[:1], pods: names, top: names[:2]}
    else:
        dirs = {{"group1": top, "group2": pods, "group3": events}[mode]: names + [b"d"]}
    result = KeySet(marker=marker, mode=mode, prefixes=[events, middle, pods, top])
    result.keys = sorted(prefix + name for prefix, members in dirs.items() for name in members)
    # Ranges within one directory (so within one group).
    local = []
    for prefix, members in dirs.items():
        local.append((prefix, prefix_end(prefix)))
        local.append((prefix + b"b", prefix_end(prefix + b"b")))
        ordered = sorted(prefix + name for name in members)
        for i, low in enumerate(ordered):
            local.append((low, b""))
            for high in ordered[i + 1:]:
                local.append((low, high))
    for low, high in local:
        result.group_ranges.setdefault(group_of(low), []).append((low, high))
    for key in result.keys:
        result.group_keys.setdefault(group_of(key), []).append(key)
    result.ranges = list(local)
    if mode == "multi":
        # Ranges that cross groups, in key order: events..pods, /registry/ and from-key.
        for i, low in enumerate(result.keys):
            for high in result.keys[i + 1:]:
                if group_of(low) != group_of(high):
                    result.ranges.append((low, high))
            result.ranges.append((low, b"\0"))
        result.ranges.append((b"/registry/", prefix_end(b"/registry/")))
        result.ranges.append((events, prefix_end(top)))
    return result


# ------------------------------------------------------------------ generator


class SequenceGenerator:
    """Seeded random ops; revisions are symbolic (see Side.resolve).

    Choices depend only on the seed and on what the sequence did so far as
    seen on the reference side (how many writes changed something, the last
    successful compaction), never on the marker.
    """

    def __init__(self, seed: int, keys: KeySet, steps: int = DEFAULT_STEPS):
        self.rng = random.Random(seed)
        self.keys = keys
        self.steps = steps
        self.values = [b"a", b"b", b"c", b"zz", b"a", b"b", b""]
        self.writes = 0            # writes that changed something so far (reference side)
        self.compacted = None      # index k of the last successful compaction at R<k>

    # revisions -----------------------------------------------------------
    def _valid_rev(self):
        low = self.compacted if self.compacted is not None else -1
        if self.writes == 0 or self.rng.random() < 0.1:
            return ("R", low) if low >= 0 else ("R", -1)
        return ("R", self.rng.randint(max(low, 0), self.writes - 1))

    def read_rev(self):
        r = self.rng.random()
        if r < 0.45:
            return 0
        if r < 0.52 and self.writes:  # future: only once the sequence wrote (see Runner.start)
            return ("F", self.rng.randint(1, 3))
        if r < 0.6 and self.compacted is not None:
            return ("R", self.rng.randint(-1, self.compacted - 1))
        return self._valid_rev()

    def any_rev(self):
        """For filters and compares: any named revision, valid or not."""
        if self.writes == 0 or self.rng.random() < 0.15:
            return 0
        return ("R", self.rng.randint(-1, self.writes - 1))

    # ops -----------------------------------------------------------------
    def _range(self, group=None):
        if group is None:
            return self.rng.choice(self.keys.ranges)
        return self.rng.choice(self.keys.group_ranges[group])

    def _key(self, group=None):
        return self.rng.choice(self.keys.keys if group is None else self.keys.group_keys[group])

    def put(self, group=None):
        op = {"op": "put", "key": self._key(group), "value": self.rng.choice(self.values),
              "prev_kv": self.rng.random() < 0.5}
        r = self.rng.random()
        if r < 0.08:
            op["ignore_value"] = True
            if self.rng.random() < 0.8:
                op["value"] = b""
        elif r < 0.12:
            op["ignore_lease"] = True
        elif r < 0.14:
            op["lease"] = UNKNOWN_LEASE
        return op

    def range(self, group=None):
        key, end = self._range(group)
        op = {"op": "range", "key": key, "range_end": end, "revision": self.read_rev()}
        if self.rng.random() < 0.4:
            op["sort_order"] = self.rng.choice(["NONE", "ASCEND", "DESCEND"])
            op["sort_target"] = self.rng.choice(["KEY", "VERSION", "CREATE", "MOD", "VALUE"])
        sorted_by_key = op.get("sort_target", "KEY") == "KEY"
        if self.rng.random() < 0.3 and sorted_by_key:  # ties at a limit are unspecified in etcd
            op["limit"] = self.rng.randint(1, 4)
        if self.rng.random() < 0.2 and op.get("sort_target") != "VALUE":
            op["keys_only"] = True
        if self.rng.random() < 0.1:
            op["count_only"] = True
        for name in ("min_mod", "max_mod", "min_create", "max_create"):
            if self.rng.random() < 0.08:
                op[name] = self.any_rev()
        return op

    def delete(self, group=None):
        key, end = self._range(group)
        return {"op": "delete", "key": key, "range_end": end, "prev_kv": self.rng.random() < 0.5}

    def compare(self, group):
        key = self._key(group)
        target = self.rng.choice(["VERSION", "CREATE", "MOD", "VALUE", "VALUE", "LEASE"])
        value = {"VERSION": lambda: self.rng.randint(0, 3), "CREATE": self.any_rev, "MOD": self.any_rev,
                 "VALUE": lambda: self.rng.choice(self.values), "LEASE": lambda: 0}[target]()
        compare = {"key": key, "target": target, "value": value,
                   "result": self.rng.choice(["EQUAL", "EQUAL", "NOT_EQUAL", "GREATER", "LESS"])}
        if self.rng.random() < 0.1:
            compare["key"], compare["range_end"] = self.rng.choice(
                [r for r in self.keys.group_ranges[group] if r[1]])
        return compare

    def txn(self, group=None, depth=0, used=None):
        """A txn within one group. Branch writes mostly avoid each other's keys, nested
        txns included (overlapping writes are refused as "duplicate key"; a few still are)."""
        if group is None:
            group = self.rng.choice(sorted(self.keys.group_keys))
        outer_used = used if used is not None else set()
        op = {"op": "txn", "compare": [self.compare(group) for _ in range(self.rng.randint(0, 3))]}
        for branch in ("success", "failure"):
            ops, used = [], set(outer_used)
            for _ in range(self.rng.randint(0, 3)):
                group_keys = self.keys.group_keys[group]
                fresh = [key for key in group_keys if key not in used]
                overlap = self.rng.random() < 0.04
                key = self.rng.choice(fresh) if fresh and not overlap else self._key(group)
                r = self.rng.random()
                if not fresh and not overlap:
                    sub = self.range(group)  # no key left to write without overlapping
                elif r < 0.4:
                    sub = self.put(group) if self.rng.random() < 0.15 else {
                        "op": "put", "key": key, "value": self.rng.choice(self.values),
                        "prev_kv": self.rng.random() < 0.5}
                    sub.pop("lease", None)
                elif r < 0.7:
                    sub = self.range(group)
                elif r < 0.9 or depth >= 1:
                    sub = self.delete(group) if self.rng.random() < 0.15 else {
                        "op": "delete", "key": key, "prev_kv": self.rng.random() < 0.5}
                else:
                    sub = self.txn(group, depth + 1, used)
                if sub["op"] == "put":
                    used.add(sub["key"])
                elif sub["op"] == "delete":
                    end = sub.get("range_end", b"")
                    used.update(k for k in group_keys
                                if k == sub["key"] or (end and sub["key"] <= k and (end == b"\0" or k < end)))
                ops.append(sub)
            op[branch] = ops
            outer_used |= used
        return op

    def compact(self):
        r = self.rng.random()
        if r < 0.15:
            revision = ("F", self.rng.randint(1, 3))
        elif r < 0.3 and self.compacted is not None:
            revision = ("R", self.rng.randint(0, self.compacted))
        else:
            low = self.compacted + 1 if self.compacted is not None else 0
            if low > self.writes - 1:
                revision = ("R", self.writes - 1)  # already compacted there: an error
            else:
                revision = ("R", self.rng.randint(low, self.writes - 1))
        return {"op": "compact", "revision": revision, "physical": self.rng.random() < 0.3}

    def watch(self):
        key, end = self._range()
        while end and end != b"\0" and end <= key:
            key, end = self._range()
        op = {"op": "watch", "key": key, "range_end": end, "prev_kv": self.rng.random() < 0.5}
        r = self.rng.random()
        if r < 0.2 or self.writes == 0:
            op["start"] = 0
        elif r < 0.35 and self.compacted:
            op["start"] = ("R", self.rng.randint(0, self.compacted - 1))  # compacted: cancelled
        else:
            op["start"] = ("R", self.rng.randint(self.compacted or 0, self.writes - 1))
        r = self.rng.random()
        if r < 0.1:
            op["filters"] = ["NOPUT"]
        elif r < 0.2:
            op["filters"] = ["NODELETE"]
        return op

    def next_op(self) -> dict:
        r = self.rng.random()
        if r < 0.30:
            return self.put()
        if r < 0.55:
            return self.range()
        if r < 0.65:
            return self.delete()
        if r < 0.88:
            return self.txn()
        if r < 0.92 and self.writes >= 3:
            return self.compact()
        if r < 0.96 and self.writes >= 1:
            return self.watch()
        return self.put()


# ------------------------------------------------------------------ runner


def _short(op: dict) -> str:
    text = repr(op)
    return text if len(text) < 300 else text[:300] + "..."


class Runner:
    """Runs ops on both sides in lockstep and compares each step's answers."""

    def __init__(self, seed, mode: str, keys: KeySet, reference: Endpoint, other: Endpoint):
        self.seed = seed
        self.mode = mode
        self.keys = keys
        self.sides = [Side(reference), Side(other)]
        self.strict_read_headers = mode != "multi"
        self.history: list[str] = []
        self.steps = 0
        self.watches = 0
        self.errors = 0
        self.compacted = None  # index k of the last compaction, as both sides agree

    # reporting ---------------------------------------------------------
    def fail(self, what: str, op, answers) -> None:
        a, b = self.sides
        replay = (f"replay: python -m pytest tests/e2e/test_differential.py --seed {self.seed}"
                  if isinstance(self.seed, int) else "")
        raise Difference(
            f"differential seed={self.seed} mode={self.mode}: {what} at step {self.steps}\n"
            f"op: {pprint.pformat(op, width=110)}\n"
            f"--- {a.endpoint!r}:\n{pprint.pformat(answers[0], width=110)}\n"
            f"--- {b.endpoint!r}:\n{pprint.pformat(answers[1], width=110)}\n"
            f"last steps:\n  " + "\n  ".join(self.history[-12:]) + f"\n{replay}")

    # steps ---------------------------------------------------------------
    async def start(self) -> None:
        """Each side's "base": the revision of a write made now (a put and a delete of a
        probe key beside the sequence's keys). A read's header would not do: a sharded
        store answers with one group's revision, possibly older than others' writes (or
        than a compaction)."""
        probe = self.keys.keys[0].rsplit(b"/", 1)[0] + b"/~base"
        for side in self.sides:
            for method, request in (("Put", PutRequest(key=probe, value=b"probe")),
                                    ("DeleteRange", DeleteRangeRequest(key=probe))):
                result = await side.endpoint.call(method, request)
                if result[0] != "ok":
                    raise AssertionError(f"{side.endpoint!r}: {method} of {probe!r} failed: {result}")
            side.set_base(result[1].header.revision)

    async def step(self, op: dict):
        """One KV op on both sides; returns the normalized answer."""
        if op["op"] == "watch":
            return await self.watch_step(op)
        self.steps += 1
        built = [build(op, side) for side in self.sides]
        results = await asyncio.gather(*(side.endpoint.call(method, request)
                                         for side, (method, request) in zip(self.sides, built)))
        answers = []
        for side, (method, request), result in zip(self.sides, built, results):
            changed = result[0] == "ok" and changed_something(method, result[1])
            if changed:
                side.record_write(result[1].header.revision)
            strict = changed or self.strict_read_headers
            answers.append(normalize_result(method, request, result, side, strict))
        self.history.append(f"{self.steps}: {_short(op)} -> {_short(answers[0])}")
        if answers[0] != answers[1]:
            self.fail("answers differ", op, answers)
        if answers[0][0] == "error":
            self.errors += 1
        elif op["op"] == "compact":
            self.compacted = op["revision"][1]
        return answers[0]

    async def open_watches(self, op: dict) -> list[WatchStream]:
        streams = []
        for side in self.sides:
            stream = side.endpoint.watch()
            filters = [WatchCreateRequest.FilterType.Value(name) for name in op.get("filters", ())]
            await stream.send(WatchRequest(create_request=WatchCreateRequest(
                key=op["key"], range_end=op.get("range_end", b""), start_revision=side.resolve(op.get("start", 0)),
                prev_kv=op.get("prev_kv", False), filters=filters)))
            streams.append(stream)
        for stream in streams:  # writes may only follow once each watch exists
            if not await stream.wait_for(lambda responses: any(r.created for r in responses)):
                await asyncio.gather(*(s.close() for s in streams))
                self.fail("no watch created", op, [normalize_watch(s.responses, s.error, side)
                                                   for s, side in zip(streams, self.sides)])
        return streams

    async def finish_watches(self, op: dict, streams: list[WatchStream], sentinel_key: bytes):
        """Collect until the last sentinel write shows (or the watch is cancelled), then compare."""
        outcomes = []
        for side, stream in zip(self.sides, streams):
            target = side.current

            def done(responses):
                return any(r.canceled or any(e.kv.key == sentinel_key and e.kv.mod_revision >= target
                                             for e in r.events) for r in responses)

            outcomes.append(await stream.wait_for(done))
        await asyncio.gather(*(stream.close() for stream in streams))
        answers = [normalize_watch(stream.responses, stream.error, side) for stream, side in zip(streams, self.sides)]
        if not any(outcomes):
            # Neither side delivered: a fault of the test itself (or of both servers).
            raise AssertionError(f"seed={self.seed}: watch {op} delivered no sentinel on either side: {answers}")
        self.history.append(f"{self.steps}: watch {_short(op)} -> {len(answers[0])} items")
        if answers[0] != answers[1] or outcomes[0] != outcomes[1]:
            self.fail("watch events differ" if all(outcomes) else "a watch timed out", op, answers)
        return answers[0]

    def sentinel_key(self, op: dict) -> bytes:
        """A key of the sequence inside the watched range (its first), else the range's start."""
        low, end = op["key"], op.get("range_end", b"")
        for key in self.keys.keys:
            if key == low or (end and low <= key and (end == b"\0" or key < end)):
                return key
        assert any(low.startswith(prefix) for prefix in self.keys.prefixes), op
        return low

    async def watch_step(self, op: dict):
        """A watch from a revision: created, then a sentinel write, then events until it shows."""
        self.watches += 1
        streams = await self.open_watches(op)
        try:
            key = self.sentinel_key(op)
            await self.step({"op": "put", "key": key, "value": b"sentinel", "note": "watch sentinel"})
            if "NOPUT" in op.get("filters", ()):
                await self.step({"op": "delete", "key": key, "note": "watch sentinel"})
        except BaseException:
            await asyncio.gather(*(stream.close() for stream in streams))
            raise
        return await self.finish_watches(op, streams, key)

    async def cleanup(self) -> None:
        for side in self.sides:
            for prefix in self.keys.prefixes:
                await side.endpoint.call("DeleteRange", DeleteRangeRequest(key=prefix, range_end=prefix_end(prefix)))


def live_watch_range(keys: KeySet) -> tuple[bytes, bytes]:
    """Every key of the sequence (and, in multi mode, what lies between them)."""
    return keys.keys[0], prefix_end(keys.keys[-1])


async def run_ops(ops, reference_address: str, other_address: str, *, seed="ops", mode="multi",
                  marker: bytes | None = None, endpoint_types=(Endpoint, Endpoint), before=None) -> Runner:
    """Run an op source on both endpoints and compare every step.

    ops: a list of op dicts over key_set(mode, marker), or a SequenceGenerator
    (then its .steps ops).
    A watch over the whole key set runs from the start and is compared at the end.
    before(runner): an optional coroutine run before the first step.
    """
    if isinstance(ops, SequenceGenerator):
        keys = ops.keys
    else:
        assert marker is not None, "a list of ops names its keys: pass the marker they use"
        keys = key_set(mode, marker)
    reference = endpoint_types[0]("reference", reference_address)
    other = endpoint_types[1]("endpoint", other_address)
    runner = Runner(seed, keys.mode, keys, reference, other)
    try:
        if before is not None:
            await before(runner)
        await runner.start()
        live_key, live_end = live_watch_range(keys)
        live = {"op": "watch", "key": live_key, "range_end": live_end, "prev_kv": True, "start": 0,
                "note": "live watch over the whole sequence"}
        streams = await runner.open_watches(live)
        try:
            if isinstance(ops, SequenceGenerator):
                for _ in range(ops.steps):
                    op = ops.next_op()
                    await runner.step(op)
                    ops.writes = len(runner.sides[0].revisions)
                    ops.compacted = runner.compacted
            else:
                for op in ops:
                    await runner.step(op)
            await runner.step({"op": "put", "key": live_key, "value": b"sentinel", "note": "live watch sentinel"})
        except BaseException:
            await asyncio.gather(*(stream.close() for stream in streams))
            raise
        await runner.finish_watches(live, streams, live_key)
    finally:
        try:
            await runner.cleanup()
        finally:
            await reference.close()
            await other.close()
    return runner


async def run_sequence(seed: int, reference_address: str, other_address: str, *, steps: int = DEFAULT_STEPS,
                       mode: str | None = None, endpoint_types=(Endpoint, Endpoint)) -> Runner:
    """The seeded random sequence `seed` (its mode from mode_of(seed) unless given)."""
    mode = mode or mode_of(seed)
    marker = b"k" + os.urandom(5).hex().encode()  # not from the seed: the sequence does not depend on it
    generator = SequenceGenerator(seed, key_set(mode, marker), steps)
    return await run_ops(generator, reference_address, other_address, seed=seed, mode=mode, marker=marker,
                         endpoint_types=endpoint_types)
