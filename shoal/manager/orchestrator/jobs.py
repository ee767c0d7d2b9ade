"""Jobs: services whose tasks run to completion rather than for ever (Docker's ReplicatedJob and GlobalJob).

A job runs in iterations. The service's `JobStatus.JobIteration.Index` says which one is current; each task
carries the iteration it was made for (`JobIteration`), and every update of the job starts the next one (the
control API counts them), which runs the job again from the start. Tasks of an older iteration are stopped
and, once ended, deleted.

Within an iteration:

- A replicated job has TotalCompletions slots, numbered from 0 as Docker numbers them (the docker CLI's job
  progress reads slot 0 first). At most MaxConcurrent slots are busy at once, the lowest free slot first,
  until every slot holds a completed task.
- A global job has a slot on every eligible node (ready, active, satisfying the placement constraints), a
  node that joins during the iteration included. A node whose task completed is not run on again.

A task that completes is never restarted: its desired state becomes "complete", for good, and it stays as the
record of that completion (the task reaper leaves it). A task that fails is replaced in its slot as the
restart policy says, where "any" acts as "on-failure" (swarmkit never runs a completed job task again). When
the policy gives up, the failed task is desired "complete" too: its slot is finished without completing, and
`service create` reports the job failed rather than waiting for ever.

Job tasks are desired "running" while they run, like every other task: the scheduler places, and the agents
run, tasks wanted running (swarmkit wants job tasks "complete" from the start; a shoal agent reads any desired
state beyond "running" as "stop").

Pure, as the other reconcilers: documents in, a Plan out. For a replicated job the orchestrator loop keeps a
`JobSlots`, the state of each slot, so that a task's report is decided over its own slot and the job's counts,
not over all of its tasks (a job of ten thousand completions would otherwise cost ten thousand per report).
"""

from __future__ import annotations

import enum
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from shoal.errors import InvalidArgument
from shoal.manager.orchestrator import restart
from shoal.manager.orchestrator.common import (
    IdFactory,
    PlanDraft,
    ended_while_wanted,
    keep_one,
    live_tasks,
    never_reached_an_agent,
    new_task,
    newest,
    node_trouble,
    refill,
    short,
)
from shoal.manager.orchestrator.taskreaper import DEFAULT_HISTORY_LIMIT, gone_for_good, trim_history
from shoal.manager.scheduler.constraints import matches
from shoal.spec import Constraint, job_iteration, job_limits, parse_constraints
from shoal.types import (
    Availability,
    Doc,
    NodeState,
    Plan,
    TaskState,
    constraints,
    desired_state,
    node_availability,
    node_is_ready,
    node_state,
    task_is_live,
    task_node,
    task_slot,
    task_state,
)

FAILED_STATES = frozenset({TaskState.FAILED, TaskState.REJECTED})
# New tasks one pass starts at most: a job of a hundred thousand starts in passes the loop can serve sessions
# between (each created task copies the spec); the next pass goes on where this one stopped.
MAX_STARTS_PER_PASS = 1000


class SlotState(enum.Enum):
    """What one slot of a job's current iteration holds (no entry: nothing yet)."""

    BUSY = "busy"  # a task runs, or is about to (at once, or after its restart delay)
    DONE = "done"  # a task completed
    FAILED = "failed"  # its last task failed and the restart policy gives up


# ---- reading a slot -------------------------------------------------------------------------------------

def restart_policy_of(service: Doc) -> Doc:
    return (service["Spec"].get("TaskTemplate") or {}).get("RestartPolicy") or {}


def gives_up(policy: Doc, task: Doc, now: float) -> bool:
    """A failed (or rejected) task that the restart policy does not replace: the end of its slot."""
    if task_state(task) not in FAILED_STATES:
        return False
    if desired_state(task) == TaskState.COMPLETE:
        return True  # decided already
    return restart.restart_at(policy, task, restart.restarts_of(task), now) is None


def slot_state(policy: Doc, slot_tasks: Collection[Doc], now: float) -> SlotState | None:
    """The state of a slot (a node, for a global job) from its tasks of the current iteration.

    The same before and after the reconciler decides the slot: what it decides (a restart now or later, a
    replacement for a task on a failed node) keeps a busy slot busy.
    """
    if any(task_state(t) == TaskState.COMPLETE for t in slot_tasks):
        return SlotState.DONE
    if any(task_is_live(t) for t in slot_tasks):
        return SlotState.BUSY
    last = newest(slot_tasks)
    if last is None:
        return None
    return SlotState.FAILED if gives_up(policy, last, now) else SlotState.BUSY


