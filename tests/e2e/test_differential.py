"""The differential tester: `endpoint` must answer like a real etcd (`reference_endpoint`).

Seeded sequences (differential.py) run on both and every answer is compared.
Seeds: TESSERA_DIFF_SEEDS (a count, default DEFAULT_SEEDS, or a list like
"3,17"), or --seed N to replay one; TESSERA_DIFF_STEPS sets the length.
The tester itself is checked here too: two real etcd servers agree, and a
side made to deviate on purpose is reported.
"""

from __future__ import annotations

import asyncio
import os

import pytest

import differential
from differential import Difference, Endpoint, run_ops, run_sequence
from e2e_util import group_of
from tessera.api.rpc_pb2 import Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchResponse

DEFAULT_SEEDS = 10
STEPS = int(os.environ.get("TESSERA_DIFF_STEPS", differential.DEFAULT_STEPS))


def differential_seeds(config) -> list[int]:
    only = config.getoption("--seed", default=None)
    if only is not None:
        return [only]
    given = os.environ.get("TESSERA_DIFF_SEEDS", str(DEFAULT_SEEDS))
    if "," in given:
        return [int(seed) for seed in given.split(",") if seed.strip()]
    return list(range(int(given)))


def pytest_generate_tests(metafunc):
    if "diff_seed" in metafunc.fixturenames:
        seeds = differential_seeds(metafunc.config)
        metafunc.parametrize("diff_seed", seeds, ids=[f"seed{s}-{differential.mode_of(s)}" for s in seeds])


def test_endpoint_answers_like_etcd(diff_seed, reference_endpoint, endpoint):
    runner = asyncio.run(run_sequence(diff_seed, reference_endpoint, endpoint, steps=STEPS))
    assert runner.steps >= STEPS


# ------------------------------------------------------------------ cross-group txns


def test_cross_group_txn_is_refused(endpoint, endpoint_kind):
    """Tessera refuses a txn whose keys are in more than one group (FAILED_PRECONDITION)."""
    if endpoint_kind == "etcd":
        pytest.skip("etcd has no groups: a txn over several prefixes is an ordinary txn there")

    async def attempt():
        client = Endpoint("endpoint", endpoint)
        marker = b"kx" + os.urandom(4).hex().encode()
        pods, top, events = b"/registry/pods/" + marker, marker + b"/a", b"/registry/events/" + marker
        assert len({group_of(pods), group_of(top), group_of(events)}) == 3
        try:
            writes = TxnRequest(success=[RequestOp(request_put=PutRequest(key=pods, value=b"1")),
                                         RequestOp(request_put=PutRequest(key=top, value=b"2"))])
            compare_elsewhere = TxnRequest(
                compare=[Compare(key=events, target=Compare.VERSION, result=Compare.EQUAL, version=0)],
                success=[RequestOp(request_put=PutRequest(key=pods, value=b"1"))])
            read_elsewhere = TxnRequest(success=[RequestOp(request_put=PutRequest(key=pods, value=b"1"))],
                                        failure=[RequestOp(request_range=RangeRequest(key=top))])
            results = [await client.call("Txn", request) for request in (writes, compare_elsewhere, read_elsewhere)]
            left = [await client.call("Range", RangeRequest(key=key)) for key in (pods, top)]
        finally:
            for key in (pods, top, events):
                await client.call("DeleteRange", differential.DeleteRangeRequest(key=key))
            await client.close()
        return results, left

    results, left = asyncio.run(attempt())
    for result in results:
        assert result[:2] == ("error", "FAILED_PRECONDITION"), result
    assert all(answer[0] == "ok" and not answer[1].kvs for answer in left), "a refused txn wrote"


# ------------------------------------------------------------------ the tester itself
# Two real etcd servers, whatever `endpoint` is: the tester must agree with itself
# and must report a side that deviates.


@pytest.fixture
def two_etcds(etcd_server, reference_endpoint):
    return reference_endpoint, etcd_server.endpoint


class ShiftedCreateRevision(Endpoint):
    """Answers ranges with create_revision one too high."""

    def transform(self, method, request, result):
        if method == "Range" and result[0] == "ok":
            for kv in result[1].kvs:
                kv.create_revision += 1
        return result


class RewordedErrors(Endpoint):
    """Says "compacted" in its own words."""

    def transform(self, method, request, result):
        if result[0] == "error" and "compacted" in result[2]:
            return ("error", result[1], "mvcc: revision compacted")
        return result


