"""Auto-compaction as etcd offers it, for the whole cluster: by revision count or by age.

`revision` mode keeps the last `retention` revisions: every check it compacts
to the current revision minus `retention`. `periodic` mode keeps `retention`
seconds of history: it samples the revision every tenth of the retention and
compacts to the newest sample that is at least `retention` old (etcd's
periodic compactor does the same). A compaction covers every group (the
router's Compact), and one that finds the revision already compacted moves on.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time

from tessera.api import errors
from tessera.api.rpc_pb2 import CompactionRequest

log = logging.getLogger("tessera.router")

REVISION_CHECK_SECONDS = 300.0  # etcd's revision compactor looks every 5 minutes
MODES = ("periodic", "revision")


class AutoCompactor:
    def __init__(self, router, mode: str, retention: float, check_seconds: float | None = None,
                 clock=time.monotonic):
        if mode not in MODES:
            raise ValueError(f"auto-compaction mode must be one of {', '.join(MODES)}, not {mode!r}")
        if retention <= 0:
            raise ValueError("auto-compaction retention must be positive")
        self.router = router
        self.mode = mode
        self.retention = retention
        self.check_seconds = check_seconds or (retention / 10 if mode == "periodic" else REVISION_CHECK_SECONDS)
        self.clock = clock
        self.compacted = 0
        self._samples: collections.deque[tuple[float, int]] = collections.deque()  # (time, revision)

    def target(self) -> int:
        """The revision to compact to now (0: nothing yet)."""
        if self.mode == "revision":
            return self.router.revision - int(self.retention)
        now = self.clock()
        self._samples.append((now, self.router.revision))
        target = 0
        while self._samples and now - self._samples[0][0] >= self.retention:
            target = self._samples.popleft()[1]
        return target

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.check_seconds)
            target = self.target()
            if target <= self.compacted:
                continue
            try:
                await self.router.compact(CompactionRequest(revision=target))
                log.info("auto-compaction (%s, retention %g) compacted to revision %d",
                         self.mode, self.retention, target)
            except errors.Compacted:
                pass  # compacted already (by hand, or by another router)
            except errors.EtcdError as error:
                log.warning("auto-compaction to revision %d failed (%s); the next check tries again",
                            target, error.message)
                continue
            self.compacted = target
