"""Swarm networks on the wire: the example application of `examples/app` (web → api → db by name, over an overlay
network, with a secret) through a node failure, a scale-up and a rolling update with no failed request, with
the docker executor and with the process executor (each task in a namespace of its own); and, with containers,
what the overlay keeps apart (two networks, an `--internal` one).

The three nodes share this machine's Docker Engine, but each has its own namespaces, VXLAN device and
data-path port, so frames between containers of different nodes really cross a VXLAN tunnel.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from shoal import playground
from shoal.agent.executor.docker import GATEWAY_BRIDGE
from shoal.overlay.plan import vxlan_table
from tests.cluster.conftest import Cluster, Sampler, wait_for
from tests.cluster.test_docker_cluster import DockerSwarm, docker_swarm_fixture, engine  # noqa: F401

pytestmark = pytest.mark.cluster

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "app" / "compose.yml"
PROCESS_OVERRIDE = EXAMPLE.with_name("compose.process.yml")
CONVERGE_SECONDS = 90.0
ANSWER = "rows from db"


@pytest.fixture
def swarm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          engine: docker.DockerClient) -> Iterator[DockerSwarm]:  # noqa: F811
    yield from docker_swarm_fixture(request, tmp_path_factory, engine)


def fetch(address: str, timeout: float = 30.0) -> str:
    try:
        with urllib.request.urlopen(f"http://{address}:8080/", timeout=timeout) as response:
            return response.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        return f"failed: {exc}"


class Requests(Sampler):
    """Requests sent one after another to the web service while something changes; every answer is kept."""

    interval = 0.0

    def __init__(self, address: str) -> None:
        super().__init__()
        self.address = address
        self.answers: list[str] = []

    def sample(self) -> None:
        started = time.monotonic()
        answer = fetch(self.address)
        self.answers.append(answer if ANSWER in answer else f"{answer} (after {time.monotonic() - started:.1f}s)")

    @property
    def failures(self) -> list[str]:
        return [answer for answer in self.answers if ANSWER not in answer]


def dropped(table: str, vni: int) -> int:
    """How many frames of VXLAN ID `vni` from a non-peer a node's filter has dropped."""
    listing = subprocess.run(["nft", "list", "table", "ip", table], capture_output=True, text=True,
                             check=True).stdout
    match = re.search(rf"@th,96,24 (?:{vni}|{vni:#x}) ip saddr != .*? counter packets (\d+)", listing)  # nft shows hex
    assert match, listing
    return int(match.group(1))


def db_process(cluster: Cluster, task_id: str) -> int:
    """The PID of a task's process (its container's main process for the docker executor)."""
    task = next(t for t in cluster.tasks("app_db") if t["ID"] == task_id)
    pid = int(task["Status"]["ContainerStatus"]["PID"])
    assert pid > 0, task["Status"]
    return pid


def node_of(cluster: Cluster, names: dict[str, str], service: str) -> str | None:
    """The node running the service's task (None while none runs); `names`: node ID -> name."""
    running = cluster.running(service)
    return names[running[0]["NodeID"]] if running else None


def exec_in(container: Any, *command: str) -> tuple[int, str]:
    code, output = container.exec_run(list(command))
    return int(code), output.decode(errors="replace")


def test_the_example_application_with_containers(swarm: DockerSwarm) -> None:
    check_the_example(swarm.cluster, EXAMPLE)


def test_the_example_application_with_processes(cluster: Cluster) -> None:
    check_the_example(cluster, EXAMPLE, PROCESS_OVERRIDE)


