"""The generated descriptors match etcd 3.5's wire definitions: every service
method with its full name, streaming kind and message types, and the field
numbers and types that etcdctl and the client libraries depend on."""

import pytest
from google.protobuf.descriptor import FieldDescriptor

from tessera.api import auth_pb2, kv_pb2, rpc_pb2, v3election_pb2, v3lock_pb2

UNARY, SERVER_STREAM, BIDI = "unary", "server stream", "bidi"

# service full name -> [(method, request, response, kind)]; message names are
# in the service's own package unless qualified.
METHODS = {
    "etcdserverpb.KV": [
        ("Range", "RangeRequest", "RangeResponse", UNARY),
        ("Put", "PutRequest", "PutResponse", UNARY),
        ("DeleteRange", "DeleteRangeRequest", "DeleteRangeResponse", UNARY),
        ("Txn", "TxnRequest", "TxnResponse", UNARY),
        ("Compact", "CompactionRequest", "CompactionResponse", UNARY),
    ],
    "etcdserverpb.Watch": [
        ("Watch", "WatchRequest", "WatchResponse", BIDI),
    ],
    "etcdserverpb.Lease": [
        ("LeaseGrant", "LeaseGrantRequest", "LeaseGrantResponse", UNARY),
        ("LeaseRevoke", "LeaseRevokeRequest", "LeaseRevokeResponse", UNARY),
        ("LeaseKeepAlive", "LeaseKeepAliveRequest", "LeaseKeepAliveResponse", BIDI),
        ("LeaseTimeToLive", "LeaseTimeToLiveRequest", "LeaseTimeToLiveResponse", UNARY),
        ("LeaseLeases", "LeaseLeasesRequest", "LeaseLeasesResponse", UNARY),
    ],
    "etcdserverpb.Cluster": [
        ("MemberAdd", "MemberAddRequest", "MemberAddResponse", UNARY),
        ("MemberRemove", "MemberRemoveRequest", "MemberRemoveResponse", UNARY),
        ("MemberUpdate", "MemberUpdateRequest", "MemberUpdateResponse", UNARY),
        ("MemberList", "MemberListRequest", "MemberListResponse", UNARY),
        ("MemberPromote", "MemberPromoteRequest", "MemberPromoteResponse", UNARY),
    ],
    "etcdserverpb.Maintenance": [
        ("Alarm", "AlarmRequest", "AlarmResponse", UNARY),
        ("Status", "StatusRequest", "StatusResponse", UNARY),
        ("Defragment", "DefragmentRequest", "DefragmentResponse", UNARY),
        ("Hash", "HashRequest", "HashResponse", UNARY),
        ("HashKV", "HashKVRequest", "HashKVResponse", UNARY),
        ("Snapshot", "SnapshotRequest", "SnapshotResponse", SERVER_STREAM),
        ("MoveLeader", "MoveLeaderRequest", "MoveLeaderResponse", UNARY),
        ("Downgrade", "DowngradeRequest", "DowngradeResponse", UNARY),
    ],
    "etcdserverpb.Auth": [
        ("AuthEnable", "AuthEnableRequest", "AuthEnableResponse", UNARY),
        ("AuthDisable", "AuthDisableRequest", "AuthDisableResponse", UNARY),
        ("AuthStatus", "AuthStatusRequest", "AuthStatusResponse", UNARY),
        ("Authenticate", "AuthenticateRequest", "AuthenticateResponse", UNARY),
        ("UserAdd", "AuthUserAddRequest", "AuthUserAddResponse", UNARY),
        ("UserGet", "AuthUserGetRequest", "AuthUserGetResponse", UNARY),
        ("UserList", "AuthUserListRequest", "AuthUserListResponse", UNARY),
        ("UserDelete", "AuthUserDeleteRequest", "AuthUserDeleteResponse", UNARY),
        ("UserChangePassword", "AuthUserChangePasswordRequest", "AuthUserChangePasswordResponse", UNARY),
        ("UserGrantRole", "AuthUserGrantRoleRequest", "AuthUserGrantRoleResponse", UNARY),
        ("UserRevokeRole", "AuthUserRevokeRoleRequest", "AuthUserRevokeRoleResponse", UNARY),
        ("RoleAdd", "AuthRoleAddRequest", "AuthRoleAddResponse", UNARY),
        ("RoleGet", "AuthRoleGetRequest", "AuthRoleGetResponse", UNARY),
        ("RoleList", "AuthRoleListRequest", "AuthRoleListResponse", UNARY),
        ("RoleDelete", "AuthRoleDeleteRequest", "AuthRoleDeleteResponse", UNARY),
        ("RoleGrantPermission", "AuthRoleGrantPermissionRequest", "AuthRoleGrantPermissionResponse", UNARY),
        ("RoleRevokePermission", "AuthRoleRevokePermissionRequest", "AuthRoleRevokePermissionResponse", UNARY),
    ],
    "v3lockpb.Lock": [
        ("Lock", "LockRequest", "LockResponse", UNARY),
        ("Unlock", "UnlockRequest", "UnlockResponse", UNARY),
    ],
    "v3electionpb.Election": [
        ("Campaign", "CampaignRequest", "CampaignResponse", UNARY),
        ("Proclaim", "ProclaimRequest", "ProclaimResponse", UNARY),
        ("Leader", "LeaderRequest", "LeaderResponse", UNARY),
        ("Observe", "LeaderRequest", "LeaderResponse", SERVER_STREAM),
        ("Resign", "ResignRequest", "ResignResponse", UNARY),
    ],
}

