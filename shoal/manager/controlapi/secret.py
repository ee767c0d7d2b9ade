"""Secrets and configs as the control API sees them: spec checks, the documents kept, the views served.

Both are named blobs with labels (Docker's `SecretSpec` / `ConfigSpec`). A secret's data is stored sealed with
the cluster's data key (`ShoalSealedData`, see manager/keys.py) and never served; a config's data is stored
and served as sent (base64 in `Spec.Data`), as Docker does. Only labels may change after creation.
"""

from __future__ import annotations

import base64
import binascii
import re

from shoal.errors import InvalidArgument
from shoal.manager.controlapi import optional_object, optional_str, optional_str_map, shown
from shoal.manager.controlapi.filters import check_filter_keys, labels_match
from shoal.task_files import CONFIG, DEFAULT_MODE, KEYS, SECRET
from shoal.timefmt import to_rfc3339
from shoal.types import SECRETS, Doc

# Docker's limits (swarmkit `validateSecretSpec`, `validateConfigSpec`).
MAX_DATA_BYTES = 500 * 1024
MAX_NAME_LENGTH = 64
NAME_PATTERN = re.compile(r"[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?")


def what(kind: str) -> str:
    return "secret" if kind == SECRETS else "config"


def validate_spec(body: object, kind: str) -> tuple[Doc, bytes]:
    """A create body checked: the spec to store (without the data) and the data itself."""
    noun = what(kind)
    if not isinstance(body, dict):
        raise InvalidArgument(f'the {noun} spec must be a JSON object such as {{"Name": "db_password", '
                              f'"Data": "<base64>"}} (got {shown(body)})')
    name = optional_str(body, "Name", "") or ""
    check_name(name, noun)
    labels = optional_str_map(body, "Labels", "") or {}
    raw = body.get("Data")
    if not isinstance(raw, str):
        raise InvalidArgument(f"Data must be the {noun}'s content in base64 (got {shown(raw)})")
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"Data must be the {noun}'s content in base64: it is not valid base64") from None
    if not 0 < len(data) <= MAX_DATA_BYTES:
        raise InvalidArgument(f"{noun} data must be larger than 0 and less than {MAX_DATA_BYTES // 1024}KB "
                              f"(got {len(data)} bytes)")
    spec: Doc = {"Name": name, "Labels": labels}
    if optional_object(body, "Driver", ""):
        raise InvalidArgument(f"Driver: shoal keeps {noun}s itself; external drivers are not supported")
    if optional_object(body, "Templating", ""):
        raise InvalidArgument("Templating is not supported by shoal: give the final content")
    return spec, data


def check_name(name: str, noun: str) -> None:
    if not name or len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f'invalid {noun} name {shown(name)}: use 1 to {MAX_NAME_LENGTH} letters, digits, "-", "_" or ".", starting '
            "and ending with a letter or digit")


def new_object(spec: Doc, obj_id: str, now: float, stored_data: Doc) -> Doc:
    """The stored document: `stored_data` holds the sealed secret or the config's base64 data."""
    stamp = to_rfc3339(now)
    return {"ID": obj_id, "CreatedAt": stamp, "UpdatedAt": stamp, "Spec": dict(spec), **stored_data}


def updated_object(current: Doc, body: object, kind: str, now: float, current_data: bytes | None = None) -> Doc:
    """`secret|config update`: only Labels may change (Docker: "only updates to Labels are allowed"). A body
    may repeat the data it has (`docker stack deploy` sends it again): `current_data` is a secret's value."""
    noun = what(kind)
    if not isinstance(body, dict):
        raise InvalidArgument(f"the {noun} spec must be a JSON object (got {shown(body)})")
    labels = optional_str_map(body, "Labels", "") or {}
    spec = current["Spec"]
    if body.get("Name", spec["Name"]) != spec["Name"]:
        raise InvalidArgument(f"only updates to Labels are allowed: the {noun}'s name cannot change")
    sent = body.get("Data")
    if kind == SECRETS and sent and (current_data is None or _decoded(sent) != current_data):
        raise InvalidArgument("only updates to Labels are allowed: a secret's data cannot change; create a new "
                              "secret and move services to it (service update --secret-rm / --secret-add)")
    if kind != SECRETS and sent and sent != spec.get("Data"):
        raise InvalidArgument("only updates to Labels are allowed: a config's data cannot change")
    out = dict(current)
    out["Spec"] = {**spec, "Labels": labels}
    out["UpdatedAt"] = to_rfc3339(now)
    return out