def check_the_example(cluster: Cluster, *compose_files: Path) -> None:
    """Deploy, ask every node, kill db's node, then scale and update api under requests: none may fail."""
    names = {node_id: name for name, node_id in cluster.node_ids().items()}
    files = [arg for path in compose_files for arg in ("-c", str(path))]
    cluster.ok("stack", "deploy", *files, "app")
    for service, count in (("app_web", 1), ("app_api", 2), ("app_db", 1)):
        cluster.wait_running(service, count, timeout=CONVERGE_SECONDS)
    # Every node answers (the routing mesh), with data web got from api, which got it from db, by name.
    for node in cluster.nodes:
        answer = wait_for(f"the example to answer on {node.name}",
                          lambda n=node: a if ANSWER in (a := fetch(n.address, timeout=10)) else None,
                          timeout=CONVERGE_SECONDS)
        assert answer.startswith("web ") and " api " in answer, answer

    # db on a worker, so that killing its node leaves the manager; then kill that node.
    if node_of(cluster, names, "app_db") == "manager1":
        cluster.ok("service", "update", "-d", "--constraint-add", "node.role==worker", "app_db")
        wait_for("db to move to a worker", lambda: node_of(cluster, names, "app_db") not in (None, "manager1"),
                 timeout=CONVERGE_SECONDS)
    victim = node_of(cluster, names, "app_db")
    assert victim is not None
    cluster.kill(victim)
    wait_for("db to run on another node", lambda: node_of(cluster, names, "app_db") not in (None, victim),
             timeout=CONVERGE_SECONDS)
    manager = cluster.manager.address
    wait_for("the example to answer again", lambda: ANSWER in fetch(manager, timeout=10), timeout=CONVERGE_SECONDS)

    # Scale api to 4 and roll an update over it while requests keep coming: not one fails.
    with Requests(manager) as requests:
        cluster.ok("service", "scale", "-d", "app_api=4")
        cluster.wait_running("app_api", 4, timeout=CONVERGE_SECONDS)
        cluster.ok("service", "update", "--env-add", "VERSION=2", "app_api", timeout=CONVERGE_SECONDS * 2)
        def updated() -> list[Any] | None:
            running = cluster.running("app_api")
            fresh = [t for t in running if "VERSION=2" in (t["Spec"]["ContainerSpec"].get("Env") or [])]
            return running if len(running) == len(fresh) == 4 else None
        wait_for("4 updated api tasks", updated, timeout=CONVERGE_SECONDS)
        time.sleep(1)  # a few requests more against the updated tasks
    assert len(requests.answers) > 20, requests.answers
    assert requests.failures == [], f"{len(requests.failures)} of {len(requests.answers)} failed: {requests.failures[:5]}"
    # The answers came from several api tasks: the virtual IP balances.
    assert len({answer.split(" api ")[1].split(":")[0] for answer in requests.answers}) >= 2


def test_networks_are_isolated_and_an_internal_network_has_no_way_out(swarm: DockerSwarm) -> None:
    cluster = swarm.cluster
    cluster.ok("network", "create", "-d", "overlay", "--subnet", "10.31.0.0/24", "front")
    cluster.ok("network", "create", "-d", "overlay", "--subnet", "10.32.0.0/24", "--internal", "back")
    cluster.ok("network", "create", "-d", "overlay", "--subnet", "10.33.0.0/24", "other")
    sleep = ("sleep", "100000")
    for name, networks, node in (("one", ["front"], "worker1"), ("two", ["back"], "worker2"),
                                 ("both", ["front", "back"], "manager1"), ("three", ["other"], "worker1")):
        flags = [f for network in networks for f in ("--network", network)]
        cluster.ok("service", "create", "-d", "--name", name, "--stop-grace-period", "1s", *flags,
                   "--constraint", f"node.hostname=={node}", "shoal-busybox:1", *sleep)
    for name in ("one", "two", "both", "three"):
        cluster.wait_running(name, 1, timeout=CONVERGE_SECONDS)

    def container(service: str) -> Any:
        return wait_for(f"the container of {service}", lambda: (c := swarm.containers(service)) and c[0],
                        timeout=CONVERGE_SECONDS)

    def address(service: str, network: str) -> str:
        task = cluster.running(service)[0]
        for attachment in task["NetworksAttachments"]:
            if attachment["Network"]["Spec"]["Name"] == network:
                return str(attachment["Addresses"][0]).split("/")[0]
        raise AssertionError(f"{service} has no address on {network}")

    one, two, both, three = container("one"), container("two"), container("both"), container("three")
    # Across nodes, on a shared network: reachable by address and by name (each lookup answers at once).
    assert exec_in(both, "ping", "-c", "1", "-W", "5", address("one", "front"))[0] == 0
    assert exec_in(both, "ping", "-c", "1", "-W", "5", address("two", "back"))[0] == 0
    assert exec_in(one, "ping", "-c", "1", "-W", "5", "tasks.both")[0] == 0
    code, output = exec_in(one, "nslookup", "both")
    assert code == 0 and address("both", "front") not in output  # the service's virtual IP, not the task's
    # A task's own name is on its overlay address, where other tasks reach it.
    code, output = exec_in(one, "cat", "/etc/hosts")
    assert f"{address('one', 'front')}\t" in output, output
    # Different networks do not meet: one cannot reach two, nor even learn its name.
    assert exec_in(one, "ping", "-c", "1", "-W", "2", address("two", "back"))[0] != 0
    assert exec_in(one, "nslookup", "two")[0] != 0
    # The internal network's task has no interface but its overlay one, so no way out.
    code, output = exec_in(two, "ip", "-o", "-4", "addr")
    assert code == 0 and "172.17." not in output and "eth0" in output, output
    code, output = exec_in(two, "ip", "route")
    assert "default" not in output, output
    # A task on a normal network has a way out: the gateway bridge. Two tasks of different networks on it
    # (here on the same node, as the nodes share one engine) cannot reach each other there either.
    code, output = exec_in(one, "ip", "route")
    assert "default" in output, output
    three.reload()
    bridge_address = three.attrs["NetworkSettings"]["Networks"][GATEWAY_BRIDGE]["IPAddress"]
    assert bridge_address and exec_in(one, "ping", "-c", "1", "-W", "2", bridge_address)[0] != 0
    # Nor can a machine that runs no task of a network put frames into it: worker1's data-path port drops
    # VXLAN frames of "front" from anyone but manager1 (which runs "both"), and of unknown networks from all.
    worker1 = next(n for n in cluster.get("/nodes") if n["Description"]["Hostname"] == "worker1")
    port = cluster.node("worker1").data_path_port
    front = cluster.get("/networks/front")
    vni = int(front["Options"]["com.docker.network.driver.overlay.vxlanid_list"])
    table = vxlan_table(port)
    stranger = f"{cluster.subnet}.99"
    before = dropped(table, vni)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind((stranger, 0))
        frame = b"\x08\x00\x00\x00" + vni.to_bytes(3, "big") + b"\x00" + b"\xff" * 6 + b"\x02\x42" + b"\x00" * 50
        sender.sendto(frame, (worker1["Status"]["Addr"], port))
    wait_for("the stranger's frame to be dropped", lambda: dropped(table, vni) > before, timeout=10)


