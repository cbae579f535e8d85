"""Alarms answer as a real etcd 3.5's do: one alarm per member and type, whatever the number of groups.

The same calls (python-etcd3's alarm tests, and what etcdctl's `alarm list`,
`alarm disarm` and `endpoint status` show) go to a real etcd and to
`endpoint`; each side's transcript is compared. Member ids differ between
the two: the transcript names a side's own first member "M". Alarms stop
the whole store's puts, so each test disarms what it raised, on both sides,
even when it fails.
"""

from __future__ import annotations

import grpc
import pytest

from tessera.api import rpc_pb2_grpc
from tessera.api.rpc_pb2 import (
    CORRUPT,
    NONE,
    NOSPACE,
    AlarmRequest,
    AlarmType,
    CompactionRequest,
    DeleteRangeRequest,
    MemberListRequest,
    PutRequest,
    RangeRequest,
    RequestOp,
    StatusRequest,
    TxnRequest,
)

CALL_SECONDS = 10.0
ACTIVATE, DEACTIVATE, GET = AlarmRequest.ACTIVATE, AlarmRequest.DEACTIVATE, AlarmRequest.GET
SOME_MEMBER = 7  # no member of either side: etcd keeps an alarm for any id it is given


class Side:
    """One endpoint's Maintenance, Cluster and KV calls; member ids written as names."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        members = rpc_pb2_grpc.ClusterStub(self.channel).MemberList(MemberListRequest(), timeout=CALL_SECONDS)
        self.member = members.members[0].ID
        self.names = {0: "0", self.member: "M", SOME_MEMBER: "7"}

    def member_id(self, name: str) -> int:
        return {name: member for member, name in self.names.items()}[name]

    def alarm(self, action: int, member: str = "0", alarm: int = NOSPACE) -> list[tuple[str, str]]:
        """The alarms an Alarm call answers with, sorted (etcd's order is its map's)."""
        answer = self.maintenance.Alarm(AlarmRequest(action=action, memberID=self.member_id(member), alarm=alarm),
                                        timeout=CALL_SECONDS)
        return sorted((self.names.get(alarm.memberID, "?"), AlarmType.Name(alarm.alarm)) for alarm in answer.alarms)

    def status_errors(self) -> list[str]:
        errors = self.maintenance.Status(StatusRequest(), timeout=CALL_SECONDS).errors
        return sorted(error.replace(f"memberID:{self.member} ", "memberID:M ") for error in errors)

    def outcome(self, method: str, request) -> str:
        """"ok", or the error a KV call answers."""
        try:
            getattr(self.kv, method)(request, timeout=CALL_SECONDS)
            return "ok"
        except grpc.RpcError as error:
            return f"{error.code().name}: {error.details()}"

    def put(self, key: bytes) -> str:
        return self.outcome("Put", PutRequest(key=key, value=b"v"))

    def disarm_all(self) -> None:
        for alarm in self.maintenance.Alarm(AlarmRequest(action=GET), timeout=CALL_SECONDS).alarms:
            self.maintenance.Alarm(AlarmRequest(action=DEACTIVATE, memberID=alarm.memberID, alarm=alarm.alarm),
                                   timeout=CALL_SECONDS)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def sides(reference_endpoint, endpoint):
    """(real etcd, the endpoint under test), neither with an alarm before or after the test."""
    pair = [Side(reference_endpoint), Side(endpoint)]
    try:
        for side in pair:
            side.disarm_all()
        yield pair
    finally:
        for side in pair:
            side.disarm_all()
            side.close()


def transcripts(sides, scenario) -> list[list]:
    return [list(scenario(side)) for side in sides]


def test_an_alarm_is_listed_once_per_member_and_type(sides, keys):
    """python-etcd3's test_create_alarm_all_members, _specific_member, test_list_alarms, test_disarm_alarm."""
    key = (keys.pods + "alarmed").encode()

    def scenario(side: Side):
        yield "activate for all members", side.alarm(ACTIVATE)
        yield "again", side.alarm(ACTIVATE)
        yield "for one member", side.alarm(ACTIVATE, "M")
        yield "list", side.alarm(GET)
        yield "list NOSPACE", side.alarm(GET, alarm=NOSPACE)
        yield "list CORRUPT", side.alarm(GET, alarm=CORRUPT)
        yield "status errors", side.status_errors()
        yield "put", side.put(key)
        yield "deactivate one", side.alarm(DEACTIVATE, "M")
        yield "deactivate it again", side.alarm(DEACTIVATE, "M")
        yield "list", side.alarm(GET)
        yield "deactivate the other", side.alarm(DEACTIVATE)
        yield "list", side.alarm(GET)
        yield "status errors", side.status_errors()
        yield "put", side.put(key)

    etcd, ours = transcripts(sides, scenario)
    assert ours == etcd
    assert etcd[0] == ("activate for all members", [("0", "NOSPACE")])  # what python-etcd3 asserts
    assert etcd[7] == ("put", "RESOURCE_EXHAUSTED: etcdserver: mvcc: database space exceeded")


