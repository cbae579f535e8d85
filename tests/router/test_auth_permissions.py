"""The router's permission lookups (router/auth.py) and simple tokens, without a cluster.

`Intervals` is checked against a deliberately naive model of etcd's question: is every key of
the request inside some granted range? Keys come from a tiny alphabet, so ranges collide often.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.auth import (
    AuthInfo,
    AuthRecords,
    AuthStore,
    Guard,
    Intervals,
    JWTTokens,
    SimpleTokens,
    is_valid_permission_range,
    permission_range,
    token_provider,
)
from router.rpc import Call
from tessera.api import errors
from tessera.api.auth_pb2 import Permission, Role, User
from tessera.api.rpc_pb2 import Compare, PutRequest, RangeRequest, RequestOp, TxnRequest

ALPHABET = b"\0ab"
keys = st.binary(min_size=1, max_size=3).map(lambda b: bytes(ALPHABET[x % 3] for x in b))
ends = st.one_of(st.just(None), keys)  # None: no end


def naive_covers(ranges, key: bytes, end) -> bool:
    """Whether each key of [key, end) (the key alone for end b"") is in a granted range.

    Whether a key is granted changes only at a range's start or end, so it is enough to ask
    for the request's first key and for every range bound inside the request.
    """
    def granted(k):
        return any(start <= k and (stop is None or k < stop) for start, stop in ranges)

    if end == b"" or (end is not None and end <= key):
        return granted(key)  # one key, or a range holding none: etcd asks about its first key
    bounds = [bound for start, stop in ranges for bound in (start, stop) if bound is not None]
    return granted(key) and all(granted(b) for b in bounds if key < b and (end is None or b < end))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(keys, ends), max_size=5), keys, st.one_of(st.just(b""), ends))
def test_intervals_answer_as_the_naive_model(granted, key, end):
    ranges = [(start, stop) for start, stop in granted if stop is None or start < stop]
    assert Intervals(ranges).covers(key, end) == naive_covers(ranges, key, end)


def test_touching_ranges_are_one():
    intervals = Intervals([(b"a", b"b"), (b"b", b"c")])
    assert intervals.covers(b"a", b"c")
    assert not intervals.covers(b"a", b"d")
    assert Intervals([(b"a", None), (b"b", b"c")]).covers(b"x", None)
    assert not Intervals([]).covers(b"a")


def test_permission_ranges_as_etcd_grants_them():
    assert permission_range(Permission(key=b"k")) == (b"k", b"k\0")  # one key
    assert permission_range(Permission(key=b"a", range_end=b"c")) == (b"a", b"c")
    assert permission_range(Permission(key=b"a", range_end=b"\0")) == (b"a", None)  # from the key on
    assert is_valid_permission_range(b"a", b"")
    assert is_valid_permission_range(b"a", b"b")
    assert is_valid_permission_range(b"a", b"\0")
    assert not is_valid_permission_range(b"", b"")
    assert not is_valid_permission_range(b"b", b"a")
    assert not is_valid_permission_range(b"a", b"a")


def _store(enabled: bool = True) -> AuthStore:
    reader = Role(name=b"reader", keyPermission=[
        Permission(permType=Permission.READ, key=b"/r/", range_end=b"/r0"),
        Permission(permType=Permission.READWRITE, key=b"/w")])
    users = {"alice": User(name=b"alice", roles=["reader"]), "root": User(name=b"root", roles=["root"])}
    store = AuthStore()
    store.install(AuthRecords(enabled=enabled, revision=5, users=users, roles={"reader": reader},
                              state_mod_revision=10))
    return store


def test_checks_of_requests_as_etcd_makes_them():
    store = _store()
    alice, root = AuthInfo("alice", 5), AuthInfo("root", 5)
    store.check_range(alice, RangeRequest(key=b"/r/x"))
    store.check_range(alice, RangeRequest(key=b"/r/", range_end=b"/r0"))
    with pytest.raises(errors.PermissionDenied):
        store.check_range(alice, RangeRequest(key=b"/r/", range_end=b"\0"))  # from the key on
    with pytest.raises(errors.PermissionDenied):
        store.check_put(alice, PutRequest(key=b"/r/x"))
    store.check_put(alice, PutRequest(key=b"/w", prev_kv=True))
    with pytest.raises(errors.PermissionDenied):  # a compare is a read
        store.check_txn(alice, TxnRequest(compare=[Compare(key=b"/secret")]))
    nested = TxnRequest(success=[RequestOp(request_txn=TxnRequest(
        success=[RequestOp(request_put=PutRequest(key=b"/r/x"))]))])
    with pytest.raises(errors.PermissionDenied):  # a nested transaction is checked too
        store.check_txn(alice, nested)
    store.check_txn(root, nested)  # root may do anything
    with pytest.raises(errors.UserEmpty):
        store.check_range(None, RangeRequest(key=b"/r/x"))
    with pytest.raises(errors.AuthOldRevision):
        store.check_range(AuthInfo("alice", 4), RangeRequest(key=b"/r/x"))
    with pytest.raises(errors.PermissionDenied):  # a user deleted since its token was made
        store.check_range(AuthInfo("mallory", 5), RangeRequest(key=b"/r/x"))
    store.check_admin(root)
    with pytest.raises(errors.PermissionDenied):
        store.check_admin(alice)
    with pytest.raises(errors.UserNotFound):
        store.check_admin(AuthInfo("mallory", 5))


def test_nothing_is_checked_while_auth_is_disabled():
    store = _store(enabled=False)
    store.check_put(None, PutRequest(key=b"/anything"))
    store.check_admin(None)
    assert store.caller([("token", "forged")]) is None  # as etcd: tokens are not looked at


def test_tokens_name_their_user_and_end_as_etcds_do():
    store = _store()
    token = store.tokens.assign("alice")
    assert store.caller([("token", token)]) == AuthInfo("alice", 5)
    assert store.caller([("authorization", token)]) == AuthInfo("alice", 5)  # the gateway's header
    assert store.caller([]) is None
    with pytest.raises(errors.InvalidAuthToken):
        store.caller([("token", token + "x")])
    # A new password ends the user's tokens, on every router that installs the change.
    records = store.records
    changed = User(name=b"alice", password=b"new", roles=["reader"])
    store.install(AuthRecords(True, 6, {**records.users, "alice": changed}, records.roles, 11))
    with pytest.raises(errors.InvalidAuthToken):
        store.caller([("token", token)])
    root_token = store.tokens.assign("root")
    store.install(AuthRecords(True, 5, records.users, records.roles, 9))  # older: ignored
    assert store.caller([("token", root_token)]).user == "root"
    store.install(AuthRecords(False, 7, records.users, records.roles, 12))  # auth disabled
    store.install(AuthRecords(True, 7, records.users, records.roles, 13))
    with pytest.raises(errors.InvalidAuthToken):
        store.caller([("token", root_token)])


def test_a_token_expires_unless_used():
    now = [0.0]
    tokens = SimpleTokens(ttl_seconds=10, clock=lambda: now[0])
    kept, dropped = tokens.assign("a"), tokens.assign("b")
    assert kept != dropped and kept.count(".") == 1 and len(kept.split(".")[0]) == 16
    now[0] = 8
    assert tokens.info(kept, 3) == AuthInfo("a", 3)  # used: ten seconds more
    now[0] = 12
    assert tokens.info(kept, 3) == AuthInfo("a", 3)
    assert tokens.info(dropped, 3) is None
    now[0] = 30
    tokens.assign("c")  # expired tokens are swept as new ones are made
    assert len(tokens) == 1


def pem_keys(algorithm: str) -> tuple[bytes, bytes]:
    """(private, public) PEM keys for an RS* or ES* signature."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if algorithm.startswith("RS")
           else ec.generate_private_key(ec.SECP256R1()))
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_jwts_carry_user_and_revision_and_only_our_key_makes_them(algorithm):
    now = [1_000_000.0]
    private, public = pem_keys(algorithm)
    tokens = JWTTokens(algorithm, private, public, ttl_seconds=60, clock=lambda: now[0])
    made = tokens.assign("alice", 7)
    assert tokens.info(made, 9) == AuthInfo("alice", 7)  # the revision it was made at, not now's
    # Any router given the key takes it.
    assert JWTTokens(algorithm, None, public, clock=lambda: now[0]).info(made, 9) == AuthInfo("alice", 7)
    other_private, other_public = pem_keys(algorithm)
    assert tokens.info(JWTTokens(algorithm, other_private, other_public).assign("alice", 7), 9) is None  # forged
    assert tokens.info(made + "x", 9) is None
    assert tokens.info("not.a.jwt", 9) is None
    with pytest.raises(errors.EtcdError, match="verify-only"):
        JWTTokens(algorithm, None, public).assign("alice", 7)
    expired = JWTTokens(algorithm, private, public, ttl_seconds=60, clock=lambda: now[0] - 3600).assign("a", 1)
    assert tokens.info(expired, 1) is None


