"""The orchestrator loop (leader only): keeps every service at its declared task count.

It only marks what is dirty as committed changes arrive, then runs the pure reconcilers over it and hands their
plans to the applier. A task change dirties its slot, and a pass over a few slots reads only their tasks, so a
service of a hundred thousand replicas costs nothing extra per task report. A rolling update reads an
`UpdateProgress` the loop keeps per service, refreshed slot by slot as tasks change, so each of its passes
costs the slots it acts on; a spec change or a global service is decided over the whole service. A node
change dirties the slots of the tasks on that node, plus global services (and global jobs). A replicated job
is always decided slot by slot, with the state of its other slots kept in a `JobSlots` (see `jobs.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from dataclasses import dataclass

from shoal.clock import Clock
from shoal.manager.applier import Applier, ApplyResult, plan_batch
from shoal.manager.cache import Cache
from shoal.manager.controlapi.service import IngressPort, ingress_ports_in_use
from shoal.manager.orchestrator.common import is_task_dirty, never_reached_an_agent, set_desired
from shoal.manager.orchestrator.global_ import reconcile_global
from shoal.manager.orchestrator.jobs import (
    JobSlots,
    job_slot_state,
    reconcile_global_job,
    reconcile_replicated_job,
)
from shoal.manager.orchestrator.replicated import reconcile_replicated
from shoal.manager.orchestrator.taskreaper import history_limit
from shoal.manager.orchestrator.update import (
    IN_PROGRESS,
    PAUSED,
    ROLLBACK_PAUSED,
    plan_progress,
    plan_update,
    update_state,
)
from shoal.manager.orchestrator.update_progress import Basis, UpdateProgress
from shoal.manager.store.base import Batch, Event
from shoal.spec import is_global_job, is_job, is_replicated_job, job_iteration
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
    replicas,
    task_is_live,
    task_node,
    task_slot,
    task_state,
)

log = logging.getLogger(__name__)

# Update states in which a change to any slot is the updater's to decide, over the whole service.
UPDATE_ACTIVE = frozenset({*IN_PROGRESS, PAUSED, ROLLBACK_PAUSED})
ENDED_STATES = frozenset(state.wire for state in TaskState if state.terminal)
SLOTS_PER_PIECE = 1000  # slots decided between two turns of the loop


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


@dataclass
class Work:
    """One service to decide, or some slots of it (`slots`), with the documents the decision reads."""

    service_id: str
    service: Doc | None  # None: the service was removed
    tasks: list[Doc]  # the service's tasks, or those of `slots`
    slots: set[int] | None
    used_ports: set[IngressPort]  # the other services' ingress ports (a rollback may need its own back)
    # Deciding the whole service for the updater, the slots the reconciler must look at after it (None: all).
    changed: set[int] | None = None
    progress: UpdateProgress | None = None  # a replicated service's update, kept by the loop
    job_slots: JobSlots | None = None  # a replicated job's other slots, kept by the loop


def decide(work: Work, nodes: dict[str, Doc], now: float, history_limit: int) -> tuple[Plan, Doc | None]:
    """The writes for one piece of work: the rolling update's when one is under way, else the reconciler's.

    Returns the task plan and, when the update state changes, the new service document.
    """
    service = work.service
    if service is None:
        return reconcile_removed_service(work.tasks, nodes, now), None
    if is_global_job(service):
        return reconcile_global_job(service, work.tasks, nodes, now, history_limit), None
    if is_replicated_job(service):  # no rolling update: an update runs the job again
        return reconcile_replicated_job(service, work.tasks, nodes, now, history_limit, slots=work.slots,
                                        others=work.job_slots), None
    if work.slots is not None:
        return reconcile_replicated(service, work.tasks, nodes, now, history_limit, slots=work.slots), None
    if work.progress is not None:
        update = plan_progress(service, work.progress, nodes, now, used_ports=work.used_ports)
    else:
        update = plan_update(service, work.tasks, nodes, now, used_ports=work.used_ports)
    if not update.empty():
        return update.plan, update.service
    if is_global(service):
        plan = reconcile_global(service, work.tasks, nodes, now, history_limit)
    else:
        plan = reconcile_replicated(service, work.tasks, nodes, now, history_limit, slots=work.changed)
    if update.wake_at is not None:
        plan.wake_at = update.wake_at if plan.wake_at is None else min(plan.wake_at, update.wake_at)
    return plan, None


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
        self.passes = {"full": 0, "slots": 0, "update": 0}  # decisions made, by kind (tests, debug endpoint)
        self._progress: dict[str, UpdateProgress] = {}  # replicated services under update
        self._job_slots: dict[str, JobSlots] = {}  # replicated jobs
        cache.subscribe(self._on_event, self._on_resync)

    def update_progress(self) -> dict[str, tuple[int, int]]:
        """Per replicated service this leader updates: (slots running the new spec, slots still on an older
        one), as of the updater's last pass."""
        return {service_id: (p.new_running, len(p.outdated)) for service_id, p in self._progress.items()
                if (service := self.cache.get(SERVICES, service_id)) is not None
                and update_state(service) in UPDATE_ACTIVE}  # a finished update's progress may linger a while

    def _on_resync(self) -> None:
        self._progress.clear()
        self._job_slots.clear()
        self.dirty.update(self.cache.services())
        self.dirty.update(self.cache.tasks_by_service)
        self._signal.set()

    def _mark_task(self, task: Doc) -> None:
        """A change to this task: its slot needs deciding again (a global service's task: the service)."""
        slot = task_slot(task)
        progress = self._progress.get(task["ServiceID"])
        if progress is not None:
            progress.stale.add(slot)
        job = self._job_slots.get(task["ServiceID"])
        if job is not None:
            job.stale.add(slot)
        # A replicated job's slots start at 0.
        if slot > 0 or job is not None or self._is_replicated_job(task["ServiceID"]):
            self.dirty_slots[task["ServiceID"]].add(slot)
        else:
            self.dirty.add(task["ServiceID"])

    def _is_replicated_job(self, service_id: str) -> bool:
        service = self.cache.get(SERVICES, service_id)
        return service is not None and is_replicated_job(service)

    def _on_event(self, event: Event, prev: Doc | None) -> None:
        if event.kind == SERVICES:
            self.dirty.add(event.obj_id)
            if event.doc is None:
                self._progress.pop(event.obj_id, None)
                self._job_slots.pop(event.obj_id, None)
        elif event.kind == TASKS:
            doc = event.doc or prev
            if doc is None:
                return
            progress = self._progress.get(doc["ServiceID"])
            if progress is not None:
                progress.stale.add(task_slot(doc))  # whatever changed: the progress must equal a fresh build
            if prev is not None and event.doc is not None and not self._matters(prev, event.doc):
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
            self.dirty.update(s["ID"] for s in self.cache.services().values() if is_global(s) or is_global_job(s))
        else:
            return
        self._signal.set()

    def _matters(self, before: Doc, after: Doc) -> bool:
        """Whether a change to a task can change a decision. The reconcilers act when a task ends or is asked
        to stop; a live task moving forward (assigned, starting, running: three reports for each of a hundred
        thousand tasks) changes nothing for them, only for a rolling update waiting on it."""
        if before["DesiredState"] != after["DesiredState"]:
            return True
        state = after["Status"]["State"]
        if state == before["Status"]["State"] and before.get("NodeID") == after.get("NodeID"):
            return False
        if state in ENDED_STATES:
            return True
        service = self.cache.get(SERVICES, str(after.get("ServiceID") or ""))
        return service is None or update_state(service) in UPDATE_ACTIVE

    async def _pieces(self, service_id: str, slots: set[int] | None) -> AsyncIterator[Work]:
        """The decisions a service (or some of its slots) needs, in pieces of at most SLOTS_PER_PIECE slots,
        each with its documents from the cache. A replicated service under update is decided from its kept
        progress and the changed slots; the global reconciler decides over the whole service in one piece; a
        replicated service that no update concerns is decided slot range by slot range, with the loop
        serving sessions in between (a service of a hundred thousand replicas would otherwise hold it for
        seconds). Generated lazily, so each piece reads the cache as it is then."""
        service = self.cache.get(SERVICES, service_id)
        if service is None:
            tasks = (self.cache.tasks_of_service(service_id) if slots is None
                     else self.cache.tasks_in_slots(service_id, slots))
            yield Work(service_id, None, tasks, slots, set())
            return
        if is_job(service):
            async for work in self._job_pieces(service, slots):
                yield work
            return
        whole = is_global(service) or update_state(service) in UPDATE_ACTIVE or any(
            task_is_live(t) and is_task_dirty(service, t)
            for t in (self.cache.tasks_of_service(service_id) if slots is None
                      else self.cache.tasks_in_slots(service_id, slots)))
        if not whole:
            self._progress.pop(service_id, None)
        elif is_global(service):
            yield Work(service_id, service, self.cache.tasks_of_service(service_id), None,
                       ingress_ports_in_use(self.cache.services().values(), service_id))
            return
        else:
            current = await self._current_progress(service_id)
            if current is None:
                return
            service, progress = current
            tasks = (self.cache.tasks_of_service(service_id) if slots is None
                     else self.cache.tasks_in_slots(service_id, slots))
            yield Work(service_id, service, tasks, None,
                       ingress_ports_in_use(self.cache.services().values(), service_id),
                       changed=slots, progress=progress)
            return
        if slots is None:
            # Every slot up to Replicas, and those above it that still hold tasks (to scale down).
            wanted = replicas(service)
            extra = [s for s in self.cache.tasks_by_slot.get(service_id, {}) if not 1 <= s <= wanted]
            numbers: list[int] = [*range(1, wanted + 1), *sorted(extra)]
        else:
            numbers = sorted(slots)
        for start in range(0, len(numbers), SLOTS_PER_PIECE):
            piece = set(numbers[start:start + SLOTS_PER_PIECE])
            yield Work(service_id, service, self.cache.tasks_in_slots(service_id, piece), piece, set())

    async def _job_pieces(self, service: Doc, slots: set[int] | None) -> AsyncIterator[Work]:
        """A global job is decided whole (its tasks are one per node). A replicated job is decided over the
        given slots, or every slot holding a task, SLOTS_PER_PIECE at a time, with its JobSlots for the rest;
        a piece of no slot still starts tasks in free slots."""
        service_id = service["ID"]
        if is_global_job(service):
            yield Work(service_id, service, self.cache.tasks_of_service(service_id), None, set())
            return
        numbers = sorted(self.cache.tasks_by_slot.get(service_id, {}) if slots is None else slots)
        for start in range(0, max(1, len(numbers)), SLOTS_PER_PIECE):
            current = await self._current_job_slots(service_id)
            if current is None:
                return
            service, job = current
            piece = set(numbers[start:start + SLOTS_PER_PIECE])
            yield Work(service_id, service, self.cache.tasks_in_slots(service_id, piece), piece, set(),
                       job_slots=job)

    async def _current_job_slots(self, service_id: str) -> tuple[Doc, JobSlots] | None:
        """The replicated job and its JobSlots, with every slot that changed since the last pass read again
        (all of them when the job's iteration changed), SLOTS_PER_PIECE slots between two turns of the loop."""
        while True:
            service = self.cache.get(SERVICES, service_id)
            if service is None or not is_replicated_job(service):
                self._job_slots.pop(service_id, None)
                return None
            job = self._job_slots.get(service_id)
            if job is None or job.iteration != job_iteration(service):
                job = self._job_slots[service_id] = JobSlots(job_iteration(service))
                job.stale.update(self.cache.tasks_by_slot.get(service_id, {}))
            by_slot = self.cache.tasks_by_slot.get(service_id, {})
            now = self.clock.now()
            for _ in range(min(SLOTS_PER_PIECE, len(job.stale))):
                slot = job.stale.pop()
                job.put(slot, job_slot_state(service, slot, (by_slot.get(slot) or {}).values(), now))
            if not job.stale:
                return service, job
            await asyncio.sleep(0)

    async def _current_progress(self, service_id: str) -> tuple[Doc, UpdateProgress] | None:
        """The service and its update progress, refreshed over every slot that changed since the last pass.

        Built from scratch when the service's spec or replica count changed (after a leader change, at the
        start of an update, on a rollback), SLOTS_PER_PIECE slots between two turns of the loop; the slots
        that change meanwhile are marked stale and refreshed too, so the result equals a fresh build from
        the cache as it is when this returns.
        """
        while True:
            service = self.cache.get(SERVICES, service_id)
            if service is None:
                self._progress.pop(service_id, None)
                return None
            progress = self._progress.get(service_id)
            if progress is None or not progress.rebase(service):
                progress = self._progress[service_id] = UpdateProgress(Basis.of(service))
                progress.stale.update(self.cache.tasks_by_slot.get(service_id, {}))
            by_slot = self.cache.tasks_by_slot.get(service_id, {})
            nodes = self.cache.nodes()
            for _ in range(min(SLOTS_PER_PIECE, len(progress.stale))):
                slot = progress.stale.pop()
                progress.refresh(slot, (by_slot.get(int(slot)) or {}).values(), nodes)
            if not progress.stale and progress.fits(service):
                return service, progress
            await asyncio.sleep(0)

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
        dirty: list[tuple[str, set[int] | None]] = [(sid, None) for sid in services]
        dirty += [(sid, slots) for sid, slots in partial.items() if sid not in services]
        totals = Plan()
        service_writes = 0
        decided: set[str] = set()
        written = ApplyResult()
        limit = history_limit(self.cache.cluster())
        for service_id, slots in dirty:
            async for work in self._pieces(service_id, slots):
                decided.add(service_id)
                kind = "update" if work.progress is not None else "full" if work.slots is None else "slots"
                self.passes[kind] += 1
                plan, service_doc = decide(work, self.cache.nodes(), now, limit)
                if plan.wake_at is not None:
                    reread = work.changed if work.progress is not None else work.slots
                    self._wake(service_id, plan.wake_at, None if reread is None else frozenset(reread))
                if not plan.empty() or service_doc is not None:
                    batch = plan_batch(plan, TASKS, Batch().update(SERVICES, service_doc) if service_doc else None)
                    result = await self.applier.write(batch)
                    written.merge(result)
                    await self.cache.caught_up(result.revision, "orchestrator")
                    # Decided again from the state just written: a rolling update moves one step per pass,
                    # and writes that raced another writer are redone from the fresh cache.
                    written_slots = {task_slot(t) for t in (*plan.create, *plan.update, *plan.delete)}
                    if work.slots is not None:
                        self.dirty_slots[service_id].update(work.slots)
                    elif service_doc is None and work.service is not None and not is_global(work.service) \
                            and 0 not in written_slots:
                        self.dirty_slots[service_id].update(written_slots)  # the updater looks at them all
                    else:
                        self.dirty.add(service_id)
                    service_writes += service_doc is not None
                    totals.extend(plan)
                # Other work (sessions, reports) between pieces.
                await asyncio.sleep(0)
        if totals.empty() and not service_writes:
            return ""
        changed = f" service updates={service_writes}" if service_writes else ""
        self.last_decision = f"{len(decided)} services: {_brief(totals)}{changed} -> {written}"
        log.info("orchestrator: %s", self.last_decision)
        return self.last_decision

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
