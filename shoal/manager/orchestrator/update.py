"""The rolling update planner: which tasks to replace now, and how the service's UpdateStatus moves.

Pure: the service, its tasks, the nodes and the time in; an `UpdatePlan` out. Docker's `service update`
semantics (swarmkit `manager/orchestrator/update/updater.go`), but with no memory of its own: everything
is read back from the store, so a new leader carries an update on where the old one left it. What it reads
is sorted per slot into an `UpdateProgress` (update_progress.py), which the orchestrator keeps current slot by
slot, so a pass costs the slots it acts on, not the service's size.

Reading the store:

- A *slot* is a replicated service's slot number, or the node of a global service's task. Its tasks of an
  older spec than the service's TaskTemplate (`is_task_dirty`) are *old*; the others are *new*.
- A slot needs updating while it holds a live old task. The tasks of the update in progress are the new ones
  created since `UpdateStatus.StartedAt`.
- A slot is *in flight* while its new task has not reached "running" (or is still held at desired "ready",
  see stop-first below), or while a start-first slot still runs its old task. Health is the executor's
  business: it reports "running" only once the task's health check has passed (swarmkit's contract, where a
  task with a health check stays "starting" until healthy), so "running" here means "up and healthy".
- The time a task started running is `Status.ShoalRunningSince` when the dispatcher recorded it (see
  `RUNNING_SINCE`), else the `Status.Timestamp` of a task still running. For a task that has ended without
  that stamp, its CreatedAt stands in: a lower bound, so a failure is then counted only when it certainly
  fell within the monitor window.

Batches are lock-step: `Parallelism` slots (0: all) are replaced at once, and the next batch starts `Delay`
after every slot of the previous one is running, the newest of its tasks' running times counting.

- stop-first: the old task gets desired "shutdown" and the new one is created with desired "ready"; once the
  old one has stopped, the new one is raised to desired "running" (an agent that does not hold "ready" tasks
  back simply starts it at once).
- start-first: the new task is created running; the old one is shut down when the new one runs.

A new task of the update that fails, is rejected or completes within `Monitor` of starting is a failure.
When the slots with a failure, divided by the slots the update covers (swarmkit divides by the slots it set
out to update; a slot whose new task keeps failing counts once), exceed `MaxFailureRatio`, `FailureAction`
applies: "pause", "continue", or "rollback": `PreviousSpec` and `Spec` swap, as in a manual rollback, and
the rollback proceeds under the RollbackConfig. A rollback is never rolled back; it pauses. The update is
"completed" once no slot needs updating or is in flight and the newest task of the update has run for
`Monitor`.

An outdated slot found after an update completed (a node that was paused comes back active) is replaced
under the UpdateConfig without touching UpdateStatus. A paused update starts no new batch, but slots already
in flight are finished (as swarmkit's workers finish the slot they hold), so no slot is left with a task
held at "ready" or two tasks running.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from shoal.errors import ShoalError
from shoal.manager.controlapi.service import IngressPort, updated_service
from shoal.manager.orchestrator import restart
from shoal.manager.orchestrator.common import (
    IdFactory,
    created_at,
    is_task_dirty,
    mark_status,
    never_reached_an_agent,
    new_task,
    node_trouble,
    service_digest,
    set_desired,
    short,
    task_digest,
)
from shoal.manager.orchestrator.update_progress import (
    FAILURE_STATES,
    RUNNING_SINCE,
    SlotKey,
    UpdateProgress,
    is_running,
    running_stamp,
    timestamp,
)
from shoal.spec import effective_update_config
from shoal.timefmt import SECOND, to_rfc3339
from shoal.types import (
    Doc,
    Plan,
    TaskState,
    clone,
    desired_state,
    is_global,
    replicas,
    task_is_live,
    task_node,
    task_slot,
    task_state,
)

# UpdateStatus.State values (Docker's `swarm.UpdateState`).
UPDATING = "updating"
PAUSED = "paused"
COMPLETED = "completed"
ROLLBACK_STARTED = "rollback_started"
ROLLBACK_PAUSED = "rollback_paused"
ROLLBACK_COMPLETED = "rollback_completed"
IN_PROGRESS = (UPDATING, ROLLBACK_STARTED)

@dataclass(frozen=True)
class UpdatePolicy:
    """An UpdateConfig (or RollbackConfig) with Docker's defaults filled in; durations in seconds."""

    parallelism: int
    delay: float
    monitor: float
    max_failure_ratio: float
    failure_action: str
    start_first: bool

    @classmethod
    def of(cls, spec: Doc, rollback: bool) -> UpdatePolicy:
        config = effective_update_config(spec, rollback)
        return cls(
            parallelism=max(0, int(config.get("Parallelism") or 0)),
            delay=float(config.get("Delay") or 0) / SECOND,
            monitor=float(config.get("Monitor") or 0) / SECOND,
            max_failure_ratio=float(config.get("MaxFailureRatio") or 0),
            failure_action=str(config["FailureAction"]),
            start_first=config["Order"] == "start-first",
        )


