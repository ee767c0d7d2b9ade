"""The scheduler loop (leader only): places pending tasks on nodes, in batches.

It keeps the set of pending tasks and what each node runs (`NodeLoad`) as events arrive; each tick runs the pure
`schedule` over the pending tasks (tasks of one service are placed as a group) and commits the decisions in one
go. A tick costs in proportion to the pending tasks and the nodes, not to the tasks already placed.
"""

from __future__ import annotations

import asyncio
import logging

from shoal.clock import Clock
from shoal.manager.applier import Applier
from shoal.manager.cache import Cache
from shoal.manager.scheduler.pipeline import NodeLoad, schedule
from shoal.manager.store.base import Event
from shoal.types import NODES, TASKS, Doc, Plan, TaskState, desired_state, task_state

log = logging.getLogger(__name__)


def needs_scheduling(task: Doc) -> bool:
    return task_state(task) == TaskState.PENDING and desired_state(task) <= TaskState.RUNNING


class SchedulerLoop:
    def __init__(self, cache: Cache, applier: Applier, clock: Clock) -> None:
        self.cache = cache
        self.applier = applier
        self.clock = clock
        self.pending: set[str] = set()
        self.load = NodeLoad()  # what the nodes run, kept current from the cache's events
        self._signal = asyncio.Event()
        self.last_decision = ""
        cache.subscribe(self._on_event, self._on_resync)

    def _on_resync(self) -> None:
        self.pending = {tid for tid, t in self.cache.tasks().items() if needs_scheduling(t)}
        self.load = NodeLoad()
        for task in self.cache.tasks().values():
            self.load.add(task)
        self._signal.set()

    def _on_event(self, event: Event, prev: Doc | None) -> None:
        if event.kind == TASKS:
            if prev is not None:
                self.load.remove(prev)
            if event.doc is not None:
                self.load.add(event.doc)
            if event.doc is not None and needs_scheduling(event.doc):
                self.pending.add(event.obj_id)
                self._signal.set()
            else:
                self.pending.discard(event.obj_id)
        elif event.kind == NODES and self.pending:
            # A node became ready, active or changed labels: unplaced tasks may fit now.
            self._signal.set()

    async def run_once(self) -> str:
        tasks = [t for tid in self.pending if (t := self.cache.get(TASKS, tid)) is not None and needs_scheduling(t)]
        if not tasks:
            return ""
        nodes = list(self.cache.nodes().values())
        load = self.load.snapshot({t["ServiceID"] for t in tasks})
        # Pure and possibly long (a hundred thousand pending tasks): on a thread, so the loop keeps serving.
        result = await asyncio.to_thread(schedule, tasks, nodes, load, self.clock.now())
        plan = Plan(update=result.assigned + result.unassigned)
        if plan.empty():
            return ""
        applied = await self.applier.apply(plan)
        await self.cache.caught_up(applied.revision, "scheduler")
        self.last_decision = f"{len(result.assigned)} assigned, {len(result.unassigned)} unplaceable -> {applied}"
        log.info("scheduler: %s", self.last_decision)
        return self.last_decision

    async def run(self) -> None:
        await self.cache.ready.wait()
        self._on_resync()
        while True:
            await self._signal.wait()
            self._signal.clear()
            await asyncio.sleep(0.02)  # batch: let the orchestrator's whole plan land first
            await self.run_once()
