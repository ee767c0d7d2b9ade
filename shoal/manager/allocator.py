"""Addresses on swarm networks (leader only): each service's virtual IP on every network it is attached to, and
each task's address on its networks, from the network's subnet, never two alike.

In Docker's shapes: a service's `Endpoint.VirtualIPs` = [{"NetworkID": …, "Addr": "10.0.1.2/24"}] (services in
"dnsrr" endpoint mode get none: their name resolves to their tasks), a task's `NetworksAttachments` =
[{"Network": <the network document>, "Addresses": ["10.0.1.5/24"]}].

One writer hands addresses out, so no two can clash: the leader. Virtual IPs are written by the allocator loop
as soon as a service is created or changes its networks; a task's addresses are given when the scheduler
assigns it a node, in the same write. A task holds its addresses until it has stopped (its actual state is past
running) or is deleted; a service holds its VIP while it stays attached. A new leader rebuilds what is held from
the store's documents. Addresses are handed out in turn through the subnet (wrapping around), as Docker's IPAM
does, so an address just given back is not reused at once by another task (a stale DNS answer or connection
would reach the wrong task).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from shoal.manager.applier import Applier
from shoal.manager.cache import Cache
from shoal.manager.store.base import Batch, Event
from shoal.task_networks import attached_networks, task_addresses
from shoal.types import NETWORKS, SERVICES, TASKS, Doc, TaskState, task_state

log = logging.getLogger(__name__)


class AddressesExhausted(Exception):
    """A network's subnet has no free address left."""


def wants_vips(service: Doc) -> bool:
    spec = service.get("Spec") or {}
    return str((spec.get("EndpointSpec") or {}).get("Mode") or "vip") == "vip"


def holds_addresses(task: Doc) -> bool:
    """Whether a task may still be using its addresses: until it has stopped."""
    return task_state(task) <= TaskState.RUNNING


def service_vips(service: Doc) -> list[tuple[str, str]]:
    return [(str(v["NetworkID"]), str(v["Addr"])) for v in (service.get("Endpoint") or {}).get("VirtualIPs") or []]


@dataclass
class AddressPool:
    """The host addresses of one network's subnet: the gateway is never handed out."""

    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    used: set[int] = field(default_factory=set)  # offsets into the subnet
    _cursor: int = 0

    @classmethod
    def of(cls, network: Doc) -> AddressPool:
        config = network["Spec"]["IPAM"]["Config"][0]
        return cls(ipaddress.IPv4Network(config["Subnet"]), ipaddress.IPv4Address(config["Gateway"]))

    def _offset(self, address: str) -> int | None:
        try:
            ip = ipaddress.IPv4Interface(address).ip
        except ValueError:
            return None
        return int(ip) - int(self.subnet.network_address) if ip in self.subnet else None

    def claim(self, address: str) -> None:
        offset = self._offset(address)
        if offset is not None:
            self.used.add(offset)

    def release(self, address: str) -> None:
        offset = self._offset(address)
        if offset is not None:
            self.used.discard(offset)

    def take(self) -> str:
        size = self.subnet.num_addresses
        gateway = int(self.gateway) - int(self.subnet.network_address)
        if len(self.used) >= size - 3:  # full (network, broadcast, gateway are never used): no need to look
            raise AddressesExhausted(f"no free address left in {self.subnet}")
        for step in range(1, size):
            offset = (self._cursor + step) % size
            if offset in (0, size - 1, gateway) or offset in self.used:
                continue
            self.used.add(offset)
            self._cursor = offset
            return f"{self.subnet.network_address + offset}/{self.subnet.prefixlen}"
        raise AddressesExhausted(f"no free address left in {self.subnet}")