@dataclass
class UpdatePlan:
    """One decision of the updater: task writes, and the service document when its update state changes.

    `service` is the whole Service document to write (version-checked) or None. The plan's `wake_at` is when
    to decide again although nothing changed (end of a delay or of the monitor window); `notes` say why.
    """

    plan: Plan = field(default_factory=Plan)
    service: Doc | None = None

    @property
    def wake_at(self) -> float | None:
        return self.plan.wake_at

    @property
    def notes(self) -> list[str]:
        return self.plan.notes

    def empty(self) -> bool:
        return self.plan.empty() and self.service is None

    def summary(self) -> str:
        state = f" status={self.service['UpdateStatus']['State']}" if self.service is not None else ""
        return self.plan.summary() + state


# ---- small readers --------------------------------------------------------------------------------------

def update_state(service: Doc) -> str | None:
    return ((service.get("UpdateStatus") or {}).get("State")) or None


def running_since(task: Doc, now: float) -> float | None:
    """When the task started running (never later than `now`), or None when that is not known."""
    stamp = running_stamp(task)
    return None if stamp is None else min(stamp, now)


def failed_within_monitor(task: Doc, monitor: float, now: float) -> bool:
    """The task ended on its own (failed, rejected, completed) within `monitor` seconds of starting.

    A rejected task never started, so it always counts. Without a recorded start, CreatedAt stands in.
    """
    state = task_state(task)
    if state not in FAILURE_STATES:
        return False
    if state == TaskState.REJECTED:
        return True
    started = timestamp((task.get("Status") or {}).get(RUNNING_SINCE))
    if started is None:
        started = created_at(task)
    return restart.ended_at(task, now) - started <= monitor


@dataclass
class _Slot:
    """One slot's tasks as they will be once this decision is applied (`tasks` is updated in place)."""

    key: SlotKey
    tasks: list[Doc]

    @property
    def name(self) -> str:
        return f"node {short(self.key)}" if isinstance(self.key, str) else f"slot {self.key}"

    @property
    def slot(self) -> int:
        return 0 if isinstance(self.key, str) else self.key

    @property
    def node_id(self) -> str:
        return self.key if isinstance(self.key, str) else ""

    def _live(self, service: Doc) -> tuple[list[Doc], list[Doc]]:
        old: list[Doc] = []
        new: list[Doc] = []
        current = service_digest(service)
        for task in self.tasks:
            if task_is_live(task):
                (old if task_digest(task) != current else new).append(task)
        return old, new

    def old_live(self, service: Doc) -> list[Doc]:
        return self._live(service)[0]

    def new_live(self, service: Doc) -> list[Doc]:
        return self._live(service)[1]

    def old_stopping(self, service: Doc, nodes: dict[str, Doc]) -> list[Doc]:
        """Old tasks asked to stop that have not yet: their agent will report the end."""
        return [
            t for t in self.tasks
            if is_task_dirty(service, t) and desired_state(t) > TaskState.RUNNING
            and not task_state(t).terminal and not never_reached_an_agent(t)
            and node_trouble(t, nodes) is None
        ]

    def in_flight(self, service: Doc) -> bool:
        old, new = self._live(service)
        if any(not is_running(t) or desired_state(t) < TaskState.RUNNING for t in new):
            return True
        return bool(new) and bool(old)


