"""Scheduling: a filter pipeline picks the nodes that can take a task, spread ranks them.

`schedule` is pure (pending tasks and nodes in, placed task copies out); the leader's loop (`loop.py`) feeds it
and commits the decisions in batches.
"""

from shoal.manager.scheduler.constraints import Constraint, matches, parse_constraint, parse_constraints
from shoal.manager.scheduler.pipeline import Pipeline, SchedulingResult, schedule

__all__ = [
    "Constraint",
    "Pipeline",
    "SchedulingResult",
    "matches",
    "parse_constraint",
    "parse_constraints",
    "schedule",
]
