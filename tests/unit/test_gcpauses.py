"""Garbage-collection pauses: timed, and long-lived objects frozen out of the collector's scans."""

from __future__ import annotations

import asyncio
import contextlib
import gc

import pytest

from shoal import gcpauses
from shoal.gcpauses import GCPauses
from tests.unit.waiting import wait_until


def test_every_collection_is_timed() -> None:
    pauses = GCPauses()
    pauses.install()
    try:
        gc.collect()
    finally:
        pauses.uninstall()
    assert pauses.count[2] >= 1 and pauses.total > 0 and pauses.longest_generation == 2
    assert pauses._callback not in gc.callbacks


async def test_objects_alive_at_a_freeze_are_left_out_of_collections_until_the_task_stops(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpauses, "FREEZE_INTERVAL", 0.01)
    kept = [{"task": n} for n in range(10_000)]
    pauses = GCPauses()
    runner = asyncio.create_task(pauses.run())
    try:
        await wait_until(lambda: pauses.freezes >= 1)
        assert gc.get_freeze_count() >= len(kept)
        assert pauses.stats()["Freezes"] == pauses.freezes
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert gc.get_freeze_count() == 0, "unfrozen when it stops"


async def test_the_survivors_of_a_full_collection_are_frozen_soon_after(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpauses, "FREEZE_INTERVAL", 3600.0)
    monkeypatch.setattr(gcpauses, "CHECK_INTERVAL", 0.01)
    pauses = GCPauses()
    runner = asyncio.create_task(pauses.run())
    try:
        await asyncio.sleep(0.05)
        assert pauses.freezes == 0  # nothing to do yet: no full collection, the interval far off
        kept = [[n] for n in range(1000)]
        gc.collect()
        await wait_until(lambda: pauses.freezes == 1)
        assert gc.get_freeze_count() >= len(kept)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_a_full_collection_comes_back_every_unfreeze_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcpauses, "FREEZE_INTERVAL", 0.01)
    monkeypatch.setattr(gcpauses, "UNFREEZE_INTERVAL", 0.0)

    class Cycle:
        def __init__(self) -> None:
            self.me = self

    pauses = GCPauses()
    runner = asyncio.create_task(pauses.run())
    try:
        await wait_until(lambda: pauses.freezes >= 1)
        Cycle()  # garbage in a cycle, frozen at the next freeze unless collected first
        full_before = pauses.count[2]
        await wait_until(lambda: pauses.count[2] > full_before)
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
    assert not [o for o in gc.get_objects() if isinstance(o, Cycle)], "the cycle was reclaimed"