# ---- the decision ---------------------------------------------------------------------------------------

class _Draft:
    """Task writes of one decision; each task written at most once, slots kept showing the result."""

    def __init__(self, new_task_id: IdFactory | None) -> None:
        self.changed: dict[str, Doc] = {}
        self.created: list[Doc] = []
        self.new_task_id = new_task_id
        self.plan = Plan()

    def replace(self, slot: _Slot, before: Doc, after: Doc) -> None:
        if after is before:
            return
        self.changed[after["ID"]] = after
        slot.tasks = [after if t is before else t for t in slot.tasks]

    def shut_down(self, slot: _Slot, task: Doc, now: float, message: str) -> None:
        after = set_desired(task, TaskState.SHUTDOWN, now)
        if never_reached_an_agent(after):
            # Nobody else would ever report this task's end (the reconcilers' convention).
            after = mark_status(after, TaskState.SHUTDOWN, message, now)
        self.replace(slot, task, after)

    def create(self, slot: _Slot, task: Doc) -> None:
        self.created.append(task)
        slot.tasks = [*slot.tasks, task]

    def note(self, text: str) -> None:
        self.plan.notes.append(text)

    def wake(self, at: float) -> None:
        self.plan.wake_at = at if self.plan.wake_at is None else min(self.plan.wake_at, at)

    def finish(self, service: Doc | None = None) -> UpdatePlan:
        self.plan.create = list(self.created)
        self.plan.update = list(self.changed.values())
        return UpdatePlan(self.plan, service)


def plan_update(
    service: Doc,
    tasks: list[Doc],
    nodes: dict[str, Doc],
    now: float,
    *,
    used_ports: set[IngressPort] | None = None,
    new_task_id: IdFactory | None = None,
) -> UpdatePlan:
    """What the rolling update of `service` does now; see the module doc for the rules.

    `used_ports` are the ingress ports of the other services, needed only to roll back a spec that publishes
    ports (see `controlapi.service.ingress_ports_in_use`). Tasks of other services in `tasks` are ignored.
    """
    own = [t for t in tasks if t.get("ServiceID") == service["ID"]]
    progress = UpdateProgress.build(service, own, nodes)
    return plan_progress(service, progress, nodes, now, used_ports=used_ports, new_task_id=new_task_id)