def test_the_auth_token_option_as_etcd_writes_it(tmp_path):
    private, public = pem_keys("RS256")
    (tmp_path / "key.pem").write_bytes(private)
    (tmp_path / "key.pub").write_bytes(public)
    simple = token_provider("simple", 42)
    assert isinstance(simple, SimpleTokens) and simple.ttl_seconds == 42
    tokens = token_provider(f"jwt,pub-key={tmp_path}/key.pub,priv-key={tmp_path}/key.pem,sign-method=RS256,ttl=1h30m")
    assert isinstance(tokens, JWTTokens) and tokens.ttl_seconds == 5400
    assert token_provider(f"jwt,priv-key={tmp_path}/key.pem,sign-method=RS256").ttl_seconds == 300
    (tmp_path / "secret").write_bytes(b"a shared secret of the routers, 32 bytes or more")
    hmac = token_provider(f"jwt,priv-key={tmp_path}/secret,sign-method=HS256")
    assert hmac.info(hmac.assign("bob", 2), 3) == AuthInfo("bob", 2)
    key = f"priv-key={tmp_path}/key.pem"
    for bad in ("opaque", "jwt,sign-method", "jwt,ttl=1,ttl=2", f"jwt,{key},ttl=soon", "jwt,sign-method=RS256",
                f"jwt,{key}", f"jwt,{key},sign-method=none"):
        with pytest.raises(ValueError):
            token_provider(bad)


