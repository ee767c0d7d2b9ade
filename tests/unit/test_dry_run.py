"""Dry runs: the real planners over copies, batch by batch, and nothing passed in changes."""

from __future__ import annotations

import copy

from shoal.manager.controlapi.service import new_service, updated_service, validate_service_spec
from shoal.manager.dry_run import simulate
from shoal.manager.scheduler.pipeline import NodeLoad
from shoal.timefmt import SECOND
from shoal.types import Doc

NOW = 1_800_000_000.0
GIB = 1024**3


def node(nid: str, memory: int = 4 * GIB) -> Doc:
    return {"ID": nid, "Spec": {"Role": "worker", "Availability": "active", "Labels": {}},
            "Description": {"Hostname": nid, "Resources": {"NanoCPUs": 2 * 10**9, "MemoryBytes": memory}},
            "Status": {"State": "ready", "Addr": "127.0.0.2"}}


NODES = {n["ID"]: n for n in (node("a"), node("b"), node("c"))}


def spec(replicas: int = 3, image: str = "busybox:1", **template: object) -> Doc:
    return validate_service_spec({
        "Name": "web", "Mode": {"Replicated": {"Replicas": replicas}},
        "TaskTemplate": {"ContainerSpec": {"Image": image}, **template},
        "UpdateConfig": {"Parallelism": 1, "Delay": 10 * SECOND, "Monitor": 1 * SECOND}})


def running_tasks(service: Doc) -> list[Doc]:
    """The service's tasks as they run after its creation converged: one per node."""
    run = simulate(service, [], NODES, NodeLoad(), NOW)
    tasks = []
    for entry in run.batches[0].started:
        tasks.append({"ID": f"t{entry['Slot']}", "ServiceID": service["ID"], "Slot": entry["Slot"],
                      "NodeID": entry["NodeID"], "DesiredState": "running",
                      "Spec": copy.deepcopy(service["Spec"]["TaskTemplate"]), "ServiceAnnotations": {"Name": "web"},
                      "Status": {"State": "running", "Timestamp": "2027-01-15T08:00:00Z"},
                      "CreatedAt": "2027-01-15T08:00:00Z", "UpdatedAt": "2027-01-15T08:00:00Z",
                      "Version": {"Index": 3}})
    return tasks


def test_a_create_places_every_task_in_one_batch_spread_over_the_nodes() -> None:
    service = new_service(spec(), "s1", NOW, set())
    run = simulate(service, [], NODES, NodeLoad(), NOW)
    [batch] = run.batches
    assert sorted(e["Slot"] for e in batch.started) == [1, 2, 3]
    assert sorted(e["NodeID"] for e in batch.started) == ["a", "b", "c"]
    assert not run.truncated and all(not e["Error"] and not e["Replaces"] for e in batch.started)


def test_an_unplaceable_task_says_why() -> None:
    service = new_service(spec(2, Resources={"Reservations": {"MemoryBytes": 1024 * GIB}}), "s1", NOW, set())
    [batch] = simulate(service, [], NODES, NodeLoad(), NOW).batches
    assert [e["Error"] for e in batch.started] == ["no suitable node (insufficient resources on 3 nodes)"] * 2
    assert all(not e["NodeID"] for e in batch.started)


def test_an_update_replaces_one_task_per_batch_in_slot_order() -> None:
    service = new_service(spec(), "s1", NOW, set())
    tasks = running_tasks(service)
    before = copy.deepcopy(tasks)
    updated = updated_service(service, spec(image="busybox:2"), NOW, set())
    run = simulate(updated, tasks, NODES, NodeLoad.of({t["NodeID"]: [t] for t in tasks}), NOW)
    assert [[(e["Slot"], e["Replaces"]) for e in b.started] for b in run.batches] == [
        [(1, "t1")], [(2, "t2")], [(3, "t3")]]
    # stop-first: a slot's new task goes where its old one stopped, the only room the spread leaves
    assert [b.started[0]["NodeID"] for b in run.batches] == [t["NodeID"] for t in tasks]
    assert tasks == before, "the simulation works on copies"


def test_a_scale_down_stops_the_highest_slots() -> None:
    service = new_service(spec(), "s1", NOW, set())
    tasks = running_tasks(service)
    updated = updated_service(service, spec(1), NOW, set())
    [batch] = simulate(updated, tasks, NODES, NodeLoad.of({t["NodeID"]: [t] for t in tasks}), NOW).batches
    assert not batch.started and sorted(s["Slot"] for s in batch.stopped) == [2, 3]


def test_an_unchanged_service_makes_no_batch() -> None:
    service = new_service(spec(), "s1", NOW, set())
    tasks = running_tasks(service)
    assert simulate(service, tasks, NODES, NodeLoad.of({t["NodeID"]: [t] for t in tasks}), NOW).batches == []


def test_a_start_first_update_names_the_replaced_task_once_per_batch() -> None:
    base = spec()
    base["UpdateConfig"]["Order"] = "start-first"
    service = new_service(base, "s1", NOW, set())
    tasks = running_tasks(service)
    changed = spec(image="busybox:2")
    changed["UpdateConfig"]["Order"] = "start-first"
    updated = updated_service(service, changed, NOW, set())
    run = simulate(updated, tasks, NODES, NodeLoad.of({t["NodeID"]: [t] for t in tasks}), NOW)
    assert [[(e["Slot"], e["Replaces"]) for e in b.started] for b in run.batches] == [
        [(1, "t1")], [(2, "t2")], [(3, "t3")]]
    assert all(not b.stopped for b in run.batches), "the old task's stop is part of its batch, not one of its own"
