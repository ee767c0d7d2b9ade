"""The applier: plans written in chunks, per-op retry after a stale version, and fencing on the leader key."""

from __future__ import annotations

import pytest

from shoal.errors import Conflict, NotLeader
from shoal.manager.applier import CHUNK, Applier
from shoal.manager.store.base import Batch, object_key
from shoal.manager.store.memory import MemoryStore
from shoal.types import TASKS, Doc, Plan, TaskState, task_state
from tests.unit.manager_fixtures import CountingStore, make_task


async def stored_tasks(store: MemoryStore, *tasks: Doc) -> list[Doc]:
    """Create the tasks and return them as read back (with their Version)."""
    await store.commit(Batch(ops=[op for t in tasks for op in Batch().create(TASKS, t).ops]))
    read = [await store.get(TASKS, t["ID"]) for t in tasks]
    assert all(doc is not None for doc in read)
    return [doc for doc in read if doc is not None]


def with_state(task: Doc, state: TaskState) -> Doc:
    changed = dict(task)
    changed["Status"] = {**task["Status"], "State": state.wire}
    return changed


async def test_a_plan_larger_than_one_chunk_is_written_in_chunks() -> None:
    store = CountingStore()
    count = 2 * CHUNK + 7
    plan = Plan(create=[make_task(f"t{i:04d}", "svc") for i in range(count)])

    result = await Applier(store, fence=lambda: None).apply(plan)

    assert result.written == count
    assert result.conflicts == 0 and result.failed_keys == []
    assert store.commit_sizes == [CHUNK, CHUNK, 7]
    assert len(await store.list_kind(TASKS)) == count
    assert result.revision == store.revision
    assert str(result) == f"written={count} conflicts=0"


async def test_a_stale_version_in_one_op_does_not_stop_the_others() -> None:
    store = CountingStore()
    first, second, third = await stored_tasks(
        store, make_task("a", "svc"), make_task("b", "svc"), make_task("c", "svc"))
    # Someone else writes `second` after we read it: our copy is now stale.
    await store.commit(Batch().update(TASKS, with_state(second, TaskState.REJECTED)))
    store.commit_sizes.clear()

    plan = Plan(update=[with_state(t, TaskState.ASSIGNED) for t in (first, second, third)])
    result = await Applier(store, fence=lambda: None).apply(plan)

    assert result.written == 2
    assert result.conflicts == 1
    assert result.failed_keys == [object_key(TASKS, "b")]
    # The chunk is refused naming the stale key, then the other two go in one more transaction.
    assert store.commit_sizes == [3, 2]
    states = {t["ID"]: task_state(t) for t in await store.list_kind(TASKS)}
    assert states == {"a": TaskState.ASSIGNED, "b": TaskState.REJECTED, "c": TaskState.ASSIGNED}
    assert result.revision == store.revision


async def test_deleting_a_task_that_is_gone_and_creating_one_that_exists_are_conflicts() -> None:
    store = MemoryStore()
    (existing,) = await stored_tasks(store, make_task("a", "svc"))
    gone = dict(existing, ID="gone")

    plan = Plan(create=[make_task("a", "svc"), make_task("new", "svc")], delete=[gone])
    result = await Applier(store, fence=lambda: None).apply(plan)

    assert result.written == 1
    assert result.conflicts == 2
    assert sorted(result.failed_keys) == [object_key(TASKS, "a"), object_key(TASKS, "gone")]
    assert await store.get(TASKS, "new") is not None


async def test_a_fence_that_is_not_the_leader_raises_not_leader_and_writes_nothing() -> None:
    store = MemoryStore()
    store.set_leader("a")

    with pytest.raises(NotLeader):
        await Applier(store, fence=lambda: "b").apply(Plan(create=[make_task("t1", "svc")]))

    assert await store.list_kind(TASKS) == []


async def test_the_leader_fence_writes() -> None:
    store = MemoryStore()
    store.set_leader("a")

    result = await Applier(store, fence=lambda: "a").apply(Plan(create=[make_task("t1", "svc")]))

    assert result.written == 1
    assert await store.get(TASKS, "t1") is not None


class DeposingStore(MemoryStore):
    """Loses the leadership to "b" right after its first commit."""

    async def commit(self, batch: Batch, fence: str | None = None) -> int:
        revision = await super().commit(batch, fence)
        self.set_leader("b")
        return revision


async def test_a_leader_deposed_mid_plan_stops_at_the_next_chunk() -> None:
    store = DeposingStore()
    store.set_leader("a")
    plan = Plan(create=[make_task(f"t{i:04d}", "svc") for i in range(CHUNK + 1)])

    with pytest.raises(NotLeader):
        await Applier(store, fence=lambda: "a").apply(plan)

    assert len(await store.list_kind(TASKS)) == CHUNK


async def test_not_leader_during_the_retry_is_raised() -> None:
    store = DeposingStore()
    store.set_leader("a")
    await MemoryStore.commit(store, Batch().create(TASKS, make_task("dup", "svc")))  # without deposing
    # The chunk fails on "dup"; the rest ("b") is written (and deposes us), then the next chunk meets the fence.
    plan = Plan(create=[make_task("b", "svc"), make_task("dup", "svc")] + [make_task(f"t{i:04d}", "svc")
                                                                          for i in range(CHUNK)])

    with pytest.raises(NotLeader):
        await Applier(store, fence=lambda: "a").apply(plan)

    assert await store.get(TASKS, "b") is not None
    assert await store.get(TASKS, "t0000") is not None  # the rest of the first chunk
    assert await store.get(TASKS, f"t{CHUNK - 1:04d}") is None  # the second chunk was fenced off


class ForgetfulStore(MemoryStore):
    """A store whose conflicts do not say which operations failed."""

    async def commit(self, batch: Batch, fence: str | None = None) -> int:
        try:
            return await super().commit(batch, fence)
        except Conflict as exc:
            exc.keys = []
            raise


async def test_without_the_failing_keys_the_operations_are_retried_one_by_one() -> None:
    store = ForgetfulStore()
    await store.commit(Batch().create(TASKS, make_task("dup", "svc")))

    result = await Applier(store, fence=lambda: None).apply(Plan(create=[make_task("a", "svc"),
                                                                         make_task("dup", "svc")]))

    assert (result.written, result.conflicts) == (1, 1)
    assert await store.get(TASKS, "a") is not None
