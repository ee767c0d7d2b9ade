"""Builders and a small harness for unit tests of the manager's loops: a MemoryStore, a Cache fed by its watch,
a FakeClock and an unfenced Applier, with helpers that write and wait until the cache has seen the write."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from shoal.clock import FakeClock
from shoal.manager.applier import Applier
from shoal.manager.cache import Cache
from shoal.manager.store.base import Batch
from shoal.manager.store.memory import MemoryStore
from shoal.timefmt import to_rfc3339
from shoal.types import NODES, SERVICES, TASKS, Doc, TaskState, task_node, task_state

# ---- documents ------------------------------------------------------------------------------------------


def make_node(node_id: str, state: str = "ready", availability: str = "active") -> Doc:
    return {
        "ID": node_id,
        "Spec": {"Role": "worker", "Availability": availability, "Labels": {}},
        "Description": {"Hostname": f"host-{node_id}"},
        "Status": {"State": state, "Addr": "127.0.0.2"},
    }


def make_service(
    service_id: str,
    name: str,
    replicas: int | None = 3,
    restart_policy: Doc | None = None,
) -> Doc:
    """A replicated service with `replicas`, or a global one when `replicas` is None."""
    template: Doc = {"ContainerSpec": {"Image": "busybox"}, "ForceUpdate": 0}
    if restart_policy is not None:
        template["RestartPolicy"] = restart_policy
    mode: Doc = {"Global": {}} if replicas is None else {"Replicated": {"Replicas": replicas}}
    return {"ID": service_id, "Spec": {"Name": name, "TaskTemplate": template, "Mode": mode}}


def make_task(task_id: str, service_id: str, node_id: str = "", state: TaskState = TaskState.PENDING,
              desired: TaskState = TaskState.RUNNING, slot: int = 1, at: float = 1_800_000_000.0) -> Doc:
    stamp = to_rfc3339(at)
    return {
        "ID": task_id,
        "CreatedAt": stamp,
        "UpdatedAt": stamp,
        "Spec": {"ContainerSpec": {"Image": "busybox"}, "ForceUpdate": 0},
        "ServiceID": service_id,
        "Slot": slot,
        "NodeID": node_id,
        "Status": {"Timestamp": stamp, "State": state.wire, "Message": "", "Err": ""},
        "DesiredState": desired.wire,
    }


# ---- stores ---------------------------------------------------------------------------------------------


class CountingStore(MemoryStore):
    """A MemoryStore that records the size of every commit and can run a hook just before one."""

    def __init__(self) -> None:
        super().__init__()
        self.commit_sizes: list[int] = []
        self.before_commit: Callable[[], None] | None = None

    async def commit(self, batch: Batch, fence: str | None = None) -> int:
        self.commit_sizes.append(len(batch))
        if self.before_commit is not None:
            hook, self.before_commit = self.before_commit, None
            hook()
        return await super().commit(batch, fence)


# ---- the harness ----------------------------------------------------------------------------------------


@dataclass
class Harness:
    store: MemoryStore
    cache: Cache
    clock: FakeClock
    applier: Applier

    async def commit(self, batch: Batch) -> int:
        """Commit directly to the store (as another writer would) and wait until the cache has it."""
        revision = await self.store.commit(batch)
        await self.cache.wait_for_revision(revision)
        return revision

    async def add_nodes(self, *nodes: Doc) -> None:
        batch = Batch()
        for node in nodes:
            batch.create(NODES, node)
        await self.commit(batch)

    async def add_service(self, service: Doc) -> None:
        await self.commit(Batch().create(SERVICES, service, unique_name=service["Spec"]["Name"]))

    async def add_tasks(self, *tasks: Doc) -> None:
        batch = Batch()
        for task in tasks:
            batch.create(TASKS, task)
        await self.commit(batch)

    async def remove_service(self, service_id: str) -> None:
        service = await self.store.get(SERVICES, service_id)
        assert service is not None
        await self.commit(Batch().delete(SERVICES, service, unique_name=service["Spec"]["Name"]))

    async def set_node_state(self, node_id: str, state: str) -> None:
        node = await self.store.get(NODES, node_id)
        assert node is not None
        node["Status"] = {**node["Status"], "State": state}
        await self.commit(Batch().update(NODES, node))

    async def report(self, task_id: str, state: TaskState, err: str = "") -> None:
        """Write an observed state as an agent's report would, stamped with the fake clock."""
        task = await self.store.get(TASKS, task_id)
        assert task is not None
        task["Status"] = {**task["Status"], "State": state.wire, "Err": err,
                          "Timestamp": to_rfc3339(self.clock.now())}
        await self.commit(Batch().update(TASKS, task))

    def tasks_of(self, service_id: str) -> list[Doc]:
        return sorted(self.cache.tasks_of_service(service_id), key=lambda t: (t["Slot"], t["CreatedAt"], t["ID"]))


@contextlib.asynccontextmanager
async def running_harness(store: MemoryStore | None = None) -> AsyncIterator[Harness]:
    """A harness whose cache follows the store (a fresh MemoryStore by default) until the block ends."""
    store = store if store is not None else MemoryStore()
    cache = Cache()
    feeder = asyncio.create_task(cache.run(store), name="cache-feed")
    try:
        await asyncio.wait_for(cache.ready.wait(), 5.0)
        yield Harness(store, cache, FakeClock(), Applier(store, fence=lambda: None))
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder


# ---- small readers --------------------------------------------------------------------------------------


def live(tasks: list[Doc]) -> list[Doc]:
    return [t for t in tasks if t["DesiredState"] == TaskState.RUNNING.wire and not task_state(t).terminal]


def per_node(tasks: list[Doc]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task_node(task)] = counts.get(task_node(task), 0) + 1
    return counts