def plan_progress(
    service: Doc,
    progress: UpdateProgress,
    nodes: dict[str, Doc],
    now: float,
    *,
    used_ports: set[IngressPort] | None = None,
    new_task_id: IdFactory | None = None,
) -> UpdatePlan:
    """`plan_update` from a progress kept current slot by slot: reads only the slots it acts on."""
    if not progress.fits(service):
        raise ValueError("update progress of another spec")  # the caller's bug: rebuild it
    state = update_state(service)
    policy = UpdatePolicy.of(service["Spec"], rollback=state == ROLLBACK_STARTED)
    draft = _Draft(new_task_id)
    finishing = [_Slot(key, list(progress.slots[key].tasks)) for key in sorted(progress.finishing)]

    if state in IN_PROGRESS and policy.failure_action != "continue":
        stopped = _failure_action(service, progress.failed_tasks(), progress.covered, policy, now, used_ports,
                                  draft)
        if stopped is not None:
            if update_state(stopped) in (PAUSED, ROLLBACK_PAUSED):
                _finish_in_flight(draft, service, finishing, nodes, policy, now)
            return draft.finish(stopped)
    if state in (PAUSED, ROLLBACK_PAUSED):
        _finish_in_flight(draft, service, finishing, nodes, policy, now)
        draft.note(f"update {state}: no new tasks until the service is updated")
        return draft.finish()

    outdated = bool(progress.outdated)
    _finish_in_flight(draft, service, finishing, nodes, policy, now)
    # The slots just finished are classified again from what this decision wrote; the others as they are.
    touched = {slot.key for slot in finishing}
    in_flight = (progress.in_flight - touched) | {slot.key for slot in finishing if slot.in_flight(service)}
    waiting = progress.waiting - touched
    waiting_busy = progress.waiting_busy - touched
    for slot in finishing:
        old = slot.old_live(service)
        if old and not slot.in_flight(service):
            (waiting_busy if any(is_running(t) for t in old) else waiting).add(slot.key)

    new_status: Doc | None = None
    if state is None and outdated:
        new_status = {"State": UPDATING, "StartedAt": to_rfc3339(now), "Message": "update in progress"}
        draft.note("update started")

    if in_flight:
        draft.note(f"waiting for the new tasks of {len(in_flight)} slot{'s' if len(in_flight) != 1 else ''} "
                   "to run: " + _names(in_flight))
    elif waiting or waiting_busy:
        _next_batch(draft, service, progress, waiting, waiting_busy, policy, now)
    elif state in IN_PROGRESS:
        expected = progress.covered if is_global(service) else replicas(service)
        missing = max(0, expected - progress.new_running) if state == ROLLBACK_STARTED else 0
        if missing:
            # A slot emptied by the failed task that caused the rollback is refilled by the reconciler; the
            # rollback is complete only when every slot runs the previous spec again. (An update completes
            # once every slot was replaced, as swarmkit's does, so "continue" ends even if tasks fail.)
            draft.note(f"waiting for {missing} slot{'s' if missing != 1 else ''} to run the current spec")
        else:
            new_status = _completion(draft, service, progress.last_running(now), policy, now)

    if new_status is None:
        return draft.finish()
    return draft.finish(_with_status(service, new_status, now))


def _names(keys: set[SlotKey], shown: int = 20) -> str:
    """Some of the slots' names, in order (an update of a hundred thousand has a thousand in flight)."""
    first = heapq.nsmallest(shown, keys)
    names = ", ".join(_Slot(key, []).name for key in first)
    return names + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def _finish_in_flight(
    draft: _Draft, service: Doc, slots: list[_Slot], nodes: dict[str, Doc], policy: UpdatePolicy, now: float
) -> None:
    """Complete replacements already begun: stop the old tasks a running new one replaces (start-first, or
    a stop-first slot that somehow holds both), and let a new task held at "ready" run once the old one
    has stopped."""
    for slot in slots:
        new = slot.new_live(service)
        if not new:
            continue
        old = slot.old_live(service)
        if old and (not policy.start_first or any(is_running(t) for t in new)):
            for task in old:
                draft.shut_down(slot, task, now, "replaced by the new spec")
            draft.note(f"{slot.name}: stopping old task{'s' if len(old) != 1 else ''} "
                       + ", ".join(short(t["ID"]) for t in old))
        if slot.old_stopping(service, nodes) or slot.old_live(service):
            continue
        for task in slot.new_live(service):
            if desired_state(task) < TaskState.RUNNING:
                draft.replace(slot, task, set_desired(task, TaskState.RUNNING, now))
                draft.note(f"{slot.name}: old task stopped, starting {short(task['ID'])}")


