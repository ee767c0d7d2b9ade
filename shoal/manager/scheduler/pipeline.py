"""The scheduler's decision: which node each pending task goes to, or why none can take it.

Pure: pending tasks, nodes and the tasks already on each node in; task copies out. Nodes pass a filter
pipeline (ready, available, constraints); the survivors are ranked by spread: fewest live tasks of the same
service, then fewest live tasks overall, then node ID. Tasks of one service with the same placement
constraints (all the spec the filters read) are placed as a group from one heap, whose counts move as each
task lands, so 6 tasks on 3 equal nodes go 2/2/2. Filtering is done once per distinct set of constraints.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.manager.scheduler.filters import Filter, filters_for
from shoal.mesh.table import published_ports
from shoal.timefmt import to_rfc3339
from shoal.types import Doc, Plan, TaskState, constraints, desired_state, task_is_live, task_node, task_state

ASSIGNED_MESSAGE = "scheduler assigned task to node"
PREASSIGNED_MESSAGE = "scheduler confirmed task can run on preassigned node"
NO_SUITABLE_NODE = "no suitable node"


class Pipeline:
    """Runs nodes through filters, counting for each filter the nodes it was first to refuse."""

    def __init__(self, filters: list[Filter]) -> None:
        self.filters = filters
        self.failures = [0] * len(filters)

    def check(self, node: Doc) -> bool:
        for index, node_filter in enumerate(self.filters):
            if not node_filter.check(node):
                self.failures[index] += 1
                return False
        return True

    def explain(self) -> str:
        """The refusals, most frequent first, e.g. "2 nodes not available for new tasks; ..."."""
        by_group: dict[str, tuple[Filter, int]] = {}
        for node_filter, count in zip(self.filters, self.failures, strict=True):
            if count:
                first, total = by_group.get(node_filter.explanation_group, (node_filter, 0))
                by_group[node_filter.explanation_group] = (first, total + count)
        ranked = sorted(by_group.values(), key=lambda entry: -entry[1])  # stable: filter order breaks ties
        return "; ".join(node_filter.explain(count) for node_filter, count in ranked)

    def error(self) -> str:
        """The text for a task's Status.Err when no node passed."""
        explanation = self.explain()
        return f"{NO_SUITABLE_NODE} ({explanation})" if explanation else NO_SUITABLE_NODE


@dataclass
class SchedulingResult:
    assigned: list[Doc] = field(default_factory=list)
    # Tasks no node can take, with Status.Err saying why; only those whose Err text changed.
    unassigned: list[Doc] = field(default_factory=list)

    def plan(self) -> Plan:
        notes = [f"{len(self.assigned)} assigned, {len(self.unassigned)} without a suitable node"]
        return Plan(update=self.assigned + self.unassigned, notes=notes)


HostPort = tuple[int, str]  # (published port, protocol) bound on a node by a host-mode task


def host_ports(task: Doc) -> set[HostPort]:
    """The ports a task binds on its node: host-mode published ports with a number (0 lets the node choose)."""
    return {(int(p["PublishedPort"]), str(p.get("Protocol") or "tcp")) for p in published_ports(task)
            if p.get("PublishMode") == "host" and p.get("PublishedPort")}


def host_port_error(count: int) -> str:
    return f"no suitable node (host-mode port already in use on {count} node{'s' if count != 1 else ''})"


class NodeLoad:
    """Live tasks per node, in total and per service, and the host ports they bind (swarmkit's NodeInfo).

    The scheduler loop keeps one current as tasks change, so a tick costs in proportion to the pending tasks
    and the nodes, never to the tasks already placed. `schedule` reads it and never changes it.
    """

    def __init__(self) -> None:
        self.total: Counter[str] = Counter()
        self.by_service: dict[str, Counter[str]] = defaultdict(Counter)
        self.host_ports: dict[str, Counter[HostPort]] = defaultdict(Counter)

    @classmethod
    def of(cls, tasks_by_node: Mapping[str, list[Doc]]) -> NodeLoad:
        load = cls()
        for node_tasks in tasks_by_node.values():
            for task in node_tasks:
                load.add(task)
        return load

    @staticmethod
    def counts(task: Doc) -> bool:
        """Whether a task occupies its node: live and placed there (a global task waiting on its node for
        the scheduler's confirmation does not, yet)."""
        return bool(task_node(task)) and task_state(task) >= TaskState.ASSIGNED and task_is_live(task)

    def add(self, task: Doc) -> None:
        if self.counts(task):
            self._change(task, 1)

    def remove(self, task: Doc) -> None:
        if self.counts(task):
            self._change(task, -1)

    def _change(self, task: Doc, delta: int) -> None:
        node_id = task_node(task)
        _bump(self.total, node_id, delta)
        _bump(self.by_service[task["ServiceID"]], node_id, delta)
        for port in host_ports(task):
            _bump(self.host_ports[node_id], port, delta)


