"""The orchestrator loop (leader only): keeps every service at its declared task count.

It only marks what is dirty as committed changes arrive, then runs the pure reconcilers over it and hands their
plans to the applier. A task change dirties its slot, and a pass over a few slots reads only their tasks, so a
service of a hundred thousand replicas costs nothing extra per task report; a spec change, a rolling update
under way or a global service is decided over the whole service. A node change dirties the slots of the tasks
on that node, plus global services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

from shoal.clock import Clock
from shoal.manager.applier import Applier, plan_batch
from shoal.manager.cache import Cache
from shoal.manager.controlapi.service import ingress_ports_in_use
from shoal.manager.orchestrator.common import is_task_dirty, never_reached_an_agent, set_desired
from shoal.manager.orchestrator.global_ import reconcile_global
from shoal.manager.orchestrator.replicated import reconcile_replicated
from shoal.manager.orchestrator.update import IN_PROGRESS, PAUSED, ROLLBACK_PAUSED, plan_update, update_state
from shoal.manager.store.base import Batch, Event
from shoal.timeouts import within
from shoal.types import (
    NODES,
    SERVICES,
    TASKS,
    Doc,
    Plan,
    TaskState,
    desired_state,
    is_global,
    node_state,
    task_is_live,
    task_node,
    task_slot,
    task_state,
)

log = logging.getLogger(__name__)

# Update states in which a change to any slot is the updater's to decide, over the whole service.
UPDATE_ACTIVE = frozenset({*IN_PROGRESS, PAUSED, ROLLBACK_PAUSED})
# How long to wait for the cache to show the pass's own writes before deciding again anyway.
CATCH_UP_TIMEOUT = 5.0


def reconcile_removed_service(tasks: list[Doc], nodes: dict[str, Doc], now: float) -> Plan:
    """Tasks whose service is gone: stop the live ones, then delete each once it has stopped (or cannot
    stop because its node is gone or down)."""
    plan = Plan()
    for task in tasks:
        node = nodes.get(task_node(task))
        unreachable = node is None or node_state(node).value == "down"
        if task_state(task).terminal or unreachable or not task_node(task) or never_reached_an_agent(task):
            plan.delete.append(task)
        elif desired_state(task) < TaskState.SHUTDOWN:
            plan.update.append(set_desired(task, TaskState.SHUTDOWN, now))
    if plan.delete or plan.update:
        plan.notes.append(f"service removed: {len(plan.update)} stopping, {len(plan.delete)} deleted")
    return plan


class OrchestratorLoop:
    def __init__(self, cache: Cache, applier: Applier, clock: Clock) -> None:
        self.cache = cache
        self.applier = applier
        self.clock = clock
        self.dirty: set[str] = set()  # services to decide in full
        self.dirty_slots: dict[str, set[int]] = defaultdict(set)  # replicated services: only these slots
        self._wakeups: dict[str, tuple[float, frozenset[int] | None]] = {}  # when, and which slots (None: all)
        self._signal = asyncio.Event()
        self.last_decision = ""
        self.passes = {"full": 0, "slots": 0}  # decisions made, by kind (tests and the debug endpoint)
        cache.subscribe(self._on_event, self._on_resync)

    def _on_resync(self) -> None:
        self.dirty.update(self.cache.services())
        self.dirty.update(self.cache.tasks_by_service)
        self._signal.set()

    def _mark_task(self, task: Doc) -> None:
        """A change to this task: its slot needs deciding again (a global service's task: the service)."""
        slot = task_slot(task)
        if slot > 0:
            self.dirty_slots[task["ServiceID"]].add(slot)
        else:
            self.dirty.add(task["ServiceID"])

    def _on_event(self, event: Event, prev: Doc | None) -> None:
        if event.kind == SERVICES:
            self.dirty.add(event.obj_id)
        elif event.kind == TASKS:
            doc = event.doc or prev
            if doc is None:
                return
            # Only observed-state and desired-state changes matter to the reconcilers.
            if prev is not None and event.doc is not None and (
                prev["Status"]["State"] == event.doc["Status"]["State"]
                and prev["DesiredState"] == event.doc["DesiredState"]
                and prev.get("NodeID") == event.doc.get("NodeID")
            ):
                return
            self._mark_task(doc)
        elif event.kind == NODES:
            before, after = prev or {}, event.doc or {}
            if (before.get("Status", {}).get("State"), before.get("Spec")) == (
                after.get("Status", {}).get("State"), after.get("Spec")
            ) and event.action == "put":
                return
            # The slots with a task on the node: work in proportion to the node's tasks, not the cluster's.
            for task in self.cache.tasks_on_node(event.obj_id):
                self._mark_task(task)
            self.dirty.update(s["ID"] for s in self.cache.services().values() if is_global(s))
        else:
            return
        self._signal.set()

    def _history_limit(self) -> int:
        cluster = self.cache.cluster()
        if cluster is None:
            return 5
        limit = cluster["Spec"].get("Orchestration", {}).get("TaskHistoryRetentionLimit")
        return 5 if limit is None else int(limit)

    def decide(self, service_id: str, now: float) -> tuple[Plan, Doc | None]:
        """The writes for one service: the rolling update's when one is under way, else the reconciler's.

        Returns the task plan and, when the update state changes, the new service document.
        """
        self.passes["full"] += 1
        nodes = self.cache.nodes()
        tasks = self.cache.tasks_of_service(service_id)
        service = self.cache.get(SERVICES, service_id)
        if service is None:
            return reconcile_removed_service(tasks, nodes, now), None
        used_ports = ingress_ports_in_use(self.cache.services().values(), service_id)
        update = plan_update(service, tasks, nodes, now, used_ports=used_ports)
        if not update.empty():
            return update.plan, update.service
        if is_global(service):
            plan = reconcile_global(service, tasks, nodes, now, self._history_limit())
        else:
            plan = reconcile_replicated(service, tasks, nodes, now, self._history_limit())
        if update.wake_at is not None:
            plan.wake_at = update.wake_at if plan.wake_at is None else min(plan.wake_at, update.wake_at)
        return plan, None

    def decide_slots(self, service_id: str, slots: set[int], now: float) -> tuple[Plan, Doc | None] | None:
        """The writes for some slots of a replicated service, or None when only a decision over the whole
        service will do (a rolling update under way, a global service, an outdated task among them)."""
        service = self.cache.get(SERVICES, service_id)
        tasks = self.cache.tasks_in_slots(service_id, slots)
        if service is None:
            self.passes["slots"] += 1
            return reconcile_removed_service(tasks, self.cache.nodes(), now), None
        if is_global(service) or update_state(service) in UPDATE_ACTIVE:
            return None
        if any(task_is_live(t) and is_task_dirty(service, t) for t in tasks):
            return None  # the updater's business
        self.passes["slots"] += 1
        plan = reconcile_replicated(service, tasks, self.cache.nodes(), now, self._history_limit(), slots=slots)
        return plan, None

    def _due_wakeups(self, now: float) -> None:
        for service_id, (at, slots) in list(self._wakeups.items()):
            if at <= now:
                del self._wakeups[service_id]
                if slots is None:
                    self.dirty.add(service_id)
                else:
                    self.dirty_slots[service_id].update(slots)

    def _wake(self, service_id: str, at: float, slots: frozenset[int] | None) -> None:
        earlier = self._wakeups.get(service_id)
        if earlier is not None:
            at = min(at, earlier[0])
            slots = None if slots is None or earlier[1] is None else slots | earlier[1]
        self._wakeups[service_id] = (at, slots)

    async def run_once(self) -> str:
        now = self.clock.now()
        self._due_wakeups(now)
        services, self.dirty = self.dirty, set()
        partial, self.dirty_slots = self.dirty_slots, defaultdict(set)
        plan = Plan()
        service_writes: list[Doc] = []
        updating: set[str] = set()
        updating_slots: dict[str, set[int]] = {}
        decided = 0
        for service_id, slots in partial.items():
            if service_id in services:
                continue
            decision = self.decide_slots(service_id, slots, now)
            if decision is None:
                services.add(service_id)
                continue
            decided += 1
            slot_plan, _ = decision
            if slot_plan.wake_at is not None:
                self._wake(service_id, slot_plan.wake_at, frozenset(slots))
            if not slot_plan.empty():
                updating_slots[service_id] = slots
            plan.extend(slot_plan)
        for service_id in services:
            decided += 1
            service_plan, service_doc = self.decide(service_id, now)
            if service_plan.wake_at is not None:
                self._wake(service_id, service_plan.wake_at, None)
            if service_doc is not None:
                service_writes.append(service_doc)
            if service_doc is not None or not service_plan.empty():
                updating.add(service_id)
            plan.extend(service_plan)
        if plan.empty() and not service_writes:
            return ""
        batch = Batch()
        for doc in service_writes:
            batch.update(SERVICES, doc)
        result = await self.applier.write(plan_batch(plan, TASKS, batch))
        await self._caught_up(result.revision)
        # Decide again from the state just written: a rolling update moves one step per pass, and writes
        # that raced another writer are redone from the fresh cache.
        self.dirty.update(updating)
        for service_id, slots in updating_slots.items():
            self.dirty_slots[service_id].update(slots)
        changed = f" service updates={len(service_writes)}" if service_writes else ""
        self.last_decision = f"{decided} services: {_brief(plan)}{changed} -> {result}"
        log.info("orchestrator: %s", self.last_decision)
        return self.last_decision

    async def _caught_up(self, revision: int) -> None:
        """Decide next time from a cache that includes our own writes."""
        try:
            await self.cache.wait_for_revision(revision, timeout=CATCH_UP_TIMEOUT)
        except TimeoutError:
            log.warning("orchestrator: cache has not caught up with revision %d", revision)

    async def run(self) -> None:
        await self.cache.ready.wait()
        self._on_resync()
        while True:
            timeout = None
            if self._wakeups:
                timeout = max(0.0, min(at for at, _ in self._wakeups.values()) - self.clock.now())
            with contextlib.suppress(TimeoutError):
                await within(self._signal.wait(), timeout)
            self._signal.clear()
            # Let a burst of events (a whole batch commit) land before deciding.
            await asyncio.sleep(0.01)
            await self.run_once()
            if self.dirty or self.dirty_slots:
                self._signal.set()


def _brief(plan: Plan, notes: int = 5) -> str:
    """The plan's counts and its first few notes (a pass over 100,000 slots has as many notes)."""
    text = f"create={len(plan.create)} update={len(plan.update)} delete={len(plan.delete)}"
    if plan.notes:
        more = f"; … {len(plan.notes) - notes} more" if len(plan.notes) > notes else ""
        text += f" ({'; '.join(plan.notes[:notes])}{more})"
    return text
