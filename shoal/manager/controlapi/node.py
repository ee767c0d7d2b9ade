"""Nodes as the control API sees them: spec updates checked, and the read view with ManagerStatus."""

from __future__ import annotations

import copy

from shoal.config import DEFAULT_PORT
from shoal.errors import InvalidArgument
from shoal.manager.controlapi import optional_str, optional_str_map, shown, without_private_fields
from shoal.spec import MESH_ERRORS
from shoal.types import Availability, Doc, Role

# Where the node document keeps the manager's advertised "ip:port"; private to shoal, not on the wire.
MANAGER_ADDR_FIELD = "ManagerAddr"

_ROLES = tuple(role.value for role in Role)
_AVAILABILITIES = tuple(availability.value for availability in Availability)


def validate_node_spec_update(current_node: Doc, new_spec: object) -> Doc:
    """Check the NodeSpec of `POST /nodes/{id}/update` and return the spec to store.

    The docker CLI sends the whole spec (`{"Labels":{},"Role":"manager","Availability":"drain"}`); a
    missing or empty Role/Availability keeps the node's current value. Unknown fields are kept as sent.
    """
    if not isinstance(new_spec, dict):
        raise InvalidArgument(
            'the node spec must be a JSON object such as {"Role": "worker", "Availability": "active", '
            f'"Labels": {{}}}} (got {shown(new_spec)})'
        )
    current = current_node.get("Spec") or {}
    out = copy.deepcopy(new_spec)
    optional_str(out, "Name", "")
    role = optional_str(out, "Role", "", _ROLES)
    availability = optional_str(out, "Availability", "", _AVAILABILITIES)
    out["Role"] = role or current.get("Role") or Role.WORKER.value
    out["Availability"] = availability or current.get("Availability") or Availability.ACTIVE.value
    out["Labels"] = optional_str_map(out, "Labels", "") or {}
    return out


# On a node document: the published ports its routing mesh cannot serve, as its agent last reported them. Kept
# apart from Status.Message, which registration and heartbeat failures rewrite.


def node_view(node: Doc, leader_id: str | None, reachable: bool) -> Doc:
    """The body of `GET /nodes/{id}`: ManagerStatus for managers (absent for workers), private fields gone.

    The manager address comes from the node's private `ManagerAddr`, else its status address with the
    default swarm port, which is what `swarm init` / `join-token` print in the join command.
    """
    out = without_private_fields(node)
    mesh_errors = node.get(MESH_ERRORS) or []
    status = out.get("Status") or {}
    if mesh_errors and not status.get("Message"):
        # The node's own message (e.g. why it is down) comes first; else what its routing mesh cannot serve.
        out["Status"] = {**status, "Message": "routing mesh: " + "; ".join(str(e) for e in mesh_errors)}
    manager_addr = out.pop(MANAGER_ADDR_FIELD, None)
    out.pop("ManagerStatus", None)
    if (out.get("Spec") or {}).get("Role") == Role.MANAGER.value:
        if not manager_addr:
            status_addr = (out.get("Status") or {}).get("Addr") or ""
            manager_addr = f"{status_addr}:{DEFAULT_PORT}" if status_addr else ""
        out["ManagerStatus"] = {
            "Leader": leader_id is not None and out.get("ID") == leader_id,
            "Reachability": "reachable" if reachable else "unreachable",
            "Addr": manager_addr,
        }
    return out
