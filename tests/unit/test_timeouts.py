"""`within`: a deadline on an await that never loses a cancellation (Python 3.11's wait_for can)."""

from __future__ import annotations

import asyncio

import pytest

from shoal.timeouts import within


async def test_a_cancellation_that_arrives_as_the_awaited_future_finishes_is_not_lost() -> None:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[int] = loop.create_future()
    waiter = asyncio.create_task(within(done, 10))
    await asyncio.sleep(0)  # the waiter is now awaiting `done`

    done.set_result(1)
    waiter.cancel()  # in the same loop iteration: wait_for would return 1 here

    with pytest.raises(asyncio.CancelledError):
        await waiter


async def test_the_deadline_raises_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(5), 0.01)


async def test_the_result_comes_back_and_none_means_no_deadline() -> None:
    async def answer() -> int:
        await asyncio.sleep(0.01)
        return 42

    assert await within(answer(), None) == 42
    assert await within(answer(), 1) == 42
