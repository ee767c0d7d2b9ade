"""The global reconciler: one live task on every eligible node.

A node is eligible for a new task when it is ready, active and satisfies the service's placement
constraints. Pure: the service, its tasks and the nodes in; a Plan out.
"""

from __future__ import annotations

from collections import defaultdict

from shoal.errors import InvalidArgument
from shoal.manager.orchestrator.common import (
    IdFactory,
    PlanDraft,
    keep_one,
    live_tasks,
    refill,
    short,
    stop_ended,
)
from shoal.manager.orchestrator.taskreaper import DEFAULT_HISTORY_LIMIT, gone_for_good, trim_history
from shoal.manager.scheduler.constraints import matches
from shoal.spec import Constraint, parse_constraints
from shoal.types import Availability, Doc, Plan, constraints, node_availability, node_is_ready, task_node


def reconcile_global(
    service: Doc,
    tasks: list[Doc],
    nodes: dict[str, Doc],
    now: float,
    history_limit: int = DEFAULT_HISTORY_LIMIT,
    *,
    new_task_id: IdFactory | None = None,
) -> Plan:
    """What to write so `service` has one live task per eligible node.

    - A ready, active node satisfying the constraints with no live task gets one (created with NodeID set,
      slot 0), subject to the restart policy when its previous task there ended on its own.
    - A paused node keeps its task but gets no new one; so does a node that is down (there is nowhere else
      for its task to go).
    - A drained node, a node that no longer satisfies the constraints, and a node that was removed get their
      tasks stopped.
    - Old history beyond `history_limit` per node is deleted.
    """
    own = [t for t in tasks if t.get("ServiceID") == service["ID"]]
    draft = PlanDraft(own, new_task_id)

    wanted: list[Constraint] | None
    try:
        wanted = parse_constraints(constraints(service["Spec"].get("TaskTemplate") or {}))
    except InvalidArgument as exc:
        wanted = None  # the API validates constraints; if one slipped through, place nowhere rather than anywhere
        draft.note(f"placement constraints unusable: {exc.message}")

    by_node: dict[str, list[Doc]] = defaultdict(list)
    for task in own:
        by_node[task_node(task)].append(task)

    for node_id in sorted(set(by_node) | set(nodes)):
        node_tasks = by_node.get(node_id, [])
        node = nodes.get(node_id)
        where = f"node {short(node_id)}" if node_id else "unassigned"
        if node is None:
            _stop_all(draft, node_tasks, now, where, "node removed" if node_id else "no node")
        elif wanted is None or not matches(wanted, node):
            _stop_all(draft, node_tasks, now, where, "constraints not satisfied")
        elif node_availability(node) == Availability.DRAIN:
            _stop_all(draft, node_tasks, now, where, "node drained")
        else:
            _reconcile_node(draft, service, node, node_tasks, now, where)

    view = draft.view()
    doomed = {t["ID"]: t for t in trim_history(view, history_limit, existing_nodes=nodes.keys())}
    doomed.update((t["ID"], t) for t in gone_for_good(view, None, nodes.keys()))
    return draft.finish(list(doomed.values()))


def _stop_all(draft: PlanDraft, node_tasks: list[Doc], now: float, where: str, reason: str) -> None:
    live = live_tasks(node_tasks)
    for task in live:
        draft.shut_down(task, now, reason)
        draft.note(f"{where}: {reason}, stopping task {short(task['ID'])}")
    stop_ended(draft, node_tasks, now, where)


def _reconcile_node(draft: PlanDraft, service: Doc, node: Doc, node_tasks: list[Doc], now: float, where: str) -> None:
    stop_ended(draft, node_tasks, now, where)
    live = live_tasks(node_tasks)
    keep_one(draft, service, live, now, where)
    if live:
        return
    # A paused or unreachable node keeps what it has but takes nothing new.
    if node_is_ready(node) and node_availability(node) == Availability.ACTIVE:
        refill(draft, service, 0, node["ID"], node_tasks, now, where)
