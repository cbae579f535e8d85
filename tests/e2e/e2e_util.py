"""Small helpers shared by the etcdctl tests."""

import base64

import pytest

from etcd_tools import ToolUnavailable

# Tessera's shard map for these tests: prefix -> raft group; every other key is in group 1.
SHARD_MAP = ((b"/registry/pods/", 2), (b"/registry/events/", 3))
DEFAULT_GROUP = 1


def group_of(key: bytes) -> int:
    for prefix, group in SHARD_MAP:
        if key.startswith(prefix):
            return group
    return DEFAULT_GROUP


def b64(text: str) -> str:
    """How etcdctl -w json writes a key or value."""
    return base64.b64encode(text.encode()).decode()


def lines(*items: str) -> str:
    """etcdctl's simple output: one item a line."""
    return "".join(f"{item}\n" for item in items)


def put_rev(ctl, key: str, value: str, *flags: str) -> int:
    """Put, returning the write's revision (from -w json)."""
    return int(ctl.json("put", key, value, *flags)["header"]["revision"])


def revision_now(ctl, keys) -> int:
    """A revision at least as new as every write so far: that of a put made now.

    (A read's header is not enough: a sharded store answers with the revision of
    the group it read, which may be older than another group's newest write.)
    The put goes to a key outside /registry/, so watches there do not see it.
    """
    return put_rev(ctl, keys.top + "~now", "x")


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def tool_or_skip(lookup):
    """The binary `lookup` finds; the test is skipped where it is not to be had."""
    try:
        return lookup()
    except ToolUnavailable as reason:
        pytest.skip(str(reason))
