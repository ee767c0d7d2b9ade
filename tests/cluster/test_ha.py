"""Highly available managers: leader failover, quorum loss and recovery, safe leave, restarts without loss."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import playground
from tests.cluster.conftest import FAILED_KEY, Cluster, dump_logs, make_cluster, wait_for

pytestmark = pytest.mark.cluster


def leader_name(cluster: Cluster, via: str) -> str | None:
    result = cluster.shoal("node", "ls", node=via)
    for line in result.out.splitlines():
        if "Leader" in line:
            return next(word for word in line.split() if word.startswith(("manager", "worker")))
    return None


def kill_daemon_and_etcd(cluster: Cluster, name: str) -> None:
    """SIGKILL a manager's daemon and its etcd member; its task processes keep running."""
    node = cluster.node(name)
    for pid in [node.pid, *playground.processes_under(Path(node.state_dir))]:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if pid == node.pid or cmdline.split(b"\0")[0].endswith(b"etcd"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def ha(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = make_cluster(tmp_path_factory, managers=3, workers=2)
    try:
        yield cluster
    finally:
        if request.node.stash.get(FAILED_KEY, False):
            dump_logs(cluster)
        cluster.down()


def test_leader_failover_then_scale_and_a_worker_failure(ha: Cluster) -> None:
    ha.ok("service", "create", "-d", "--name", "web", "--replicas", "6", "busybox", "sleep", "600")
    ha.wait_running("web", 6)
    assert leader_name(ha, "manager2") == "manager1"
    killed_at = ha.kill("manager1")
    new_leader = wait_for("a new leader", lambda: (name := leader_name(ha, "manager2")) and name != "manager1" and name)
    print(f"\nnew leader {new_leader} after {time.monotonic() - killed_at:.2f}s")
    # The agents reconnected to the new leader within the grace: none of the live nodes was marked down.
    states = {n["Description"]["Hostname"]: n["Status"]["State"]
              for n in Cluster(ha.base, ha.subnet, [ha.node("manager2")]).get("/nodes")}
    assert all(state != "down" for name, state in states.items() if name != "manager1"), states
    # The cluster keeps reconciling through the surviving managers.
    wait_for("scale accepted by manager2", lambda: ha.shoal("service", "scale", "-d", "web=8", node="manager2").code == 0)
    ha_via = Cluster(ha.base, ha.subnet, [ha.node("manager2"), *[n for n in ha.nodes if n.name != "manager2"]])
    ha_via.wait_running("web", 8, timeout=40)
    assert "manager1" not in ha_via.placement("web")
    killed_at = ha_via.kill("worker1")
    wait_for("worker1 down", lambda: ha_via.node_state("worker1") == "down")
    ha_via.wait_running("web", 8, timeout=40)
    print(f"worker killed after the failover: replaced in {time.monotonic() - killed_at:.2f}s")
    assert "worker1" not in ha_via.placement("web")
    # Only one leader at any time.
    out = ha_via.ok("node", "ls")
    assert out.count("Leader") == 1 and "Unreachable" in out


def test_quorum_loss_refuses_writes_keeps_tasks_and_recovers(ha: Cluster) -> None:
    ha.ok("service", "create", "-d", "--name", "web", "--replicas", "4", "busybox", "sleep", "600")
    ha.wait_running("web", 4)
    processes = ha.task_processes()
    kill_daemon_and_etcd(ha, "manager2")
    kill_daemon_and_etcd(ha, "manager3")
    refused = wait_for("writes refused", lambda: (r := ha.shoal("service", "scale", "-d", "web=5")).code != 0 and r)
    assert "The swarm does not have a leader" in refused.err and "quorum" in refused.err
    assert len(refused.err.strip().splitlines()) == 1
    # Reads are still served, and the tasks keep running on their nodes.
    assert "web" in ha.ok("service", "ls")
    time.sleep(2)
    assert set(ha.task_processes()) == set(processes)
    ha.restart("manager2")
    ha.restart("manager3")
    wait_for("writes accepted again", lambda: ha.shoal("service", "scale", "-d", "web=5").code == 0, timeout=60)
    ha.wait_running("web", 5, timeout=60)
    assert {n["Description"]["Hostname"] for n in ha.get("/nodes")} == {
        "manager1", "manager2", "manager3", "worker1", "worker2"}


def test_force_new_cluster_recovers_a_lost_quorum(ha: Cluster) -> None:
    ha.ok("service", "create", "-d", "--name", "web", "--replicas", "3", "busybox", "sleep", "600")
    ha.wait_running("web", 3)
    ha.kill("manager2")
    ha.kill("manager3")
    wait_for("writes refused", lambda: ha.shoal("service", "scale", "-d", "web=4").code != 0)
    out = ha.ok("swarm", "init", "--force-new-cluster", "--advertise-addr", ha.manager.address, timeout=120)
    assert "Swarm initialized" in out
    wait_for("writes accepted", lambda: ha.shoal("service", "scale", "-d", "web=4").code == 0, timeout=60)
    ha.wait_running("web", 4, timeout=60)
    roles = {n["Description"]["Hostname"]: n["Spec"]["Role"] for n in ha.get("/nodes")}
    assert roles["manager1"] == "manager" and roles["manager2"] == roles["manager3"] == "worker"
    assert ha.ok("node", "ls").count("Leader") == 1


def test_manager_leave_rules(tmp_path_factory: pytest.TempPathFactory) -> None:
    cluster = make_cluster(tmp_path_factory, managers=3, workers=0)
    try:
        # With three managers up, one may leave: two remain, a quorum of three.
        left = cluster.shoal("swarm", "leave", node="manager3")
        assert left.code == 0, left.err
        wait_for("manager3 no longer a manager", lambda: next(
            n for n in cluster.get("/nodes") if n["Description"]["Hostname"] == "manager3")["Spec"]["Role"] == "worker")
        # Now two managers: either leaving would leave no quorum.
        refused = cluster.shoal("swarm", "leave", node="manager2")
        assert refused.code != 0 and "Without a Raft quorum" in refused.err and "--force" in refused.err
        assert len(refused.err.strip().splitlines()) == 1
        cluster.ok("service", "create", "-d", "--name", "still", "busybox", "sleep", "600")
        cluster.wait_running("still", 1)
    finally:
        cluster.down()


def test_restarting_every_daemon_in_turn_keeps_exactly_the_replicas(ha: Cluster) -> None:
    ha.ok("service", "create", "-d", "--name", "web", "--replicas", "10", "busybox", "sleep", "600")
    ha.wait_running("web", 10)
    worst = {"processes": 0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            worst["processes"] = max(worst["processes"], len(ha.task_processes()))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        for name in ["worker1", "worker2", "manager3", "manager2", "manager1"]:
            node = ha.node(name)
            os.kill(node.pid, signal.SIGTERM)
            wait_for(f"{name}'s daemon to exit", lambda node=node: not playground._alive(node.pid))
            ha.restart(name)
            via = next(n.name for n in ha.nodes if n.role == "manager" and n.name != name)
            wait_for(f"{name} ready again", lambda name=name, via=via: next(
                n for n in Cluster(ha.base, ha.subnet, [ha.node(via)]).get("/nodes")
                if n["Description"]["Hostname"] == name)["Status"]["State"] == "ready", timeout=60)
    finally:
        stop.set()
        sampler.join()
    ha.wait_running("web", 10, timeout=60)
    assert worst["processes"] <= 10, f"up to {worst['processes']} task processes ran at once"
    assert len(ha.task_processes()) == 10


def test_a_frozen_leader_is_replaced_and_stops_acting_when_it_thaws(ha: Cluster) -> None:
    """A leader cut off (SIGSTOP: alive, silent) loses its lease; a new leader takes over; when the old one
    runs again it is fenced off and follows, and the swarm never runs a replica twice."""
    ha.ok("service", "create", "-d", "--name", "web", "--replicas", "4", "busybox", "sh", "-c",
          "while true; do echo tick; sleep 1; done")
    ha.wait_running("web", 4)
    frozen = ha.node("manager1")
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        wait_for("a new leader", lambda: leader_name(ha, "manager2") not in (None, "manager1"))
        wait_for("scale accepted", lambda: ha.shoal("service", "scale", "-d", "web=5", node="manager2").code == 0)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    via = Cluster(ha.base, ha.subnet, [ha.node("manager2"), *[n for n in ha.nodes if n.name != "manager2"]])
    via.wait_running("web", 5, timeout=60)
    wait_for("manager1 back as a follower", lambda: leader_name(ha, "manager1") not in (None, "manager1"), timeout=60)
    time.sleep(2)
    assert ha.ok("node", "ls", node="manager1").count("Leader") == 1
    assert len(via.running("web")) == 5 and len(ha.task_processes()) == 5
    # Logs are served through any manager (a follower asks the leader).
    logs = ha.ok("service", "logs", "--tail", "1", "web", node="manager1")
    assert logs.count("| tick") >= 4
