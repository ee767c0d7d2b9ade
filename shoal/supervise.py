"""Named, supervised long-running loops: a crash is logged and the loop starts again; stop() is idempotent."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self, name: str, restart_delay: float = 0.5) -> None:
        self.name = name
        self.restart_delay = restart_delay
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.crashes: dict[str, int] = {}

    def start(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run `loop()` until stop(); restart it whenever it raises or returns unexpectedly."""
        if name in self._tasks and not self._tasks[name].done():
            return
        self._tasks[name] = asyncio.create_task(self._run(name, loop), name=f"{self.name}:{name}")

    async def _run(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await loop()
                log.warning("%s: loop %s returned; starting it again", self.name, name)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.crashes[name] = self.crashes.get(name, 0) + 1
                log.exception("%s: loop %s crashed; starting it again", self.name, name)
            await asyncio.sleep(self.restart_delay)

    def running(self) -> list[str]:
        return [n for n, t in self._tasks.items() if not t.done()]

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
