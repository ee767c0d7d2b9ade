"""Stacks on a real playground: deploy from compose files through shoal's CLI and the docker CLI, redeploy
changing only what changed, ls/services/ps, prune and rm; virtual IPs and task addresses from the networks."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import dns.message
import dns.query
import pytest

from tests.cluster.conftest import Cluster, wait_for

pytestmark = pytest.mark.cluster

COMPOSE = """
services:
  web:
    image: busybox
    command: sleep 600
    ports: ["18080:8080"]
    networks: [front, back]
    depends_on: [api]
  api:
    image: busybox
    command: sleep 600
    environment: {ROLE: "${ROLE:-api}"}
    deploy:
      replicas: 2
      update_config: {parallelism: 2}
    networks:
      back: {aliases: [backend]}
    secrets: [db_pw]
  db:
    image: busybox
    command: sleep 600
    deploy: {endpoint_mode: dnsrr}
    networks: [back]
networks:
  front: {}
  back: {}
secrets:
  db_pw: {file: ./db_pw.txt}
"""


def compose_dir(tmp_path: Path, text: str = COMPOSE) -> Path:
    (tmp_path / "db_pw.txt").write_text("s3cret")
    (tmp_path / "compose.yml").write_text(textwrap.dedent(text))
    return tmp_path / "compose.yml"


def lookup(server: str, name: str) -> list[str]:
    """The A records a node's DNS server gives for `name`."""
    answer = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=5)
    return sorted(item.address for rrset in answer.answer for item in rrset)


def in_subnet(address: str, network: dict[str, object]) -> bool:
    subnet = ipaddress.ip_network(network["IPAM"]["Config"][0]["Subnet"])  # type: ignore[index]
    return ipaddress.ip_interface(address).ip in subnet


def test_a_stack_deploys_redeploys_and_goes_away_through_shoals_cli(cluster: Cluster, tmp_path: Path) -> None:
    compose = compose_dir(tmp_path)
    deployed = cluster.shoal("stack", "deploy", "-c", str(compose), "app")
    assert deployed.code == 0, deployed.err
    assert "Ignoring unsupported options: depends_on" in deployed.err
    for line in ("Creating network app_back", "Creating network app_front", "Creating secret app_db_pw",
                 "Creating service app_api", "Creating service app_db", "Creating service app_web"):
        assert line in deployed.out

    assert cluster.ok("stack", "ls").split() == ["NAME", "SERVICES", "app", "3"]
    services = cluster.ok("stack", "services", "app")
    assert [line.split()[1] for line in services.splitlines()[1:]] == ["app_api", "app_db", "app_web"]
    cluster.wait_running("app_api", 2)
    cluster.wait_running("app_web", 1)
    ps = cluster.ok("stack", "ps", "app")
    assert ps.count("app_api.") == 2 and "app_web.1" in ps and "app_db.1" in ps

    # Addresses: a VIP per network for vip services, none for dnsrr; each task one address per network.
    back, front = cluster.get("/networks/app_back"), cluster.get("/networks/app_front")
    web = wait_for("web's virtual IPs", lambda: cluster.get("/services/app_web")["Endpoint"].get("VirtualIPs"))
    assert {v["NetworkID"] for v in web} == {back["Id"], front["Id"]}
    assert all(in_subnet(v["Addr"], back if v["NetworkID"] == back["Id"] else front) for v in web)
    assert not cluster.get("/services/app_db")["Endpoint"].get("VirtualIPs")
    api_vip = wait_for("api's VIP", lambda: cluster.get("/services/app_api")["Endpoint"].get("VirtualIPs"))
    task_addresses = [a for t in cluster.running("app_api") for att in t["NetworksAttachments"]
                      for a in att["Addresses"]]
    assert len(task_addresses) == 2 and all(in_subnet(a, back) for a in task_addresses)
    assert len(set(task_addresses) | {api_vip[0]["Addr"]}) == 3
    api = cluster.get("/services/app_api")
    assert api["Spec"]["TaskTemplate"]["Networks"] == [{"Target": back["Id"], "Aliases": ["api", "backend"]}]

    # Each node's DNS server answers the names of its tasks' networks.
    addr = {n["ID"]: n["Status"]["Addr"] for n in cluster.get("/nodes")}[cluster.running("app_api")[0]["NodeID"]]
    api_ips = sorted(str(ipaddress.ip_interface(a).ip) for a in task_addresses)
    assert wait_for("tasks.api on the node's DNS", lambda: lookup(addr, "tasks.api") == api_ips or None)
    vip = str(ipaddress.ip_interface(api_vip[0]["Addr"]).ip)
    assert lookup(addr, "api") == lookup(addr, "app_api") == lookup(addr, "backend") == [vip]
    db_ips = [str(ipaddress.ip_interface(a).ip) for t in cluster.running("app_db") for att in t["NetworksAttachments"]
              for a in att["Addresses"]]
    assert lookup(addr, "db") == db_ips  # dnsrr: the task itself

    # A redeploy of the same files changes nothing; a changed file updates only the changed service.
    versions = {s["Spec"]["Name"]: s["Version"]["Index"] for s in cluster.get("/services")}
    again = cluster.shoal("stack", "deploy", "-c", str(compose), "app")
    assert again.code == 0 and "Updating service" not in again.out and "Creating" not in again.out, again.out
    assert {s["Spec"]["Name"]: s["Version"]["Index"] for s in cluster.get("/services")} == versions
    old_api_tasks = {t["ID"] for t in cluster.running("app_api")}
    changed = cluster.shoal("stack", "deploy", "-c", str(compose), "app", environ={"ROLE": "api-v2"})
    assert changed.code == 0, changed.err
    assert "Updating service app_api" in changed.out and "app_web" not in changed.out
    wait_for("api rolled", lambda: {t["ID"] for t in cluster.running("app_api")}.isdisjoint(old_api_tasks)
             and len(cluster.running("app_api")) == 2, timeout=60)
    assert {s["Spec"]["Name"]: s["Version"]["Index"] for s in cluster.get("/services")}["app_web"] == \
        versions["app_web"]
    assert cluster.get("/services/app_api")["Endpoint"]["VirtualIPs"] == api_vip  # an update keeps its VIP

    # --prune removes the services the files no longer name.
    smaller = compose_dir(tmp_path, COMPOSE.split("  db:")[0] + "networks:\n  front: {}\n  back: {}\n"
                          "secrets:\n  db_pw: {file: ./db_pw.txt}\n")
    pruned = cluster.shoal("stack", "deploy", "--prune", "-c", str(smaller), "app")
    assert pruned.code == 0 and "Removing service app_db" in pruned.out, pruned.out + pruned.err
    assert sorted(s["Spec"]["Name"] for s in cluster.get("/services")) == ["app_api", "app_web"]

    removed = cluster.shoal("stack", "rm", "app")
    assert removed.code == 0, removed.err
    assert "Removing network app_back" in removed.out and "Removing secret app_db_pw" in removed.out
    assert cluster.get("/services") == []
    assert [n["Name"] for n in cluster.get("/networks")] == ["ingress"]
    assert cluster.get("/secrets") == []


