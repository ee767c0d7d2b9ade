"""Placement on a real swarm: reservations, constraints followed when labels change, dry runs, rebalance."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from tests.cluster.conftest import Cluster, dump_logs, make_cluster, wait_for

pytestmark = pytest.mark.cluster

SLEEP = ["busybox", "sleep", "98765"]


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One manager and two workers for the whole module: each test uses services and labels of its own."""
    cluster = make_cluster(tmp_path_factory, managers=1, workers=2)
    failed = True
    try:
        yield cluster
        failed = False
    finally:
        if failed:
            dump_logs(cluster)
        cluster.down()


def test_a_reservation_larger_than_any_node_waits_saying_why(swarm: Cluster) -> None:
    swarm.ok("service", "create", "-d", "--name", "huge", "--reserve-memory", "1T", *SLEEP)
    expected = "no suitable node (insufficient resources on 3 nodes)"
    wait_for("the pending task's reason", lambda: [t for t in swarm.tasks("huge")
                                                   if t["Status"]["Err"] == expected] or None)
    [task] = swarm.tasks("huge")
    assert task["Status"]["State"] == "pending" and not task.get("NodeID")
    assert expected in swarm.ok("service", "ps", "--no-trunc", "huge")
    # A reservation that fits is placed, and counts: two of 40% of a node's memory never share one node.
    memory = min(n["Description"]["Resources"]["MemoryBytes"] for n in swarm.get("/nodes"))
    share = str(int(memory * 0.4))
    swarm.ok("service", "create", "-d", "--name", "fits", "--replicas", "3", "--reserve-memory", share, *SLEEP)
    tasks = swarm.wait_running("fits", 3)
    assert len({t["NodeID"] for t in tasks}) == 3
    swarm.ok("service", "rm", "huge", "fits")


def test_a_node_relabelled_out_of_a_constraint_loses_its_tasks(swarm: Cluster) -> None:
    swarm.ok("node", "update", "--label-add", "zone=a", "worker1")
    swarm.ok("node", "update", "--label-add", "zone=b", "worker2")
    swarm.ok("service", "create", "-d", "--name", "zoned", "--replicas", "2", "--constraint", "node.labels.zone==a",
             *SLEEP)
    swarm.wait_running("zoned", 2)
    assert swarm.placement("zoned") == {"worker1": 2}
    swarm.ok("node", "update", "--label-add", "zone=a", "worker2")
    swarm.ok("node", "update", "--label-add", "zone=c", "worker1")
    wait_for("the tasks to move to worker2", lambda: swarm.placement("zoned") == {"worker2": 2} or None)
    stopped = [t for t in swarm.tasks("zoned") if t["DesiredState"] == "shutdown"]
    assert len(stopped) == 2 and all(swarm.node_ids()["worker1"] == t["NodeID"] for t in stopped)
    swarm.ok("service", "rm", "zoned")


def test_a_dry_run_prints_the_plan_and_changes_nothing(swarm: Cluster) -> None:
    out = swarm.ok("service", "create", "--dry-run", "--name", "planned", "--replicas", "3", *SLEEP)
    assert "nothing was changed" in out and out.count(" start ") == 3, out
    assert all(name in out for name in ("manager1", "worker1", "worker2")), out
    assert not [s for s in swarm.get("/services") if s["Spec"]["Name"] == "planned"]

    swarm.ok("service", "create", "-d", "--name", "steady", "--replicas", "3", "--update-parallelism", "1", *SLEEP)
    before = {t["ID"] for t in swarm.wait_running("steady", 3)}
    version = swarm.get("/services/steady")["Version"]["Index"]
    out = swarm.ok("service", "update", "--dry-run", "--image", "busybox:2", "steady")
    assert "would make 3 batches" in out and out.count(" start ") == 3, out
    for task_id in before:
        assert task_id[:12] in out, "each batch names the task it replaces"
    assert swarm.get("/services/steady")["Version"]["Index"] == version
    assert {t["ID"] for t in swarm.tasks("steady")} == before
    assert "insufficient resources" in swarm.ok("service", "update", "--dry-run", "--reserve-memory", "1T", "steady")
    swarm.ok("service", "rm", "steady")


def test_rebalance_after_a_node_returns_evens_the_spread_without_downtime(swarm: Cluster) -> None:
    swarm.ok("service", "create", "-d", "--name", "even", "--replicas", "6", "--update-order", "start-first",
             "--update-parallelism", "1", "--update-delay", "0s", "--update-monitor", "1s", *SLEEP)
    swarm.wait_running("even", 6)
    swarm.ok("node", "update", "--availability", "drain", "worker2")
    wait_for("worker2 drained", lambda: "worker2" not in swarm.placement("even")
             and sum(swarm.placement("even").values()) == 6 or None)
    swarm.ok("node", "update", "--availability", "active", "worker2")
    assert "worker2" not in swarm.placement("even"), "without --rebalance nothing moves, as in Docker"

    lowest = [6]
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            lowest[0] = min(lowest[0], len(swarm.running("even")))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out = swarm.ok("service", "rebalance", "even", timeout=120)
    finally:
        done.set()
        watcher.join()
    assert "moving 2 tasks" in out and "rebalanced" in out, out
    assert swarm.placement("even") == {"manager1": 2, "worker1": 2, "worker2": 2}
    assert lowest[0] >= 6, f"running tasks fell to {lowest[0]} during the rebalance"
    assert "already evenly spread" in swarm.ok("service", "rebalance", "-d", "even")
    swarm.ok("service", "rm", "even")
