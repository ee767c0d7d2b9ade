"""Waiting on a condition with a deadline, for tests that drive real processes and sockets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

DEADLINE = 20.0


async def wait_until(condition: Callable[[], bool], timeout: float = DEADLINE, interval: float = 0.02) -> None:
    """Poll `condition` until it holds; fail the test once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(interval)
