"""docker-py (the official Docker SDK) driving a shoal swarm through its unix socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from shoal import playground
from tests.cluster.conftest import FAILED_KEY, Cluster, dump_logs, wait_for

docker = pytest.importorskip("docker", reason="docker-py (the `docker` package) is not installed")

pytestmark = pytest.mark.cluster

SUBNET = "127.0.62"


@pytest.fixture
def swarm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("dockerpy")
    cluster = Cluster(base, SUBNET)
    try:
        cluster.nodes = playground.up(1, 2, lambda _: None, base=base, subnet=SUBNET)
        yield cluster
    finally:
        if request.node.stash.get(FAILED_KEY, False):
            dump_logs(cluster)
        cluster.down()


def running_tasks(service: Any) -> list[dict[str, Any]]:
    return [t for t in service.tasks(filters={"desired-state": "running"}) if t["Status"]["State"] == "running"]


def test_docker_py_manages_services_and_reads_tasks_and_nodes(swarm: Cluster) -> None:
    client = docker.DockerClient(base_url=f"unix://{swarm.manager.socket}")  # version="auto": GET /version
    assert client.api.api_version == "1.47"
    assert client.version()["ApiVersion"] == "1.47"

    nodes = client.nodes.list()
    assert sorted(n.attrs["Description"]["Hostname"] for n in nodes) == ["manager1", "worker1", "worker2"]
    managers = client.nodes.list(filters={"role": "manager"})
    assert [n.attrs["Description"]["Hostname"] for n in managers] == ["manager1"]
    assert managers[0].attrs["ManagerStatus"]["Leader"] is True
    swarm_id = client.swarm.attrs["ID"]
    assert swarm_id and client.swarm.attrs["JoinTokens"]["Worker"].startswith("SWMTKN-1-")

    service = client.services.create("busybox", command=["sleep", "600"], name="pyweb",
                                     labels={"team": "docs"})
    assert service.name == "pyweb"
    assert [s.name for s in client.services.list(filters={"name": "pyw"})] == ["pyweb"]
    assert [s.name for s in client.services.list(filters={"label": "team=docs"})] == ["pyweb"]
    assert client.services.list(filters={"name": "other"}) == []
    listed = client.api.services(status=True)  # docker-py sends status=True
    assert listed[0]["ServiceStatus"]["DesiredTasks"] == 1
    wait_for("one running task", lambda: len(running_tasks(service)) == 1)

    # Service.scale sends {"replicated": {"Replicas": 3}}, which Docker's Go decoder matches case-insensitively.
    assert service.scale(3) is not None
    service.reload()
    assert service.attrs["Spec"]["Mode"] == {"Replicated": {"Replicas": 3}}
    def three_running() -> list[dict[str, Any]] | None:
        tasks = running_tasks(service)
        return tasks if len(tasks) == 3 else None

    tasks = wait_for("three running tasks", three_running)
    assert sorted(t["Slot"] for t in tasks) == [1, 2, 3]
    assert {t["NodeID"] for t in tasks} == {n.id for n in nodes}

    service.reload()
    service.update(command=["sleep", "700"])
    service.reload()
    container = service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]
    assert container["Command"] == ["sleep", "700"] and container["Image"] == "busybox"
    assert service.attrs["PreviousSpec"]["TaskTemplate"]["ContainerSpec"]["Command"] == ["sleep", "600"]
    wait_for("the update to finish", lambda: (service.reload() or True)
             and (service.attrs.get("UpdateStatus") or {}).get("State") == "completed", timeout=60)
    defaults = client.api.inspect_service(service.id, insert_defaults=True)["Spec"]
    assert defaults["UpdateConfig"]["FailureAction"] == "pause" and "RollbackConfig" in defaults

    with pytest.raises(docker.errors.NotFound):
        client.services.get("nosuch")
    with pytest.raises(docker.errors.APIError) as refused:
        client.services.create("Not A Valid Image", name="bad")
    assert refused.value.status_code == 400 and "is not a valid repository/tag" in str(refused.value.explanation)
    assert [s.name for s in client.services.list()] == ["pyweb"]

    service.remove()
    wait_for("no services", lambda: client.services.list() == [])
    wait_for("the removed service's tasks to go", lambda: client.api.tasks(filters={"service": service.id}) == [])
