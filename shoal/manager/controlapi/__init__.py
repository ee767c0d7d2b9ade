"""The pure half of the control API: what clients send, checked and normalised, and what they read back.

The docker CLI, docker-py and shoal's own CLI all send Docker Engine API JSON. The modules here validate those
bodies (`service`, `node`, `swarm`), parse and apply list filters (`filters`), resolve a name / ID / ID
prefix to one object (`resolve`) and shape stored documents into the read views (`task`, `node`, `swarm`).
Nothing here does I/O: the HTTP layer calls these functions around its store reads and writes.

This module holds the small JSON field checks the validators share. Each raises `InvalidArgument` with one
line naming the field by its dotted path and saying what it must be. A JSON `null` counts as "not sent",
as it does for Docker's Go decoder.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from shoal.errors import InvalidArgument
from shoal.spec import PRIVATE
from shoal.types import Doc

# Docker's integer fields are int64 or uint64 on the wire: a larger number is refused as its decoder would.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def field_path(path: str, key: str) -> str:
    """`TaskTemplate` + `ContainerSpec` -> `TaskTemplate.ContainerSpec`."""
    return f"{path}.{key}" if path else key


def shown(value: Any) -> str:
    """A sent value as it appears in an error message: its JSON, cut short."""
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    # JSON true/false decode to bool, which Python counts as int; Docker's decoder does not.
    return isinstance(value, int) and not isinstance(value, bool)


def optional_object(doc: Doc, key: str, path: str) -> Doc | None:
    value = doc.get(key)
    if value is None or isinstance(value, dict):
        return value
    raise InvalidArgument(f"{field_path(path, key)} must be a JSON object (got {shown(value)})")


def optional_int(doc: Doc, key: str, path: str, minimum: int | None = 0, maximum: int | None = None,
                 unit: str = "") -> int | None:
    """An integer field (durations are int64 nanoseconds on the wire, hence `unit`)."""
    value = doc.get(key)
    if value is None:
        return None
    if _is_int(value) and (INT64_MIN if minimum is None else minimum) <= value <= (
            INT64_MAX if maximum is None else maximum):
        return int(value)
    if _is_int(value) and minimum is not None and value < minimum and maximum is None:
        wanted = f"a whole number >= {minimum}"  # it fits in 64 bits: the sign is what is wrong
    elif _is_int(value) and maximum is None:
        wanted = "a whole number that fits in 64 bits"
    elif minimum is not None and maximum is not None:
        wanted = f"a whole number from {minimum} to {maximum}"
    elif minimum is not None:
        wanted = f"a whole number >= {minimum}"
    else:
        wanted = "a whole number"
    raise InvalidArgument(f"{field_path(path, key)} must be {wanted}{unit} (got {shown(value)})")


def optional_duration(doc: Doc, key: str, path: str) -> int | None:
    return optional_int(doc, key, path, unit=" of nanoseconds, e.g. 5000000000 for 5s")


def optional_number(doc: Doc, key: str, path: str, minimum: float, maximum: float) -> float | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and minimum <= value <= maximum:
        return value
    raise InvalidArgument(f"{field_path(path, key)} must be a number from {minimum:g} to {maximum:g} "
                          f"(got {shown(value)})")


def optional_bool(doc: Doc, key: str, path: str) -> bool | None:
    value = doc.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise InvalidArgument(f"{field_path(path, key)} must be true or false (got {shown(value)})")


def optional_str(doc: Doc, key: str, path: str, choices: Collection[str] | None = None) -> str | None:
    """A string field; with `choices`, "" is allowed too and means "the default"."""
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{field_path(path, key)} must be a string (got {shown(value)})")
    if choices is not None and value and value not in choices:
        options = ", ".join(f'"{choice}"' for choice in choices)
        raise InvalidArgument(f"{field_path(path, key)} must be one of {options} (got {shown(value)})")
    return value


def optional_str_list(doc: Doc, key: str, path: str, example: str = '["a", "b"]') -> list[str] | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise InvalidArgument(f"{field_path(path, key)} must be a list of strings such as {example} "
                          f"(got {shown(value)})")


def optional_str_map(doc: Doc, key: str, path: str) -> dict[str, str] | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, dict) and all(isinstance(item, str) for item in value.values()):
        return value
    raise InvalidArgument(f'{field_path(path, key)} must be an object of string values such as {{"key": "value"}} '
                          f"(got {shown(value)})")


def optional_object_list(doc: Doc, key: str, path: str) -> list[Doc] | None:
    value = doc.get(key)
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(item, dict) for item in value):
        return value
    raise InvalidArgument(f"{field_path(path, key)} must be a list of JSON objects (got {shown(value)})")




def without_private_fields(doc: Doc) -> Doc:
    """A copy of `doc` without shoal's own bookkeeping keys (those starting with "Shoal"), at any depth."""
    return {key: _strip(value) for key, value in doc.items() if not key.startswith(PRIVATE)}


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return without_private_fields(value)
    if isinstance(value, list):
        return [_strip(item) for item in value]
    return value
