"""Service discovery: the name table from the store's documents, and a node's DNS server over real UDP."""

from __future__ import annotations

from collections.abc import AsyncIterator

import dns.asyncquery
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from shoal.discovery.dns import DNSServer, upstream_resolvers
from shoal.discovery.names import NameEntry, NameTable, name_entries
from shoal.discovery.node import NodeDiscovery
from shoal.spec import DATA_PATH_PORT
from shoal.types import Doc, TaskState
from tests.unit.manager_fixtures import make_node, make_service, make_task


def service(service_id: str, name: str, attachments: list[Doc], vips: dict[str, str], mode: str = "vip") -> Doc:
    doc = make_service(service_id, name)
    doc["Spec"]["TaskTemplate"]["Networks"] = attachments
    doc["Spec"]["EndpointSpec"] = {"Mode": mode}
    doc["Endpoint"] = {"VirtualIPs": [{"NetworkID": n, "Addr": a} for n, a in vips.items()]}
    return doc


def task(task_id: str, service_id: str, addresses: dict[str, str], state: TaskState = TaskState.RUNNING,
         node: str = "n1") -> Doc:
    doc = make_task(task_id, service_id, node_id=node, state=state)
    doc["NetworksAttachments"] = [{"Network": {"ID": n}, "Addresses": [a]} for n, a in addresses.items()]
    return doc


NODES = {"n1": make_node("n1"), "n2": make_node("n2", state="down")}
NODES["n1"]["Description"][DATA_PATH_PORT] = 4790  # n1 has an overlay; its tasks' frames go there
SERVICES = [
    service("s-api", "app_api", [{"Target": "back", "Aliases": ["api"]}], {"back": "10.0.1.2/24"}),
    service("s-db", "app_db", [{"Target": "back", "Aliases": ["db"]}], {}, mode="dnsrr"),
    service("s-web", "app_web", [{"Target": "front", "Aliases": ["web"]}, {"Target": "back", "Aliases": ["web"]}],
            {"front": "10.0.2.2/24", "back": "10.0.1.3/24"}),
]
TASKS = [
    task("t1", "s-api", {"back": "10.0.1.10/24"}), task("t2", "s-api", {"back": "10.0.1.9/24"}),
    task("t3", "s-api", {"back": "10.0.1.11/24"}, state=TaskState.STARTING),  # not running yet
    task("t4", "s-api", {"back": "10.0.1.12/24"}, node="n2"),  # its node is down
    task("t5", "s-db", {"back": "10.0.1.20/24"}),
    task("t6", "s-web", {"front": "10.0.2.5/24", "back": "10.0.1.30/24"}),
]


def table() -> NameTable:
    return NameTable(name_entries(SERVICES, TASKS, NODES))


def test_entries_carry_vips_and_the_addresses_of_running_tasks_only() -> None:
    entries = name_entries(SERVICES, TASKS, NODES)
    api = next(e for e in entries if e.service_name == "app_api")
    # Peers: every task that may have a process (t3 starting too), on a node with an overlay (not n2).
    assert api == NameEntry("back", "app_api", ("api",), "10.0.1.2", ("10.0.1.9", "10.0.1.10"),
                            (("10.0.1.9", "127.0.0.2:4790"), ("10.0.1.10", "127.0.0.2:4790"),
                             ("10.0.1.11", "127.0.0.2:4790")))
    assert NameEntry.from_wire(api.to_wire()) == api
    assert name_entries(list(reversed(SERVICES)), list(reversed(TASKS)), NODES) == entries


@pytest.mark.parametrize(("name", "networks", "expected"), [
    ("app_api", None, ["10.0.1.2"]),
    ("API.", None, ["10.0.1.2"]),  # case-insensitive, fully qualified
    ("tasks.api", None, ["10.0.1.9", "10.0.1.10"]),
    ("tasks.app_api", {"back"}, ["10.0.1.9", "10.0.1.10"]),
    ("db", None, ["10.0.1.20"]),  # dnsrr: the tasks
    ("web", {"front"}, ["10.0.2.2"]),  # the VIP on the asker's network
    ("web", {"back"}, ["10.0.1.3"]),
    ("api", {"front"}, None),  # not on the asker's networks
    ("example.org", None, None),
])
def test_names_resolve_as_dockers_embedded_dns(name: str, networks: set[str] | None,
                                               expected: list[str] | None) -> None:
    assert table().resolve(name, networks) == expected


def test_a_service_with_no_running_task_resolves_to_nothing_rather_than_upstream() -> None:
    empty = NameTable(name_entries(SERVICES, [], NODES))
    assert empty.resolve("tasks.api") == [] and empty.resolve("db") == []


def test_upstream_resolvers_are_read_from_resolv_conf(tmp_path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nnameserver 10.1.1.1\nsearch x\nnameserver 127.0.0.53\n")
    assert upstream_resolvers(conf, exclude={"127.0.0.53"}) == ["10.1.1.1"]
    assert upstream_resolvers(tmp_path / "missing") == []


# ---- over UDP ---------------------------------------------------------------------------------------------


@pytest.fixture
async def servers() -> AsyncIterator[tuple[DNSServer, int, DNSServer]]:
    """A node's server whose upstream is another server that knows "outside.example"."""
    outside = NameTable([NameEntry("net", "outside.example", (), "192.0.2.7", ())])
    upstream = DNSServer(lambda: outside, [])
    _, upstream_port = await upstream.start("127.0.0.1", 0)
    node_table = table()
    server = DNSServer(lambda: node_table, [("127.0.0.1", upstream_port)],
                       networks_of=lambda client: {"front"} if client == "127.0.0.9" else None)
    _, port = await server.start("127.0.0.1", 0)
    yield server, port, upstream
    server.close()
    upstream.close()


async def ask(port: int, name: str, rdtype: str = "A", source: str = "127.0.0.1") -> dns.message.Message:
    return await dns.asyncquery.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=5,
                                    source=source)


