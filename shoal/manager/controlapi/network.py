"""Swarm networks as the control API sees them: the create body checked, subnets and VXLAN IDs chosen, the
documents kept, and the views served in Docker's shape (`NetworkResource`: note its key is "Id", not "ID").

A swarm network is an overlay: it spans the nodes, and each service attached to it gets a virtual IP from its
subnet. Subnets come from Docker's default pool (10.0.0.0/8 in /24s) unless given, and never overlap; the
`ingress` network (10.0.0.0/24), made when the swarm is, carries the routing mesh. Local networks (bridge,
host, …) are a node's engine's business, not the swarm's.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from shoal.errors import InvalidArgument
from shoal.manager.controlapi import optional_bool, optional_object, optional_str_map, shown
from shoal.manager.controlapi.filters import check_filter_keys, labels_match
from shoal.timefmt import to_rfc3339
from shoal.types import Doc

DRIVER = "overlay"
INGRESS_NAME = "ingress"
DEFAULT_POOL = ipaddress.IPv4Network("10.0.0.0/8")
DEFAULT_SUBNET_SIZE = 24
SMALLEST_PREFIX = 29  # 8 addresses: network, gateway, broadcast and a few for VIPs and tasks
FIRST_VXLAN_ID = 4096  # Docker's: the ingress network gets 4096, the next network 4097
NAME_PATTERN = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*")
VXLAN_OPTION = "com.docker.network.driver.overlay.vxlanid_list"
# Create-body fields Docker sends that shoal takes as given or ignores (they have no meaning for swarm networks).
KNOWN_FIELDS = frozenset({"Name", "CheckDuplicate", "Driver", "Scope", "EnableIPv6", "IPAM", "Internal", "Attachable",
                          "Ingress", "ConfigOnly", "ConfigFrom", "Options", "Labels"})


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(f'invalid network name {shown(name)}: use letters, digits, "_", "." or "-", '
                              "starting with a letter or digit")
    return name


def _subnet_of(config: Doc, index: int) -> tuple[ipaddress.IPv4Network, ipaddress.IPv4Address | None]:
    where = f"IPAM.Config[{index}]"
    raw = config.get("Subnet")
    try:
        subnet = ipaddress.ip_network(str(raw), strict=True)
    except ValueError:
        raise InvalidArgument(f"{where}.Subnet: invalid subnet {shown(raw)}: give a network address in CIDR "
                              'form such as "10.0.9.0/24"') from None
    if not isinstance(subnet, ipaddress.IPv4Network):
        raise InvalidArgument(f"{where}.Subnet: IPv6 networks are not supported by shoal yet")
    if subnet.prefixlen > SMALLEST_PREFIX:
        raise InvalidArgument(f"{where}.Subnet: subnet {subnet} is too small: give at least a /{SMALLEST_PREFIX}")
    gateway = None
    if config.get("Gateway"):
        try:
            gateway = ipaddress.IPv4Address(str(config["Gateway"]))
        except ValueError:
            raise InvalidArgument(f"{where}.Gateway: invalid address {shown(config['Gateway'])}") from None
        if gateway not in subnet or gateway in (subnet.network_address, subnet.broadcast_address):
            raise InvalidArgument(f"{where}.Gateway: {gateway} is not a host address of {subnet}")
    if config.get("IPRange") or config.get("AuxiliaryAddresses"):
        raise InvalidArgument(f"{where}: IPRange and AuxiliaryAddresses are not supported by shoal; give Subnet "
                              "and Gateway")
    return subnet, gateway


def subnets_of(networks: Iterable[Doc]) -> list[ipaddress.IPv4Network]:
    return [ipaddress.IPv4Network(c["Subnet"]) for n in networks for c in n["Spec"]["IPAM"]["Config"]]


def free_subnet(taken: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    """The first /24 of the default pool that overlaps no network's subnet (Docker's default address pool)."""
    for candidate in DEFAULT_POOL.subnets(new_prefix=DEFAULT_SUBNET_SIZE):
        if not any(candidate.overlaps(other) for other in taken):
            return candidate
    raise InvalidArgument("no free subnet left in the default pool 10.0.0.0/8: remove a network or give --subnet")


def free_vxlan_id(networks: Iterable[Doc]) -> int:
    used = {int(n.get("VXLANID") or 0) for n in networks}
    vxlan_id = FIRST_VXLAN_ID
    while vxlan_id in used:
        vxlan_id += 1
    return vxlan_id


def validate_create(body: object, existing: list[Doc]) -> Doc:
    """The spec of a new swarm network, with its subnet and gateway chosen, or InvalidArgument saying why not.
    `existing` are the swarm's networks (for overlapping subnets and the single ingress network)."""
    if not isinstance(body, dict):
        raise InvalidArgument('the network spec must be a JSON object such as {"Name": "back", "Driver": '
                              f'"overlay"}} (got {shown(body)})')
    name = check_name(body.get("Name"))
    driver = body.get("Driver") or ""
    scope = body.get("Scope") or ""
    if driver != DRIVER or scope not in ("", "swarm"):
        raise InvalidArgument(f'shoal makes swarm networks only, with driver "overlay" (got driver {shown(driver)}'
                              f"{', scope ' + shown(scope) if scope else ''}): use `network create -d overlay "
                              f"{name}`; local networks are the node's Docker Engine's")
    if optional_bool(body, "EnableIPv6", ""):
        raise InvalidArgument("EnableIPv6: IPv6 networks are not supported by shoal yet")
    if optional_bool(body, "ConfigOnly", "") or (body.get("ConfigFrom") or {}).get("Network"):
        raise InvalidArgument("ConfigOnly and ConfigFrom networks are not supported by shoal")
    ingress = bool(optional_bool(body, "Ingress", ""))
    if ingress and any(n["Spec"]["Ingress"] for n in existing):
        raise InvalidArgument("an ingress network already exists: remove it before making another one")
    ipam = optional_object(body, "IPAM", "") or {}
    if (ipam.get("Driver") or "default") != "default":
        raise InvalidArgument(f"IPAM.Driver: only the default IPAM driver is supported (got {shown(ipam['Driver'])})")
    configs = ipam.get("Config") or []
    if not isinstance(configs, list) or len(configs) > 1 or not all(isinstance(c, dict) for c in configs):
        raise InvalidArgument("IPAM.Config: give at most one subnet, as "
                              '[{"Subnet": "10.0.9.0/24", "Gateway": "10.0.9.1"}]')
    taken = subnets_of(existing)
    if configs:
        subnet, gateway = _subnet_of(configs[0], 0)
        clash = next((other for other in taken if subnet.overlaps(other)), None)
        if clash is not None:
            raise InvalidArgument(f"invalid pool request: subnet {subnet} overlaps {clash} of another network")
    else:
        subnet, gateway = free_subnet(taken), None
    gateway = gateway or next(subnet.hosts())
    return {
        "Name": name,
        "Labels": optional_str_map(body, "Labels", "") or {},
        "Driver": DRIVER,
        "Options": optional_str_map(body, "Options", "") or {},
        "IPAM": {"Driver": "default", "Config": [{"Subnet": str(subnet), "Gateway": str(gateway)}]},
        "Internal": bool(optional_bool(body, "Internal", "")),
        "Attachable": bool(optional_bool(body, "Attachable", "")),
        "Ingress": ingress,
    }