FILES = {"etcdserverpb": rpc_pb2, "v3lockpb": v3lock_pb2, "v3electionpb": v3election_pb2}


def service(full_name):
    package, name = full_name.split(".")
    return FILES[package].DESCRIPTOR.services_by_name[name]


def test_method_counts():
    # etcd 3.5: 41 RPCs in rpc.proto, 48 with Lock and Election.
    assert len(rpc_pb2.DESCRIPTOR.services_by_name) == 6
    rpc_methods = sum(len(s.methods) for s in rpc_pb2.DESCRIPTOR.services_by_name.values())
    assert rpc_methods == 41
    assert sum(len(methods) for methods in METHODS.values()) == 48
    for full_name, methods in METHODS.items():
        assert [m.name for m in service(full_name).methods] == [m[0] for m in methods]


@pytest.mark.parametrize(
    "service_name, method, request_type, response_type, kind",
    [(s, *m) for s, methods in METHODS.items() for m in methods],
)
def test_method(service_name, method, request_type, response_type, kind):
    descriptor = service(service_name).methods_by_name[method]
    package = service_name.split(".")[0]
    # The gRPC path a client calls, e.g. /etcdserverpb.KV/Range.
    assert f"/{descriptor.containing_service.full_name}/{descriptor.name}" == f"/{service_name}/{method}"
    assert descriptor.input_type.full_name == f"{package}.{request_type}"
    assert descriptor.output_type.full_name == f"{package}.{response_type}"
    streams = (descriptor.client_streaming, descriptor.server_streaming)
    assert streams == {UNARY: (False, False), SERVER_STREAM: (False, True), BIDI: (True, True)}[kind]


B, S, I64, U64, U32, BOOL = "bytes", "string", "int64", "uint64", "uint32", "bool"
HEADER = ("header", 1, "etcdserverpb.ResponseHeader")