def _bump(counter: Counter[Any], key: Any, delta: int) -> None:
    counter[key] += delta
    if counter[key] <= 0:
        del counter[key]


class _Load:
    """A NodeLoad as one scheduling decision sees it: the base plus the placements made so far."""

    def __init__(self, base: NodeLoad) -> None:
        self.base = base
        self.delta_total: dict[str, int] = defaultdict(int)
        self.delta_service: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.delta_ports: dict[str, dict[HostPort, int]] = defaultdict(lambda: defaultdict(int))

    def total(self, node_id: str) -> int:
        return self.base.total.get(node_id, 0) + self.delta_total.get(node_id, 0)

    def service_count(self, service_id: str, node_id: str) -> int:
        base = self.base.by_service.get(service_id)
        delta = self.delta_service.get(service_id)
        return (base.get(node_id, 0) if base else 0) + (delta.get(node_id, 0) if delta else 0)

    def service_nodes(self, service_id: str) -> set[str]:
        """The nodes that run a live task of the service."""
        candidates = set(self.base.by_service.get(service_id, ())) | set(self.delta_service.get(service_id, ()))
        return {node_id for node_id in candidates if self.service_count(service_id, node_id) > 0}

    def host_ports(self, node_id: str) -> set[HostPort]:
        return set(self.base.host_ports.get(node_id, ())) | set(self.delta_ports.get(node_id, ()))

    def add(self, node_id: str, task: Doc) -> None:
        self.delta_total[node_id] += 1
        self.delta_service[task["ServiceID"]][node_id] += 1
        for port in host_ports(task):
            self.delta_ports[node_id][port] += 1


class _Candidates:
    """The nodes that pass the filters for one set of constraints, in a heap of (live tasks, node ID).

    Entries may be stale (a node's count only grows); a stale entry is re-pushed with the true count when it
    reaches the top, so the heap is built once per constraint set rather than once per group.
    """

    def __init__(self, node_ids: list[str], error: str, load: _Load) -> None:
        self.node_ids = set(node_ids)
        self.error = error
        self.heap = [(load.total(nid), nid) for nid in node_ids]
        heapq.heapify(self.heap)

    def pop_least_loaded(self, load: _Load) -> str | None:
        while self.heap:
            total, node_id = self.heap[0]
            if total != load.total(node_id):
                heapq.heapreplace(self.heap, (load.total(node_id), node_id))
                continue
            heapq.heappop(self.heap)
            return node_id
        return None

    def push_back(self, node_ids: list[str], load: _Load) -> None:
        for node_id in node_ids:
            heapq.heappush(self.heap, (load.total(node_id), node_id))


