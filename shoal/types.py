"""The object model: Docker Engine API documents and the enums that order them.

Objects are kept as JSON documents (`Doc`) in exactly the Docker Engine API's shape (PascalCase keys), so
the store, the API and the docker CLI all see one form. This module names the states and gives small typed
accessors, so code elsewhere reads `task_state(t)` rather than digging through nested keys.
"""

from __future__ import annotations

import copy
import enum
from dataclasses import dataclass, field
from typing import Any

Doc = dict[str, Any]


class TaskState(enum.IntEnum):
    """Task states in the order they move; a task never moves backwards (swarmkit's ordering)."""

    NEW = 0
    PENDING = 64
    ALLOCATED = 128
    ASSIGNED = 192
    ACCEPTED = 256
    PREPARING = 320
    READY = 384
    STARTING = 448
    RUNNING = 512
    COMPLETE = 576
    SHUTDOWN = 640
    FAILED = 704
    REJECTED = 768
    REMOVE = 800
    ORPHANED = 832

    @property
    def wire(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> TaskState:
        state = _STATE_BY_WIRE.get(text)  # the common case, read millions of times at scale
        if state is not None:
            return state
        try:
            return cls[text.upper()]
        except (KeyError, AttributeError):
            raise ValueError(f"unknown task state {text!r}") from None

    @property
    def terminal(self) -> bool:
        return self >= TaskState.COMPLETE


_STATE_BY_WIRE = {state.name.lower(): state for state in TaskState}


class NodeState(enum.StrEnum):
    UNKNOWN = "unknown"
    DOWN = "down"
    READY = "ready"
    DISCONNECTED = "disconnected"


class Availability(enum.StrEnum):
    ACTIVE = "active"
    PAUSE = "pause"
    DRAIN = "drain"


class Role(enum.StrEnum):
    WORKER = "worker"
    MANAGER = "manager"


class RestartCondition(enum.StrEnum):
    NONE = "none"
    ON_FAILURE = "on-failure"
    ANY = "any"


# Kinds of objects in the store; each is a key prefix.
NODES = "nodes"
SERVICES = "services"
TASKS = "tasks"
CLUSTERS = "clusters"  # exactly one: the swarm itself (the GET /swarm document)
SECRETS = "secrets"  # data sealed with the cluster's data key (manager/keys.py)
CONFIGS = "configs"
NETWORKS = "networks"  # swarm (overlay) networks
KINDS = (NODES, SERVICES, TASKS, CLUSTERS, SECRETS, CONFIGS, NETWORKS)


# ---- task accessors -------------------------------------------------------------------------------------

def task_state(task: Doc) -> TaskState:
    text = task["Status"]["State"]
    return _STATE_BY_WIRE.get(text) or TaskState.parse(text)  # the lookup first: read millions of times


def desired_state(task: Doc) -> TaskState:
    text = task["DesiredState"]
    return _STATE_BY_WIRE.get(text) or TaskState.parse(text)


def task_node(task: Doc) -> str:
    return str(task.get("NodeID") or "")


def task_slot(task: Doc) -> int:
    slot = task.get("Slot") or 0
    return slot if type(slot) is int else int(slot)


def task_is_live(task: Doc) -> bool:
    """Wanted running and not yet ended: the task occupies its slot."""
    return desired_state(task) <= TaskState.RUNNING and task_state(task) < TaskState.COMPLETE


# ---- service accessors ----------------------------------------------------------------------------------

def is_global(service: Doc) -> bool:
    return "Global" in (service["Spec"].get("Mode") or {})


def replicas(service: Doc) -> int:
    mode = service["Spec"].get("Mode") or {}
    rep = mode.get("Replicated")
    if rep is None:
        return 0
    value = rep.get("Replicas")
    return 1 if value is None else int(value)


def constraints(spec: Doc) -> list[str]:
    """The placement constraints of a TaskSpec."""
    return list(((spec.get("Placement") or {}).get("Constraints")) or [])


def restart_policy(spec: Doc) -> Doc:
    """The TaskSpec's restart policy with swarmkit's defaults filled in."""
    from shoal.spec import DEFAULT_RESTART_POLICY

    policy = dict(spec.get("RestartPolicy") or {})
    for key, default in DEFAULT_RESTART_POLICY.items():
        if policy.get(key) in (None, ""):
            policy[key] = default
    policy.setdefault("Window", 0)
    return policy


# ---- node accessors -------------------------------------------------------------------------------------

def node_state(node: Doc) -> NodeState:
    return NodeState((node.get("Status") or {}).get("State", "unknown"))


def node_availability(node: Doc) -> Availability:
    return Availability((node.get("Spec") or {}).get("Availability", "active"))


def node_is_ready(node: Doc) -> bool:
    return node_state(node) == NodeState.READY


def node_hostname(node: Doc) -> str:
    return str(((node.get("Description") or {}).get("Hostname")) or "")


def version_of(doc: Doc) -> int:
    return int((doc.get("Version") or {}).get("Index") or 0)


def clone(doc: Doc) -> Doc:
    return copy.deepcopy(doc)


# ---- decisions ------------------------------------------------------------------------------------------

@dataclass
class Plan:
    """What a pure decision function wants written. The applier writes it once, checking versions."""

    create: list[Doc] = field(default_factory=list)
    update: list[Doc] = field(default_factory=list)
    delete: list[Doc] = field(default_factory=list)
    # When the decision depends on time (restart delay), the time at which to decide again.
    wake_at: float | None = None
    notes: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.create or self.update or self.delete)

    def extend(self, other: Plan) -> None:
        self.create.extend(other.create)
        self.update.extend(other.update)
        self.delete.extend(other.delete)
        self.notes.extend(other.notes)
        if other.wake_at is not None:
            self.wake_at = other.wake_at if self.wake_at is None else min(self.wake_at, other.wake_at)

    def summary(self) -> str:
        text = f"create={len(self.create)} update={len(self.update)} delete={len(self.delete)}"
        return text + (f" ({'; '.join(self.notes)})" if self.notes else "")