# message -> [(field, number, type)]; a type with a dot is a message or enum.
FIELDS = {
    rpc_pb2.StatusResponse: [
        HEADER, ("version", 2, S), ("dbSize", 3, I64), ("leader", 4, U64), ("raftIndex", 5, U64),
        ("raftTerm", 6, U64), ("raftAppliedIndex", 7, U64), ("errors", 8, S), ("dbSizeInUse", 9, I64),
        ("isLearner", 10, BOOL),
    ],
    rpc_pb2.Member: [
        ("ID", 1, U64), ("name", 2, S), ("peerURLs", 3, S), ("clientURLs", 4, S), ("isLearner", 5, BOOL),
    ],
    rpc_pb2.MemberAddRequest: [("peerURLs", 1, S), ("isLearner", 2, BOOL)],
    rpc_pb2.MemberAddResponse: [
        HEADER, ("member", 2, "etcdserverpb.Member"), ("members", 3, "etcdserverpb.Member"),
    ],
    rpc_pb2.MemberListRequest: [("linearizable", 1, BOOL)],
    rpc_pb2.LeaseGrantRequest: [("TTL", 1, I64), ("ID", 2, I64)],
    rpc_pb2.LeaseGrantResponse: [HEADER, ("ID", 2, I64), ("TTL", 3, I64), ("error", 4, S)],
    rpc_pb2.LeaseKeepAliveResponse: [HEADER, ("ID", 2, I64), ("TTL", 3, I64)],
    rpc_pb2.LeaseTimeToLiveRequest: [("ID", 1, I64), ("keys", 2, BOOL)],
    rpc_pb2.LeaseTimeToLiveResponse: [
        HEADER, ("ID", 2, I64), ("TTL", 3, I64), ("grantedTTL", 4, I64), ("keys", 5, B),
    ],
    rpc_pb2.LeaseLeasesResponse: [HEADER, ("leases", 2, "etcdserverpb.LeaseStatus")],
    rpc_pb2.LeaseCheckpoint: [("ID", 1, I64), ("remaining_TTL", 2, I64)],
    rpc_pb2.WatchCreateRequest: [
        ("key", 1, B), ("range_end", 2, B), ("start_revision", 3, I64), ("progress_notify", 4, BOOL),
        ("filters", 5, "etcdserverpb.WatchCreateRequest.FilterType"), ("prev_kv", 6, BOOL),
        ("watch_id", 7, I64), ("fragment", 8, BOOL),
    ],
    rpc_pb2.WatchResponse: [
        HEADER, ("watch_id", 2, I64), ("created", 3, BOOL), ("canceled", 4, BOOL),
        ("compact_revision", 5, I64), ("cancel_reason", 6, S), ("fragment", 7, BOOL),
        ("events", 11, "mvccpb.Event"),
    ],
    rpc_pb2.AlarmRequest: [
        ("action", 1, "etcdserverpb.AlarmRequest.AlarmAction"), ("memberID", 2, U64),
        ("alarm", 3, "etcdserverpb.AlarmType"),
    ],
    rpc_pb2.HashKVResponse: [HEADER, ("hash", 2, U32), ("compact_revision", 3, I64)],
    rpc_pb2.SnapshotResponse: [HEADER, ("remaining_bytes", 2, U64), ("blob", 3, B)],
    rpc_pb2.DowngradeRequest: [("action", 1, "etcdserverpb.DowngradeRequest.DowngradeAction"), ("version", 2, S)],
    rpc_pb2.AuthUserAddRequest: [
        ("name", 1, S), ("password", 2, S), ("options", 3, "authpb.UserAddOptions"), ("hashedPassword", 4, S),
    ],
    rpc_pb2.AuthUserChangePasswordRequest: [("name", 1, S), ("password", 2, S), ("hashedPassword", 3, S)],
    rpc_pb2.AuthUserGrantRoleRequest: [("user", 1, S), ("role", 2, S)],
    rpc_pb2.AuthRoleGrantPermissionRequest: [("name", 1, S), ("perm", 2, "authpb.Permission")],
    rpc_pb2.AuthRoleRevokePermissionRequest: [("role", 1, S), ("key", 2, B), ("range_end", 3, B)],
    rpc_pb2.AuthRoleGetResponse: [HEADER, ("perm", 2, "authpb.Permission")],
    rpc_pb2.AuthStatusResponse: [HEADER, ("enabled", 2, BOOL), ("authRevision", 3, U64)],
    rpc_pb2.AuthenticateResponse: [HEADER, ("token", 2, S)],
    auth_pb2.Permission: [("permType", 1, "authpb.Permission.Type"), ("key", 2, B), ("range_end", 3, B)],
    auth_pb2.User: [("name", 1, B), ("password", 2, B), ("roles", 3, S), ("options", 4, "authpb.UserAddOptions")],
    auth_pb2.Role: [("name", 1, B), ("keyPermission", 2, "authpb.Permission")],
    auth_pb2.UserAddOptions: [("no_password", 1, BOOL)],
    kv_pb2.KeyValue: [
        ("key", 1, B), ("create_revision", 2, I64), ("mod_revision", 3, I64), ("version", 4, I64),
        ("value", 5, B), ("lease", 6, I64),
    ],
    v3lock_pb2.LockRequest: [("name", 1, B), ("lease", 2, I64)],
    v3lock_pb2.LockResponse: [HEADER, ("key", 2, B)],
    v3lock_pb2.UnlockRequest: [("key", 1, B)],
    v3election_pb2.CampaignRequest: [("name", 1, B), ("lease", 2, I64), ("value", 3, B)],
    v3election_pb2.CampaignResponse: [HEADER, ("leader", 2, "v3electionpb.LeaderKey")],
    v3election_pb2.LeaderKey: [("name", 1, B), ("key", 2, B), ("rev", 3, I64), ("lease", 4, I64)],
    v3election_pb2.LeaderResponse: [HEADER, ("kv", 2, "mvccpb.KeyValue")],
    v3election_pb2.ProclaimRequest: [("leader", 1, "v3electionpb.LeaderKey"), ("value", 2, B)],
    v3election_pb2.ResignRequest: [("leader", 1, "v3electionpb.LeaderKey")],
}