def new_network(spec: Doc, network_id: str, now: float, existing: list[Doc]) -> Doc:
    stamp = to_rfc3339(now)
    return {"ID": network_id, "CreatedAt": stamp, "UpdatedAt": stamp, "Spec": spec,
            "VXLANID": free_vxlan_id(existing)}


def ingress_spec() -> Doc:
    """The `ingress` network every swarm has (Docker's defaults)."""
    return validate_create({"Name": INGRESS_NAME, "Driver": DRIVER, "Ingress": True,
                            "IPAM": {"Config": [{"Subnet": "10.0.0.0/24"}]}}, [])


def view(network: Doc) -> Doc:
    """Docker's NetworkResource for a swarm network."""
    spec = network["Spec"]
    return {
        "Name": spec["Name"],
        "Id": network["ID"],
        "Created": network["CreatedAt"],
        "Scope": "swarm",
        "Driver": DRIVER,
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Options": None, "Config": [dict(c) for c in spec["IPAM"]["Config"]]},
        "Internal": spec["Internal"],
        "Attachable": spec["Attachable"],
        "Ingress": spec["Ingress"],
        "ConfigFrom": {"Network": ""},
        "ConfigOnly": False,
        "Containers": {},
        "Options": {**spec["Options"], VXLAN_OPTION: str(network["VXLANID"])},
        "Labels": dict(spec["Labels"]),
    }


