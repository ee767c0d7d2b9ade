"""The namespaced cluster harness (tests/cluster/netns.py) does what partition tests rely on: the swarm comes
up with each node in its own namespace, and `cut`, `split` and `heal` really cut and restore the network
between nodes, silently (dropped packets time out; nothing is refused). Only the network is checked here,
not how shoal reacts to a partition."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cluster.conftest import FAILED_KEY, dump_logs, wait_for
from tests.cluster.netns import NetnsCluster, make_netns_cluster, requires_netns

pytestmark = [pytest.mark.cluster, requires_netns]

ECHO_PORT = 9999  # each node's own port space: no clash with anything else on the machine
SWARM_PORT = 2377  # only managers listen on it
DROPPED = "TimeoutError"  # what a probe across a cut sees; a refusal (RST, ICMP) would be another error


@pytest.fixture(scope="module")
def netns_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsCluster]:
    """One 1-manager/2-worker swarm for the module (a start costs seconds on a small machine), with an echo
    server on every node."""
    cluster = make_netns_cluster(tmp_path_factory, managers=1, workers=2)
    try:
        for node in cluster.nodes:
            cluster.listen(node.name, ECHO_PORT)
        yield cluster
    finally:
        cluster.down()


@pytest.fixture
def ns(request: pytest.FixtureRequest, netns_cluster: NetnsCluster) -> Iterator[NetnsCluster]:
    """The module's cluster, healed after each test, its logs shown if the test failed."""
    try:
        yield netns_cluster
    finally:
        if request.node.stash.get(FAILED_KEY, False):
            dump_logs(netns_cluster)
        netns_cluster.heal_all()


def probes(cluster: NetnsCluster, paths: list[tuple[str, str, int, str]]) -> dict[tuple[str, str, int, str], str]:
    """Probe several (src, dst, port, protocol) paths at once: a cut one takes its whole timeout."""
    with ThreadPoolExecutor(len(paths)) as pool:
        outcomes = pool.map(lambda path: cluster.probe(*path), paths)
        return dict(zip(paths, outcomes, strict=True))


def everything_answers(cluster: NetnsCluster) -> dict[tuple[str, str, int, str], str] | None:
    """None once every node reaches every other node (TCP and UDP), else the outcomes."""
    names = [n.name for n in cluster.nodes]
    seen = probes(cluster, [(a, b, ECHO_PORT, proto) for a in names for b in names if a != b
                            for proto in ("tcp", "udp")])
    return None if set(seen.values()) == {"answered"} else seen


def test_swarm_comes_up_with_each_node_in_its_namespace(ns: NetnsCluster) -> None:
    out = ns.ok("node", "ls")
    assert out.count("Ready") == 3, out
    for node in ns.nodes:
        identify = subprocess.run(["ip", "netns", "identify", str(node.pid)], capture_output=True, text=True)
        assert identify.stdout.strip() == ns.namespace(node.name), (node, identify)
        assert node.address.startswith(f"{ns.subnet}.")
    # Nothing of ours in the machine's own namespace.
    root = subprocess.run(["ip", "-4", "-o", "address"], capture_output=True, text=True, check=True).stdout
    assert f" {ns.subnet}." not in root


def test_nodes_reach_each_other(ns: NetnsCluster) -> None:
    assert ns.reachable("worker1", "manager1", SWARM_PORT)
    assert ns.reachable("worker2", "manager1", SWARM_PORT)
    assert everything_answers(ns) is None
    # A port nobody listens on is refused at once: the network answers, unlike a cut one.
    assert ns.probe("manager1", "worker1", 1).startswith("ConnectionRefusedError after 0.0")


