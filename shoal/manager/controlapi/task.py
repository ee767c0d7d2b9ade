"""Tasks as the control API shows them: Docker's keys only, and the names `service ps` prints."""

from __future__ import annotations

from shoal.manager.controlapi import without_private_fields
from shoal.types import Doc, task_node, task_slot

# The keys of Docker's `swarm.Task`; anything else on a stored task is shoal's own bookkeeping.
TASK_KEYS = (
    "ID", "Version", "CreatedAt", "UpdatedAt", "Name", "Labels", "Spec", "ServiceID", "Slot", "NodeID",
    "Status", "DesiredState", "NetworksAttachments", "GenericResources", "JobIteration", "Volumes",
)


def task_view(task: Doc) -> Doc:
    """The body of `GET /tasks/{id}`; `Spec.ContainerSpec` is never null (the docker CLI dereferences it)."""
    public = without_private_fields(task)
    out = {key: public[key] for key in TASK_KEYS if key in public}
    out.setdefault("Labels", {})
    spec = out.get("Spec")
    if not isinstance(spec, dict):
        spec = {}
    if not isinstance(spec.get("ContainerSpec"), dict):
        spec["ContainerSpec"] = {}
    out["Spec"] = spec
    if not isinstance(out.get("Status"), dict):
        out["Status"] = {}
    return out


def task_name(task: Doc, service_name: str) -> str:
    """`web.2` for a replicated task, `agent.<node id>` for a global one (slot 0), as `service ps` shows."""
    slot = task_slot(task)
    return f"{service_name}.{slot}" if slot else f"{service_name}.{task_node(task)}"
