"""Swarm networks in the control API: the create body checked, subnets and VXLAN IDs chosen without overlap,
Docker's NetworkResource view, list filters, and service attachments resolved to network IDs."""

from __future__ import annotations

import pytest

from shoal.errors import InvalidArgument
from shoal.manager.controlapi import network as network_api
from shoal.types import Doc

NOW = 1_800_000_000.0


def made(body: Doc, existing: list[Doc], network_id: str) -> Doc:
    return network_api.new_network(network_api.validate_create(body, existing), network_id, NOW, existing)


@pytest.fixture
def swarm() -> list[Doc]:
    """A swarm's networks: ingress (10.0.0.0/24) and one made with defaults."""
    ingress = network_api.new_network(network_api.ingress_spec(), "ingress1", NOW, [])
    back = made({"Name": "back", "Driver": "overlay"}, [ingress], "back1")
    return [ingress, back]


def test_default_subnets_follow_dockers_pool_without_overlap(swarm: list[Doc]) -> None:
    ingress, back = swarm
    assert ingress["Spec"]["IPAM"]["Config"] == [{"Subnet": "10.0.0.0/24", "Gateway": "10.0.0.1"}]
    assert back["Spec"]["IPAM"]["Config"] == [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]
    assert (ingress["VXLANID"], back["VXLANID"]) == (4096, 4097)
    wide = made({"Name": "wide", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.0.4.0/22"}]}}, swarm, "w")
    after = made({"Name": "next", "Driver": "overlay"}, [*swarm, wide], "n")
    assert after["Spec"]["IPAM"]["Config"][0]["Subnet"] == "10.0.2.0/24"
    assert made({"Name": "more", "Driver": "overlay"}, [*swarm, wide, after], "m")[
        "Spec"]["IPAM"]["Config"][0]["Subnet"] == "10.0.3.0/24"


@pytest.mark.parametrize(("body", "message"), [
    ({"Name": "x", "Driver": "bridge"}, 'shoal makes swarm networks only, with driver "overlay"'),
    ({"Name": "x"}, 'driver "overlay"'),
    ({"Name": "bad name", "Driver": "overlay"}, "invalid network name"),
    ({"Name": "x", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "10.0.1.128/25"}]}},
     "overlaps 10.0.1.0/24 of another network"),
    ({"Name": "x", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "192.168.7.0/30"}]}}, "too small"),
    ({"Name": "x", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "192.168.7.1/24"}]}}, "invalid subnet"),
    ({"Name": "x", "Driver": "overlay", "IPAM": {"Config": [{"Subnet": "192.168.7.0/24", "Gateway": "10.1.1.1"}]}},
     "is not a host address of 192.168.7.0/24"),
    ({"Name": "x", "Driver": "overlay", "Ingress": True}, "an ingress network already exists"),
    ({"Name": "x", "Driver": "overlay", "EnableIPv6": True}, "IPv6"),
    ("x", "must be a JSON object"),
])
def test_bad_create_bodies_are_refused_with_one_clear_line(body: object, message: str, swarm: list[Doc]) -> None:
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        network_api.validate_create(body, swarm)


def test_a_given_subnet_and_gateway_are_kept() -> None:
    spec = network_api.validate_create({"Name": "db", "Driver": "overlay", "Internal": True, "Attachable": True,
                                        "Labels": {"team": "a"}, "IPAM": {"Config": [
                                            {"Subnet": "192.168.50.0/24", "Gateway": "192.168.50.254"}]}}, [])
    assert spec["IPAM"]["Config"] == [{"Subnet": "192.168.50.0/24", "Gateway": "192.168.50.254"}]
    assert (spec["Internal"], spec["Attachable"], spec["Labels"]) == (True, True, {"team": "a"})


def test_the_view_is_dockers_network_resource(swarm: list[Doc]) -> None:
    view = network_api.view(swarm[1])
    assert view["Id"] == "back1" and "ID" not in view
    assert (view["Name"], view["Scope"], view["Driver"], view["Ingress"]) == ("back", "swarm", "overlay", False)
    assert view["IPAM"] == {"Driver": "default", "Options": None,
                            "Config": [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]}
    assert view["Options"] == {"com.docker.network.driver.overlay.vxlanid_list": "4097"}
    assert network_api.view(swarm[0])["Ingress"] is True


def test_list_filters(swarm: list[Doc]) -> None:
    def names(filters: dict[str, list[str]]) -> list[str]:
        return [n["Spec"]["Name"] for n in swarm if network_api.matches(n, filters)]

    assert names({"name": ["ack"]}) == ["back"]
    assert names({"driver": ["overlay"], "scope": ["swarm"]}) == ["ingress", "back"]
    assert names({"driver": ["bridge"]}) == [] and names({"scope": ["local"]}) == []
    with pytest.raises(InvalidArgument, match="invalid filter 'colour'"):
        names({"colour": ["red"]})


def service_spec(networks: list[Doc], top_level: bool = False) -> Doc:
    spec: Doc = {"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "busybox"}}}
    if top_level:
        spec["Networks"] = networks
    else:
        spec["TaskTemplate"]["Networks"] = networks
    return spec


def test_attachments_are_resolved_to_network_ids(swarm: list[Doc]) -> None:
    by_id = {n["ID"]: n for n in swarm}
    resolved = network_api.resolve_attachments(service_spec([{"Target": "back", "Aliases": ["web"]}]), by_id)
    assert resolved["TaskTemplate"]["Networks"] == [{"Target": "back1", "Aliases": ["web"]}]
    # Docker's deprecated top-level Networks moves into the task template.
    moved = network_api.resolve_attachments(service_spec([{"Target": "back1"}], top_level=True), by_id)
    assert "Networks" not in moved and moved["TaskTemplate"]["Networks"] == [{"Target": "back1", "Aliases": []}]


@pytest.mark.parametrize(("attachments", "message"), [
    ([{"Target": "nope"}], "^network nope not found$"),
    ([{"Target": "ingress"}], "cannot be explicitly attached to the ingress network"),
    ([{"Target": "back"}, {"Target": "back1"}], "attached twice"),
    ([{"Target": "back", "Aliases": [""]}], "Aliases must be a list of names"),
    (["back"], "must be a JSON object"),
])
def test_bad_attachments_refuse_the_service(attachments: list[Doc], message: str, swarm: list[Doc]) -> None:
    with pytest.raises(InvalidArgument, match=message):
        network_api.resolve_attachments(service_spec(attachments), {n["ID"]: n for n in swarm})


def test_a_network_in_use_names_its_services(swarm: list[Doc]) -> None:
    services = [{"Spec": {"Name": "web", "TaskTemplate": {"Networks": [{"Target": "back1"}]}}},
                {"Spec": {"Name": "db", "TaskTemplate": {}}}]
    assert network_api.users("back1", services) == ["web"]
    assert str(network_api.in_use_error("back", ["web"])).endswith("network back is in use by service web")
