"""The overlay's decisions (pure): network parameters, MACs, device names, peers and their changes, VIP rules;
the docker and process executors' network settings; a node's DNS server refusing to forward for internal
networks; a socket made in another network namespace and a published port carried into one (root only)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import uuid
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from shoal.agent.executor.docker import first_overlay_interface, host_config_arguments
from shoal.agent.executor.process import ProcessController, ProcessExecutor, RunAs, namespace_argv
from shoal.discovery.names import NameEntry
from shoal.discovery.node import NodeDiscovery
from shoal.overlay.forward import PortForwarder
from shoal.overlay.netns import bound_socket_in
from shoal.overlay.plan import (
    OverlayNetwork,
    Peer,
    mac_of,
    namespace_name,
    peer_changes,
    peers_by_network,
    render_vips,
    veth_device,
    vip_backends,
    vxlan_device,
)
from shoal.types import Doc


def network(network_id: str, subnet: str = "10.0.1.0/24", internal: bool = False, vni: int = 4097) -> Doc:
    gateway = str(next(ipaddress.IPv4Network(subnet).hosts()))
    return {"ID": network_id, "VXLANID": vni,
            "Spec": {"Name": network_id, "Driver": "overlay", "Internal": internal,
                     "IPAM": {"Driver": "default", "Config": [{"Subnet": subnet, "Gateway": gateway}]}}}


def task(task_id: str, *attachments: tuple[Doc, str]) -> Doc:
    return {"ID": task_id, "Spec": {"ContainerSpec": {"Image": "busybox"}},
            "NetworksAttachments": [{"Network": n, "Addresses": [a]} for n, a in attachments]}


def test_a_network_document_gives_the_data_path_its_parameters() -> None:
    back = OverlayNetwork.of(network("back", "10.0.9.0/24", internal=True, vni=4100))
    assert (back.vni, str(back.subnet), back.gateway, back.internal) == (4100, "10.0.9.0/24", "10.0.9.1", True)
    assert back.gateway_interface == "10.0.9.1/24"


def test_a_tasks_mac_is_made_from_its_address_as_docker_makes_it() -> None:
    assert mac_of("10.0.1.5") == "02:42:0a:00:01:05"
    assert mac_of("192.168.255.1") == "02:42:c0:a8:ff:01"


def test_device_names_fit_the_kernels_limit_and_differ_between_nodes_sharing_a_host() -> None:
    node_a, node_b, net = "a" * 25, "b" * 25, "n" * 25
    for name in (vxlan_device(node_a, net), veth_device("t" * 25, net)):
        assert len(name) <= 15  # IFNAMSIZ - 1
    assert vxlan_device(node_a, net) != vxlan_device(node_b, net)
    assert veth_device("t1", net) != veth_device("t2", net) != veth_device("t1", "other")
    assert namespace_name(node_a, net) != namespace_name(node_b, net)


ENTRIES = [
    NameEntry("back", "api", (), "10.0.1.2", ("10.0.1.5", "10.0.1.6"),
              (("10.0.1.5", "127.0.0.2:4790"), ("10.0.1.6", "127.0.0.3:4791"), ("10.0.1.7", "127.0.0.3:4791"))),
    NameEntry("back", "db", (), "", ("10.0.1.9",), (("10.0.1.9", "bad-endpoint"),)),  # dnsrr, no endpoint
    NameEntry("front", "web", (), "10.0.2.2", (), (("10.0.2.5", "127.0.0.3:4791"),)),
]


def test_peers_are_the_tasks_on_other_nodes_including_those_not_running_yet_or_any_more() -> None:
    peers = peers_by_network(ENTRIES, "127.0.0.2:4790", ["back"])
    # 10.0.1.5 is here (the bridge knows it); 10.0.1.7 is no backend but may still run; db's node gave no port.
    assert peers == {"back": {"10.0.1.6": Peer("127.0.0.3", 4791), "10.0.1.7": Peer("127.0.0.3", 4791)}}
    assert peers_by_network(ENTRIES, "127.0.0.2:4790", ["front", "gone"]) == {
        "front": {"10.0.2.5": Peer("127.0.0.3", 4791)}, "gone": {}}


def test_peer_changes_write_only_the_differences() -> None:
    applied = {"10.0.1.6": Peer("127.0.0.3", 4791), "10.0.1.8": Peer("127.0.0.4", 4792)}
    wanted = {"10.0.1.6": Peer("127.0.0.3", 4791), "10.0.1.7": Peer("127.0.0.4", 4792)}
    fdb, neigh = peer_changes("vx", applied, wanted)
    assert fdb == ["fdb del 02:42:0a:00:01:08 dev vx self",
                   "fdb replace 02:42:0a:00:01:07 dev vx dst 127.0.0.4 port 4792 self permanent"]
    assert neigh == ["neigh del 10.0.1.8 dev vx",
                     "neigh replace 10.0.1.7 lladdr 02:42:0a:00:01:07 dev vx nud permanent"]
    assert peer_changes("vx", wanted, wanted) == ([], [])
    moved = {"10.0.1.6": Peer("127.0.0.9", 4799)}  # the same address on another node (reused)
    assert peer_changes("vx", {"10.0.1.6": Peer("127.0.0.3", 4791)}, moved)[0] == [
        "fdb replace 02:42:0a:00:01:06 dev vx dst 127.0.0.9 port 4799 self permanent"]


def test_vip_rules_balance_over_running_tasks_and_refuse_when_there_is_none() -> None:
    vips = vip_backends([*ENTRIES, NameEntry("back", "idle", (), "10.0.1.3", ())], ["back"])
    assert vips == {"10.0.1.2": ("10.0.1.5", "10.0.1.6"), "10.0.1.3": ()}  # db is dnsrr; web is elsewhere
    script = render_vips(vips)
    assert "ip daddr 10.0.1.2 dnat to numgen inc mod 2 map { 0 : 10.0.1.5, 1 : 10.0.1.6 }" in script
    assert "ip daddr { 10.0.1.3 } meta l4proto tcp reject with tcp reset" in script
    # Replaced whole in one transaction: created if missing, deleted, made again.
    assert script.startswith("table ip shoal_vip\ndelete table ip shoal_vip\n")


@pytest.mark.skipif(os.geteuid() != 0 or subprocess.run(["sh", "-c", "command -v nft || test -x /usr/sbin/nft"],
                                                        capture_output=True).returncode != 0,
                    reason="checking a script with nft needs root and nft")
def test_the_vip_script_is_one_nft_accepts() -> None:
    script = render_vips({"10.0.1.2": ("10.0.1.5", "10.0.1.6"), "10.0.1.3": ()})
    nft = "/usr/sbin/nft" if os.path.exists("/usr/sbin/nft") else "nft"
    checked = subprocess.run([nft, "--check", "-f", "-"], input=script, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_a_container_on_swarm_networks_asks_the_nodes_dns_and_internal_ones_have_no_way_out() -> None:
    front, back = network("front", "10.0.2.0/24"), network("back", internal=True)
    both = task("t1", (front, "10.0.2.5/24"), (back, "10.0.1.5/24"))
    arguments = host_config_arguments(both)
    assert arguments["dns"] == ["10.0.2.1"] and "network_mode" not in arguments
    assert first_overlay_interface(both) == 1  # eth0 is the engine's bridge
    closed = task("t2", (back, "10.0.1.6/24"))
    arguments = host_config_arguments(closed)
    assert arguments["dns"] == ["10.0.1.1"] and arguments["network_mode"] == "none"
    assert first_overlay_interface(closed) == 0
    assert "dns" not in host_config_arguments(task("t3"))


async def test_names_outside_the_swarm_are_not_forwarded_for_a_task_on_internal_networks_only() -> None:
    node = NodeDiscovery("127.0.0.1", port=0, upstreams=[("127.0.0.1", 9)])
    node.track([task("t1", (network("back", internal=True), "127.0.0.21/24")),
                task("t2", (network("front", "127.0.0.0/24"), "127.0.0.22/24"))], full=True)
    node.update([NameEntry("back", "db", (), "10.0.1.2", ())])
    server = node._server(lambda _client: False)
    _, port = await server.start("127.0.0.1", 0)
    try:
        async def ask(name: str, source: str) -> dns.message.Message:
            return await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=5,
                                            source=source)
        assert (await ask("db", "127.0.0.21")).answer  # a swarm name: answered
        assert (await ask("example.org", "127.0.0.21")).rcode() == dns.rcode.REFUSED
        # On a network with a way out, the question goes upstream (nothing answers there: SERVFAIL).
        assert (await ask("example.org", "127.0.0.22")).rcode() == dns.rcode.SERVFAIL
    finally:
        server.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="entering a network namespace needs root")
async def test_a_socket_made_in_another_namespace_listens_there() -> None:
    name = f"shoal-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        sock = await bound_socket_in(f"/run/netns/{name}", socket.SOCK_DGRAM, ("127.0.0.1", 0))
        with sock:
            port = sock.getsockname()[1]
            # Sent from inside the namespace, it arrives; the host's own loopback has no such socket.
            subprocess.run(["ip", "netns", "exec", name, "python3", "-c",
                            f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hi', "
                            f"('127.0.0.1', {port}))"], check=True)
            sock.setblocking(True)
            sock.settimeout(5)
            assert sock.recvfrom(16)[0] == b"hi"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_a_process_on_swarm_networks_is_started_through_its_namespaces_keeping_its_pid() -> None:
    argv = namespace_argv("/run/netns/t1", Path("/state/t1.resolv.conf"), ["busybox", "nc", "-l"], None)
    assert argv[0].endswith("nsenter") and argv[1] == "--net=/run/netns/t1"
    assert "unshare" in argv[3] and argv[4:7] == ["--mount", "--propagation", "private"]
    assert argv[8:10] == ["/bin/sh", "-c"] and 'mount --bind "$0" /etc/resolv.conf' in argv[10]
    assert 'exec "$@"' in argv[10]  # every step execs the next: the task keeps the first pid
    assert argv[11:] == ["/state/t1.resolv.conf", "busybox", "nc", "-l"]
    as_user = namespace_argv("/ns", Path("/r"), ["id"], RunAs(uid=1000, gid=100, extra_groups=[27]))
    assert as_user[-6:] == [as_user[-6], "--reuid=1000", "--regid=100", "--groups=27", "--", "id"]
    assert as_user[-6].endswith("setpriv")


def test_a_process_in_its_own_namespace_listens_on_its_target_ports() -> None:
    published = {"Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}]}}
    networked = {**task("t1", (network("back"), "10.0.1.5/24")), **published}
    controller = ProcessController(ProcessExecutor(Path("/nonexistent")), networked)
    controller.ports = {80: 41234}  # the node port the routing mesh connects to, forwarded inside
    controller._resolve_context()
    assert controller._env["PORT"] == "80" and controller._env["PORT_80"] == "80"
    plain = ProcessController(ProcessExecutor(Path("/nonexistent")), {**task("t2"), **published})
    plain.ports = {80: 41235}
    plain._resolve_context()
    assert plain._env["PORT"] == "41235"


@pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
async def test_a_published_port_opens_once_the_task_listens_inside_and_carries_connections_there() -> None:
    name = f"shoal-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    forwarder: PortForwarder | None = None
    server: asyncio.Server | None = None
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            host_port = probe.getsockname()[1]
        inside = await bound_socket_in(f"/run/netns/{name}", socket.SOCK_STREAM, ("0.0.0.0", 0))
        target = inside.getsockname()[1]
        forwarder = PortForwarder(f"/run/netns/{name}", {target: host_port})
        forwarder.start()
        await asyncio.sleep(0.3)
        with pytest.raises(OSError):  # nothing listens inside yet: the host port stays closed
            await asyncio.open_connection("127.0.0.1", host_port)

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"inside:" + await reader.readline())
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(echo, sock=inside)
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", host_port)
                break
            except OSError:
                assert asyncio.get_running_loop().time() < deadline, "the host port never opened"
                await asyncio.sleep(0.05)
        writer.write(b"hello\n")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b"inside:hello\n"
        writer.close()
    finally:
        if forwarder is not None:
            forwarder.close()
        if server is not None:
            server.close()
        subprocess.run(["ip", "netns", "del", name], check=False)
