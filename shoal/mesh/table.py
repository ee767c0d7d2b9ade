"""The endpoint table: for every published port, the tasks that may receive new connections.

Pure functions of the store's documents. A task is a backend of its service's ports when it runs, the
manager wants it running, its node is not down, and its agent reported the node ports it listens on (after
checking that its TCP ports accept connections, so a task still starting gets no traffic). A task being
stopped drops out at once, so it gets no new connections while its open ones finish.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shoal.spec import BACKEND_PORTS
from shoal.types import Doc, NodeState, TaskState, desired_state, node_state, task_state

# On a task's Status: the node ports its agent maps the task's target ports to, once they accept connections.
# [{"Protocol": "tcp", "TargetPort": 80, "Port": 41234}, …]

INGRESS = "ingress"
HOST = "host"


@dataclass(frozen=True, order=True)
class Backend:
    """One task's end of a published port: where to connect."""

    task_id: str
    host: str
    port: int


@dataclass(frozen=True)
class Listener:
    """One published port and where its connections go."""

    protocol: str  # "tcp" | "udp"
    published_port: int
    target_port: int
    mode: str  # INGRESS: every node listens; HOST: only nodes running a task, to their own tasks
    service_id: str
    service_name: str
    backends: tuple[Backend, ...]

    @property
    def key(self) -> tuple[int, str]:
        return (self.published_port, self.protocol)

    def to_wire(self) -> Doc:
        return {"Protocol": self.protocol, "PublishedPort": self.published_port, "TargetPort": self.target_port,
                "PublishMode": self.mode, "ServiceID": self.service_id, "ServiceName": self.service_name,
                "Backends": [[b.task_id, b.host, b.port] for b in self.backends]}

    @classmethod
    def from_wire(cls, doc: Doc) -> Listener:
        return cls(protocol=str(doc["Protocol"]), published_port=int(doc["PublishedPort"]),
                   target_port=int(doc["TargetPort"]), mode=str(doc.get("PublishMode") or INGRESS),
                   service_id=str(doc.get("ServiceID") or ""), service_name=str(doc.get("ServiceName") or ""),
                   backends=tuple(Backend(str(t), str(h), int(p)) for t, h, p in doc.get("Backends") or []))


@dataclass(frozen=True)
class Serving:
    """What one node serves on one published port: where its new connections go."""

    protocol: str
    published_port: int
    backends: tuple[Backend, ...]

    @property
    def key(self) -> tuple[int, str]:
        return (self.published_port, self.protocol)


def published_ports(doc: Doc) -> list[Doc]:
    """A service's or a task's published ports as allocated: `Endpoint.Ports` (a task carries a copy of its
    service's Endpoint, as in swarmkit), else the ones asked for in `Endpoint.Spec.Ports`. Each has Protocol,
    TargetPort, PublishedPort and PublishMode."""
    endpoint = doc.get("Endpoint") or {}
    ports = endpoint.get("Ports") or (endpoint.get("Spec") or {}).get("Ports") or []
    return [port for port in ports if port.get("TargetPort")]


def is_backend(task: Doc, nodes_by_id: Mapping[str, Doc]) -> bool:
    """Whether a task may take new connections: running, wanted running, on a node that is not down."""
    if task_state(task) != TaskState.RUNNING or desired_state(task) != TaskState.RUNNING:
        return False
    node = nodes_by_id.get(str(task.get("NodeID") or ""))
    return node is not None and node_state(node) != NodeState.DOWN


def node_address(node: Doc) -> str:
    return str((node.get("Status") or {}).get("Addr") or "")


def task_backend(task: Doc, port: Doc, nodes_by_id: Mapping[str, Doc]) -> Backend | None:
    """Where the task listens for one of its service's ports, if it reported it."""
    node = nodes_by_id.get(str(task.get("NodeID") or ""))
    if node is None or not node_address(node):
        return None
    for reported in (task.get("Status") or {}).get(BACKEND_PORTS) or []:
        if (reported.get("TargetPort") == port.get("TargetPort")
                and reported.get("Protocol", "tcp") == port.get("Protocol", "tcp") and reported.get("Port")):
            return Backend(str(task["ID"]), node_address(node), int(reported["Port"]))
    return None


def endpoint_table(services: Iterable[Doc], tasks: Iterable[Doc], nodes_by_id: Mapping[str, Doc]) -> list[Listener]:
    """Every published port of every service with its backends, sorted so that equal tables compare equal.

    Host-mode ports carry all their backends too; each agent keeps only the ones on its own node.
    """
    by_service: dict[str, list[Doc]] = {}
    for task in tasks:
        if is_backend(task, nodes_by_id):
            by_service.setdefault(str(task.get("ServiceID") or ""), []).append(task)
    table: list[Listener] = []
    for service in services:
        service_id = str(service.get("ID") or "")
        name = str((service.get("Spec") or {}).get("Name") or "")
        for port in published_ports(service):
            mode = str(port.get("PublishMode") or INGRESS)
            published = int(port.get("PublishedPort") or 0)
            if not published:
                continue
            backends = [task_backend(task, port, nodes_by_id) for task in by_service.get(service_id, [])]
            table.append(Listener(
                protocol=str(port.get("Protocol") or "tcp"), published_port=published,
                target_port=int(port["TargetPort"]), mode=mode, service_id=service_id, service_name=name,
                backends=tuple(sorted(b for b in backends if b is not None))))
    table.sort(key=lambda listener: (listener.mode, listener.published_port, listener.protocol))
    return table
