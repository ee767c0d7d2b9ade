"""List filters of `GET /services`, `/tasks` and `/nodes`: parsing both encodings, and matching.

The Go docker CLI sends the map form `{"name":{"web":true}}`, docker-py the list form `{"name":["web"]}`.
Within one key the values are alternatives (any may match), except `label`, where every label given must
match; different keys must all match. Keys and values follow moby's `daemon/cluster/filters.go` and
swarmkit's `controlapi` list functions: `id` and `name` are prefixes, `label` is `key` or `key=value`.
Each matcher checks its filters first, so an unknown key fails the request as Docker does
("invalid filter 'foo'").
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping

from shoal.errors import InvalidArgument
from shoal.manager.controlapi.service import is_up_to_date
from shoal.manager.controlapi.task import task_name
from shoal.spec import MODE_NAMES, service_mode
from shoal.types import Doc, Role, TaskState, node_hostname

Filters = dict[str, list[str]]

SERVICE_FILTERS = frozenset({"id", "name", "label", "mode", "runtime"})
TASK_FILTERS = frozenset({"id", "name", "label", "service", "node", "desired-state", "_up-to-date", "runtime"})
NODE_FILTERS = frozenset({"id", "name", "label", "role", "membership", "node.label"})

SELF = "self"  # the node the request arrived at, as in `docker service ps -f node=self`


def parse_filters(raw: str | None) -> Filters:
    """The `filters` query parameter as {key: [values]}, from either encoding; empty when absent."""
    if raw is None or not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise InvalidArgument(
            f'invalid filters {raw!r}: send JSON such as {{"name":{{"web":true}}}} or {{"name":["web"]}}'
        ) from None
    if not isinstance(data, dict):
        raise InvalidArgument(f'invalid filters {raw!r}: send a JSON object such as {{"name":["web"]}}')
    parsed: Filters = {}
    for key, value in data.items():
        if isinstance(value, dict):
            values = list(value)  # moby takes every key of the map form, whatever its boolean
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            values = list(value)
        elif isinstance(value, str):
            values = [value]
        else:
            raise InvalidArgument(
                f'invalid filter {key!r}: give its values as {{"{key}":["value"]}} or {{"{key}":{{"value":true}}}}'
            )
        parsed[str(key)] = values
    return parsed


def check_filter_keys(filters: Mapping[str, list[str]], accepted: Collection[str]) -> None:
    for key in filters:
        if key not in accepted:
            raise InvalidArgument(f"invalid filter '{key}'")


def labels_match(labels: Mapping[str, str] | None, wanted: list[str]) -> bool:
    """Every `key` (present) or `key=value` (present with that value) in `wanted` holds for `labels`."""
    labels = labels or {}
    for item in wanted:
        key, has_value, value = item.partition("=")
        if key not in labels:
            return False
        if has_value and value and labels[key] != value:
            return False
    return True


def _any_prefix(text: str, prefixes: list[str]) -> bool:
    return any(text.startswith(prefix) for prefix in prefixes)


def _runtime_matches(task_spec: Doc, runtimes: list[str]) -> bool:
    # Every shoal task is a container task; "" is what moby adds to mean "no runtime recorded".
    runtime = "container" if task_spec.get("ContainerSpec") is not None else "plugin"
    return runtime in runtimes or "" in runtimes


# ---- services -----------------------------------------------------------------------------------------

def match_service(service: Doc, filters: Mapping[str, list[str]]) -> bool:
    check_filter_keys(filters, SERVICE_FILTERS)
    modes = filters.get("mode", [])
    for mode in modes:
        if mode not in MODE_NAMES.values():
            names = ", ".join(f"mode={name}" for name in MODE_NAMES.values())
            raise InvalidArgument(f"invalid filter 'mode={mode}': use one of {names}")
    spec = service.get("Spec") or {}
    if "id" in filters and not _any_prefix(str(service.get("ID", "")), filters["id"]):
        return False
    if "name" in filters and not _any_prefix(str(spec.get("Name", "")), filters["name"]):
        return False
    if "label" in filters and not labels_match(spec.get("Labels"), filters["label"]):
        return False
    if modes and MODE_NAMES[service_mode(spec)] not in modes:
        return False
    return not ("runtime" in filters and not _runtime_matches(spec.get("TaskTemplate") or {}, filters["runtime"]))


# ---- tasks --------------------------------------------------------------------------------------------

def _desired_states(values: list[str]) -> set[str]:
    states: set[str] = set()
    for value in values:
        if not value:
            continue
        try:
            states.add(TaskState.parse(value).wire)
        except ValueError:
            raise InvalidArgument(
                f"invalid filter 'desired-state={value}': use a task state, e.g. running, shutdown, accepted or "
                "complete"
            ) from None
    return states


def _names_of_task(task: Doc, service: Doc | None) -> list[str]:
    service_name = str(((service or {}).get("Spec") or {}).get("Name") or "")
    names = [str(task.get("Name") or "")]
    if service_name:
        # swarmkit's full task name is `<service>.<slot or node>.<task id>`; a prefix of it matches.
        names.append(f"{task_name(task, service_name)}.{task.get('ID', '')}")
    return [name for name in names if name]


def _service_ref_matches(ref: str, task: Doc, service: Doc | None) -> bool:
    service_id = str(task.get("ServiceID") or "")
    if not ref:
        return False
    if service_id.startswith(ref):
        return True
    return service is not None and (service.get("Spec") or {}).get("Name") == ref


def _node_ref_matches(ref: str, task: Doc, node: Doc | None, self_node_id: str | None) -> bool:
    node_id = str(task.get("NodeID") or "")
    if not ref or not node_id:
        return False
    if ref == SELF:
        return node_id == self_node_id
    if node_id.startswith(ref):
        return True
    return node is not None and ref in (node_hostname(node), (node.get("Spec") or {}).get("Name"))


def nodes_with_tasks_matching(refs: list[str], node_ids: list[str], nodes_by_id: Mapping[str, Doc],
                              self_node_id: str | None) -> list[str]:
    """Of the node IDs tasks are on, those a `node` task filter can match (then checked task by task)."""
    return [node_id for node_id in node_ids
            if any(_node_ref_matches(ref, {"NodeID": node_id}, nodes_by_id.get(node_id), self_node_id)
                   for ref in refs)]


def match_task(task: Doc, filters: Mapping[str, list[str]], services_by_id: Mapping[str, Doc],
               nodes_by_id: Mapping[str, Doc], self_node_id: str | None) -> bool:
    """Whether a task passes the `GET /tasks` filters.

    `service` matches a service ID, ID prefix or name; `node` a node ID, ID prefix, hostname, name or
    "self"; `label` the task's *service* labels (what `docker stack ps` relies on); `_up-to-date` keeps
    tasks that run the service's current spec (the CLI's progress loop).
    """
    check_filter_keys(filters, TASK_FILTERS)
    desired = _desired_states(filters.get("desired-state", []))
    service = services_by_id.get(str(task.get("ServiceID") or ""))
    node = nodes_by_id.get(str(task.get("NodeID") or ""))
    if "id" in filters and not _any_prefix(str(task.get("ID", "")), filters["id"]):
        return False
    if "name" in filters and not any(_any_prefix(name, filters["name"]) for name in _names_of_task(task, service)):
        return False
    if "service" in filters and not any(_service_ref_matches(ref, task, service) for ref in filters["service"]):
        return False
    if "node" in filters and not any(_node_ref_matches(ref, task, node, self_node_id) for ref in filters["node"]):
        return False
    if desired and task.get("DesiredState") not in desired:
        return False
    if "label" in filters:
        service_labels = ((service or {}).get("Spec") or {}).get("Labels")
        if not labels_match(service_labels, filters["label"]):
            return False
    if "_up-to-date" in filters and (service is None or not is_up_to_date(service, task)):
        return False
    return not ("runtime" in filters and not _runtime_matches(task.get("Spec") or {}, filters["runtime"]))


# ---- nodes --------------------------------------------------------------------------------------------

def match_node(node: Doc, filters: Mapping[str, list[str]], self_node_id: str | None) -> bool:
    """Whether a node passes the `GET /nodes` filters.

    As in Docker, `label` matches the engine labels (Description.Engine.Labels) and `node.label` the
    node's own labels (Spec.Labels); `id=self` is the node the request arrived at.
    """
    check_filter_keys(filters, NODE_FILTERS)
    roles = [role for role in filters.get("role", []) if role]
    for role in roles:
        if role not in (Role.MANAGER.value, Role.WORKER.value):
            raise InvalidArgument(f"invalid filter 'role={role}': use role=manager or role=worker")
    memberships = [membership for membership in filters.get("membership", []) if membership]
    for membership in memberships:
        if membership not in ("accepted", "pending"):
            raise InvalidArgument(
                f"invalid filter 'membership={membership}': use membership=accepted or membership=pending"
            )
    spec = node.get("Spec") or {}
    node_id = str(node.get("ID", ""))
    if "id" in filters and not any(
        node_id == self_node_id if ref == SELF else node_id.startswith(ref) for ref in filters["id"]
    ):
        return False
    if "name" in filters:
        names = [name for name in (node_hostname(node), str(spec.get("Name") or "")) if name]
        if not any(_any_prefix(name, filters["name"]) for name in names):
            return False
    if roles and spec.get("Role", Role.WORKER.value) not in roles:
        return False
    # shoal admits nodes when they join, so every stored node is "accepted" unless marked otherwise.
    if memberships and spec.get("Membership", "accepted") not in memberships:
        return False
    if "label" in filters:
        engine_labels = ((node.get("Description") or {}).get("Engine") or {}).get("Labels")
        if not labels_match(engine_labels, filters["label"]):
            return False
    return not ("node.label" in filters and not labels_match(spec.get("Labels"), filters["node.label"]))
