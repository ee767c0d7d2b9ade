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

from shoal.agent.executor.docker import (
    GATEWAY_BRIDGE,
    first_overlay_interface,
    host_config_arguments,
    hosts_with_address,
)
from shoal.agent.executor.process import ProcessController, ProcessExecutor, RunAs, namespace_argv
from shoal.discovery.names import NameEntry
from shoal.discovery.node import NodeDiscovery
from shoal.overlay import linux as overlay_linux
from shoal.overlay.forward import PortForwarder
from shoal.overlay.linux import OverlayDataPath, task_namespace_name
from shoal.overlay.netns import bound_socket_in
from shoal.overlay.plan import (
    OverlayError,
    OverlayNetwork,
    Peer,
    mac_of,
    namespace_name,
    peer_changes,
    peers_by_network,
    render_vips,
    render_vxlan_filter,
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


def test_a_containers_own_name_is_on_its_overlay_address() -> None:
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n172.18.0.5\tabc123def456\n"
    assert hosts_with_address(hosts, "abc123def456", "10.0.1.5") == (
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n10.0.1.5\tabc123def456\n")


def test_the_data_path_port_takes_a_networks_frames_only_from_the_nodes_running_its_tasks() -> None:
    script = render_vxlan_filter("shoal_vx_n1", 4790, {4097: ["127.0.0.4", "127.0.0.3", "127.0.0.3"], 4098: []})
    assert ("udp dport 4790 @th,96,24 4097 ip saddr != { 127.0.0.3, 127.0.0.4 } counter drop" in script)
    assert "udp dport 4790 @th,96,24 4098 counter drop" in script  # no peer yet: nobody
    assert "udp dport 4790 @th,96,24 != { 4097, 4098 } counter drop" in script  # no such network here
    assert "udp dport 4790 counter drop" in render_vxlan_filter("shoal_vx_n1", 4790, {})
    if os.geteuid() == 0 and os.path.exists("/usr/sbin/nft"):
        checked = subprocess.run(["/usr/sbin/nft", "--check", "-f", "-"], input=script, capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


def test_a_container_on_swarm_networks_asks_the_nodes_dns_and_internal_ones_have_no_way_out() -> None:
    front, back = network("front", "10.0.2.0/24"), network("back", internal=True)
    both = task("t1", (front, "10.0.2.5/24"), (back, "10.0.1.5/24"))
    arguments = host_config_arguments(both)
    # The way out is a bridge on which containers cannot talk to each other, not the engine's default one.
    assert arguments["dns"] == ["10.0.2.1"] and arguments["network_mode"] == GATEWAY_BRIDGE
    assert first_overlay_interface(both) == 1  # eth0 is the gateway bridge's
    closed = task("t2", (back, "10.0.1.6/24"))
    arguments = host_config_arguments(closed)
    assert arguments["dns"] == ["10.0.1.1"] and arguments["network_mode"] == "none"
    assert first_overlay_interface(closed) == 0
    publishing = {**closed, "Endpoint": {"Ports": [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080}]}}
    assert host_config_arguments(publishing)["network_mode"] == GATEWAY_BRIDGE  # its port needs the bridge
    assert "dns" not in host_config_arguments(task("t3")) and "network_mode" not in host_config_arguments(task("t3"))


async def test_names_outside_the_swarm_are_not_forwarded_for_a_task_on_internal_networks_only() -> None:
    node = NodeDiscovery("127.0.0.1", port=0, upstreams=[("127.0.0.1", 9)])
    back, front = network("back", internal=True), network("front", "127.0.0.0/24")
    # t3 asks from its internal network's address, but its other network has a way out: it may learn names.
    node.track([task("t1", (back, "127.0.0.21/24")), task("t2", (front, "127.0.0.22/24")),
                task("t3", (back, "127.0.0.23/24"), (front, "127.0.0.24/24"))], full=True)
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
        assert (await ask("example.org", "127.0.0.23")).rcode() == dns.rcode.SERVFAIL
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
    assert argv[10].startswith("/")  # mount by its path, whatever the task's PATH
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


# ---- the overlay's kernel side, against a fake kernel ------------------------------------------------------

class FakeKernel:
    """Namespaces as files in a folder (as /run/netns), devices per namespace, and every command run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.devices: dict[str, set[str]] = {"": set()}
        self.commands: list[tuple[str, ...]] = []
        self.batches: list[tuple[str, str]] = []  # (program and namespace, stdin)
        self.failing: set[str] = set()  # a command whose text holds one of these fails

    async def run(self, *argv: str, stdin: str | None = None) -> str:
        self.commands.append(argv)
        text = " ".join(argv)
        if any(failing in text for failing in self.failing):
            raise OverlayError(f"`{text}` failed: injected")
        if argv[:3] in (("ip", "netns", "add"), ("ip", "netns", "attach")):
            (self.folder / argv[3]).touch()
            self.devices[argv[3]] = {"lo"}
        elif argv[:3] == ("ip", "netns", "del"):
            (self.folder / argv[3]).unlink()
            self.devices.pop(argv[3], None)
        elif argv[:2] == ("ip", "-n") and argv[3:5] == ("link", "show"):
            if argv[6] not in self.devices.get(argv[2], set()):
                raise OverlayError("no such device")
        elif argv[:3] == ("ip", "link", "add"):
            where = argv[argv.index("netns") + 1] if argv[4] == "netns" else ""
            self.devices[where].add(argv[3])
        elif argv[:3] == ("ip", "link", "set") and argv[4] == "netns":
            self.devices[""].discard(argv[3])
            self.devices[argv[5]].add(argv[3])
        if stdin is not None:
            self.batches.append((" ".join(argv[:3]), stdin))
            if "link add br0" in stdin:
                self.devices[argv[2]].add("br0")
        return ""

    def fdb_lines(self) -> list[str]:
        return [line for program, text in self.batches if program.startswith("bridge") for line in text.splitlines()]

    def vip_scripts(self) -> list[str]:
        return [text for program, text in self.batches if program.startswith("nsenter")]


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    fake = FakeKernel(tmp_path)
    monkeypatch.setattr(overlay_linux, "run", fake.run)
    monkeypatch.setattr(overlay_linux, "NETNS_DIR", str(tmp_path))
    return fake


BACK = network("back-network-id-000000", "10.0.1.0/24")


def api_entry(*peers: tuple[str, str]) -> NameEntry:
    return NameEntry(BACK["ID"], "api", (), "10.0.1.2", tuple(ip for ip, _ in peers), peers)


async def test_the_first_task_of_a_network_finds_its_peers_already_there(kernel: FakeKernel) -> None:
    overlay = OverlayDataPath("node-a-0000000000000", "127.0.0.2", 4790)
    overlay.update([api_entry(("10.0.1.6", "127.0.0.3:4791"))])
    namespace = await overlay.make_task_namespace("t1")
    await overlay.attach(task("t1", (BACK, "10.0.1.5/24")), namespace, 0)
    assert "br0" in kernel.devices[namespace_name("node-a-0000000000000", BACK["ID"])]
    # The remote task is reachable before any further name table: written when the network was set up.
    assert kernel.fdb_lines() == ["fdb replace 02:42:0a:00:01:06 dev "
                                  f"{vxlan_device('node-a-0000000000000', BACK['ID'])} dst 127.0.0.3 port 4791 "
                                  "self permanent"]
    assert "10.0.1.2 dnat to numgen inc mod 1 map { 0 : 10.0.1.6 }" in kernel.vip_scripts()[-1]
    # Attaching again (an adopted task) creates nothing twice.
    created = [c for c in kernel.commands if c[:3] == ("ip", "link", "add")]
    await overlay.attach(task("t1", (BACK, "10.0.1.5/24")), namespace, 0)
    assert [c for c in kernel.commands if c[:3] == ("ip", "link", "add")] == created


async def test_a_failure_is_retried_and_holds_up_nothing_else(kernel: FakeKernel) -> None:
    overlay = OverlayDataPath("node-a-0000000000000", "127.0.0.2", 4790)
    for task_id, address in (("t1", "10.0.1.5/24"), ("t2", "10.0.1.7/24")):
        await overlay.attach(task(task_id, (BACK, address)), await overlay.make_task_namespace(task_id), 0)
    kernel.failing = {task_namespace_name("node-a-0000000000000", "t1")}  # t1's VIP table cannot be written
    overlay.update([api_entry(("10.0.1.6", "127.0.0.3:4791"))])
    scripts = len(kernel.vip_scripts())
    await overlay._sync()
    assert list(overlay.errors) == ["task t1"] and overlay._retry
    assert len(kernel.vip_scripts()) == scripts + 1  # t2's table was written all the same
    assert kernel.fdb_lines()[-1].startswith("fdb replace 02:42:0a:00:01:06")  # and the network's peers
    kernel.failing = set()
    await overlay._sync()  # the retry
    assert overlay.errors == {} and not overlay._retry and len(kernel.vip_scripts()) == scripts + 2


async def test_namespaces_nothing_claims_go_after_the_linger(kernel: FakeKernel,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    overlay = OverlayDataPath("node-a-0000000000000", "127.0.0.2", 4790)
    leftover = task_namespace_name("node-a-0000000000000", "gone")  # an earlier agent's task, ended meanwhile
    (kernel.folder / leftover).touch()
    (kernel.folder / "shoal-other-node00-x").touch()  # another node's: never touched
    await overlay.attach(task("t1", (BACK, "10.0.1.5/24")), await overlay.make_task_namespace("t1"), 0)
    await overlay._sync()
    assert (kernel.folder / leftover).exists()  # not yet: it lingers
    monkeypatch.setattr(overlay_linux, "NETWORK_LINGER_SECONDS", 0.0)
    await overlay.release("t1")  # the task ended; its network is now unused too
    await overlay._sync()
    assert sorted(p.name for p in kernel.folder.iterdir()) == ["shoal-other-node00-x"]
    assert overlay.debug()["Networks"] == []


async def test_the_vxlan_filter_follows_the_peers(kernel: FakeKernel) -> None:
    overlay = OverlayDataPath("node-a-0000000000000", "127.0.0.2", 4790)
    await overlay.attach(task("t1", (BACK, "10.0.1.5/24")), await overlay.make_task_namespace("t1"), 0)
    filters = [text for program, text in kernel.batches if program == "nft -f -"]
    assert "@th,96,24 4097 counter drop" in filters[-1]  # the network is here, no other node runs it yet
    overlay.update([api_entry(("10.0.1.6", "127.0.0.3:4791"))])
    await overlay._sync()
    filters = [text for program, text in kernel.batches if program == "nft -f -"]
    assert "@th,96,24 4097 ip saddr != { 127.0.0.3 } counter drop" in filters[-1]
    await overlay._sync()  # nothing changed: nothing written
    assert len([text for program, text in kernel.batches if program == "nft -f -"]) == len(filters)


async def test_a_node_without_networks_writes_no_filter_and_the_last_network_takes_it_away(
        kernel: FakeKernel, monkeypatch: pytest.MonkeyPatch) -> None:
    overlay = OverlayDataPath("node-a-0000000000000", "127.0.0.2", 4790)
    await overlay._sync()  # a node that never joins a network (a bare daemon) leaves no table behind
    assert not [c for c in kernel.commands if c[0] == "nft"] and not kernel.batches
    await overlay.attach(task("t1", (BACK, "10.0.1.5/24")), await overlay.make_task_namespace("t1"), 0)
    assert [program for program, _ in kernel.batches].count("nft -f -") == 1
    monkeypatch.setattr(overlay_linux, "NETWORK_LINGER_SECONDS", 0.0)
    await overlay.release("t1")
    await overlay._sync()
    assert ("nft", "delete", "table", "ip", "shoal_vx_4790") in kernel.commands
