"""Cluster harness with one Linux network namespace per node, so tests can cut the network between nodes.

The playground puts every node on a loopback address of the machine's namespace, where a connection to any
node leaves from 127.0.0.1 and firewall rules on the node addresses cut nothing. Here each node lives in its
own namespace, plugged by a veth pair into a bridge in a "switch" namespace, on a private /24:

    switch namespace: bridge br0 ── port0 ─┬─ eth0 10.a.b.2 (manager1's namespace)
                                 ── port1 ─┼─ eth0 10.a.b.3 (worker1's namespace)
                                 ── port2 ─┴─ eth0 10.a.b.4 (worker2's namespace)

Nothing is added to the machine's own namespace (dockerd's FORWARD DROP policy would break a bridge there).
The CLI and API still reach every daemon over its unix socket, which works across network namespaces; the
test process itself has no route to the nodes' addresses: reach them from inside a namespace (`probe`,
`reachable`, or any command behind `wrapper(name)`).

Partitions are nftables rules in a table of our own (`inet shoal_partition`) in the node namespaces: each
node drops, as packets arrive, whatever comes from the nodes it is cut off from (the way Jepsen partitions
with iptables INPUT rules). Dropping on the receiving side is silent for the sender, as a cut cable is: a
drop in the sender's output hook would make its send() fail at once with EPERM, which no real network does.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from shoal import playground
from shoal.config import DEFAULT_PORT
from shoal.playground import PlaygroundNode
from tests.cluster.conftest import Cluster, dump_logs, wait_for

TABLE = "shoal_partition"
DEVICE = "eth0"  # a node's side of its veth pair
BRIDGE = "br0"

_counter = itertools.count(1)


def _tool(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def netns_missing() -> str | None:
    """Why this machine cannot run a namespaced cluster, or None when it can."""
    if os.geteuid() != 0:
        return "needs root to create network namespaces and nftables tables"
    for tool in ("ip", "nft"):
        if _tool(tool) is None:
            return f"needs the {tool!r} program (Debian packages iproute2, nftables)"
    return None


#: Mark a test module or test with this to skip it where namespaces cannot be made.
requires_netns = pytest.mark.skipif(netns_missing() is not None, reason=str(netns_missing()))


def _subnet() -> str:
    """A 10.x.y block per pytest-xdist worker and cluster. The namespaces isolate each cluster's addresses
    anyway; distinct blocks only keep logs of clusters running side by side from looking alike."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    return f"10.{200 + index % 50}.{next(_counter) % 250}"


# Run inside a namespace as `python -I -S -c CODE ARGS…` (no site imports: they start in a few milliseconds).
_PROBE = """
import socket, sys, time
protocol, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
started = time.monotonic()
try:
    if protocol == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect((host, port))
            sock.send(b"ping")
            sock.recv(64)
    else:
        socket.create_connection((host, port), timeout=timeout).close()
    print("answered")
except OSError as exc:
    print(f"{type(exc).__name__} after {time.monotonic() - started:.2f}s")
"""

_ECHO = """
import socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
def echo(conn):
    with conn:
        while data := conn.recv(4096):
            conn.sendall(data)
tcp = socket.socket()
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind((host, port))
tcp.listen(128)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind((host, port))
def answer_udp():
    while True:
        data, peer = udp.recvfrom(4096)
        udp.sendto(data, peer)
threading.Thread(target=answer_udp, daemon=True).start()
print("listening", flush=True)
while True:
    threading.Thread(target=echo, args=(tcp.accept()[0],), daemon=True).start()
"""


