"""Rebalance: move a replicated service's tasks back to an even spread, through the rolling updater.

Docker never moves a running task to a node that returned or joined; `shoal service rebalance` does, on
request. The moves are decided here (pure): the service's live tasks on the nodes that can take them are
shared out level by level as the scheduler spreads them: over the values of each spread preference's label,
then over the nodes; at each level every group's fair share is the total over the groups, one more for the
fullest while the remainder lasts. The tasks above a node's share are chosen, highest slot first. A chosen
task is stamped outdated, so the rolling updater replaces it under the service's UpdateConfig (parallelism,
delay, order, monitor, failure action), and the scheduler, which ranks by the service's tasks per label value
and per node, puts each replacement in the emptiest group.
"""

from __future__ import annotations

from collections import defaultdict

from shoal.errors import InvalidArgument
from shoal.manager.scheduler.constraints import node_attribute
from shoal.manager.scheduler.filters import filters_for
from shoal.manager.scheduler.pipeline import Pipeline
from shoal.spec import SPEC_DIGEST, effective_update_config, spread_descriptors
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


def rebalance_moves(service: Doc, tasks: list[Doc], nodes: dict[str, Doc]) -> list[Doc]:
    """The live tasks of `service` to move so that its tasks spread evenly over the nodes that can take them,
    and first over the values of its spread preferences' labels, level by level, as the scheduler spreads.

    Tasks on a node that cannot take the service any more (down, drained, constraints) are not counted: the
    reconciler moves those. Nothing moves when no group or node holds two more tasks than its neighbours.
    """
    template = service["Spec"].get("TaskTemplate") or {}
    pipeline = Pipeline(filters_for(template))
    eligible = sorted(node_id for node_id, node in nodes.items() if pipeline.check(node))
    if not eligible:
        return []
    on_node: dict[str, list[Doc]] = defaultdict(list)
    for task in tasks:
        if task.get("ServiceID") == service["ID"] and task_is_live(task) and task_node(task) in eligible:
            on_node[task_node(task)].append(task)
    labels = spread_descriptors(template.get("Placement"))
    paths = {node_id: tuple(node_attribute(label, nodes[node_id]) for label in labels) for node_id in eligible}
    allowed = _fair_shares(eligible, paths, {n: len(on_node[n]) for n in eligible}, len(labels))
    moves: list[Doc] = []
    for node_id in eligible:
        held = sorted(on_node[node_id], key=lambda t: (-task_slot(t), str(t["ID"])))
        moves += held[:max(0, len(held) - allowed[node_id])]
    return moves


def _fair_shares(node_ids: list[str], paths: dict[str, tuple[str, ...]], held: dict[str, int],
                 depth: int) -> dict[str, int]:
    """How many tasks each node should hold: at each level the total is shared evenly over the label values
    (then over the nodes at the last), the groups holding the most keeping the remainder, so nothing moves
    that an even spread does not need to move."""
    shares: dict[str, int] = {}

    def share(group: list[str], total: int, level: int) -> None:
        if level == depth:
            members: list[list[str]] = [[node_id] for node_id in group]
        else:
            by_value: dict[str, list[str]] = defaultdict(list)
            for node_id in group:
                by_value[paths[node_id][level]].append(node_id)
            members = list(by_value.values())
        count = {id(m): sum(held[n] for n in m) for m in members}
        fullest_first = sorted(members, key=lambda m: (-count[id(m)], min(m)))
        base, extra = divmod(total, len(members))
        for rank, member in enumerate(fullest_first):
            quota = base + (1 if rank < extra else 0)
            if level == depth:
                shares[member[0]] = quota
            else:
                share(member, quota, level + 1)

    share(node_ids, sum(held.values()), 0)
    return shares


def rebalancing(service: Doc, now: float) -> Doc:
    """The service with an update under way that the updater carries out (and reports as any update)."""
    stamp = to_rfc3339(now)
    return {**service, "UpdatedAt": stamp,
            "UpdateStatus": {"State": "updating", "StartedAt": stamp, "Message": "rebalance in progress"}}


def marked_for_move(task: Doc) -> Doc:
    """The task stamped outdated, for the updater to replace."""
    return {**task, SPEC_DIGEST: MOVE}
