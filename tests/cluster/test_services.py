"""Replicated and global services on a three-node swarm with the process executor."""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.conftest import Cluster, wait_for

pytestmark = pytest.mark.cluster

LOOP = "while true; do echo hello from $SHOAL_TASK_SLOT; sleep 1; done"


def test_replicas_spread_scale_and_remove(cluster: Cluster) -> None:
    out = cluster.ok("service", "create", "--name", "web", "--replicas", "6", "busybox", "sh", "-c", LOOP)
    # Without -d the CLI waits for convergence and says so, as docker does.
    assert "overall progress: 6 out of 6 tasks" in out and "verify: Service" in out
    cluster.wait_running("web", 6)
    assert sorted(cluster.placement("web").values()) == [2, 2, 2]
    assert sorted(t["Slot"] for t in cluster.running("web")) == [1, 2, 3, 4, 5, 6]
    ls = cluster.ok("service", "ls")
    assert ls.splitlines()[0].split() == ["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"]
    assert "6/6" in ls and "replicated" in ls

    assert cluster.ok("service", "scale", "-d", "web=2").strip() == "web scaled to 2"
    cluster.wait_running("web", 2)
    assert sorted(t["Slot"] for t in cluster.running("web")) == [1, 2]
    wait_for("scaled-down processes to stop", lambda: len(cluster.task_processes()) == 2)
    cluster.ok("service", "scale", "-d", "web=6")
    cluster.wait_running("web", 6)
    assert sorted(t["Slot"] for t in cluster.running("web")) == [1, 2, 3, 4, 5, 6]

    logs = cluster.ok("service", "logs", "--tail", "1", "web")
    assert any(line.startswith("web.") and "| hello from" in line for line in logs.splitlines()), logs

    assert cluster.ok("service", "rm", "web").strip() == "web"
    wait_for("no task process left after rm", lambda: not cluster.task_processes(), timeout=20)
    wait_for("tasks of the removed service deleted", lambda: not cluster.get("/tasks"), timeout=20)
    assert "web" not in cluster.ok("service", "ls")


