"""The event loop Tessera's servers run on: uvloop.

A replica's raft loop and a router's front end spend most of their time in
the event loop's own work: waking on a socket, running callbacks, writing.
uvloop (libuv, driven from Cython) does that work for less CPU than asyncio's
pure-Python selector loop: alternating runs here, 1,000 clients over three
groups, replicas' CPU per put 57.7/54.9 -> 51.7/49.7 us and one client's put
p50 1.28/1.33 -> 1.21/1.23 ms. Everything else (tools, tests in-process) keeps
asyncio's default loop. Code written for both minds two differences: uvloop's
clock and timers count whole milliseconds, so nothing compares a timer's firing
with another clock; and its transports raise on a write once the connection
has closed, where asyncio's drop it, so every write on the internal streams goes
through tessera.api.internal_stream.write_if_open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import TypeVar

import uvloop

T = TypeVar("T")


def run(main: Coroutine[object, object, T]) -> T:
    """Run `main` to its end on a new uvloop event loop, as asyncio.run does on asyncio's."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