def addresses(response: dns.message.Message) -> list[str]:
    return [item.address for rrset in response.answer for item in rrset]


async def test_the_dns_server_answers_swarm_names_and_forwards_the_rest(
        servers: tuple[DNSServer, int, DNSServer]) -> None:
    server, port, upstream = servers
    assert sorted(addresses(await ask(port, "tasks.api"))) == ["10.0.1.10", "10.0.1.9"]
    assert addresses(await ask(port, "app_api")) == ["10.0.1.2"]
    empty = await ask(port, "api", "AAAA")
    assert empty.rcode() == dns.rcode.NOERROR and empty.answer == []

    forwarded = await ask(port, "outside.example")
    assert addresses(forwarded) == ["192.0.2.7"]
    assert (server.answered, server.forwarded, upstream.answered) == (3, 1, 1)


async def test_a_task_asks_about_its_own_networks_only(servers: tuple[DNSServer, int, DNSServer]) -> None:
    _, port, _ = servers
    assert addresses(await ask(port, "web", source="127.0.0.9")) == ["10.0.2.2"]
    # api is not on "front": the question goes upstream, which does not know it either.
    refused = await ask(port, "api", source="127.0.0.9")
    assert refused.answer == [] and refused.rcode() == dns.rcode.SERVFAIL


async def test_a_task_with_nameservers_of_its_own_has_other_names_forwarded_there() -> None:
    """Docker's embedded DNS forwards to the container's DNSConfig.Nameservers; other clients keep the node's."""
    own = DNSServer(lambda: NameTable([NameEntry("net", "corp.example", (), "192.0.2.9", ())]), [])
    _, own_port = await own.start("127.0.0.1", 0)
    server = DNSServer(lambda: table(), [("127.0.0.1", 9)],  # the node's upstream: nothing listens there
                       networks_of=lambda client: {"front"} if client == "127.0.0.9" else None,
                       upstreams_of=lambda client: [("127.0.0.1", own_port)] if client == "127.0.0.9" else [])
    _, port = await server.start("127.0.0.1", 0)
    try:
        assert addresses(await ask(port, "corp.example", source="127.0.0.9")) == ["192.0.2.9"]
        assert addresses(await ask(port, "web", source="127.0.0.9")) == ["10.0.2.2"]  # swarm names stay ours
        assert (await ask(port, "corp.example")).rcode() == dns.rcode.SERVFAIL
    finally:
        server.close()
        own.close()


async def test_without_any_upstream_answering_the_client_gets_servfail_not_silence() -> None:
    server = DNSServer(lambda: NameTable(), [("127.0.0.1", 9)])  # nothing listens on port 9
    _, port = await server.start("127.0.0.1", 0)
    try:
        response = await ask(port, "example.org")
        assert response.rcode() == dns.rcode.SERVFAIL
    finally:
        server.close()


def test_a_node_knows_which_networks_a_question_comes_from_by_its_tasks_addresses() -> None:
    node = NodeDiscovery("127.0.0.1", port=0)
    node.track([task("t1", "s-web", {"front": "10.0.2.5/24", "back": "10.0.1.30/24"}),
                task("t2", "s-api", {"back": "10.0.1.10/24"})], full=True)
    assert node.networks_of("10.0.2.5") == {"front"} and node.networks_of("10.0.1.10") == {"back"}
    assert node.networks_of("192.0.2.1") is None  # a host process: every network of the node
    node.track([], removed=["t2"])
    assert node.networks_of("10.0.1.10") is None
    with_dns = task("t3", "s-web", {"front": "10.0.2.6/24"})
    with_dns["Spec"] = {"ContainerSpec": {"Image": "busybox", "DNSConfig": {"Nameservers": ["192.0.2.53"]}}}
    node.track([with_dns])
    assert node.nameservers_of("10.0.2.6") == [("192.0.2.53", 53)] and node.nameservers_of("10.0.2.5") == []
    node.track([], removed=["t3"])
    assert node.nameservers_of("10.0.2.6") == []
    node.update(name_entries(SERVICES, TASKS, NODES))
    assert node.table.resolve("api") == ["10.0.1.2"]
    assert node.debug()["Names"] == 4


async def test_a_stranger_is_refused_and_learns_no_name() -> None:
    server = DNSServer(table, [], allowed=lambda client: client == "127.0.0.1")
    _, port = await server.start("127.0.0.1", 0)
    try:
        refused = await ask(port, "api", source="127.0.0.7")
        assert refused.rcode() == dns.rcode.REFUSED and refused.answer == []
        assert addresses(await ask(port, "api")) == ["10.0.1.2"]
        assert server.refused == 1
    finally:
        server.close()


async def test_an_answer_too_big_for_the_client_carries_the_addresses_that_fit() -> None:
    many = [task(f"t{n}", "s-api", {"back": f"10.0.{1 + n // 200}.{n % 200 + 10}/16"}) for n in range(300)]
    big = NameTable(name_entries(SERVICES, many, NODES))
    server = DNSServer(lambda: big, [])
    _, port = await server.start("127.0.0.1", 0)
    try:
        classic = await dns.asyncquery.udp(dns.message.make_query("tasks.api", "A", use_edns=False), "127.0.0.1",
                                           port=port, timeout=5)
        assert 1 <= len(addresses(classic)) < 300 and len(classic.to_wire()) <= 512
        edns = await dns.asyncquery.udp(dns.message.make_query("tasks.api", "A", use_edns=0, payload=8192),
                                        "127.0.0.1", port=port, timeout=5)
        assert len(addresses(edns)) == 300
    finally:
        server.close()