SCALARS = {
    B: FieldDescriptor.TYPE_BYTES, S: FieldDescriptor.TYPE_STRING, I64: FieldDescriptor.TYPE_INT64,
    U64: FieldDescriptor.TYPE_UINT64, U32: FieldDescriptor.TYPE_UINT32, BOOL: FieldDescriptor.TYPE_BOOL,
}


@pytest.mark.parametrize("message", FIELDS, ids=lambda m: m.DESCRIPTOR.full_name)
def test_fields(message):
    fields = message.DESCRIPTOR.fields
    # Every field of the message is listed, in etcd's numbering.
    assert [(f.name, f.number) for f in fields] == [(name, number) for name, number, _ in FIELDS[message]]
    for field, (_, _, type_name) in zip(fields, FIELDS[message]):
        if type_name in SCALARS:
            assert field.type == SCALARS[type_name], field.full_name
        else:
            assert (field.message_type or field.enum_type).full_name == type_name, field.full_name


@pytest.mark.parametrize(
    "enum, values",
    [
        (auth_pb2.Permission.Type, {"READ": 0, "WRITE": 1, "READWRITE": 2}),
        (rpc_pb2.AlarmRequest.AlarmAction, {"GET": 0, "ACTIVATE": 1, "DEACTIVATE": 2}),
        (rpc_pb2.AlarmType, {"NONE": 0, "NOSPACE": 1, "CORRUPT": 2}),
        (rpc_pb2.DowngradeRequest.DowngradeAction, {"VALIDATE": 0, "ENABLE": 1, "CANCEL": 2}),
        (rpc_pb2.WatchCreateRequest.FilterType, {"NOPUT": 0, "NODELETE": 1}),
    ],
    ids=lambda e: e.DESCRIPTOR.full_name if hasattr(e, "DESCRIPTOR") else None,
)
def test_enum(enum, values):
    assert {v.name: v.number for v in enum.DESCRIPTOR.values} == values


def test_repeated_fields():
    # The label is part of the wire contract for these.
    repeated = [
        rpc_pb2.StatusResponse.DESCRIPTOR.fields_by_name["errors"],
        rpc_pb2.Member.DESCRIPTOR.fields_by_name["peerURLs"],
        rpc_pb2.Member.DESCRIPTOR.fields_by_name["clientURLs"],
        rpc_pb2.MemberAddResponse.DESCRIPTOR.fields_by_name["members"],
        rpc_pb2.LeaseTimeToLiveResponse.DESCRIPTOR.fields_by_name["keys"],
        rpc_pb2.WatchCreateRequest.DESCRIPTOR.fields_by_name["filters"],
        rpc_pb2.AuthRoleGetResponse.DESCRIPTOR.fields_by_name["perm"],
        auth_pb2.Role.DESCRIPTOR.fields_by_name["keyPermission"],
    ]
    assert all(f.is_repeated for f in repeated)
    assert not rpc_pb2.MemberAddResponse.DESCRIPTOR.fields_by_name["member"].is_repeated