def job_slot_state(service: Doc, slot: int, tasks: Iterable[Doc], now: float) -> SlotState | None:
    """`slot_state` of one slot of a replicated job, from any of its tasks (other iterations are left out)."""
    iteration = job_iteration(service)
    if not 0 <= slot < job_limits(service)[1]:
        return None
    return slot_state(restart_policy_of(service), [t for t in tasks if job_iteration(t) == iteration], now)


@dataclass
class JobSlots:
    """The state of each used slot of a replicated job's current iteration, kept by the orchestrator loop
    between passes and refreshed slot by slot as tasks change (`stale`)."""

    iteration: int
    states: dict[int, SlotState] = field(default_factory=dict)
    stale: set[int] = field(default_factory=set)  # slots whose tasks changed since they were read
    counts: Counter[SlotState] = field(default_factory=Counter)
    lowest_free: int = 0  # every slot below it is used

    def put(self, slot: int, state: SlotState | None) -> None:
        old = self.states.pop(slot, None)
        if old is not None:
            self.counts[old] -= 1
        if state is None:
            self.lowest_free = max(0, min(self.lowest_free, slot))
            return
        self.states[slot] = state
        self.counts[state] += 1
        while self.lowest_free in self.states:
            self.lowest_free += 1

    @classmethod
    def of(cls, service: Doc, tasks: Iterable[Doc], now: float) -> JobSlots:
        """Built from all of the job's tasks at once."""
        by_slot: dict[int, list[Doc]] = defaultdict(list)
        for task in tasks:
            by_slot[task_slot(task)].append(task)
        slots = cls(job_iteration(service))
        for slot, slot_tasks in by_slot.items():
            slots.put(slot, job_slot_state(service, slot, slot_tasks, now))
        return slots


# ---- deciding a slot ------------------------------------------------------------------------------------

def _settle(draft: PlanDraft, policy: Doc, slot_tasks: list[Doc], now: float, where: str) -> None:
    """Tasks that ended while still wanted stop being wanted: a completed one is desired "complete", for good,
    as is a failed one the restart policy gives up on; any other becomes history (shutdown) to be replaced."""
    last = newest(slot_tasks)
    for task in slot_tasks:
        if not ended_while_wanted(task):
            continue
        state = task_state(task)
        if state == TaskState.COMPLETE:
            draft.want(task, TaskState.COMPLETE, now)
            draft.note(f"{where}: task {short(task['ID'])} complete")
        elif task is last and gives_up(policy, task, now):
            draft.want(task, TaskState.COMPLETE, now)
            draft.note(f"{where}: task {short(task['ID'])} {state.wire}, not restarted (restart policy)")
        else:
            draft.shut_down(task, now, "task ended")
            draft.note(f"{where}: task {short(task['ID'])} {state.wire}")


def _next_task(draft: PlanDraft, service: Doc, policy: Doc, slot: int, node_id: str, slot_tasks: list[Doc],
               now: float, where: str) -> None:
    """An empty slot of the iteration that is neither done nor given up gets its next task: a restart when its
    last task failed (now, or at `plan.wake_at`), at once when the manager stopped it (a node failed)."""
    history = [draft.current(t) for t in slot_tasks]
    last = newest(history)
    if last is not None and gives_up(policy, last, now):
        return
    refill(draft, service, slot, node_id, history, now, where)


def _retire(draft: PlanDraft, tasks: list[Doc], nodes: dict[str, Doc], now: float, why: str) -> list[Doc]:
    """Tasks no longer part of the job (an older iteration): the live ones are stopped, and each is deleted once
    it has ended or cannot end (never reached an agent, node gone or down), as swarmkit removes them."""
    for task in tasks:
        if task_is_live(task):
            draft.shut_down(task, now, why)
    if any(task_is_live(t) for t in tasks):
        draft.note(f"{sum(task_is_live(t) for t in tasks)} tasks stopping: {why}")
    gone = []
    for task in (draft.current(t) for t in tasks):
        node = nodes.get(task_node(task))
        unreachable = node is None or node_state(node) == NodeState.DOWN
        if task_state(task).terminal or unreachable or never_reached_an_agent(task):
            gone.append(task)
    return gone


