"""Real containers on a 3-node swarm whose daemons all use the docker executor on this machine's Docker Engine:
replicas spread as named, labelled containers; a lost worker's tasks replaced elsewhere; a rolling update of
the image between two locally built tags, and its rollback; logs; a missing image; removal.

Every node shares the one engine, so containers are told apart by their `com.docker.swarm.node.id` label: a
container belongs to this test's cluster when that label names one of the cluster's nodes. Those containers are
removed after each test, whatever its outcome.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest

from tests.cluster.conftest import FAILED_KEY, Cluster, dump_logs, make_cluster, wait_for
from tests.dockerimages import IMAGE_1, IMAGE_2, ImagesUnavailable, ensure_busybox_images

pytestmark = pytest.mark.cluster

LABEL_SERVICE_NAME = "com.docker.swarm.service.name"
LABEL_TASK_ID = "com.docker.swarm.task.id"
LABEL_NODE_ID = "com.docker.swarm.node.id"
SLEEP = ("sleep", "100000")
CONVERGE_SECONDS = 90.0
STOP_GRACE = "1s"


@pytest.fixture(scope="module")
def engine() -> Iterator[docker.DockerClient]:
    """The machine's Docker Engine with the test images built; the module is skipped when neither can be had."""
    try:
        ensure_busybox_images()
        client = docker.from_env(version="auto")
        client.ping()
    except (ImagesUnavailable, docker.errors.DockerException, OSError) as exc:
        pytest.skip(f"the docker executor's cluster tests need a Docker Engine and the test images: {exc}")
    try:
        yield client
    finally:
        client.close()


class DockerSwarm:
    """A shoal cluster with the docker executor, and the engine its containers run on."""

    def __init__(self, cluster: Cluster, engine: docker.DockerClient) -> None:
        self.cluster = cluster
        self.engine = engine
        # Kept from the start: a removed or killed node's containers still belong to this cluster.
        self.node_ids: dict[str, str] = cluster.node_ids()

    def containers(self, service: str | None = None, all_states: bool = False) -> list[Any]:
        """This cluster's containers (running ones unless `all_states`), of one service if given."""
        filters = {"label": f"{LABEL_SERVICE_NAME}={service}"} if service else {"label": LABEL_NODE_ID}
        ours = set(self.node_ids.values())
        return [c for c in self.engine.containers.list(all=all_states, filters=filters)
                if c.labels.get(LABEL_NODE_ID) in ours]

    def containers_on(self, node: str, service: str | None = None, all_states: bool = False) -> list[Any]:
        return [c for c in self.containers(service, all_states) if c.labels[LABEL_NODE_ID] == self.node_ids[node]]

    def images_of(self, service: str) -> list[str]:
        return sorted(c.attrs["Config"]["Image"] for c in self.containers(service))

    def remove_all_containers(self) -> None:
        for container in self.containers(all_states=True):
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                container.remove(force=True)

    def wait_containers(self, service: str, image: str, count: int) -> list[Any]:
        """Wait until the service runs exactly `count` containers, all of `image`, with as many tasks running."""
        def settled() -> list[Any] | None:
            containers = self.containers(service)
            if len(containers) != count or any(c.attrs["Config"]["Image"] != image for c in containers):
                return None
            return containers if len(self.cluster.running(service)) == count else None
        return wait_for(f"{count} running containers of {service} on {image}", settled, timeout=CONVERGE_SECONDS)


def docker_swarm_fixture(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                         engine: docker.DockerClient) -> Iterator[DockerSwarm]:
    cluster = make_cluster(tmp_path_factory, managers=1, workers=2, executor="docker")
    swarm = DockerSwarm(cluster, engine)
    try:
        yield swarm
    finally:
        if request.node.stash.get(FAILED_KEY, False):
            dump_logs(cluster)
        cluster.down()
        swarm.remove_all_containers()


@pytest.fixture
def swarm(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
          engine: docker.DockerClient) -> Iterator[DockerSwarm]:
    """A fresh 3-node cluster with the docker executor; its containers are removed afterwards."""
    yield from docker_swarm_fixture(request, tmp_path_factory, engine)


def create(swarm: DockerSwarm, name: str, replicas: int, image: str = IMAGE_1, *command: str) -> None:
    # `sleep` as a container's PID 1 ignores SIGTERM: a short grace keeps each stop from taking Docker's 10s.
    swarm.cluster.ok("service", "create", "-d", "--name", name, "--replicas", str(replicas),
                     "--stop-grace-period", STOP_GRACE, image, *(command or SLEEP))


