"""Swarm networks as objects: the ingress network, create/ls/inspect/rm through shoal's CLI, the docker CLI and
docker-py, service attachments resolved by name, and refusals (unknown, overlapping, in use)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.cluster.conftest import Cluster

pytestmark = pytest.mark.cluster


def test_networks_through_the_cli_and_services_attached_to_them(cluster: Cluster) -> None:
    listed = [line.split() for line in cluster.ok("network", "ls").splitlines()]
    assert listed[0] == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE"]
    assert [row[1:] for row in listed[1:]] == [["ingress", "overlay", "swarm"]]

    back_id = cluster.ok("network", "create", "-d", "overlay", "--label", "tier=back", "back").strip()
    back = cluster.get("/networks/back")
    assert back["Id"] == back_id and back["Scope"] == "swarm" and back["Labels"] == {"tier": "back"}
    assert back["IPAM"]["Config"] == [{"Subnet": "10.0.1.0/24", "Gateway": "10.0.1.1"}]

    for argv, message in ((["--subnet", "10.0.1.0/25", "clash"], "overlaps 10.0.1.0/24"),
                          (["-d", "bridge", "local"], 'driver "overlay"'),
                          (["back"], "already exists")):
        refused = cluster.shoal("network", "create", *argv)
        assert refused.code != 0 and message in refused.err and refused.err.count("\n") == 1, refused.err
    assert sorted(n["Name"] for n in cluster.get("/networks")) == ["back", "ingress"]

    unknown = cluster.shoal("service", "create", "-d", "--name", "web", "--network", "nope", "busybox", "true")
    assert unknown.code != 0 and unknown.err.strip().endswith("network nope not found")
    assert cluster.get("/services") == []
    cluster.ok("service", "create", "-d", "--name", "web", "--network", "name=back,alias=www", "busybox", "sleep",
               "600")
    attached = cluster.get("/services/web")["Spec"]["TaskTemplate"]["Networks"]
    assert attached == [{"Target": back_id, "Aliases": ["www"]}]

    in_use = cluster.shoal("network", "rm", "back")
    assert in_use.code != 0 and "network back is in use by service web" in in_use.err
    cluster.ok("service", "update", "-d", "--network-rm", "back", "web")
    assert not cluster.get("/services/web")["Spec"]["TaskTemplate"].get("Networks")
    assert cluster.ok("network", "rm", "back").strip() == "back"
    assert [n["Name"] for n in cluster.get("/networks")] == ["ingress"]


@pytest.mark.skipif(not shutil.which("docker"), reason="no docker CLI")
def test_the_docker_cli_and_docker_py_manage_swarm_networks(cluster: Cluster) -> None:
    env = dict(os.environ, DOCKER_HOST=f"unix://{cluster.manager.socket}")
    env.pop("DOCKER_CONTEXT", None)

    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=60)

    created = docker("network", "create", "-d", "overlay", "--subnet", "10.20.0.0/24", "dnet")
    assert created.returncode == 0, created.stderr
    assert "dnet" in docker("network", "ls").stdout
    assert '"Scope": "swarm"' in docker("network", "inspect", "dnet").stdout
    service = docker("service", "create", "-d", "--name", "dsvc", "--network", "dnet", "busybox", "sleep", "600")
    assert service.returncode == 0, service.stderr
    assert cluster.get("/services/dsvc")["Spec"]["TaskTemplate"]["Networks"][0]["Target"] == created.stdout.strip()
    refused = docker("network", "rm", "dnet")
    assert refused.returncode != 0 and "in use by service dsvc" in refused.stderr
    assert docker("service", "rm", "dsvc").returncode == 0
    assert docker("network", "rm", "dnet").returncode == 0

    docker_py = pytest.importorskip("docker")
    client = docker_py.DockerClient(base_url=f"unix://{cluster.manager.socket}")
    network = client.networks.create("pynet", driver="overlay", labels={"made-by": "docker-py"})
    assert [n.name for n in client.networks.list(names=["pynet"])] == ["pynet"]
    assert client.networks.get(network.id).attrs["Labels"] == {"made-by": "docker-py"}
    network.remove()
    assert [n.name for n in client.networks.list()] == ["ingress"]
