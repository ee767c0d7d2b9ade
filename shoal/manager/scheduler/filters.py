"""Scheduling filters: each says whether a node can take a task, and explains a count of refusals.

Filters that refuse for the same reason from a user's point of view share an `explanation_group`, so their
counts add up into one phrase: a node that is down, paused or drained is "not available for new tasks", as
Docker says it.
"""

from __future__ import annotations

from typing import Protocol

from shoal.errors import InvalidArgument
from shoal.manager.scheduler.constraints import matches
from shoal.spec import Constraint, parse_constraints
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


READY = ReadyFilter()
AVAILABLE = AvailabilityFilter()


def filters_for(task_spec: Doc) -> list[Filter]:
    """The filters a task with this TaskSpec must pass, cheapest and most common refusals first."""
    exprs = _constraints_of(task_spec)
    if not exprs:
        return [READY, AVAILABLE]
    try:
        return [READY, AVAILABLE, ConstraintFilter(parse_constraints(exprs))]
    except InvalidArgument as exc:
        return [READY, AVAILABLE, InvalidConstraintFilter(exc.message)]
