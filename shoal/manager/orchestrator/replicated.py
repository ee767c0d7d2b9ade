"""The replicated reconciler: a service's Replicas live tasks, one in each of slots 1..N.

Pure: the service, its tasks and the nodes in; a Plan out. Rolling updates are not its business (a live task
of an older spec is left to the updater); it only fills, empties and repairs slots.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

from shoal.manager.orchestrator.common import (
    IdFactory,
    PlanDraft,
    down_task_kept_until,
    keep_one,
    live_tasks,
    node_trouble,
    refill,
    short,
    stop_ended,
)
from shoal.manager.orchestrator.taskreaper import DEFAULT_HISTORY_LIMIT, gone_for_good, trim_history
from shoal.types import Doc, Plan, TaskState, desired_state, replicas, task_slot, task_state


def reconcile_replicated(
    service: Doc,
    tasks: list[Doc],
    nodes: dict[str, Doc],
    now: float,
    history_limit: int = DEFAULT_HISTORY_LIMIT,
    *,
    new_task_id: IdFactory | None = None,
    slots: Collection[int] | None = None,
) -> Plan:
    """What to write so `service` has exactly Replicas live tasks in slots 1..N.

    With `slots`, only those slots are reconciled and `tasks` need only hold theirs: the orchestrator's pass
    after a few tasks changed costs in proportion to those, not to the service's size. Without, every slot.

    - Tasks in slots above N are stopped (not-running ones first, then the highest slots).
    - A live task whose node is down, drained or gone is stopped and its slot refilled at once; its Status is
      left to the agent, which stops it when it comes back. Nothing moves back when the node returns.
    - A task that ended while wanted is stopped (becoming history) and replaced as its restart policy says;
      a replacement that must wait sets `plan.wake_at`.
    - Old history beyond `history_limit` per slot is deleted.
    Tasks of other services in `tasks` are ignored.
    """
    own = [t for t in tasks if t.get("ServiceID") == service["ID"]]
    if slots is not None:
        own = [t for t in own if task_slot(t) in slots]
    draft = PlanDraft(own, new_task_id)
    wanted = replicas(service)

    by_slot: dict[int, list[Doc]] = defaultdict(list)
    for task in own:
        by_slot[task_slot(task)].append(task)

    _scale_down(draft, by_slot, wanted, now)
    numbers = range(1, wanted + 1) if slots is None else sorted(s for s in slots if 1 <= s <= wanted)
    for slot in numbers:
        _reconcile_slot(draft, service, slot, by_slot.get(slot, []), nodes, now)

    view = draft.view()
    away = {t["ID"] for t in view if (down_task_kept_until(t, nodes) or 0) > now}
    doomed = {t["ID"]: t for t in trim_history(view, history_limit, existing_nodes=nodes.keys(), away=away)}
    doomed.update((t["ID"], t) for t in gone_for_good(view, wanted, nodes.keys()))
    return draft.finish(list(doomed.values()))


def _scale_down(draft: PlanDraft, by_slot: dict[int, list[Doc]], wanted: int, now: float) -> None:
    surplus = [
        task
        for slot, slot_tasks in by_slot.items()
        if not 1 <= slot <= wanted
        for task in slot_tasks
        if desired_state(task) <= TaskState.RUNNING
    ]
    # Stop the tasks that are not serving yet first, then the highest slots.
    surplus.sort(key=lambda t: (task_state(t) == TaskState.RUNNING, -task_slot(t)))
    for task in surplus:
        draft.shut_down(task, now, "scaled down")
    live = len(live_tasks(surplus))
    if live:
        draft.note(f"scale down to {wanted}: {live} task{'s' if live != 1 else ''} stopping")


def _reconcile_slot(
    draft: PlanDraft, service: Doc, slot: int, slot_tasks: list[Doc], nodes: dict[str, Doc], now: float
) -> None:
    where = f"slot {slot}"
    healthy = []
    for task in live_tasks(slot_tasks):
        trouble = node_trouble(task, nodes)
        if trouble is None:
            healthy.append(task)
            continue
        kept_until = down_task_kept_until(task, nodes)
        if kept_until is not None and now < kept_until:
            # Replaced at once, but still wanted for a while: if its node is back soon (a daemon restart, a
            # short cut) the task that never stopped is kept and its replacement stopped.
            draft.wake(kept_until)
            if desired_state(task) == TaskState.RUNNING:
                draft.note(f"{where}: node {short(task['NodeID'])} down, task {short(task['ID'])} kept for "
                           f"{kept_until - now:.0f}s more")
            continue
        draft.shut_down(task, now, f"node {trouble}")
        draft.note(f"{where}: node {short(task['NodeID'])} {trouble}, replacing task {short(task['ID'])}")
    stop_ended(draft, slot_tasks, now, where)
    keep_one(draft, service, healthy, now, where)
    if not healthy:
        refill(draft, service, slot, "", slot_tasks, now, where)