FILTERS = frozenset({"id", "name", "label", "driver", "scope", "type", "dangling"})


def matches(network: Doc, filters: dict[str, list[str]]) -> bool:
    """The list filters of `GET /networks` (Docker's: id and name by substring, label, driver, scope, type)."""
    check_filter_keys(filters, FILTERS)
    spec = network["Spec"]
    if "id" in filters and not any(v in network["ID"] for v in filters["id"]):
        return False
    if "name" in filters and not any(v in spec["Name"] for v in filters["name"]):
        return False
    if "driver" in filters and DRIVER not in filters["driver"]:
        return False
    if "scope" in filters and "swarm" not in filters["scope"]:
        return False
    if "type" in filters and "custom" not in filters["type"]:
        return False
    return "label" not in filters or labels_match(spec["Labels"], filters["label"])


def users(network_id: str, services: Iterable[Doc]) -> list[str]:
    """The names of the services attached to the network."""
    found = []
    for service in services:
        spec = service.get("Spec") or {}
        targets = {str((a or {}).get("Target")) for a in (spec.get("TaskTemplate") or {}).get("Networks") or []}
        if network_id in targets:
            found.append(str(spec.get("Name")))
    return sorted(found)


def in_use_error(name: str, services: list[str]) -> InvalidArgument:
    return InvalidArgument(f"rpc error: code = FailedPrecondition desc = network {name} is in use by service "
                           f"{', '.join(services)}")


def resolve_attachments(spec: Doc, networks: dict[str, Doc]) -> Doc:
    """The service spec with each network attachment naming a swarm network by ID (the docker CLI's stack
    deploy sends names). An unknown network refuses the spec, as does the ingress network (the routing mesh
    attaches it) or the same network twice."""
    template = spec.get("TaskTemplate") or {}
    # The deprecated top-level Networks moves into the task template, as Docker does.
    attachments = list(template.get("Networks") or spec.get("Networks") or [])
    if not attachments:
        return spec
    by_name = {str(n["Spec"]["Name"]): n for n in networks.values()}
    resolved, seen = [], set()
    for index, attachment in enumerate(attachments):
        where = f"TaskTemplate.Networks[{index}]"
        if not isinstance(attachment, dict) or not isinstance(attachment.get("Target"), str):
            raise InvalidArgument(f'{where} must be a JSON object such as {{"Target": "back", "Aliases": ["db"]}}')
        target = attachment["Target"]
        network = networks.get(target) or by_name.get(target) or _by_prefix(networks, target)
        if network is None:
            raise InvalidArgument(f"network {target} not found")
        if network["Spec"]["Ingress"]:
            raise InvalidArgument("service cannot be explicitly attached to the ingress network "
                                  f"{network['Spec']['Name']!r}: publish a port instead")
        if network["ID"] in seen:
            raise InvalidArgument(f"{where}: network {network['Spec']['Name']} is attached twice")
        seen.add(network["ID"])
        aliases = attachment.get("Aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
            raise InvalidArgument(f'{where}.Aliases must be a list of names such as ["db"]')
        resolved.append({**attachment, "Target": network["ID"], "Aliases": list(aliases)})
    out = {k: v for k, v in spec.items() if k != "Networks"}
    out["TaskTemplate"] = {**template, "Networks": resolved}
    return out


def _by_prefix(networks: dict[str, Doc], prefix: str) -> Doc | None:
    found = [n for network_id, n in networks.items() if network_id.startswith(prefix)]
    return found[0] if len(found) == 1 else None
