"""Task history trimming: which old tasks of a service to delete.

Replaced tasks stay in the store as history (`service ps` shows them as `\\_` rows), up to a limit per slot
(per node for a global service) that counts the live task too. Oldest ended tasks go first.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Hashable

from shoal.manager.orchestrator.common import age_order, never_reached_an_agent
from shoal.types import Doc, TaskState, desired_state, task_is_live, task_node, task_slot, task_state

# Docker's default TaskHistoryRetentionLimit.
DEFAULT_HISTORY_LIMIT = 5


def history_limit(cluster: Doc | None) -> int:
    """The swarm's TaskHistoryRetentionLimit (`swarm update --task-history-limit`), Docker's default if unset."""
    limit = (((cluster or {}).get("Spec") or {}).get("Orchestration") or {}).get("TaskHistoryRetentionLimit")
    return DEFAULT_HISTORY_LIMIT if limit is None else int(limit)


def history_group(task: Doc) -> tuple[int, str]:
    """The slot a task belongs to; global tasks (slot 0) are grouped by node instead."""
    slot = task_slot(task)
    return (slot, "") if slot > 0 else (0, task_node(task))


def finished_for_good(task: Doc, existing_nodes: Collection[str] | None) -> bool:
    """Finished for good: not wanted any more, and no agent can still be running it."""
    if desired_state(task) < TaskState.SHUTDOWN:
        # Still wanted, or ended and waiting for its restart decision, or a job's task that is done for good
        # (desired "complete"): those count the job's completions, and are kept as swarmkit keeps them.
        return False
    if task_state(task).terminal or never_reached_an_agent(task):
        return True
    return existing_nodes is not None and task_node(task) not in existing_nodes


def trim_history(
    tasks_of_service: list[Doc],
    history_limit: int,
    existing_nodes: Collection[str] | None = None,
    away: Collection[str] = (),
    group_of: Callable[[Doc], Hashable] = history_group,
) -> list[Doc]:
    """The tasks to delete so each slot keeps at most `history_limit` tasks, the live one included.

    A negative limit keeps everything. A task the agent may still be running (observed state not terminal) is
    kept unless its node is not in `existing_nodes` (None: assume every node still exists). When a slot has no
    live task, its newest task is kept whatever the limit: it holds the slot's restart state. Live tasks whose
    IDs are in `away` (kept on a node that is down) do not hold their slot for this. `group_of` says which
    slot a task is in (a replicated job's slots start at 0).
    """
    if history_limit < 0:
        return []
    groups: dict[Hashable, list[Doc]] = defaultdict(list)
    for task in tasks_of_service:
        groups[group_of(task)].append(task)

    doomed: list[Doc] = []
    for group in groups.values():
        if len(group) <= history_limit:
            continue
        oldest_first = sorted(group, key=age_order)
        held = any(task_is_live(t) and t["ID"] not in away for t in group)
        protected = None if held else oldest_first[-1]["ID"]
        excess = len(group) - history_limit
        for task in oldest_first:
            if excess == 0:
                break
            if task["ID"] != protected and finished_for_good(task, existing_nodes):
                doomed.append(task)
                excess -= 1
    return doomed


def gone_for_good(tasks_of_service: list[Doc], wanted_slots: int | None, existing_nodes: Collection[str]) -> list[Doc]:
    """Tasks to delete whatever the history limit, once finished: a replicated service's tasks in slots scaled
    away (`wanted_slots`), as Docker removes scaled-down tasks rather than keeping them as history; a global
    service's (`wanted_slots` None) tasks on nodes removed from the swarm, whose "slot" is gone with the node.
    """
    doomed = []
    for task in tasks_of_service:
        if wanted_slots is not None:
            gone = task_slot(task) > wanted_slots
        else:
            gone = bool(task_node(task)) and task_node(task) not in existing_nodes
        if gone and finished_for_good(task, existing_nodes):
            doomed.append(task)
    return doomed
