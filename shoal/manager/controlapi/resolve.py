"""Finding one object from what a user typed: a full ID, an exact name, or a unique ID prefix.

The order and the error texts are moby's (`daemon/cluster/helpers.go`), so the docker CLI reacts to them
as it does with Docker: 404 `service web not found` makes `service logs` try tasks, for example.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from shoal.errors import InvalidArgument, NotFound
from shoal.types import Doc, node_hostname

NameOf = Callable[[Doc], str | Iterable[str]]


def resolve(objects: Sequence[Doc], ref: str, kind: str, name_of: NameOf) -> Doc:
    """The one object `ref` names; `kind` ("service", "node", "task") goes into the error messages.

    `name_of` gives an object's name, or several names (a node answers to Spec.Name and its hostname).
    """
    if ref:
        for obj in objects:
            if obj.get("ID") == ref:
                return obj
        named = [obj for obj in objects if ref in _names(name_of(obj))]
        if len(named) == 1:
            return named[0]
        candidates = named or [obj for obj in objects if str(obj.get("ID", "")).startswith(ref)]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            raise InvalidArgument(f"{kind} {ref} is ambiguous ({len(candidates)} matches found)")
    raise NotFound(f"{kind} {ref} not found")


def _names(value: str | Iterable[str]) -> set[str]:
    names = {value} if isinstance(value, str) else set(value)
    names.discard("")
    return names


def service_name(service: Doc) -> str:
    return str((service.get("Spec") or {}).get("Name") or "")


def node_names(node: Doc) -> list[str]:
    """A node answers to its Spec.Name and to its hostname (swarmkit's node name index holds both)."""
    return [str((node.get("Spec") or {}).get("Name") or ""), node_hostname(node)]


def task_name_of(task: Doc) -> str:
    return str(task.get("Name") or "")
