"""What one node knows of the swarm's names, and its DNS server.

The agent hands it the name table the leader sends (the networks of this node's tasks only) and the tasks it
is assigned, whose addresses tell which networks a question comes from. The server listens on the node's
address (port 53 unless configured; 0 turns it off); a node that cannot bind it (not root, port taken) runs on
without it, saying why in its log and in `/shoal/debug`.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from shoal.discovery.dns import DNSServer, upstream_resolvers
from shoal.discovery.names import NameEntry, NameTable
from shoal.task_networks import task_addresses
from shoal.types import Doc

log = logging.getLogger(__name__)

DNS_PORT = 53


class NodeDiscovery:
    def __init__(self, host: str, port: int = DNS_PORT, upstreams: list[tuple[str, int]] | None = None) -> None:
        self.host = host
        self.port = port
        self.table = NameTable()
        self._task_addresses: dict[str, list[tuple[str, str]]] = {}  # task ID -> (IP, network ID)
        self._networks_by_ip: dict[str, set[str]] = {}
        if upstreams is None:
            upstreams = [(ip, DNS_PORT) for ip in upstream_resolvers(exclude={host})]
        self.server = DNSServer(lambda: self.table, upstreams, self.networks_of, self.is_local)
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

    def stop(self) -> None:
        self.server.close()

    def update(self, entries: Iterable[Doc]) -> None:
        self.table = NameTable(NameEntry.from_wire(entry) for entry in entries)

    def track(self, tasks: Iterable[Doc], full: bool = False, removed: Iterable[str] = ()) -> None:
        """Follow the tasks assigned to this node: which of their addresses is on which network."""
        if full:
            self._task_addresses = {}
        for task in tasks:
            self._task_addresses[str(task["ID"])] = [(str(ipaddress.ip_interface(address).ip), network_id)
                                                     for network_id, address in task_addresses(task)]
        for task_id in removed:
            self._task_addresses.pop(task_id, None)
        by_ip: dict[str, set[str]] = {}
        for addresses in self._task_addresses.values():
            for ip, network_id in addresses:
                by_ip.setdefault(ip, set()).add(network_id)
        self._networks_by_ip = by_ip

    def networks_of(self, client: str) -> set[str] | None:
        """The networks of the task asking (known by its address on them); None for any other client."""
        return self._networks_by_ip.get(client)

    def is_local(self, client: str) -> bool:
        """A client on this machine (a host process asks from a loopback address or the node's own)."""
        try:
            return client == self.host or ipaddress.ip_address(client).is_loopback
        except ValueError:
            return False

    def debug(self) -> Doc:
        return {"Listen": f"{self.address[0]}:{self.address[1]}" if self.address else "", "Error": self.error,
                "Names": len(self.table.entries), "Answered": self.server.answered,
                "Forwarded": self.server.forwarded, "Failed": self.server.failed,
                "Refused": self.server.refused}
