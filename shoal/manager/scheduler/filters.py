"""Scheduling filters: each says whether a node can take a task, and explains a count of refusals.

Filters that refuse for the same reason from a user's point of view share an `explanation_group`, so their
counts add up into one phrase: a node that is down, paused or drained is "not available for new tasks", as
Docker says it.
"""

from __future__ import annotations

from typing import Protocol

from shoal.errors import InvalidArgument
from shoal.manager.scheduler.constraints import matches
from shoal.manager.scheduler.resources import Resources, capacity, reservation
from shoal.spec import Constraint, go_architecture, parse_constraints
from shoal.types import Availability, Doc, node_availability, node_is_ready
from shoal.types import constraints as _constraints_of


def _nodes(count: int) -> str:
    return "1 node" if count == 1 else f"{count} nodes"


class Filter(Protocol):
    name: str
    explanation_group: str

    def check(self, node: Doc) -> bool:
        """Whether `node` can take the task this filter was made for."""
        ...

    def explain(self, count: int) -> str:
        """What it means that `count` nodes failed this filter."""
        ...


class ReadyFilter:
    """The node's agent is connected and healthy (Status.State ready)."""

    name = "ready"
    explanation_group = "unavailable"

    def check(self, node: Doc) -> bool:
        return node_is_ready(node)

    def explain(self, count: int) -> str:
        return f"{_nodes(count)} not available for new tasks"


class AvailabilityFilter:
    """The node takes new tasks (Spec.Availability active, not paused or drained)."""

    name = "availability"
    explanation_group = "unavailable"

    def check(self, node: Doc) -> bool:
        return node_availability(node) == Availability.ACTIVE

    def explain(self, count: int) -> str:
        return f"{_nodes(count)} not available for new tasks"


class ConstraintFilter:
    """The node satisfies the task's placement constraints."""

    name = "constraints"
    explanation_group = "constraints"

    def __init__(self, constraints: list[Constraint]) -> None:
        self.constraints = constraints

    def check(self, node: Doc) -> bool:
        return matches(self.constraints, node)

    def explain(self, count: int) -> str:
        return f"{_nodes(count)} with unsatisfied constraint" + ("s" if count != 1 else "")


class InvalidConstraintFilter:
    """Refuses every node: the task's constraints do not parse (the API should have refused them)."""

    name = "invalid-constraints"
    explanation_group = "invalid-constraints"

    def __init__(self, message: str) -> None:
        self.message = message

    def check(self, node: Doc) -> bool:
        return False

    def explain(self, count: int) -> str:
        return self.message


class PlatformFilter:
    """The node's OS and architecture are one of the task's `Placement.Platforms` (swarmkit's PlatformFilter)."""

    name = "platform"
    explanation_group = "platform"

    def __init__(self, platforms: list[Doc]) -> None:
        self.platforms = [(str(p.get("OS") or "").lower(), go_architecture(str(p.get("Architecture") or "")))
                          for p in platforms]

    def check(self, node: Doc) -> bool:
        platform = (node.get("Description") or {}).get("Platform") or {}
        node_os = str(platform.get("OS") or "").lower()
        node_arch = go_architecture(str(platform.get("Architecture") or ""))
        return any((not os_name or os_name == node_os) and (not arch or arch == node_arch)
                   for os_name, arch in self.platforms)

    def explain(self, count: int) -> str:
        return f"unsupported platform on {_nodes(count)}"


class LoadView(Protocol):
    """What a node runs as one scheduling decision sees it, placements of the decision included."""

    def service_count(self, service_id: str, node_id: str) -> int: ...

    def reserved(self, node_id: str) -> Resources: ...


class ResourceFilter:
    """The node has the task's reservations left after what its live tasks reserve (swarmkit's)."""

    name = "resources"
    explanation_group = "resources"

    def __init__(self, wanted: Resources, load: LoadView) -> None:
        self.wanted = wanted
        self.load = load

    def check(self, node: Doc) -> bool:
        return self.wanted.fits_in(capacity(node) - self.load.reserved(node["ID"]))

    def explain(self, count: int) -> str:
        return f"insufficient resources on {_nodes(count)}"


class MaxReplicasFilter:
    """The node runs fewer than `Placement.MaxReplicas` tasks of the service (swarmkit's, with its words)."""

    name = "max-replicas"
    explanation_group = "max-replicas"

    def __init__(self, service_id: str, most: int, load: LoadView) -> None:
        self.service_id = service_id
        self.most = most
        self.load = load

    def check(self, node: Doc) -> bool:
        return self.load.service_count(self.service_id, node["ID"]) < self.most

    def explain(self, count: int) -> str:
        return "max replicas per node limit exceed"


READY = ReadyFilter()
AVAILABLE = AvailabilityFilter()


def filters_for(task_spec: Doc) -> list[Filter]:
    """The filters that read only the node, cheapest and most common refusals first."""
    filters: list[Filter] = [READY, AVAILABLE]
    platforms = (task_spec.get("Placement") or {}).get("Platforms")
    if platforms:
        filters.append(PlatformFilter(platforms))
    exprs = _constraints_of(task_spec)
    if exprs:
        try:
            filters.append(ConstraintFilter(parse_constraints(exprs)))
        except InvalidArgument as exc:
            filters.append(InvalidConstraintFilter(exc.message))
    return filters


def max_replicas(task_spec: Doc) -> int:
    """`Placement.MaxReplicas`, 0 meaning no limit."""
    return int((task_spec.get("Placement") or {}).get("MaxReplicas") or 0)


def load_filters(task: Doc, load: LoadView, *, per_service: bool = True) -> list[Filter]:
    """The filters that also read what the nodes run, which changes as a decision places tasks."""
    spec = task.get("Spec") or {}
    filters: list[Filter] = []
    wanted = reservation(spec)
    if wanted:
        filters.append(ResourceFilter(wanted, load))
    most = max_replicas(spec)
    if most and per_service:
        filters.append(MaxReplicasFilter(str(task["ServiceID"]), most, load))
    return filters