def _run(*args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `ip` or `nft` (by absolute path: /usr/sbin may not be on a test's PATH)."""
    program = _tool(args[0]) or args[0]
    result = subprocess.run([program, *args[1:]], input=stdin, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


@dataclass
class NetnsCluster(Cluster):
    """A `Cluster` whose nodes each run in their own network namespace, with `cut`, `split` and `heal`."""

    run_id: str = ""
    switch: str = ""  # the namespace holding the bridge
    namespaces: dict[str, str] = field(default_factory=dict)  # node name -> namespace name
    # Partition state; the rules in each namespace are rebuilt from it on every change.
    isolated: set[str] = field(default_factory=set)
    split_pairs: set[frozenset[str]] = field(default_factory=set)
    listeners: list[subprocess.Popen[str]] = field(default_factory=list)  # from `listen`, ended by `down`

    # ---- topology -----------------------------------------------------------------------------------------

    def namespace(self, name: str) -> str:
        return self.namespaces[name]

    def _create_switch(self) -> None:
        self.switch = f"shoal-nc-{self.run_id}-sw"
        self._add_namespace(self.switch)
        _run("ip", "-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", BRIDGE, "up")

    def _add_namespace(self, ns: str) -> None:
        result = _run("ip", "netns", "add", ns, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot create a network namespace here: {result.stderr.strip()}")
        self._save_namespaces()
        _run("ip", "-n", ns, "link", "set", "lo", "up")

    def _plug(self, name: str, index: int) -> str:
        """A namespace for node `name`, wired to the switch; returns its address."""
        ns = f"shoal-nc-{self.run_id}-{name}"
        self.namespaces[name] = ns
        self._add_namespace(ns)
        port = f"port{index}"
        address = f"{self.subnet}.{playground.FIRST_ADDRESS + index}"
        _run("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", DEVICE, "netns", ns)
        _run("ip", "-n", self.switch, "link", "set", port, "master", BRIDGE)
        _run("ip", "-n", self.switch, "link", "set", port, "up")
        # IPv4 only, as the nodes' addresses: no IPv6 link-local address for traffic to slip around a cut.
        _run("ip", "-n", ns, "link", "set", DEVICE, "addrgenmode", "none")
        _run("ip", "-n", ns, "address", "add", f"{address}/24", "dev", DEVICE)
        _run("ip", "-n", ns, "link", "set", DEVICE, "up")
        return address

    def _save_namespaces(self) -> None:
        """Written down next to playground.json, so that whoever finds a leftover can tell whose it is."""
        names = [self.switch, *self.namespaces.values()]
        (self.base / "namespaces.json").write_text(json.dumps(names))

    def wrapper(self, name: str) -> list[str]:
        """Prefix for a command to run in node `name`'s namespace (`ip netns exec` execs it: same PID)."""
        return [_tool("ip") or "ip", "netns", "exec", self.namespace(name)]

    def _start_daemon(self, node: PlaygroundNode) -> None:
        """Start a node's daemon in its namespace; its PID is saved before anything can fail, for `down`."""
        proc, _, sock = playground.start_daemon(node.name, self.base,
                                                [*self.daemon_args(), "--publish-addr", node.address],
                                                wrapper=self.wrapper(node.name))
        node.pid = proc.pid
        self._save()
        playground.wait_for_socket(sock, proc)

    def start(self, managers: int, workers: int) -> None:
        """Start the daemons, init the swarm on the first manager and join the others, as the playground
        does, each daemon in its namespace."""
        self._create_switch()
        plan = [(f"manager{i + 1}", "manager") for i in range(managers)]
        plan += [(f"worker{i + 1}", "worker") for i in range(workers)]
        for name, role in plan:
            self._add(name, role)
        playground.wait_ready(self.manager.socket, len(self.nodes))

    def _add(self, name: str, role: str) -> PlaygroundNode:
        address = self._plug(name, len(self.nodes))
        state_dir = self.base / name
        node = PlaygroundNode(name, role, address, 0, str(state_dir / "shoal.sock"), str(state_dir))
        self.nodes.append(node)
        self._apply_partitions()  # a node added while others are isolated is cut off from them from the start
        self._start_daemon(node)
        listen = {"AdvertiseAddr": address, "ListenAddr": f"{address}:{DEFAULT_PORT}"}
        with playground.api(node.socket, timeout=90) as client:
            if node is self.manager:
                playground._check(client.post("/swarm/init", json=listen))
            else:
                with playground.api(self.manager.socket) as first:
                    tokens = playground._check(first.get("/swarm")).json()["JoinTokens"]
                token = tokens["Manager" if role == "manager" else "Worker"]
                playground._check(client.post("/swarm/join", json={
                    **listen, "RemoteAddrs": [f"{self.manager.address}:{DEFAULT_PORT}"], "JoinToken": token}))
        return node

    def add_node(self, name: str, role: str = "worker") -> PlaygroundNode:
        """Join one more node, in a namespace of its own."""
        return self._add(name, role)

    def restart(self, name: str) -> None:
        """Start a node's daemon again on its existing state, back in its namespace."""
        self._start_daemon(self.node(name))

    # ---- partitions ---------------------------------------------------------------------------------------

    def cut(self, *names: str) -> None:
        """Isolate these nodes from every other node (and from each other), both ways, until `heal`."""
        for name in names:
            self.node(name)  # unknown names fail here, not silently
        self.isolated.update(names)
        self._apply_partitions()

    def split(self, group_a: Iterable[str], group_b: Iterable[str]) -> None:
        """Nodes of group A and of group B no longer reach each other; each group still talks within itself."""
        a, b = list(group_a), list(group_b)
        assert not set(a) & set(b), f"a node cannot be on both sides: {set(a) & set(b)}"
        for name in (*a, *b):
            self.node(name)
        self.split_pairs.update(frozenset((x, y)) for x in a for y in b)
        self._apply_partitions()

    def heal(self, *names: str) -> None:
        """Undo every cut and split involving these nodes."""
        self.isolated.difference_update(names)
        self.split_pairs = {pair for pair in self.split_pairs if not pair & set(names)}
        self._apply_partitions()

    def heal_all(self) -> None:
        self.isolated.clear()
        self.split_pairs.clear()
        self._apply_partitions()

    def cut_off(self, name: str) -> list[str]:
        """The nodes `name` cannot exchange packets with, by the current partition."""
        return [other.name for other in self.nodes if other.name != name and (
            name in self.isolated or other.name in self.isolated
            or frozenset((name, other.name)) in self.split_pairs)]

    def _apply_partitions(self) -> None:
        """Rewrite every node namespace's table from the partition state; one atomic `nft -f` each."""
        for node in self.nodes:
            if node.name not in self.namespaces:
                continue
            blocked = [self.node(other).address for other in self.cut_off(node.name)]
            script = f"table inet {TABLE}\ndelete table inet {TABLE}\n"
            if blocked:
                # prerouting at raw priority: before conntrack, before any DNAT (a kernel-mesh node forwards
                # published ports, which the input hook would not see).
                script += (f"table inet {TABLE} {{\n"
                           f"  chain ingress {{\n"
                           f"    type filter hook prerouting priority raw; policy accept;\n"
                           f"    iifname \"{DEVICE}\" ip saddr {{ {', '.join(blocked)} }} counter drop\n"
                           f"  }}\n}}\n")
            _run(*self.wrapper(node.name), _tool("nft") or "nft", "-f", "-", stdin=script)

    def rules(self, name: str) -> str:
        """This harness's nftables table in a node's namespace, as `nft list` shows it ("" if none)."""
        result = _run(*self.wrapper(name), _tool("nft") or "nft", "list", "table", "inet", TABLE, check=False)
        return result.stdout if result.returncode == 0 else ""

    def dropped(self, name: str) -> int:
        """Packets a node's partition rule has dropped since the partition last changed (0 with no rule)."""
        found = re.search(r"counter packets (\d+)", self.rules(name))
        return int(found.group(1)) if found else 0

    # ---- probes -------------------------------------------------------------------------------------------

    def probe(self, src: str, dst: str, port: int, protocol: str = "tcp", timeout: float = 1.0) -> str:
        """What becomes of one new connection (tcp) or datagram (udp, answered by `listen`'s echo) from inside
        src's namespace to dst's address: "answered", or the error and how long it took, e.g. "TimeoutError
        after 1.00s" for a dropped packet, "ConnectionRefusedError after 0.00s" for an RST or ICMP reply."""
        result = subprocess.run([*self.wrapper(src), sys.executable, "-I", "-S", "-c", _PROBE, protocol,
                                 self.node(dst).address, str(port), str(timeout)],
                                capture_output=True, text=True, timeout=timeout + 30)
        assert result.returncode == 0, f"probe from {src} failed: {result.stderr}"
        return result.stdout.strip()

    def reachable(self, src: str, dst: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from inside src's namespace to dst's address and port is established
        within `timeout` seconds (a cut path times out; a refused connection is not reachable either)."""
        return self.probe(src, dst, port, "tcp", timeout) == "answered"

    def listen(self, name: str, port: int) -> subprocess.Popen[str]:
        """A TCP and UDP echo server on a node's address and `port`: workers serve no port of their own to
        probe. It is killed by `down`."""
        proc = subprocess.Popen([*self.wrapper(name), sys.executable, "-I", "-S", "-c", _ECHO,
                                 self.node(name).address, str(port)],
                                stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.listeners.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening", \
            f"no echo server on {name}:{port}"
        return proc

    # ---- teardown -----------------------------------------------------------------------------------------

    def down(self) -> None:
        """Daemons, etcd and tasks first (the playground's way), then whatever still runs in our namespaces,
        then the namespaces; deleting the switch namespace takes the bridge and the veth pairs with it."""
        try:
            playground.down(lambda _: None, self.base)
        finally:
            for proc in self.listeners:
                with contextlib.suppress(OSError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
            for ns in [*self.namespaces.values(), self.switch]:
                if ns:
                    _delete_namespace(ns)


def _delete_namespace(ns: str) -> None:
    """Kill what is left in one of our namespaces (only ours: the name has this run's suffix), delete it."""
    pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    if pids:
        # Deleting the name works either way; the namespace itself goes with its last process.
        with contextlib.suppress(AssertionError):
            wait_for(f"the processes in {ns} to exit",
                     lambda: not _run("ip", "netns", "pids", ns, check=False).stdout.split(), timeout=10)
    _run("ip", "netns", "delete", ns, check=False)


def make_netns_cluster(tmp_path_factory: pytest.TempPathFactory, managers: int = 1, workers: int = 2,
                       executor: str = "process", routing_mesh: str = "userspace") -> NetnsCluster:
    """A running swarm with each node in its own network namespace; call `down()` when done (it also cleans
    up after a failed start, which this does itself before raising)."""
    missing = netns_missing()
    if missing is not None:
        pytest.skip(missing)
    cluster = NetnsCluster(tmp_path_factory.mktemp("netns-swarm"), _subnet(), executor=executor,
                           routing_mesh=routing_mesh, run_id=secrets.token_hex(3))
    try:
        cluster.start(managers, workers)
    except BaseException:
        dump_logs(cluster)  # shown with the error; `down` removes the logs
        cluster.down()
        raise
    return cluster

