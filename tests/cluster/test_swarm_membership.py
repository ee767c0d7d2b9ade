"""swarm init / join / join-token / leave and node commands, with real daemons and etcd."""

from __future__ import annotations

import re

import pytest

from tests.cluster.conftest import Cluster, make_cluster, wait_for

pytestmark = pytest.mark.cluster


def test_init_and_two_joins_give_three_ready_nodes_with_one_leader(cluster: Cluster) -> None:
    out = cluster.ok("node", "ls")
    lines = out.strip().splitlines()
    assert lines[0].split() == ["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER", "STATUS", "ENGINE", "VERSION"]
    rows = {line.split()[1] if "*" not in line else line.split()[2]: line for line in lines[1:]}
    assert set(rows) == {"manager1", "worker1", "worker2"}
    assert all("Ready" in row and "Active" in row for row in rows.values())
    assert "Leader" in rows["manager1"] and "*" in rows["manager1"]
    assert out.count("Leader") == 1


def test_join_token_prints_dockers_join_command_and_rotation_refuses_the_old_token(cluster: Cluster) -> None:
    out = cluster.ok("swarm", "join-token", "worker")
    assert re.search(rf"shoal swarm join --token SWMTKN-1-[0-9a-z]{{50}}-[0-9a-z]{{25}} {re.escape(cluster.manager.address)}:2377",
                     out), out
    old = cluster.ok("swarm", "join-token", "-q", "worker").strip()
    rotated = cluster.ok("swarm", "join-token", "--rotate", "worker")
    assert "Successfully rotated worker join token." in rotated
    new = cluster.ok("swarm", "join-token", "-q", "worker").strip()
    assert new != old and new.startswith("SWMTKN-1-")
    # A new node with the old token is refused, and nothing is added.
    from shoal import playground

    proc, _, sock = playground.start_daemon("late", cluster.base)
    try:
        playground.wait_for_socket(sock, proc)
        address = f"{cluster.subnet}.250"
        before = len(cluster.get("/nodes"))
        import os
        import subprocess
        import sys

        env = dict(os.environ, SHOAL_HOST=f"unix://{sock}")
        result = subprocess.run([sys.executable, "-m", "shoal", "swarm", "join", "--token", old, "--advertise-addr",
                                 address, f"{cluster.manager.address}:2377"], capture_output=True, text=True, env=env)
        assert result.returncode != 0
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert "not valid for this swarm" in result.stderr
        assert len(cluster.get("/nodes")) == before
    finally:
        proc.kill()
        proc.wait()


def test_bad_joins_are_refused_with_one_line(cluster: Cluster) -> None:
    from shoal import playground

    proc, _, sock = playground.start_daemon("stranger", cluster.base)
    try:
        playground.wait_for_socket(sock, proc)
        import os
        import subprocess
        import sys

        env = dict(os.environ, SHOAL_HOST=f"unix://{sock}")
        token = cluster.ok("swarm", "join-token", "-q", "worker").strip()

        def join(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "shoal", "swarm", "join", *args], capture_output=True,
                                  text=True, env=env, timeout=60)

        garbage = join("--token", "SWMTKN-1-nonsense", f"{cluster.manager.address}:2377")
        assert garbage.returncode != 0 and "invalid join token" in garbage.stderr
        wrong_address = join("--token", token, "--advertise-addr", f"{cluster.subnet}.251", f"{cluster.subnet}.254:2377")
        assert wrong_address.returncode != 0 and "could not reach a manager" in wrong_address.stderr
        for result in (garbage, wrong_address):
            assert len(result.stderr.strip().splitlines()) == 1, result.stderr
            assert "Traceback" not in result.stderr
        # The refused node is still outside any swarm.
        info = subprocess.run([sys.executable, "-m", "shoal", "node", "ls"], capture_output=True, text=True, env=env)
        assert info.returncode != 0 and "not a swarm manager" in info.stderr
    finally:
        proc.kill()
        proc.wait()


def test_manager_joins_with_the_manager_token_and_is_reachable(tmp_path_factory: pytest.TempPathFactory) -> None:
    cluster = make_cluster(tmp_path_factory, managers=1, workers=0)
    try:
        cluster.add_node("manager2", role="manager")

        def reachable() -> bool:
            out = cluster.ok("node", "ls")
            row = next(line for line in out.splitlines() if "manager2" in line)
            return "Reachable" in row and "Ready" in row

        wait_for("manager2 Reachable in node ls", reachable)
        # The second manager serves the control API from its own etcd member.
        assert "manager1" in cluster.ok("node", "ls", node="manager2")
        cluster.ok("service", "create", "-d", "--name", "via2", "busybox", "sleep", "300", node="manager2")
        assert "via2" in cluster.ok("service", "ls")
    finally:
        cluster.down()