def test_a_bad_compose_file_changes_nothing(cluster: Cluster, tmp_path: Path) -> None:
    compose = compose_dir(tmp_path, COMPOSE.replace("replicas: 2", "replicas: two"))
    refused = cluster.shoal("stack", "deploy", "-c", str(compose), "app")
    assert refused.code != 0 and "services.api.deploy.replicas: 'two' is not of type" in refused.err
    assert refused.err.count("\n") == 1, refused.err
    assert cluster.get("/services") == [] and cluster.get("/secrets") == []
    assert [n["Name"] for n in cluster.get("/networks")] == ["ingress"]

    # One the swarm refuses half-way: the error says what was made before it.
    refused_spec = compose_dir(tmp_path, "services:\n  one: {image: busybox, deploy: {placement: "
                                         "{constraints: ['node.colour==red']}}}\n")
    half = cluster.shoal("stack", "deploy", "-c", str(refused_spec), "half")
    assert half.code != 0 and half.err.count("\n") == 1, half.err
    assert "node.colour" in half.err and "stack half is deployed in part: creating network half_default" in half.err


@pytest.mark.skipif(not shutil.which("docker"), reason="no docker CLI")
def test_the_docker_cli_deploys_lists_and_removes_a_stack(cluster: Cluster, tmp_path: Path) -> None:
    compose = compose_dir(tmp_path)
    env = dict(os.environ, DOCKER_HOST=f"unix://{cluster.manager.socket}")
    env.pop("DOCKER_CONTEXT", None)

    def docker(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, env=env, timeout=60)

    deployed = docker("stack", "deploy", "--resolve-image", "never", "-c", str(compose), "dapp")
    assert deployed.returncode == 0, deployed.stderr
    assert "Creating service dapp_api" in deployed.stdout
    api = cluster.get("/services/dapp_api")
    assert api["Spec"]["Labels"]["com.docker.stack.namespace"] == "dapp"
    back = cluster.get("/networks/dapp_back")
    assert api["Spec"]["TaskTemplate"]["Networks"][0]["Target"] == back["Id"]
    cluster.wait_running("dapp_api", 2)

    again = docker("stack", "deploy", "--resolve-image", "never", "-c", str(compose), "dapp")
    assert again.returncode == 0, again.stderr
    listed = docker("stack", "ls")
    assert listed.returncode == 0 and "dapp" in listed.stdout, listed.stderr
    services = docker("stack", "services", "dapp")
    assert services.returncode == 0 and "dapp_web" in services.stdout, services.stderr
    ps = docker("stack", "ps", "dapp")
    assert ps.returncode == 0 and "dapp_api.1" in ps.stdout, ps.stderr
    assert "dapp" in cluster.ok("stack", "ls")

    removed = docker("stack", "rm", "dapp")
    assert removed.returncode == 0, removed.stderr
    wait_for("stack gone", lambda: cluster.get("/services") == [] and
             [n["Name"] for n in cluster.get("/networks")] == ["ingress"])
