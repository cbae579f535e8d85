"""The checkers on hand-made histories: each kind of bug is caught, clean histories pass."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from tessera.chaos.checker import (
    INVALID,
    TIMED_OUT,
    VALID,
    check_durability,
    check_linearizability,
    check_revisions,
    check_serializable_reads,
    check_watches,
)
from tessera.chaos.history import (
    CAS,
    DELETE,
    FAILED,
    OK,
    PUT,
    RANGE,
    READ,
    UNKNOWN,
    History,
    Operation,
    WatchEvent,
    WatchLog,
)


class Recorder:
    """Builds a history by hand: times in ms, revisions given."""

    def __init__(self):
        self.history = History()
        self.ids = itertools.count()

    def op(self, kind, key, start, end, outcome=OK, client=0, **fields) -> Operation:
        operation = Operation(id=next(self.ids), client=client, kind=kind, key=key, invoke_ns=start * 1_000_000,
                              complete_ns=end * 1_000_000, outcome=outcome, **fields)
        self.history.operations.append(operation)
        return operation

    def put(self, key, value, start, end, revision=0, outcome=OK, **fields):
        operation = self.op(PUT, key, start, end, outcome, value=value, revision=revision, **fields)
        if outcome == OK:
            self.history.changes.append(WatchEvent(revision, key, "PUT", value))
        return operation

    def read(self, key, found, start, end, mod_revision=0, revision=None, **fields):
        return self.op(READ, key, start, end, found=found, mod_revision=mod_revision,
                       revision=revision if revision is not None else mod_revision, **fields)


def verdict_of(check, history):
    verdict = check(history)
    return verdict.verdict, verdict.problems


# --- linearizability -----------------------------------------------------------------------


def test_sequential_history_is_linearizable():
    r = Recorder()
    r.put("k", "a", 0, 1, revision=2)
    r.read("k", "a", 2, 3, mod_revision=2)
    r.put("k", "b", 4, 5, revision=3, previous="a", has_previous=True)
    r.read("k", "b", 6, 7, mod_revision=3)
    r.op(DELETE, "k", 8, 9, deleted=1, revision=4)
    r.read("k", None, 10, 11, revision=4)
    assert verdict_of(check_linearizability, r.history) == (VALID, [])


def test_concurrent_read_may_see_either_value():
    r = Recorder()
    r.put("k", "a", 0, 1, revision=2)
    r.put("k", "b", 2, 10, revision=3)
    r.read("k", "b", 3, 4, mod_revision=3, client=1)
    r.read("k", "b", 5, 6, mod_revision=3, client=2)
    assert verdict_of(check_linearizability, r.history)[0] == VALID


def test_stale_read_is_caught_and_shown_in_a_small_window():
    r = Recorder()
    for step in range(20):  # history before the bug, on another value
        r.put("k", f"early-{step}", 10 * step, 10 * step + 1, revision=step + 2)
    r.put("k", "a", 300, 301, revision=30)
    r.put("k", "b", 302, 303, revision=31)
    stale = r.read("k", "a", 304, 305, mod_revision=30, client=1)
    r.read("k", "b", 306, 307, mod_revision=31, client=2)
    verdict, problems = verdict_of(check_linearizability, r.history)
    assert verdict == INVALID
    (problem,) = problems
    assert f"#{stale.id} " in problem and "key k: not linearizable" in problem
    # The window: the stale read, after the put of b that left the key holding b; nothing else.
    lines = problem.splitlines()
    assert "(1 operations)" in lines[0], problem
    assert lines[1].startswith("  held b, left by") and "put k=b" in lines[1], problem
    assert "read k -> a" in lines[2] and len(lines) == 3, problem


def test_read_cannot_see_a_write_that_had_not_started():
    r = Recorder()
    r.read("k", "a", 0, 1, mod_revision=2)
    r.put("k", "a", 2, 3, revision=2)
    assert verdict_of(check_linearizability, r.history)[0] == INVALID


def test_lost_write_is_caught():
    r = Recorder()
    r.put("k", "a", 0, 1, revision=2)
    r.read("k", None, 2, 3, revision=2)
    assert verdict_of(check_linearizability, r.history)[0] == INVALID


def test_lost_update_under_cas_is_caught():
    r = Recorder()
    r.put("k", "v0", 0, 1, revision=2)
    # Two clients compare-and-set from v0, one after the other, and both are told they won.
    r.op(CAS, "k", 2, 3, expected="v0", value="v1", succeeded=True, revision=3, client=1)
    r.op(CAS, "k", 4, 5, expected="v0", value="v2", succeeded=True, revision=4, client=2)
    verdict, problems = verdict_of(check_linearizability, r.history)
    assert verdict == INVALID and "cas k v0->v2" in problems[0]


def test_concurrent_cas_only_one_may_win():
    r = Recorder()
    r.put("k", "v0", 0, 1, revision=2)
    r.op(CAS, "k", 2, 10, expected="v0", value="v1", succeeded=True, revision=3, client=1)
    r.op(CAS, "k", 3, 9, expected="v0", value="v2", succeeded=False, revision=3, client=2)
    assert verdict_of(check_linearizability, r.history)[0] == VALID
    r.history.operations[-1].succeeded = True
    assert verdict_of(check_linearizability, r.history)[0] == INVALID


def test_unknown_write_may_or_may_not_have_happened():
    for found in ("a", "b"):
        r = Recorder()
        r.put("k", "a", 0, 1, revision=2)
        r.put("k", "b", 2, 3, outcome=UNKNOWN)
        r.read("k", found, 4, 5)
        r.read("k", found, 6, 7)
        assert verdict_of(check_linearizability, r.history)[0] == VALID, found


def test_unknown_write_cannot_be_undone_once_seen():
    r = Recorder()
    r.put("k", "a", 0, 1, revision=2)
    r.put("k", "b", 2, 3, outcome=UNKNOWN)
    r.read("k", "b", 4, 5)
    r.read("k", "a", 6, 7)
    assert verdict_of(check_linearizability, r.history)[0] == INVALID


def test_failed_write_must_not_be_seen():
    r = Recorder()
    r.put("k", "a", 0, 1, revision=2)
    r.put("k", "b", 2, 3, outcome=FAILED)
    r.read("k", "b", 4, 5)
    assert verdict_of(check_linearizability, r.history)[0] == INVALID


def test_put_previous_value_is_checked():
    r = Recorder()
    r.put("k", "a", 0, 1, revision=2)
    r.put("k", "b", 2, 3, revision=3, previous=None, has_previous=True)
    assert verdict_of(check_linearizability, r.history)[0] == INVALID


def test_delete_count_is_checked():
    r = Recorder()
    r.op(DELETE, "k", 0, 1, deleted=1, revision=2)
    assert verdict_of(check_linearizability, r.history)[0] == INVALID


def test_range_is_a_read_of_every_key_of_its_prefix():
    r = Recorder()
    r.put("p/a", "1", 0, 1, revision=2)
    r.put("p/b", "2", 2, 3, revision=3)
    r.op(RANGE, "p/", 4, 5, kvs={"p/a": ["1", 2], "p/b": ["2", 3]}, revision=3)
    assert verdict_of(check_linearizability, r.history)[0] == VALID
    r.op(RANGE, "p/", 6, 7, kvs={"p/a": ["1", 2]}, revision=3)  # p/b vanished
    verdict, problems = verdict_of(check_linearizability, r.history)
    assert verdict == INVALID and "key p/b" in problems[0]


def test_keys_are_checked_separately_and_quickly():
    """Many clients on many keys, a correct register per key: valid, and fast."""
    rng = random.Random(7)
    r = Recorder()
    values = {f"k{key}": None for key in range(8)}
    revision = 1
    now = 0
    for step in range(4000):
        key = f"k{rng.randrange(8)}"
        now += 1
        start, end = now, now + rng.randrange(1, 4)  # overlapping with their neighbours
        if rng.random() < 0.5:
            revision += 1
            r.put(key, f"v{step}", start, end, revision=revision, previous=values[key], has_previous=True,
                  client=step % 10)
            values[key] = f"v{step}"
        else:
            r.read(key, values[key], start, end, client=step % 10)
    started = time.monotonic()
    verdict = check_linearizability(r.history)
    assert verdict.verdict == VALID and verdict.checked == 4000
    assert time.monotonic() - started < 10


def test_search_gives_up_at_its_budget():
    """Many concurrent unknown writes and no answers: the budget ends the search, verdict not valid."""
    r = Recorder()
    for step in range(40):
        r.put("k", f"v{step}", step, 1000 + step, outcome=UNKNOWN, client=step)
    for step in range(40):
        # Each read sees a value another read contradicts: explores many orders before refuting.
        r.read("k", f"v{(step * 7) % 40}", 2000 + 2 * step, 2001 + 2 * step, client=100)
    verdict = check_linearizability(r.history, budget_seconds=0.2)
    assert verdict.verdict in (TIMED_OUT, INVALID)
    assert verdict.seconds < 30


# --- revisions -----------------------------------------------------------------------------


def test_revisions_of_a_clean_history_pass():
    r = Recorder()
    r.put("a", "1", 0, 1, revision=2)
    r.put("b", "2", 2, 3, revision=3)
    r.read("a", "1", 4, 5, mod_revision=2, revision=3)
    assert verdict_of(check_revisions, r.history) == (VALID, [])


def test_write_after_another_finished_needs_a_higher_revision():
    r = Recorder()
    r.put("a", "1", 0, 1, revision=5)
    r.put("b", "2", 2, 3, revision=4)  # another key: the router's floor must still lift it above 5
    verdict, problems = verdict_of(check_revisions, r.history)
    assert verdict == INVALID and "not above the 5" in problems[0]


def test_mod_revision_must_be_the_writes_revision():
    r = Recorder()
    r.put("a", "1", 0, 1, revision=2)
    r.read("a", "1", 2, 3, mod_revision=3, revision=3)
    assert verdict_of(check_revisions, r.history)[0] == INVALID


def test_serializable_read_may_be_stale_but_not_invented():
    r = Recorder()
    r.put("a", "1", 0, 1, revision=2)
    r.put("a", "2", 2, 3, revision=3)
    r.read("a", "1", 4, 5, mod_revision=2, serializable=True)  # stale: allowed
    assert verdict_of(check_serializable_reads, r.history)[0] == VALID
    assert verdict_of(check_linearizability, r.history)[0] == VALID  # serializable reads are not searched
    r.put("a", "3", 6, 7, outcome=FAILED)
    r.read("a", "3", 8, 9, mod_revision=4, serializable=True)
    assert verdict_of(check_serializable_reads, r.history)[0] == INVALID


# --- watches -------------------------------------------------------------------------------


def watched_history(events):
    r = Recorder()
    r.put("p/a", "1", 0, 1, revision=2)
    r.put("p/b", "2", 2, 3, revision=3)
    r.put("p/a", "3", 4, 5, revision=4)
    r.history.watches.append(WatchLog(watcher=0, prefix="p/", start_revision=2, events=events, covered_to=4,
                                      reconnects=1))
    return r.history


def test_watch_that_saw_everything_once_passes():
    history = watched_history([WatchEvent(2, "p/a", "PUT", "1"), WatchEvent(3, "p/b", "PUT", "2"),
                               WatchEvent(4, "p/a", "PUT", "3")])
    assert verdict_of(check_watches, history) == (VALID, [])


def test_duplicated_watch_event_is_caught():
    history = watched_history([WatchEvent(2, "p/a", "PUT", "1"), WatchEvent(3, "p/b", "PUT", "2"),
                               WatchEvent(3, "p/b", "PUT", "2"), WatchEvent(4, "p/a", "PUT", "3")])
    verdict, problems = verdict_of(check_watches, history)
    assert verdict == INVALID and "a duplicated event: PUT p/b=2 @3" in problems[0]


def test_watch_gap_and_disorder_are_caught():
    gap = watched_history([WatchEvent(2, "p/a", "PUT", "1"), WatchEvent(4, "p/a", "PUT", "3")])
    verdict, problems = verdict_of(check_watches, gap)
    assert verdict == INVALID and "missed PUT p/b=2 @3 (a gap)" in problems[0]
    disorder = watched_history([WatchEvent(3, "p/b", "PUT", "2"), WatchEvent(2, "p/a", "PUT", "1"),
                                WatchEvent(4, "p/a", "PUT", "3")])
    assert "out of revision order" in verdict_of(check_watches, disorder)[1][0]


def test_watch_event_with_a_wrong_value_is_caught():
    history = watched_history([WatchEvent(2, "p/a", "PUT", "1"), WatchEvent(3, "p/b", "PUT", "9"),
                               WatchEvent(4, "p/a", "PUT", "3")])
    assert "committed as PUT p/b=2 @3" in verdict_of(check_watches, history)[1][0]


# --- durability ----------------------------------------------------------------------------


def test_acknowledged_writes_in_the_log_pass():
    r = Recorder()
    r.put("a", "1", 0, 1, revision=2)
    r.put("a", "2", 2, 3, outcome=UNKNOWN)  # unknown: it may be missing
    assert verdict_of(check_durability, r.history) == (VALID, [])


def test_lost_acknowledged_write_is_caught():
    r = Recorder()
    r.put("a", "1", 0, 1, revision=2)
    r.history.changes.clear()  # the store lost it
    verdict, problems = verdict_of(check_durability, r.history)
    assert verdict == INVALID and "is lost" in problems[0]


def test_failed_write_in_the_log_is_caught():
    r = Recorder()
    r.put("a", "1", 0, 1, outcome=FAILED)
    r.history.changes.append(WatchEvent(2, "a", "PUT", "1"))
    verdict, problems = verdict_of(check_durability, r.history)
    assert verdict == INVALID and "the log has PUT a=1 @2" in problems[0]


def test_history_round_trips_through_its_file(tmp_path):
    history = watched_history([WatchEvent(2, "p/a", "PUT", "1")])
    history.final_revision = 4
    history.save(tmp_path / "history.jsonl")
    assert History.load(tmp_path / "history.jsonl") == history


@pytest.mark.parametrize("outcome", [OK, UNKNOWN])
def test_describe_names_the_outcome(outcome):
    r = Recorder()
    operation = r.put("k", "v", 0, 1, revision=2, outcome=outcome)
    assert ("@rev 2" if outcome == OK else "unknown") in operation.describe()


def test_complete_change_log_settles_unknown_writes():
    """An unknown put absent from the complete change log did not happen: reading its value is a violation;
    one present in it did happen."""
    r = Recorder()
    r.put("k", "a", 0, 1, revision=2)
    r.put("k", "b", 2, 3, outcome=UNKNOWN)
    r.read("k", "b", 4, 5, mod_revision=3)
    r.history.final_revision = 9  # the log is complete: it was read to an end marker
    assert verdict_of(check_linearizability, r.history)[0] == INVALID
    r.history.changes.append(WatchEvent(3, "k", "PUT", "b"))
    assert verdict_of(check_linearizability, r.history)[0] == VALID


def test_unknown_deletes_settled_by_the_delete_events_of_their_key():
    r = Recorder()
    r.put("k", "a", 0, 1, revision=2)
    r.op(DELETE, "k", 2, 3, outcome=UNKNOWN)
    r.read("k", None, 4, 5, revision=2)
    r.history.final_revision = 9
    assert verdict_of(check_linearizability, r.history)[0] == INVALID  # no delete event: it did not happen
    r.history.changes.append(WatchEvent(3, "k", "DELETE", None))
    assert verdict_of(check_linearizability, r.history)[0] == VALID


def test_saved_history_is_checked_again_from_the_command_line(tmp_path, capsys):
    from tessera.chaos.__main__ import main

    r = Recorder()
    r.put("k", "a", 0, 1, revision=2)
    r.read("k", None, 2, 3, revision=2)
    r.history.save(tmp_path / "history.jsonl")
    assert main(["--check", str(tmp_path / "history.jsonl")]) == 1
    assert "linearizability: invalid" in capsys.readouterr().out


def test_range_finding_a_key_nobody_wrote_is_caught():
    r = Recorder()
    r.put("p/a", "1", 0, 1, revision=2)
    r.op(RANGE, "p/", 2, 3, kvs={"p/a": ["1", 2], "p/ghost": ["9", 3]}, revision=3)
    verdict, problems = verdict_of(check_linearizability, r.history)
    assert verdict == INVALID and "key p/ghost" in problems[0]
