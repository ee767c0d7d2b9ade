"""The routing mesh on a three-node swarm (process executor, userspace data path): published ports answer on
every node, from every running task, and keep answering through task deaths, rolling updates and scale-downs."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.cluster.conftest import FAILED_KEY, Cluster, dump_logs, make_cluster, wait_for

pytestmark = pytest.mark.cluster

# An HTTP task answering its own task ID, on the node port the agent gives it in $PORT.
HTTPD = 'mkdir -p www && echo "$SHOAL_TASK_ID $VERSION" > www/index.html && exec busybox httpd -f -p "$PORT" -h www'
# A UDP task echoing each datagram back with its task ID in front.
UDP_ECHO = """
import os, socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(os.environ["PORT"])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(os.environ["SHOAL_TASK_ID"].encode() + b" " + data, peer)
"""


@pytest.fixture(scope="module")
def mesh(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One swarm for the module (each test uses its own services and ports)."""
    cluster = make_cluster(tmp_path_factory)
    failed = False
    try:
        yield cluster
    finally:
        failed = any(item.stash.get(FAILED_KEY, False) for item in request.session.items
                     if item.module is request.module)
        if failed:
            dump_logs(cluster, lines=80)
        cluster.down()


def get(address: str, port: int, timeout: float = 3.0) -> str:
    """One request on a new connection; the body (task ID and version)."""
    with urllib.request.urlopen(f"http://{address}:{port}/", timeout=timeout) as response:
        return str(response.read().decode().strip())


def answers(address: str, port: int, count: int) -> Counter[str]:
    return Counter(get(address, port).split()[0] for _ in range(count))


def running_ids(cluster: Cluster, service: str) -> set[str]:
    return {t["ID"] for t in cluster.running(service)}


def serving(cluster: Cluster, service: str, port: int, count: int) -> set[str]:
    """Wait until `count` running tasks of the service answer through the manager's published port."""
    def all_answer() -> set[str] | None:
        ids = running_ids(cluster, service)
        seen = set(answers(cluster.manager.address, port, 4 * count))
        return ids if len(ids) == count and seen == ids else None
    return wait_for(f"{count} tasks of {service} answering on port {port}", all_answer)


class Load:
    """Requests in a loop from a thread, each on a new connection, spread over the nodes; counts failures."""

    def __init__(self, addresses: list[str], port: int) -> None:
        self.addresses = addresses
        self.port = port
        self.ok: Counter[str] = Counter()
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        index = 0
        while not self._stop.is_set():
            address = self.addresses[index % len(self.addresses)]
            index += 1
            try:
                self.ok[get(address, self.port)] += 1
            except (OSError, urllib.error.URLError) as exc:
                self.failures.append(f"{address}: {exc}")

    @property
    def total(self) -> int:
        return sum(self.ok.values()) + len(self.failures)


def test_an_ingress_port_answers_on_every_node_from_every_task(mesh: Cluster) -> None:
    mesh.ok("service", "create", "-d", "--name", "web", "--replicas", "2", "-p", "8080:80",
            "busybox", "sh", "-c", HTTPD)
    ids = serving(mesh, "web", 8080, 2)
    for node in mesh.nodes:
        seen = answers(node.address, 8080, 12)
        assert set(seen) == ids, f"{node.name}: {seen}"
        assert min(seen.values()) >= 4, f"{node.name} does not spread requests: {seen}"
    assert "*:8080->80/tcp" in mesh.ok("service", "ls")
    [service] = mesh.get("/services", filters=json.dumps({"name": ["web"]}))
    assert service["Endpoint"]["Ports"] == [{"Protocol": "tcp", "TargetPort": 80, "PublishedPort": 8080,
                                             "PublishMode": "ingress"}]

    # A killed task gets no new connection; the swarm replaces it and the new task answers too.
    victim = sorted(ids)[0]
    for pid in mesh.task_processes()[victim]:
        os.kill(pid, signal.SIGKILL)
    with Load([n.address for n in mesh.nodes], 8080) as load:
        wait_for("the killed task to be replaced and answer", lambda: len(serving(mesh, "web", 8080, 2) - ids) == 1)
    assert load.failures == [], load.failures
    assert load.total > 20
    mesh.ok("service", "rm", "web")
    wait_for("port 8080 closed on every node", lambda: all(refused(n.address, 8080) for n in mesh.nodes))