class NetworkAddresses:
    """Which addresses of every swarm network are held, and by whom (a service's VIPs, a task's addresses).
    Pure state, fed the store's documents; the allocator loop and the scheduler ask it for addresses."""

    def __init__(self) -> None:
        self.pools: dict[str, AddressPool] = {}
        self.networks: dict[str, Doc] = {}
        self._held: dict[str, list[tuple[str, str]]] = {}  # holder (service or task ID) -> (network, address)

    def rebuild(self, networks: Iterable[Doc], services: Iterable[Doc], tasks: Iterable[Doc]) -> None:
        self.pools, self.networks, self._held = {}, {}, {}
        for network in networks:
            self.add_network(network)
        for service in services:
            self.hold(str(service["ID"]), service_vips(service))
        for task in tasks:
            if holds_addresses(task):
                self.hold(str(task["ID"]), task_addresses(task))

    def add_network(self, network: Doc) -> None:
        if network["ID"] not in self.pools:
            self.pools[network["ID"]] = AddressPool.of(network)
        self.networks[network["ID"]] = network

    def remove_network(self, network_id: str) -> None:
        self.pools.pop(network_id, None)
        self.networks.pop(network_id, None)

    def hold(self, holder: str, addresses: list[tuple[str, str]]) -> None:
        """What `holder` holds now (replacing what it held before)."""
        self.release(holder)
        if addresses:
            self._held[holder] = list(addresses)
            for network_id, address in addresses:
                if (pool := self.pools.get(network_id)) is not None:
                    pool.claim(address)

    def release(self, holder: str) -> None:
        for network_id, address in self._held.pop(holder, []):
            if (pool := self.pools.get(network_id)) is not None:
                pool.release(address)

    def held_by(self, holder: str) -> list[tuple[str, str]]:
        return list(self._held.get(holder, []))

    def _take(self, network_id: str) -> str:
        pool = self.pools.get(network_id)
        if pool is None:
            raise AddressesExhausted(f"network {network_id} not found")
        try:
            return pool.take()
        except AddressesExhausted as exc:
            name = self.networks[network_id]["Spec"]["Name"]
            raise AddressesExhausted(f"no free address on network {name}: {exc}") from None

    def _take_all(self, network_ids: list[str]) -> list[tuple[str, str]]:
        """An address on each network; on a full one, those taken on the others are given back."""
        taken: list[tuple[str, str]] = []
        try:
            for network_id in network_ids:
                taken.append((network_id, self._take(network_id)))
        except AddressesExhausted:
            for network_id, address in taken:
                self.pools[network_id].release(address)
            raise
        return taken

    def vips_for(self, service: Doc) -> list[Doc] | None:
        """The service's VirtualIPs as they should be, or None when they already are. Keeps the VIPs of
        networks it stays on; takes one on each new network; gives back the others."""
        current = service_vips(service)
        wanted = [n for n in attached_networks(service.get("Spec") or {}) if n in self.pools] if wants_vips(
            service) else []
        kept = {network_id: address for network_id, address in current if network_id in wanted}
        if set(kept) == set(wanted) and len(current) == len(kept):
            return None
        taken = self._take_all([n for n in wanted if n not in kept])
        vips = [(n, kept[n]) for n in wanted if n in kept] + taken
        order = {n: i for i, n in enumerate(wanted)}
        vips.sort(key=lambda v: order[v[0]])
        self.hold(str(service["ID"]), vips)
        return [{"NetworkID": network_id, "Addr": address} for network_id, address in vips]

    def attach(self, task: Doc) -> Doc:
        """The task with an address on each of its networks (held from now on), or AddressesExhausted."""
        networks = attached_networks(task.get("Spec") or {})
        if task.get("NetworksAttachments") or not networks:
            return task
        taken = self._take_all([n for n in networks if n in self.pools])
        self.hold(str(task["ID"]), taken)
        attached = dict(task)
        attached["NetworksAttachments"] = [{"Network": self.networks[network_id], "Addresses": [address]}
                                           for network_id, address in taken]
        return attached

    def observe(self, event: Event) -> None:
        """Follow a committed change."""
        if event.kind == NETWORKS:
            if event.doc is None:
                self.remove_network(event.obj_id)
            else:
                self.add_network(event.doc)
        elif event.kind == SERVICES:
            if event.doc is None:
                self.release(event.obj_id)
            else:
                self.hold(event.obj_id, service_vips(event.doc))
        elif event.kind == TASKS:
            if event.doc is None or not holds_addresses(event.doc):
                self.release(event.obj_id)
            else:  # what the store says it holds, even nothing (a write of its addresses that failed)
                self.hold(event.obj_id, task_addresses(event.doc))


class AllocatorLoop:
    """Keeps every service's VirtualIPs in step with the networks it is attached to (leader only)."""

    def __init__(self, cache: Cache, applier: Applier) -> None:
        self.cache = cache
        self.applier = applier
        self.addresses = NetworkAddresses()
        self._dirty: set[str] = set()  # services whose VIPs may need a change
        self._starved: set[str] = set()  # services refused a VIP (a full network): tried again on a release
        self._signal = asyncio.Event()
        cache.subscribe(self._on_event, self._on_resync)

    def _on_resync(self) -> None:
        services = self.cache.services()
        self.addresses.rebuild(self.cache.docs[NETWORKS].values(), services.values(), self.cache.tasks().values())
        self._dirty = set(services)
        self._signal.set()

    def _on_event(self, event: Event, prev: Doc | None) -> None:
        self.addresses.observe(event)
        if self._starved and event.kind in (TASKS, SERVICES) and (prev or {}).get(
                "NetworksAttachments" if event.kind == TASKS else "Endpoint"):
            self._dirty.update(self._starved)  # an address may have come free
            self._starved.clear()
            self._signal.set()
        if event.kind == SERVICES and event.doc is not None:
            self._dirty.add(event.obj_id)
            self._signal.set()
        elif event.kind == NETWORKS:
            self._dirty.update(self.cache.services())  # a network came or went: rare
            self._signal.set()

    async def run_once(self) -> int:
        batch = Batch()
        dirty, self._dirty = self._dirty, set()
        for service_id in dirty:
            service = self.cache.get(SERVICES, service_id)
            if service is None:
                continue
            try:
                vips = self.addresses.vips_for(service)
            except AddressesExhausted as exc:
                if service_id not in self._starved:
                    log.warning("service %s gets no virtual IP: %s", service["Spec"]["Name"], exc)
                self._starved.add(service_id)
                continue
            if vips is not None:
                endpoint = dict(service.get("Endpoint") or {})
                endpoint["VirtualIPs"] = vips
                batch.update(SERVICES, {**service, "Endpoint": endpoint})
        if not len(batch):
            return 0
        result = await self.applier.write(batch)
        await self.cache.caught_up(result.revision, "allocator")
        if not result.written:  # a service changed meanwhile: its event brings it back
            log.info("allocator: virtual IPs not written (%s); trying again on the next change", result)
        return len(batch)

    async def run(self) -> None:
        await self.cache.ready.wait()
        self._on_resync()
        while True:
            await self._signal.wait()
            self._signal.clear()
            await self.run_once()
