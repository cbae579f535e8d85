"""bench/netem_latency.py at a tiny size: it brings the cluster up across namespaces, measures puts, and says
which latencies it could not make. Its figures are not looked at: this host's CPU is shared."""

from __future__ import annotations

import math

import pytest

from bench import netem_latency
from tessera import netns


def test_tiny_run_measures_puts_and_names_what_it_cannot_measure(tmp_path):
    if netns.unavailable():
        pytest.skip(netns.unavailable())
    lines = []
    rows = netem_latency.measure([0.0, 1.0], duration=0.5, clients=8, connections=2, prefixes=("/bench/",),
                                 directory=tmp_path, report=lines.append)
    assert [row["latency_ms"] for row in rows] == [0.0, 1.0] and len(lines) == 2
    for row in rows:
        if "not_measured" in row:  # this kernel has no netem: only the delayed rows may be missing
            assert row["latency_ms"] and row["not_measured"] == "this kernel has no netem qdisc (sch_netem)"
            continue
        assert row["ops_per_second"] > 0 and row["errors"] == {}
        assert math.isfinite(row["latency_ms_p99"]) and row["latency_ms_p99"] >= row["latency_ms_p50"]
