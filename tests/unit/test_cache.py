"""The cache: indexes kept current by the watch, whole transactions before their revision counts as seen."""

from __future__ import annotations

import asyncio

from shoal.manager.store.base import Batch
from shoal.types import TASKS, TaskState
from tests.unit.manager_fixtures import make_task, running_harness


async def test_a_revision_counts_as_seen_only_once_its_whole_transaction_is_applied() -> None:
    async with running_harness() as h:
        tasks = [make_task(f"t{i:03d}", "web", node_id="n1", slot=i + 1) for i in range(250)]
        seen_at_wake: list[int] = []
        revision = h.store.revision + 1

        async def reader() -> None:
            await h.cache.wait_for_revision(revision)
            seen_at_wake.append(len(h.cache.tasks_of_service("web")))

        waiting = asyncio.create_task(reader())
        await asyncio.sleep(0)
        batch = Batch()
        for task in tasks:
            batch.create(TASKS, task)
        assert await h.store.commit(batch) == revision
        await waiting

        assert seen_at_wake == [250]


async def test_the_indexes_follow_tasks_as_they_move_and_run() -> None:
    async with running_harness() as h:
        await h.add_tasks(make_task("a", "web", node_id="n1", slot=3))
        await h.report("a", TaskState.RUNNING)
        assert [t["ID"] for t in h.cache.tasks_in_slots("web", [3])] == ["a"]
        assert h.cache.running_by_node("web") == {"n1": 1}

        task = await h.store.get(TASKS, "a")
        assert task is not None
        await h.commit(Batch().update(TASKS, dict(task, DesiredState="shutdown")))
        assert h.cache.running_by_node("web") == {}
        task = await h.store.get(TASKS, "a")
        assert task is not None
        await h.commit(Batch().delete(TASKS, task))

        assert h.cache.tasks_in_slots("web", [3]) == []
        assert "web" not in h.cache.tasks_by_slot and "web" not in h.cache.tasks_by_service