def test_cut_isolates_a_node_both_ways_and_heal_restores_it(ns: NetnsCluster) -> None:
    conversation = Conversation(ns, "manager1", "worker1", ECHO_PORT)  # established before the cut
    try:
        assert conversation.say("before", timeout=5) == "before"

        ns.cut("worker1")
        seen = probes(ns, [("worker1", "manager1", SWARM_PORT, "tcp"), ("manager1", "worker1", ECHO_PORT, "tcp"),
                           ("worker2", "worker1", ECHO_PORT, "tcp"), ("worker1", "worker2", ECHO_PORT, "udp"),
                           ("manager1", "worker1", ECHO_PORT, "udp"), ("worker2", "manager1", SWARM_PORT, "tcp")])
        dropped = {path: outcome for path, outcome in seen.items() if path[0] == "worker1" or path[1] == "worker1"}
        assert all(outcome.startswith(DROPPED) for outcome in dropped.values()), seen
        assert seen[("worker2", "manager1", SWARM_PORT, "tcp")] == "answered", seen
        # Dropped by our rule, on both sides (the other side's answer would not get through either).
        assert " drop" in ns.rules("worker1") and "reject" not in ns.rules("worker1")
        assert ns.dropped("worker1") > 0 and ns.dropped("manager1") > 0
        # The connection that was open is cut too, not only new ones.
        assert conversation.say("during", timeout=1) == DROPPED
        assert "worker1" in ns.cut_off("manager1") and ns.cut_off("worker2") == ["worker1"]

        ns.heal("worker1")
        assert ns.rules("worker1") == "" and ns.rules("manager1") == ""
        wait_for("every node to reach every other again", lambda: everything_answers(ns) is None, timeout=15)
        # TCP retransmits what the cut lost; the open connection carries on.
        assert conversation.say("after", timeout=20) == "after"
    finally:
        conversation.close()


def test_split_keeps_each_side_together(ns: NetnsCluster) -> None:
    ns.split(["manager1", "worker1"], ["worker2"])
    seen = probes(ns, [("manager1", "worker1", ECHO_PORT, "tcp"), ("worker1", "manager1", SWARM_PORT, "tcp"),
                       ("worker2", "manager1", SWARM_PORT, "tcp"), ("manager1", "worker2", ECHO_PORT, "tcp"),
                       ("worker1", "worker2", ECHO_PORT, "udp"), ("worker2", "worker1", ECHO_PORT, "tcp")])
    across = {path: outcome for path, outcome in seen.items() if "worker2" in path[:2]}
    assert all(outcome.startswith(DROPPED) for outcome in across.values()), seen
    assert seen[("manager1", "worker1", ECHO_PORT, "tcp")] == "answered", seen
    assert seen[("worker1", "manager1", SWARM_PORT, "tcp")] == "answered", seen

    ns.heal_all()
    wait_for("every node to reach every other again", lambda: everything_answers(ns) is None, timeout=15)


def test_restarted_daemon_goes_back_into_its_namespace(ns: NetnsCluster) -> None:
    ns.kill("worker2")
    ns.restart("worker2")
    identify = subprocess.run(["ip", "netns", "identify", str(ns.node("worker2").pid)], capture_output=True,
                              text=True)
    assert identify.stdout.strip() == ns.namespace("worker2")
    wait_for("worker2 to be ready again", lambda: ns.node_state("worker2") == "ready", timeout=60)


class Conversation:
    """One TCP connection from inside src's namespace to dst's echo server, kept open between calls, to see
    that a cut stops connections that were already established."""

    CLIENT = """
import socket, sys
sock = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print("connected", flush=True)
received = b""
for line in sys.stdin:
    word, timeout = line.split()
    sock.settimeout(float(timeout))
    sock.sendall(word.encode() + b"\\n")
    try:
        while (word + "\\n").encode() not in received:  # echoes that a cut held back may come first
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionResetError("closed")
            received += chunk
        received = received.split((word + "\\n").encode(), 1)[1]
        print(word, flush=True)
    except OSError as exc:
        print(type(exc).__name__, flush=True)
"""

    def __init__(self, cluster: NetnsCluster, src: str, dst: str, port: int) -> None:
        self.proc = subprocess.Popen([*cluster.wrapper(src), sys.executable, "-I", "-S", "-c", self.CLIENT,
                                      cluster.node(dst).address, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.readline() == "connected"

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def say(self, word: str, timeout: float) -> str:
        """Send `word`; its echo, or the error reading it got within `timeout` seconds."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{word} {timeout}\n")
        self.proc.stdin.flush()
        return self.readline()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
