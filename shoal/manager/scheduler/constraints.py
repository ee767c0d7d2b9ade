"""Placement constraints: `KEY==VALUE` / `KEY!=VALUE` expressions matched against a node document.

Keys (case-insensitive): node.id, node.hostname, node.role, node.ip, node.platform.os, node.platform.arch,
node.labels.NAME and engine.labels.NAME (label names are case-sensitive). Values compare case-insensitively,
as swarmkit does; a missing attribute or label reads as "", so `!=` matches it and `==` does not.
`node.ip` takes an address or a CIDR network.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from shoal.errors import InvalidArgument
from shoal.types import Doc, node_hostname

EQ = "=="
NE = "!="

NODE_LABEL_PREFIX = "node.labels."
ENGINE_LABEL_PREFIX = "engine.labels."
_PLAIN_KEYS = ("node.id", "node.hostname", "node.role", "node.ip", "node.platform.os", "node.platform.arch")

# The same character sets swarmkit accepts; values exclude characters of present or future operators (<, >, ~).
_KEY = re.compile(r"[a-z_][a-z0-9\-_.]+", re.IGNORECASE)
_VALUE = re.compile(r"[a-z0-9:\-_\s.*()?+\[\]\\^$|/]+", re.IGNORECASE)

_HOW = "use KEY==VALUE or KEY!=VALUE, e.g. node.role==manager"


@dataclass(frozen=True)
class Constraint:
    """One parsed expression. `key` is lower-cased except for the label name after a labels prefix."""

    key: str
    operator: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.operator}{self.value}"


def _normalized_key(key: str) -> str | None:
    lowered = key.lower()
    if lowered in _PLAIN_KEYS:
        return lowered
    for prefix in (NODE_LABEL_PREFIX, ENGINE_LABEL_PREFIX):
        if lowered.startswith(prefix) and len(key) > len(prefix):
            return prefix + key[len(prefix):]
    return None


def parse_constraint(expr: str) -> Constraint:
    """Parse one expression, or raise InvalidArgument saying what is wrong in one line."""
    for operator in (EQ, NE):
        if operator in expr:
            raw_key, raw_value = (part.strip() for part in expr.split(operator, 1))
            break
    else:
        raise InvalidArgument(f'invalid constraint "{expr}": {_HOW}')
    if not _KEY.fullmatch(raw_key):
        raise InvalidArgument(f'invalid constraint "{expr}": key "{raw_key}" is invalid; {_HOW}')
    key = _normalized_key(raw_key)
    if key is None:
        known = ", ".join((*_PLAIN_KEYS, NODE_LABEL_PREFIX + "NAME", ENGINE_LABEL_PREFIX + "NAME"))
        raise InvalidArgument(f'invalid constraint "{expr}": unknown key "{raw_key}" (use one of {known})')
    if not _VALUE.fullmatch(raw_value):
        raise InvalidArgument(f'invalid constraint "{expr}": value "{raw_value}" is invalid; {_HOW}')
    if key == "node.ip":
        try:
            ipaddress.ip_network(raw_value, strict=False)
        except ValueError:
            raise InvalidArgument(
                f'invalid constraint "{expr}": node.ip takes an address or a network, e.g. node.ip==10.0.0.0/24'
            ) from None
    return Constraint(key=key, operator=operator, value=raw_value)


def parse_constraints(exprs: list[str]) -> list[Constraint]:
    return [parse_constraint(e) for e in exprs]


def _attribute(key: str, node: Doc) -> str:
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
        equal = _attribute(constraint.key, node).casefold() == constraint.value.casefold()
    return equal if constraint.operator == EQ else not equal


def matches(constraints: list[Constraint], node: Doc) -> bool:
    """Whether `node` satisfies every constraint."""
    return all(satisfied(c, node) for c in constraints)
