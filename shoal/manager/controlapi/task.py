"""Tasks as the control API shows them: Docker's keys only, and the names `service ps` prints."""

from __future__ import annotations

from shoal.spec import PRIVATE
from shoal.types import Doc, task_node, task_slot

# The keys of Docker's `swarm.Task`; anything else on a stored task is shoal's own bookkeeping.
TASK_KEYS = (
    "ID", "Version", "CreatedAt", "UpdatedAt", "Name", "Labels", "Spec", "ServiceID", "Slot", "NodeID",
    "Status", "DesiredState", "NetworksAttachments", "GenericResources", "JobIteration", "Volumes",
)


def task_view(task: Doc) -> Doc:
    """The body of `GET /tasks/{id}`; `Spec.ContainerSpec` is never null (the docker CLI dereferences it).

    Shoal keeps its own bookkeeping on a task at the top (dropped by TASK_KEYS) and in its Status; the rest is
    Docker's and is shown as is, without a deep copy (a `service ps` of a hundred thousand tasks)."""
    out = {key: task[key] for key in TASK_KEYS if key in task}
    status = out.get("Status")
    if isinstance(status, dict) and any(key.startswith(PRIVATE) for key in status):
        out["Status"] = {key: value for key, value in status.items() if not key.startswith(PRIVATE)}
    out.setdefault("Labels", {})
    spec = out.get("Spec")
    if not isinstance(spec, dict):
        spec = {}
    if not isinstance(spec.get("ContainerSpec"), dict):
        spec = {**spec, "ContainerSpec": {}}  # a copy: the stored document is shared, never changed
    out["Spec"] = spec
    if not isinstance(out.get("Status"), dict):
        out["Status"] = {}
    return out


def task_name(task: Doc, service_name: str) -> str:
    """`web.2` for a replicated task, `agent.<node id>` for a global one (slot 0), as `service ps` shows."""
    slot = task_slot(task)
    return f"{service_name}.{slot}" if slot else f"{service_name}.{task_node(task)}"
