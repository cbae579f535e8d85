"""python -m bench.edge_ceiling runs end to end: h2load's gRPC Puts all answered by the edge's fast path."""

import shutil

import pytest

from bench.edge_ceiling import measure


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed (apt-get install nghttp2-client)")
def test_every_call_is_answered_and_the_cpu_counted():
    figures = measure(requests=3000, connections=4, streams=20)
    assert figures["succeeded"] == 3000
    assert figures["server_cpu_s"] > 0 and figures["calls_per_second"] > 0