def test_refusals_are_confirmed_on_fresh_records_and_share_the_reads():
    """A refused call reads the records again before it is refused (a grant through another
    router counts at once); a burst of refusals shares those reads."""
    store = _store()
    alice = store.tokens.assign("alice")
    reads = []

    async def refresh():  # the meta group's records: a grant of /granted arrived meanwhile
        reads.append(len(reads))
        await asyncio.sleep(0.01)
        records = store.records
        role = Role(name=b"reader", keyPermission=[*records.roles["reader"].keyPermission,
                                                    Permission(permType=Permission.WRITE, key=b"/granted")])
        store.install(AuthRecords(True, records.revision, records.users, {"reader": role},
                                  records.state_mod_revision + 1))

    guard = Guard(store, leases=None, refresh=refresh)
    call = Call((("token", alice),))

    async def burst():
        granted = [guard.confirm(guard.put, PutRequest(key=b"/granted"), call) for _ in range(20)]
        denied = [guard.confirm(guard.put, PutRequest(key=b"/elsewhere"), call) for _ in range(20)]
        return await asyncio.gather(*granted, *denied, return_exceptions=True)

    outcomes = asyncio.run(burst())
    assert outcomes[:20] == [None] * 20
    assert all(isinstance(outcome, errors.PermissionDenied) for outcome in outcomes[20:])
    assert len(reads) <= 2
