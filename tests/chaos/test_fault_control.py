"""The fault hooks of chaos runs: a blocked peer link drops raft batches, a slow disk stalls fsync."""

from __future__ import annotations

import asyncio
import socket
import time

from shards import fault_control
from shards.fault_control import ENVIRONMENT_VARIABLE, RELOAD_INTERVAL_SECONDS, write_faults
from shards.raft.messages import Message, MessageType
from shards.raft.storage import Entry, HardState
from shards.transport import PeerTransport
from shards.wal import WriteAheadLog


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def heartbeat(term: int) -> Message:
    return Message(MessageType.HEARTBEAT, to=2, frm=1, term=term, commit=0)


def test_hooks_are_off_without_the_environment_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    assert fault_control.from_environment() is None
    with WriteAheadLog.open(tmp_path / "wal") as wal:
        assert wal._faults is None


def test_blocked_link_drops_batches_until_healed(monkeypatch, tmp_path):
    control = str(tmp_path / "faults.json")
    write_faults(control)
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, control)
    address_a, address_b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"

    async def scenario():
        received: list[Message] = []
        arrived = asyncio.Event()

        def inbox(messages):
            received.extend(messages)
            arrived.set()

        a = PeerTransport(1, address_a, lambda messages: None)
        b = PeerTransport(2, address_b, inbox)
        await a.start()
        await b.start()
        try:
            a.set_peer(2, address_b)
            a.send([heartbeat(1)])
            await asyncio.wait_for(arrived.wait(), 5)
            write_faults(control, blocked=[(address_a, address_b)])
            await asyncio.sleep(2 * RELOAD_INTERVAL_SECONDS)  # the reader looks at most this often
            a.send([heartbeat(2)])
            assert a.stats(2).batches_dropped == 1
            write_faults(control)
            await asyncio.sleep(2 * RELOAD_INTERVAL_SECONDS)
            arrived.clear()
            a.send([heartbeat(3)])
            await asyncio.wait_for(arrived.wait(), 5)
            # One stream, in order: had term 2 been sent, it would have arrived before term 3.
            assert [message.term for message in received] == [1, 3]
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(scenario())


def test_slow_disk_stalls_each_fsync_of_that_wal_only(monkeypatch, tmp_path):
    control = str(tmp_path / "faults.json")
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, control)
    write_faults(control, fsync_delay_seconds={str(tmp_path / "slow"): 0.3})
    with WriteAheadLog.open(tmp_path / "slow") as slow, WriteAheadLog.open(tmp_path / "fast") as fast:
        timings = {}
        for name, wal in (("slow", slow), ("fast", fast)):
            started = time.monotonic()
            wal.append([Entry(1, 1, 0, b"x")], HardState(term=1, vote=0, commit=0))
            timings[name] = time.monotonic() - started
        assert timings["slow"] >= 0.3
        assert timings["fast"] < 0.3
        write_faults(control)
        time.sleep(2 * RELOAD_INTERVAL_SECONDS)
        started = time.monotonic()
        slow.append([Entry(1, 2, 0, b"y")], HardState(term=1, vote=0, commit=0))
        assert time.monotonic() - started < 0.3