def schedule(
    pending: list[Doc],
    nodes: list[Doc],
    placed: NodeLoad | Mapping[str, list[Doc]],
    now: float,
) -> SchedulingResult:
    """Place the pending tasks. Tasks that are not pending, or no longer wanted, are passed over.

    `placed` is what the nodes already run: a NodeLoad, or the tasks on each node. A task that already has a
    NodeID (a global task) is only checked against that node. A task whose preassigned node is unknown is
    passed over: the global reconciler stops it.
    """
    result = SchedulingResult()
    stamp = to_rfc3339(now)
    node_by_id = {n["ID"]: n for n in nodes}
    waiting = [t for t in pending if task_state(t) < TaskState.ASSIGNED and desired_state(t) <= TaskState.RUNNING]

    load = _Load(placed if isinstance(placed, NodeLoad) else NodeLoad.of(placed))

    groups: dict[tuple[str, tuple[str, ...]], list[Doc]] = defaultdict(list)
    for task in waiting:
        node_id = task_node(task)
        if not node_id:
            groups[(task["ServiceID"], tuple(sorted(constraints(task.get("Spec") or {}))))].append(task)
            continue
        node = node_by_id.get(node_id)
        if node is None:
            continue
        pipeline = Pipeline(filters_for(task.get("Spec") or {}))
        if not pipeline.check(node):
            _refuse(result, task, pipeline.error(), stamp)
        elif host_ports(task) & load.host_ports(node_id):
            _refuse(result, task, host_port_error(1), stamp)
        else:
            result.assigned.append(_assigned(task, node_id, PREASSIGNED_MESSAGE, stamp))
            load.add(node_id, task)

    candidates: dict[tuple[str, ...], _Candidates] = {}
    for (service_id, constraint_key), group in groups.items():
        if constraint_key not in candidates:
            pipeline = Pipeline(filters_for(group[0].get("Spec") or {}))
            passing = [n["ID"] for n in nodes if pipeline.check(n)]
            candidates[constraint_key] = _Candidates(passing, pipeline.error(), load)
        fit = candidates[constraint_key]
        if not fit.node_ids:
            for task in group:
                _refuse(result, task, fit.error, stamp)
            continue
        if host_ports(group[0]):
            _place_on_free_host_ports(result, group, fit, load, stamp)
        else:
            _spread(result, group, service_id, fit, load, stamp)
    return result


def _place_on_free_host_ports(result: SchedulingResult, group: list[Doc], fit: _Candidates, load: _Load,
                              stamp: str) -> None:
    """Tasks that bind host ports: at most one per node, on nodes where those ports are free, least loaded
    first; the rest wait, saying why (as swarmkit's host-port filter does)."""
    wanted = host_ports(group[0])
    free = sorted((load.total(nid), nid) for nid in fit.node_ids if not wanted & load.host_ports(nid))
    busy = len(fit.node_ids) - len(free)
    for task in group:
        if not free:
            _refuse(result, task, host_port_error(busy), stamp)
            continue
        _, node_id = free.pop(0)
        result.assigned.append(_assigned(task, node_id, ASSIGNED_MESSAGE, stamp))
        load.add(node_id, task)
        busy += 1


def _spread(
    result: SchedulingResult, group: list[Doc], service_id: str, fit: _Candidates, load: _Load, stamp: str
) -> None:
    """Place a group by (tasks of this service, tasks overall, node ID), lowest first.

    Nodes without a task of this service rank before all others and come, least loaded first, from the
    shared candidate heap; only the nodes that already run the service are kept in a heap of the group's own,
    so a group costs in proportion to its size and the service's footprint, not to the cluster size.
    """
    hosting = [(load.service_count(service_id, nid), load.total(nid), nid)
               for nid in load.service_nodes(service_id) if nid in fit.node_ids]
    heapq.heapify(hosting)
    drawn: list[str] = []
    for task in group:
        node_id = None
        while (free := fit.pop_least_loaded(load)) is not None:
            drawn.append(free)
            if not load.service_count(service_id, free):
                node_id = free
                break
        if node_id is None:
            node_id = heapq.heappop(hosting)[2]
        result.assigned.append(_assigned(task, node_id, ASSIGNED_MESSAGE, stamp))
        load.add(node_id, task)
        heapq.heappush(hosting, (load.service_count(service_id, node_id), load.total(node_id), node_id))
    fit.push_back(drawn, load)


def _assigned(task: Doc, node_id: str, message: str, stamp: str) -> Doc:
    placed = dict(task)
    placed["NodeID"] = node_id
    placed["Status"] = {"Timestamp": stamp, "State": TaskState.ASSIGNED.wire, "Message": message, "Err": ""}
    placed["UpdatedAt"] = stamp
    return placed


def _refuse(result: SchedulingResult, task: Doc, error: str, stamp: str) -> None:
    if (waiting := refused(task, error, stamp)) is not None:
        result.unassigned.append(waiting)


def refused(task: Doc, error: str, stamp: str) -> Doc | None:
    """The task, still pending, saying why it waits; None when it already says so (not worth a write)."""
    status = task.get("Status") or {}
    if status.get("Err") == error:
        return None
    waiting = dict(task)
    waiting["Status"] = {**status, "Timestamp": stamp, "Err": error}
    waiting["UpdatedAt"] = stamp
    return waiting
