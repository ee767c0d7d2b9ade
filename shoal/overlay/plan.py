"""What a node's overlay should look like, from the task documents and the name table (pure).

Each swarm network a local task is on gets, on this node, a network namespace holding a bridge and a VXLAN
device (the network's VXLAN ID); each task gets a veth pair from its own namespace to that bridge, with the
address the managers allocated and a MAC made from it (as Docker makes them: 02:42 and the four octets). A
task on another node is reached through the VXLAN device: a forwarding entry sends its MAC to that node's
data endpoint, and a neighbour entry lets the device answer ARP for it (`proxy`), so no broadcast ever
crosses nodes. A service's virtual IP is a DNAT rule in each task's own namespace (`render_vips`).

The node's data-path port takes a network's frames only from the nodes that run tasks of that network
(`render_vxlan_filter`): a node, even a compromised one, cannot inject frames into a network it has no task on.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from shoal.discovery.names import NameEntry
from shoal.types import Doc

# VXLAN adds 50 bytes to each frame; Docker's overlay uses this MTU on a 1500-byte underlay.
OVERLAY_MTU = 1450
BRIDGE = "br0"
# One nftables table in each task's namespace holds its virtual IPs.
VIP_TABLE = "shoal_vip"


class OverlayError(Exception):
    """The kernel refused a change to the overlay (the message says which command and why)."""


@dataclass(frozen=True)
class OverlayNetwork:
    """A swarm network as the data path needs it, from the network document a task's attachment carries."""

    id: str
    vni: int
    subnet: ipaddress.IPv4Network
    gateway: str
    internal: bool

    @classmethod
    def of(cls, network: Doc) -> OverlayNetwork:
        spec = network.get("Spec") or {}
        config = ((spec.get("IPAM") or {}).get("Config") or [{}])[0]
        return cls(id=str(network["ID"]), vni=int(network.get("VXLANID") or 0),
                   subnet=ipaddress.IPv4Network(str(config["Subnet"])), gateway=str(config["Gateway"]),
                   internal=bool(spec.get("Internal")))

    @property
    def gateway_interface(self) -> str:
        return f"{self.gateway}/{self.subnet.prefixlen}"


@dataclass(frozen=True, order=True)
class Peer:
    """Where to send the frames of a task on another node."""

    address: str  # the node's address
    port: int  # its data-path port


def mac_of(ip: str) -> str:
    """The MAC a task's interface gets: 02:42 then its IPv4 address, so every node knows it from the IP."""
    return "02:42:" + ":".join(f"{octet:02x}" for octet in ipaddress.IPv4Address(ip).packed)


def _short(*parts: str) -> str:
    return hashlib.sha256("/".join(parts).encode()).hexdigest()


def namespace_name(node_id: str, network_id: str) -> str:
    """The network namespace of a network on a node (named: several nodes may share one host)."""
    return f"shoal-{node_id[:12]}-{network_id[:12]}"


def vxlan_device(node_id: str, network_id: str) -> str:
    """The VXLAN device's name, unique on the host (it is made in the host's namespace, then moved)."""
    return "shvx" + _short(node_id, network_id)[:11]


def veth_device(task_id: str, network_id: str) -> str:
    """The bridge end of a task's veth pair, unique on the host."""
    return "shve" + _short(task_id, network_id)[:11]


def parse_endpoint(endpoint: str) -> Peer | None:
    address, _, port = endpoint.rpartition(":")
    if not address or not port.isdigit():
        return None
    return Peer(address, int(port))


def peers_by_network(entries: Iterable[NameEntry], own_endpoint: str,
                     networks: Iterable[str]) -> dict[str, dict[str, Peer]]:
    """For each of `networks`: the tasks on other nodes, {task IP: where its node takes traffic}."""
    wanted = set(networks)
    out: dict[str, dict[str, Peer]] = {network: {} for network in wanted}
    for entry in entries:
        if entry.network_id not in wanted:
            continue
        for ip, endpoint in entry.peers:
            peer = parse_endpoint(endpoint)
            if peer is not None and endpoint != own_endpoint:
                out[entry.network_id][ip] = peer
    return out