def test_replicas_spread_as_named_containers_and_a_lost_worker_is_replaced(swarm: DockerSwarm) -> None:
    cluster = swarm.cluster
    create(swarm, "web", 6)
    tasks = cluster.wait_running("web", 6, timeout=CONVERGE_SECONDS)
    assert cluster.placement("web") == {"manager1": 2, "worker1": 2, "worker2": 2}

    # The real containers, as `docker ps --filter label=com.docker.swarm.service.name=web` lists them.
    listed = subprocess.run(["docker", "ps", "--filter", f"label={LABEL_SERVICE_NAME}=web",
                             "--format", "{{.Names}} {{.Label \"" + LABEL_NODE_ID + "\"}}"],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    ours = set(swarm.node_ids.values())
    names = sorted(line.split()[0] for line in listed if line.strip() and line.split()[-1] in ours)
    assert names == sorted(f"web.{t['Slot']}.{t['ID']}" for t in tasks)
    for task in tasks:
        (container,) = [c for c in swarm.containers("web") if c.labels[LABEL_TASK_ID] == task["ID"]]
        assert container.labels[LABEL_NODE_ID] == task["NodeID"]
        assert container.attrs["Config"]["Image"] == IMAGE_1
        assert container.attrs["Config"]["Cmd"] == list(SLEEP)

    # The whole of worker1 goes: its daemon, then its containers.
    lost = {c.labels[LABEL_TASK_ID] for c in swarm.containers_on("worker1", "web")}
    assert len(lost) == 2
    cluster.kill("worker1")
    for container in swarm.containers_on("worker1", all_states=True):
        container.remove(force=True)
    wait_for("worker1 to be down", lambda: cluster.node_state("worker1") == "down", timeout=60)
    replaced = cluster.wait_running("web", 6, timeout=CONVERGE_SECONDS)
    assert not lost & {t["ID"] for t in replaced}
    assert cluster.placement("web") == {"manager1": 3, "worker2": 3}
    containers = swarm.wait_containers("web", IMAGE_1, 6)
    assert {c.labels[LABEL_TASK_ID] for c in containers} == {t["ID"] for t in replaced}
    assert not swarm.containers_on("worker1", all_states=True)


def test_rolling_update_of_the_image_then_rollback(swarm: DockerSwarm) -> None:
    cluster = swarm.cluster
    create(swarm, "web", 6)
    before = {c.labels[LABEL_TASK_ID] for c in swarm.wait_containers("web", IMAGE_1, 6)}

    cluster.ok("service", "update", "--image", IMAGE_2, "--update-parallelism", "2", "web", timeout=180)
    updated = swarm.wait_containers("web", IMAGE_2, 6)
    assert not before & {c.labels[LABEL_TASK_ID] for c in updated}
    # The containers really run the new image's file system.
    assert updated[0].exec_run(["cat", "/etc/shoal-image"]).output.decode().strip() == "2"
    history = cluster.ok("service", "ps", "web")
    assert history.count(r"\_ web.") >= 6, history
    assert IMAGE_1 in history and IMAGE_2 in history

    cluster.ok("service", "rollback", "web", timeout=180)
    rolled_back = swarm.wait_containers("web", IMAGE_1, 6)
    assert rolled_back[0].exec_run(["cat", "/etc/shoal-image"]).output.decode().strip() == "1"
    assert cluster.get("/services/web")["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"] == IMAGE_1


def test_service_logs_show_the_containers_output(swarm: DockerSwarm) -> None:
    cluster = swarm.cluster
    create(swarm, "talker", 2, IMAGE_1, "sh", "-c", 'echo "hello from image $(cat /etc/shoal-image)"; sleep 100000')
    tasks = cluster.wait_running("talker", 2, timeout=CONVERGE_SECONDS)

    def both_said_hello() -> str | None:
        out = cluster.ok("service", "logs", "talker")
        lines = [line for line in out.splitlines() if "hello from image 1" in line]
        return out if len(lines) == 2 else None

    out = both_said_hello() or wait_for("both tasks' output in service logs", both_said_hello)
    for task in tasks:
        assert f"talker.{task['Slot']}." in out, out


def test_a_container_reads_its_secret_and_config_at_dockers_paths(swarm: DockerSwarm) -> None:
    cluster = swarm.cluster
    env = dict(os.environ, SHOAL_HOST=f"unix://{cluster.manager.socket}")
    for kind, name, value in (("secret", "db", b"s3cr3t-in-a-container"), ("config", "app.conf", b"port=80\n")):
        subprocess.run([sys.executable, "-m", "shoal", kind, "create", name, "-"], input=value, env=env, check=True,
                       capture_output=True, timeout=60)
    cluster.ok("service", "create", "-d", "--name", "reader", "--stop-grace-period", STOP_GRACE,
               "--secret", "source=db,mode=0400", "--config", "app.conf", IMAGE_1, "sh", "-c",
               'cat /run/secrets/db; echo; stat -c "%a" /run/secrets/db; cat /app.conf; sleep 100000')
    (task,) = cluster.wait_running("reader", 1, timeout=CONVERGE_SECONDS)

    def said() -> str | None:
        out = cluster.ok("service", "logs", "--raw", "reader")
        return out if "port=80" in out else None

    assert (said() or wait_for("the container's output", said)).split() == ["s3cr3t-in-a-container", "400",
                                                                             "port=80"]
    (container,) = swarm.containers("reader")
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert set(mounts) == {"/run/secrets/db", "/app.conf"}
    assert all(not m["RW"] and m["Source"].startswith("/dev/shm/") for m in mounts.values()), mounts


def test_a_missing_image_is_a_rejected_task_with_a_clear_error(swarm: DockerSwarm) -> None:
    cluster = swarm.cluster
    missing = "shoal-busybox:does-not-exist"
    create(swarm, "ghost", 1, missing)

    def rejected_row() -> str | None:
        out = cluster.ok("service", "ps", "--no-trunc", "ghost")
        return next((line for line in out.splitlines() if "Rejected" in line), None)

    row = wait_for("a rejected task of ghost", rejected_row, timeout=CONVERGE_SECONDS)
    assert f"No such image: {missing}" in row, row
    assert not swarm.containers("ghost", all_states=True)


def test_limits_are_the_containers_and_an_oom_kill_is_the_tasks_error(swarm: DockerSwarm) -> None:
    cluster = swarm.cluster
    cluster.ok("service", "create", "-d", "--name", "capped", "--stop-grace-period", STOP_GRACE, "--limit-cpu", "0.5",
               "--limit-memory", "64m", "--limit-pids", "50", "--reserve-memory", "16m", IMAGE_1, *SLEEP)
    cluster.ok("service", "create", "-d", "--name", "hog", "--limit-memory", "32m", "--restart-condition", "none",
               IMAGE_1, "dd", "if=/dev/zero", "of=/dev/null", "bs=200M", "count=1")
    (container,) = swarm.wait_containers("capped", IMAGE_1, 1)
    host_config = container.attrs["HostConfig"]
    assert (host_config["NanoCpus"], host_config["Memory"], host_config["PidsLimit"]) == (500_000_000, 64 << 20, 50)
    assert host_config["MemoryReservation"] == 0  # a reservation is the scheduler's, as in swarm mode

    def failed_row() -> str | None:
        out = cluster.ok("service", "ps", "--no-trunc", "hog")
        return next((line for line in out.splitlines() if "Failed" in line), None)

    row = wait_for("the hog task to fail", failed_row, timeout=CONVERGE_SECONDS)
    assert "task: non-zero exit (137): out of memory: OOM killed at its memory limit of 32MiB" in row, row


def test_service_rm_leaves_no_container(swarm: DockerSwarm) -> None:
    cluster = swarm.cluster
    create(swarm, "web", 6)
    swarm.wait_containers("web", IMAGE_1, 6)
    cluster.ok("service", "rm", "web")
    wait_for("web's containers to be removed", lambda: not swarm.containers("web", all_states=True),
             timeout=CONVERGE_SECONDS)
    assert cluster.get("/services") == []


def test_the_routing_mesh_reaches_the_containers_target_port(swarm: DockerSwarm) -> None:
    """-p 8095:80 with containers listening on 80: every node answers, from both containers."""
    cluster = swarm.cluster
    httpd = 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www'
    cluster.ok("service", "create", "-d", "--name", "site", "--replicas", "2", "-p", "8095:80",
               "--stop-grace-period", STOP_GRACE, IMAGE_1, "sh", "-c", httpd)
    containers = swarm.wait_containers("site", IMAGE_1, 2)
    hostnames = {c.attrs["Config"]["Hostname"] for c in containers}

    def answered(address: str) -> set[str]:
        seen = set()
        for _ in range(8):
            with urllib.request.urlopen(f"http://{address}:8095/", timeout=3) as response:
                seen.add(response.read().decode().strip())
        return seen

    for node in cluster.nodes:
        assert wait_for(f"both containers answering through {node.name}",
                        lambda a=node.address: answered(a) == hostnames or None, timeout=CONVERGE_SECONDS)
