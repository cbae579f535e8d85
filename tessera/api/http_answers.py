"""etcd's HTTP answers that replicas and routers both give: /health and the /metrics content type."""

from __future__ import annotations

import json

# What etcd's Prometheus client declares; the text exposition format.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"


def health_answer(healthy: bool, reason: str) -> tuple[int, dict[str, str], bytes]:
    """(HTTP status, headers, body) of etcd's /health verdict.

    A failure goes through Go's http.Error in etcd: 503, a trailing newline, and nosniff.
    """
    body = json.dumps({"health": "true" if healthy else "false", "reason": reason}, separators=(",", ":")).encode()
    if healthy:
        return 200, {"Content-Type": TEXT_CONTENT_TYPE}, body
    return 503, {"Content-Type": TEXT_CONTENT_TYPE, "X-Content-Type-Options": "nosniff"}, body + b"\n"
