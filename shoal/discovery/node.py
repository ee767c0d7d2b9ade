"""What one node knows of the swarm's names, and its DNS server.

The agent hands it the name table the leader sends (the networks of this node's tasks only) and the tasks it
is assigned, whose addresses tell which networks a question comes from. The server listens on the node's
address (port 53 unless configured; 0 turns it off); a node that cannot bind it (not root, port taken) runs on
without it, saying why in its log and in `/shoal/debug`. Where the node has an overlay (`shoal.overlay`), it
also listens on port 53 of each network's gateway inside the network's namespace: the containers' resolver.

A task whose networks are all `--internal` learns swarm names only: nothing is forwarded for it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable

from shoal.discovery.dns import DNSServer, upstream_resolvers
from shoal.discovery.names import NameEntry, NameTable
from shoal.overlay.netns import bound_socket_in
from shoal.task_networks import task_addresses, task_networks
from shoal.types import Doc

log = logging.getLogger(__name__)

DNS_PORT = 53


class NodeDiscovery:
    def __init__(self, host: str, port: int = DNS_PORT, upstreams: list[tuple[str, int]] | None = None) -> None:
        self.host = host
        self.port = port
        self.table = NameTable()
        self._task_addresses: dict[str, list[tuple[str, str]]] = {}  # task ID -> (IP, network ID)
        self._closed_tasks: set[str] = set()  # tasks on internal networks only: nothing is forwarded for them
        self._networks_by_ip: dict[str, set[str]] = {}
        self._closed_ips: set[str] = set()  # addresses of tasks on internal networks only
        self._task_nameservers: dict[str, list[tuple[str, int]]] = {}  # task ID -> its DNSConfig.Nameservers
        self._nameservers_by_ip: dict[str, list[tuple[str, int]]] = {}
        if upstreams is None:
            upstreams = [(ip, DNS_PORT) for ip in upstream_resolvers(exclude={host})]
        self.upstreams = upstreams
        self.server = self._server(self.is_local)
        self._network_servers: list[DNSServer] = []
        self.address: tuple[str, int] | None = None
        self.error = ""

    async def start(self) -> None:
        if not self.port:
            return
        try:
            self.address = await self.server.start(self.host, self.port)
            log.info("service discovery: DNS server on %s:%d", *self.address)
        except OSError as exc:
            self.error = f"the DNS server cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            log.warning("service discovery: %s; tasks on this node cannot resolve service names", self.error)

    def _server(self, allowed: Callable[[str], bool]) -> DNSServer:
        return DNSServer(lambda: self.table, self.upstreams, self.networks_of, allowed,
                         lambda client: client not in self._closed_ips, self.nameservers_of)

    async def serve_in(self, namespace: str, host: str) -> Callable[[], None] | None:
        """Also answer on `host`:53 inside a network namespace (a path); returns what stops it."""
        if not self.port:
            return None
        sock = await bound_socket_in(namespace, socket.SOCK_DGRAM, (host, DNS_PORT))
        server = self._server(lambda _client: False)  # only the node's tasks reach it
        await server.start_on(sock)
        self._network_servers.append(server)

        def close() -> None:
            server.close()
            with contextlib.suppress(ValueError):
                self._network_servers.remove(server)
        return close

    def stop(self) -> None:
        self.server.close()
        for server in list(self._network_servers):
            server.close()

    def update(self, entries: Iterable[NameEntry]) -> None:
        self.table = NameTable(entries)

    def track(self, tasks: Iterable[Doc], full: bool = False, removed: Iterable[str] = ()) -> None:
        """Follow the tasks assigned to this node: which of their addresses is on which network, and which
        tasks are on internal networks only."""
        if full:
            self._task_addresses = {}
            self._closed_tasks = set()
            self._task_nameservers = {}
        for task in tasks:
            task_id = str(task["ID"])
            dns_config = (((task.get("Spec") or {}).get("ContainerSpec") or {}).get("DNSConfig")) or {}
            self._task_nameservers[task_id] = [(str(ip), DNS_PORT) for ip in dns_config.get("Nameservers") or []]
            self._task_addresses[task_id] = [(str(ipaddress.ip_interface(address).ip), network_id)
                                             for network_id, address in task_addresses(task)]
            networks = [network for network, _ in task_networks(task)]
            if networks and all((network.get("Spec") or {}).get("Internal") for network in networks):
                self._closed_tasks.add(task_id)
            else:
                self._closed_tasks.discard(task_id)
        for task_id in removed:
            self._task_addresses.pop(task_id, None)
            self._closed_tasks.discard(task_id)
            self._task_nameservers.pop(task_id, None)
        by_ip: dict[str, set[str]] = {}
        nameservers: dict[str, list[tuple[str, int]]] = {}
        for task_id, addresses in self._task_addresses.items():
            for ip, network_id in addresses:
                by_ip.setdefault(ip, set()).add(network_id)
                if self._task_nameservers.get(task_id):
                    nameservers[ip] = self._task_nameservers[task_id]
        self._networks_by_ip = by_ip
        self._nameservers_by_ip = nameservers
        self._closed_ips = {ip for task_id in self._closed_tasks for ip, _ in self._task_addresses.get(task_id, [])}

    def networks_of(self, client: str) -> set[str] | None:
        """The networks of the task asking (known by its address on them); None for any other client."""
        return self._networks_by_ip.get(client)

    def nameservers_of(self, client: str) -> list[tuple[str, int]]:
        """The nameservers the task asking gave in its DNSConfig ([] for the node's own)."""
        return self._nameservers_by_ip.get(client, [])

    def is_local(self, client: str) -> bool:
        """A client on this machine (a host process asks from a loopback address or the node's own)."""
        try:
            return client == self.host or ipaddress.ip_address(client).is_loopback
        except ValueError:
            return False

    def debug(self) -> Doc:
        servers = [self.server, *self._network_servers]
        return {"Listen": f"{self.address[0]}:{self.address[1]}" if self.address else "", "Error": self.error,
                "Names": len(self.table.entries), "NetworkServers": len(self._network_servers),
                "Answered": sum(s.answered for s in servers), "Forwarded": sum(s.forwarded for s in servers),
                "Failed": sum(s.failed for s in servers), "Refused": sum(s.refused for s in servers)}
