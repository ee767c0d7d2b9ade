"""What a rolling update knows about each slot of its service, kept between the updater's passes.

The updater (`update.py`) decides from a few sets: the slots still running an old task, the slots in flight,
the slots whose replacement needs finishing, and some counts. Computing them from every task on every pass
costs seconds at a hundred thousand tasks, and an update of that size takes hundreds of passes. So the
orchestrator keeps one `UpdateProgress` per service under update and refreshes only the slots whose tasks or
nodes changed; a pass then reads the next batch and the slots in flight, not the whole service.

`SlotState.of` is the pure classification of one slot. `UpdateProgress.build` over all of a service's tasks
gives the same sets as refreshing slot by slot as tasks change (a unit test checks exactly that), so the
plan never depends on which way the progress was made.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace

from shoal.errors import InvalidArgument, ShoalError
from shoal.manager.orchestrator.common import created_at, node_trouble, service_digest, task_digest
from shoal.manager.scheduler.constraints import matches
from shoal.spec import RUNNING_SINCE, Constraint, parse_constraints
from shoal.timefmt import from_rfc3339
from shoal.types import (
    Availability,
    Doc,
    TaskState,
    constraints,
    desired_state,
    is_global,
    node_availability,
    node_is_ready,
    replicas,
    task_is_live,
    task_node,
    task_slot,
    task_state,
)

# A replicated service's slot number, or the node of a global service's task.
SlotKey = int | str

# Private key in a task's Status: when the manager saw the task reach "running" (hidden from the API).

# Observed states that count as a failure of a new task ("failure or early termination").
FAILURE_STATES = frozenset({TaskState.FAILED, TaskState.REJECTED, TaskState.COMPLETE})


def timestamp(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return from_rfc3339(text)
    except (ValueError, InvalidArgument):
        return None


def running_stamp(task: Doc) -> float | None:
    """When the task started running as recorded (possibly later than now on a skewed clock), or None."""
    status = task.get("Status") or {}
    stamp = timestamp(status.get(RUNNING_SINCE))
    if stamp is None and task_state(task) == TaskState.RUNNING:
        stamp = timestamp(status.get("Timestamp"))
    return stamp


def is_running(task: Doc) -> bool:
    return task_state(task) == TaskState.RUNNING


def slot_key(service: Doc, task: Doc) -> SlotKey:
    return task_node(task) if is_global(service) else task_slot(task)


@dataclass(frozen=True)
class Basis:
    """What a slot's classification depends on besides its own tasks and their nodes."""

    service_id: str
    digest: str
    global_: bool
    replicas: int
    constraints: tuple[str, ...]
    started_at: float | None  # UpdateStatus.StartedAt: tasks of the current spec created since are "of this update"

    @classmethod
    def of(cls, service: Doc) -> Basis:
        global_ = is_global(service)
        template = service["Spec"].get("TaskTemplate") or {}
        return cls(
            service_id=service["ID"],
            digest=service_digest(service),
            global_=global_,
            replicas=0 if global_ else replicas(service),
            constraints=tuple(constraints(template)) if global_ else (),
            started_at=timestamp((service.get("UpdateStatus") or {}).get("StartedAt")),
        )

    def wanted(self) -> list[Constraint] | None:
        """A global service's parsed constraints (None when they do not parse: it is placed nowhere)."""
        try:
            return parse_constraints(list(self.constraints))
        except ShoalError:
            return None


@dataclass(frozen=True, slots=True)
class SlotState:
    """One slot as the updater sees it. Only `covered` slots take part in the update."""

    tasks: tuple[Doc, ...]
    covered: bool  # the update replaces this slot's task (see `update._slots` rules in the module doc there)
    outdated: bool  # covered and holding a live task of an older spec
    in_flight: bool  # covered and its new task not yet running (or held), or a start-first slot running both
    old_running: bool  # an old live task runs (such slots go last: their old task still serves)
    finishing: bool  # covered, holds a new live task, and an old live one or a new one held below running
    new_running: bool  # covered and a live task of the current spec runs
    started: float | None  # newest running time of the slot's live tasks of this update
    failures: tuple[Doc, ...]  # tasks of this update that ended on their own (failed, rejected, completed)
    has_current: bool  # holds a task of the current spec (its classification depends on StartedAt)

    @classmethod
    def of(cls, basis: Basis, wanted: list[Constraint] | None, key: SlotKey, tasks: Iterable[Doc],
           nodes: dict[str, Doc]) -> SlotState:
        tasks = tuple(tasks)
        old: list[Doc] = []
        new: list[Doc] = []
        current: list[Doc] = []
        for task in tasks:
            fresh = task_digest(task) == basis.digest
            if fresh:
                current.append(task)
            if task_is_live(task):
                (new if fresh else old).append(task)
        live = old or new
        if basis.global_:
            node = nodes.get(str(key))
            covered = bool(live) and node is not None and node_is_ready(node) \
                and node_availability(node) == Availability.ACTIVE and wanted is not None and matches(wanted, node)
        else:
            # A slot whose live tasks all sit on a failed node is the reconciler's to refill, with the new spec.
            covered = bool(live) and 1 <= int(key) <= basis.replicas \
                and not all(node_trouble(t, nodes) is not None for t in (*old, *new))
        started_at = basis.started_at
        this_update = [t for t in current if started_at is not None and created_at(t) >= started_at]
        started = max((at for t in this_update if task_is_live(t) if (at := running_stamp(t)) is not None),
                      default=None)
        return cls(
            tasks=tasks,
            covered=covered,
            outdated=covered and bool(old),
            in_flight=covered and (any(not is_running(t) or desired_state(t) < TaskState.RUNNING for t in new)
                                   or (bool(new) and bool(old))),
            old_running=any(is_running(t) for t in old),
            finishing=covered and bool(new) and (bool(old) or any(desired_state(t) < TaskState.RUNNING
                                                                  for t in new)),
            new_running=covered and any(is_running(t) for t in new),
            started=started,
            failures=tuple(t for t in this_update if task_state(t) in FAILURE_STATES),
            has_current=bool(current),
        )


