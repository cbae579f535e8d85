"""A whole Tessera cluster for tests: the launcher of `tessera up`, on an event loop of its own.

Tests are plain functions that may call asyncio.run many times; the
launcher's supervision and gRPC channels need one loop that outlives them,
so it runs in a background thread and tests hand it coroutines with `run`.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from tessera.launcher import Launcher
from tessera.netns import NetnsLauncher

# Small WAL segments: 12 replicas take 48 MB of disk, not 768 MB.
TEST_WAL_SEGMENT_BYTES = 4 * 1024 * 1024


class ClusterThread:
    """Start with `with ClusterThread(directory) as cluster:`; `cluster.endpoint` serves etcd's API."""

    def __init__(self, directory: Path, supervise: bool = False, replica_arguments=(), routers: int = 1,
                 netns: bool = False, client_tls=None):
        """`netns`: each process in a network namespace of its own (tessera/netns.py; needs root)."""
        self.reports: list[str] = []  # what the launcher said: exits and restarts
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tessera-launcher", daemon=True)
        options = dict(supervise=supervise, wal_segment_bytes=TEST_WAL_SEGMENT_BYTES,
                       replica_arguments=list(replica_arguments), report=self.reports.append)
        if netns:
            self.launcher = NetnsLauncher(directory, **options)
        else:
            self.launcher = Launcher(directory, listen="127.0.0.1:0", routers=routers, client_tls=client_tls,
                                     **options)

    def __enter__(self) -> ClusterThread:
        self._thread.start()
        try:
            self.run(self.launcher.start())
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        try:
            self.run(self.launcher.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def run(self, coroutine, timeout: float = 60.0):
        """Run a coroutine on the launcher's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def endpoint(self) -> str:
        return self.launcher.layout.listen

    def leader(self, group: int) -> int:
        return self.run(self.launcher.leader(group))

    def kill(self, group: int, member: int) -> None:
        self.launcher.kill(group, member)

    def restart(self, group: int, member: int) -> None:
        self.launcher.restart(group, member)