class DropsSecondEvent(Endpoint):
    """Loses the second watch event it receives."""

    events_seen = 0

    def transform_watch(self, response):
        kept = []
        for event in response.events:
            self.events_seen += 1
            if self.events_seen != 2:
                kept.append(event)
        if len(kept) == len(response.events):
            return response
        copy = WatchResponse()
        copy.CopyFrom(response)
        del copy.events[:]
        copy.events.extend(kept)
        return copy


class StaleReadHeader(Endpoint):
    """Answers reads with a header revision one behind."""

    def transform(self, method, request, result):
        if method == "Range" and result[0] == "ok":
            result[1].header.revision -= 1
        return result


def puts(*keys_values):
    return [{"op": "put", "key": key, "value": value} for key, value in keys_values]


def ops_for(mode: str, marker: bytes = b"kfixed"):
    """A short fixed sequence touching what the deviating sides change."""
    keys = differential.key_set(mode, marker)
    a, b = keys.keys[0], keys.keys[1]
    return [
        *puts((a, b"1"), (b, b"2"), (a, b"3")),
        {"op": "range", "key": a, "range_end": differential.prefix_end(a)},
        {"op": "compact", "revision": ("R", 1)},
        {"op": "range", "key": a, "revision": ("R", 0)},
        {"op": "range", "key": a, "revision": ("R", 2)},
    ]


def run_fixed(two_etcds, mode="multi", types=(Endpoint, Endpoint), before=None):
    marker = b"k" + os.urandom(5).hex().encode()
    return asyncio.run(run_ops(ops_for(mode, marker), *two_etcds, mode=mode, marker=marker, endpoint_types=types,
                               before=before))


def test_tester_agrees_etcd_with_etcd(two_etcds):
    for mode in ("multi", "group2"):
        runner = run_fixed(two_etcds, mode)
        assert runner.steps == len(ops_for(mode)) + 1  # + the live watch's sentinel
        assert runner.errors == 1  # the read below the compaction, the same on both


def test_tester_reports_a_wrong_revision(two_etcds):
    with pytest.raises(Difference) as caught:
        run_fixed(two_etcds, types=(Endpoint, ShiftedCreateRevision))
    report = str(caught.value)
    assert "answers differ at step 4" in report
    assert "'create_revision': 'R0'" in report and "'create_revision': 'R1'" in report


def test_tester_reports_a_different_error(two_etcds):
    with pytest.raises(Difference) as caught:
        run_fixed(two_etcds, types=(Endpoint, RewordedErrors))
    report = str(caught.value)
    assert "answers differ at step 6" in report
    assert "('error', 'OUT_OF_RANGE', 'etcdserver: mvcc: required revision has been compacted')" in report
    assert "('error', 'OUT_OF_RANGE', 'mvcc: revision compacted')" in report


def test_tester_reports_a_lost_watch_event(two_etcds):
    with pytest.raises(Difference) as caught:
        run_fixed(two_etcds, types=(Endpoint, DropsSecondEvent))
    assert "watch events differ" in str(caught.value)


def test_tester_reports_diverged_state(two_etcds):
    async def extra_key(runner):
        # A key of the sequence that only the second side has.
        await runner.sides[1].endpoint.call("Put", PutRequest(key=runner.keys.keys[0], value=b"stray"))

    with pytest.raises(Difference) as caught:
        run_fixed(two_etcds, before=extra_key)
    assert "answers differ at step 4" in str(caught.value)  # the first read: other versions, revisions


def test_tester_read_headers_compared_only_within_one_group(two_etcds):
    run_fixed(two_etcds, "multi", types=(Endpoint, StaleReadHeader))  # ignored: reads may span groups
    with pytest.raises(Difference) as caught:
        run_fixed(two_etcds, "group3", types=(Endpoint, StaleReadHeader))
    assert "answers differ at step 4" in str(caught.value)


def test_tester_reports_seed_and_replay(two_etcds):
    with pytest.raises(Difference) as caught:
        asyncio.run(run_sequence(7, *two_etcds, steps=60, endpoint_types=(Endpoint, ShiftedCreateRevision)))
    report = str(caught.value)
    assert report.startswith("differential seed=7 mode=multi:")
    assert "--seed 7" in report
