"""The scheduler's decision: which node each pending task goes to, or why none can take it.

Pure: pending tasks, nodes and the tasks already on each node in; task copies out. Nodes pass a filter
pipeline (ready, available, platform, constraints); the survivors are ranked by spread: fewest live tasks of
the same service, then fewest live tasks overall, then node ID. Tasks of one service with the same placement
(all the spec the filters read) are placed as a group from one heap, whose counts move as each task lands, so
6 tasks on 3 equal nodes go 2/2/2. Filtering by node is done once per distinct set of constraints.

Reservations and `MaxReplicas` also read what the nodes run, which moves as the group lands: such a group
is placed through a `SpreadTree`, which also spreads over the labels of `Placement.Preferences` first (as
swarmkit's tree does): at each level the label value with the fewest tasks of the service takes the next one.
"""

from __future__ import annotations

import heapq
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shoal.errors import InvalidArgument
from shoal.manager.scheduler.constraints import node_attribute
from shoal.manager.scheduler.filters import Filter, filters_for, load_filters
from shoal.manager.scheduler.resources import NONE, Resources, reservation
from shoal.mesh.table import published_ports
from shoal.spec import SPEC_DIGEST, spread_descriptors
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
        self.reserved: dict[str, Resources] = {}  # what the live tasks on each node reserve

    @classmethod
    def of(cls, tasks_by_node: Mapping[str, list[Doc]]) -> NodeLoad:
        load = cls()
        for node_tasks in tasks_by_node.values():
            for task in node_tasks:
                load.add(task)
        return load

    def copy(self) -> NodeLoad:
        out = NodeLoad()
        out.total = self.total.copy()
        for service_id, counts in self.by_service.items():
            out.by_service[service_id] = counts.copy()
        for node_id, ports in self.host_ports.items():
            out.host_ports[node_id] = ports.copy()
        out.reserved = dict(self.reserved)
        return out

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
        wanted = reservation(task.get("Spec") or {})
        if wanted:
            held = self.reserved.get(node_id, NONE)
            left = held + wanted if delta > 0 else held - wanted
            if left:
                self.reserved[node_id] = left
            else:
                self.reserved.pop(node_id, None)


def _bump(counter: Counter[Any], key: Any, delta: int) -> None:
    counter[key] += delta
    if counter[key] <= 0:
        del counter[key]


@dataclass(frozen=True)
class Profile:
    """What placement reads of a task that all tasks of its group share."""

    ports: frozenset[HostPort]
    reservation: Resources

    @classmethod
    def of(cls, task: Doc) -> Profile:
        return cls(frozenset(host_ports(task)), reservation(task.get("Spec") or {}))


class _Load:
    """A NodeLoad as one scheduling decision sees it: the base plus the placements made so far."""

    def __init__(self, base: NodeLoad) -> None:
        self.base = base
        self.delta_total: dict[str, int] = defaultdict(int)
        self.delta_service: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.delta_ports: dict[str, dict[HostPort, int]] = defaultdict(lambda: defaultdict(int))
        self.delta_reserved: dict[str, Resources] = {}

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

    def reserved(self, node_id: str) -> Resources:
        return self.base.reserved.get(node_id, NONE) + self.delta_reserved.get(node_id, NONE)

    def host_ports(self, node_id: str) -> set[HostPort]:
        return set(self.base.host_ports.get(node_id, ())) | set(self.delta_ports.get(node_id, ()))

    def add(self, node_id: str, task: Doc, profile: Profile | None = None) -> None:
        """Count a placement; `profile` is the task's group's, computed once for the whole group."""
        profile = profile or Profile.of(task)
        self.delta_total[node_id] += 1
        self.delta_service[task["ServiceID"]][node_id] += 1
        for port in profile.ports:
            self.delta_ports[node_id][port] += 1
        wanted = profile.reservation
        if wanted:
            self.delta_reserved[node_id] = self.delta_reserved.get(node_id, NONE) + wanted


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

    groups: dict[tuple[str, str], list[Doc]] = defaultdict(list)
    for task in waiting:
        node_id = task_node(task)
        if not node_id:
            # Tasks stamped with one spec digest have one spec: the key is worked out once per group below.
            groups[(task["ServiceID"], task.get(SPEC_DIGEST) or placement_key(task))].append(task)
            continue
        node = node_by_id.get(node_id)
        if node is None:
            continue
        # A global task goes to its own node: MaxReplicas means nothing there, reservations do.
        pipeline = Pipeline(filters_for(task.get("Spec") or {}) + load_filters(task, load, per_service=False))
        if not pipeline.check(node):
            _refuse(result, task, pipeline.error(), stamp)
        elif host_ports(task) & load.host_ports(node_id):
            _refuse(result, task, host_port_error(1), stamp)
        else:
            result.assigned.append(_assigned(task, node_id, PREASSIGNED_MESSAGE, stamp))
            load.add(node_id, task)

    candidates: dict[str, _Candidates] = {}
    for (service_id, _), group in groups.items():
        spec = group[0].get("Spec") or {}
        node_key = node_filter_key(spec)
        if node_key not in candidates:
            pipeline = Pipeline(filters_for(spec))
            passing = [n["ID"] for n in nodes if pipeline.check(n)]
            candidates[node_key] = _Candidates(passing, pipeline.error(), load)
        fit = candidates[node_key]
        if not fit.node_ids:
            for task in group:
                _refuse(result, task, fit.error, stamp)
            continue
        try:
            labels = spread_descriptors(spec.get("Placement"))
        except InvalidArgument as exc:  # stored before the API checked preferences: wait, saying why
            for task in group:
                _refuse(result, task, f"{NO_SUITABLE_NODE} ({exc.message})", stamp)
            continue
        if host_ports(group[0]):
            _place_on_free_host_ports(result, group, fit, load, stamp, node_by_id)
        elif labels or load_filters(group[0], load):
            _place_through_tree(result, group, service_id, labels, fit, load, stamp, node_by_id)
        else:
            _spread(result, group, service_id, fit, load, stamp)
    return result