def _split(service: Doc, tasks: list[Doc], in_range: int | None) -> tuple[list[Doc], list[Doc]]:
    """(tasks of the current iteration, the others); with `in_range`, slots from there on are the others'."""
    iteration = job_iteration(service)
    current: list[Doc] = []
    others: list[Doc] = []
    for task in tasks:
        mine = job_iteration(task) == iteration and (in_range is None or 0 <= task_slot(task) < in_range)
        (current if mine else others).append(task)
    return current, others


# ---- replicated jobs ------------------------------------------------------------------------------------

def reconcile_replicated_job(
    service: Doc,
    tasks: list[Doc],
    nodes: dict[str, Doc],
    now: float,
    history_limit: int = DEFAULT_HISTORY_LIMIT,
    *,
    new_task_id: IdFactory | None = None,
    slots: Collection[int] | None = None,
    others: JobSlots | None = None,
) -> Plan:
    """What to write so a replicated job's current iteration reaches TotalCompletions completed tasks, one per
    slot 0..TotalCompletions-1, with at most MaxConcurrent slots busy at once.

    With `slots`, only those slots are decided and `tasks` need only hold theirs; `others` then gives the
    state of the iteration's other slots (the loop's JobSlots), from which the busy slots are counted and
    free ones found. Without `slots`, every slot, from all of the service's tasks.

    - A completed task is desired "complete" and its slot is done; no task of a done slot runs again.
    - A failed one is replaced in its slot as the restart policy says, or ends its slot (see the module doc).
    - A live task whose node is down, drained or gone is stopped and its slot refilled at once.
    - Free slots, lowest first, get a new task while fewer than MaxConcurrent slots are busy (at most
      MAX_STARTS_PER_PASS of them in one pass).
    - Tasks of other iterations (or of slots beyond TotalCompletions) are stopped, then deleted.
    - Failed history beyond `history_limit` per slot is deleted; completed tasks are kept.
    """
    own = [t for t in tasks if t.get("ServiceID") == service["ID"]]
    if slots is not None:
        own = [t for t in own if task_slot(t) in slots]
    draft = PlanDraft(own, new_task_id)
    concurrent, total = job_limits(service)
    policy = restart_policy_of(service)
    current, stale = _split(service, own, total)
    gone = _retire(draft, stale, nodes, now, f"job iteration {job_iteration(service)} started")

    by_slot: dict[int, list[Doc]] = defaultdict(list)
    for task in current:
        by_slot[task_slot(task)].append(task)
    for slot in sorted(by_slot):
        _decide_slot(draft, service, policy, slot, by_slot[slot], nodes, now)

    decided: dict[int, SlotState] = {}
    for slot, slot_tasks in by_slot.items():
        state = slot_state(policy, [draft.current(t) for t in slot_tasks], now)
        if state is not None:
            decided[slot] = state
    scope = set(by_slot) if slots is None else set(slots)
    kept = others if others is not None else JobSlots(job_iteration(service))
    busy = sum(state is SlotState.BUSY for state in decided.values())
    busy += kept.counts[SlotState.BUSY] - sum(kept.states.get(s) is SlotState.BUSY for s in scope)
    room = min(concurrent - busy, MAX_STARTS_PER_PASS)
    if room > 0:
        for slot in _free_slots(total, room, decided, scope, kept):
            task = new_task(service, slot, "", now, draft.new_task_id())
            draft.create(task)
            draft.note(f"slot {slot}: new task {short(task['ID'])}")

    view, _ = _split(service, draft.view(), total)
    doomed = {t["ID"]: t for t in trim_history(view, history_limit, existing_nodes=nodes.keys(), group_of=task_slot)}
    doomed.update((t["ID"], t) for t in gone)
    return draft.finish(list(doomed.values()))


def _decide_slot(draft: PlanDraft, service: Doc, policy: Doc, slot: int, slot_tasks: list[Doc],
                 nodes: dict[str, Doc], now: float) -> None:
    where = f"slot {slot}"
    _settle(draft, policy, slot_tasks, now, where)
    done = any(task_state(t) == TaskState.COMPLETE for t in slot_tasks)
    healthy = []
    for task in live_tasks(slot_tasks):
        # Nothing runs in a slot that completed (a replacement started while its task was still finishing).
        trouble = "slot completed" if done else node_trouble(task, nodes)
        if trouble is None:
            healthy.append(task)
            continue
        reason = trouble if done else f"node {trouble}"
        draft.shut_down(task, now, reason)
        draft.note(f"{where}: {reason}, stopping task {short(task['ID'])}")
    keep_one(draft, service, healthy, now, where)
    if not done and not healthy:
        _next_task(draft, service, policy, slot, "", slot_tasks, now, where)


