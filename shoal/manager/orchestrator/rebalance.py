"""Rebalance: move a replicated service's tasks back to an even spread, through the rolling updater.

Docker never moves a running task to a node that returned or joined; `shoal service rebalance` does, on
request. The moves are decided here (pure): the service's live tasks on the nodes that can take them are
counted per node, each node's fair share is the total over the nodes, one more for the fullest nodes while the
remainder lasts, and the tasks above a node's share are chosen, highest slot first. A chosen task is stamped
outdated, so the rolling updater replaces it under the service's UpdateConfig (parallelism, delay, order,
monitor, failure action), and the scheduler, which ranks by the service's tasks per node, puts each
replacement on the emptiest node.
"""

from __future__ import annotations

from collections import defaultdict

from shoal.errors import InvalidArgument
from shoal.manager.scheduler.filters import filters_for
from shoal.manager.scheduler.pipeline import Pipeline
from shoal.spec import SPEC_DIGEST, effective_update_config
from shoal.timefmt import to_rfc3339
from shoal.types import Doc, is_global, task_is_live, task_node, task_slot

MOVE = "rebalance"  # the digest a task to move carries: no spec has it, so the updater sees it outdated


def refuse_rebalance(service: Doc) -> None:
    """InvalidArgument when the service cannot be rebalanced, saying what to do instead."""
    spec = service["Spec"]
    name = spec.get("Name", "")
    if is_global(service) or (spec.get("Mode") or {}).get("Replicated") is None:
        raise InvalidArgument(f"service {name} is not a replicated service: only replicated services are rebalanced")
    state = (service.get("UpdateStatus") or {}).get("State")
    if state in ("updating", "paused", "rollback_started", "rollback_paused"):
        raise InvalidArgument(f"service {name} is being updated ({state}): rebalance it once the update is over")
    if effective_update_config(spec)["FailureAction"] == "rollback":
        raise InvalidArgument(f"service {name} rolls back a failed update, and a rebalance has no spec to roll "
                              "back to: set --update-failure-action pause or continue first")
    if ((spec.get("TaskTemplate") or {}).get("Placement") or {}).get("Preferences"):
        raise InvalidArgument(f"service {name} has placement preferences, which rebalance does not follow yet")


def rebalance_moves(service: Doc, tasks: list[Doc], nodes: dict[str, Doc]) -> list[Doc]:
    """The live tasks of `service` to move so that its tasks spread evenly over the nodes that can take them.

    Tasks on a node that cannot take the service any more (down, drained, constraints) are not counted: the
    reconciler moves those. Nothing moves when no node holds two more tasks than another.
    """
    pipeline = Pipeline(filters_for(service["Spec"].get("TaskTemplate") or {}))
    eligible = sorted(node_id for node_id, node in nodes.items() if pipeline.check(node))
    if not eligible:
        return []
    on_node: dict[str, list[Doc]] = defaultdict(list)
    for task in tasks:
        if task.get("ServiceID") == service["ID"] and task_is_live(task) and task_node(task) in eligible:
            on_node[task_node(task)].append(task)
    total = sum(len(held) for held in on_node.values())
    share, extra = divmod(total, len(eligible))
    fullest_first = sorted(eligible, key=lambda node_id: (-len(on_node[node_id]), node_id))
    moves: list[Doc] = []
    for rank, node_id in enumerate(fullest_first):
        allowed = share + (1 if rank < extra else 0)
        held = sorted(on_node[node_id], key=lambda t: (-task_slot(t), str(t["ID"])))
        moves += held[:max(0, len(held) - allowed)]
    return moves


def rebalancing(service: Doc, now: float) -> Doc:
    """The service with an update under way that the updater carries out (and reports as any update)."""
    stamp = to_rfc3339(now)
    return {**service, "UpdatedAt": stamp,
            "UpdateStatus": {"State": "updating", "StartedAt": stamp, "Message": "rebalance in progress"}}


def marked_for_move(task: Doc) -> Doc:
    """The task stamped outdated, for the updater to replace."""
    return {**task, SPEC_DIGEST: MOVE}
