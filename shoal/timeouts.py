"""One way to put a deadline on an await.

`asyncio.wait_for` in Python 3.11 loses a cancellation that arrives while the awaited thing is finishing: it
returns the result instead, and the cancelled task carries on as if nothing happened. A loop that is being
stopped then never stops (a health check kept probing a stopped task; a daemon ignored SIGTERM). The
`asyncio.timeout` context manager has no such flaw, so every deadline in shoal goes through `within`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """Await `awaitable`, raising TimeoutError after `timeout` seconds (None: no deadline)."""
    async with asyncio.timeout(timeout):
        return await awaitable