def _free_slots(total: int, count: int, decided: dict[int, SlotState], scope: Collection[int],
                kept: JobSlots) -> list[int]:
    """The `count` lowest slots below `total` that hold nothing of the iteration: by this pass's decisions for
    the slots in `scope`, by `kept` for the others."""

    def used(slot: int) -> bool:
        return slot in decided or (slot not in scope and slot in kept.states)

    # Below kept.lowest_free only a slot decided in this pass can have become free.
    found = sorted(s for s in scope if 0 <= s < min(total, kept.lowest_free) and not used(s))
    slot = kept.lowest_free
    while len(found) < count and slot < total:
        if not used(slot):
            found.append(slot)
        slot += 1
    return found[:count]


# ---- global jobs ----------------------------------------------------------------------------------------

def reconcile_global_job(
    service: Doc,
    tasks: list[Doc],
    nodes: dict[str, Doc],
    now: float,
    history_limit: int = DEFAULT_HISTORY_LIMIT,
    *,
    new_task_id: IdFactory | None = None,
) -> Plan:
    """What to write so every eligible node runs a global job's current iteration once, to completion.

    - A ready, active node satisfying the constraints that has no task of the iteration gets one.
    - A node whose task completed (or failed for good) gets nothing more; a failed task is replaced on its
      node as the restart policy says, if the node is still eligible.
    - A drained node, a node that no longer satisfies the constraints, and a removed node have their running
      task stopped; a paused or down node keeps its task but gets no new one.
    - Tasks of other iterations are stopped, then deleted; failed history beyond `history_limit` per node is
      deleted, completed tasks are kept.
    """
    own = [t for t in tasks if t.get("ServiceID") == service["ID"]]
    draft = PlanDraft(own, new_task_id)
    policy = restart_policy_of(service)
    wanted: list[Constraint] | None
    try:
        wanted = parse_constraints(constraints(service["Spec"].get("TaskTemplate") or {}))
    except InvalidArgument as exc:
        wanted = None  # the API validates constraints; if one slipped through, run nowhere rather than anywhere
        draft.note(f"placement constraints unusable: {exc.message}")
    current, stale = _split(service, own, None)
    gone = _retire(draft, stale, nodes, now, f"job iteration {job_iteration(service)} started")

    by_node: dict[str, list[Doc]] = defaultdict(list)
    for task in current:
        by_node[task_node(task)].append(task)
    for node_id in sorted(set(by_node) | set(nodes)):
        _decide_node(draft, service, policy, nodes.get(node_id), node_id, by_node.get(node_id, []), wanted, now)

    view, _ = _split(service, draft.view(), None)
    doomed = {t["ID"]: t for t in trim_history(view, history_limit, existing_nodes=nodes.keys())}
    doomed.update((t["ID"], t) for t in gone_for_good(view, None, nodes.keys()))
    doomed.update((t["ID"], t) for t in gone)
    return draft.finish(list(doomed.values()))


def _decide_node(draft: PlanDraft, service: Doc, policy: Doc, node: Doc | None, node_id: str,
                 node_tasks: list[Doc], wanted: list[Constraint] | None, now: float) -> None:
    where = f"node {short(node_id)}" if node_id else "unassigned"
    _settle(draft, policy, node_tasks, now, where)
    reason = None
    if node is None:
        reason = "node removed" if node_id else "no node"
    elif wanted is None or not matches(wanted, node):
        reason = "constraints not satisfied"
    elif node_availability(node) == Availability.DRAIN:
        reason = "node drained"
    elif any(task_state(t) == TaskState.COMPLETE for t in node_tasks):
        reason = "the node's task completed"
    live = live_tasks(node_tasks)
    if reason is not None:
        for task in live:
            draft.shut_down(task, now, reason)
            draft.note(f"{where}: {reason}, stopping task {short(task['ID'])}")
        return
    assert node is not None
    keep_one(draft, service, live, now, where)
    # A paused or unreachable node keeps what it has but takes nothing new.
    if not live and node_is_ready(node) and node_availability(node) == Availability.ACTIVE:
        _next_task(draft, service, policy, 0, node_id, node_tasks, now, where)
