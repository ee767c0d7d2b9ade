"""A manager's view of the swarm for its metrics (`shoal.metrics.ClusterFigures`), made when Prometheus scrapes.

Pure, and cheap by construction: nodes and services are counted one by one; running tasks come from the
cache's counts per service and node (as `service ls` reads them); pending tasks from the scheduler's counts
by reason, kept from events. Only a global service's tasks are read (one slot per node), never all tasks.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.manager.cache import Cache
from shoal.manager.controlapi.service import counted_status, service_status
from shoal.metrics import ClusterFigures, ServiceFigures
from shoal.spec import (
    AVAILABILITIES,
    GLOBAL,
    GLOBAL_JOB,
    MODE_NAMES,
    MODES,
    REPLICATED_JOB,
    job_limits,
    service_mode,
)
from shoal.types import NodeState, Role, node_state

NODE_STATES = tuple(state.value for state in NodeState)
ROLES = tuple(role.value for role in Role)


def cluster_figures(cache: Cache, *, is_leader: bool, pending: Mapping[str, int],
                    update_progress: Mapping[str, tuple[int, int]], sessions: int) -> ClusterFigures:
    """`pending`: tasks waiting for a node by reason; `update_progress`: per service under update, the slots
    on the new spec and on an older one (the leader's updater keeps them; other managers give none)."""
    nodes_by_id = cache.nodes()
    nodes = {(role, state, availability): 0 for role in ROLES for state in NODE_STATES
             for availability in AVAILABILITIES}
    for node in nodes_by_id.values():
        spec = node.get("Spec") or {}
        key = (str(spec.get("Role") or Role.WORKER.value), node_state(node).value,
               str(spec.get("Availability") or "active"))
        nodes[key] = nodes.get(key, 0) + 1
    modes = {MODE_NAMES[mode]: 0 for mode in MODES}
    services = []
    for service in cache.services().values():
        mode = service_mode(service.get("Spec") or {})
        modes[MODE_NAMES[mode]] += 1
        if mode in (GLOBAL, GLOBAL_JOB):  # a task per node (and its history): few
            status = service_status(service, cache.tasks_of_service(service["ID"]), nodes_by_id)
        else:
            status = counted_status(service, cache.running_by_node(service["ID"]), nodes_by_id)
            if mode == REPLICATED_JOB:
                status["DesiredTasks"] = job_limits(service)[0]  # as the API's status says it
        updated, outdated = update_progress.get(service["ID"], (None, None))
        services.append(ServiceFigures(
            name=str(service["Spec"].get("Name") or service["ID"]), mode=MODE_NAMES[mode],
            desired=int(status["DesiredTasks"]), running=int(status["RunningTasks"]),
            update_state=str((service.get("UpdateStatus") or {}).get("State") or ""),
            updated=updated, outdated=outdated))
    services.sort(key=lambda s: s.name)
    return ClusterFigures(is_leader=is_leader, nodes=nodes, services=services, modes=modes, pending=dict(pending),
                          sessions=sessions)
