"""The seed's commands, verbatim, with the real docker CLI pointed at shoal (DOCKER_HOST=unix://<socket>).

The nodes start outside any swarm, so `docker swarm init` / `join` build the swarm as they would with Docker;
`--listen-addr` keeps each node's swarm port on its own loopback address (the CLI's default 0.0.0.0:2377 is
for one node per machine). Tasks run with the process executor: the image is only recorded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import playground
from shoal.playground import PlaygroundNode
from tests.cluster.conftest import Cluster, Result, wait_for

pytestmark = pytest.mark.cluster

SUBNET = "127.0.61"
LOOP = "while true; do echo hello world; sleep 1; done"


def docker_binaries() -> list[str]:
    """Debian's docker.io CLI (API 1.41) first, then a current one (negotiates 1.47), whichever exist."""
    found = [path for path in ("/usr/bin/docker", "/usr/local/bin/docker") if Path(path).is_file()]
    if not found and shutil.which("docker"):
        found.append(str(shutil.which("docker")))
    return found


DOCKERS = docker_binaries()


class DockerCLI:
    def __init__(self, binary: str, cluster: Cluster) -> None:
        self.binary = binary
        self.cluster = cluster

    def run(self, *args: str, node: str = "manager1", timeout: float = 90) -> Result:
        env = dict(os.environ, DOCKER_HOST=f"unix://{self.cluster.node(node).socket}")
        env.pop("DOCKER_CONTEXT", None)
        proc = subprocess.run([self.binary, *args], capture_output=True, text=True, env=env, timeout=timeout)
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, node: str = "manager1") -> str:
        result = self.run(*args, node=node)
        assert result.code == 0, f"docker {' '.join(args)} failed ({result.code}): {result.err}{result.out}"
        return result.out


@pytest.fixture
def bare_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Three shoal daemons that are not in a swarm yet."""
    base = tmp_path_factory.mktemp("dockercli")
    cluster = Cluster(base, SUBNET)
    try:
        for index, name in enumerate(("manager1", "worker1", "worker2")):
            address = f"{SUBNET}.{playground.FIRST_ADDRESS + index}"
            port = playground.free_udp_port()  # each node its own data-path port: they share this host
            proc, state_dir, sock = playground.start_daemon(
                name, base, ["--publish-addr", address, "--routing-mesh", "userspace", "--data-path-port", str(port)])
            cluster.nodes.append(PlaygroundNode(name, "manager" if index == 0 else "worker", address, proc.pid,
                                                str(sock), str(state_dir), data_path_port=port))
            cluster._save()
            playground.wait_for_socket(sock, proc)
        yield cluster
    finally:
        cluster.down()


def table_header(output: str) -> list[str]:
    return re.split(r"\s{2,}", output.splitlines()[0].strip())


def rows(output: str) -> list[str]:
    return output.splitlines()[1:]


def converged(output: str, service: str) -> bool:
    """The progress loop's last line; docker 20.10 leaves the service out of it."""
    return output.splitlines()[-1] in (f"verify: Service {service} converged", "verify: Service converged")