def _decoded(data: object) -> bytes | None:
    try:
        return base64.b64decode(str(data), validate=True)
    except ValueError:
        return None


def users(obj_id: str, kind: str, services: list[Doc]) -> list[str]:
    """The names of the services whose tasks mount the secret or config."""
    key, ref = ("Secrets", "SecretID") if kind == SECRETS else ("Configs", "ConfigID")
    found = []
    for service in services:
        container = ((service.get("Spec") or {}).get("TaskTemplate") or {}).get("ContainerSpec") or {}
        if any((item or {}).get(ref) == obj_id for item in container.get(key) or []):
            found.append(str(service["Spec"]["Name"]))
    return sorted(found)


def in_use_error(name: str, kind: str, service_names: list[str]) -> InvalidArgument:
    noun = what(kind)
    which = "service" if len(service_names) == 1 else "services"
    return InvalidArgument(f"rpc error: code = InvalidArgument desc = {noun} '{name}' is in use by the following "
                           f"{which}: {', '.join(service_names)}")


FILTERS = frozenset({"id", "name", "names", "label"})


def matches(obj: Doc, filters: dict[str, list[str]]) -> bool:
    """The list filters of `GET /secrets|configs`: id and name prefixes, exact names, labels."""
    check_filter_keys(filters, FILTERS)
    name = str(obj["Spec"]["Name"])
    if "id" in filters and not any(str(obj["ID"]).startswith(v) for v in filters["id"]):
        return False
    if "name" in filters and not any(name.startswith(v) for v in filters["name"]):
        return False
    if "names" in filters and name not in filters["names"]:
        return False
    return "label" not in filters or labels_match(obj["Spec"].get("Labels"), filters["label"])


def resolve_references(spec: Doc, secrets: dict[str, Doc], configs: dict[str, Doc]) -> Doc:
    """The service spec with each secret and config reference naming an existing object by both ID and name,
    and with its File target filled in (Docker's CLI sends both; an API caller may give either). A reference
    to an object that does not exist refuses the whole spec: "secret not found: db_password"."""
    container = ((spec.get("TaskTemplate") or {}).get("ContainerSpec")) or {}
    if not container.get("Secrets") and not container.get("Configs"):
        return spec
    container = dict(container)
    for kind, objects in ((SECRET, secrets), (CONFIG, configs)):
        list_key, id_key, name_key = KEYS[kind]
        by_name = {str(obj["Spec"]["Name"]): obj for obj in objects.values()}
        resolved, missing = [], []
        for ref in container.get(list_key) or []:
            obj = objects.get(str(ref.get(id_key) or "")) or by_name.get(str(ref.get(name_key) or ""))
            if obj is None or (ref.get(name_key) and ref.get(name_key) != obj["Spec"]["Name"]):
                missing.append(str(ref.get(name_key) or ref.get(id_key)))
                continue
            name = str(obj["Spec"]["Name"])
            file = {"Name": name, "UID": "0", "GID": "0", "Mode": DEFAULT_MODE, **(ref.get("File") or {})}
            resolved.append({**ref, id_key: obj["ID"], name_key: name, "File": file})
        if missing:
            raise InvalidArgument(f"{kind} not found: {', '.join(missing)}")
        if list_key in container:
            container[list_key] = resolved
    template = {**spec["TaskTemplate"], "ContainerSpec": container}
    return {**spec, "TaskTemplate": template}
