"""The meta group's key layout (group 0), shared by the routers and the group's own replicas.

Each value is a record of tessera/api/internal.proto:

    tessera/cluster               ClusterRecord   the cluster id, chosen at bootstrap
    tessera/groups/<group>        GroupRecord     a group's members and addresses
    tessera/shards                ShardMap        the whole map, changed by compare-and-swap
    tessera/routers/<id>          RouterRecord    a router and the address clients use
    tessera/leases/<id>           LeaseRecord     a granted lease and its TTL
    tessera/auth/state            AuthStateRecord auth enabled or not, and the auth revision
    tessera/auth/users/<name>     authpb.User     a user: password hash, roles
    tessera/auth/roles/<name>     authpb.Role     a role: its key permissions
    tessera/moves                 MoveList        prefixes moving between groups (router/moves.py)

Routers read and write them (router/meta.py); the meta group's leader keeps
lease deadlines from the lease records (shards/leases.py).
"""

META_GROUP = 0
SYSTEM_PREFIX = b"tessera/"
CLUSTER_KEY = b"tessera/cluster"
GROUPS_PREFIX = b"tessera/groups/"
SHARDS_KEY = b"tessera/shards"
ROUTERS_PREFIX = b"tessera/routers/"
LEASES_PREFIX = b"tessera/leases/"
AUTH_PREFIX = b"tessera/auth/"
AUTH_STATE_KEY = b"tessera/auth/state"
AUTH_USERS_PREFIX = b"tessera/auth/users/"
AUTH_ROLES_PREFIX = b"tessera/auth/roles/"
MOVES_KEY = b"tessera/moves"


def group_key(group_id: int) -> bytes:
    return GROUPS_PREFIX + b"%08d" % group_id


def router_key(router_id: int) -> bytes:
    return ROUTERS_PREFIX + b"%016x" % router_id


def lease_key(lease_id: int) -> bytes:
    return LEASES_PREFIX + b"%016x" % lease_id


def user_key(name: str) -> bytes:
    return AUTH_USERS_PREFIX + name.encode()


def role_key(name: str) -> bytes:
    return AUTH_ROLES_PREFIX + name.encode()


def lease_id_of(key: bytes) -> int:
    """The lease a key under LEASES_PREFIX names (lease_key's inverse)."""
    return int(key[len(LEASES_PREFIX):], 16)


def prefix_range(prefix: bytes) -> tuple[bytes, bytes]:
    """The [start, end) range of every key that starts with `prefix`."""
    return prefix, prefix[:-1] + bytes([prefix[-1] + 1])
