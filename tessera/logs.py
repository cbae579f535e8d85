"""Structured logs: one JSON object a line on stderr, with the process's component, group and member.

etcd logs JSON lines through zap; ours carry the same kind of fields ("ts",
"level", "caller" as the logger's name, "msg") and what places the line in
a sharded cluster ("component", and "group" and "member" for a replica), so
a log pipeline can sort the lines of 13 processes.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonLines(logging.Formatter):
    def __init__(self, **fields):
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            **self.fields,
            "caller": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line)


def configure(component: str, **fields) -> None:
    """Log INFO and above as JSON lines on stderr, every line carrying `component` and `fields`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines(component=component, **fields))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
