"""Node failure and return, and daemon restarts, with real processes killed."""

from __future__ import annotations

import time

import pytest

from tests.cluster.conftest import Cluster, wait_for

pytestmark = pytest.mark.cluster


def test_killed_worker_is_marked_down_and_its_replicas_move_then_it_returns_without_rebalance(
        cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--name", "web", "--replicas", "6", "busybox", "sleep", "600")
    cluster.wait_running("web", 6)
    on_worker1 = {t["ID"] for t in cluster.running("web") if cluster.node_ids()["worker1"] == t["NodeID"]}
    assert len(on_worker1) == 2

    killed_at = cluster.kill("worker1")
    wait_for("worker1 Down", lambda: cluster.node_state("worker1") == "down")
    cluster.wait_running("web", 6)
    recovered = time.monotonic() - killed_at
    print(f"\nkill -9 worker1 -> 6 replicas running again in {recovered:.2f}s")
    placement = cluster.placement("web")
    assert "worker1" not in placement and sum(placement.values()) == 6
    assert "Down" in cluster.ok("node", "ls")

    cluster.restart("worker1")
    wait_for("worker1 Ready again", lambda: cluster.node_state("worker1") == "ready")
    # Its old tasks end (they are wanted shut down) and the moved replicas stay where they are.
    wait_for("stale tasks on worker1 ended", lambda: all(
        t["Status"]["State"] in ("shutdown", "failed", "complete") for t in cluster.tasks("web") if t["ID"] in on_worker1))
    time.sleep(1)
    assert cluster.placement("web") == placement
    assert len(cluster.running("web")) == 6


def test_restarted_worker_adopts_its_running_tasks_without_duplicates(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--name", "web", "--replicas", "6", "busybox", "sleep", "600")
    cluster.wait_running("web", 6)
    before = {t["ID"]: t["Status"].get("ContainerStatus", {}).get("PID") for t in cluster.running("web")}
    processes_before = cluster.task_processes()
    assert len(processes_before) == 6
    # Restart only the daemon (as `systemctl restart` does); its task processes keep running.
    import os
    import signal

    from shoal import playground

    os.kill(cluster.node("worker2").pid, signal.SIGTERM)
    wait_for("worker2's daemon to exit", lambda: not playground._alive(cluster.node("worker2").pid))
    cluster.restart("worker2")
    time.sleep(2)
    assert cluster.task_processes() == processes_before
    running = cluster.running("web")
    assert {t["ID"]: t["Status"].get("ContainerStatus", {}).get("PID") for t in running} == before
    assert cluster.node_state("worker2") == "ready"


def test_restarted_manager_keeps_the_swarm(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--name", "web", "--replicas", "3", "busybox", "sleep", "600")
    cluster.wait_running("web", 3)
    ids = {t["ID"] for t in cluster.running("web")}
    import os
    import signal

    os.kill(cluster.manager.pid, signal.SIGTERM)
    wait_for("manager daemon exit", lambda: not __import__("shoal.playground").playground._alive(cluster.manager.pid))
    cluster.restart("manager1")
    wait_for("all nodes ready after manager restart",
             lambda: all(n["Status"]["State"] == "ready" for n in cluster.get("/nodes")), timeout=30)
    cluster.wait_running("web", 3)
    assert {t["ID"] for t in cluster.running("web")} == ids
    cluster.ok("service", "scale", "-d", "web=4")
    cluster.wait_running("web", 4)
