"""Alarms answer as a real etcd 3.5's do: one alarm per member and type, whatever the number of groups.

The same calls (python-etcd3's alarm tests, and what etcdctl's `alarm list`,
`alarm disarm` and `endpoint status` show, and the writes, reads and lease
calls each alarm refuses or lets through) go to a real etcd and to
`endpoint`; each side's transcript is compared. Member ids differ between
the two: the transcript names a side's own first member "M". Alarms stop
the whole store's puts, so each test disarms what it raised, on both sides,
even when it fails.
"""

from __future__ import annotations

import secrets

import grpc
import pytest

from tessera.api import rpc_pb2_grpc
from tessera.api.meta_keys import prefix_range
from tessera.api.rpc_pb2 import (
    CORRUPT,
    NONE,
    NOSPACE,
    AlarmRequest,
    AlarmType,
    CompactionRequest,
    DeleteRangeRequest,
    LeaseGrantRequest,
    LeaseRevokeRequest,
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
    """One endpoint's Maintenance, Cluster, KV and Lease calls; member ids written as names."""

    def __init__(self, address: str):
        self.channel = grpc.insecure_channel(address)
        self.maintenance = rpc_pb2_grpc.MaintenanceStub(self.channel)
        self.kv = rpc_pb2_grpc.KVStub(self.channel)
        self.lease = rpc_pb2_grpc.LeaseStub(self.channel)
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

    def outcome(self, call, request) -> str:
        """"ok", or the error a call (one of the stubs' methods) answers."""
        try:
            call(request, timeout=CALL_SECONDS)
            return "ok"
        except grpc.RpcError as error:
            return f"{error.code().name}: {error.details()}"

    def put(self, key: bytes) -> str:
        return self.outcome(self.kv.Put, PutRequest(key=key, value=b"v"))

    def grant(self, lease: int) -> str:
        return self.outcome(self.lease.LeaseGrant, LeaseGrantRequest(ID=lease, TTL=60))

    def revoke(self, lease: int) -> str:
        return self.outcome(self.lease.LeaseRevoke, LeaseRevokeRequest(ID=lease))

    def disarm_all(self) -> None:
        for alarm in self.maintenance.Alarm(AlarmRequest(action=GET), timeout=CALL_SECONDS).alarms:
            self.maintenance.Alarm(AlarmRequest(action=DEACTIVATE, memberID=alarm.memberID, alarm=alarm.alarm),
                                   timeout=CALL_SECONDS)

    def close(self) -> None:
        self.channel.close()


@pytest.fixture
def sides(reference_endpoint, endpoint, keys):
    """(real etcd, the endpoint under test), neither with an alarm before or after the test; the
    test's keys (`keys`) are deleted on both afterwards (the `keys` fixture knows `endpoint` only)."""
    pair = [Side(reference_endpoint), Side(endpoint)]
    try:
        for side in pair:
            side.disarm_all()
        yield pair
    finally:
        for side in pair:
            side.disarm_all()
            for prefix in keys.prefixes:
                key, range_end = prefix_range(prefix.encode())
                side.kv.DeleteRange(DeleteRangeRequest(key=key, range_end=range_end), timeout=CALL_SECONDS)
            side.close()


def transcripts(sides, scenario) -> list[list]:
    return [list(scenario(side)) for side in sides]


def test_an_alarm_is_listed_once_per_member_and_type(sides, keys):
    """python-etcd3's test_create_alarm_all_members, _specific_member, test_list_alarms, test_disarm_alarm."""
    key = (keys.pods + "alarmed").encode()
    lease = secrets.randbits(48)

    def scenario(side: Side):
        yield "activate for all members", side.alarm(ACTIVATE)
        yield "again", side.alarm(ACTIVATE)
        yield "for one member", side.alarm(ACTIVATE, "M")
        yield "list", side.alarm(GET)
        yield "list NOSPACE", side.alarm(GET, alarm=NOSPACE)
        yield "list CORRUPT", side.alarm(GET, alarm=CORRUPT)
        yield "status errors", side.status_errors()
        yield "put", side.put(key)
        yield "lease grant", side.grant(lease)
        yield "lease revoke", side.revoke(lease)
        yield "deactivate one", side.alarm(DEACTIVATE, "M")
        yield "deactivate it again", side.alarm(DEACTIVATE, "M")
        yield "list", side.alarm(GET)
        yield "deactivate the other", side.alarm(DEACTIVATE)
        yield "list", side.alarm(GET)
        yield "status errors", side.status_errors()
        yield "put", side.put(key)
        yield "lease grant", side.grant(lease)
        yield "lease revoke", side.revoke(lease)

    etcd, ours = transcripts(sides, scenario)
    assert ours == etcd
    assert etcd[0] == ("activate for all members", [("0", "NOSPACE")])  # what python-etcd3 asserts
    assert etcd[7] == ("put", "RESOURCE_EXHAUSTED: etcdserver: mvcc: database space exceeded")


def test_a_corrupt_alarm_stops_every_write_and_no_read(sides, keys):
    """etcd's corrupt applier: puts, deletes, transactions that write and compactions fail with
    DATA_LOSS; ranges and transactions of ranges alone are served."""
    key = (keys.events + "k").encode()
    ranged = RequestOp(request_range=RangeRequest(key=key))
    lease = secrets.randbits(48)

    def scenario(side: Side):
        yield "put before", side.put(key)
        yield "lease grant before", side.grant(lease)
        yield "activate", side.alarm(ACTIVATE, "7", alarm=CORRUPT)
        yield "put", side.put(key)
        yield "delete", side.outcome(side.kv.DeleteRange, DeleteRangeRequest(key=key))
        yield "delete of nothing", side.outcome(side.kv.DeleteRange, DeleteRangeRequest(key=key + b"-absent"))
        yield "txn that writes", side.outcome(side.kv.Txn, TxnRequest(failure=[RequestOp(request_put=PutRequest(key=key))]))
        yield "txn of ranges", side.outcome(side.kv.Txn, TxnRequest(success=[ranged], failure=[ranged]))
        yield "range", side.outcome(side.kv.Range, RangeRequest(key=key))
        yield "compact", side.outcome(side.kv.Compact, CompactionRequest(revision=1))
        yield "lease grant", side.grant(lease + 1)
        yield "lease revoke", side.revoke(lease)
        yield "list", side.alarm(GET)
        yield "status errors", side.status_errors()
        yield "deactivate", side.alarm(DEACTIVATE, "7", alarm=CORRUPT)
        yield "put after", side.put(key)
        yield "lease revoke after", side.revoke(lease)

    etcd, ours = transcripts(sides, scenario)
    assert ours == etcd
    assert etcd[3] == ("put", "DATA_LOSS: etcdserver: corrupt cluster")


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