def node_filter_key(task_spec: Doc) -> str:
    """What the node-only filters read of a TaskSpec: tasks alike here pass the same nodes."""
    placement = task_spec.get("Placement") or {}
    return repr((sorted(constraints(task_spec)), placement.get("Platforms") or []))


def placement_key(task: Doc) -> str:
    """Everything placement reads of a task: tasks alike here are placed as one group."""
    spec = task.get("Spec") or {}
    placement = spec.get("Placement") or {}
    return repr((node_filter_key(spec), placement.get("MaxReplicas") or 0, placement.get("Preferences") or [],
                 reservation(spec), sorted(host_ports(task))))


def _why_not(task: Doc, nodes: Mapping[str, Doc], load: _Load) -> str:
    """Status.Err for a task no node takes now, counting each node under the first filter it fails."""
    pipeline = Pipeline(filters_for(task.get("Spec") or {}) + load_filters(task, load))
    for node in nodes.values():
        pipeline.check(node)
    return pipeline.error()


def _place_on_free_host_ports(result: SchedulingResult, group: list[Doc], fit: _Candidates, load: _Load,
                              stamp: str, node_by_id: Mapping[str, Doc]) -> None:
    """Tasks that bind host ports: at most one per node, on nodes where those ports are free, least loaded
    first; the rest wait, saying why (as swarmkit's host-port filter does)."""
    profile = Profile.of(group[0])
    wanted = profile.ports
    others = load_filters(group[0], load)
    free = sorted((load.total(nid), nid) for nid in fit.node_ids if not wanted & load.host_ports(nid))
    busy = len(fit.node_ids) - len(free)
    for task in group:
        while free and not all(f.check(node_by_id[free[0][1]]) for f in others):
            free.pop(0)  # no room left for this group there: reservations and counts only grow
        if not free:
            error = host_port_error(busy) if busy else _why_not(task, node_by_id, load)
            _refuse(result, task, error, stamp)
            continue
        _, node_id = free.pop(0)
        result.assigned.append(_assigned(task, node_id, ASSIGNED_MESSAGE, stamp))
        load.add(node_id, task, profile)
        busy += 1


def _spread(
    result: SchedulingResult, group: list[Doc], service_id: str, fit: _Candidates, load: _Load, stamp: str
) -> None:
    """Place a group by (tasks of this service, tasks overall, node ID), lowest first.

    Nodes without a task of this service rank before all others and come, least loaded first, from the
    shared candidate heap; only the nodes that already run the service are kept in a heap of the group's own,
    so a group costs in proportion to its size and the service's footprint, not to the cluster size.
    """
    profile = Profile.of(group[0])
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
        load.add(node_id, task, profile)
        heapq.heappush(hosting, (load.service_count(service_id, node_id), load.total(node_id), node_id))
    fit.push_back(drawn, load)


def _place_through_tree(result: SchedulingResult, group: list[Doc], service_id: str, labels: list[str],
                        fit: _Candidates, load: _Load, stamp: str, node_by_id: Mapping[str, Doc]) -> None:
    """Place a group whose nodes fill up as it lands (reservations, MaxReplicas) or that spreads over `labels`."""
    profile = Profile.of(group[0])
    others = load_filters(group[0], load)
    tree = SpreadTree(labels, [node_by_id[nid] for nid in sorted(fit.node_ids)], service_id, load)
    for index, task in enumerate(group):
        node_id = tree.pick(lambda nid: all(f.check(node_by_id[nid]) for f in others))
        if node_id is None:
            error = _why_not(task, node_by_id, load)
            for waiting in group[index:]:
                _refuse(result, waiting, error, stamp)
            return
        result.assigned.append(_assigned(task, node_id, ASSIGNED_MESSAGE, stamp))
        load.add(node_id, task, profile)
        tree.placed(node_id)


