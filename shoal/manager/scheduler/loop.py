"""The scheduler loop (leader only): places pending tasks on nodes, in batches.

It keeps the set of pending tasks and what each node runs (`NodeLoad`) as events arrive; each tick runs the pure
`schedule` over the pending tasks (tasks of one service are placed as a group) and commits the decisions in one
go. A tick costs in proportion to the pending tasks and the nodes, not to the tasks already placed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter

from shoal.clock import Clock
from shoal.errors import InvalidArgument
from shoal.manager.allocator import AddressesExhausted, NetworkAddresses
from shoal.manager.applier import Applier
from shoal.manager.cache import Cache
from shoal.manager.scheduler.pipeline import WAITING_REASONS, NodeLoad, refused, schedule, waiting_reason
from shoal.manager.store.base import Event, object_key
from shoal.metrics import ManagerMetrics
from shoal.timefmt import from_rfc3339, to_rfc3339
from shoal.types import NODES, TASKS, Doc, Plan, TaskState, desired_state, task_node, task_state

log = logging.getLogger(__name__)


TASKS_PER_TICK = 2000  # pending tasks placed in one tick


def needs_scheduling(task: Doc) -> bool:
    return task_state(task) == TaskState.PENDING and desired_state(task) <= TaskState.RUNNING


class SchedulerLoop:
    def __init__(self, cache: Cache, applier: Applier, clock: Clock,
                 addresses: NetworkAddresses | None = None, metrics: ManagerMetrics | None = None) -> None:
        self.cache = cache
        self.metrics = metrics or ManagerMetrics()
        self.addresses = addresses or NetworkAddresses()  # tasks get their network addresses when placed
        self.applier = applier
        self.clock = clock
        # Tasks waiting for a node, oldest first; a tick takes the first TASKS_PER_TICK and sends those it could
        # not place to the back, so every one gets its turn.
        self.pending: dict[str, None] = {}
        self._tried = 0  # tasks tried since the last change that could let one fit
        self.load = NodeLoad()  # what the nodes run, kept current from the cache's events
        # Tasks waiting for a node by why (`waiting_reason`), kept from events, for the metrics: a scrape must
        # not read a hundred thousand pending tasks.
        self.waiting: Counter[str] = Counter()
        self._signal = asyncio.Event()
        self.last_decision = ""
        cache.subscribe(self._on_event, self._on_resync)

    def _on_resync(self) -> None:
        self.pending = {tid: None for tid, t in self.cache.tasks().items() if needs_scheduling(t)}
        self.waiting = Counter(waiting_reason(self.cache.tasks()[tid]) for tid in self.pending)
        self._tried = 0
        self.load = NodeLoad()
        for task in self.cache.tasks().values():
            self.load.add(task)
        self._signal.set()

    def _on_event(self, event: Event, prev: Doc | None) -> None:
        if event.kind == TASKS:
            if prev is not None and needs_scheduling(prev):
                self.waiting[waiting_reason(prev)] -= 1
            if event.doc is not None and needs_scheduling(event.doc):
                self.waiting[waiting_reason(event.doc)] += 1
            if prev is not None:
                self.load.remove(prev)
            if event.doc is not None:
                self.load.add(event.doc)
            if event.doc is not None and needs_scheduling(event.doc):
                if event.obj_id not in self.pending:
                    self.pending[event.obj_id] = None
                    self._signal.set()
            else:
                self.pending.pop(event.obj_id, None)
                if prev is not None and task_node(prev) and NodeLoad.counts(prev):
                    self._tried = 0  # a node has room again
        elif event.kind == NODES and self.pending:
            # A node became ready, active or changed labels: unplaced tasks may fit now.
            self._tried = 0
            self._signal.set()

    async def run_once(self) -> str:
        tasks = []
        for task_id in list(itertools.islice(self.pending, TASKS_PER_TICK)):
            task = self.cache.get(TASKS, task_id)
            if task is None or not needs_scheduling(task):
                del self.pending[task_id]
            else:
                tasks.append(task)
        if not tasks:
            return ""
        nodes = list(self.cache.nodes().values())
        # On the loop, TASKS_PER_TICK at a time: the rest in the next ticks, with sessions served in between.
        result = schedule(tasks, nodes, self.load, self.clock.now())
        # A task is placed once it also has its network addresses; one whose network is full waits like a
        # task no node can take (a released address is a task event, which wakes the loop).
        assigned = []
        for task in result.assigned:
            try:
                assigned.append(self.addresses.attach(task))
            except AddressesExhausted as exc:
                waiting = refused(self.cache.get(TASKS, task["ID"]) or task, str(exc), to_rfc3339(self.clock.now()))
                if waiting is not None:
                    result.unassigned.append(waiting)
        placed = {t["ID"] for t in assigned}
        for task in tasks:
            if task["ID"] not in placed and task["ID"] in self.pending:
                del self.pending[task["ID"]]
                self.pending[task["ID"]] = None  # to the back: the others get their turn
        self._tried = 0 if placed else self._tried + len(tasks)
        if self.pending and self._tried < len(self.pending):
            self._signal.set()  # some have not been tried since anything changed
        plan = Plan(update=assigned + result.unassigned)
        if plan.empty():
            return ""
        applied = await self.applier.apply(plan)
        failed = set(applied.failed_keys)
        self.metrics.placed(self._waited(t) for t in assigned if object_key(TASKS, t["ID"]) not in failed)
        await self.cache.caught_up(applied.revision, "scheduler")
        self.last_decision = f"{len(assigned)} assigned, {len(result.unassigned)} unplaceable -> {applied}"
        log.info("scheduler: %s", self.last_decision)
        return self.last_decision

    def pending_by_reason(self) -> dict[str, int]:
        """Tasks waiting for a node by why; every reason, 0 for those none waits for."""
        counts = {reason: 0 for reason in WAITING_REASONS}
        counts.update((reason, n) for reason, n in self.waiting.items() if n > 0)
        return counts

    def _waited(self, task: Doc) -> float | None:
        """Seconds from the task's creation to now (its placement); None when it has no creation time."""
        try:
            return self.clock.now() - from_rfc3339(str(task.get("CreatedAt") or ""))
        except InvalidArgument:
            return None

    async def run(self) -> None:
        await self.cache.ready.wait()
        self._on_resync()
        while True:
            await self._signal.wait()
            self._signal.clear()
            await asyncio.sleep(0.02)  # batch: let the orchestrator's whole plan land first
            await self.run_once()