def _next_batch(
    draft: _Draft, service: Doc, progress: UpdateProgress, waiting: set[SlotKey], waiting_busy: set[SlotKey],
    policy: UpdatePolicy, now: float,
) -> None:
    """Start the next batch, or say when it may start (Delay after the previous batch runs)."""
    last_running = progress.last_running(now)
    if last_running is not None and now < last_running + policy.delay:
        draft.wake(last_running + policy.delay)
        draft.note(f"next batch in {last_running + policy.delay - now:.1f}s (update delay)")
        return
    # Slots whose old task serves nothing anyway go first, then in slot (or node) order.
    size = policy.parallelism or len(waiting) + len(waiting_busy)
    keys = heapq.nsmallest(size, waiting)
    keys += heapq.nsmallest(size - len(keys), waiting_busy)
    batch = [_Slot(key, list(progress.slots[key].tasks)) for key in keys]
    for slot in batch:
        task_id = draft.new_task_id() if draft.new_task_id else None
        task = new_task(service, slot.slot, slot.node_id, now, task_id)
        if not policy.start_first:
            for old in slot.old_live(service):
                draft.shut_down(slot, old, now, "replaced by the new spec")
            task["DesiredState"] = TaskState.READY.wire  # raised to running once the old task has stopped
        draft.create(slot, task)
    more = len(waiting) + len(waiting_busy) - len(batch)
    draft.note(f"batch of {len(batch)} ({'start-first' if policy.start_first else 'stop-first'}): "
               + _names({slot.key for slot in batch}) + f"; {more} more to update")


def _completion(
    draft: _Draft, service: Doc, last_running: float | None, policy: UpdatePolicy, now: float
) -> Doc | None:
    """The completed status once the newest task of the update has run for Monitor; else a wake-up."""
    if last_running is not None and now < last_running + policy.monitor:
        draft.wake(last_running + policy.monitor)
        draft.note(f"all slots updated; monitoring for {last_running + policy.monitor - now:.1f}s more")
        return None
    rollback = update_state(service) == ROLLBACK_STARTED
    draft.note("rollback completed" if rollback else "update completed")
    status = dict(service.get("UpdateStatus") or {})
    status.update({"State": ROLLBACK_COMPLETED if rollback else COMPLETED,
                   "Message": "rollback completed" if rollback else "update completed",
                   "CompletedAt": to_rfc3339(now)})
    return status


def _failure_action(
    service: Doc, of_this_update: list[Doc], slot_count: int, policy: UpdatePolicy, now: float,
    used_ports: set[IngressPort] | None, draft: _Draft,
) -> Doc | None:
    """The service document paused or rolled back when failures exceed the ratio; None to carry on."""
    failures = [t for t in of_this_update if failed_within_monitor(t, policy.monitor, now)]
    # A slot whose new task keeps failing (restarted by the reconciler each time) counts once.
    failed_slots = len({task_node(t) if is_global(service) else task_slot(t) for t in failures})
    if not failures or failed_slots / max(1, slot_count) <= policy.max_failure_ratio:
        return None
    culprit = max(failures, key=lambda t: (restart.ended_at(t, now), str(t["ID"])))["ID"]
    rolling_back = update_state(service) == ROLLBACK_STARTED
    draft.note(f"new tasks failed in {failed_slots} of {slot_count} slots (max failure ratio "
               f"{policy.max_failure_ratio})")
    if policy.failure_action == "rollback" and not rolling_back:
        try:
            rolled = updated_service(service, service["Spec"], now, set(used_ports or ()), rollback=True)
        except ShoalError as exc:
            draft.note(f"cannot roll back: {exc.message}")
            return _paused(service, f"update paused due to failure or early termination of task {culprit} "
                                    f"(rollback impossible: {exc.message})", now)
        reason = f"update rolled back due to failure or early termination of task {culprit}"
        rolled["UpdateStatus"] = {"State": ROLLBACK_STARTED, "StartedAt": to_rfc3339(now), "Message": reason}
        draft.note("rolling back to the previous spec")
        return rolled
    what = "rollback" if rolling_back else "update"
    draft.note(f"{what} paused")
    return _paused(service, f"{what} paused due to failure or early termination of task {culprit}", now)


def _paused(service: Doc, message: str, now: float) -> Doc:
    status = dict(service.get("UpdateStatus") or {})
    status.update({"State": ROLLBACK_PAUSED if update_state(service) == ROLLBACK_STARTED else PAUSED,
                   "Message": message})
    return _with_status(service, status, now)


def _with_status(service: Doc, status: Doc, now: float) -> Doc:
    out = clone(service)
    out["UpdateStatus"] = status
    out["UpdatedAt"] = to_rfc3339(now)
    return out
