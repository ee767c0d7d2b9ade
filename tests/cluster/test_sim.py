"""Simulated nodes against real managers: 100 hollow nodes (python -m shoal.sim: their own certificates,
sessions, heartbeats and status reports; simulated tasks) and a manager that runs unchanged."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from shoal import playground
from shoal.playground import HOLLOW, PlaygroundNode
from tests.cluster.conftest import _subnet, wait_for

pytestmark = pytest.mark.cluster

NODES = 100
TASKS = 5000


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[PlaygroundNode]]:
    base = tmp_path_factory.mktemp("sim")
    nodes: list[PlaygroundNode] = []
    try:
        nodes = playground.up(1, 0, lambda _: None, base=base, subnet=_subnet(), executor="sim",
                              routing_mesh="userspace", sim_nodes=NODES)
        yield nodes
    finally:
        playground.down(lambda _: None, base)


def get(node: PlaygroundNode, path: str, **params: Any) -> Any:
    with playground.api(node.socket, timeout=60) as client:
        response = client.get(path, params=params)
        response.raise_for_status()
        return response.json()


def running(manager: PlaygroundNode) -> int:
    return sum(int((s.get("ServiceStatus") or {}).get("RunningTasks") or 0)
               for s in get(manager, "/services", status="true"))


def test_a_hundred_simulated_nodes_run_five_thousand_tasks_and_scale_to_zero(swarm: list[PlaygroundNode]) -> None:
    manager = swarm[0]
    assert [n.role for n in swarm] == ["manager", HOLLOW]
    nodes = get(manager, "/nodes")
    assert sum(1 for n in nodes if n["Status"]["State"] == "ready") == NODES + 1
    assert all(n["Description"]["Engine"]["EngineVersion"].startswith("shoal-sim/") for n in nodes)
    with playground.api(manager.socket) as client:
        node = client.get("/nodes/manager1").json()
        client.post(f"/nodes/{node['ID']}/update", params={"version": node["Version"]["Index"]},
                    json=dict(node["Spec"], Availability="drain")).raise_for_status()
        client.post("/services/create", json={
            "Name": "sim", "Mode": {"Replicated": {"Replicas": TASKS}},
            "TaskTemplate": {"ContainerSpec": {"Image": "busybox", "Args": ["sleep", "100000"]}}}).raise_for_status()

    wait_for(f"{TASKS} simulated tasks running", lambda: running(manager) == TASKS, timeout=180, interval=1)

    # Spread over the simulated nodes, as the scheduler spreads over real ones.
    per_node: dict[str, int] = {}
    for task in get(manager, "/tasks", filters=json.dumps({"desired-state": ["running"]})):
        per_node[task["NodeID"]] = per_node.get(task["NodeID"], 0) + 1
    assert len(per_node) == NODES and max(per_node.values()) - min(per_node.values()) <= 1

    with playground.api(manager.socket) as client:
        service = client.get("/services/sim").json()
        spec = dict(service["Spec"], Mode={"Replicated": {"Replicas": 0}})
        client.post(f"/services/{service['ID']}/update", params={"version": service["Version"]["Index"]},
                    json=spec).raise_for_status()
    wait_for("no task left", lambda: get(manager, "/shoal/debug")["Manager"]["Tasks"] == 0, timeout=180,
             interval=1)

    figures = get(manager, "/shoal/debug")["Manager"]
    assert (figures["ElectionsWon"], figures["LeadershipsLost"], figures["NodesMarkedDown"]) == (1, 0, 0)