def refused(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_no_request_fails_during_rolling_updates_and_a_scale_down(mesh: Cluster) -> None:
    mesh.ok("service", "create", "-d", "--name", "api", "--replicas", "3", "-p", "8081:80", "--env", "VERSION=1",
            "--update-delay", "0s", "busybox", "sh", "-c", HTTPD)
    serving(mesh, "api", 8081, 3)
    addresses = [n.address for n in mesh.nodes]
    with Load(addresses, 8081) as load:
        mesh.ok("service", "update", "--update-order", "start-first", "--env-add", "VERSION=2", "api", timeout=120)
        wait_for("version 2 answering", lambda: load.ok and any(k.endswith(" 2") for k in load.ok))
        mesh.ok("service", "update", "--update-order", "stop-first", "--env-add", "VERSION=3", "api", timeout=120)
        serving(mesh, "api", 8081, 3)
        mesh.ok("service", "scale", "api=1", timeout=120)
        serving(mesh, "api", 8081, 1)
    versions = Counter(key.split()[1] for key in load.ok)
    assert load.failures == [], f"{len(load.failures)} of {load.total} requests failed: {load.failures[:5]}"
    assert set(versions) == {"1", "2", "3"}, versions
    assert load.total > 100, load.total
    mesh.ok("service", "rm", "api")


def test_udp_datagrams_are_echoed_through_the_mesh(mesh: Cluster) -> None:
    mesh.ok("service", "create", "-d", "--name", "echo", "--replicas", "2", "-p", "5353:53/udp",
            "python3", "python3", "-u", "-c", UDP_ECHO)
    mesh.wait_running("echo", 2)
    ids = running_ids(mesh, "echo")

    def echoed_by(address: str) -> str | None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(1.0)
            client.sendto(b"ping", (address, 5353))
            try:
                data, _ = client.recvfrom(2048)
            except TimeoutError:
                return None
        task_id, _, payload = data.decode().partition(" ")
        assert payload == "ping"
        return task_id

    for node in mesh.nodes:
        assert wait_for(f"an echo through {node.name}", lambda a=node.address: echoed_by(a)) in ids
    # Each client address is a session with one task; new clients are spread over both.
    seen = {echoed_by(mesh.manager.address) for _ in range(10)}
    assert seen == ids, seen
    mesh.ok("service", "rm", "echo")


def test_host_mode_binds_only_where_tasks_run(mesh: Cluster) -> None:
    mesh.ok("service", "create", "-d", "--name", "edge", "--replicas", "1", "--constraint",
            "node.hostname==worker1", "--publish", "published=9090,target=80,mode=host",
            "busybox", "sh", "-c", HTTPD)
    [task] = mesh.wait_running("edge", 1)
    worker1 = mesh.node("worker1")
    assert wait_for("worker1:9090 answering", lambda: get(worker1.address, 9090).split()[0]) == task["ID"]
    assert refused(mesh.manager.address, 9090) and refused(mesh.node("worker2").address, 9090)
    ps = mesh.ok("service", "ps", "edge")
    assert "*:9090->80/tcp" in ps, ps
    mesh.ok("service", "rm", "edge")


def test_a_port_busy_on_a_node_is_shown_on_that_node(mesh: Cluster) -> None:
    worker2 = mesh.node("worker2")
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind((worker2.address, 8082))
    squatter.listen()
    try:
        mesh.ok("service", "create", "-d", "--name", "busy", "-p", "8082:80", "busybox", "sh", "-c", HTTPD)
        serving(mesh, "busy", 8082, 1)

        def message() -> str:
            return str(json.loads(mesh.ok("node", "inspect", "worker2"))[0]["Status"].get("Message") or "")
        text = wait_for("worker2's status message", lambda: m if "8082/tcp" in (m := message()) else None)
        assert text.startswith("routing mesh: port 8082/tcp is in use on this node"), text
    finally:
        squatter.close()
    # The agent tries again, and the message goes once it listens.
    wait_for("worker2 serving 8082 once free", lambda: not message() and get(worker2.address, 8082), timeout=20)
    mesh.ok("service", "rm", "busy")


@pytest.mark.parametrize("publish, error", [
    ("70000:80", "invalid hostport: 70000"),
    ("8083:80/sctp", "invalid proto: sctp (the routing mesh forwards tcp and udp)"),
    ("published=8084,target=80,protocol=icmp", "invalid protocol value 'icmp': use tcp or udp"),
])
def test_bad_published_ports_are_refused_and_nothing_is_stored(mesh: Cluster, publish: str, error: str) -> None:
    result = mesh.shoal("service", "create", "-d", "--name", "bad", "-p", publish, "busybox", "sleep", "60")
    assert result.code != 0 and error in result.err.lower(), result.err
    assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err
    assert mesh.get("/services", filters=json.dumps({"name": ["bad"]})) == []


@pytest.mark.parametrize("ports, status, error", [
    ([{"TargetPort": 80, "PublishedPort": 70000}], 400, "PublishedPort"),
    ([{"TargetPort": 0, "PublishedPort": 8085}], 400, "TargetPort"),
    ([{"TargetPort": 80, "PublishedPort": 8085, "Protocol": "sctp"}], 400, "Protocol"),
    ([{"TargetPort": 80, "PublishedPort": 8085}, {"TargetPort": 81, "PublishedPort": 8085}], 400, "given twice"),
])
def test_the_api_refuses_bad_ports_with_one_message(mesh: Cluster, ports: list[dict[str, object]], status: int,
                                                    error: str) -> None:
    spec = {"Name": "bad", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "60"]}},
            "EndpointSpec": {"Ports": ports}}
    with mesh.api() as client:
        response = client.post("/services/create", json=spec)
    assert response.status_code == status and error in response.json()["message"], response.text
    assert mesh.get("/services", filters=json.dumps({"name": ["bad"]})) == []


def test_a_port_another_service_publishes_is_a_conflict(mesh: Cluster) -> None:
    mesh.ok("service", "create", "-d", "--name", "first", "-p", "8086:80", "busybox", "sleep", "600")
    mesh.ok("service", "create", "-d", "--name", "second", "busybox", "sleep", "600")
    spec = {"Name": "third", "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "60"]}},
            "EndpointSpec": {"Ports": [{"TargetPort": 80, "PublishedPort": 8086}]}}
    with mesh.api() as client:
        created = client.post("/services/create", json=spec)
    assert created.status_code == 409 and "8086/tcp is already published" in created.json()["message"]
    # The same through an update: refused, and the service keeps its spec.
    updated = mesh.shoal("service", "update", "-d", "--publish-add", "8086:80", "second")
    assert updated.code != 0 and "8086/tcp is already published" in updated.err
    [second] = mesh.get("/services", filters=json.dumps({"name": ["second"]}))
    assert not second["Spec"].get("EndpointSpec", {}).get("Ports")
    mesh.ok("service", "rm", "first", "second")
