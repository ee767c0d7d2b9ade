"""The name table: what each swarm network's names resolve to, from the store's documents (pure).

On a network, a service answers to its name (`app_api`) and to each alias of its attachment (`api`, as a stack
gives it): with its virtual IP in "vip" endpoint mode, with the addresses of its running tasks in "dnsrr" mode;
`tasks.<name>` (or `tasks.<alias>`) answers with the addresses of its running tasks in either mode. A task
counts while it runs, is wanted running and its node is not down — the routing mesh's rule for a backend, so
a name stops answering with a task as soon as the mesh stops sending it traffic.

The leader's dispatcher sends each node the entries of the networks its tasks are attached to; the node's
DNS server (`shoal.discovery.dns`) answers from them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shoal.mesh.table import is_backend, node_address
from shoal.spec import DATA_PATH_PORT
from shoal.task_networks import task_addresses
from shoal.types import Doc, TaskState, task_state

TASKS_PREFIX = "tasks."


@dataclass(frozen=True, order=True)
class NameEntry:
    """One service on one network."""

    network_id: str
    service_name: str
    aliases: tuple[str, ...]
    vip: str  # "" in dnsrr mode
    task_addresses: tuple[str, ...]
    # (address, where its node takes overlay traffic: "addr:port") of every task that may still be running,
    # wanted or not: the overlay (shoal.overlay) sends a task's frames there until it has ended, so that a
    # task being stopped still finishes its open connections. Tasks on nodes without an overlay are left out.
    peers: tuple[tuple[str, str], ...] = ()

    def to_wire(self) -> Doc:
        return {"Network": self.network_id, "Name": self.service_name, "Aliases": list(self.aliases),
                "VIP": self.vip, "Tasks": list(self.task_addresses), "Peers": [list(p) for p in self.peers]}

    @classmethod
    def from_wire(cls, doc: Doc) -> NameEntry:
        return cls(network_id=str(doc["Network"]), service_name=str(doc["Name"]),
                   aliases=tuple(str(a) for a in doc.get("Aliases") or []), vip=str(doc.get("VIP") or ""),
                   task_addresses=tuple(str(a) for a in doc.get("Tasks") or []),
                   peers=tuple((str(ip), str(endpoint)) for ip, endpoint in doc.get("Peers") or []))


def _ip(address: str) -> str:
    return str(ipaddress.ip_interface(address).ip)


def data_endpoint(node: Doc | None) -> str:
    """Where a node takes overlay traffic: "addr:port" from its address and the data-path port it reported,
    "" when it reported none (its executor has no overlay)."""
    if node is None:
        return ""
    port = int((node.get("Description") or {}).get(DATA_PATH_PORT) or 0)
    address = node_address(node)
    return f"{address}:{port}" if port and address else ""


def is_peer(task: Doc) -> bool:
    """Whether a task may have a process on its node: assigned there and not known to have ended."""
    return bool(task.get("NodeID")) and TaskState.ASSIGNED <= task_state(task) < TaskState.COMPLETE


def name_entries(services: Iterable[Doc], tasks: Iterable[Doc], nodes_by_id: Mapping[str, Doc]) -> list[NameEntry]:
    """Every attachment of every service to a swarm network, sorted so that equal tables compare equal."""
    addresses: dict[tuple[str, str], list[str]] = {}  # (service ID, network ID) -> running task addresses
    peers: dict[tuple[str, str], list[tuple[str, str]]] = {}  # -> (address, node's data endpoint)
    for task in tasks:
        backend, peer = is_backend(task, nodes_by_id), is_peer(task)
        if not (backend or peer):
            continue
        endpoint = data_endpoint(nodes_by_id.get(str(task.get("NodeID") or ""))) if peer else ""
        for network_id, address in task_addresses(task):
            key = (str(task.get("ServiceID") or ""), network_id)
            if backend:
                addresses.setdefault(key, []).append(_ip(address))
            if endpoint:
                peers.setdefault(key, []).append((_ip(address), endpoint))
    entries: list[NameEntry] = []
    for service in services:
        spec = service.get("Spec") or {}
        vips = {str(v["NetworkID"]): _ip(str(v["Addr"])) for v in (service.get("Endpoint") or {}).get("VirtualIPs")
                or []}
        dnsrr = str((spec.get("EndpointSpec") or {}).get("Mode") or "vip") == "dnsrr"
        for attachment in (spec.get("TaskTemplate") or {}).get("Networks") or []:
            network_id = str(attachment.get("Target") or "")
            key = (str(service["ID"]), network_id)
            entries.append(NameEntry(
                network_id=network_id, service_name=str(spec.get("Name") or ""),
                aliases=tuple(str(a) for a in attachment.get("Aliases") or []),
                vip="" if dnsrr else vips.get(network_id, ""),
                task_addresses=tuple(sorted(addresses.get(key, []), key=ipaddress.ip_address)),
                peers=tuple(sorted(peers.get(key, []), key=lambda peer: ipaddress.ip_address(peer[0])))))
    entries.sort()
    return entries


class NameTable:
    """The entries a node holds, indexed for lookups by name (case-insensitive, as DNS is)."""

    def __init__(self, entries: Iterable[NameEntry] = ()) -> None:
        self.entries = list(entries)
        self._by_name: dict[str, list[NameEntry]] = {}
        for entry in self.entries:
            for name in {entry.service_name, *entry.aliases}:
                self._by_name.setdefault(name.lower(), []).append(entry)

    @property
    def networks(self) -> set[str]:
        return {entry.network_id for entry in self.entries}

    def knows(self, qname: str) -> bool:
        name = qname.rstrip(".").lower()
        return name.removeprefix(TASKS_PREFIX) in self._by_name or name in self._by_name

    def resolve(self, qname: str, networks: set[str] | None = None) -> list[str] | None:
        """The IPv4 addresses `qname` stands for on the given networks (all the node's when None); None when
        it names nothing of the swarm there (the question then goes to the node's upstream resolvers)."""
        name = qname.rstrip(".").lower()
        wanted_tasks = name.startswith(TASKS_PREFIX) and name not in self._by_name
        found = self._by_name.get(name.removeprefix(TASKS_PREFIX) if wanted_tasks else name)
        if not found:
            return None
        answers: list[str] = []
        matched = False
        for entry in found:
            if networks is not None and entry.network_id not in networks:
                continue
            matched = True
            chosen = list(entry.task_addresses) if wanted_tasks or not entry.vip else [entry.vip]
            answers += [a for a in chosen if a not in answers]
        return answers if matched else None
