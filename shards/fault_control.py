"""Fault injection: dropped peer links and a slow disk for chaos runs; kills at durability boundaries.

Off unless the environment variable TESSERA_FAULT_CONTROL names a file when a
replica starts (`from_environment()` is then None and the hooks cost one
attribute test). A chaos run sets it once for every process it starts; each
replica then re-reads the file whole at most every RELOAD_INTERVAL_SECONDS (it
is a few hundred bytes; a modification time could miss two changes within one
clock tick), so a fault starts and heals without restarting anything and
without a port or RPC of its own. The file is JSON,
replaced whole (write, then rename) so a reader never sees half of it:

    {"blocked": [["PEER_ADDRESS_FROM", "PEER_ADDRESS_TO"], ...],
     "fsync_delay_seconds": {"WAL_DIRECTORY": SECONDS, ...}}

`blocked` holds one-way links by the replicas' peer addresses (unique in a
cluster): the transport drops every raft batch and snapshot from the first to
the second, as a network partition would. `fsync_delay_seconds` stalls each
fdatasync of the WAL in that directory, as a slow disk would. A file that
cannot be read or parsed leaves the last faults read in force.

Failpoints. A write crosses named durability boundaries on its way from the
WAL to the store's durable point (`DURABILITY_BOUNDARIES`, in that order).
TESSERA_FAILPOINT=NAME@N kills the process with SIGKILL, as kill -9 would,
the Nth time it reaches boundary NAME (NAME alone: the first time), so a
test can crash a replica exactly between two of them. Unset, `failpoint()`
costs one comparison.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time

ENVIRONMENT_VARIABLE = "TESSERA_FAULT_CONTROL"
FAILPOINT_VARIABLE = "TESSERA_FAILPOINT"
WAL_SYNCED = "wal-synced"  # a batch of entries is fdatasynced in the WAL, not yet applied
STORE_APPLIED = "store-applied"  # a batch is committed to LMDB (page cache only), its writes answered next
STORE_SYNCED = "store-synced"  # the store's file is fdatasynced, the durable point not yet recorded
STORE_DURABLE = "store-durable"  # the durable point is recorded, not yet adopted by the replica
DURABILITY_BOUNDARIES = (WAL_SYNCED, STORE_APPLIED, STORE_SYNCED, STORE_DURABLE)
# How stale a reader's view of the file may be: faults last seconds, so 50 ms is prompt enough.
RELOAD_INTERVAL_SECONDS = 0.05


class FaultControl:
    """The faults the file at `path` asks for; safe to ask from any thread."""

    def __init__(self, path: str):
        self.path = path
        self._lock = threading.Lock()
        self._next_look = 0.0
        self._blocked: frozenset[tuple[str, str]] = frozenset()
        self._fsync_delays: dict[str, float] = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_look:
            return
        with self._lock:
            self._next_look = now + RELOAD_INTERVAL_SECONDS
            try:
                with open(self.path) as file:
                    faults = json.load(file)
                blocked = frozenset((sender, receiver) for sender, receiver in faults.get("blocked", []))
                delays = {os.path.realpath(directory): float(seconds)
                          for directory, seconds in faults.get("fsync_delay_seconds", {}).items()}
            except FileNotFoundError:
                blocked, delays = frozenset(), {}
            except (OSError, ValueError, TypeError):
                return  # a file being replaced or malformed: keep what was in force
            self._blocked, self._fsync_delays = blocked, delays

    def blocks(self, sender: str, receiver: str) -> bool:
        """Whether messages from peer address `sender` to `receiver` are to be dropped."""
        self._refresh()
        return (sender, receiver) in self._blocked

    def fsync_delay_seconds(self, wal_directory: str) -> float:
        """How long to stall before each fdatasync of the WAL in `wal_directory` (its real path)."""
        self._refresh()
        return self._fsync_delays.get(wal_directory, 0.0)


def from_environment() -> FaultControl | None:
    path = os.environ.get(ENVIRONMENT_VARIABLE)
    return FaultControl(path) if path else None


def write_faults(path: str, blocked=(), fsync_delay_seconds=None) -> None:
    """Replace the control file (whole, by rename): what a chaos run calls to start or heal faults."""
    temporary = f"{path}.tmp"
    with open(temporary, "w") as file:
        json.dump({"blocked": [list(link) for link in blocked],
                   "fsync_delay_seconds": dict(fsync_delay_seconds or {})}, file)
    os.replace(temporary, path)


def _armed_failpoint() -> list | None:
    """[boundary, hits left] from the environment; None when no failpoint is armed."""
    armed = os.environ.get(FAILPOINT_VARIABLE)
    if not armed:
        return None
    name, _, hits = armed.partition("@")
    if name not in DURABILITY_BOUNDARIES:
        raise ValueError(f"{FAILPOINT_VARIABLE}={armed!r}: no boundary {name!r}; "
                         f"there are {', '.join(DURABILITY_BOUNDARIES)}")
    return [name, int(hits or 1)]


_armed = _armed_failpoint()


def failpoint(boundary: str) -> None:
    """Kill this process (SIGKILL) if it reached `boundary` as often as the environment armed it to."""
    if _armed is None or _armed[0] != boundary:
        return
    _armed[1] -= 1
    if _armed[1] <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
