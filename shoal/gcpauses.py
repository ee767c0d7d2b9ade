"""Garbage-collection pauses, kept short on a large heap, and measured.

CPython's full collection walks every tracked object while it holds the GIL. A leader's cache of a hundred
thousand task documents is a heap of about a gigabyte, and one full pass over it takes from most of a second
on an idle machine to several on a busy one; every thread stands still meanwhile, the lease keeper's ticks
included, so the leader looks frozen and gives way (seen in `bench.scale`). Nearly all of what the daemon
keeps is acyclic JSON that reference counting frees; long-lived objects need no scanning. So every
FREEZE_INTERVAL the objects alive then move to the permanent generation (`gc.freeze`), and collections scan
only what was allocated since. Cyclic garbage that was frozen while still alive (a closed session, say) is
reclaimed by a full collection every UNFREEZE_INTERVAL, which is the one long pause left, once an hour.

What survives a full collection of generation 2 is long-lived by definition: it is frozen right after (at the
next CHECK_INTERVAL), so a daemon that allocates fast between freezes (a leader scaling a hundred thousand
tasks) does not pay for the same survivors in every full collection.

Every pause is timed through `gc.callbacks`; the figures are served by the debug endpoint, and a pause longer
than LONG_PAUSE is logged. Nothing here counts the frozen objects: `gc.get_freeze_count()` walks all of them
(hundreds of milliseconds for two million on a busy machine, seen stalling a leader in `bench.scale`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

FREEZE_INTERVAL = 30.0
CHECK_INTERVAL = 1.0  # how soon the survivors of a full collection are frozen
UNFREEZE_INTERVAL = 3600.0
LONG_PAUSE = 0.25


class GCPauses:
    """Times the collector's pauses and, while `run` runs, keeps long-lived objects out of its scans."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]  # collections per generation
        self.total = 0.0  # seconds spent collecting
        self.longest = 0.0
        self.longest_generation = -1
        self.freezes = 0
        self._began = 0.0
        self._full_collection_done = False

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._began = time.perf_counter()
            return
        took = time.perf_counter() - self._began
        generation = int(info.get("generation", 0))
        self.count[generation] += 1
        self.total += took
        if took > self.longest:
            self.longest, self.longest_generation = took, generation
        if generation == 2:
            self._full_collection_done = True
        if took > LONG_PAUSE:
            log.warning("garbage collection of generation %d held every thread for %.0f ms", generation,
                        took * 1000)

    async def run(self) -> None:
        """Freeze what is alive every FREEZE_INTERVAL; every UNFREEZE_INTERVAL, collect everything once."""
        self.install()
        last_full = last_freeze = time.monotonic()
        try:
            while True:
                await asyncio.sleep(min(CHECK_INTERVAL, FREEZE_INTERVAL))
                now = time.monotonic()
                if not self._full_collection_done and now - last_freeze < FREEZE_INTERVAL:
                    continue
                if now - last_full >= UNFREEZE_INTERVAL:
                    gc.unfreeze()
                    gc.collect()
                    last_full = time.monotonic()
                gc.freeze()
                self._full_collection_done = False
                self.freezes += 1
                last_freeze = time.monotonic()
        finally:
            gc.unfreeze()
            self.uninstall()

    def stats(self) -> dict[str, object]:
        return {"Collections": list(self.count), "TotalMs": round(self.total * 1000, 1),
                "LongestMs": round(self.longest * 1000, 1), "LongestGeneration": self.longest_generation,
                "Freezes": self.freezes}
