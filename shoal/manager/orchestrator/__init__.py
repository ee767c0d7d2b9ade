"""Orchestration: pure reconcilers that keep services at their declared tasks.

`reconcile_replicated` and `reconcile_global` turn a service, its tasks and the nodes into a Plan (and
`reconcile_replicated_job` / `reconcile_global_job` do for jobs, whose tasks run to completion); `restart`
holds the restart policy and `taskreaper` the history trimming they both use. The leader's loop (`loop.py`)
decides which services to reconcile and applies the plans.
"""

from shoal.manager.orchestrator.common import is_task_dirty, mark_status, new_task, set_desired
from shoal.manager.orchestrator.global_ import reconcile_global
from shoal.manager.orchestrator.jobs import reconcile_global_job, reconcile_replicated_job
from shoal.manager.orchestrator.replicated import reconcile_replicated
from shoal.manager.orchestrator.restart import restart_at, should_restart
from shoal.manager.orchestrator.taskreaper import trim_history

__all__ = [
    "is_task_dirty",
    "mark_status",
    "new_task",
    "reconcile_global",
    "reconcile_global_job",
    "reconcile_replicated",
    "reconcile_replicated_job",
    "restart_at",
    "set_desired",
    "should_restart",
    "trim_history",
]
