"""Prometheus metrics of a real swarm: every daemon of a playground serves its own (`playground up --metrics`),
the manager the swarm's state, and Debian's real `prometheus` scrapes them all and answers queries on them."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from shoal import playground
from tests.cluster.conftest import FAILED_KEY, Cluster, _subnet, dump_logs, wait_for

pytestmark = pytest.mark.cluster

HELLO = "mkdir -p www && echo hello > www/index.html && exec busybox httpd -f -p \"$PORT\" -h www"


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("swarm")
    subnet = _subnet()
    cluster = Cluster(base, subnet)
    try:
        cluster.nodes = playground.up(1, 2, lambda _: None, base=base, subnet=subnet, routing_mesh="userspace",
                                      metrics=True)
        yield cluster
    except BaseException:
        dump_logs(cluster)
        raise
    finally:
        cluster.down()


@pytest.fixture
def swarm(metered: Cluster, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    yield metered
    if request.node.stash.get(FAILED_KEY, False):
        dump_logs(metered)


def scrape(cluster: Cluster, name: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """A node's metrics: (series, labels) -> value."""
    response = httpx.get(cluster.node(name).metrics_url, timeout=10)
    response.raise_for_status()
    return {(s.name, frozenset(s.labels.items())): float(s.value)
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def total(figures: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of `name` over the series that carry these labels."""
    wanted = set(labels.items())
    return sum(v for (series, have), v in figures.items() if series == name and wanted <= have)


def free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return int(probe.getsockname()[1])


def test_each_node_serves_its_figures_and_the_manager_the_swarms(swarm: Cluster) -> None:
    manager = wait_for("the manager's metrics to count 3 ready nodes",
                       lambda: m if total(m := scrape(swarm, "manager1"), "shoal_nodes", state="ready") == 3 else None)
    assert total(manager, "shoal_manager_is_leader") == 1
    assert total(manager, "shoal_dispatcher_sessions") == 3
    assert total(manager, "shoal_store_request_duration_seconds_count", operation="commit") > 0
    for worker in ("worker1", "worker2"):
        figures = scrape(swarm, worker)
        assert total(figures, "shoal_event_loop_lag_seconds_count") > 0
        assert not any(series == "shoal_nodes" for series, _ in figures)  # a worker knows no swarm state

    port = free_port(swarm.node("worker1").address)
    swarm.ok("service", "create", "-d", "--name", "web", "--replicas", "2", "-p", f"{port}:80", "busybox",
             "sh", "-c", HELLO)
    swarm.wait_running("web", 2)
    manager = wait_for("web's running tasks in the manager's metrics", lambda: m if total(
        m := scrape(swarm, "manager1"), "shoal_service_running_tasks", service="web") == 2 else None)
    assert total(manager, "shoal_service_desired_tasks", service="web") == 2
    assert total(manager, "shoal_scheduler_placements_total") >= 2
    assert sum(total(scrape(swarm, n.name), "shoal_task_starts_total") for n in swarm.nodes) >= 2

    # Through the routing mesh of a node, whichever of its processes takes each connection.
    url = f"http://{swarm.node('worker1').address}:{port}/"
    answered = wait_for("the published port to answer", lambda: httpx.get(url, timeout=5).text == "hello\n")
    assert answered
    for _ in range(4):
        assert httpx.get(url, timeout=5).text == "hello\n"
    mesh = wait_for("worker1's mesh metrics to count the connections", lambda: m if total(
        m := scrape(swarm, "worker1"), "shoal_mesh_connections_total", port=str(port)) >= 5 else None)
    assert total(mesh, "shoal_mesh_bytes_total", port=str(port), protocol="tcp", direction="out") >= 5 * len("hello\n")


def test_prometheus_scrapes_the_playground(swarm: Cluster, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary is not None, "Debian's prometheus is not installed: run scripts/install-deps.sh"
    targets = ", ".join(f'"{n.metrics_addr}"' for n in swarm.nodes)
    config = tmp_path / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                      f"scrape_configs:\n  - job_name: shoal\n    static_configs:\n      - targets: [{targets}]\n")
    listen = f"127.0.0.1:{free_port('127.0.0.1')}"
    log = tmp_path / "prometheus.log"
    with log.open("wb") as out:
        server = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                                   f"--web.listen-address={listen}"], stdout=out, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)

    def query(expression: str) -> list[dict[str, object]] | None:
        assert server.poll() is None, f"prometheus exited:\n{log.read_text()[-3000:]}"
        response = httpx.get(f"http://{listen}/api/v1/query", params={"query": expression}, timeout=5)
        if response.status_code != 200:  # still starting ("Service Unavailable" until its storage is open)
            return None
        answer = response.json()
        return answer["data"]["result"] if answer.get("status") == "success" else None

    def one_value(expression: str) -> float | None:
        result = query(expression)
        return float(result[0]["value"][1]) if result else None  # type: ignore[index]

    try:
        wait_for("prometheus to count 3 ready nodes", lambda: one_value('sum(shoal_nodes{state="ready"})') == 3,
                 timeout=90)
        wait_for("every node to be scraped", lambda: one_value('sum(up{job="shoal"})') == 3, timeout=30)
        leaders = query("shoal_manager_is_leader == 1")
        assert leaders is not None
        assert [r["metric"]["instance"] for r in leaders] == [swarm.manager.metrics_addr]  # type: ignore[index]
        lag = one_value("count(shoal_event_loop_lag_seconds_count)")
        assert lag == 3  # every daemon's own figures, beside the manager's
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