def test_a_corrupt_alarm_stops_every_write_and_no_read(sides, keys):
    """etcd's corrupt applier: puts, deletes, transactions that write and compactions fail with
    DATA_LOSS; ranges and transactions of ranges alone are served."""
    key = (keys.events + "k").encode()
    ranged = RequestOp(request_range=RangeRequest(key=key))

    def scenario(side: Side):
        yield "put before", side.put(key)
        yield "activate", side.alarm(ACTIVATE, "7", alarm=CORRUPT)
        yield "put", side.put(key)
        yield "delete", side.outcome("DeleteRange", DeleteRangeRequest(key=key))
        yield "delete of nothing", side.outcome("DeleteRange", DeleteRangeRequest(key=key + b"-absent"))
        yield "txn that writes", side.outcome("Txn", TxnRequest(failure=[RequestOp(request_put=PutRequest(key=key))]))
        yield "txn of ranges", side.outcome("Txn", TxnRequest(success=[ranged], failure=[ranged]))
        yield "range", side.outcome("Range", RangeRequest(key=key))
        yield "compact", side.outcome("Compact", CompactionRequest(revision=1))
        yield "list", side.alarm(GET)
        yield "status errors", side.status_errors()
        yield "deactivate", side.alarm(DEACTIVATE, "7", alarm=CORRUPT)
        yield "put after", side.put(key)

    etcd, ours = transcripts(sides, scenario)
    assert ours == etcd
    assert etcd[2] == ("put", "DATA_LOSS: etcdserver: corrupt cluster")


def test_alarm_none_and_deactivating_what_is_not_raised_change_nothing(sides):
    def scenario(side: Side):
        yield "activate NONE", side.alarm(ACTIVATE, "7", alarm=NONE)
        yield "list", side.alarm(GET)
        yield "deactivate NONE", side.alarm(DEACTIVATE, "7", alarm=NONE)
        yield "deactivate NOSPACE, never raised", side.alarm(DEACTIVATE, "7")
        yield "list", side.alarm(GET)
        yield "status errors", side.status_errors()

    etcd, ours = transcripts(sides, scenario)
    assert ours == etcd


def test_etcdctl_lists_and_disarms_each_alarm_once(sides, reference_endpoint, endpoint, etcdctl):
    def run(side: Side, address: str):
        side.alarm(ACTIVATE)
        side.alarm(ACTIVATE, "7")
        ctl = type(etcdctl)(etcdctl.binary, address, etcdctl.version)
        yield "alarm list", sorted(ctl.ok("alarm", "list").splitlines())
        yield "endpoint status errors", sorted(ctl.ok("endpoint", "status").rstrip("\n").split(", ")[9:])
        yield "alarm disarm", sorted(ctl.ok("alarm", "disarm").splitlines())
        yield "alarm list", ctl.ok("alarm", "list")

    etcd, ours = [list(run(side, address)) for side, address in zip(sides, (reference_endpoint, endpoint))]
    assert ours == etcd
    assert etcd[0] == ("alarm list", ["alarm:NOSPACE ", "memberID:7 alarm:NOSPACE "])
