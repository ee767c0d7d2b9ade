"""Placement constraints matched against a node document (`shoal.spec` parses them).

Keys (case-insensitive): node.id, node.hostname, node.role, node.ip, node.platform.os, node.platform.arch,
node.labels.NAME and engine.labels.NAME (label names are case-sensitive). Values compare case-insensitively,
as swarmkit does; a missing attribute or label reads as "", so `!=` matches it and `==` does not.
`node.ip` takes an address or a CIDR network.
"""

from __future__ import annotations

import ipaddress

from shoal.spec import ENGINE_LABEL_PREFIX, EQ, NODE_LABEL_PREFIX, Constraint
from shoal.types import Doc, node_hostname


def node_attribute(key: str, node: Doc) -> str:
    spec = node.get("Spec") or {}
    description = node.get("Description") or {}
    if key == "node.id":
        return str(node.get("ID") or "")
    if key == "node.hostname":
        return node_hostname(node)
    if key == "node.role":
        return str(spec.get("Role") or "")
    if key == "node.platform.os":
        return str((description.get("Platform") or {}).get("OS") or "")
    if key == "node.platform.arch":
        return str((description.get("Platform") or {}).get("Architecture") or "")
    if key.startswith(NODE_LABEL_PREFIX):
        return str((spec.get("Labels") or {}).get(key[len(NODE_LABEL_PREFIX):]) or "")
    if key.startswith(ENGINE_LABEL_PREFIX):
        labels = (description.get("Engine") or {}).get("Labels") or {}
        return str(labels.get(key[len(ENGINE_LABEL_PREFIX):]) or "")
    return ""


def _ip_matches(wanted: str, node: Doc) -> bool:
    """Whether the node's address equals `wanted` or lies within it (a CIDR network)."""
    addr = str((node.get("Status") or {}).get("Addr") or "")
    try:
        node_ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return node_ip in ipaddress.ip_network(wanted, strict=False)


def satisfied(constraint: Constraint, node: Doc) -> bool:
    if constraint.key == "node.ip":
        equal = _ip_matches(constraint.value, node)
    else:
        equal = node_attribute(constraint.key, node).casefold() == constraint.value.casefold()
    return equal if constraint.operator == EQ else not equal


def matches(constraints: list[Constraint], node: Doc) -> bool:
    """Whether `node` satisfies every constraint."""
    return all(satisfied(c, node) for c in constraints)
