"""The event loop Tessera's servers run on: uvloop.

A replica's raft loop and a router's front end spend most of their time in
the event loop's own work: waking on a socket, running callbacks, writing.
uvloop (libuv, driven from Cython) does that work for less CPU than asyncio's
pure-Python selector loop: alternating runs here, 1,000 clients over three
groups, replicas' CPU per put 57.7/54.9 -> 51.7/49.7 us and one client's put
p50 1.28/1.33 -> 1.21/1.23 ms. Everything else (tools, tests in-process) keeps
asyncio's default loop; nothing in Tessera depends on which loop runs it,
beyond one thing uvloop does differently: its clock and timers count whole
milliseconds, so code never compares a timer's firing with another clock.
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