class UpdateProgress:
    """The slots of one service under update, sorted into the sets the updater decides from."""

    def __init__(self, basis: Basis) -> None:
        self.basis = basis
        self._wanted = basis.wanted() if basis.global_ else None
        self.slots: dict[SlotKey, SlotState] = {}
        self.covered = 0
        self.new_running = 0
        self.outdated: set[SlotKey] = set()
        self.in_flight: set[SlotKey] = set()
        self.finishing: set[SlotKey] = set()
        self.waiting: set[SlotKey] = set()  # outdated, not in flight, old task not running: updated first
        self.waiting_busy: set[SlotKey] = set()  # outdated, not in flight, old task running
        self.started: dict[SlotKey, float] = {}
        self.failures: dict[SlotKey, tuple[Doc, ...]] = {}
        self.with_current: set[SlotKey] = set()
        self.stale: set[SlotKey] = set()  # slots whose tasks changed since they were last refreshed

    @classmethod
    def build(cls, service: Doc, tasks: Iterable[Doc], nodes: dict[str, Doc]) -> UpdateProgress:
        progress = cls(Basis.of(service))
        by_key: dict[SlotKey, list[Doc]] = defaultdict(list)
        for task in tasks:
            by_key[slot_key(service, task)].append(task)
        for key, slot_tasks in by_key.items():
            progress.refresh(key, slot_tasks, nodes)
        return progress

    def fits(self, service: Doc) -> bool:
        return Basis.of(service) == self.basis

    def rebase(self, service: Doc) -> bool:
        """Follow a new StartedAt (the update's start, or a rollback's) by marking the slots it concerns stale;
        False when anything else differs and the progress must be built again."""
        basis = Basis.of(service)
        if replace(basis, started_at=self.basis.started_at) != self.basis:
            return False
        if basis != self.basis:
            self.basis = basis
            self.stale |= self.with_current
        return True

    def refresh(self, key: SlotKey, tasks: Iterable[Doc], nodes: dict[str, Doc]) -> None:
        """Classify `key` again from its tasks now (none: the slot is gone)."""
        self._forget(key)
        tasks = tuple(tasks)
        if tasks:
            self._add(key, SlotState.of(self.basis, self._wanted, key, tasks, nodes))

    def _add(self, key: SlotKey, state: SlotState) -> None:
        self.slots[key] = state
        self.covered += state.covered
        self.new_running += state.new_running
        for member, group in ((state.outdated, self.outdated), (state.in_flight, self.in_flight),
                              (state.finishing, self.finishing), (state.has_current, self.with_current)):
            if member:
                group.add(key)
        if state.outdated and not state.in_flight:
            (self.waiting_busy if state.old_running else self.waiting).add(key)
        if state.started is not None:
            self.started[key] = state.started
        if state.failures:
            self.failures[key] = state.failures

    def _forget(self, key: SlotKey) -> None:
        state = self.slots.pop(key, None)
        if state is None:
            return
        self.covered -= state.covered
        self.new_running -= state.new_running
        for group in (self.outdated, self.in_flight, self.finishing, self.with_current, self.waiting,
                      self.waiting_busy):
            group.discard(key)
        self.started.pop(key, None)
        self.failures.pop(key, None)

    def last_running(self, now: float) -> float | None:
        """When the newest live task of this update started running (never later than now)."""
        newest = max(self.started.values(), default=None)
        return None if newest is None else min(newest, now)

    def failed_tasks(self) -> list[Doc]:
        return [task for tasks in self.failures.values() for task in tasks]
