"""Scheduling: a filter pipeline picks the nodes that can take a task, spread ranks them.

`schedule` is pure (pending tasks and nodes in, placed task copies out); the leader's loop (`loop.py`) feeds it
and commits the decisions in batches. Constraints are parsed by `shoal.spec` and matched here.
"""

from shoal.manager.scheduler.constraints import matches
from shoal.manager.scheduler.pipeline import Pipeline, SchedulingResult, schedule

__all__ = ["Pipeline", "SchedulingResult", "matches", "schedule"]
