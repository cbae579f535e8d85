"""`etcdctl watch` as a running process: puts and deletes arrive as its output lines.

etcdctl prints nothing when its watch is set up, so every watch here starts at an
explicit --rev (just after a write made by the test, or an older one): what it
must print then does not depend on when the watch got established.
"""

import json

from e2e_util import put_rev, revision_now

QUIET_SECONDS = 0.3  # after the expected lines: nothing else may follow this soon


def test_watch_prefix_in_one_group(any_etcdctl, keys):
    ctl = any_etcdctl
    start = revision_now(ctl, keys) + 1
    with ctl.watch("--prefix", keys.pods, "--rev", str(start)) as watch:
        ctl.ok("put", keys.pods + "a", "1")
        ctl.ok("put", keys.events + "a", "not watched")
        ctl.ok("put", keys.pods + "b", "2")
        ctl.ok("del", keys.pods + "a")
        assert watch.read_lines(9) == ["PUT", keys.pods + "a", "1", "PUT", keys.pods + "b", "2",
                                       "DELETE", keys.pods + "a", ""]
        assert watch.no_more_lines(QUIET_SECONDS) == []


def test_watch_prefix_across_groups(any_etcdctl, keys):
    ctl = any_etcdctl
    start = revision_now(ctl, keys) + 1
    with ctl.watch("--prefix", "/registry/", "--rev", str(start)) as watch:
        ctl.ok("put", keys.pods + "a", "1")
        ctl.ok("put", keys.events + "a", "2")
        ctl.ok("put", keys.top + "a", "not watched")
        ctl.ok("put", keys.mid + "a", "3")
        ctl.ok("txn", stdin=f"\nput {keys.events}b 4\nput {keys.events}c 5\n\n\n")
        ctl.ok("del", "--prefix", keys.events)
        expected = ["PUT", keys.pods + "a", "1", "PUT", keys.events + "a", "2", "PUT", keys.mid + "a", "3",
                    "PUT", keys.events + "b", "4", "PUT", keys.events + "c", "5",
                    "DELETE", keys.events + "a", "", "DELETE", keys.events + "b", "",
                    "DELETE", keys.events + "c", ""]
        assert watch.read_lines(len(expected)) == expected
        assert watch.no_more_lines(QUIET_SECONDS) == []


def test_watch_from_past_revision_with_prev_kv(any_etcdctl, keys):
    ctl = any_etcdctl
    k = keys.events + "k"
    first = put_rev(ctl, k, "1")
    ctl.ok("put", keys.top + "k", "x")
    put_rev(ctl, k, "2")
    ctl.ok("del", k)
    # Replays history from `first`, then goes on live.
    with ctl.watch("--prev-kv", k, "--rev", str(first)) as watch:
        assert watch.read_lines(13) == ["PUT", k, "1",
                                        "PUT", k, "1", k, "2",
                                        "DELETE", k, "2", k, ""]
        ctl.ok("put", k, "3")
        assert watch.read_lines(3) == ["PUT", k, "3"]
        assert watch.no_more_lines(QUIET_SECONDS) == []


def test_watch_range_and_json(etcdctl, keys):
    start = revision_now(etcdctl, keys) + 1
    # The range [events/b, pods/b): part of group 3, group 1's /registry/m-..., part of group 2.
    with etcdctl.watch("-w", "json", keys.events + "b", keys.pods + "b", "--rev", str(start)) as watch:
        revisions = [put_rev(etcdctl, key, "v") for key in
                     (keys.events + "a", keys.events + "b", keys.mid + "a", keys.pods + "a", keys.pods + "b")]
        seen = []
        while len(seen) < 3:
            answer = json.loads(watch.read_lines(1)[0])
            assert set(answer) >= {"Header", "Events", "CompactRevision", "Canceled", "Created"}
            assert answer["Canceled"] is False and answer["CompactRevision"] == 0
            seen.extend(answer["Events"])
        assert [(event.get("type", "PUT"), event["kv"]["mod_revision"]) for event in seen] == [
            ("PUT", revisions[1]), ("PUT", revisions[2]), ("PUT", revisions[3])]
        assert seen[0]["kv"]["create_revision"] == revisions[1] and seen[0]["kv"]["version"] == 1
        assert watch.no_more_lines(QUIET_SECONDS) == []