def test_global_service_follows_nodes(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--name", "agent", "--mode", "global", "busybox", "sleep", "600")
    cluster.wait_running("agent", 3)
    assert cluster.placement("agent") == {"manager1": 1, "worker1": 1, "worker2": 1}
    assert all(t["Slot"] == 0 for t in cluster.running("agent"))
    cluster.add_node("worker3")
    cluster.wait_running("agent", 4)
    assert cluster.placement("agent")["worker3"] == 1
    # Drain removes it from the drained node.
    cluster.ok("node", "update", "--availability", "drain", "worker1")
    cluster.wait_running("agent", 3)
    assert "worker1" not in cluster.placement("agent")
    ps = cluster.ok("service", "ps", "agent")
    assert "agent." in ps


def test_drain_moves_replicas_and_ps_explains_unplaceable_tasks(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--name", "web", "--replicas", "6", "busybox", "sleep", "600")
    cluster.wait_running("web", 6)
    cluster.ok("node", "update", "--availability", "drain", "worker2")
    wait_for("web off worker2", lambda: len(cluster.running("web")) == 6 and "worker2" not in cluster.placement("web"))
    assert sorted(cluster.placement("web").values()) == [3, 3]
    history = cluster.ok("service", "ps", "web")
    assert " \\_ web." in history

    cluster.ok("node", "update", "--availability", "pause", "worker1")
    cluster.ok("service", "create", "-d", "--name", "picky", "--constraint", "node.hostname==worker1",
               "busybox", "sleep", "600")
    cluster.ok("node", "update", "--availability", "drain", "manager1")

    def explained() -> str | None:
        out = cluster.ok("service", "ps", "--no-trunc", "picky")
        return out if "no suitable node" in out else None

    out = wait_for("pending task with an explanation", explained)
    assert "Pending" in out
    assert "no suitable node (3 nodes not available for new tasks)" in out
    cluster.ok("node", "update", "--availability", "active", "manager1")
    cluster.ok("node", "update", "--availability", "active", "worker2")
    out = wait_for("constraint explanation", lambda: (o := cluster.ok("service", "ps", "--no-trunc", "picky"))
                   and "with unsatisfied constraint" in o and o)
    # The largest group of rejections comes first, as swarmkit orders them.
    assert "no suitable node (2 nodes with unsatisfied constraints; 1 node not available for new tasks)" in out
    cluster.ok("node", "update", "--availability", "active", "worker1")
    cluster.wait_running("picky", 1)
    assert cluster.placement("picky") == {"worker1": 1}


def test_restart_policy_replaces_exited_tasks_in_their_slot(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--name", "flaky", "--replicas", "2", "--restart-delay", "200ms",
               "busybox", "sh", "-c", "sleep 0.5; exit 3")

    def restarted() -> bool:
        tasks = cluster.tasks("flaky")
        failed = [t for t in tasks if t["Status"]["State"] == "failed"]
        return len(failed) >= 4

    wait_for("two failures per slot", restarted)
    tasks = cluster.tasks("flaky")
    assert {t["Slot"] for t in tasks} == {1, 2}
    failed = [t for t in tasks if t["Status"]["State"] == "failed"]
    assert all(t["Status"]["Err"] == "task: non-zero exit (3)" for t in failed)
    # History is capped at 5 tasks per slot.
    time.sleep(0)
    wait_for("history trimmed", lambda: all(
        sum(1 for t in cluster.tasks("flaky") if t["Slot"] == s) <= 5 for s in (1, 2)) and
        len([t for t in cluster.tasks("flaky") if t["Status"]["State"] == "failed"]) >= 8, timeout=30)

    cluster.ok("service", "create", "-d", "--name", "once", "--restart-condition", "none", "busybox", "true")
    wait_for("the one task to complete", lambda: any(t["Status"]["State"] == "complete" for t in cluster.tasks("once")))
    time.sleep(1.5)  # a restart would have happened by now (delay 5 s is not involved with condition none)
    assert len(cluster.tasks("once")) == 1


def test_bad_input_is_refused_and_changes_nothing(cluster: Cluster) -> None:
    cluster.ok("service", "create", "-d", "--name", "web", "busybox", "sleep", "600")
    before = cluster.get("/services")
    cases = [
        ("service", "create", "--replicas", "-1", "busybox", "true"),
        ("service", "create", "--replicas", "three", "busybox", "true"),
        ("service", "create", "--name", "web", "busybox", "true"),
        ("service", "create", "--constraint", "node.role=manager", "busybox", "true"),
        ("service", "create", "--mode", "global", "--replicas", "2", "busybox", "true"),
        ("service", "create", "-p", "80:notaport", "busybox", "true"),
        ("service", "create", "--replicaz", "2", "busybox", "true"),
        ("service", "scale", "web=-2"),
        ("service", "scale", "nosuch=2"),
        ("service", "inspect", "nosuch"),
        ("service", "rm", "nosuch"),
        ("node", "update", "--availability", "drain", "nosuch"),
    ]
    for args in cases:
        result = cluster.shoal(*args)
        assert result.code != 0, args
        lines = [line for line in result.err.strip().splitlines() if line and not line.startswith("See '")]
        assert len(lines) == 1, (args, result.err)
        assert "Traceback" not in result.err
    assert cluster.get("/services") == before
    # The API answers bad requests with a 4xx and a message.
    with cluster.api() as api:
        response = api.post("/services/create", content=b"{not json")
        assert response.status_code == 400 and "message" in response.json()
        response = api.post("/services/create", json={"TaskTemplate": {"ContainerSpec": {"Image": "x"}},
                                                      "Mode": {"Replicated": {"Replicas": "three"}}})
        assert response.status_code == 400
        response = api.get("/services/nosuch")
        assert response.status_code == 404 and response.json()["message"] == "service nosuch not found"
        response = api.post("/services/create", json={"Name": "web", "TaskTemplate": {"ContainerSpec": {"Image": "x"}}})
        assert response.status_code == 409
        service = cluster.get("/services/web")
        stale = service["Version"]["Index"] - 1
        response = api.post(f"/services/{service['ID']}/update", params={"version": stale}, json=service["Spec"])
        assert response.status_code == 409 and "update out of sequence" in response.json()["message"]
        response = api.get("/v9.99/services")
        assert response.status_code == 400
    assert cluster.get("/services") == before
    assert json.loads(json.dumps(before))  # unchanged and serialisable


def test_unnamed_service_gets_a_generated_name(cluster: Cluster) -> None:
    service_id = cluster.ok("service", "create", "-d", "busybox", "sleep", "600").strip()
    name = cluster.get(f"/services/{service_id}")["Spec"]["Name"]
    adjective, _, surname = name.partition("_")
    assert adjective and surname and adjective.isalpha()
    assert name in cluster.ok("service", "ls")