def test_leave_rules(cluster: Cluster) -> None:
    refused = cluster.shoal("swarm", "leave")
    assert refused.code != 0 and "Use `--force`" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    left = cluster.shoal("swarm", "leave", node="worker2")
    assert left.code == 0 and "Node left the swarm." in left.out
    wait_for("worker2 down after leaving", lambda: cluster.node_state("worker2") == "down")
    # A node that is down can be removed; one that is up needs --force.
    assert cluster.ok("node", "rm", "worker2").strip() == "worker2"
    up = cluster.shoal("node", "rm", "worker1")
    assert up.code != 0 and "--force" in up.err
    assert cluster.ok("node", "rm", "--force", "worker1").strip() == "worker1"
    assert set(cluster.node_ids()) == {"manager1"}
    last = cluster.shoal("swarm", "leave", "--force")
    assert last.code == 0
    gone = cluster.shoal("node", "ls")
    assert gone.code != 0 and "not a swarm manager" in gone.err


def test_node_update_promote_demote(cluster: Cluster) -> None:
    assert cluster.ok("node", "update", "--label-add", "zone=a", "--availability", "pause", "worker1").strip() == "worker1"
    node = cluster.get("/nodes/worker1")
    assert node["Spec"]["Labels"] == {"zone": "a"} and node["Spec"]["Availability"] == "pause"
    cluster.ok("node", "update", "--label-rm", "zone", "--availability", "active", "worker1")
    node = cluster.get("/nodes/worker1")
    assert node["Spec"]["Labels"] == {} and node["Spec"]["Availability"] == "active"
    pretty = cluster.ok("node", "inspect", "--pretty", "self")
    assert "Hostname:" in pretty and "manager1" in pretty and "Leader:\t\tYes" in pretty
    demote_last = cluster.shoal("node", "demote", "manager1")
    assert demote_last.code != 0 and "last manager" in demote_last.err
    assert cluster.get("/nodes/manager1")["Spec"]["Role"] == "manager"
    bad = cluster.shoal("node", "update", "--availability", "sleepy", "worker1")
    assert bad.code != 0
    missing = cluster.shoal("node", "inspect", "nosuchnode")
    assert missing.code != 0 and "not found" in missing.err


def test_promote_then_demote_a_worker(cluster: Cluster) -> None:
    assert cluster.ok("node", "promote", "worker1").strip() == "Node worker1 promoted to a manager in the swarm."

    def serves_as_manager() -> bool:
        result = cluster.shoal("node", "ls", node="worker1")
        return result.code == 0 and "Reachable" in result.out

    wait_for("worker1 to serve the API as a manager", serves_as_manager, timeout=60)
    # It is a member of the store: a service created through it is seen by the first manager.
    cluster.ok("service", "create", "-d", "--name", "made-on-worker1", "busybox", "sleep", "600", node="worker1")
    assert "made-on-worker1" in cluster.ok("service", "ls")
    cluster.wait_running("made-on-worker1", 1)

    assert cluster.ok("node", "demote", "worker1").strip() == "Manager worker1 demoted in the swarm."

    def back_to_worker() -> bool:
        result = cluster.shoal("node", "ls", node="worker1")
        return result.code != 0 and "not a swarm manager" in result.err

    wait_for("worker1 to be a worker again", back_to_worker, timeout=60)
    row = next(line for line in cluster.ok("node", "ls").splitlines() if "worker1" in line)
    assert "Reachable" not in row and "Ready" in row
    # Its etcd member is gone, and the swarm still works with its one manager.
    from pathlib import Path

    from shoal import playground

    def etcd_of_worker1() -> list[int]:
        return [pid for pid in playground.processes_under(Path(cluster.node("worker1").state_dir))
                if b"etcd" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]]

    wait_for("worker1's etcd member to stop", lambda: not etcd_of_worker1())
    cluster.ok("service", "scale", "-d", "made-on-worker1=3")
    cluster.wait_running("made-on-worker1", 3)


def test_remote_api_over_mutual_tls(cluster: Cluster) -> None:
    certs = f"{cluster.manager.state_dir}/certs"
    host = f"tcp://{cluster.manager.address}:2377"
    with_manager_cert = cluster.shoal("-H", host, "--tlscacert", f"{certs}/ca.pem", "--tlscert", f"{certs}/node.pem",
                                      "--tlskey", f"{certs}/node-key.pem", "node", "ls")
    assert with_manager_cert.code == 0, with_manager_cert.err
    assert "manager1" in with_manager_cert.out and "Leader" in with_manager_cert.out
    # A worker's certificate is from the same CA but may not drive the swarm.
    wcerts = f"{cluster.node('worker1').state_dir}/certs"
    with_worker_cert = cluster.shoal("-H", host, "--tlscacert", f"{wcerts}/ca.pem", "--tlscert",
                                     f"{wcerts}/node.pem", "--tlskey", f"{wcerts}/node-key.pem", "node", "ls")
    assert with_worker_cert.code != 0 and "manager certificates" in with_worker_cert.err
    without_cert = cluster.shoal("-H", host, "--tlscacert", f"{certs}/ca.pem", "node", "ls")
    assert without_cert.code != 0 and len(without_cert.err.strip().splitlines()) == 1
    # The server itself refuses API calls from a client without a certificate.
    import httpx

    from shoal.certs import client_ssl_context

    with httpx.Client(verify=client_ssl_context(f"{certs}/ca.pem"), timeout=10) as client:
        response = client.get(f"https://{cluster.manager.address}:2377/nodes")
    assert response.status_code == 403 and "certificate" in response.json()["message"]
