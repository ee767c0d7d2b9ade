"""The orchestrator loop (leader only): keeps every service at its declared task count.

It only marks services dirty as committed changes arrive, then runs the pure reconcilers for the dirty ones and
hands their plans to the applier. Work per event is proportional to the service it touches; a node change
dirties only the services with tasks on that node, plus global services.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from shoal.clock import Clock
from shoal.manager.applier import Applier, plan_batch
from shoal.manager.cache import Cache
from shoal.manager.controlapi.service import ingress_ports_in_use
from shoal.manager.orchestrator.common import never_reached_an_agent, set_desired
from shoal.manager.orchestrator.global_ import reconcile_global
from shoal.manager.orchestrator.replicated import reconcile_replicated
from shoal.manager.orchestrator.update import plan_update
from shoal.manager.store.base import Batch, Event
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
    task_node,
    task_state,
)

log = logging.getLogger(__name__)


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
        self.dirty: set[str] = set()
        self._wakeups: dict[str, float] = {}
        self._signal = asyncio.Event()
        self.last_decision = ""
        cache.subscribe(self._on_event, self._on_resync)

    def _on_resync(self) -> None:
        self.dirty.update(self.cache.services())
        self.dirty.update(self.cache.tasks_by_service)
        self._signal.set()

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
            self.dirty.add(doc["ServiceID"])
        elif event.kind == NODES:
            before, after = prev or {}, event.doc or {}
            if (before.get("Status", {}).get("State"), before.get("Spec")) == (
                after.get("Status", {}).get("State"), after.get("Spec")
            ) and event.action == "put":
                return
            self.dirty.update(t["ServiceID"] for t in self.cache.tasks_on_node(event.obj_id))
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

    async def run_once(self) -> str:
        now = self.clock.now()
        due = [sid for sid, at in self._wakeups.items() if at <= now]
        for sid in due:
            del self._wakeups[sid]
        self.dirty.update(due)
        services, self.dirty = self.dirty, set()
        plan = Plan()
        service_writes: list[Doc] = []
        updating: set[str] = set()
        for service_id in services:
            service_plan, service_doc = self.decide(service_id, now)
            if service_plan.wake_at is not None:
                self._wakeups[service_id] = service_plan.wake_at
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
        changed = f" service updates={len(service_writes)}" if service_writes else ""
        self.last_decision = f"{len(services)} services: {plan.summary()}{changed} -> {result}"
        log.info("orchestrator: %s", self.last_decision)
        return self.last_decision

    async def _caught_up(self, revision: int) -> None:
        """Decide next time from a cache that includes our own writes."""
        try:
            await self.cache.wait_for_revision(revision, timeout=2.0)
        except TimeoutError:
            log.warning("orchestrator: cache has not caught up with revision %d", revision)

    async def run(self) -> None:
        await self.cache.ready.wait()
        self._on_resync()
        while True:
            timeout = None
            if self._wakeups:
                timeout = max(0.0, min(self._wakeups.values()) - self.clock.now())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._signal.wait(), timeout)
            self._signal.clear()
            # Let a burst of events (a whole batch commit) land before deciding.
            await asyncio.sleep(0.01)
            await self.run_once()
            if self.dirty:
                self._signal.set()