class SpreadTree:
    """Nodes grouped by the values of the spread labels, level by level (swarmkit's preference tree).

    Each inner branch counts the service's tasks under it; a task descends to the branch with the fewest
    (ties by label value, so the choice is deterministic), and at a leaf takes the node with the fewest tasks
    of the service, then fewest overall. A node that refuses the group (no room left) leaves the tree for
    good, and a branch with no node left is passed over. A node without a label is in the "" branch.
    """

    def __init__(self, labels: list[str], nodes: list[Doc], service_id: str, load: _Load) -> None:
        self.depth = len(labels)
        self.service_id = service_id
        self.load = load
        self.path_of: dict[str, tuple[str, ...]] = {}
        self.count: dict[tuple[str, ...], int] = defaultdict(int)
        self.children: dict[tuple[str, ...], set[str]] = defaultdict(set)
        self.leaves: dict[tuple[str, ...], list[tuple[int, int, str]]] = defaultdict(list)
        self.exhausted: set[tuple[str, ...]] = set()
        for node in nodes:
            node_id = node["ID"]
            path = tuple(node_attribute(label, node) for label in labels)
            self.path_of[node_id] = path
            for level in range(self.depth):
                self.children[path[:level]].add(path[level])
            tasks = load.service_count(service_id, node_id)
            for level in range(self.depth + 1):
                self.count[path[:level]] += tasks
            self.leaves[path].append(self._key(node_id))
        for leaf in self.leaves.values():
            heapq.heapify(leaf)
        if not nodes:
            self.exhausted.add(())

    def _key(self, node_id: str) -> tuple[int, int, str]:
        return (self.load.service_count(self.service_id, node_id), self.load.total(node_id), node_id)

    def pick(self, fits: Callable[[str], bool]) -> str | None:
        """The node for the next task, among those `fits` accepts, or None when none is left."""
        while () not in self.exhausted:
            prefix: tuple[str, ...] = ()
            for _ in range(self.depth):
                options = [value for value in self.children[prefix] if (*prefix, value) not in self.exhausted]
                prefix = (*prefix, min(options, key=lambda value: (self.count[(*prefix, value)], value)))
            node_id = self._best_in(self.leaves[prefix], fits)
            if node_id is not None:
                return node_id
            self._exhaust(prefix)
        return None

    def _best_in(self, leaf: list[tuple[int, int, str]], fits: Callable[[str], bool]) -> str | None:
        while leaf:
            key = leaf[0]
            current = self._key(key[2])
            if current != key:
                heapq.heapreplace(leaf, current)  # the entry went stale as tasks landed
            elif not fits(key[2]):
                heapq.heappop(leaf)
            else:
                return key[2]
        return None

    def _exhaust(self, prefix: tuple[str, ...]) -> None:
        self.exhausted.add(prefix)
        while prefix:
            parent = prefix[:-1]
            if any((*parent, value) not in self.exhausted for value in self.children[parent]):
                return
            self.exhausted.add(parent)
            prefix = parent

    def placed(self, node_id: str) -> None:
        path = self.path_of[node_id]
        for level in range(self.depth + 1):
            self.count[path[:level]] += 1


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


# Why a pending task waits, in a word (`shoal_tasks_pending{reason}`): the first refusal its Status.Err names,
# which is the most common one. Each phrase is part of the text its filter (or check) writes there.
WAITING_PHRASES = (
    ("unavailable", "not available for new tasks"),
    ("constraints", "unsatisfied constraint"),
    ("platform", "unsupported platform"),
    ("resources", "insufficient resources"),
    ("max_replicas", "max replicas per node"),
    ("host_port", "host-mode port already in use"),
    ("network_addresses", "no free address"),
)
NOT_TRIED = "not_tried"  # no decision yet: new, or waiting for its turn
NO_NODES = "no_nodes"  # the swarm has no node at all
OTHER = "other"
WAITING_REASONS = (NOT_TRIED, NO_NODES, *(reason for reason, _ in WAITING_PHRASES), OTHER)


def waiting_reason(task: Doc) -> str:
    error = str((task.get("Status") or {}).get("Err") or "")
    if not error:
        return NOT_TRIED
    if error == NO_SUITABLE_NODE:
        return NO_NODES
    found = [(at, reason) for reason, phrase in WAITING_PHRASES if (at := error.find(phrase)) >= 0]
    return min(found)[1] if found else OTHER