@pytest.mark.skipif(not DOCKERS, reason="no docker CLI installed (Debian's docker.io provides /usr/bin/docker)")
def test_seed_commands_with_the_real_docker_cli(bare_nodes: Cluster) -> None:
    cluster = bare_nodes
    docker = DockerCLI(DOCKERS[0], cluster)
    manager, worker1, worker2 = (cluster.node(n).address for n in ("manager1", "worker1", "worker2"))

    # ---- swarm init / join-token / join --------------------------------------------------------------
    out = docker.ok("swarm", "init", "--advertise-addr", manager, "--listen-addr", f"{manager}:2377")
    assert re.search(r"Swarm initialized: current node \([0-9a-z]{25}\) is now a manager\.", out), out
    join = re.search(r"^\s+(docker swarm join --token (SWMTKN-1-\S+) (\S+))$", out, re.MULTILINE)
    assert join is not None, out
    assert join.group(3) == f"{manager}:2377"
    assert "To add a manager to this swarm, run 'docker swarm join-token manager'" in out
    worker_token = join.group(2)
    assert docker.ok("swarm", "join-token", "-q", "worker").strip() == worker_token
    manager_join = docker.ok("swarm", "join-token", "manager")
    assert "To add a manager to this swarm, run the following command:" in manager_join
    assert "docker swarm join --token SWMTKN-1-" in manager_join and worker_token not in manager_join

    # The printed join command, run verbatim on a worker (plus its own addresses on this shared machine).
    command = join.group(1).split()[1:]
    joined = docker.ok(*command, "--advertise-addr", worker1, "--listen-addr", f"{worker1}:2377", node="worker1")
    assert joined.strip() == "This node joined a swarm as a worker."

    rotated = docker.ok("swarm", "join-token", "--rotate", "worker")
    assert rotated.startswith("Successfully rotated worker join token.")
    new_token = docker.ok("swarm", "join-token", "-q", "worker").strip()
    assert new_token != worker_token and new_token in rotated
    refused = docker.run("swarm", "join", "--token", worker_token, "--advertise-addr", worker2,
                         "--listen-addr", f"{worker2}:2377", f"{manager}:2377", node="worker2")
    assert refused.code != 0 and refused.err.startswith("Error response from daemon: "), refused
    docker.ok("swarm", "join", "--token", new_token, "--advertise-addr", worker2, "--listen-addr",
              f"{worker2}:2377", f"{manager}:2377", node="worker2")
    assert "already part of a swarm" in docker.run("swarm", "init", "--advertise-addr", manager).err

    # ---- node ls ------------------------------------------------------------------------------------
    def all_ready() -> str | None:
        out = docker.ok("node", "ls")
        return out if out.count(" Ready ") == 3 else None

    nodes = wait_for("three ready nodes in docker node ls", all_ready)
    assert table_header(nodes) == ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"]
    me = next(row for row in rows(nodes) if "manager1" in row)
    assert re.match(r"[0-9a-z]{25} \*\s+manager1\s+Ready\s+Active\s+Leader", me), me

    # ---- services -----------------------------------------------------------------------------------
    generated = docker.ok("service", "create", "-d", "busybox", "sh", "-c", LOOP).strip()
    created = docker.ok("service", "create", "--name", "myweb", "--replicas", "2", "-p", "80:80", "busybox",
                        "sleep", "100000")
    lines = created.splitlines()
    assert re.fullmatch(r"[0-9a-z]{25}", lines[0]), created
    assert "overall progress: 2 out of 2 tasks" in lines
    assert converged(created, lines[0])
    docker.ok("service", "create", "-d", "--name", "global_web", "--mode", "global", "busybox", "sleep", "100000")

    def listed() -> str | None:
        out = docker.ok("service", "ls")
        return out if "3/3" in out and "2/2" in out and "1/1" in out else None

    services = wait_for("services running in docker service ls", listed)
    assert table_header(services) == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
    myweb = next(row for row in rows(services) if " myweb " in row).split()
    assert myweb[1:] == ["myweb", "replicated", "2/2", "busybox:latest", "*:80->80/tcp"]
    assert next(row for row in rows(services) if "global_web" in row).split()[1:4] == ["global_web", "global", "3/3"]
    generated_name = next(row.split()[1] for row in rows(services) if row.startswith(generated[:12]))

    ps = docker.ok("service", "ps", "myweb")
    assert table_header(ps) == ["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"]
    assert sorted(row.split()[1] for row in rows(ps)) == ["myweb.1", "myweb.2"]

    def logged() -> str | None:
        out = docker.ok("service", "logs", "--tail", "5", generated_name)
        return out if "| hello world" in out else None

    logs = wait_for("hello world in docker service logs", logged)
    assert re.search(rf"^{re.escape(generated_name)}\.1\.[0-9a-z]{{12}}@\S+\s+\| hello world$", logs, re.MULTILINE)

    scaled = docker.ok("service", "scale", "myweb=4")
    assert scaled.splitlines()[0] == "myweb scaled to 4"
    assert "overall progress: 4 out of 4 tasks" in scaled and converged(scaled, "myweb")

    pretty = docker.ok("service", "inspect", "--pretty", "myweb")
    for expected in ("Name:\t\tmyweb", "Service Mode:\tReplicated", " Replicas:\t4", " Image:\t\tbusybox:latest",
                     " Args:\t\tsleep 100000", "Endpoint Mode:\tvip", " PublishedPort = 80", "UpdateConfig:",
                     " Parallelism:\t1", "RollbackConfig:"):
        assert expected in pretty, (expected, pretty)
    raw = json.loads(docker.ok("service", "inspect", "myweb"))
    assert raw[0]["Spec"]["Mode"] == {"Replicated": {"Replicas": 4}}

    # ---- rolling update, history rows, rollback ------------------------------------------------------
    docker.ok("service", "create", "-d", "--replicas", "4", "--name", "myweb3", "--update-delay", "1s",
              "--update-parallelism", "2", "busybox", "sleep", "1000")
    cluster.wait_running("myweb3", 4)
    updated = docker.ok("service", "update", "--args", "sleep 2000", "myweb3")
    assert updated.splitlines()[0] == "myweb3"
    assert "overall progress: 4 out of 4 tasks" in updated and converged(updated, "myweb3")
    history = docker.ok("service", "ps", "myweb3")
    history_rows = [row for row in rows(history) if " \\_ myweb3." in row]
    assert len(history_rows) == 4 and all("Shutdown" in row for row in history_rows), history
    assert json.loads(docker.ok("service", "inspect", "myweb3"))[0]["UpdateStatus"]["State"] == "completed"
    pretty3 = docker.ok("service", "inspect", "--pretty", "myweb3")
    assert " Args:\t\tsleep 2000" in pretty3 and " Delay:\t\t1s" in pretty3 and " State:\t\tcompleted" in pretty3

    docker.ok("service", "update", "-d", "--update-failure-action", "continue", "myweb3")
    rolled = docker.ok("service", "rollback", "myweb3")
    # A rollback that changes no task completes at once: the CLI may see it requested or already completed.
    assert rolled.splitlines()[0] == "myweb3"
    assert "rollback: manually requested rollback" in rolled or "rollback: rollback completed" in rolled, rolled
    after = json.loads(docker.ok("service", "inspect", "myweb3"))[0]
    assert after["UpdateStatus"]["State"] == "rollback_completed"
    assert after["Spec"]["UpdateConfig"]["FailureAction"] == "pause"

    # ---- rm, errors, leave ---------------------------------------------------------------------------
    assert docker.ok("service", "rm", "myweb", generated_name).split() == ["myweb", generated_name]
    assert "myweb " not in docker.ok("service", "ls")
    missing = docker.run("service", "inspect", "nosuch")
    assert missing.code == 1 and "nosuch" in missing.err
    assert docker.run("service", "logs", "nosuch").err.strip() == "no such task or service: nosuch"
    worker_says = docker.run("service", "ls", node="worker1")
    assert worker_says.code == 1 and worker_says.err.strip() == (
        "Error response from daemon: This node is not a swarm manager. Worker nodes can't be used to view or "
        "modify cluster state. Please run this command on a manager node or promote the current node to a manager.")

    assert docker.ok("swarm", "leave", node="worker2").strip() == "Node left the swarm."
    last = docker.run("swarm", "leave")
    assert last.code == 1 and "Use `--force` to ignore this message." in last.err
    assert docker.ok("swarm", "leave", "--force").strip() == "Node left the swarm."
    assert docker.run("node", "ls").code == 1


@pytest.mark.skipif(len(DOCKERS) < 2, reason="needs both Debian's docker CLI (API 1.41) and a current one")
def test_both_cli_generations_read_the_same_swarm(bare_nodes: Cluster) -> None:
    old, new = (DockerCLI(binary, bare_nodes) for binary in DOCKERS[:2])
    manager = bare_nodes.node("manager1").address
    assert "1.41" in old.ok("version", "--format", "{{.Client.APIVersion}}")
    new.ok("swarm", "init", "--advertise-addr", manager, "--listen-addr", f"{manager}:2377")
    old.ok("service", "create", "-d", "--name", "web", "--replicas", "2", "busybox", "sleep", "600")
    bare_nodes.wait_running("web", 2)
    for docker in (old, new):
        assert "2/2" in docker.ok("service", "ls")
        assert len(rows(docker.ok("service", "ps", "web"))) == 2
        assert "Leader" in docker.ok("node", "ls")