def peer_changes(device: str, applied: Mapping[str, Peer], wanted: Mapping[str, Peer]) -> tuple[list[str], list[str]]:
    """The `bridge -batch` and `ip -batch` lines that turn the applied peers into the wanted ones."""
    fdb: list[str] = []
    neigh: list[str] = []
    for ip in sorted(set(applied) - set(wanted), key=ipaddress.IPv4Address):
        fdb.append(f"fdb del {mac_of(ip)} dev {device} self")
        neigh.append(f"neigh del {ip} dev {device}")
    for ip in sorted(wanted, key=ipaddress.IPv4Address):
        peer = wanted[ip]
        if applied.get(ip) == peer:
            continue
        fdb.append(f"fdb replace {mac_of(ip)} dev {device} dst {peer.address} port {peer.port} self permanent")
        neigh.append(f"neigh replace {ip} lladdr {mac_of(ip)} dev {device} nud permanent")
    return fdb, neigh


def vip_backends(entries: Iterable[NameEntry], networks: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """{virtual IP: running task addresses} of every "vip"-mode service on the given networks."""
    wanted = set(networks)
    return {entry.vip: entry.task_addresses for entry in entries if entry.vip and entry.network_id in wanted}


def render_vips(vips: Mapping[str, tuple[str, ...]]) -> str:
    """An nft script that replaces the task's VIP table in one transaction: each new connection to a virtual IP
    goes to the next of its tasks (conntrack keeps it there); a virtual IP with no task refuses at once."""
    lines = [f"table ip {VIP_TABLE}", f"delete table ip {VIP_TABLE}", f"table ip {VIP_TABLE} {{",
             "  chain output {", "    type nat hook output priority -100; policy accept;"]
    empty: list[str] = []
    for vip in sorted(vips, key=ipaddress.IPv4Address):
        backends = vips[vip]
        if not backends:
            empty.append(vip)
            continue
        targets = ", ".join(f"{i} : {backend}" for i, backend in enumerate(backends))
        lines.append(f"    ip daddr {vip} dnat to numgen inc mod {len(backends)} map {{ {targets} }}")
    lines.append("  }")
    lines += ["  chain filter_output {", "    type filter hook output priority 0; policy accept;"]
    if empty:
        lines.append(f"    ip daddr {{ {', '.join(empty)} }} meta l4proto tcp reject with tcp reset")
        lines.append(f"    ip daddr {{ {', '.join(empty)} }} reject")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"


def vxlan_table(port: int) -> str:
    """The nftables table (in the host's namespace) that filters what reaches a data-path port. Named after the
    port, which one node at a time owns: whoever takes the port next replaces a table a killed node left."""
    return f"shoal_vx_{port}"


def render_vxlan_filter(table: str, port: int, sources: Mapping[int, Iterable[str]]) -> str:
    """An nft script that replaces the node's VXLAN filter: a frame for VXLAN ID v (bits 32-55 of the UDP payload)
    is taken only from the addresses in `sources[v]`; one for an ID this node has no network of, never."""
    lines = [f"table ip {table}", f"delete table ip {table}", f"table ip {table} {{", "  chain input {",
             "    type filter hook input priority -10; policy accept;"]
    for vni in sorted(sources):
        allowed = sorted(set(sources[vni]), key=ipaddress.IPv4Address)
        if allowed:
            lines.append(f"    udp dport {port} @th,96,24 {vni} ip saddr != {{ {', '.join(allowed)} }} counter drop")
        else:
            lines.append(f"    udp dport {port} @th,96,24 {vni} counter drop")
    if sources:
        known = ", ".join(str(v) for v in sorted(sources))
        lines.append(f"    udp dport {port} @th,96,24 != {{ {known} }} counter drop")
    else:
        lines.append(f"    udp dport {port} counter drop")
    lines += ["  }", "}"]
    return "\n".join(lines) + "\n"