@pytest.fixture(params=["process", "docker"])
def example_cluster(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, list[str]]]:
    """A fresh cluster of either executor, and the compose files that deploy the example with it."""
    if request.param == "docker":
        swarms = docker_swarm_fixture(request, tmp_path_factory, request.getfixturevalue("engine"))
        yield next(swarms).cluster, ["-c", str(EXAMPLE)]
        swarms.close()
    else:
        yield request.getfixturevalue("cluster"), ["-c", str(EXAMPLE), "-c", str(PROCESS_OVERRIDE)]


def test_a_restarted_agent_keeps_its_tasks_on_their_networks(example_cluster: tuple[Cluster, list[str]]) -> None:
    """The daemon of the node running db restarts (as `systemctl restart` does): its tasks keep running and stay
    reachable by name, and the node's overlay, DNS server and VIP rules are set up again around them."""
    cluster, files = example_cluster
    cluster.ok("stack", "deploy", *files, "app")
    manager = cluster.manager.address
    wait_for("the example to answer", lambda: ANSWER in fetch(manager, timeout=10), timeout=CONVERGE_SECONDS)
    names = {node_id: name for name, node_id in cluster.node_ids().items()}
    db_node = node_of(cluster, names, "app_db")
    assert db_node is not None
    db_task = cluster.running("app_db")[0]["ID"]
    db_pid = db_process(cluster, db_task)

    node = cluster.node(db_node)
    os.kill(node.pid, signal.SIGTERM)
    wait_for(f"{db_node}'s daemon to exit", lambda: not playground._alive(node.pid))
    cluster.restart(db_node)
    wait_for(f"{db_node} ready", lambda: cluster.node_state(db_node) == "ready", timeout=CONVERGE_SECONDS)
    # The same db task, adopted; requests work again, and a new api task there reaches it too.
    wait_for("the example to answer after the restart", lambda: ANSWER in fetch(manager, timeout=10),
             timeout=CONVERGE_SECONDS)
    assert [t["ID"] for t in cluster.running("app_db")] == [db_task]
    # The adopted task itself still resolves names through its node's DNS server, set up again.
    gateway = str(cluster.running("app_db")[0]["NetworksAttachments"][0]["Network"]["Spec"]["IPAM"]["Config"][0][
        "Gateway"])
    lookup = wait_for("the adopted db to resolve api", lambda: (r := subprocess.run(
        ["nsenter", "-t", str(db_pid), "-n", "busybox", "nslookup", "app_api", gateway], capture_output=True,
        text=True)).returncode == 0 and r, timeout=CONVERGE_SECONDS)
    assert "Address" in lookup.stdout
    cluster.ok("service", "scale", "-d", "app_api=6")
    cluster.wait_running("app_api", 6, timeout=CONVERGE_SECONDS)
    with Requests(manager) as requests:
        wait_for("20 answers", lambda: len(requests.answers) >= 20, timeout=CONVERGE_SECONDS)
    assert requests.failures == [], requests.failures[:5]
